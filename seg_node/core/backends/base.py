"""The backend interface: load a model for a device, run inference on an N x 3 x H x W float32 batch."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..model_card import ModelCard

DEVICES = ("auto", "cpu", "cuda", "tensorrt")
PRECISIONS = ("auto", "fp32", "fp16")


class BackendError(UserError, RuntimeError):
    """The backend cannot run this model on this device; the message says what to change."""


class Backend(ABC):
    name: str = ""
    #: which entry of the model card's `files` this backend loads
    file_key: str = ""

    def __init__(self, card: ModelCard, card_path: Path, device: str, precision: str, threads: int):
        if device.split(":")[0] not in DEVICES:
            raise BackendError(f"device must be one of {DEVICES} (cuda may carry an index, cuda:1), got {device!r}")
        if precision not in PRECISIONS:
            raise BackendError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if threads < 0:
            raise BackendError(f"threads must be >= 0 (0: the library's default), got {threads}")
        self.card = card
        self.device = device
        self.precision = precision
        self.load(card_path, threads)

    @abstractmethod
    def load(self, card_path: Path, threads: int) -> None:
        """Load the model file named by the card; set `self.device` and `self.precision` to what is used."""

    @abstractmethod
    def infer(self, batch: np.ndarray) -> np.ndarray:
        """N x 3 x H x W float32 -> N x classes x H x W float32 logits, in a new array the caller may modify
        (the pipeline averages flipped passes in place)."""

    def describe(self) -> str:
        return f"{self.name} on {self.device} ({self.precision})"
