"""seg_node: segment camera images and publish class masks, colour masks, overlays and latency diagnostics.

Subscription callbacks only check each frame and park the newest of each camera; one worker thread decodes,
segments, renders and publishes it, so latency stays bounded when cameras are faster than the model (older frames
are dropped and counted). With batch_cameras on (auto: GPU devices), the frames waiting from several cameras go
through one inference call; a lone frame is never held back for others.
This file holds the node's parameters, topics, threads and diagnostics; the work on a frame is in
seg_node.core (pipeline, render) and beside this file (frames, camera_outputs, camera_health).
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import ParameterDescriptor, ParameterType, SetParametersResult
from rclpy.event_handler import SubscriptionEventCallbacks, UnsupportedEventTypeError
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.node import Node
from rclpy.qos import QoSProfile, QoSReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image

from ..core.backends import TensorRTOptions
from ..core.command_line import reports_user_errors
from ..core.errors import UserError
from ..core.image_codec import DecodedImage, ImageRejected
from ..core.pipeline import SegmentationPipeline, SegmentationResult
from . import node_parameters
from .camera_health import CameraHealth
from .camera_outputs import CameraOutputs
from .frames import CameraFrame, checked_frame
from .image_messages import stamp_ns
from .node_main import spin_node
from .node_parameters import RUNTIME_PARAMETERS, ParameterError, RuntimeSettings

PARAMETER_TYPES = {bool: ParameterType.PARAMETER_BOOL, int: ParameterType.PARAMETER_INTEGER,
                   float: ParameterType.PARAMETER_DOUBLE, str: ParameterType.PARAMETER_STRING,
                   list: ParameterType.PARAMETER_STRING_ARRAY}
PIPELINE_STAGES = ("preprocess", "inference", "postprocess")
LABELS_ONLY = "the model gives labels only"


class StartupError(RuntimeError):
    """The node cannot start with this configuration; the message says what to fix."""


@dataclass
class Camera:
    name: str
    topic: str
    health: CameraHealth
    outputs: CameraOutputs
    pending: CameraFrame | None = None  # the newest frame the worker has not taken
    waiting_since: float = 0.0  # perf_counter when the camera's first untaken frame arrived (newer ones replace it)


@dataclass
class Job:
    """One camera's frame in the worker, from the moment it is taken to its outputs."""

    camera: Camera
    frame: CameraFrame
    image: DecodedImage | None = None
    decode_ms: float = 0.0
    wanted: dict[str, bool] = field(default_factory=dict)  # CameraOutputs.wanted: the outputs to build


