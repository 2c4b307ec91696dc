"""Backends by name: each implements `load` and `infer` (see base.Backend)."""

from __future__ import annotations

from pathlib import Path

from ..model_card import ModelCard
from .base import DEVICES, PRECISIONS, Backend, BackendError
from .onnxruntime_backend import OnnxRuntimeBackend
from .torch_backend import TorchBackend

BACKENDS: dict[str, type[Backend]] = {cls.name: cls for cls in (TorchBackend, OnnxRuntimeBackend)}


def create_backend(name: str, card: ModelCard, card_path: Path, device: str = "auto", precision: str = "auto",
                   threads: int = 0) -> Backend:
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; known: {sorted(BACKENDS)}")
    return BACKENDS[name](card, card_path, device, precision, threads)


__all__ = ["BACKENDS", "Backend", "BackendError", "DEVICES", "PRECISIONS", "create_backend"]
