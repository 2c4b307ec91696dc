"""What every data set layout provides: frames with labels as class ids, a class table, and clear errors.

Labels come back as uint8 class ids in the order of the data set's class table, with IGNORE_INDEX for pixels
that carry no class (CamVid's void, Cityscapes' ignored ids, the folders layout's 255 or void colour).
"""

from __future__ import annotations

import csv
import hashlib
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import cv2
import numpy as np
from tqdm import tqdm

from ...core.errors import UserError

IGNORE_INDEX = 255
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
#: how many offending pixel positions an error message lists
POSITIONS_SHOWN = 5


class DatasetError(UserError):
    """A data folder or file that cannot be read as the layout says; the message names the file and the fix."""


@dataclass(frozen=True)
class ClassTable:
    """Class names and their (R, G, B) colours, in class-id order."""

    names: tuple[str, ...]
    colours: tuple[tuple[int, int, int], ...]

    def __post_init__(self):
        if len(self.names) != len(self.colours):
            raise DatasetError(f"{len(self.names)} class names but {len(self.colours)} colours")
        if len(set(self.names)) != len(self.names):
            repeated = sorted({name for name in self.names if self.names.count(name) > 1})
            raise DatasetError(f"class names must be unique, repeated: {repeated}")
        if not 0 < len(self.names) < IGNORE_INDEX:
            raise DatasetError(f"a class table holds 1..{IGNORE_INDEX - 1} classes, got {len(self.names)}")

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @property
    def palette(self) -> list[list[int]]:
        return [list(colour) for colour in self.colours]

    @classmethod
    def from_csv(cls, path: str | os.PathLike) -> ClassTable:
        """A `name,r,g,b` CSV, one row per class in id order."""
        rows = read_colour_rows(Path(path))
        return cls(tuple(name for name, _ in rows), tuple(colour for _, colour in rows))

    def to_csv(self, path: str | os.PathLike) -> None:
        with open(path, "w", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(["name", "r", "g", "b"])
            writer.writerows([name, *colour] for name, colour in zip(self.names, self.colours))


def read_colour_rows(path: Path) -> list[tuple[str, tuple[int, int, int]]]:
    """The rows of a `name,r,g,b` CSV; a missing file, header or malformed row is a DatasetError naming it."""
    if not path.is_file():
        raise DatasetError(f"class table {path} does not exist: write one row `name,r,g,b` per class in id order")
    with open(path, newline="") as handle:
        reader = csv.reader(handle)
        header = [cell.strip().lower() for cell in next(reader, [])]
        if header != ["name", "r", "g", "b"]:
            raise DatasetError(f"{path}: the first line must be the header `name,r,g,b`, got {','.join(header)!r}")
        rows = [parse_colour_row(path, reader.line_num, row) for row in reader if any(c.strip() for c in row)]
    if not rows:
        raise DatasetError(f"{path}: no classes below the header")
    return rows


def parse_colour_row(path: Path, line: int, row: list[str]) -> tuple[str, tuple[int, int, int]]:
    cells = [cell.strip() for cell in row]
    try:
        colour = tuple(int(cell) for cell in cells[1:])
    except ValueError:
        colour = ()
    if len(cells) != 4 or not cells[0] or len(colour) != 3 or not all(0 <= c <= 255 for c in colour):
        raise DatasetError(f"{path} line {line}: expected `name,r,g,b` with r, g, b in 0..255, got {','.join(row)!r}")
    return cells[0], colour


@dataclass(frozen=True)
class Sample:
    name: str
    image_path: Path
    label_path: Path


class SegmentationDataset(ABC):
    """One split of a data set in one layout. Subclasses find their frames in `__init__` and decode labels in
    `load`; `missing(root, split)` says what a folder lacks to be of the layout (for `--layout auto`)."""

    layout: ClassVar[str]
    #: layout options this layout takes (keyword arguments of __init__ beyond root and split)
    options: ClassVar[tuple[str, ...]] = ()

    def __init__(self, root: str | os.PathLike, split: str):
        self.root, self.split = Path(root), split

    @classmethod
    @abstractmethod
    def missing(cls, root: Path, split: str) -> list[str]:
        """What `root` lacks to hold `split` in this layout; empty when it matches."""

    @property
    @abstractmethod
    def title(self) -> str:
        """The data set's name as cards and reports show it."""

    @property
    @abstractmethod
    def classes(self) -> ClassTable:
        ...

    @abstractmethod
    def samples(self) -> list[Sample]:
        ...

    @abstractmethod
    def read_label(self, sample: Sample) -> np.ndarray:
        """The label of `sample` as class ids of `classes` (H x W uint8, IGNORE_INDEX unlabelled)."""

    def load(self, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
        """(RGB H x W x 3 uint8, class ids H x W uint8 with IGNORE_INDEX for unlabelled pixels)."""
        image, label = read_rgb(sample.image_path), self.read_label(sample)
        if image.shape[:2] != label.shape:
            raise DatasetError(f"{sample.label_path}: label is {label.shape[1]}x{label.shape[0]} but its image "
                               f"{sample.image_path} is {image.shape[1]}x{image.shape[0]}")
        return image, label

    def table_files(self) -> list[Path]:
        """Files besides the frames that give the labels their meaning (a class table), for the checksum."""
        return []

    def identity(self, progress: bool = False) -> dict:
        """What a model card records of the data a tool used, instead of a path that exists on one machine: the
        name, the split, its frame count and a SHA-256 over its files, equal to `sha256sum <files> | LC_ALL=C sort
        -k2 | sha256sum` in the data folder (for CamVid's SegNet test split: `test/* testannot/*`)."""
        paths = [path for sample in self.samples() for path in (sample.image_path, sample.label_path)]
        files = sorted((path.relative_to(self.root).as_posix(), path) for path in paths + self.table_files())
        listing = "".join(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {name}\n"
                          for name, path in tqdm(files, desc=f"checksum of {self.split}", disable=not progress,
                                                 leave=False))
        return {"name": self.title, "split": self.split, "frames": len(self.samples()),
                "sha256": hashlib.sha256(listing.encode()).hexdigest()}


def data_root(path: str | os.PathLike | None = None) -> Path:
    """The data folder: an explicit path, else $CAMVID_ROOT (the tools' default data set)."""
    path = path or os.environ.get("CAMVID_ROOT")
    if not path:
        raise DatasetError("no data folder given: pass --data PATH or set CAMVID_ROOT")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DatasetError(f"data folder {root} does not exist")
    return root


def read_rgb(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise DatasetError(f"cannot read image {path}: not an image file, or damaged")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_label_file(path: Path) -> np.ndarray:
    """A label PNG as stored: H x W (ids) or H x W x 3 RGB (colours)."""
    label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if label is None:
        raise DatasetError(f"cannot read label {path}: not an image file, or damaged")
    if label.dtype != np.uint8:
        raise DatasetError(f"{path}: labels must be 8-bit PNGs, this one is {label.dtype}")
    if label.ndim == 3:
        label = cv2.cvtColor(label, cv2.COLOR_BGRA2RGB if label.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    return label


def positions(mask: np.ndarray) -> str:
    """The first few (x, y) pixel positions where `mask` holds, for an error message."""
    ys, xs = np.nonzero(mask)
    return ", ".join(f"({x}, {y})" for x, y in zip(xs[:POSITIONS_SHOWN].tolist(), ys[:POSITIONS_SHOWN].tolist()))


def map_ids(label: np.ndarray, lut: np.ndarray, path: Path, table: str) -> np.ndarray:
    """Stored ids -> class ids through `lut` (256 entries, -1 for ids the class table lacks, which are an error
    naming the file, the ids, their count and where they are)."""
    if label.ndim != 2:
        raise DatasetError(f"{path}: expected a single-channel label of class ids, got {label.shape[2]} channels")
    mapped = lut[label]
    bad = mapped < 0
    if bad.any():
        ids = np.unique(label[bad]).tolist()
        raise DatasetError(f"{path}: label ids {ids} are not in the class table ({table}): {int(bad.sum())} "
                           f"pixels, first at (x, y) {positions(bad)}")
    return mapped.astype(np.uint8)


def pack(rgb: np.ndarray) -> np.ndarray:
    """R, G, B -> one int32 0xRRGGBB per pixel (or per row of an N x 3 array)."""
    rgb = np.asarray(rgb, np.int32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def map_colours(label: np.ndarray, colour_ids: dict[tuple[int, int, int], int], path: Path, table: str
                ) -> np.ndarray:
    """An RGB label -> class ids by `colour_ids`; a colour not in it is an error naming the file, the colours,
    their pixel count and where they are."""
    if label.ndim != 3:
        raise DatasetError(f"{path}: expected an RGB colour label, got a single-channel image")
    keys = pack(np.array(list(colour_ids), np.int32).reshape(-1, 3))
    order = np.argsort(keys)
    keys, values = keys[order], np.array(list(colour_ids.values()), np.uint8)[order]
    packed = pack(label)
    index = np.clip(np.searchsorted(keys, packed), 0, len(keys) - 1)
    unknown = keys[index] != packed
    if unknown.any():
        colours = [((c >> 16) & 255, (c >> 8) & 255, c & 255) for c in np.unique(packed[unknown])[:5].tolist()]
        raise DatasetError(f"{path}: {int(unknown.sum())} pixels have colours not in the class table ({table}), "
                           f"e.g. {colours}, first at (x, y) {positions(unknown)}; add them as classes, name the "
                           f"row `void`, or pass --ignore-colour R,G,B")
    return values[index]


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def pair_frames(images: list[Path], labels: list[Path], image_key, label_key, where: str) -> list[Sample]:
    """Samples of images and labels with equal keys (the frame's name); an image without a label, a label without
    an image or no frames at all is a DatasetError naming the files."""
    image_by_key = {image_key(p): p for p in images}
    label_by_key = {label_key(p): p for p in labels}
    unlabelled = sorted(str(image_by_key[k]) for k in image_by_key.keys() - label_by_key.keys())
    orphans = sorted(str(label_by_key[k]) for k in label_by_key.keys() - image_by_key.keys())
    if unlabelled:
        raise DatasetError(f"{where}: {len(unlabelled)} images have no label, e.g. {unlabelled[:3]}")
    if orphans:
        raise DatasetError(f"{where}: {len(orphans)} labels have no image, e.g. {orphans[:3]}")
    if not image_by_key:
        raise DatasetError(f"{where}: the split is empty (no images)")
    return [Sample(key, image_by_key[key], label_by_key[key]) for key in sorted(image_by_key)]
