"""Backends by name: each implements `load` and `infer` (see base.Backend).

A backend's module is imported only when that backend is chosen, so a node running an ONNX model never
imports torch (about 1.25 s and 200 MB per start) and a runtime-only install needs no torch at all.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from ..model_card import ModelCard
from .base import DEVICES, PRECISIONS, Backend, BackendError, TensorRTOptions

#: backend name -> (module in this package, class)
BACKENDS: dict[str, tuple[str, str]] = {
    "onnxruntime": ("onnxruntime_backend", "OnnxRuntimeBackend"),
    "torch": ("torch_backend", "TorchBackend"),
}


def backend_class(name: str) -> type[Backend]:
    """Import the named backend's module and return its class."""
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; known: {sorted(BACKENDS)}")
    module, cls = BACKENDS[name]
    try:
        return getattr(importlib.import_module(f".{module}", __name__), cls)
    except ImportError as exc:  # a runtime-only install has no torch: say which install adds it
        raise BackendError(f"backend {name!r} needs {exc.name}, which is not installed "
                           f"(pip install '.[train]' adds torch; the node's default backend is onnxruntime)") from exc


def create_backend(name: str, card: ModelCard, card_path: Path, device: str = "auto", precision: str = "auto",
                   threads: int = 0, tensorrt: TensorRTOptions | None = None) -> Backend:
    return backend_class(name)(card, card_path, device, precision, threads, tensorrt)


__all__ = ["BACKENDS", "DEVICES", "PRECISIONS", "Backend", "BackendError", "TensorRTOptions", "backend_class",
           "create_backend"]