class SegNode(Node):
    def __init__(self, **node_kwargs):
        super().__init__("seg_node", **node_kwargs)
        self._wakeup = threading.Condition()
        self._running = True
        self._worker: threading.Thread | None = None  # started last: a failed start has no worker to stop
        self._declare_parameters()
        #: the run-time settings; the set-parameters callback replaces the whole object, the worker reads it
        self.settings = RuntimeSettings.from_values({name: self._get(name) for name in RUNTIME_PARAMETERS})
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.pipeline = self._load_pipeline()
        backend = self.pipeline.backend
        self.hardware_id = self._get("hardware_id") or f"seg_node/{backend.name}/{backend.device}"
        self.max_pixels = self._get("max_image_pixels")
        self.cameras = self._create_cameras()
        self.batch_cameras = node_parameters.batches_cameras(self._get("batch_cameras"), backend.device,
                                                             backend.batches)
        if self.batch_cameras and len(self.cameras) > 1:
            self._warm_up(self.pipeline, len(self.cameras))
        self.diagnostics_publisher = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._reported_at = self._now()
        self.create_timer(self._get("diagnostics_period"), self._publish_diagnostics)

        self._worker = threading.Thread(target=self._work, name="seg_node_inference", daemon=True)
        self._worker.start()
        self._log_start()

    # --- parameters -------------------------------------------------------------------------------
    def _get(self, name: str):
        return self.get_parameter(name).value

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
        """Check the change as a whole, then swap the settings in one assignment (start-up parameters are
        read-only: rclpy refuses them before this is called)."""
        try:
            settings = self.settings.updated({p.name: p.value for p in changes if p.name in RUNTIME_PARAMETERS})
        except ParameterError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        self.settings = settings
        return SetParametersResult(successful=True)

    def _load_pipeline(self) -> SegmentationPipeline:
        tensorrt = TensorRTOptions(fp16=self._get("tensorrt_fp16"),
                                   engine_cache_dir=self._get("tensorrt_engine_cache_dir"))
        try:
            pipeline = SegmentationPipeline.from_model(
                self._get("model") or None, backend=self._get("backend"), device=self._get("device"),
                precision=self._get("precision"), threads=self._get("threads"), upsampling=self.settings.upsampling,
                tensorrt=tensorrt)
        except UserError as exc:
            raise StartupError(f"cannot load the model: {exc}") from exc
        self._warm_up(pipeline, 1)
        return pipeline

    def _warm_up(self, pipeline: SegmentationPipeline, batch: int) -> None:
        try:
            seconds = pipeline.backend.warm_up(batch)
        except Exception as exc:  # an engine that loads but cannot run (TensorRT build, out of GPU memory)
            raise StartupError(f"the model loaded but its warm-up inference (batch {batch}) failed: {exc}") from exc
        self.get_logger().info(f"warm-up inference ({pipeline.backend.describe()}, batch {batch}): "
                               f"{1e3 * seconds:.1f} ms")

    def _log_start(self) -> None:
        card, log = self.pipeline.card, self.get_logger()
        log.info(f"segmenting {[c.topic for c in self.cameras]} with {card.name} ({self.pipeline.backend.describe()}), "
                 f"{card.input.width}x{card.input.height} input"
                 + (", flip-averaged (two passes per frame)" if card.flip_average else ""))
        if len(self.cameras) > 1:
            log.info(f"batch_cameras {self._get('batch_cameras')}: frames waiting from several cameras are segmented "
                     + ("in one call" if self.batch_cameras else "one by one")
                     + ("" if self.pipeline.backend.batches else f" ({card.name} takes one image per run)"))
        if not self.pipeline.has_confidence:
            log.info(f"{card.name}: {LABELS_ONLY}: no ~/confidence, no confidence_score, and the reliability "
                     "monitor is off for every camera")
        elif self.settings.reliability_monitor and self.settings.reliability_threshold_for(*self._confidence()) is None:
            log.info("reliability_monitor: the model card has no confidence.threshold and reliability_threshold is "
                     "-1, so /diagnostics does not check confidence (set reliability_threshold, or calibrate the "
                     "card: seg-calibrate-confidence)")

    def _confidence(self) -> tuple[float | None, bool]:
        """(the card's confidence threshold, whether the model gives a confidence at all)."""
        return self.pipeline.card.confidence.threshold, self.pipeline.has_confidence

    # --- topics -----------------------------------------------------------------------------------
    def _camera_qos(self) -> QoSProfile:
        qos = QoSProfile(depth=self._get("qos_depth"), reliability=qos_profile_sensor_data.reliability,
                         durability=qos_profile_sensor_data.durability, history=qos_profile_sensor_data.history)
        if self._get("qos_reliability") == "reliable":
            qos.reliability = QoSReliabilityPolicy.RELIABLE
        return qos

    def _create_cameras(self) -> list[Camera]:
        """Per camera: its outputs, and a subscription that also counts the messages the transport reports lost."""
        topics = self._get("input_topics")
        try:
            names = node_parameters.camera_names(list(topics), list(self._get("camera_names")))
        except ValueError as exc:
            raise StartupError(f"bad parameter: {exc}") from exc
        compressed = self._get("input_transport") == "compressed"
        qos, now = self._camera_qos(), self._now()
        cameras = []
        for name, topic in zip(names, topics):
            outputs = CameraOutputs(self, f"~/{name}/" if name else "~/", self.pipeline.has_confidence)
            camera = Camera(name, topic + "/compressed" if compressed else topic, CameraHealth(now), outputs)
            self._subscribe(camera, CompressedImage if compressed else Image, qos)
            cameras.append(camera)
        return cameras

    def _subscribe(self, camera: Camera, message_type, qos) -> None:
        """The camera's subscription, counting the messages the transport reports lost where the RMW can."""
        on_image = lambda msg, cam=camera: self._on_image(cam, msg)  # noqa: E731
        lost = SubscriptionEventCallbacks(message_lost=lambda info, cam=camera: cam.health.lost(
            info.total_count_change))
        try:
            self.create_subscription(message_type, camera.topic, on_image, qos, event_callbacks=lost)
        except UnsupportedEventTypeError:
            self.get_logger().warn(f"{camera.topic}: this RMW does not report lost messages, so frames_lost "
                                   "stays 0 and transport losses show only as a lower input rate")
            self.create_subscription(message_type, camera.topic, on_image, qos)

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_image(self, camera: Camera, msg) -> None:
        """Check the frame here, once, so a malformed frame never displaces a good one waiting for the model."""
        camera.health.received(self._now())
        try:
            frame = checked_frame(msg, self.max_pixels)
        except ImageRejected as exc:
            self._reject(camera, exc, by_worker=False)
            return
        with self._wakeup:
            if camera.pending is not None:
                camera.health.dropped()
            else:
                camera.waiting_since = frame.arrived
            camera.pending = frame
            self._wakeup.notify()

    def _reject(self, camera: Camera, exc: ImageRejected, by_worker: bool) -> None:
        camera.health.rejected(exc.reason, self._now(), by_worker)
        self.get_logger().error(f"{camera.topic}: rejected image: {exc}", throttle_duration_sec=1.0)

    # --- inference worker -------------------------------------------------------------------------
    def _take_frames(self) -> list[Job] | None:
        """Block until a frame waits, then take the frame of the camera that has waited longest (since its first
        untaken frame: a newer frame replacing an older one does not send its camera to the back) or, batching,
        every camera's waiting frame; never wait for more cameras to fill a batch."""
        with self._wakeup:
            while self._running and all(c.pending is None for c in self.cameras):
                self._wakeup.wait(timeout=0.5)
            if not self._running:
                return None
            waiting = sorted((c for c in self.cameras if c.pending is not None), key=lambda c: c.waiting_since)
            jobs = [Job(camera, camera.pending) for camera in (waiting if self.batch_cameras else waiting[:1])]
            for job in jobs:
                job.camera.pending = None
            return jobs

    def _work(self) -> None:
        """Segment the frames taken together in one call, then render and publish each camera's; a failure fails
        the frames it touched (the batch's, or one camera's outputs), never the worker."""
        while (jobs := self._take_frames()) is not None:
            started, settings = time.perf_counter(), self.settings  # the settings of the moment, for the whole batch
            try:
                jobs = self._decoded(jobs, settings)
                results = self._segment(jobs, settings)
            except Exception as exc:
                if not self._frames_failed(jobs, exc):
                    return
                continue
            for job, result in zip(jobs, results):
                try:
                    self._publish(job, result, settings, started, len(jobs))
                except Exception as exc:
                    if not self._frames_failed([job], exc):
                        return

    def _frames_failed(self, jobs: list[Job], exc: Exception) -> bool:
        """Count and log a failure of these frames; False when it is shutdown that interrupted them."""
        if not (self._running and self.context.ok()):
            return False  # shutdown began mid-frame (ROS context gone, backend cancelled): not a frame failure
        for job in jobs:
            job.camera.health.failed(f"{type(exc).__name__}: {exc}", self._now())
            self.get_logger().error(f"{job.camera.topic}: frame failed: {exc}", throttle_duration_sec=1.0)
        return True

    def _decoded(self, jobs: list[Job], settings: RuntimeSettings) -> list[Job]:
        """The jobs whose frame decodes, with their image and the outputs their camera wants; the others are
        rejected."""
        decoded = []
        for job in jobs:
            began = time.perf_counter()
            try:
                job.image = job.frame.decode()
                job.decode_ms = 1e3 * (time.perf_counter() - began)
                job.wanted = job.camera.outputs.wanted(settings)
            except ImageRejected as exc:
                self._reject(job.camera, exc, by_worker=True)
                continue
            except Exception as exc:  # counted once, as this job's failure; the others go on
                self._frames_failed([job], exc)
                continue
            decoded.append(job)
        return decoded

    def _segment(self, jobs: list[Job], settings: RuntimeSettings) -> list[SegmentationResult]:
        """One pipeline call for all the jobs (a lone frame: a batch of one, as segment() runs it)."""
        self.pipeline.upsampling = settings.upsampling  # only this thread runs the pipeline
        return self.pipeline.segment_batch([job.image.pixels for job in jobs],
                                           [job.image.channel_order for job in jobs],
                                           [job.wanted["confidence"] for job in jobs])

    def _publish(self, job: Job, result: SegmentationResult, settings: RuntimeSettings, started: float,
                 batch_size: int) -> None:
        """Render and publish one camera's outputs, then its ~/latency: its own queue, decode, render and publish
        times, the batch's preprocess and inference, and a total from the moment the worker took the frames."""
        camera, image, header = job.camera, job.image, job.frame.header
        rendering = time.perf_counter()
        display = self.pipeline.render(image.pixels, image.channel_order, result.mask, settings.visualization_scale,
                                       settings.overlay_alpha, job.wanted["color_mask"], job.wanted["overlay"])
        rendered = time.perf_counter()
        camera.outputs.publish(header, result, display, job.wanted)
        finished = time.perf_counter()
        now = self._now()  # with sim time it reads 0 until the first /clock: an age against that is decades off
        timings = {"queue": 1e3 * (started - job.frame.arrived), "decode": job.decode_ms,
                   **{stage: result.timings_ms[stage] for stage in PIPELINE_STAGES},
                   "render": 1e3 * (rendered - rendering), "publish": 1e3 * (finished - rendered),
                   "total": 1e3 * (finished - started),
                   "age": 1e3 * (now - stamp_ns(header.stamp) * 1e-9) if now > 0.0 else float("nan")}
        camera.outputs.publish_latency(header, f"{self.get_name()}: {camera.name or 'camera'} latency",
                                       self.hardware_id, timings, result.score, camera.health.frames_lost(),
                                       batch_size)
        camera.health.processed(now, timings["queue"], timings["total"], timings["age"], result.score)

    # --- diagnostics ------------------------------------------------------------------------------
    def _publish_diagnostics(self) -> None:
        now = self._now()
        if now < self._reported_at or self._reported_at == 0.0:  # sim time: the first /clock, or a bag looped
            for camera in self.cameras:
                camera.health.restart_clock(now)
        self._reported_at = now
        array = DiagnosticArray(status=[self._camera_status(camera, now) for camera in self.cameras])
        array.header.stamp = self.get_clock().now().to_msg()
        self.diagnostics_publisher.publish(array)

    def _camera_status(self, camera: Camera, now: float) -> DiagnosticStatus:
        settings, backend, confidence = self.settings, self.pipeline.backend, self._confidence()
        report = camera.health.report(now, settings.health_thresholds(*confidence), self._worker.is_alive())
        values = {"input_topic": camera.topic, "backend": backend.name, "device": backend.device,
                  "precision": backend.precision, "model": self.pipeline.card.name, **report.values,
                  "latency_budget_ms": f"{settings.latency_budget_ms:.1f}",
                  "reliability_monitor": settings.reliability_monitor_state(*confidence)}
        message = report.message
        if not self.pipeline.has_confidence:  # stated in every status: OK must not read as "monitored"
            message += f"; reliability monitor off: {LABELS_ONLY}"
        return DiagnosticStatus(level=bytes([report.level]), name=f"{self.get_name()}: {camera.name or 'camera'}",
                                message=message, hardware_id=self.hardware_id,
                                values=[KeyValue(key=k, value=v) for k, v in values.items()])

    def stop_worker(self, grace: float = 1.0) -> None:
        """Let the frame in progress finish, then join the worker; a backend still inside one call after
        `grace` seconds (hung) is cancelled where the library can, so that the node is never destroyed under
        a running worker."""
        if self._worker is None:
            return
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


@reports_user_errors
def main(args: list[str] | None = None) -> int:
    return spin_node(SegNode, args, "seg_node", (StartupError,))


if __name__ == "__main__":
    sys.exit(main())
