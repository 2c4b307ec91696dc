"""A data set of one's own in the folders layout, with a class table that is not CamVid's."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from camvid_fixtures import striped_label

from seg_node.toolchain.data import ClassTable

#: five classes of a data set of one's own, in a table of its own (not CamVid's)
OWN_CLASSES = ClassTable(("road", "lane", "kerb", "car", "sky"),
                         ((128, 64, 128), (255, 255, 255), (200, 200, 0), (0, 0, 142), (70, 130, 180)))


def write_folders(root: Path, classes: ClassTable, splits: dict[str, int], height: int = 32, width: int = 48) -> Path:
    """A folders-layout data set: classes.csv and per split images/ and labels/ (class-id PNGs, 255 unlabelled)
    whose frames are the classes' colours plus noise, in horizontal bands."""
    root.mkdir(parents=True, exist_ok=True)
    classes.to_csv(root / "classes.csv")
    colours = np.array(classes.colours + ((0, 0, 0),), np.int16)
    for split, count in splits.items():
        for folder in ("images", "labels"):
            (root / split / folder).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            label = striped_label(height, width, [*range(classes.num_classes), 255][index % 2:], index)
            rng = np.random.default_rng(index)
            image = np.clip(colours[np.minimum(label, classes.num_classes)] + rng.integers(-20, 21, (height, width, 3)),
                            0, 255).astype(np.uint8)
            cv2.imwrite(str(root / split / "images" / f"f{index}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            cv2.imwrite(str(root / split / "labels" / f"f{index}.png"), label)
    return root
