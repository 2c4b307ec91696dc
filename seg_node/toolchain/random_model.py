"""Small randomly initialised models, exported like trained ones, for tests and stress runs only.

They load and run exactly like a shipped model (ONNX, safetensors, card), but their masks mean nothing, and
their cards say so.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from ..core.architectures import build_model
from ..core.model_card import InputSpec
from ..core.preprocess import normalize
from .data import CAMVID_CLASSES, ClassTable
from .export import export_model

RANDOM_MODEL_SIZE = (96, 128)


def make_random_model(out_stem: Path, architecture: dict | None = None, size=RANDOM_MODEL_SIZE,
                      seed: int = 0, classes: ClassTable = CAMVID_CLASSES) -> Path:
    """Export a randomly initialised (untrained) model with its card."""
    torch.manual_seed(seed)
    architecture = architecture or {"name": "unet", "base_width": 8, "depth": 3}
    model = build_model(architecture, classes.num_classes)
    spec = InputSpec(height=size[0], width=size[1])
    calibrate_batchnorm(model, size, seed)
    inputs = np.random.default_rng(seed).standard_normal((2, 3, *size)).astype(np.float32)
    name = f"random-{architecture['name']} (untrained: tests and stress runs only)"
    export_model(model, out_stem, name=name,
                 architecture=architecture, classes=classes.names, palette=classes.palette, spec=spec,
                 parity_inputs=inputs, notes="randomly initialised; not a trained model")
    return out_stem.with_suffix(".onnx")


def calibrate_batchnorm(model: torch.nn.Module, size: tuple[int, int], seed: int) -> None:
    """Set BatchNorm statistics from image-like inputs, so an untrained model's masks vary across the image
    (with fresh statistics every pixel gets the same class and mask comparisons would prove little)."""
    rng = np.random.default_rng(seed)
    spec = InputSpec(height=size[0], width=size[1])
    images = [cv2.resize(rng.integers(0, 256, (6, 8, 3), np.uint8), (size[1], size[0]),
                         interpolation=cv2.INTER_CUBIC) for _ in range(8)]
    batch = torch.from_numpy(np.stack([normalize(image, spec, "rgb") for image in images]))
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None
    model.train()
    with torch.no_grad():
        model(batch)
    model.eval()
