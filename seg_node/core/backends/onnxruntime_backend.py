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


def provider_fallback(asked: list[str], used: list[str]) -> str | None:
    """Why the session does not run on the provider asked for, or None.

    ONNX Runtime does not fail when a GPU provider cannot start (no libcudnn, a driver too old, an unknown
    provider): it logs and runs on the next one in the list, usually the CPU. `used` is what
    session.get_providers() reports, in priority order."""
    if used and used[0] == asked[0]:
        return None
    return (f"ONNX Runtime was asked for {asked[0]} but runs on {used[0] if used else 'nothing'} (providers in use: "
            f"{used}): the provider failed to start; its error is in ONNX Runtime's log above (CUDA, cuDNN or "
            f"TensorRT libraries missing or not matching onnxruntime-gpu {ort.__version__}); fix that or use "
            f"device 'cpu'")


def open_session(path: Path, options: ort.SessionOptions, providers: list[str],
                 provider_options: list[dict] | None = None) -> ort.InferenceSession:
    """An InferenceSession that runs on providers[0], or a BackendError that says why not."""
    try:
        session = ort.InferenceSession(str(path), options, providers=providers, provider_options=provider_options)
    except Exception as exc:  # onnxruntime raises its own exception types for bad files
        raise BackendError(f"ONNX Runtime cannot load {path}: {exc}") from exc
    problem = provider_fallback(providers, session.get_providers())
    if problem:
        raise BackendError(problem)
    return session


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
        path = model_file(self.card, card_path, self.file_key)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = open_session(path, options, providers, self.provider_options(providers))
        self._check_io(path)
        self.run_options = ort.RunOptions()
        self.device = self.session.get_providers()[0].replace("ExecutionProvider", "").lower()
        file_precision = self.card.compression.get("precision", "fp32")
        if self.precision not in ("auto", file_precision):
            raise BackendError(f"precision {self.precision!r} asked for, but {path.name} is a {file_precision} "
                               "model: with onnxruntime the file sets the precision; pick that model's file")
        self.precision = file_precision

    def provider_options(self, providers: list[str]) -> list[dict]:
        """Per provider: the GPU index of cuda:N, and the TensorRT settings (FP16, engine cache)."""
        index = self.device.partition(":")[2]
        options = []
        for provider in providers:
            option = {"device_id": index} if index and provider != "CPUExecutionProvider" else {}
            if provider == "TensorrtExecutionProvider":
                option["trt_fp16_enable"] = self.tensorrt.fp16
                if self.tensorrt.engine_cache_dir:
                    option["trt_engine_cache_enable"] = True
                    option["trt_engine_cache_path"] = self.tensorrt.engine_cache_dir
            options.append(option)
        return options

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
        return self.session.run([self.output_name], {self.input_name: batch}, self.run_options)[0]

    def cancel(self) -> None:
        """ONNX Runtime stops a run that uses these run options between two operators (run() then raises);
        the run's own error log about it is silenced: stopping at shutdown is not an error."""
        self.run_options.log_severity_level = 4  # fatal only
        self.run_options.terminate = True
