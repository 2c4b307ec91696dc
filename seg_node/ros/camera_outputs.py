"""One camera's output topics. Each image output is built and published only when it is subscribed and the
run-time settings ask for it; ~/confidence exists only for models that give a confidence."""

from __future__ import annotations

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node
from sensor_msgs.msg import Image

from ..core.pipeline import SegmentationResult
from ..core.render import DisplayImages
from .image_messages import image_message
from .node_parameters import RuntimeSettings

DISPLAY_OUTPUTS = ("color_mask", "overlay")


class CameraOutputs:
    def __init__(self, node: Node, prefix: str, with_confidence: bool):
        self.mask = node.create_publisher(Image, prefix + "mask", 5)
        self.color_mask = node.create_publisher(Image, prefix + "color_mask", 5)
        self.overlay = node.create_publisher(Image, prefix + "overlay", 5)
        self.confidence = node.create_publisher(Image, prefix + "confidence", 5) if with_confidence else None
        self.latency = node.create_publisher(DiagnosticArray, prefix + "latency", 10)

    def wanted(self, settings: RuntimeSettings) -> dict[str, bool]:
        """{output: build it} for mask, color_mask, overlay and confidence."""
        enabled = {"mask": settings.publish_mask, "color_mask": settings.publish_color_mask,
                   "overlay": settings.publish_overlay, "confidence": self.confidence is not None}
        return {name: on and getattr(self, name).get_subscription_count() > 0 for name, on in enabled.items()}

    def publish(self, header, result: SegmentationResult, display: DisplayImages, wanted: dict[str, bool]) -> None:
        """The frame's image outputs, each with the input's header."""
        if wanted["mask"]:
            self.mask.publish(image_message(result.mask, "mono8", header))
        for name in DISPLAY_OUTPUTS:
            pixels = getattr(display, name)
            if pixels is not None:
                getattr(self, name).publish(image_message(pixels, "rgb8", header))
        if result.confidence is not None and self.confidence is not None:
            self.confidence.publish(image_message(result.confidence, "mono8", header))

    def publish_latency(self, header, status_name: str, hardware_id: str, timings: dict[str, float],
                        score: float, frames_lost: int, batch_size: int) -> None:
        """The frame's ~/latency: its stage timings (ms), its confidence score, the camera's lost-message count so
        far and how many cameras' frames the worker took with it (1: alone; taken together, frames are segmented
        in one call per network input size)."""
        status = DiagnosticStatus(
            level=DiagnosticStatus.OK, name=status_name, message=f"{timings['total']:.1f} ms", hardware_id=hardware_id,
            values=[KeyValue(key=f"{k}_ms", value=f"{v:.3f}") for k, v in timings.items()]
            + [KeyValue(key="confidence_score", value=f"{score:.4f}"),
               KeyValue(key="frames_lost", value=str(frames_lost)), KeyValue(key="batch_size", value=str(batch_size))])
        self.latency.publish(DiagnosticArray(header=header, status=[status]))
