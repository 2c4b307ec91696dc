"""Data sets: one class per layout in LAYOUTS; `open_dataset` opens a split by layout name or finds the layout."""

from __future__ import annotations

import os
from pathlib import Path

from .base import (
    IGNORE_INDEX,
    ClassTable,
    DatasetError,
    Sample,
    SegmentationDataset,
    data_root,
)
from .camvid import CAMVID_CLASSES, CamVid
from .cityscapes import Cityscapes, cityscapes_classes
from .folders import Folders

LAYOUTS: dict[str, type[SegmentationDataset]] = {cls.layout: cls for cls in (CamVid, Cityscapes, Folders)}


def open_dataset(root: str | os.PathLike | None, split: str, layout: str = "auto", **layout_options
                 ) -> SegmentationDataset:
    """Open `split` of the data set in `root` (None: $CAMVID_ROOT); `layout` is a name in LAYOUTS or "auto", which
    takes the one layout the folder matches and otherwise lists what each layout lacks."""
    root = data_root(root)
    if layout == "auto":
        layout = detect_layout(root, split)
    if layout not in LAYOUTS:
        raise DatasetError(f"unknown data set layout {layout!r}; known: {', '.join(sorted(LAYOUTS))} or auto")
    cls = LAYOUTS[layout]
    given = {name: value for name, value in layout_options.items() if value}
    unused = sorted(given.keys() - set(cls.options))
    if unused:
        raise DatasetError(f"the {layout} layout takes no option {', '.join(unused)}")
    return cls(root, split, **given)


def detect_layout(root: Path, split: str) -> str:
    lacking = {name: cls.missing(root, split) for name, cls in LAYOUTS.items()}
    matching = [name for name, missing in lacking.items() if not missing]
    if len(matching) == 1:
        return matching[0]
    if matching:
        raise DatasetError(f"{root} matches the layouts {', '.join(matching)}: choose one with --layout")
    reasons = "; ".join(f"{name} lacks {', '.join(missing)}" for name, missing in lacking.items())
    raise DatasetError(f"{root} holds split {split!r} in no known layout: {reasons}")


__all__ = [
    "CAMVID_CLASSES",
    "IGNORE_INDEX",
    "LAYOUTS",
    "ClassTable",
    "DatasetError",
    "Sample",
    "SegmentationDataset",
    "cityscapes_classes",
    "detect_layout",
    "open_dataset",
]
