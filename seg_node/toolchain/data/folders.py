"""The plain layout for labelled frames of your own (and the Kaggle `class_dict.csv` layouts once their folders are
named so):

    <root>/classes.csv                 header `name,r,g,b`, one row per class in id order
    <root>/<split>/images/<frame>.png  (or .jpg, .jpeg, .bmp)
    <root>/<split>/labels/<frame>.png  class ids (single channel, 255 = unlabelled) or colours from classes.csv

A row named `void` is no class: its id and colour mark unlabelled pixels, and the ids after it move up by one.
Colours listed as ignored (`--ignore-colour R,G,B`) are unlabelled too; any other colour is an error.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .base import (
    IGNORE_INDEX,
    ClassTable,
    DatasetError,
    Sample,
    SegmentationDataset,
    image_files,
    map_colours,
    map_ids,
    pair_frames,
    read_colour_rows,
    read_label_file,
)

CLASSES_FILE = "classes.csv"
VOID_NAME = "void"


class Folders(SegmentationDataset):
    layout = "folders"
    options = ("ignore_colours",)

    def __init__(self, root: str | os.PathLike, split: str, ignore_colours: tuple[tuple[int, int, int], ...] = ()):
        super().__init__(root, split)
        missing = self.missing(self.root, split)
        if missing:
            raise DatasetError(f"{self.root} is not a folders-layout data set: it lacks {', '.join(missing)}")
        rows = read_colour_rows(self.root / CLASSES_FILE)
        kept = [(name, colour) for name, colour in rows if name.lower() != VOID_NAME]
        try:
            self._classes = ClassTable(tuple(name for name, _ in kept), tuple(colour for _, colour in kept))
        except DatasetError as exc:
            raise DatasetError(f"{self.root / CLASSES_FILE}: {exc}") from None
        self._id_lut = np.full(256, -1, np.int16)
        self._id_lut[IGNORE_INDEX] = IGNORE_INDEX
        self._colour_ids = {tuple(colour): IGNORE_INDEX for colour in ignore_colours}
        next_id = 0
        for stored_id, (name, colour) in enumerate(rows):
            class_id = IGNORE_INDEX if name.lower() == VOID_NAME else next_id
            next_id += class_id != IGNORE_INDEX
            self._id_lut[stored_id] = class_id
            if self._colour_ids.setdefault(colour, class_id) != class_id:
                raise DatasetError(f"{self.root / CLASSES_FILE}: colour {colour} of {name!r} is given to another "
                                   f"class or ignored too; each class needs its own colour")
        image_dir, label_dir = self.root / split / "images", self.root / split / "labels"
        self._samples = pair_frames(image_files(image_dir), sorted(label_dir.glob("*.png")), lambda p: p.stem,
                                    lambda p: p.stem, f"{image_dir} and {label_dir}")

    @classmethod
    def missing(cls, root: Path, split: str) -> list[str]:
        wanted = [root / CLASSES_FILE, root / split / "images", root / split / "labels"]
        return [str(path) + ("" if path.suffix else "/") for path in wanted if not path.exists()]

    @property
    def title(self) -> str:
        return f"{self.root.name} (folders layout, {self.classes.num_classes} classes)"

    @property
    def classes(self) -> ClassTable:
        return self._classes

    def samples(self) -> list[Sample]:
        return list(self._samples)

    def table_files(self) -> list[Path]:
        return [self.root / CLASSES_FILE]

    def read_label(self, sample: Sample) -> np.ndarray:
        """Class-id labels through the id table (void rows -> IGNORE_INDEX), colour labels through the colours."""
        label = read_label_file(sample.label_path)
        table = str(self.root / CLASSES_FILE)
        if label.ndim == 2:
            return map_ids(label, self._id_lut, sample.label_path, table)
        return map_colours(label, self._colour_ids, sample.label_path, table)
