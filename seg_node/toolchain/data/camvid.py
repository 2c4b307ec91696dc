"""CamVid in either layout it is distributed in, as the 11 benchmark classes with void = IGNORE_INDEX:

- SegNet: <split>/X.png (or .jpg) with <split>annot/X.png holding class ids 0..10 and 11 = void;
- Kaggle: <split>/X.png with <split>_labels/X_L.png coloured per class_dict.csv (the 32 classes of the original
  release, folded into the 11 as SegNet did).
"""

from __future__ import annotations

import csv
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
    read_label_file,
)

CAMVID_CLASSES = ClassTable(
    names=("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian",
           "Bicyclist"),
    # as in the SegNet release
    colours=((128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
             (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192)))
SPLITS = ("train", "val", "test")
SEGNET_VOID = 11

# The 32 classes of the original CamVid release, folded into the 11 benchmark classes as SegNet did.
CAMVID32_TO_11 = {
    "Sky": "Sky",
    "Building": "Building", "Wall": "Building", "Tunnel": "Building", "Archway": "Building", "Bridge": "Building",
    "Column_Pole": "Pole", "TrafficCone": "Pole",
    "Road": "Road", "LaneMkgsDriv": "Road", "LaneMkgsNonDriv": "Road",
    "Sidewalk": "Pavement", "ParkingBlock": "Pavement", "RoadShoulder": "Pavement",
    "Tree": "Tree", "VegetationMisc": "Tree",
    "SignSymbol": "SignSymbol", "Misc_Text": "SignSymbol", "TrafficLight": "SignSymbol",
    "Fence": "Fence",
    "Car": "Car", "SUVPickupTruck": "Car", "Truck_Bus": "Car", "Train": "Car", "OtherMoving": "Car",
    "Pedestrian": "Pedestrian", "Child": "Pedestrian", "CartLuggagePram": "Pedestrian", "Animal": "Pedestrian",
    "Bicyclist": "Bicyclist", "MotorcycleScooter": "Bicyclist",
    "Void": None,
}
SEGNET_LUT = np.array([*range(SEGNET_VOID), IGNORE_INDEX] + [-1] * (255 - SEGNET_VOID), np.int16)


def segnet_missing(root: Path, split: str) -> list[str]:
    return [f"{root / d}/" for d in (split, f"{split}annot") if not (root / d).is_dir()]


def kaggle_missing(root: Path, split: str) -> list[str]:
    return ([f"{root / d}/" for d in (split, f"{split}_labels") if not (root / d).is_dir()]
            + ([] if (root / "class_dict.csv").is_file() else [str(root / "class_dict.csv")]))


class CamVid(SegmentationDataset):
    """The SegNet layout when <split>annot/ is there, else the Kaggle layout."""

    layout = "camvid"

    def __init__(self, root: str | os.PathLike, split: str):
        super().__init__(root, split)
        if split not in SPLITS:
            raise DatasetError(f"CamVid splits are {SPLITS}, got {split!r}")
        image_dir = self.root / split
        self.segnet = not segnet_missing(self.root, split)
        if self.segnet:
            label_dir, label_suffix = self.root / f"{split}annot", ".png"
        else:
            missing = self.missing(self.root, split)
            if missing:
                raise DatasetError(f"{self.root} is not a CamVid copy: it lacks {missing[0]}")
            label_dir, label_suffix = self.root / f"{split}_labels", "_L.png"
            self._colour_ids = self._kaggle_colours(self.root / "class_dict.csv")
        self._samples = pair_frames(image_files(image_dir), image_files(label_dir), lambda p: p.stem,
                                    lambda p: p.name.removesuffix(label_suffix).rsplit(".", 1)[0],
                                    f"{image_dir} and {label_dir}")

    @classmethod
    def missing(cls, root: Path, split: str) -> list[str]:
        segnet, kaggle = segnet_missing(root, split), kaggle_missing(root, split)
        if not segnet or not kaggle:
            return []
        return [f"{' and '.join(segnet)} (SegNet layout) or {' and '.join(kaggle)} (Kaggle layout)"]

    @property
    def title(self) -> str:
        return "CamVid (11-class SegNet split)" if self.segnet else "CamVid (32-class release, mapped to 11 classes)"

    @property
    def classes(self) -> ClassTable:
        return CAMVID_CLASSES

    def samples(self) -> list[Sample]:
        return list(self._samples)

    def table_files(self) -> list[Path]:
        return [] if self.segnet else [self.root / "class_dict.csv"]

    @staticmethod
    def _kaggle_colours(class_dict: Path) -> dict[tuple[int, int, int], int]:
        """Colour -> 11-class id; a class name outside the 32 is an error, not silently void."""
        colour_ids = {}
        with open(class_dict, newline="") as handle:
            for row in csv.DictReader(handle):
                name = row["name"]
                if name not in CAMVID32_TO_11:
                    raise DatasetError(f"{class_dict}: class {name!r} is not one of the 32 CamVid classes")
                target = CAMVID32_TO_11[name]
                colour = (int(row["r"]), int(row["g"]), int(row["b"]))
                colour_ids[colour] = IGNORE_INDEX if target is None else CAMVID_CLASSES.names.index(target)
        return colour_ids

    def read_label(self, sample: Sample) -> np.ndarray:
        label = read_label_file(sample.label_path)
        if self.segnet:
            return map_ids(label, SEGNET_LUT, sample.label_path, "CamVid's 11 classes, 11 = void")
        return map_colours(label, self._colour_ids, sample.label_path, str(self.root / "class_dict.csv"))
