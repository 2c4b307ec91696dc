"""Training augmentation on (RGB uint8, label uint8) pairs: random scale, crop, flip, photometric jitter."""

from __future__ import annotations

import cv2
import numpy as np

from ..data import VOID_INDEX


def augment(image: np.ndarray, label: np.ndarray, rng: np.random.Generator, crop: tuple[int, int],
            scale_range: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    scale = rng.uniform(*scale_range)
    height, width = label.shape
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
    label = cv2.resize(label, size, interpolation=cv2.INTER_NEAREST)
    crop_h, crop_w = crop
    pad_h, pad_w = max(crop_h - label.shape[0], 0), max(crop_w - label.shape[1], 0)
    if pad_h or pad_w:
        image = cv2.copyMakeBorder(image, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=(127, 127, 127))
        label = cv2.copyMakeBorder(label, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=VOID_INDEX)
    top = rng.integers(0, label.shape[0] - crop_h + 1)
    left = rng.integers(0, label.shape[1] - crop_w + 1)
    image = image[top:top + crop_h, left:left + crop_w]
    label = label[top:top + crop_h, left:left + crop_w]
    if rng.random() < 0.5:
        image, label = image[:, ::-1], label[:, ::-1]
    image = photometric_jitter(image, rng)
    return np.ascontiguousarray(image), np.ascontiguousarray(label)


def photometric_jitter(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Brightness, contrast and saturation each scaled by a factor in [0.75, 1.25]."""
    out = image.astype(np.float32)
    brightness, contrast, saturation = rng.uniform(0.75, 1.25, size=3)
    out *= brightness
    out = (out - out.mean()) * contrast + out.mean()
    grey = out.mean(axis=2, keepdims=True)
    out = (out - grey) * saturation + grey
    return np.clip(out, 0, 255).astype(np.uint8)
