"""The backend interface: load a model for a device, run inference on a batch in the card's input layout."""

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
    #: whether infer() runs a batch of N images in one call (several cameras' frames at the cost of about one on a
    #: GPU); False for a graph with a fixed batch of one, which infer() runs image by image
    batches: bool = True

    def __init__(self, card: ModelCard, card_path: Path, device: str, precision: str, threads: int,
                 tensorrt: TensorRTOptions | None = None):
        if device.split(":")[0] not in DEVICES:
            raise BackendError(f"device must be one of {DEVICES} (cuda may carry an index, cuda:1), got {device!r}")
        if precision not in PRECISIONS:
            raise BackendError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if threads < 0:
            raise BackendError(f"threads must be >= 0 (0: the library's default), got {threads}")
        self.card = card
        self.device = device
        self.precision = precision
        self.tensorrt = tensorrt or TensorRTOptions()
        self.load(card_path, threads)

    @abstractmethod
    def load(self, card_path: Path, threads: int) -> None:
        """Load the model file named by the card; set `self.device` and `self.precision` to what is used."""

    @abstractmethod
    def infer(self, batch: np.ndarray) -> np.ndarray:
        """A batch of N images in the card's input layout and dtype (N x 3 x H x W float32 by default) -> the
        model's output for the N, in the card's output layout (N x classes x h x w float32 logits by default), in
        a new array the caller may modify (the pipeline averages flipped passes in place)."""

    def warm_up(self, batch: int = 1) -> float:
        """One inference on a blank input of `batch` images, so that engine builds, kernel selection and
        allocations (TensorRT, cuDNN, the memory arenas) happen at start-up instead of in the first frame (a
        TensorRT engine is built per batch size); its output must fit the card (a class axis the card
        contradicts stops the start). Returns its seconds."""
        interface, spec = self.card.interface, self.card.input
        started = time.perf_counter()
        output = self.infer(np.zeros(interface.input_shape(batch, spec.height, spec.width),
                                     interface.input_dtype_numpy))
        seconds = time.perf_counter() - started
        problem = interface.output_problem(output.shape, self.card.num_classes)
        if problem:
            raise BackendError(f"model {self.card.name}: {problem}")
        return seconds

    def cancel(self) -> None:  # noqa: B027 (a no-op unless the library can interrupt a run)
        """Ask an inference running in another thread to stop (at shutdown); a no-op where the library
        cannot interrupt one."""

    def describe(self) -> str:
        return f"{self.name} on {self.device} ({self.precision})"
