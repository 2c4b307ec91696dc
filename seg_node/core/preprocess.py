"""Image -> network input. One implementation, used by the node, the evaluator, the benchmarks and training."""

from __future__ import annotations

import cv2
import numpy as np

from .model_card import InputSpec, InterfaceSpec


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize an H x W x 3 uint8 image to height x width (area filter when shrinking)."""
    if image.shape[:2] == (height, width):
        return image
    shrinking = image.shape[0] > height or image.shape[1] > width
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def resize_for_network(image: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Resize an H x W x 3 uint8 image to the card's input size."""
    return resize(image, spec.height, spec.width)


def normalize(image: np.ndarray, spec: InputSpec, channel_order: str, out: np.ndarray | None = None,
              layout: str = "NCHW") -> np.ndarray:
    """H x W x 3 uint8 in `channel_order` -> float32 (x - mean) / std in the spec's channel order, 3 x H x W
    (layout NCHW) or H x W x 3 (NHWC)."""
    if channel_order != spec.channel_order:
        image = image[..., ::-1]
    scale = 1.0 / np.asarray(spec.std, np.float32)
    offset = np.asarray(spec.mean, np.float32) * scale
    if layout == "NCHW":
        image, scale, offset = np.transpose(image, (2, 0, 1)), scale[:, None, None], offset[:, None, None]
    if out is None:
        out = np.empty(image.shape, np.float32)
    np.multiply(image, scale, out=out, dtype=np.float32)
    out -= offset
    return out


def to_network_input(image: np.ndarray, spec: InputSpec, interface: InterfaceSpec, channel_order: str,
                     out: np.ndarray) -> np.ndarray:
    """An image already at the network's size -> one slot of the network's input batch, in its layout and dtype:
    normalized float32, or the pixels themselves for a uint8 input."""
    if interface.input_dtype == "float32":
        return normalize(image, spec, channel_order, out, interface.input_layout)
    if channel_order != spec.channel_order:
        image = image[..., ::-1]
    out[...] = image if interface.input_layout == "NHWC" else np.transpose(image, (2, 0, 1))
    return out
