"""Pixel conversion checked against rosbags-image, an independent implementation, for every encoding."""

from __future__ import annotations

import numpy as np
import pytest
from rosbags.image import message_to_cvimage
from rosbags.typesys import Stores, get_typestore
from test_node import as_encoding, scene

from seg_node.core.image_codec import (
    RAW_ENCODINGS,
    ImageRejected,
    check_compressed,
    compressed_dimensions,
    decode_compressed,
    decode_raw,
    encode_compressed,
    encode_raw,
)

TYPESTORE = get_typestore(Stores.ROS2_HUMBLE)
Image = TYPESTORE.types["sensor_msgs/msg/Image"]
CompressedImage = TYPESTORE.types["sensor_msgs/msg/CompressedImage"]
Header = TYPESTORE.types["std_msgs/msg/Header"]
Time = TYPESTORE.types["builtin_interfaces/msg/Time"]


def rosbags_image(pixels: np.ndarray, encoding: str):
    height = pixels.shape[0]
    data = np.ascontiguousarray(pixels).reshape(height, -1)
    return Image(header=Header(stamp=Time(sec=0, nanosec=0), frame_id="cam"), height=height,
                 width=data.shape[1] // RAW_ENCODINGS[encoding][0], encoding=encoding, is_bigendian=0,
                 step=data.shape[1], data=data.ravel())


@pytest.mark.parametrize("encoding", sorted(RAW_ENCODINGS))
def test_raw_encodings_match_rosbags_image(encoding):
    msg = rosbags_image(as_encoding(scene(3, 30, 40), encoding), encoding)
    ours = decode_raw(msg.encoding, msg.height, msg.width, msg.step, msg.data).as_rgb()
    theirs = message_to_cvimage(msg, "rgb8")
    assert ours.shape == (30, 40, 3)
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("kind", ["jpeg", "png"])
def test_compressed_matches_rosbags_image(kind):
    rgb = scene(4, 30, 40)
    msg = CompressedImage(header=Header(stamp=Time(sec=0, nanosec=0), frame_id="cam"), format=kind,
                          data=np.frombuffer(encode_compressed(rgb, "rgb", kind), np.uint8))
    ours = decode_compressed(msg.format, msg.data)
    np.testing.assert_array_equal(ours.as_rgb(), message_to_cvimage(msg, "rgb8"))
    if kind == "png":
        np.testing.assert_array_equal(ours.as_rgb(), rgb)


def test_padded_rows_give_the_same_pixels_as_packed_rows():
    rgb = scene(5, 30, 40)
    packed = decode_raw("rgb8", 30, 40, 120, rgb.tobytes()).pixels
    padded_rows = np.concatenate([rgb.reshape(30, 120), np.full((30, 8), 7, np.uint8)], axis=1)
    padded = decode_raw("rgb8", 30, 40, 128, padded_rows.tobytes()).pixels
    np.testing.assert_array_equal(packed, padded)


def test_rgb_and_bgr_are_zero_copy_views():
    data = np.ascontiguousarray(scene(6, 30, 40)).tobytes()
    decoded = decode_raw("bgr8", 30, 40, 120, data)
    assert decoded.channel_order == "bgr" and not decoded.pixels.flags.owndata
    assert np.shares_memory(decoded.pixels, np.frombuffer(data, np.uint8))


@pytest.mark.parametrize("fields, reason", [
    (("rgb16", 2, 2, 12, bytes(24)), "unknown_encoding"),
    (("rgb8", 0, 2, 6, b""), "zero_size"),
    (("rgb8", 2, 0, 0, b""), "zero_size"),
    (("rgb8", 100_000, 100_000, 300_000, b""), "too_large"),
    (("rgb8", 2, 2, 5, bytes(10)), "bad_step"),
    (("rgb8", 2, 2, 6, bytes(11)), "data_size"),
    (("rgb8", 2, 2, 6, bytes(13)), "data_size"),
    (("yuv422", 2, 3, 6, bytes(12)), "odd_width"),
])
def test_malformed_raw_images_are_rejected_with_a_reason(fields, reason):
    with pytest.raises(ImageRejected) as error:
        decode_raw(*fields)
    assert error.value.reason == reason


def test_compressed_checks_read_dimensions_from_headers_without_decoding():
    rgb = scene(1, 33, 47)
    for kind in ("jpeg", "png"):
        data = encode_compressed(rgb, "rgb", kind)
        assert compressed_dimensions(data) == (33, 47)
        assert check_compressed(f"rgb8; {kind} compressed bgr8", data) == (kind, (33, 47))
    with pytest.raises(ImageRejected, match="too_large"):
        check_compressed("png", encode_compressed(rgb, "rgb", "png"), max_pixels=100)
    with pytest.raises(ImageRejected, match="unknown_format"):
        check_compressed("tiff", b"II*\x00")
    with pytest.raises(ImageRejected, match="corrupt_compressed"):
        check_compressed("jpeg", b"\x00" * 100)
    good = encode_compressed(rgb, "rgb", "jpeg")
    with pytest.raises(ImageRejected, match="corrupt_compressed"):
        decode_compressed("jpeg", good[:200] + bytes(len(good) - 200))


def test_encode_raw_round_trips_and_refuses_wrong_channel_counts():
    mask = np.arange(12, dtype=np.uint8).reshape(3, 4)
    height, width, step, data = encode_raw(mask, "mono8")
    assert (height, width, step) == (3, 4, 4)
    np.testing.assert_array_equal(decode_raw("mono8", height, width, step, data).pixels[..., 0], mask)
    with pytest.raises(ValueError):
        encode_raw(mask, "rgb8")
