"""seg_node: segment camera images and publish class masks, colour masks, overlays and latency diagnostics.

Subscription callbacks only park the newest frame of each camera; one worker thread runs the pipeline,
so latency stays bounded when cameras are faster than the model (older frames are dropped and counted).
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import ParameterDescriptor, ParameterType, SetParametersResult
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.node import Node
from rclpy.qos import QoSProfile, QoSReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image

from ..core.backends import TensorRTOptions
from ..core.errors import UserError
from ..core.image_codec import DecodedImage, ImageRejected, check_compressed, decode_compressed, decode_raw, raw_pixels
from ..core.pipeline import SegmentationPipeline
from ..core.postprocess import for_display
from . import node_parameters
from .camera_health import CameraHealth, HealthThresholds
from .image_messages import image_message, stamp_ns
from .node_main import spin_node

PARAMETER_TYPES = {bool: ParameterType.PARAMETER_BOOL, int: ParameterType.PARAMETER_INTEGER,
                   float: ParameterType.PARAMETER_DOUBLE, str: ParameterType.PARAMETER_STRING,
                   list: ParameterType.PARAMETER_STRING_ARRAY}


class StartupError(RuntimeError):
    """The node cannot start with this configuration; the message says what to fix."""


@dataclass
class Camera:
    name: str
    topic: str
    health: CameraHealth
    publishers: dict = field(default_factory=dict)
    pending: object = None  # newest unprocessed message
    pending_since: float = 0.0  # perf_counter when it arrived


class SegNode(Node):
    def __init__(self, **node_kwargs):
        super().__init__("seg_node", **node_kwargs)
        self._declare_parameters()
        self.pipeline = self._load_pipeline()
        self.thresholds = HealthThresholds()
        self._apply_dynamic({name: self.get_parameter(name).value for name in node_parameters.PARAMETERS})
        self.add_on_set_parameters_callback(self._on_set_parameters)

        backend = self.pipeline.backend
        self.hardware_id = self.get_parameter("hardware_id").value or f"seg_node/{backend.name}/{backend.device}"
        self.max_pixels = self.get_parameter("max_image_pixels").value
        self.cameras = self._create_cameras()
        self.diagnostics_publisher = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._reported_at = self._now()
        self.create_timer(self.get_parameter("diagnostics_period").value, self._publish_diagnostics)

        self._wakeup = threading.Condition()
        self._running = True
        self._worker = threading.Thread(target=self._work, name="seg_node_inference", daemon=True)
        self._worker.start()
        self.get_logger().info(
            f"segmenting {[c.topic for c in self.cameras]} with {self.pipeline.card.name} "
            f"({backend.describe()}), {self.pipeline.card.input.width}x{self.pipeline.card.input.height} input"
            + (", flip-averaged (two passes per frame)" if self.pipeline.card.flip_average else ""))
        if self.reliability_monitor and self.thresholds.reliability_threshold is None:
            self.get_logger().info("reliability_monitor: the model card has no confidence.threshold and "
                                   "reliability_threshold is -1, so /diagnostics does not check confidence "
                                   "(set reliability_threshold, or calibrate the card: seg-calibrate-confidence)")

    # --- parameters -------------------------------------------------------------------------------
    def _declare_parameters(self) -> None:
        for name, spec in node_parameters.PARAMETERS.items():
            descriptor = ParameterDescriptor(
                name=name, type=PARAMETER_TYPES[type(spec.default)], description=spec.description,
                read_only=not spec.dynamic)
            try:
                value = self.declare_parameter(name, spec.default, descriptor).value
            except (InvalidParameterTypeException, InvalidParameterValueException) as exc:
                raise StartupError(f"bad parameter {name}: {exc}") from exc
            problem = node_parameters.validate(name, value)
            if problem:
                raise StartupError(f"bad parameter: {problem}")

    def _on_set_parameters(self, changes) -> SetParametersResult:
        problems = [node_parameters.validate(p.name, p.value) for p in changes if p.name in node_parameters.PARAMETERS]
        problems = [p for p in problems if p]
        if problems:
            return SetParametersResult(successful=False, reason="; ".join(problems))
        self._apply_dynamic({p.name: p.value for p in changes if p.name in node_parameters.PARAMETERS})
        return SetParametersResult(successful=True)

    def _apply_dynamic(self, values: dict) -> None:
        """Run-time settings: read by the worker on each frame (plain attribute writes are atomic)."""
        for name, value in values.items():
            if name in ("latency_budget_ms", "error_rate_threshold", "camera_timeout", "output_timeout"):
                setattr(self.thresholds, name, float(value))
            elif name == "upsampling":
                self.pipeline.upsampling = value
            elif node_parameters.PARAMETERS[name].dynamic:
                setattr(self, name, value)
        card_threshold = self.pipeline.card.confidence.threshold
        threshold = self.reliability_threshold if self.reliability_threshold >= 0 else card_threshold
        self.thresholds.reliability_threshold = threshold if self.reliability_monitor else None
        self.thresholds.reliability_hold = float(self.reliability_hold)

    def _load_pipeline(self) -> SegmentationPipeline:
        get = lambda name: self.get_parameter(name).value  # noqa: E731
        tensorrt = TensorRTOptions(fp16=get("tensorrt_fp16"), engine_cache_dir=get("tensorrt_engine_cache_dir"))
        try:
            pipeline = SegmentationPipeline.from_model(
                get("model") or None, backend=get("backend"), device=get("device"), precision=get("precision"),
                threads=get("threads"), upsampling=get("upsampling"), tensorrt=tensorrt)
        except UserError as exc:
            raise StartupError(f"cannot load the model: {exc}") from exc
        try:
            seconds = pipeline.backend.warm_up()
        except Exception as exc:  # an engine that loads but cannot run (TensorRT build, out of GPU memory)
            raise StartupError(f"the model loaded but its warm-up inference failed: {exc}") from exc
        self.get_logger().info(f"warm-up inference ({pipeline.backend.describe()}): {1e3 * seconds:.1f} ms")
        return pipeline

    # --- topics -----------------------------------------------------------------------------------
    def _create_cameras(self) -> list[Camera]:
        topics = self.get_parameter("input_topics").value
        try:
            names = node_parameters.camera_names(list(topics), list(self.get_parameter("camera_names").value))
        except ValueError as exc:
            raise StartupError(f"bad parameter: {exc}") from exc
        compressed = self.get_parameter("input_transport").value == "compressed"
        qos = QoSProfile(depth=self.get_parameter("qos_depth").value,
                         reliability=qos_profile_sensor_data.reliability,
                         durability=qos_profile_sensor_data.durability,
                         history=qos_profile_sensor_data.history)
        if self.get_parameter("qos_reliability").value == "reliable":
            qos.reliability = QoSReliabilityPolicy.RELIABLE
        now = self._now()
        cameras = []
        for name, topic in zip(names, topics):
            camera = Camera(name, topic + "/compressed" if compressed else topic, CameraHealth(now))
            prefix = f"~/{name}/" if name else "~/"
            for output in ("mask", "color_mask", "overlay"):
                camera.publishers[output] = self.create_publisher(Image, prefix + output, 5)
            camera.publishers["confidence"] = self.create_publisher(Image, prefix + "confidence", 5)
            camera.publishers["latency"] = self.create_publisher(DiagnosticArray, prefix + "latency", 10)
            self.create_subscription(CompressedImage if compressed else Image, camera.topic,
                                     lambda msg, cam=camera: self._on_image(cam, msg), qos)
            cameras.append(camera)
        return cameras

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_image(self, camera: Camera, msg) -> None:
        """Validate cheaply here, so a malformed frame never displaces a good one waiting for the model."""
        camera.health.received(self._now())
        try:
            self._check(msg)
        except ImageRejected as exc:
            self._reject(camera, exc)
            return
        with self._wakeup:
            if camera.pending is not None:
                camera.health.dropped()
            camera.pending, camera.pending_since = msg, time.perf_counter()
            self._wakeup.notify()

    def _reject(self, camera: Camera, exc: ImageRejected) -> None:
        camera.health.rejected(exc.reason, self._now())
        self.get_logger().error(f"{camera.topic}: rejected image: {exc}", throttle_duration_sec=1.0)

    def _check(self, msg) -> None:
        if isinstance(msg, CompressedImage):
            check_compressed(msg.format, msg.data, self.max_pixels)
        else:
            raw_pixels(msg.encoding, msg.height, msg.width, msg.step, msg.data, self.max_pixels)

    # --- inference worker -------------------------------------------------------------------------
    def _next_frame(self):
        """Block until a frame waits; serve the camera whose frame has waited longest."""
        with self._wakeup:
            while self._running and all(c.pending is None for c in self.cameras):
                self._wakeup.wait(timeout=0.5)
            if not self._running:
                return None
            camera = min((c for c in self.cameras if c.pending is not None), key=lambda c: c.pending_since)
            msg, since = camera.pending, camera.pending_since
            camera.pending = None
            return camera, msg, since

    def _work(self) -> None:
        while (job := self._next_frame()) is not None:
            camera = job[0]
            try:
                self._process(*job)
            except Exception as exc:  # one frame's failure, in inference or in publishing, must not stop the worker
                if not (self._running and self.context.ok()):
                    return  # shutdown began mid-frame (ROS context gone, backend cancelled): not a frame failure
                camera.health.failed(f"{type(exc).__name__}: {exc}", self._now())
                self.get_logger().error(f"{camera.topic}: frame failed: {exc}", throttle_duration_sec=1.0)

    def _decode(self, msg) -> DecodedImage:
        if isinstance(msg, CompressedImage):
            return decode_compressed(msg.format, msg.data, self.max_pixels)
        return decode_raw(msg.encoding, msg.height, msg.width, msg.step, msg.data, self.max_pixels)

    def _process(self, camera: Camera, msg, arrived: float) -> None:
        started = time.perf_counter()
        try:
            image = self._decode(msg)
        except ImageRejected as exc:
            self._reject(camera, exc)
            return
        decoded = time.perf_counter()
        confidence = camera.publishers["confidence"].get_subscription_count() > 0
        result = self.pipeline.segment(image.pixels, image.channel_order, confidence)
        self._publish_outputs(camera, msg.header, image, result.mask)
        if result.confidence is not None:
            camera.publishers["confidence"].publish(image_message(result.confidence, "mono8", msg.header))
        finished = time.perf_counter()
        now = self._now()  # with sim time it reads 0 until the first /clock: an age against that is decades off
        age_ms = 1e3 * (now - stamp_ns(msg.header.stamp) * 1e-9) if now > 0.0 else float("nan")
        timings = {"queue": 1e3 * (started - arrived), "decode": 1e3 * (decoded - started), **result.timings_ms,
                   "publish": 1e3 * (finished - decoded) - result.timings_ms["total"]}
        timings["total"] = 1e3 * (finished - started)
        timings["age"] = age_ms
        camera.health.processed(now, timings["queue"], timings["total"], age_ms, result.score)
        self._publish_latency(camera, msg.header, timings, result.score)

    def _publish_outputs(self, camera: Camera, header, image: DecodedImage, mask) -> None:
        pubs = camera.publishers
        wanted = {name: getattr(self, f"publish_{name}") and pubs[name].get_subscription_count() > 0
                  for name in ("mask", "color_mask", "overlay")}
        if wanted["mask"]:
            pubs["mask"].publish(image_message(mask, "mono8", header))
        if wanted["color_mask"] or wanted["overlay"]:
            pixels, labels = for_display(image.pixels, mask, self.visualization_scale)
            colors = self.pipeline.colorize(labels)
            if wanted["color_mask"]:
                pubs["color_mask"].publish(image_message(colors, "rgb8", header))
            if wanted["overlay"]:
                shown = DecodedImage(pixels, image.channel_order).as_rgb()
                blended = self.pipeline.overlay(shown, colors, self.overlay_alpha)
                pubs["overlay"].publish(image_message(blended, "rgb8", header))

    def _publish_latency(self, camera: Camera, header, timings: dict, score: float) -> None:
        status = DiagnosticStatus(
            level=DiagnosticStatus.OK, name=f"{self.get_name()}: {camera.name or 'camera'} latency",
            message=f"{timings['total']:.1f} ms", hardware_id=self.hardware_id,
            values=[KeyValue(key=f"{k}_ms", value=f"{v:.3f}") for k, v in timings.items()]
            + [KeyValue(key="confidence_score", value=f"{score:.4f}")])
        camera.publishers["latency"].publish(DiagnosticArray(header=header, status=[status]))

    # --- diagnostics ------------------------------------------------------------------------------
    def _publish_diagnostics(self) -> None:
        now = self._now()
        if now < self._reported_at or self._reported_at == 0.0:  # sim time: the first /clock, or a bag looped
            for camera in self.cameras:
                camera.health.restart_clock(now)
        self._reported_at = now
        backend, card = self.pipeline.backend, self.pipeline.card
        statuses = []
        for camera in self.cameras:
            report = camera.health.report(now, self.thresholds, self._worker.is_alive())
            values = {"input_topic": camera.topic, "backend": backend.name, "device": backend.device,
                      "precision": backend.precision, "model": card.name, **report.values,
                      "latency_budget_ms": f"{self.thresholds.latency_budget_ms:.1f}"}
            statuses.append(DiagnosticStatus(
                level=bytes([report.level]), name=f"{self.get_name()}: {camera.name or 'camera'}",
                message=report.message, hardware_id=self.hardware_id,
                values=[KeyValue(key=k, value=v) for k, v in values.items()]))
        array = DiagnosticArray(status=statuses)
        array.header.stamp = self.get_clock().now().to_msg()
        self.diagnostics_publisher.publish(array)

    def stop_worker(self, grace: float = 1.0) -> None:
        """Let the frame in progress finish, then join the worker; a backend still inside one call after
        `grace` seconds (hung) is cancelled where the library can, so that the node is never destroyed under
        a running worker."""
        with self._wakeup:
            self._running = False
            self._wakeup.notify_all()
        self._worker.join(grace)
        if self._worker.is_alive():
            self.get_logger().warn(f"inference still running {grace:.0f} s after shutdown began: cancelling it")
            self.pipeline.backend.cancel()
            self._worker.join(5.0)

    def destroy_node(self) -> None:
        self.stop_worker()
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    return spin_node(SegNode, args, "seg_node", (StartupError,))


if __name__ == "__main__":
    sys.exit(main())
