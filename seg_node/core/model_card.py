"""Model cards: the JSON beside every model file that says how to feed it and what it was measured to do.

A card is validated when it is read, so a bad card stops the node at start-up with a message naming the
field, instead of producing garbage masks later.
"""

from __future__ import annotations

import json
import math
import shlex
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UserError

CARD_FORMAT = "seg_node-model-card/1"
CHANNEL_ORDERS = ("rgb", "bgr")


class ModelCardError(UserError, ValueError):
    """A model card is missing, unreadable or inconsistent; the message says which file and field."""


def is_numbers(values: Any, count: int) -> bool:
    """A JSON list of `count` numbers (booleans are not numbers here)."""
    return (isinstance(values, list) and len(values) == count
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values))


@dataclass
class InputSpec:
    """What the network expects: size, channel order and per-channel (x - mean) / std in pixel units."""

    height: int
    width: int
    channel_order: str = "rgb"
    mean: list[float] = field(default_factory=lambda: [127.0, 127.0, 127.0])
    std: list[float] = field(default_factory=lambda: [128.0, 128.0, 128.0])

    def validate(self, where: str) -> None:
        if not (isinstance(self.height, int) and isinstance(self.width, int)) or min(self.height, self.width) < 8:
            raise ModelCardError(f"{where}: input height/width must be integers >= 8, got "
                                 f"{self.height}x{self.width}")
        if self.channel_order not in CHANNEL_ORDERS:
            raise ModelCardError(f"{where}: input.channel_order must be one of {CHANNEL_ORDERS}, "
                                 f"got {self.channel_order!r}")
        if not (is_numbers(self.mean, 3) and is_numbers(self.std, 3)) or any(s <= 0 for s in self.std):
            raise ModelCardError(f"{where}: input.mean and input.std need 3 numbers each, std > 0, got "
                                 f"{self.mean!r} and {self.std!r}")


INPUT_LAYOUTS = ("NCHW", "NHWC")
INPUT_DTYPES = ("float32", "uint8")
INPUT_SIZES = ("fixed", "dynamic")
OUTPUT_LAYOUTS = ("NCHW", "NHWC", "NHW")
OUTPUT_KINDS = ("logits", "probabilities", "labels")
BATCH_AXES = ("fixed", "dynamic")


def rounded_size(height: int, width: int, multiple: int) -> tuple[int, int]:
    """height x width, each rounded to the nearest multiple of `multiple`, halves up (at least one multiple)."""
    return tuple(max(1, int(side / multiple + 0.5)) * multiple for side in (height, width))


