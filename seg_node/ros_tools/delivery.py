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

from .node_process import DDS_PROFILE, SegNodeProcess, with_dds_profile

DIAGNOSTICS_PERIOD = 0.2  # s: the node's /diagnostics period during a measurement


def pattern_frame(width: int, height: int) -> np.ndarray:
    """A bgr8 frame with structure (gradients and a grid), the same for every run."""
    y, x = np.mgrid[:height, :width]
    return np.dstack([(x * 255 // max(width - 1, 1)), (y * 255 // max(height - 1, 1)),
                      ((x // 32 + y // 32) % 2) * 255]).astype(np.uint8)


def send(node_name: str, topic: str, width: int, height: int, rate: float, seconds: float,
         timeout: float = 60.0) -> dict:
    """The camera side: publish `rate` x `seconds` frames, return how many the node counted as received.

    The count is taken between two quiet moments (no frame in flight, two equal /diagnostics reports), after
    warm-up frames have reached the node, so discovery and start-up losses are not counted."""
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    from ..ros.image_messages import image_message

    rclpy.init()
    node = rclpy.create_node(f"seg_delivery_sender_{os.getpid()}")
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    reports: list[int] = []

    def on_diagnostics(msg) -> None:
        for status in msg.status:
            values = {kv.key: kv.value for kv in status.values}
            if status.name.startswith(node_name + ":") and "frames_received" in values:
                reports.append(int(values["frames_received"]))

    node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 50)
    publisher = node.create_publisher(Image, topic, qos_profile_sensor_data)
    msg = image_message(pattern_frame(width, height), "bgr8")
    deadline = time.monotonic() + timeout

    def spin_until(condition, publishing: bool = False) -> None:
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"delivery to {node_name} at {width}x{height}: no progress in {timeout} s "
                                   f"(reports {reports[-5:]})")
            if publishing:
                msg.header.stamp = node.get_clock().now().to_msg()
                publisher.publish(msg)
            executor.spin_once(timeout_sec=1.0 / rate if publishing else 0.05)

    def quiet() -> bool:
        """Two equal reports in a row after the last frame sent: nothing is in flight any more."""
        return len(reports) >= 2 and reports[-1] == reports[-2]

    try:
        spin_until(lambda: publisher.get_subscription_count() > 0)
        spin_until(lambda: bool(reports) and reports[-1] > 0, publishing=True)  # warm-up frames got through
        reports.clear()
        spin_until(quiet)
        before = reports[-1]
        count = int(round(rate * seconds))
        started = time.perf_counter()
        for index in range(count):
            msg.header.stamp = node.get_clock().now().to_msg()
            publisher.publish(msg)
            next_at = started + (index + 1) / rate
            while (left := next_at - time.perf_counter()) > 0:
                executor.spin_once(timeout_sec=left)
        sent_seconds = time.perf_counter() - started
        reports.clear()
        spin_until(quiet)
        return {"size": f"{width}x{height}", "sent": count, "received": reports[-1] - before,
                "send_seconds": round(sent_seconds, 2), "frame_bytes": len(msg.data)}
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()


def measure_delivery(width: int, height: int, rate: float = 30.0, seconds: float = 10.0,
                     profile: Path | None = DDS_PROFILE, parameters: dict | None = None,
                     log_dir: str | Path | None = None, name: str | None = None) -> dict:
    """Start seg_node with its default camera QoS and a sender process, both with `profile` (None: Fast DDS's
    defaults), and return the sender's counts plus the share received."""
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    name = name or f"seg_delivery_{os.getpid()}_{width}x{height}_{'profile' if profile else 'default'}"
    topic = f"/{name}_camera/image_raw"
    node = SegNodeProcess(name, {"input_topics": [topic], "diagnostics_period": DIAGNOSTICS_PERIOD,
                                 "device": "cpu", **(parameters or {})}, log_dir=log_dir, dds_profile=profile)
    try:
        node.wait_until_ready()
        command = [sys.executable, "-m", __name__, "--node", name, "--topic", topic, "--width", str(width),
                   "--height", str(height), "--rate", str(rate), "--seconds", str(seconds)]
        sender = subprocess.run(command, env=with_dds_profile(profile=profile), capture_output=True, text=True,
                                timeout=seconds + 120)
        if sender.returncode != 0:
            raise RuntimeError(f"delivery sender failed ({sender.returncode}):\n{sender.stderr[-2000:]}")
        result = json.loads(sender.stdout.strip().splitlines()[-1])
    finally:
        node.stop()
    result["received_share"] = result["received"] / result["sent"]
    result["profile"] = str(profile) if profile else "Fast DDS defaults"
    return result


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
