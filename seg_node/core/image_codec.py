"""sensor_msgs/Image and CompressedImage payloads <-> numpy, without cv_bridge and without ROS imports.

Decoding works on the message's fields, so the same code serves rclpy messages, rosbags messages and tests.
Raw 3- and 4-channel images are wrapped zero-copy (padded rows included); every malformed message raises
`ImageRejected` with a short reason that diagnostics count.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import cv2
import numpy as np

# encoding -> (bytes per pixel, OpenCV conversion to RGB or None, channel order of the zero-copy view)
RAW_ENCODINGS = {
    "rgb8": (3, None, "rgb"),
    "bgr8": (3, None, "bgr"),
    "rgba8": (4, cv2.COLOR_RGBA2RGB, "rgb"),
    "bgra8": (4, cv2.COLOR_BGRA2RGB, "rgb"),
    "mono8": (1, cv2.COLOR_GRAY2RGB, "rgb"),
    "yuv422": (2, cv2.COLOR_YUV2RGB_UYVY, "rgb"),
    "yuv422_yuy2": (2, cv2.COLOR_YUV2RGB_YUY2, "rgb"),
}
COMPRESSED_FORMATS = ("jpeg", "png")
DEFAULT_MAX_PIXELS = 4096 * 4096


class ImageRejected(ValueError):
    """A message that cannot be an image; `reason` is a short key for counting, the message says why."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass
class DecodedImage:
    pixels: np.ndarray  # H x W x 3 uint8
    channel_order: str  # "rgb" or "bgr"

    def as_rgb(self) -> np.ndarray:
        return self.pixels if self.channel_order == "rgb" else cv2.cvtColor(self.pixels, cv2.COLOR_BGR2RGB)


def _check_size(height: int, width: int, max_pixels: int) -> None:
    if height <= 0 or width <= 0:
        raise ImageRejected("zero_size", f"image is {width}x{height}")
    if height * width > max_pixels:
        raise ImageRejected("too_large", f"image is {width}x{height}, over the limit of {max_pixels} pixels")


def raw_pixels(encoding: str, height: int, width: int, step: int, data, max_pixels: int = DEFAULT_MAX_PIXELS
               ) -> np.ndarray:
    """Validate Image fields and view the pixels without copying: H x W (x bytes per pixel) uint8.

    Cheap enough for a subscription callback. Endianness does not matter for these 8-bit encodings.
    """
    if encoding not in RAW_ENCODINGS:
        raise ImageRejected("unknown_encoding", f"encoding {encoding!r} is not one of {sorted(RAW_ENCODINGS)}")
    bytes_per_pixel = RAW_ENCODINGS[encoding][0]
    _check_size(height, width, max_pixels)
    if bytes_per_pixel == 2 and width % 2:
        raise ImageRejected("odd_width", f"{encoding} packs pixel pairs, width {width} is odd")
    row_bytes = width * bytes_per_pixel
    if step < row_bytes:
        raise ImageRejected("bad_step", f"step {step} is shorter than a row ({width} x {bytes_per_pixel} bytes)")
    buffer = np.frombuffer(data, np.uint8)
    if buffer.size != step * height:
        raise ImageRejected("data_size", f"data holds {buffer.size} bytes, step x height is {step * height}")
    rows = buffer.reshape(height, step)[:, :row_bytes]
    return rows if bytes_per_pixel == 1 else rows.reshape(height, width, bytes_per_pixel)


def decode_raw(encoding: str, height: int, width: int, step: int, data, max_pixels: int = DEFAULT_MAX_PIXELS
               ) -> DecodedImage:
    """Image fields -> H x W x 3 uint8; rgb8/bgr8 stay zero-copy views, other encodings are converted."""
    return convert_raw(raw_pixels(encoding, height, width, step, data, max_pixels), encoding)


def convert_raw(pixels: np.ndarray, encoding: str) -> DecodedImage:
    """What raw_pixels returned for `encoding` -> H x W x 3 uint8, without checking it again."""
    _, conversion, order = RAW_ENCODINGS[encoding]
    if conversion is not None:
        return DecodedImage(cv2.cvtColor(np.ascontiguousarray(pixels), conversion), order)
    return DecodedImage(pixels, order)


def compressed_dimensions(data: bytes | memoryview) -> tuple[int, int] | None:
    """(height, width) from a PNG or JPEG header without decoding; None if the header is not found."""
    head = bytes(data[:64 * 1024])
    if head.startswith(b"\x89PNG\r\n\x1a\n") and len(head) >= 24:
        width, height = struct.unpack(">II", head[16:24])
        return height, width
    if head.startswith(b"\xff\xd8"):
        index = 2
        while index + 9 <= len(head):
            if head[index] != 0xFF:
                index += 1
                continue
            marker = head[index + 1]
            if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
                height, width = struct.unpack(">HH", head[index + 5:index + 9])
                return height, width
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
                index += 1 if marker == 0xFF else 2
                continue
            index += 2 + struct.unpack(">H", head[index + 2:index + 4])[0]
    return None


def check_compressed(format_field: str, data, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[str, tuple[int, int]]:
    """Validate CompressedImage fields from the header alone: (jpeg|png, (height, width)).

    Accepts 'jpeg', 'png' and image_transport's 'bgr8; jpeg compressed bgr8' forms.
    """
    kind = format_field.split(";")[-1].strip().split(" ")[0].lower().replace("jpg", "jpeg")
    if kind not in COMPRESSED_FORMATS:
        raise ImageRejected("unknown_format", f"compressed format {format_field!r} is not jpeg or png")
    buffer = np.frombuffer(data, np.uint8)
    dimensions = compressed_dimensions(buffer.data)
    if dimensions is None:
        raise ImageRejected("corrupt_compressed", f"no {kind} header in {buffer.size} bytes")
    _check_size(*dimensions, max_pixels)
    return kind, dimensions


def decode_compressed(format_field: str, data, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """CompressedImage fields -> H x W x 3 uint8 (BGR, as OpenCV decodes)."""
    return decode_checked(*check_compressed(format_field, data, max_pixels), data)


def decode_checked(kind: str, dimensions: tuple[int, int], data) -> DecodedImage:
    """Compressed data that check_compressed found to be `kind` of `dimensions` -> H x W x 3 uint8 (BGR)."""
    buffer = np.frombuffer(data, np.uint8)
    pixels = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
    if pixels is None or pixels.shape[:2] != dimensions:
        raise ImageRejected("corrupt_compressed", f"{kind} data ({buffer.size} bytes) does not decode")
    return DecodedImage(pixels, "bgr")


def encode_compressed(image: np.ndarray, channel_order: str, kind: str = "jpeg", quality: int = 90) -> bytes:
    """H x W x 3 uint8 -> jpeg/png bytes as CompressedImage carries them (BGR inside, as OpenCV writes)."""
    bgr = image if channel_order == "bgr" else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if kind == "jpeg" else []
    ok, encoded = cv2.imencode(f".{'jpg' if kind == 'jpeg' else 'png'}", bgr, params)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {kind} image")
    return encoded.tobytes()


def encode_raw(image: np.ndarray, encoding: str) -> tuple[int, int, int, bytes]:
    """H x W (mono8) or H x W x 3 (rgb8/bgr8) array -> (height, width, step, data) for an Image message."""
    height, width = image.shape[:2]
    channels = 1 if image.ndim == 2 else image.shape[2]
    expected = RAW_ENCODINGS.get(encoding, (None,))[0]
    if expected != channels:
        raise ValueError(f"cannot write a {channels}-channel array as {encoding}")
    return height, width, width * channels, np.ascontiguousarray(image).tobytes()