@dataclass
class InterfaceSpec:
    """How the ONNX graph takes images and gives classes, so models from other toolchains run unchanged. The
    defaults are this project's exports: one N x 3 x H x W float32 input, N x C x h x w float32 logits.

    input_size: "fixed" feeds the card's height x width (the graph's own); "dynamic" (the graph takes any size)
    does too, or, with `size_multiple`, the image's own size rounded to that multiple. output_kind: "logits",
    "probabilities" (a softmax inside the graph) or "labels" (an argmax inside the graph: integer class ids,
    N x h x w with output_layout "NHW", or with a channel axis of 1). batch: "dynamic" when the graph takes N
    images in one run (several cameras' frames batched), "fixed" when it takes one. input_name and output_name
    None: the graph's only input, its first output."""

    input_name: str | None = None
    input_layout: str = "NCHW"
    input_dtype: str = "float32"
    input_size: str = "fixed"
    size_multiple: int | None = None
    output_name: str | None = None
    output_layout: str = "NCHW"
    output_kind: str = "logits"
    batch: str = "fixed"

    def validate(self, where: str) -> None:
        for name, allowed in (("input_layout", INPUT_LAYOUTS), ("input_dtype", INPUT_DTYPES),
                              ("input_size", INPUT_SIZES), ("output_layout", OUTPUT_LAYOUTS),
                              ("output_kind", OUTPUT_KINDS), ("batch", BATCH_AXES)):
            if getattr(self, name) not in allowed:
                raise ModelCardError(f"{where}: interface.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("input_name", "output_name"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, str) and value):
                raise ModelCardError(f"{where}: interface.{name} must be a tensor name or null, got {value!r}")
        if self.size_multiple is not None and not (
                isinstance(self.size_multiple, int) and not isinstance(self.size_multiple, bool)
                and self.size_multiple >= 1 and self.input_size == "dynamic"):
            raise ModelCardError(f"{where}: interface.size_multiple must be null or an integer >= 1 with "
                                 f"input_size 'dynamic', got {self.size_multiple!r} with {self.input_size!r}")
        if self.output_layout == "NHW" and self.output_kind != "labels":
            raise ModelCardError(f"{where}: interface.output_layout 'NHW' (no class axis) fits only output_kind "
                                 f"'labels', got {self.output_kind!r}")

    @property
    def has_scores(self) -> bool:
        """Per-class scores (logits or probabilities), hence a confidence; labels-only models have none."""
        return self.output_kind != "labels"

    @property
    def input_dtype_numpy(self) -> type:
        return np.uint8 if self.input_dtype == "uint8" else np.float32

    def input_shape(self, batch: int, height: int, width: int) -> tuple[int, int, int, int]:
        return (batch, 3, height, width) if self.input_layout == "NCHW" else (batch, height, width, 3)

    def network_size(self, spec: InputSpec, height: int, width: int) -> tuple[int, int]:
        """The size fed to the network for an image of height x width."""
        if self.size_multiple is None:
            return spec.height, spec.width
        return rounded_size(height, width, self.size_multiple)

    def output_problem(self, shape: tuple | list, num_classes: int) -> str | None:
        """What is wrong with an output of this shape for this card, or None; dimensions that are not integers
        (symbolic in a graph) are not checked."""
        rank = 3 if self.output_layout == "NHW" else 4
        if len(shape) != rank:
            return (f"the model's output has shape {list(shape)}, but interface.output_layout "
                    f"{self.output_layout!r} needs {rank} axes")
        if self.output_layout == "NHW":
            return None
        axis = 1 if self.output_layout == "NCHW" else 3
        expected = 1 if self.output_kind == "labels" else num_classes
        found, other = shape[axis], shape[4 - axis]
        if not isinstance(found, int) or found == expected:
            return None
        hint = (f"; axis {4 - axis} has {expected}: the output is {'NHWC' if axis == 1 else 'NCHW'}, set "
                "interface.output_layout" if other == expected else "")
        if self.output_kind == "labels":
            return (f"the model's labels output {list(shape)} has {found} at its channel axis {axis} "
                    f"({self.output_layout}), where labels need 1{hint}")
        return (f"the model outputs {found} classes (axis {axis} of its {self.output_layout} output "
                f"{list(shape)}) but its card lists {num_classes}{hint}")


@dataclass
class ConfidenceSpec:
    """How the pipeline turns logits into confidence (seg_node.core.confidence): the softmax temperature, and
    the frame score under which the node's diagnostics warn (None: not calibrated, no warning unless the node
    is given one); `calibration` records how seg-calibrate-confidence chose both."""

    temperature: float = 1.0
    threshold: float | None = None
    calibration: dict[str, Any] = field(default_factory=dict)

    def validate(self, where: str) -> None:
        if not (is_numbers([self.temperature], 1) and math.isfinite(self.temperature) and self.temperature > 0):
            raise ModelCardError(f"{where}: confidence.temperature must be a finite number > 0, "
                                 f"got {self.temperature!r}")
        if self.threshold is not None and not (is_numbers([self.threshold], 1) and 0.0 <= self.threshold <= 1.0):
            raise ModelCardError(f"{where}: confidence.threshold must be a number in [0, 1] or null, "
                                 f"got {self.threshold!r}")
        if not isinstance(self.calibration, dict):
            raise ModelCardError(f"{where}: confidence.calibration must be an object, got {self.calibration!r}")


def sub_spec(spec_class: type, value: Any, block: str, where: str, fields_hint: str):
    """One nested block of a card (input, confidence, interface) as its dataclass, or an error naming the block."""
    if not isinstance(value, dict):
        raise ModelCardError(f"{where}: {block} must be an object {fields_hint}")
    try:
        return spec_class(**value)
    except TypeError as exc:
        raise ModelCardError(f"{where}: bad {block} spec: {exc}") from exc


@dataclass
class ModelCard:
    name: str
    architecture: dict[str, Any]
    classes: list[str]
    palette: list[list[int]]
    input: InputSpec
    files: dict[str, str]
    metrics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    compression: dict[str, Any] = field(default_factory=dict)
    #: per-class logit offsets folded into the classifier after training (seg-class-bias), and how they were fit
    class_bias: dict[str, Any] = field(default_factory=dict)
    #: run the network on the image and on its mirror image and average the logits: twice the cost, for
    #: accuracy (the offsets in class_bias are then fitted to the averaged logits)
    flip_average: bool = False
    #: one number per class that the pipeline adds to the network's logits (after flip averaging), so a card can
    #: name another model's files and differ from it only in offsets instead of shipping a copy of its weights
    logit_offsets: list[float] = field(default_factory=list)
    confidence: ConfidenceSpec = field(default_factory=ConfidenceSpec)
    #: the ONNX graph's input and output (absent: this project's NCHW float32 image in, NCHW float32 logits out)
    interface: InterfaceSpec = field(default_factory=InterfaceSpec)
    notes: str = ""
    format: str = CARD_FORMAT

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def validate(self, where: str = "model card") -> None:
        if self.format != CARD_FORMAT:
            raise ModelCardError(f"{where}: format must be {CARD_FORMAT!r}, got {self.format!r}")
        if not isinstance(self.name, str) or not self.name:
            raise ModelCardError(f"{where}: name must be a non-empty string")
        if not isinstance(self.classes, list) or not self.classes or not all(isinstance(c, str) for c in self.classes):
            raise ModelCardError(f"{where}: classes must be a non-empty list of names")
        if len(self.classes) > 255:
            raise ModelCardError(f"{where}: at most 255 classes fit a mono8 mask, got {len(self.classes)}")
        if not isinstance(self.palette, list) or len(self.palette) != len(self.classes) or any(
                not is_numbers(c, 3) or not all(0 <= v <= 255 for v in c) for c in self.palette):
            raise ModelCardError(f"{where}: palette needs one [r, g, b] (0-255) per class "
                                 f"({len(self.classes)} classes, {len(self.palette)} colours)")
        if not isinstance(self.architecture, dict) or not isinstance(self.architecture.get("name"), str):
            raise ModelCardError(f"{where}: architecture must be an object with a 'name'")
        if not isinstance(self.files, dict) or not self.files or not all(
                isinstance(f, str) for f in self.files.values()):
            raise ModelCardError(f"{where}: files must map at least one format (onnx or torch) to a file name")
        if not isinstance(self.flip_average, bool):
            raise ModelCardError(f"{where}: flip_average must be true or false, got {self.flip_average!r}")
        if self.logit_offsets != [] and not (is_numbers(self.logit_offsets, len(self.classes))
                                             and all(math.isfinite(v) for v in self.logit_offsets)):
            raise ModelCardError(f"{where}: logit_offsets needs one finite number per class ({len(self.classes)}) "
                                 f"or none, got {self.logit_offsets!r}")
        self.input.validate(where)
        self.confidence.validate(where)
        self.interface.validate(where)
        self.validate_interface_fit(where)

    def validate_interface_fit(self, where: str) -> None:
        """The fields that depend on the interface: raw-pixel inputs and what needs per-class scores."""
        if self.interface.input_dtype == "uint8" and (self.input.mean != [0, 0, 0] or self.input.std != [1, 1, 1]):
            raise ModelCardError(f"{where}: a uint8 input takes pixels without normalization: input.mean must be "
                                 f"[0, 0, 0] and input.std [1, 1, 1], got {self.input.mean} and {self.input.std}")
        if self.logit_offsets and self.interface.output_kind != "logits":
            raise ModelCardError(f"{where}: logit_offsets need an output of logits, this model's is "
                                 f"{self.interface.output_kind}")
        if not self.interface.has_scores and (self.flip_average or self.confidence.threshold is not None):
            raise ModelCardError(f"{where}: a model that outputs labels has no scores to flip-average or to take a "
                                 "confidence from: flip_average must be false and confidence.threshold null")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "model card") -> ModelCard:
        required = ("name", "architecture", "classes", "palette", "input", "files")
        missing = [k for k in required if k not in data]
        if missing:
            raise ModelCardError(f"{where}: missing field(s) {', '.join(missing)}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelCardError(f"{where}: unknown field(s) {', '.join(unknown)}")
        spec = sub_spec(InputSpec, data["input"], "input", where, "{width, height, mean, std, channel_order}")
        confidence = sub_spec(ConfidenceSpec, data.get("confidence", {}), "confidence", where,
                              "{temperature, threshold, calibration}")
        interface = sub_spec(InterfaceSpec, data.get("interface", {}), "interface", where,
                             "(see docs/your_own_model.md)")
        card = cls(**{**data, "input": spec, "confidence": confidence, "interface": interface})
        card.validate(where)
        return card

    @classmethod
    def load(cls, path: str | Path) -> ModelCard:
        path = Path(path)
        if not path.is_file():
            raise ModelCardError(f"model card {path} not found: every model file needs its .json card beside it")
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelCardError(f"model card {path} is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ModelCardError(f"model card {path} must hold a JSON object")
        return cls.from_dict(data, str(path))


def card_path_for(model_path: str | Path) -> Path:
    """The card of `models/x.onnx` (or `.safetensors`) is `models/x.json`."""
    return Path(model_path).with_suffix(".json")


DATA_PLACEHOLDER = "$CAMVID_ROOT"


def command_line(program: str, argv: list[str] | None) -> str:
    """The command as typed (argv, or this process's arguments), for the card's record of how it was made; the
    --data folder reads $CAMVID_ROOT there, since a card names its data set by checksum, not by a machine's path."""
    words = [shlex.quote(word) for word in (sys.argv[1:] if argv is None else argv)]
    for i, word in enumerate(words):
        if word == "--data" and i + 1 < len(words):
            words[i + 1] = DATA_PLACEHOLDER
        elif word.startswith("--data="):
            words[i] = f"--data={DATA_PLACEHOLDER}"
    return " ".join([program, *words])
