"""What the ROS tests share: a real rclpy peer, node names, inboxes on the node's outputs, test images and cameras."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent


def node_name_for(test_name: str) -> str:
    """A node name unique to the test (and this test process): ROS names allow letters, digits and single
    underscores."""
    return "seg_" + re.sub(r"[^a-zA-Z0-9]+", "_", test_name)[-40:].strip("_") + f"_{os.getpid() % 1000}"


OUTPUTS = ("mask", "color_mask", "overlay", "latency")


class Outputs:
    """Inboxes on the node's outputs (`prefix`: one camera's of a multi-camera node), one attribute each."""

    def __init__(self, ros, node, prefix: str = "", names=OUTPUTS):
        from diagnostic_msgs.msg import DiagnosticArray
        from sensor_msgs.msg import Image
        self.topics = [node.topic(prefix + name) for name in names]
        for name, topic in zip(names, self.topics):
            setattr(self, name, ros.subscribe(DiagnosticArray if name == "latency" else Image, topic))


def connect(ros, node, topic: str, msg_type=None, names=OUTPUTS):
    """(Outputs, publisher): inboxes on the node's outputs `names` and a reliable publisher on its camera topic
    `topic` (sensor_msgs/Image unless `msg_type`), returned once every pair of ends has matched."""
    from sensor_msgs.msg import Image
    outputs = Outputs(ros, node, names=names)
    publisher = ros.publisher(msg_type or Image, topic)
    ros.wait_until_matched(outputs.topics, [publisher])
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
