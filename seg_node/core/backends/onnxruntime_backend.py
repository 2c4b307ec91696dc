"""ONNX Runtime backend: CPU, CUDA or TensorRT execution providers, intra-op threads configurable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..model_files import model_file
from .base import Backend, BackendError

PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    file_key = "onnx"

    def load(self, card_path: Path, threads: int) -> None:
        available = ort.get_available_providers()
        device = self.device.split(":")[0]
        if device == "auto":
            device = "cuda" if "CUDAExecutionProvider" in available else "cpu"
        wanted = PROVIDERS[device]
        if wanted[0] not in available:
            raise BackendError(f"device {self.device!r} needs ONNX Runtime's {wanted[0]}, but this onnxruntime "
                               f"has only {available}; install onnxruntime-gpu or use device 'cpu'")
        providers = [p for p in wanted if p in available]
        if device != "cpu" and ":" in self.device:
            index = int(self.device.split(":")[1])
            providers = [(p, {"device_id": index}) if p != "CPUExecutionProvider" else p for p in providers]
        path = model_file(self.card, card_path, self.file_key)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise BackendError(f"ONNX Runtime cannot load {path}: {exc}") from exc
        self._check_io(path)
        self.device = self.session.get_providers()[0].replace("ExecutionProvider", "").lower()
        file_precision = self.card.compression.get("precision", "fp32")
        if self.precision not in ("auto", file_precision):
            raise BackendError(f"precision {self.precision!r} asked for, but {path.name} is a {file_precision} "
                               "model: with onnxruntime the file sets the precision; pick that model's file")
        self.precision = file_precision

    def _check_io(self, path: Path) -> None:
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or inputs[0].type != "tensor(float)" or len(inputs[0].shape) != 4:
            raise BackendError(f"{path}: expected one float32 N x 3 x H x W input, found "
                               f"{[(i.name, i.type, i.shape) for i in inputs]}")
        self.input_name = inputs[0].name
        self.output_name = outputs[0].name
        channels = outputs[0].shape[1] if len(outputs[0].shape) == 4 else None
        if isinstance(channels, int) and channels != self.card.num_classes:
            raise BackendError(f"{path}: the model outputs {channels} classes but its card lists "
                               f"{self.card.num_classes}; the card does not belong to this model")
        height, width = inputs[0].shape[2:]
        spec = self.card.input
        if isinstance(height, int) and isinstance(width, int) and (height, width) != (spec.height, spec.width):
            raise BackendError(f"{path}: the model's input is {height}x{width} but its card says "
                               f"{spec.height}x{spec.width}")

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: batch})[0]
