"""CUDA and TensorRT: run (not skipped) wherever the provider or a CUDA torch is present, skipped elsewhere.
scripts/gpu_check runs this file and the HD benchmark. Each GPU result is compared with the CPU's masks."""

from __future__ import annotations

import cv2
import numpy as np
import onnxruntime as ort
import pytest
from ros_harness import REPO

from seg_node.core.backends import TensorRTOptions
from seg_node.core.model_files import DEFAULT_MODEL_CARD
from seg_node.core.pipeline import SegmentationPipeline

PROVIDERS = ort.get_available_providers()
needs_cuda_ort = pytest.mark.skipif("CUDAExecutionProvider" not in PROVIDERS, reason="no CUDA onnxruntime")
needs_tensorrt = pytest.mark.skipif("TensorrtExecutionProvider" not in PROVIDERS, reason="no TensorRT provider")
FP32_CARD = REPO / "models" / "camvid_mobile_unet.json"


def torch_has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def clip(count: int = 4) -> list[np.ndarray]:
    paths = sorted((REPO / "data" / "camvid_clip" / "test").iterdir())[:count]
    return [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in paths]


def agreement(gpu: SegmentationPipeline, cpu: SegmentationPipeline) -> float:
    """Fraction of pixels with the same class over the clip frames."""
    same = [np.mean(gpu.segment(f, "bgr").mask == cpu.segment(f, "bgr").mask) for f in clip()]
    return float(np.mean(same))


@needs_cuda_ort
@pytest.mark.parametrize("model", [None, FP32_CARD], ids=["default_int8", "fp32"])
def test_onnxruntime_on_cuda_runs_on_cuda_and_matches_the_cpu(model):
    gpu = SegmentationPipeline.from_model(model, backend="onnxruntime", device="cuda")
    assert gpu.backend.device == "cuda" and gpu.backend.session.get_providers()[0] == "CUDAExecutionProvider"
    assert gpu.backend.warm_up() > 0.0
    assert agreement(gpu, SegmentationPipeline.from_model(model, backend="onnxruntime", device="cpu")) > 0.99


@needs_tensorrt
@pytest.mark.parametrize("fp16", [False, True])
def test_tensorrt_builds_a_cached_engine_and_matches_the_cpu(tmp_path, fp16):
    options = TensorRTOptions(fp16=fp16, engine_cache_dir=str(tmp_path / "engines"))
    gpu = SegmentationPipeline.from_model(FP32_CARD, backend="onnxruntime", device="tensorrt", tensorrt=options)
    assert gpu.backend.device == "tensorrt"
    gpu.backend.warm_up()
    assert any((tmp_path / "engines").iterdir()), "TensorRT wrote no engine to the cache directory"
    cpu = SegmentationPipeline.from_model(FP32_CARD, backend="onnxruntime", device="cpu")
    assert agreement(gpu, cpu) > (0.98 if fp16 else 0.99)


@pytest.mark.skipif(not torch_has_cuda(), reason="no CUDA build of torch with a GPU")
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_torch_on_cuda_matches_the_cpu(precision):
    gpu = SegmentationPipeline.from_model(FP32_CARD, backend="torch", device="cuda", precision=precision)
    assert gpu.backend.device.startswith("cuda") and gpu.backend.precision == precision
    cpu = SegmentationPipeline.from_model(FP32_CARD, backend="torch", device="cpu")
    assert agreement(gpu, cpu) > (0.98 if precision == "fp16" else 0.995)


@needs_cuda_ort
def test_the_node_on_cuda_says_so_at_start_up(seg_node):
    default_card = REPO / "models" / DEFAULT_MODEL_CARD
    node = seg_node(model=str(default_card), input_topics=["/gpu_cam/image_raw"], device="cuda")
    started = next(line for line in node.output().splitlines() if "segmenting" in line)
    assert "onnxruntime on cuda" in started, started
