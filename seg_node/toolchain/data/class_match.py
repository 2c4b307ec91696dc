"""Match a data set's classes to a model's by name, so no number is ever computed on mismatched ids.

The same classes in another order is the common case and needs nothing; renamed or merged classes take a class
map, a CSV `data_class,model_class` (model class `void` drops a data class to IGNORE_INDEX).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ...core.errors import UserError
from .base import IGNORE_INDEX, ClassTable, Sample, SegmentationDataset

IGNORED_TARGET = "void"


class ClassMismatchError(UserError):
    """A data set's classes do not all match a model's; the message lists both class lists."""


def read_class_map(path: str | os.PathLike) -> dict[str, str]:
    """data class -> model class from a CSV with the header `data_class,model_class`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"class map {path} does not exist")
    with open(path, newline="") as handle:
        reader = csv.reader(handle)
        header = [cell.strip() for cell in next(reader, [])]
        if header != ["data_class", "model_class"]:
            raise UserError(f"{path}: the first line must be the header `data_class,model_class`, got {header}")
        class_map = {}
        for row in reader:
            cells = [cell.strip() for cell in row]
            if not any(cells):
                continue
            if len(cells) != 2 or not all(cells) or cells[0] in class_map:
                raise UserError(f"{path} line {reader.line_num}: expected `data_class,model_class` with each data "
                                f"class once, got {','.join(row)!r}")
            class_map[cells[0]] = cells[1]
    return class_map


def label_lut(data_classes: ClassTable, model_classes: Sequence[str], class_map: dict[str, str] | None = None
              ) -> np.ndarray:
    """256-entry uint8 table: data class id -> model class id (IGNORE_INDEX stays IGNORE_INDEX). Data classes match
    model classes of the same name unless `class_map` says otherwise; any data class left without a model class,
    or a class map naming classes neither side has, raises ClassMismatchError."""
    class_map = dict(class_map or {})
    model_ids = {name: index for index, name in enumerate(model_classes)}
    unknown_data = sorted(class_map.keys() - set(data_classes.names))
    unknown_model = sorted(set(class_map.values()) - model_ids.keys() - {IGNORED_TARGET})
    targets = [class_map.get(name, name) for name in data_classes.names]
    unmatched = [name for name, target in zip(data_classes.names, targets)
                 if target not in model_ids and target != IGNORED_TARGET]
    if unknown_data or unknown_model or unmatched:
        problems = ([f"the class map names data classes {unknown_data} the data set lacks"] if unknown_data else []) \
            + ([f"the class map names model classes {unknown_model} the model lacks"] if unknown_model else []) \
            + ([f"data classes {unmatched} match no model class"] if unmatched else [])
        raise ClassMismatchError(f"{'; '.join(problems)}. Data set classes: {list(data_classes.names)}; model "
                                 f"classes: {list(model_classes)}. Map them with --class-map FILE (CSV "
                                 f"`data_class,model_class`, model class `{IGNORED_TARGET}` to leave one out)")
    lut = np.full(256, IGNORE_INDEX, np.uint8)
    lut[:data_classes.num_classes] = [IGNORE_INDEX if target == IGNORED_TARGET else model_ids.get(target, IGNORE_INDEX)
                                      for target in targets]
    return lut


class ModelLabelledDataset(SegmentationDataset):
    """A data set whose labels come in a model's class ids: every tool evaluates on matched ids."""

    def __init__(self, dataset: SegmentationDataset, model_classes: ClassTable, lut: np.ndarray):
        super().__init__(dataset.root, dataset.split)
        self.dataset, self._classes, self.lut = dataset, model_classes, lut
        self.layout = dataset.layout

    @classmethod
    def missing(cls, root: Path, split: str) -> list[str]:
        raise NotImplementedError("a wrapper, never detected as a layout")

    @property
    def title(self) -> str:
        return self.dataset.title

    @property
    def classes(self) -> ClassTable:
        return self._classes

    def samples(self) -> list[Sample]:
        return self.dataset.samples()

    def table_files(self) -> list[Path]:
        return self.dataset.table_files()

    def read_label(self, sample: Sample) -> np.ndarray:
        return self.lut[self.dataset.read_label(sample)]


def dataset_for_model(dataset: SegmentationDataset, model_classes: Sequence[str],
                      class_map: dict[str, str] | None = None,
                      model_palette: Sequence[Sequence[int]] | None = None) -> SegmentationDataset:
    """`dataset` with labels in the model's class ids; the data set itself when its classes are the model's, in
    the same order, and no class map is given."""
    if tuple(model_classes) == dataset.classes.names and not class_map:
        return dataset
    lut = label_lut(dataset.classes, model_classes, class_map)
    palette = model_palette or [(128, 128, 128)] * len(model_classes)
    table = ClassTable(tuple(model_classes), tuple(tuple(int(c) for c in colour) for colour in palette))
    return ModelLabelledDataset(dataset, table, lut)
