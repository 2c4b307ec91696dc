"""The backend interface: load a model for a device, run inference on an N x 3 x H x W float32 batch."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..model_card import ModelCard

DEVICES = ("auto", "cpu", "cuda", "tensorrt")
PRECISIONS = ("auto", "fp32", "fp16")


class BackendError(UserError, RuntimeError):
    """The backend cannot run this model on this device; the message says what to change."""


@dataclass(frozen=True)
class TensorRTOptions:
    """ONNX Runtime's TensorRT execution provider settings (device 'tensorrt'); other devices ignore them."""
    fp16: bool = False  #: let TensorRT build FP16 kernels where it picks them (trt_fp16_enable)
    engine_cache_dir: str = ""  #: keep built engines here across starts ('': rebuild at every start)


class Backend(ABC):
    name: str = ""
    #: which entry of the model card's `files` this backend loads
    file_key: str = ""

    def __init__(self, card: ModelCard, card_path: Path, device: str, precision: str, threads: int,
                 tensorrt: TensorRTOptions = TensorRTOptions()):
        if device.split(":")[0] not in DEVICES:
            raise BackendError(f"device must be one of {DEVICES} (cuda may carry an index, cuda:1), got {device!r}")
        if precision not in PRECISIONS:
            raise BackendError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if threads < 0:
            raise BackendError(f"threads must be >= 0 (0: the library's default), got {threads}")
        self.card = card
        self.device = device
        self.precision = precision
        self.tensorrt = tensorrt
        self.load(card_path, threads)

    @abstractmethod
    def load(self, card_path: Path, threads: int) -> None:
        """Load the model file named by the card; set `self.device` and `self.precision` to what is used."""

    @abstractmethod
    def infer(self, batch: np.ndarray) -> np.ndarray:
        """N x 3 x H x W float32 -> N x classes x H x W float32 logits, in a new array the caller may modify
        (the pipeline averages flipped passes in place)."""

    def warm_up(self) -> float:
        """One inference on a blank input, so that engine builds, kernel selection and allocations (TensorRT,
        cuDNN, the memory arenas) happen at start-up instead of in the first frame; returns its seconds."""
        started = time.perf_counter()
        self.infer(np.zeros((1, 3, self.card.input.height, self.card.input.width), np.float32))
        return time.perf_counter() - started

    def cancel(self) -> None:
        """Ask an inference running in another thread to stop (at shutdown); a no-op where the library
        cannot interrupt one."""

    def describe(self) -> str:
        return f"{self.name} on {self.device} ({self.precision})"
