#!/usr/bin/env python3
"""Several cameras' frames in one inference on CPU: median latency per frame of `segment_batch` at batch 1, 4, 8.

Three ways to run the default model (camvid_mobile_unet_pruned_robust_int8), 2 threads each, on the shipped
CamVid clip (480x360):
- onnxruntime, the INT8 file as shipped: its batch axis is fixed at 1, so the backend runs the frames one by one;
- onnxruntime, the same network exported with a dynamic batch axis (seg-export --dynamic-batch) and quantized to
  INT8 the same way (U8S8, calibrated here on the clip's frames): one session run per batch;
- torch, its fp32 parent (camvid_mobile_unet_pruned_robust), one forward pass per batch.
Two tables: the time per frame of one segment_batch call at batch 1, 4, 8 (throughput), and, for the onnxruntime
models, the latency each frame sees when 1, 2 or 4 cameras' frames arrive together and are served as the node's
worker serves them (batch_cameras on: one call, then each frame rendered; off: each frame segmented and rendered
in turn).
Nothing is asserted; run it on a quiet machine:

    python scripts/measure_batching.py --rounds 10
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from seg_node.core.model_card import ModelCard
from seg_node.core.model_files import models_dir, package_path
from seg_node.core.pipeline import SegmentationPipeline
from seg_node.core.preprocess import normalize, resize_for_network
from seg_node.toolchain.compression.quantize import quantize_int8
from seg_node.toolchain.data.base import read_rgb
from seg_node.toolchain.export import export_onnx

DEFAULT = "camvid_mobile_unet_pruned_robust_int8"
FP32_PARENT = "camvid_mobile_unet_pruned_robust"
THREADS = 2


def clip_frames() -> list[np.ndarray]:
    return [read_rgb(path) for path in sorted(package_path("data", "camvid_clip", "test").glob("*.jpg"))]


def dynamic_batch_int8(folder: Path, frames: list[np.ndarray]) -> Path:
    """The default's network with a dynamic batch axis, INT8 like the default; returns its card."""
    parent = SegmentationPipeline.from_model(models_dir() / f"{FP32_PARENT}.json", backend="torch", device="cpu")
    spec = parent.card.input
    export_onnx(parent.backend.model, folder / "fp32.onnx", spec.height, spec.width, dynamic_batch=True)
    calibration = np.stack([normalize(resize_for_network(frame, spec), spec, "rgb") for frame in frames[:16]])
    quantize_int8(folder / "fp32.onnx", folder / "int8.onnx", calibration)
    card = json.loads((models_dir() / f"{DEFAULT}.json").read_text())
    card.update(files={"onnx": "int8.onnx"}, interface={"batch": "dynamic"})
    ModelCard.from_dict(card).save(folder / "int8.json")
    return folder / "int8.json"


def per_frame_ms(pipeline: SegmentationPipeline, frames: list[np.ndarray], batch: int, rounds: int) -> float:
    """Median over rounds of one segment_batch call's time divided by its frames (each round other frames)."""
    pipeline.segment_batch(frames[:batch])  # buffers and thread pools warm
    times = []
    for round_index in range(rounds):
        images = [frames[(round_index * batch + i) % len(frames)] for i in range(batch)]
        started = time.perf_counter()
        pipeline.segment_batch(images)
        times.append(1e3 * (time.perf_counter() - started) / batch)
    return float(np.median(times))


def serve_together(pipeline: SegmentationPipeline, images: list[np.ndarray], batched: bool) -> list[float]:
    """Each frame's ms from its arrival (all at once) to its rendered outputs, served as the node's worker does."""
    arrived = time.perf_counter()
    results = pipeline.segment_batch(images) if batched else None
    latencies = []
    for index, image in enumerate(images):
        result = results[index] if batched else pipeline.segment(image)
        pipeline.render(image, "rgb", result.mask)
        latencies.append(1e3 * (time.perf_counter() - arrived))
    return latencies


def latency_rows(label: str, pipeline: SegmentationPipeline, frames: list[np.ndarray], cameras: list[int],
                 rounds: int) -> list[str]:
    """Per camera count, the median / p95 latency per frame with batching off and on, the two taken in turns
    (alternating which goes first) so that a change in the machine's load falls on both."""
    rows = []
    for count in cameras:
        latencies = {False: [], True: []}
        for round_index in range(rounds + 1):  # the first round warms up
            images = [frames[(round_index * count + i) % len(frames)] for i in range(count)]
            for batched in (round_index % 2 == 0, round_index % 2 == 1):
                measured = serve_together(pipeline, images, batched)
                latencies[batched] += measured if round_index else []
        cells = [f"{np.median(latencies[b]):.1f} / {np.percentile(latencies[b], 95):.1f}" for b in (False, True)]
        rows.append(f"| {label} | {count} | " + " | ".join(cells) + " |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--cameras", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    frames = clip_frames()
    throughput, latency = [], []
    with tempfile.TemporaryDirectory() as scratch:
        variants = {
            "onnxruntime INT8, batch axis fixed at 1 (as shipped)": (models_dir() / f"{DEFAULT}.json", "onnxruntime"),
            "onnxruntime INT8, dynamic batch axis": (dynamic_batch_int8(Path(scratch), frames), "onnxruntime"),
            "torch fp32 (the default's fp32 parent)": (models_dir() / f"{FP32_PARENT}.json", "torch"),
        }
        for label, (card, backend) in variants.items():  # one at a time: idle thread pools would slow the next
            pipeline = SegmentationPipeline.from_model(card, backend=backend, device="cpu", threads=THREADS)
            figures = [per_frame_ms(pipeline, frames, batch, args.rounds) for batch in args.batches]
            throughput.append(f"| {label} | " + " | ".join(f"{ms:.1f}" for ms in figures) + " |")
            if backend == "onnxruntime":  # the node's backend on CPU (torch fp32 is several times slower there)
                latency += latency_rows(label, pipeline, frames, args.cameras, args.rounds)
            del pipeline
    print(f"median ms per frame of segment_batch, {len(frames)} CamVid clip frames of 480x360, {THREADS} threads, "
          f"{args.rounds} rounds\n")
    print("| model | " + " | ".join(f"batch {b}" for b in args.batches) + " |")
    print("|---|" + "---|" * len(args.batches))
    print("\n".join(throughput))
    print(f"\nms from arrival to rendered outputs per frame (median / p95), N cameras' frames arriving together, "
          f"{args.rounds} rounds\n")
    print("| model | cameras | batching off | batching on |\n|---|---|---|---|")
    print("\n".join(latency))

if __name__ == "__main__":
    main()
