"""Camera messages checked once, in the subscription callback, and decoded later by the inference worker without
a second check: a malformed frame is rejected before it can displace a good one waiting for the model."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from sensor_msgs.msg import CompressedImage

from ..core.image_codec import DecodedImage, check_compressed, convert_raw, decode_checked, raw_pixels


@dataclass(frozen=True)
class CameraFrame:
    """A camera message that passed its checks, waiting for the worker."""

    header: object  # std_msgs/Header, kept for the outputs
    decode: Callable[[], DecodedImage]  # the rest of the work, for the worker (ImageRejected: corrupt data)
    arrived: float  # time.perf_counter() at arrival: the frame's queue time starts here


def checked_frame(msg, max_pixels: int) -> CameraFrame:
    """Check an Image or CompressedImage from its fields and headers (cheap: no pixel is decoded); raises
    ImageRejected with the reason."""
    if isinstance(msg, CompressedImage):
        kind, dimensions = check_compressed(msg.format, msg.data, max_pixels)
        return CameraFrame(msg.header, lambda: decode_checked(kind, dimensions, msg.data), time.perf_counter())
    pixels = raw_pixels(msg.encoding, msg.height, msg.width, msg.step, msg.data, max_pixels)
    return CameraFrame(msg.header, lambda: convert_raw(pixels, msg.encoding), time.perf_counter())
