"""ONNX Runtime backend: CPU, CUDA or TensorRT execution providers, intra-op threads configurable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..model_card import ModelCard
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
        raise BackendError(f"ONNX Runtime cannot load {path} (not an ONNX model, or one it cannot run): "
                           f"{exc}") from exc
    problem = provider_fallback(providers, session.get_providers())
    if problem:
        raise BackendError(problem)
    return session


#: ONNX Runtime's element types a card's output kind accepts
SCORE_TYPES = ("tensor(float)", "tensor(float16)")
LABEL_TYPES = ("tensor(int64)", "tensor(int32)", "tensor(uint8)")
INPUT_TYPES = {"float32": "tensor(float)", "uint8": "tensor(uint8)"}


def check_graph_input(element_type: str, shape: list, card: ModelCard) -> None:
    """Raise a BackendError when the graph's image input does not match the card's interface and input size;
    dimensions the graph leaves symbolic (strings or None) match anything."""
    interface, spec = card.interface, card.input
    where = f"model {card.name}: input {shape} ({element_type})"
    if element_type != INPUT_TYPES[interface.input_dtype]:
        raise BackendError(f"{where}: the card's interface.input_dtype is {interface.input_dtype}")
    if len(shape) != 4:
        raise BackendError(f"{where}: seg_node feeds a 4-axis N x 3 x H x W or N x H x W x 3 image")
    channels, (height, width) = ((shape[1], shape[2:]) if interface.input_layout == "NCHW"
                                 else (shape[3], shape[1:3]))
    if isinstance(channels, int) and channels != 3:
        raise BackendError(f"{where}: the card's interface.input_layout {interface.input_layout} puts the colour "
                           f"axis where the graph has {channels}: set interface.input_layout")
    fixed = isinstance(height, int) and isinstance(width, int)
    if interface.input_size == "dynamic" and fixed:
        raise BackendError(f"{where}: the graph fixes its input at {height}x{width}, but the card's "
                           "interface.input_size is 'dynamic'")
    if fixed and (height, width) != (spec.height, spec.width):
        raise BackendError(f"{where}: the model's input is {height}x{width} but its card says "
                           f"{spec.height}x{spec.width}")
    if isinstance(shape[0], int) and (shape[0] != 1 or interface.batch == "dynamic"):
        raise BackendError(f"{where}: the graph fixes its batch at {shape[0]}; seg_node needs 1 (interface.batch "
                           "'fixed') or a dynamic batch axis ('dynamic')")


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
        """The graph against the card's interface: one image input of the card's layout, dtype and size, an
        output of the card's kind whose class axis (where the graph fixes it) holds the card's classes."""
        interface, inputs = self.card.interface, self.session.get_inputs()
        if len(inputs) != 1:
            raise BackendError(f"{path}: the graph has {len(inputs)} inputs {[(i.name, i.shape) for i in inputs]}; "
                               "seg_node feeds one image: export the model with a single image input")
        image = inputs[0]
        if interface.input_name not in (None, image.name):
            raise BackendError(f"{path}: the card's interface.input_name is {interface.input_name!r}, the graph's "
                               f"input is {image.name!r}")
        check_graph_input(image.type, image.shape, self.card)
        self.input_name, self.output_name = image.name, self._output(path).name
        self.batches = interface.batch == "dynamic"

    def _output(self, path: Path):
        interface, outputs = self.card.interface, self.session.get_outputs()
        chosen = [o for o in outputs if interface.output_name in (None, o.name)][:1]
        if not chosen:
            raise BackendError(f"{path}: the card's interface.output_name {interface.output_name!r} is not among "
                               f"the graph's outputs {[o.name for o in outputs]}")
        output = chosen[0]
        wanted = LABEL_TYPES if interface.output_kind == "labels" else SCORE_TYPES
        if output.type not in wanted:
            raise BackendError(f"{path}: output {output.name!r} is {output.type}, but the card's interface says "
                               f"{interface.output_kind} ({' or '.join(wanted)}): set interface.output_kind")
        problem = interface.output_problem(output.shape, self.card.num_classes)
        if problem:
            raise BackendError(f"{path}: {problem}")
        return output

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """One session run for the batch; one per image for a graph with a fixed batch of one."""
        if not self.batches and len(batch) > 1:
            return np.concatenate([self._run(batch[i:i + 1]) for i in range(len(batch))])
        return self._run(batch)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        try:
            return self.session.run([self.output_name], {self.input_name: batch}, self.run_options)[0]
        except Exception as exc:  # onnxruntime raises its own exception types (Fail, InvalidArgument, ...)
            if self.run_options.terminate:
                raise  # cancelled at shutdown
            raise BackendError(f"model {self.card.name} rejected a {' x '.join(map(str, batch.shape))} {batch.dtype} "
                               f"input: {exc}") from exc

    def cancel(self) -> None:
        """ONNX Runtime stops a run that uses these run options between two operators (run() then raises);
        the run's own error log about it is silenced: stopping at shutdown is not an error."""
        self.run_options.log_severity_level = 4  # fatal only
        self.run_options.terminate = True
