"""The outputs of a mask meant for eyes: the class colours and the image blended with them, at a scale.

No ROS: the node gets both in one call (SegmentationPipeline.render), timed apart from publishing.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .postprocess import colorize


@dataclass(frozen=True)
class DisplayImages:
    """H x W x 3 RGB images at the display scale; None for the ones not asked for."""

    color_mask: np.ndarray | None = None
    overlay: np.ndarray | None = None


def display_size(mask: np.ndarray, scale: float) -> tuple[int, int] | None:
    """(width, height) of the outputs meant for eyes at `scale` of the image's size; None at full size."""
    if scale >= 1.0:
        return None
    return max(1, round(mask.shape[1] * scale)), max(1, round(mask.shape[0] * scale))


def overlay(image: np.ndarray, color_mask: np.ndarray, alpha: float) -> np.ndarray:
    """(1 - alpha) * image + alpha * colours, both H x W x 3 in the same channel order."""
    return cv2.addWeighted(image, 1.0 - alpha, color_mask, alpha, 0.0)


def render_display(image: np.ndarray, channel_order: str, mask: np.ndarray, lut: np.ndarray, scale: float = 1.0,
                   alpha: float = 0.5, color_mask: bool = True, blended: bool = True) -> DisplayImages:
    """The colour mask (palette `lut`) and the overlay of `mask` over the H x W x 3 `image` (rgb or bgr), each
    only when asked for, both at `scale` of the image's size; the image is brought to RGB after shrinking."""
    if not (color_mask or blended):
        return DisplayImages()
    size = display_size(mask, scale)
    labels = mask if size is None else cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST)
    colors = colorize(labels, lut)
    if not blended:  # the image itself is not shown: not even shrunk
        return DisplayImages(color_mask=colors)
    pixels = image if size is None else cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    shown = pixels if channel_order == "rgb" else cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)
    return DisplayImages(color_mask=colors if color_mask else None, overlay=overlay(shown, colors, alpha))
