"""Network logits -> class mask at the image's size -> colorized mask and overlay."""

from __future__ import annotations

import cv2
import numpy as np

UPSAMPLING_MODES = ("logits", "labels")


def argmax_channels(logits: np.ndarray) -> np.ndarray:
    """Argmax over the first axis of C x H x W logits as uint8; a channel loop beats np.argmax(axis=0)."""
    best = logits[0].copy()
    labels = np.zeros(logits.shape[1:], np.uint8)
    for class_id in range(1, logits.shape[0]):
        better = logits[class_id] > best
        labels[better] = class_id
        np.maximum(best, logits[class_id], out=best)
    return labels


def logits_to_mask(logits: np.ndarray, height: int, width: int, upsampling: str = "logits") -> np.ndarray:
    """C x h x w logits -> H x W uint8 class ids.

    'logits' resizes the logits bilinearly before the argmax (smooth, exact class boundaries);
    'labels' takes the argmax at network resolution and resizes the mask by nearest neighbour (cheaper
    when the camera image is much larger than the network input).
    """
    if logits.shape[1:] == (height, width):
        return argmax_channels(logits)
    if upsampling == "labels":
        return cv2.resize(argmax_channels(logits), (width, height), interpolation=cv2.INTER_NEAREST)
    if upsampling != "logits":
        raise ValueError(f"upsampling must be one of {UPSAMPLING_MODES}, got {upsampling!r}")
    channels_last = np.ascontiguousarray(logits.transpose(1, 2, 0))
    resized = cv2.resize(channels_last, (width, height), interpolation=cv2.INTER_LINEAR)
    if resized.ndim == 2:
        resized = resized[..., None]
    return argmax_channels(np.ascontiguousarray(resized.transpose(2, 0, 1)))


def palette_lut(palette: list[list[int]] | tuple) -> np.ndarray:
    """256 x 1 x 3 lookup table for cv2.LUT; ids beyond the palette map to black."""
    lut = np.zeros((256, 1, 3), np.uint8)
    lut[:len(palette), 0] = np.asarray(palette, np.uint8)
    return lut


def colorize(mask: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """H x W class ids -> H x W x 3 colours (RGB when the palette is RGB)."""
    return cv2.LUT(cv2.merge([mask, mask, mask]), lut)


def overlay(image: np.ndarray, color_mask: np.ndarray, alpha: float) -> np.ndarray:
    """(1 - alpha) * image + alpha * colours, both H x W x 3 in the same channel order."""
    return cv2.addWeighted(image, 1.0 - alpha, color_mask, alpha, 0.0)
