"""The deployed runtime: no torch or ROS behind an ONNX pipeline, the provider ONNX Runtime really uses, the
warm-up inference, and the TensorRT settings handed to ONNX Runtime."""

from __future__ import annotations

import subprocess
import sys

import onnxruntime as ort
import pytest

from seg_node.core.backends import BACKENDS, BackendError, TensorRTOptions, backend_class
from seg_node.core.backends.onnxruntime_backend import PROVIDERS, OnnxRuntimeBackend, open_session, provider_fallback
from seg_node.core.model_files import resolve_model


def test_the_onnx_pipeline_imports_neither_torch_nor_rclpy():
    """In a fresh interpreter, as a node starts: up to 0.1.5 backends/__init__ imported torch_backend."""
    code = ("import sys\n"
            "import seg_node.core, seg_node.core.pipeline\n"
            "from seg_node.core.pipeline import SegmentationPipeline\n"
            "pipeline = SegmentationPipeline.from_model(None, backend='onnxruntime', device='cpu')\n"
            "pipeline.backend.warm_up()\n"
            "print(sorted(m for m in ('torch', 'rclpy', 'onnx') if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[-2] == "[]", result.stdout


def test_backends_are_registered_by_name_and_imported_when_chosen():
    assert sorted(BACKENDS) == ["onnxruntime", "torch"]
    assert backend_class("onnxruntime") is OnnxRuntimeBackend
    assert backend_class("torch").name == "torch"
    with pytest.raises(BackendError, match="unknown backend 'tflite'"):
        backend_class("tflite")


@pytest.mark.parametrize("asked, used, fell_back", [
    (PROVIDERS["cpu"], ["CPUExecutionProvider"], False),
    (PROVIDERS["cuda"], ["CUDAExecutionProvider", "CPUExecutionProvider"], False),
    (PROVIDERS["cuda"], ["CPUExecutionProvider"], True),  # CUDA EP installed, failed to start (no cuDNN)
    (PROVIDERS["tensorrt"], ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"], False),
    (PROVIDERS["tensorrt"], ["CUDAExecutionProvider", "CPUExecutionProvider"], True),  # no libnvinfer
    (PROVIDERS["tensorrt"], ["CPUExecutionProvider"], True),
])
def test_provider_fallback_compares_what_was_asked_with_what_the_session_uses(asked, used, fell_back):
    problem = provider_fallback(asked, used)
    assert (problem is not None) == fell_back
    if fell_back:
        assert f"asked for {asked[0]} but runs on {used[0]}" in problem and "device 'cpu'" in problem


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="this machine has CUDA")
@pytest.mark.parametrize("device", ["cuda", "tensorrt"])
def test_a_real_session_that_falls_back_to_cpu_is_refused(device):
    """ONNX Runtime itself falls back silently (a warning, then CPU) when a listed provider cannot be used:
    here the GPU providers are absent, which takes the same path as one that fails to initialise."""
    card, card_path = resolve_model(None)
    model = card_path.parent / card.files["onnx"]
    with (pytest.warns(UserWarning, match="not in available provider names"),
          pytest.raises(BackendError, match=f"asked for {PROVIDERS[device][0]} but runs on CPUExecutionProvider")):
        open_session(model, ort.SessionOptions(), PROVIDERS[device])
    assert open_session(model, ort.SessionOptions(), PROVIDERS["cpu"]).get_providers() == ["CPUExecutionProvider"]


def test_tensorrt_settings_become_provider_options(random_model):
    card, card_path = resolve_model(random_model)
    backend = OnnxRuntimeBackend(card, card_path, "cpu", "auto", 1,
                                 TensorRTOptions(fp16=True, engine_cache_dir="/var/cache/seg_node"))
    backend.device = "tensorrt:1"  # as the node asks for it; the options do not depend on the machine
    assert backend.provider_options(PROVIDERS["tensorrt"]) == [
        {"device_id": "1", "trt_fp16_enable": True, "trt_engine_cache_enable": True,
         "trt_engine_cache_path": "/var/cache/seg_node"},
        {"device_id": "1"}, {}]
    backend.tensorrt, backend.device = TensorRTOptions(), "tensorrt"
    assert backend.provider_options(PROVIDERS["tensorrt"]) == [{"trt_fp16_enable": False}, {}, {}]


def test_the_node_logs_its_warm_up_inference_before_it_is_ready(seg_node):
    node = seg_node(input_topics=["/warmup_cam/image_raw"])
    lines = node.output().splitlines()
    warm = [index for index, line in enumerate(lines)
            if "warm-up inference (onnxruntime on cpu (fp32), batch 1):" in line]
    ready = [index for index, line in enumerate(lines) if "segmenting" in line]
    assert warm and ready and warm[0] < ready[0], node.output()
    assert float(lines[warm[0]].rsplit(":", 1)[1].split()[0]) > 0.0
