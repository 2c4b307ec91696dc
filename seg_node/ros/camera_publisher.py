"""camera_publisher: publish a V4L2 device or a video file as sensor_msgs/Image (bgr8) on image_raw.

For machines without usb_cam or v4l2_camera, and for replaying recorded drives as a live camera. A video file
played without `loop` ends the node (exit 0) at its last frame, so a launch built around it ends too.
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image

from ..core.command_line import reports_user_errors
from .image_messages import image_message
from .node_main import NodeFinished, spin_node


class CameraPublisher(Node):
    def __init__(self):
        super().__init__("camera_publisher")
        source = self._declare("source", "/dev/video0", "V4L2 device (/dev/videoN or index) or a video file")
        rate = self._declare("rate", 30.0, "publish rate in Hz")
        self.loop = self._declare("loop", True, "restart a video file at its end")
        self.frame_id = self._declare("frame_id", "camera", "frame_id of the images")
        if rate <= 0:
            raise ValueError(f"rate must be > 0, got {rate}")
        self.is_file = Path(source).is_file()
        self.capture = cv2.VideoCapture(int(source) if source.isdigit() else source)
        if not self.capture.isOpened():
            raise ValueError(f"cannot open camera source {source!r} (a /dev/videoN device or a video file)")
        self.publisher = self.create_publisher(Image, "image_raw", qos_profile_sensor_data)
        self.published = 0
        self.create_timer(1.0 / rate, self._publish_frame)
        self.get_logger().info(f"publishing {source} at {rate:.1f} Hz on {self.publisher.topic_name}")

    def _declare(self, name: str, default, description: str):
        try:
            return self.declare_parameter(name, default, ParameterDescriptor(description=description,
                                                                             read_only=True)).value
        except (InvalidParameterTypeException, InvalidParameterValueException) as exc:
            raise ValueError(f"bad parameter {name}: {exc}") from exc

    def _publish_frame(self) -> None:
        ok, frame = self.capture.read()
        if not ok and self.is_file and not self.loop:
            self.get_logger().info(f"the source ended after {self.published} frames (loop is false): stopping")
            raise NodeFinished
        if not ok and self.is_file:
            self.capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, frame = self.capture.read()
        if not ok:
            self.get_logger().warn("no frame from the source", throttle_duration_sec=5.0)
            return
        msg = image_message(frame, "bgr8")
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.header.frame_id = self.frame_id
        self.publisher.publish(msg)
        self.published += 1

    def destroy_node(self) -> None:
        self.capture.release()
        super().destroy_node()


@reports_user_errors
def main(args: list[str] | None = None) -> int:
    return spin_node(CameraPublisher, args, "camera_publisher", (ValueError,))


if __name__ == "__main__":
    sys.exit(main())
