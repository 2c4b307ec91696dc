"""A real rclpy peer for tests, and seg_node started the way ROS starts it (console script + params file)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from seg_node.ros_tools.node_process import PARAMS_FILE, SegNodeProcess
from seg_node.ros_tools.ros_peer import RELIABLE, Inbox, RosPeer  # noqa: F401  (re-exported for the tests)

REPO = Path(__file__).resolve().parent.parent


class NodeProcess(SegNodeProcess):
    """seg_node for one test: a node name unique to the test, its log beside pytest's temporary files."""

    def __init__(self, test_name: str, parameters: dict, log_dir: Path, params_file: Path = PARAMS_FILE):
        # ROS names allow letters, digits and single underscores
        name = "seg_" + re.sub(r"[^a-zA-Z0-9]+", "_", test_name)[-40:].strip("_") + f"_{os.getpid() % 1000}"
        super().__init__(name, parameters, params_file, log_dir)


OUTPUTS = ("mask", "color_mask", "overlay", "latency")


class Outputs:
    """Inboxes on the node's outputs (`prefix`: one camera's of a multi-camera node), one attribute each."""

    def __init__(self, ros, node, prefix: str = "", names=OUTPUTS):
        from diagnostic_msgs.msg import DiagnosticArray
        from sensor_msgs.msg import Image
        self.topics = [node.topic(prefix + name) for name in names]
        for name, topic in zip(names, self.topics):
            setattr(self, name, ros.subscribe(DiagnosticArray if name == "latency" else Image, topic))


def wait_until_matched(ros, topics, publishers=(), timeout: float = 20.0) -> None:
    """A graph wait instead of a sleep: each of our subscriptions on `topics` has matched a publisher and each of
    `publishers` a subscription. The node publishes an output only to subscribers it has discovered, and DDS
    matches the two ends of a pair in one discovery exchange."""
    subscriptions = [s for s in ros.node.subscriptions if s.topic_name in topics]
    deadline = time.time() + timeout
    while (any(s.get_publisher_count() < 1 for s in subscriptions)
           or any(p.get_subscription_count() < 1 for p in publishers)):
        if time.time() > deadline:
            raise TimeoutError(f"{topics} and {[p.topic_name for p in publishers]} not matched after {timeout} s")
        time.sleep(0.02)


def connect(ros, node, topic: str, msg_type=None, names=OUTPUTS):
    """(Outputs, publisher): inboxes on the node's outputs `names` and a reliable publisher on its camera topic
    `topic` (sensor_msgs/Image unless `msg_type`), returned once every pair of ends has matched."""
    from sensor_msgs.msg import Image
    outputs = Outputs(ros, node, names=names)
    publisher = ros.publisher(msg_type or Image, topic)
    wait_until_matched(ros, outputs.topics, [publisher])
    return outputs, publisher


def make_image_msg(pixels: np.ndarray, encoding: str, stamp_ns: int, frame_id: str = "camera",
                   row_padding: int = 0):
    """sensor_msgs/Image from an array laid out for `encoding`, optionally with padded rows."""
    from sensor_msgs.msg import Image

    from seg_node.core.image_codec import RAW_ENCODINGS
    height = pixels.shape[0]
    row = pixels.reshape(height, -1)
    width = row.shape[1] // RAW_ENCODINGS[encoding][0]
    if row_padding:
        row = np.concatenate([row, np.full((height, row_padding), 0xAB, np.uint8)], axis=1)
    msg = Image(height=height, width=width, encoding=encoding, is_bigendian=0, step=row.shape[1],
                data=np.ascontiguousarray(row).tobytes())
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
    msg.header.frame_id = frame_id
    return msg


def diagnostic_values(status) -> dict[str, str]:
    return {kv.key: kv.value for kv in status.values}


def write_clip(path: Path, width: int, height: int, frames: int, fps: int = 30) -> Path:
    """A short MJPG video whose frame i is uniformly grey at level i * (256 // frames): a camera source."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    for index in range(frames):
        writer.write(np.full((height, width, 3), index * (256 // frames), np.uint8))
    writer.release()
    return path


def start_camera_publisher(namespace: str, source: Path, rate: float, *parameters: str) -> subprocess.Popen:
    """The package's camera_publisher as `ros2 run` starts it, in `namespace`, output captured."""
    arguments = [f"source:={source}", f"rate:={rate}", *parameters]
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "camera_publisher"), "--ros-args", "-r", f"__ns:={namespace}",
         *[word for argument in arguments for word in ("-p", argument)]],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
