"""The node's parameters: one table of names, defaults, descriptions and checks, with no rclpy imports.

`validate` is used both at start-up (a bad value stops the node) and in the set-parameters callback; the run-time
(dynamic) ones are held together in one frozen `RuntimeSettings`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..core.backends import BACKENDS, DEVICES, PRECISIONS
from ..core.errors import UserError
from ..core.postprocess import UPSAMPLING_MODES
from .camera_health import HealthThresholds

TRANSPORTS = ("raw", "compressed")
RELIABILITIES = ("best_effort", "reliable")
#: batch_cameras values (words that ROS parameter files and -p read as strings, unlike true/false or on/off)
CAMERA_BATCHING = ("auto", "always", "never")
#: devices where one inference for several cameras' frames costs about one frame's: `auto` batches there
BATCHING_DEVICES = ("cuda", "tensorrt")


@dataclass(frozen=True)
class ParamSpec:
    default: Any
    description: str
    check: Callable[[Any], str | None] = lambda value: None
    dynamic: bool = False


def one_of(choices):
    return lambda v: None if v in choices else f"must be one of {list(choices)}, got {v!r}"


def device_check(value: str) -> str | None:
    base, _, index = value.partition(":")
    if base not in DEVICES or (index and (base != "cuda" or not index.isdigit())):
        return f"must be one of {list(DEVICES)} or cuda:N, got {value!r}"
    return None


def in_range(low: float, high: float):
    return lambda v: None if low <= v <= high else f"must be in [{low}, {high}], got {v}"


def in_range_or(special: float, low: float, high: float):
    """A value in [low, high], or the one value `special` that stands for a default."""
    return lambda v: None if v == special or low <= v <= high else f"must be {special} or in [{low}, {high}], got {v}"


def topics_check(value: list[str]) -> str | None:
    if not value or any(not t or " " in t for t in value):
        return f"needs at least one topic name without spaces, got {list(value)}"
    if len(set(value)) != len(value):
        return f"lists a topic twice: {list(value)}"
    return None


PARAMETERS: dict[str, ParamSpec] = {
    "backend": ParamSpec("onnxruntime", f"inference backend: {sorted(BACKENDS)}", one_of(sorted(BACKENDS))),
    "device": ParamSpec("auto", "auto (CUDA when present), cpu, cuda, cuda:N or tensorrt (onnxruntime)",
                        device_check),
    "model": ParamSpec("", "model card (.json) or a model file beside its card; empty: the packaged default"),
    "threads": ParamSpec(2, "CPU threads for inference (0: the library's default, all cores)", in_range(0, 256)),
    "tensorrt_fp16": ParamSpec(False, "device tensorrt: let TensorRT use FP16 kernels (trt_fp16_enable)"),
    "tensorrt_engine_cache_dir": ParamSpec("", "device tensorrt: folder where built engines are kept across "
                                               "starts (empty: rebuild at every start, which can take minutes)"),
    "precision": ParamSpec("auto", f"{list(PRECISIONS)}; fp16 needs CUDA with torch, with onnxruntime the "
                                   "model file sets it", one_of(PRECISIONS)),
    "upsampling": ParamSpec("boundaries", "boundaries: the mask of bilinear logits, evaluated only where classes "
                                          "change (fast); logits: resize all logits to the image then argmax "
                                          "(slow at HD); labels: argmax at network size, nearest resize (blocky)",
                            one_of(UPSAMPLING_MODES), dynamic=True),
    "input_topics": ParamSpec(["/camera/image_raw"], "camera image topics (base names for compressed)",
                              topics_check),
    "camera_names": ParamSpec([""], "output namespace per input topic (~/<name>/mask); [''] with one topic "
                                    "publishes ~/mask; empty list derives names from the topics"),
    "input_transport": ParamSpec("raw", "raw (sensor_msgs/Image) or compressed (CompressedImage on "
                                        "<topic>/compressed)", one_of(TRANSPORTS)),
    "qos_reliability": ParamSpec("best_effort", "camera subscription reliability (best_effort = SensorDataQoS)",
                                 one_of(RELIABILITIES)),
    "qos_depth": ParamSpec(5, "camera subscription queue depth", in_range(1, 1000)),
    "overlay_alpha": ParamSpec(0.5, "weight of the class colours in ~/overlay", in_range(0.0, 1.0), dynamic=True),
    "visualization_scale": ParamSpec(1.0, "size of ~/color_mask and ~/overlay relative to the image (they are for "
                                          "eyes; ~/mask stays full size)", in_range(0.05, 1.0), dynamic=True),
    "publish_mask": ParamSpec(True, "publish ~/mask (mono8 class ids)", dynamic=True),
    "publish_color_mask": ParamSpec(True, "publish ~/color_mask (rgb8)", dynamic=True),
    "publish_overlay": ParamSpec(True, "publish ~/overlay (rgb8)", dynamic=True),
    "latency_budget_ms": ParamSpec(100.0, "p95 processing latency above this makes diagnostics WARN",
                                   in_range(0.1, 1e6), dynamic=True),
    "error_rate_threshold": ParamSpec(0.5, "fraction of rejected or failed frames above which diagnostics "
                                           "are ERROR", in_range(0.0, 1.0), dynamic=True),
    "camera_timeout": ParamSpec(3.0, "seconds without an image before a camera's diagnostics go STALE",
                                in_range(0.01, 3600.0), dynamic=True),
    "output_timeout": ParamSpec(2.0, "seconds with frames waiting and none processed (a hung backend) before "
                                     "a camera's diagnostics go ERROR", in_range(0.01, 3600.0), dynamic=True),
    "reliability_monitor": ParamSpec(True, "WARN in /diagnostics while every frame's confidence score stays under "
                                           "reliability_threshold for reliability_hold seconds", dynamic=True),
    "reliability_threshold": ParamSpec(-1.0, "frame confidence score (0-1, ~/latency confidence_score) under which "
                                             "masks count as unreliable; -1: the model card's confidence.threshold "
                                             "(a card without one: no check)", in_range_or(-1.0, 0.0, 1.0),
                                       dynamic=True),
    "reliability_hold": ParamSpec(2.0, "seconds the score must stay under the threshold before diagnostics WARN",
                                  in_range(0.0, 3600.0), dynamic=True),
    "diagnostics_period": ParamSpec(1.0, "seconds between /diagnostics summaries", in_range(0.01, 3600.0)),
    "batch_cameras": ParamSpec("auto", "frames waiting from several cameras go through one inference (each camera's "
                                       "newest; a lone camera's frame never waits for others): auto (on for cuda and "
                                       "tensorrt with a model that takes a batch; off on CPU, where it does not pay), "
                                       "always, never", one_of(CAMERA_BATCHING)),
    "max_image_pixels": ParamSpec(4096 * 4096, "larger images are rejected before decoding",
                                  in_range(1, 1 << 31)),
    "hardware_id": ParamSpec("", "hardware_id in /diagnostics (empty: seg_node/<backend>/<device>)"),
}


def validate(name: str, value: Any) -> str | None:
    """None if `value` is acceptable for `name`, else the reason."""
    spec = PARAMETERS[name]
    expected = type(spec.default)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        return f"{name} must be a {expected.__name__}, got {value!r}"
    problem = spec.check(value)
    return f"{name} {problem}" if problem else None


def camera_names(topics: list[str], names: list[str]) -> list[str]:
    """Output namespace per topic; derived names come from the topic without image_raw-like suffixes."""
    if names == [""] and len(topics) == 1:
        return [""]
    if not names or names == [""]:
        suffixes = {"image_raw", "image", "image_color", "image_rect", "image_rect_color", "compressed"}
        names = []
        for topic in topics:
            parts = [p for p in topic.strip("/").split("/") if p]
            while len(parts) > 1 and parts[-1] in suffixes:
                parts.pop()
            names.append("_".join(parts) or "camera")
    if len(names) != len(topics):
        raise ValueError(f"camera_names has {len(names)} entries for {len(topics)} input topics")
    if len(set(names)) != len(names) or any(not n.replace("_", "").isalnum() for n in names):
        raise ValueError(f"camera_names must be distinct names of letters, digits and _, got {names}")
    return names


def batches_cameras(choice: str, device: str, model_batches: bool) -> bool:
    """Whether the worker segments several cameras' waiting frames in one call: `choice` is batch_cameras, `device`
    the one the backend runs on, `model_batches` whether its model takes a batch in one run."""
    if choice == "auto":
        return device.partition(":")[0] in BATCHING_DEVICES and model_batches
    return choice == "always"


class ParameterError(UserError):
    """A parameter value the node refuses; the message names each bad parameter and what it must be."""


@dataclass(frozen=True)
class RuntimeSettings:
    """The run-time parameters (those with dynamic=True), checked together. The set-parameters callback builds a
    new one and swaps it in with one assignment, so the worker and the diagnostics timer always read one
    consistent set, never half of a change."""

    upsampling: str
    overlay_alpha: float
    visualization_scale: float
    publish_mask: bool
    publish_color_mask: bool
    publish_overlay: bool
    latency_budget_ms: float
    error_rate_threshold: float
    camera_timeout: float
    output_timeout: float
    reliability_monitor: bool
    reliability_threshold: float
    reliability_hold: float

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> RuntimeSettings:
        """The settings from {parameter: value} (every run-time parameter); raises ParameterError naming each bad
        value."""
        problems = [problem for name, value in values.items() if (problem := validate(name, value))]
        if problems:
            raise ParameterError("; ".join(problems))
        return cls(**{f.name: type(PARAMETERS[f.name].default)(values[f.name]) for f in dataclasses.fields(cls)})

    def updated(self, changes: dict[str, Any]) -> RuntimeSettings:
        """A copy with `changes` (run-time parameters only) applied, checked as a whole."""
        return self.from_values({**dataclasses.asdict(self), **changes})

    def reliability_threshold_for(self, card_threshold: float | None, has_confidence: bool) -> float | None:
        """The confidence threshold /diagnostics checks: the parameter, else the card's; None when off."""
        if not (self.reliability_monitor and has_confidence):
            return None
        return self.reliability_threshold if self.reliability_threshold >= 0 else card_threshold

    def reliability_monitor_state(self, card_threshold: float | None, has_confidence: bool) -> str:
        """"on" or "off: why", as /diagnostics states it for each camera."""
        if not has_confidence:
            return "off: the model gives labels only (no confidence)"
        if not self.reliability_monitor:
            return "off: reliability_monitor is false"
        if self.reliability_threshold_for(card_threshold, has_confidence) is None:
            return "off: no threshold (set reliability_threshold, or calibrate the card: seg-calibrate-confidence)"
        return "on"

    def health_thresholds(self, card_threshold: float | None, has_confidence: bool) -> HealthThresholds:
        return HealthThresholds(
            latency_budget_ms=self.latency_budget_ms, error_rate_threshold=self.error_rate_threshold,
            camera_timeout=self.camera_timeout, output_timeout=self.output_timeout,
            reliability_threshold=self.reliability_threshold_for(card_threshold, has_confidence),
            reliability_hold=self.reliability_hold)


RUNTIME_PARAMETERS = tuple(f.name for f in dataclasses.fields(RuntimeSettings))
