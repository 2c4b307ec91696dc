"""Image -> network input. One implementation, used by the node, the evaluator, the benchmarks and training."""

from __future__ import annotations

import cv2
import numpy as np

from .model_card import InputSpec


def resize_for_network(image: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Resize an H x W x 3 uint8 image to the network's input size (area filter when shrinking)."""
    if image.shape[:2] == (spec.height, spec.width):
        return image
    shrinking = image.shape[0] > spec.height or image.shape[1] > spec.width
    return cv2.resize(image, (spec.width, spec.height),
                      interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def normalize(image: np.ndarray, spec: InputSpec, channel_order: str, out: np.ndarray | None = None) -> np.ndarray:
    """H x W x 3 uint8 in `channel_order` -> 3 x H x W float32 in the spec's order, (x - mean) / std."""
    if channel_order != spec.channel_order:
        image = image[..., ::-1]
    scale = (1.0 / np.asarray(spec.std, np.float32))[:, None, None]
    offset = (np.asarray(spec.mean, np.float32) / np.asarray(spec.std, np.float32))[:, None, None]
    chw = np.transpose(image, (2, 0, 1))
    if out is None:
        out = np.empty(chw.shape, np.float32)
    np.multiply(chw, scale, out=out, dtype=np.float32)
    out -= offset
    return out
