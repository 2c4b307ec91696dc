"""rclpy sensor_msgs/Image messages from numpy arrays, and header stamps as integers.

The ROS side of image_codec: the node, the camera publisher and the measuring tools build messages here.
"""

from __future__ import annotations

import numpy as np
from sensor_msgs.msg import Image

from ..core.image_codec import RAW_ENCODINGS

NS_PER_S = 1_000_000_000


def stamp_ns(stamp) -> int:
    """builtin_interfaces/Time (an rclpy or a rosbags message) -> nanoseconds."""
    return stamp.sec * NS_PER_S + stamp.nanosec


def image_message(array: np.ndarray, encoding: str, header=None) -> Image:
    """H x W (mono8) or H x W x 3 (rgb8/bgr8) array -> Image, with `header` when given.

    The pixels are copied once, straight into the array.array the message keeps (as cv_bridge does): passing
    `bytes` instead costs a copy for tobytes, one or two more in the generated `data` setter, and, where field
    checks are on (Humble's default), a Python-level check of every byte.
    """
    height, width = array.shape[:2]
    channels = 1 if array.ndim == 2 else array.shape[2]
    if RAW_ENCODINGS.get(encoding, (None,))[0] != channels or array.dtype != np.uint8:
        raise ValueError(f"cannot write a {channels}-channel {array.dtype} array as {encoding}")
    msg = Image(height=height, width=width, encoding=encoding, is_bigendian=0, step=width * channels)
    msg.data.frombytes(np.ascontiguousarray(array))
    if header is not None:
        msg.header = header
    return msg
