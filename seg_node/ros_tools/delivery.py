"""Best-effort delivery of camera frames to seg_node: how many of the frames a camera sends the node receives.

`measure_delivery` starts the node (default QoS: best effort, as for a camera) and, in a process of its own,
`python -m seg_node.ros_tools.delivery`, the camera: it publishes bgr8 frames with SensorDataQoS at a fixed
rate and reads the node's frames_received from /diagnostics before and after. Both processes get the same
Fast DDS profile (or none), since the sender's transports decide as much as the receiver's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image

from ..core.command_line import reports_user_errors
from ..ros.image_messages import image_message
from .node_process import DDS_PROFILE, camera_topic_for, ros_environment, running_seg_node

DIAGNOSTICS_PERIOD = 0.2  # s: the node's /diagnostics period during a measurement
#: equal frames_received reports in a row, a second's worth, that mean no frame is in flight: a node held up for a
#: moment (a loaded machine) can send two equal ones while frames still wait in its reader
QUIET_REPORTS = round(1.0 / DIAGNOSTICS_PERIOD)


class SenderError(RuntimeError):
    """The camera process failed; the message ends with its output."""


def pattern_frame(width: int, height: int) -> np.ndarray:
    """A bgr8 frame with structure (gradients and a grid), the same for every run."""
    y, x = np.mgrid[:height, :width]
    return np.dstack([(x * 255 // max(width - 1, 1)), (y * 255 // max(height - 1, 1)),
                      ((x // 32 + y // 32) % 2) * 255]).astype(np.uint8)


class DeliverySender:
    """The camera side: a best-effort publisher of one pattern frame, and the node's frames_received counts
    from /diagnostics, in arrival order."""

    def __init__(self, node_name: str, topic: str, width: int, height: int, timeout: float):
        self.node_name, self.size, self.timeout = node_name, f"{width}x{height}", timeout
        self.node = rclpy.create_node(f"seg_delivery_sender_{os.getpid()}")
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self.reports: list[int] = []
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 50)
        self.publisher = self.node.create_publisher(Image, topic, qos_profile_sensor_data)
        self.msg = image_message(pattern_frame(width, height), "bgr8")
        self.deadline = time.monotonic() + timeout

    def _on_diagnostics(self, msg) -> None:
        for status in msg.status:
            values = {kv.key: kv.value for kv in status.values}
            if status.name.startswith(self.node_name + ":") and "frames_received" in values:
                self.reports.append(int(values["frames_received"]))

    def publish(self) -> None:
        self.msg.header.stamp = self.node.get_clock().now().to_msg()
        self.publisher.publish(self.msg)

    def spin_until(self, condition, publishing_rate: float | None = None) -> None:
        """Spin until `condition()`, publishing at `publishing_rate` meanwhile if given."""
        while not condition():
            if time.monotonic() > self.deadline:
                raise TimeoutError(f"delivery to {self.node_name} at {self.size}: no progress in {self.timeout} s "
                                   f"(reports {self.reports[-5:]})")
            if publishing_rate:
                self.publish()
            self.executor.spin_once(timeout_sec=1.0 / publishing_rate if publishing_rate else 0.05)

    def quiet(self) -> bool:
        """QUIET_REPORTS equal reports in a row: nothing is in flight any more."""
        last = self.reports[-QUIET_REPORTS:]
        return len(last) == QUIET_REPORTS and len(set(last)) == 1

    def count_after_quiet(self, expected: int | None = None) -> int:
        """The node's count once nothing is in flight, or once it reaches `expected` (no more can come)."""
        self.reports.clear()
        self.spin_until(lambda: self.quiet() or (expected is not None and bool(self.reports)
                                                 and self.reports[-1] >= expected))
        return self.reports[-1]

    def publish_at(self, rate: float, count: int) -> float:
        """`count` frames at `rate`, spinning between them; the seconds it took."""
        started = time.perf_counter()
        for index in range(count):
            self.publish()
            next_at = started + (index + 1) / rate
            while (left := next_at - time.perf_counter()) > 0:
                self.executor.spin_once(timeout_sec=left)
        return time.perf_counter() - started

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()


def send(node_name: str, topic: str, width: int, height: int, rate: float, seconds: float,
         timeout: float = 60.0) -> dict:
    """Publish `rate` x `seconds` frames, return how many the node counted as received.

    The count is taken between two quiet moments (no frame in flight: a second of equal /diagnostics reports, or
    every frame counted), after warm-up frames have reached the node, so discovery and start-up losses are not
    counted."""
    rclpy.init()
    sender = DeliverySender(node_name, topic, width, height, timeout)
    try:
        sender.spin_until(lambda: sender.publisher.get_subscription_count() > 0)
        sender.spin_until(lambda: bool(sender.reports) and sender.reports[-1] > 0, publishing_rate=rate)
        before = sender.count_after_quiet()
        count = round(rate * seconds)
        sent_seconds = sender.publish_at(rate, count)
        received = sender.count_after_quiet(expected=before + count) - before
        return {"size": sender.size, "sent": count, "received": received,
                "send_seconds": round(sent_seconds, 2), "frame_bytes": len(sender.msg.data)}
    finally:
        sender.close()
        rclpy.try_shutdown()


def measure_delivery(width: int, height: int, rate: float = 30.0, seconds: float = 10.0,
                     profile: Path | None = DDS_PROFILE, parameters: dict | None = None,
                     log_dir: str | Path | None = None, name: str | None = None) -> dict:
    """Start seg_node with its default camera QoS and a sender process, both with `profile` (None: Fast DDS's
    defaults), and return the sender's counts plus the share received."""
    name = name or f"seg_delivery_{os.getpid()}_{width}x{height}_{'profile' if profile else 'default'}"
    topic = camera_topic_for(name)
    parameters = {"input_topics": [topic], "diagnostics_period": DIAGNOSTICS_PERIOD, "device": "cpu",
                  **(parameters or {})}
    with running_seg_node(parameters, name=name, log_dir=log_dir, dds_profile=profile):
        command = [sys.executable, "-m", __name__, "--node", name, "--topic", topic, "--width", str(width),
                   "--height", str(height), "--rate", str(rate), "--seconds", str(seconds)]
        sender = subprocess.run(command, env=ros_environment(dds_profile=profile), capture_output=True,
                                text=True, timeout=seconds + 120)
    if sender.returncode != 0:
        raise SenderError(f"delivery sender failed ({sender.returncode}):\n{sender.stderr[-2000:]}")
    result = json.loads(sender.stdout.strip().splitlines()[-1])
    result["received_share"] = result["received"] / result["sent"]
    result["profile"] = str(profile) if profile else "Fast DDS defaults"
    return result


@reports_user_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The camera side of measure_delivery (run by it).")
    parser.add_argument("--node", required=True, help="name of the seg_node whose /diagnostics count frames")
    parser.add_argument("--topic", required=True)
    parser.add_argument("--width", type=int, required=True)
    parser.add_argument("--height", type=int, required=True)
    parser.add_argument("--rate", type=float, default=30.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    print(json.dumps(send(args.node, args.topic, args.width, args.height, args.rate, args.seconds)))


if __name__ == "__main__":
    main()
