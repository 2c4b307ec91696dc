"""A real rclpy peer for tests, and seg_node started the way ROS starts it (console script + params file)."""

from __future__ import annotations

import os
import re
from pathlib import Path

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
