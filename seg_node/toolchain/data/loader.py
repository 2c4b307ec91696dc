"""Stream a data set's frames through torch's DataLoader: each worker reads, decodes and transforms one frame at
a time, so memory holds the batches in flight, never a whole split (Cityscapes' train split would take ~25 GB).

Under torchrun (torch.distributed initialised) each process reads its own share through a DistributedSampler.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, SequentialSampler

from .base import SegmentationDataset

#: (image H x W x 3 uint8 RGB, label H x W uint8, rng) -> (network input, label) arrays
Transform = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]


class FrameDataset(Dataset):
    """Item i: frame i of `dataset` read and transformed in the worker, with a random generator seeded by (seed,
    epoch, i), so augmentation is reproducible whatever the number of workers."""

    def __init__(self, dataset: SegmentationDataset, transform: Transform | None = None, seed: int = 0):
        self.dataset, self.transform, self.seed = dataset, transform, seed
        self.samples = dataset.samples()
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        """New random draws per epoch; workers start each epoch from a fresh copy, so they see it."""
        self.epoch = epoch

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image, label = self.dataset.load(self.samples[index])
        if self.transform is None:
            return image, label
        return self.transform(image, label, np.random.default_rng((self.seed, self.epoch, index)))


class EpochLoader:
    """A DataLoader whose `set_epoch(n)` reshuffles (DistributedSampler's way) and re-seeds the transforms."""

    def __init__(self, frames: FrameDataset, loader: DataLoader):
        self.frames, self.loader = frames, loader

    def set_epoch(self, epoch: int) -> None:
        self.frames.set_epoch(epoch)
        if isinstance(self.loader.sampler, DistributedSampler):
            self.loader.sampler.set_epoch(epoch)
        elif isinstance(self.loader.sampler, RandomSampler):
            self.loader.sampler.generator.manual_seed(self.frames.seed * 1_000_003 + epoch)

    def __iter__(self):
        return iter(self.loader)

    def __len__(self) -> int:
        return len(self.loader)


def make_loader(dataset: SegmentationDataset, transform: Transform | None = None, batch_size: int = 1,
                shuffle: bool = False, workers: int = 0, seed: int = 0, drop_last: bool = False) -> EpochLoader:
    """Batches of (inputs, labels) tensors, stacked by torch's default collation from the transform's arrays."""
    frames = FrameDataset(dataset, transform, seed)
    if dist.is_available() and dist.is_initialized():
        sampler = DistributedSampler(frames, shuffle=shuffle, seed=seed, drop_last=drop_last)
    elif shuffle:
        sampler = RandomSampler(frames, generator=torch.Generator().manual_seed(seed * 1_000_003))
    else:
        sampler = SequentialSampler(frames)
    loader = DataLoader(frames, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=drop_last,
                        pin_memory=False, persistent_workers=False)
    return EpochLoader(frames, loader)
