"""CUDA and TensorRT: run (not skipped) wherever the provider or a CUDA torch is present, skipped elsewhere.
scripts/gpu_check runs this file on the GPU machine (docs/gpu.md). Each GPU result is compared with the CPU's
masks. The ONNX Runtime CUDA and TensorRT tests are unverified: that machine has no onnxruntime-gpu (see
requirements-gpu.txt)."""

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
#: pixels of the torch backend's CUDA masks equal to its CPU masks, per precision
TORCH_AGREEMENT = {"fp32": 0.999, "fp16": 0.98}


def torch_has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


needs_torch_cuda = pytest.mark.skipif(not torch_has_cuda(), reason="no CUDA build of torch with a GPU")


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


@needs_torch_cuda
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_torch_on_cuda_matches_the_cpu(precision):
    gpu = SegmentationPipeline.from_model(FP32_CARD, backend="torch", device="cuda", precision=precision)
    assert gpu.backend.device.startswith("cuda") and gpu.backend.precision == precision
    cpu = SegmentationPipeline.from_model(FP32_CARD, backend="torch", device="cpu")
    assert agreement(gpu, cpu) >= TORCH_AGREEMENT[precision]


@needs_torch_cuda
def test_torch_on_cuda_segments_several_cameras_in_one_batch_as_one_by_one():
    gpu = SegmentationPipeline.from_model(FP32_CARD, backend="torch", device="cuda", precision="fp32")
    frames = clip(4)
    batched = gpu.segment_batch(frames, "bgr")
    assert len(batched) == len(frames)
    for frame, result in zip(frames, batched):
        assert result.mask.shape == frame.shape[:2]
        # cuDNN may choose other kernels for a batch of 4 than for 1: equal up to rounding at class boundaries
        assert np.mean(result.mask == gpu.segment(frame, "bgr").mask) >= TORCH_AGREEMENT["fp32"]


@needs_cuda_ort
def test_the_node_on_cuda_says_so_at_start_up(seg_node):
    default_card = REPO / "models" / DEFAULT_MODEL_CARD
    node = seg_node(model=str(default_card), input_topics=["/gpu_cam/image_raw"], device="cuda")
    started = next(line for line in node.output().splitlines() if "segmenting" in line)
    assert "onnxruntime on cuda" in started, started


@needs_torch_cuda
def test_the_node_with_the_torch_backend_on_cuda_says_so_at_start_up(seg_node):
    node = seg_node(model=str(FP32_CARD), backend="torch", input_topics=["/gpu_torch_cam/image_raw"], device="cuda")
    started = next(line for line in node.output().splitlines() if "segmenting" in line)
    assert "torch on cuda" in started, started
