"""What training reads, one frame at a time in the data loader's workers: augmented training crops, validation
frames at the network's input size, and label pixel counts for class weighting. Nothing holds a whole split."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ...core.model_card import InputSpec
from ...core.preprocess import normalize, resize_for_network
from ..data.base import ClassTable, Sample, SegmentationDataset
from ..evaluation.corruptions import CORRUPTIONS, corrupt
from .augment import CorruptionRecipe, augment, corruption_transform


class TrainingCrops:
    """A data loader transform: (image, label, rng) -> (student input, label), or (student input, teacher input,
    label) when the teacher sees the crop before corruption. Random scale, crop and flip, photometric jitter and
    the corruption recipe, drawn from the frame's own generator; inputs normalized as the node's pipeline does."""

    def __init__(self, crop: tuple[int, int], scale_range: tuple[float, float], spec: InputSpec,
                 corruption: CorruptionRecipe | None = None, clean_teacher: bool = False):
        self.crop, self.scale_range, self.spec = tuple(crop), tuple(scale_range), spec
        self.corruption, self.clean_teacher = corruption, clean_teacher
        self._transform = None  # built in the worker that first needs it: albumentations holds local classes

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
        transform = None
        if self.corruption is not None:
            if self._transform is None:
                self._transform = corruption_transform(self.corruption, 0)
            self._transform.set_random_seed(int(rng.integers(2**31)))
            transform = self._transform
        clean, corrupted, label = augment(image, label, rng, self.crop, self.scale_range, transform)
        student = normalize(corrupted, self.spec, "rgb")
        target = label.astype(np.int64)
        return (student, normalize(clean, self.spec, "rgb"), target) if self.clean_teacher else (student, target)


class ValidationFrames(Dataset):
    """Item i: frame i of the split resized and normalized as the node's pipeline does, with its label at full
    size; with a severity, frame i first goes through the i-th benchmark corruption (cycling), seeded by i: a
    fixed corrupted validation set."""

    def __init__(self, dataset: SegmentationDataset, spec: InputSpec, severity: int = 0):
        self.dataset, self.spec, self.severity = dataset, spec, severity
        self.samples = dataset.samples()

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image, label = self.dataset.load(self.samples[index])
        if self.severity:
            names = sorted(CORRUPTIONS)
            image = corrupt(image, names[index % len(names)], self.severity, seed=index)
        return normalize(resize_for_network(image, self.spec), self.spec, "rgb"), label


class LabelPixelCounts(Dataset):
    """Item i: (pixels of each class, pixels of the frame where the class appears) of frame i's label."""

    def __init__(self, dataset: SegmentationDataset, num_classes: int):
        self.dataset, self.num_classes = dataset, num_classes
        self.samples = dataset.samples()

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        label = self.dataset.read_label(self.samples[index])
        counts = np.bincount(label[label < self.num_classes].ravel(), minlength=self.num_classes)
        return counts, np.where(counts > 0, label.size, 0)


def frames_in_order(frames: Dataset, workers: int) -> DataLoader:
    """One item at a time, in order, read by `workers` processes (the whole split on this process, also under
    torchrun: figures must not depend on the number of processes)."""
    return DataLoader(frames, batch_size=1, shuffle=False, num_workers=workers)


def class_pixel_counts(dataset: SegmentationDataset, num_classes: int, workers: int) -> tuple[np.ndarray, np.ndarray]:
    """Summed over the split: pixels of each class, and pixels of the frames where each class appears."""
    class_pixels = torch.zeros(num_classes, dtype=torch.float64)
    image_pixels = torch.zeros(num_classes, dtype=torch.float64)
    for counts, sizes in frames_in_order(LabelPixelCounts(dataset, num_classes), workers):
        class_pixels += counts[0]
        image_pixels += sizes[0]
    return class_pixels.numpy(), image_pixels.numpy()


class JoinedSplits(SegmentationDataset):
    """Several splits of one data set read as one (train and val for a final retraining)."""

    def __init__(self, parts: list[SegmentationDataset]):
        super().__init__(parts[0].root, "+".join(part.split for part in parts))
        self.parts, self.layout = parts, parts[0].layout
        self._part_of = {sample: part for part in parts for sample in part.samples()}

    @classmethod
    def missing(cls, root, split) -> list[str]:
        raise NotImplementedError("a union of opened splits, never detected as a layout")

    @property
    def title(self) -> str:
        return self.parts[0].title

    @property
    def classes(self) -> ClassTable:
        return self.parts[0].classes

    def samples(self) -> list[Sample]:
        return list(self._part_of)

    def read_label(self, sample: Sample) -> np.ndarray:
        return self._part_of[sample].read_label(sample)

    def load(self, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
        return self._part_of[sample].load(sample)
