"""rclpy sensor_msgs/Image messages from numpy arrays, and header stamps as integers.

The ROS side of image_codec: the node, the camera publisher and the measuring tools build messages here.
"""

from __future__ import annotations

import numpy as np
from sensor_msgs.msg import Image

from ..core.image_codec import encode_raw

NS_PER_S = 1_000_000_000


def stamp_ns(stamp) -> int:
    """builtin_interfaces/Time (an rclpy or a rosbags message) -> nanoseconds."""
    return stamp.sec * NS_PER_S + stamp.nanosec


def image_message(array: np.ndarray, encoding: str, header=None) -> Image:
    """H x W (mono8) or H x W x 3 (rgb8/bgr8) array -> Image, with `header` when given."""
    height, width, step, data = encode_raw(array, encoding)
    msg = Image(height=height, width=width, encoding=encoding, is_bigendian=0, step=step, data=data)
    if header is not None:
        msg.header = header
    return msg
