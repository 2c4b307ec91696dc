"""Small generated CamVid copies in both layouts, so data tests need no download."""

from __future__ import annotations

import zlib
from pathlib import Path

import cv2
import numpy as np

from seg_node.toolchain.data import CAMVID_CLASSES

# Five of the 32 Kaggle classes with their colours, enough to exercise the folding into 11 classes.
KAGGLE_CLASSES = {"Sky": (128, 128, 128), "Wall": (64, 192, 0), "LaneMkgsDriv": (128, 0, 192),
                  "Child": (192, 128, 64), "Void": (0, 0, 0)}


def striped_label(height: int, width: int, classes: list[int], seed: int) -> np.ndarray:
    """Horizontal bands of the given class ids, with a jittered boundary per frame."""
    rng = np.random.default_rng(seed)
    bounds = np.sort(rng.choice(np.arange(1, height), len(classes) - 1, replace=False))
    label = np.zeros((height, width), np.uint8)
    for class_id, (top, bottom) in zip(classes, zip([0, *bounds], [*bounds, height])):
        label[top:bottom] = class_id
    return label


def label_to_image(label: np.ndarray, seed: int) -> np.ndarray:
    """An RGB frame whose colours follow the label (class colour plus noise), so a model can learn it."""
    rng = np.random.default_rng(seed)
    palette = np.array(list(CAMVID_CLASSES.colours) + [(0, 0, 0)], np.int16)
    image = palette[label] + rng.integers(-20, 21, label.shape + (3,))
    return np.clip(image, 0, 255).astype(np.uint8)


def write_camvid11(root: Path, frames: dict[str, int], height: int = 48, width: int = 64) -> Path:
    """SegNet layout with `frames[split]` frames per split: bands of sky, building, road, car and void."""
    for split, count in frames.items():
        (root / split).mkdir(parents=True, exist_ok=True)
        (root / f"{split}annot").mkdir(parents=True, exist_ok=True)
        for index in range(count):
            seed = zlib.crc32(f"{split}/{index}".encode()) % 10_000  # hash() of a str changes per process
            label = striped_label(height, width, [0, 1, 3, 8, 11], seed)
            name = f"Seq{split}_f{index * 30:05d}.png"
            cv2.imwrite(str(root / split / name), cv2.cvtColor(label_to_image(label, seed), cv2.COLOR_RGB2BGR))
            cv2.imwrite(str(root / f"{split}annot" / name), label)
    return root


def write_camvid32(root: Path, split: str = "train", count: int = 2, height: int = 30, width: int = 40) -> Path:
    """Kaggle layout: colour-coded labels and class_dict.csv."""
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / f"{split}_labels").mkdir(parents=True, exist_ok=True)
    lines = ["name,r,g,b"] + [f"{n},{r},{g},{b}" for n, (r, g, b) in KAGGLE_CLASSES.items()]
    (root / "class_dict.csv").write_text("\n".join(lines) + "\n")
    colours = np.array(list(KAGGLE_CLASSES.values()), np.uint8)
    for index in range(count):
        bands = striped_label(height, width, [0, 1, 2, 3, 4], index)
        name = f"0001TP_{index:06d}"
        cv2.imwrite(str(root / split / f"{name}.png"), np.full((height, width, 3), 100, np.uint8))
        cv2.imwrite(str(root / f"{split}_labels" / f"{name}_L.png"), cv2.cvtColor(colours[bands], cv2.COLOR_RGB2BGR))
    return root
