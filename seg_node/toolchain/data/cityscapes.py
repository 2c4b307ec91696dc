"""Cityscapes (and what BDD100K, IDD and Mapillary convert to with their own tools), as the 19 training classes:

    leftImg8bit/<split>/<city>/<frame>_leftImg8bit.png
    gtFine/<split>/<city>/<frame>_gtFine_labelIds.png   (or <frame>_gtFine_labelTrainIds.png)

Label ids map to training ids with the label table of the `cityscapesscripts` package (the benchmark's own), so
ids the benchmark ignores become IGNORE_INDEX.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

import numpy as np

from .base import (
    IGNORE_INDEX,
    ClassTable,
    DatasetError,
    Sample,
    SegmentationDataset,
    map_ids,
    pair_frames,
    read_label_file,
)

IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIXES = ("_gtFine_labelIds.png", "_gtFine_labelTrainIds.png")


@cache
def cityscapes_labels() -> tuple:
    """The benchmark's own label table, imported when a Cityscapes table is first needed: the rest of the
    toolchain runs without the package."""
    try:
        from cityscapesscripts.helpers.labels import labels
    except ImportError as exc:
        raise DatasetError("Cityscapes' label table needs the PyPI package cityscapesscripts "
                           "(pip install --no-deps cityscapesscripts==2.3.0)") from exc
    return tuple(labels)


@cache
def cityscapes_classes() -> ClassTable:
    """The 19 training classes in training-id order, with the benchmark's colours."""
    train = sorted((label for label in cityscapes_labels() if 0 <= label.trainId < IGNORE_INDEX),
                   key=lambda label: label.trainId)
    return ClassTable(tuple(label.name for label in train), tuple(tuple(label.color) for label in train))


def id_luts() -> dict[str, np.ndarray]:
    """Per label-file suffix: stored value -> training id (IGNORE_INDEX for ignored ids, -1 for unknown values)."""
    label_ids = np.full(256, -1, np.int16)
    for label in cityscapes_labels():
        if 0 <= label.id < 256:
            label_ids[label.id] = label.trainId if 0 <= label.trainId < IGNORE_INDEX else IGNORE_INDEX
    train_ids = np.full(256, -1, np.int16)
    count = cityscapes_classes().num_classes
    train_ids[:count] = np.arange(count)
    train_ids[IGNORE_INDEX] = IGNORE_INDEX
    return dict(zip(LABEL_SUFFIXES, (label_ids, train_ids)))


class Cityscapes(SegmentationDataset):
    layout = "cityscapes"

    def __init__(self, root: str | os.PathLike, split: str):
        super().__init__(root, split)
        missing = self.missing(self.root, split)
        if missing:
            raise DatasetError(f"{self.root} is not a Cityscapes copy: it lacks {', '.join(missing)} (frames come in "
                               f"leftImg8bit_trainvaltest.zip, labels in gtFine_trainvaltest.zip)")
        image_dir, label_dir = self.root / "leftImg8bit" / split, self.root / "gtFine" / split
        suffix = next((s for s in LABEL_SUFFIXES if next(label_dir.rglob(f"*{s}"), None)), LABEL_SUFFIXES[0])
        self._lut, self._label_suffix = id_luts()[suffix], suffix
        self._samples = pair_frames(sorted(image_dir.glob(f"*/*{IMAGE_SUFFIX}")),
                                    sorted(label_dir.glob(f"*/*{suffix}")), lambda p: frame_key(p, IMAGE_SUFFIX),
                                    lambda p: frame_key(p, suffix), f"{image_dir} and {label_dir}")

    @classmethod
    def missing(cls, root: Path, split: str) -> list[str]:
        return [f"{root / d / split}/" for d in ("leftImg8bit", "gtFine") if not (root / d / split).is_dir()]

    @property
    def title(self) -> str:
        return "Cityscapes (19 training classes)"

    @property
    def classes(self) -> ClassTable:
        return cityscapes_classes()

    def samples(self) -> list[Sample]:
        return list(self._samples)

    def read_label(self, sample: Sample) -> np.ndarray:
        return map_ids(read_label_file(sample.label_path), self._lut, sample.label_path,
                       f"Cityscapes {self._label_suffix.strip('_').removesuffix('.png')}")


def frame_key(path: Path, suffix: str) -> str:
    """The frame's name (<city>_<sequence>_<frame>) that its image and label files share."""
    return path.name.removesuffix(suffix)
