"""CamVid readers: the 11-class SegNet benchmark layout and the 32-class Kaggle layout mapped to 11 classes."""

from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

CAMVID_CLASSES = ("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
                  "Pedestrian", "Bicyclist")
# Colours (R, G, B) of the 11 classes, as in the SegNet release.
CAMVID_PALETTE = ((128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
                  (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192))
VOID_INDEX = 11
SPLITS = ("train", "val", "test")

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


class CamVidLayoutError(FileNotFoundError):
    """The folder is not a CamVid copy of the expected layout; the message names what is missing."""


@dataclass(frozen=True)
class Sample:
    name: str
    image_path: Path
    label_path: Path


def camvid_root(path: str | os.PathLike | None = None) -> Path:
    """The dataset folder from an explicit path or the CAMVID_ROOT environment variable."""
    path = path or os.environ.get("CAMVID_ROOT")
    if not path:
        raise CamVidLayoutError("no CamVid folder given: pass --data PATH or set CAMVID_ROOT")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise CamVidLayoutError(f"CamVid folder {root} does not exist")
    return root


def read_rgb(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise OSError(f"cannot read image {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


IMAGE_SUFFIXES = (".png", ".jpg")


def frames_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def labelled_frames(kind: str, image_dir: Path, label_dir: Path, label_suffix: str, *files: Path) -> list[Sample]:
    """The frames of `image_dir`, each with its label `label_dir/<stem><label_suffix>`; a missing folder, file or
    label is a CamVidLayoutError that names it (`kind`: the layout, for the message)."""
    missing = [str(d) for d in (image_dir, label_dir) if not d.is_dir()] + [str(f) for f in files if not f.is_file()]
    if missing:
        raise CamVidLayoutError(f"not the {kind} CamVid layout: missing {', '.join(missing)}")
    samples = [Sample(p.stem, p, label_dir / f"{p.stem}{label_suffix}") for p in frames_in(image_dir)]
    unlabelled = [s.name for s in samples if not s.label_path.is_file()]
    if not samples or unlabelled:
        raise CamVidLayoutError(f"{image_dir}: {len(samples)} frames, labels missing for {unlabelled[:5]}")
    return samples


class CamVid11:
    """SegNet layout: <split>/X.png (or .jpg) with <split>annot/X.png holding class ids 0..10 and 11 = void."""

    layout = "camvid11"
    title = "CamVid (11-class SegNet split)"

    def __init__(self, root: str | os.PathLike, split: str):
        self.root, self.split = Path(root), split
        self._samples = labelled_frames("11-class", self.root / split, self.root / f"{split}annot", ".png")

    def items(self) -> list[Sample]:
        return list(self._samples)

    def load(self, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
        """(RGB uint8 H x W x 3, class ids uint8 H x W with VOID_INDEX for void)."""
        label = cv2.imread(str(sample.label_path), cv2.IMREAD_UNCHANGED)
        if label is None or label.ndim != 2:
            raise OSError(f"{sample.label_path}: expected a single-channel label image")
        return read_rgb(sample.image_path), np.minimum(label, VOID_INDEX).astype(np.uint8)


class CamVid32:
    """Kaggle layout: <split>/X.png, <split>_labels/X_L.png coloured per class_dict.csv (name,r,g,b)."""

    layout = "camvid32"
    title = "CamVid (32-class release, mapped to 11 classes)"

    def __init__(self, root: str | os.PathLike, split: str):
        self.root, self.split = Path(root), split
        class_dict = self.root / "class_dict.csv"
        self._samples = labelled_frames("32-class", self.root / split, self.root / f"{split}_labels", "_L.png",
                                        class_dict)
        self._lut = self._colour_lut(class_dict)

    @staticmethod
    def _colour_lut(class_dict: Path) -> dict[int, int]:
        """Packed 0xRRGGBB colour -> 11-class id; colours of unknown names are an error, not silently void."""
        lut = {}
        with open(class_dict, newline="") as handle:
            for row in csv.DictReader(handle):
                name = row["name"]
                if name not in CAMVID32_TO_11:
                    raise CamVidLayoutError(f"{class_dict}: class {name!r} is not one of the 32 CamVid classes")
                target = CAMVID32_TO_11[name]
                colour = (int(row["r"]) << 16) | (int(row["g"]) << 8) | int(row["b"])
                lut[colour] = VOID_INDEX if target is None else CAMVID_CLASSES.index(target)
        return lut

    def items(self) -> list[Sample]:
        return list(self._samples)

    def load(self, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
        rgb_label = read_rgb(sample.label_path).astype(np.int32)
        packed = (rgb_label[..., 0] << 16) | (rgb_label[..., 1] << 8) | rgb_label[..., 2]
        label = np.full(packed.shape, VOID_INDEX, np.uint8)
        for colour, class_id in self._lut.items():
            label[packed == colour] = class_id
        return read_rgb(sample.image_path), label


DATASET_LAYOUTS = {cls.layout: cls for cls in (CamVid11, CamVid32)}


def open_dataset(root: str | os.PathLike | None, split: str, layout: str = "auto"):
    """Open a split of a CamVid copy; `layout` is a name from DATASET_LAYOUTS or 'auto'."""
    root = camvid_root(root)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if layout != "auto":
        if layout not in DATASET_LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}; known: {sorted(DATASET_LAYOUTS)}")
        return DATASET_LAYOUTS[layout](root, split)
    errors = []
    for cls in DATASET_LAYOUTS.values():
        try:
            return cls(root, split)
        except CamVidLayoutError as exc:
            errors.append(str(exc))
    raise CamVidLayoutError(f"{root} holds no CamVid split {split!r}: " + "; ".join(errors))


def dataset_identity(dataset: CamVid11 | CamVid32) -> dict:
    """What a model card records of the data a tool used, instead of a path that exists on one machine: the data
    set's name, the split, its frame count and a SHA-256 over its image and label files, the same as
    `cd $CAMVID_ROOT && sha256sum test/* testannot/* | LC_ALL=C sort -k2 | sha256sum` for the SegNet test split."""
    files = sorted((path.relative_to(dataset.root).as_posix(), path)
                   for sample in dataset.items() for path in (sample.image_path, sample.label_path))
    listing = "".join(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {name}\n" for name, path in files)
    return {"name": dataset.title, "split": dataset.split, "frames": len(dataset.items()),
            "sha256": hashlib.sha256(listing.encode()).hexdigest()}
