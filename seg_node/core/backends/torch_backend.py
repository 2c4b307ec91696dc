"""PyTorch eager backend: the card's architecture rebuilt at the saved widths, weights from safetensors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..architectures import build_model
from ..architectures.weights import load_weights
from ..model_card import ModelCard
from ..model_files import model_file
from .base import Backend, BackendError


def torch_device(device: str) -> str:
    """auto -> cuda when torch sees one; cuda without CUDA is an error that says so."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "tensorrt":
        raise BackendError("device 'tensorrt' needs backend 'onnxruntime' (the TensorRT execution provider)")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BackendError(f"device {device!r} asked for, but this torch build sees no CUDA device "
                           f"(torch {torch.__version__}); use device 'cpu' or 'auto'")
    return device


def build_for_inference(card: ModelCard, weights_path: Path) -> torch.nn.Module:
    try:
        model = build_model(card.architecture, card.num_classes)
    except ValueError as exc:  # the card names an architecture or options this package does not have
        raise BackendError(f"model card {card.name}: {exc}") from exc
    load_weights(model, weights_path)
    return model.eval()


class TorchBackend(Backend):
    name = "torch"
    file_key = "torch"

    def load(self, card_path: Path, threads: int) -> None:
        interface = self.card.interface
        if (interface.input_layout, interface.input_dtype, interface.output_layout, interface.output_kind) != (
                "NCHW", "float32", "NCHW", "logits"):
            raise BackendError(f"model {self.card.name}: the torch backend runs this project's architectures (NCHW "
                               "float32 in, NCHW logits out); this card's interface needs backend 'onnxruntime'")
        self.device = torch_device(self.device)
        if self.precision == "auto":
            self.precision = "fp16" if self.device.startswith("cuda") else "fp32"
        if self.precision == "fp16" and not self.device.startswith("cuda"):
            raise BackendError("precision fp16 with the torch backend needs a CUDA device; use fp32 on CPU")
        if threads:
            torch.set_num_threads(threads)
        model = build_for_inference(self.card, model_file(self.card, card_path, self.file_key))
        self.dtype = torch.float16 if self.precision == "fp16" else torch.float32
        self.model = model.to(self.device, self.dtype).to(memory_format=torch.channels_last)

    @torch.inference_mode()
    def infer(self, batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(batch).to(self.device, self.dtype).contiguous(memory_format=torch.channels_last)
        return self.model(x).float().contiguous().cpu().numpy()
