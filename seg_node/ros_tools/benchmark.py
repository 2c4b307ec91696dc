"""Latency benchmark: the pipeline per stage, the model alone, and the node end to end, in one run.

    seg-benchmark --model models/camvid_mobile_unet.onnx --backend onnxruntime \\
                  --baseline-model models/camvid_mobile_unet.onnx --baseline-backend torch --node

Frames come from a CamVid split (--data) or the clip committed in data/camvid_clip. Figures are medians and
95th percentiles in milliseconds on this machine; nothing here is asserted, it is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..core.command_line import reports_user_errors
from ..core.latency_stats import latency_summary
from ..core.model_files import package_path
from ..core.pipeline import SegmentationPipeline
from ..toolchain.data import CamVidLayoutError, open_dataset

CLIP = package_path("data", "camvid_clip")
STAGES = ("preprocess", "inference", "postprocess", "total")
TURN_FRAMES = 10


@dataclass
class Case:
    label: str
    model: str | None
    backend: str


def load_frames(data: str | None, split: str, count: int) -> list[np.ndarray]:
    """RGB frames: a CamVid split when given (or $CAMVID_ROOT), else the committed clip."""
    try:
        dataset = open_dataset(data, split)
    except CamVidLayoutError:
        if data:
            raise
        dataset = open_dataset(CLIP, "test")
    samples = dataset.items()
    return [dataset.load(samples[i % len(samples)])[0] for i in range(count)]


def benchmark_pipelines(pipelines: dict[str, SegmentationPipeline], frames, warmup: int,
                        desc: str = "") -> dict[str, dict]:
    """Per-stage timings of each pipeline's segment, and of its network alone (run_network) on the same prepared
    input. The pipelines take turns in blocks of frames, so a change in the machine's load during the run falls
    on all of them alike and their ratio holds (run one after the other, the same pair's ratio moved by half).
    Each turn starts with one untimed frame: the previous pipeline's thread pool still spins for a while after
    its last frame (alternating every frame, inference timed 40 ms slower than the same network alone)."""
    for frame in frames[:warmup]:
        for pipeline in pipelines.values():
            pipeline.segment(frame)
    timings = {label: {stage: [] for stage in STAGES + ("model_only",)} for label in pipelines}
    progress = tqdm(total=len(frames) * len(pipelines), desc=desc or ", ".join(pipelines), leave=False)
    for start in range(0, len(frames), TURN_FRAMES):
        block = frames[start:start + TURN_FRAMES]
        for label, pipeline in pipelines.items():
            pipeline.segment(block[0])
            for frame in block:
                result = pipeline.segment(frame)
                for stage in STAGES:
                    timings[label][stage].append(result.timings_ms[stage])
                started = time.perf_counter()
                pipeline.run_network(pipeline.network_input)
                timings[label]["model_only"].append(1e3 * (time.perf_counter() - started))
            progress.update(len(block))
    progress.close()
    return {label: {stage: latency_summary(values) for stage, values in stages.items()}
            for label, stages in timings.items()}


def benchmark_node(case: Case, frames, threads: int, warmup: int) -> dict:
    """Publish one frame, wait for its mask, repeat: publish-to-mask latency of the running node."""
    from sensor_msgs.msg import Image

    from ..ros.image_messages import image_message
    from .node_process import SegNodeProcess
    from .ros_peer import RosPeer
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    name = f"seg_node_bench_{os.getpid()}"
    topic = f"/{name}_camera/image_raw"
    parameters = {"backend": case.backend, "device": "cpu", "threads": threads, "input_topics": [topic],
                  "qos_reliability": "reliable", "publish_color_mask": False, "publish_overlay": False}
    if case.model:
        parameters["model"] = case.model
    node = SegNodeProcess(name, parameters)
    peer = RosPeer("seg_node_benchmark")
    try:
        node.wait_until_ready()
        masks = peer.subscribe(Image, f"/{name}/mask")
        publisher = peer.publisher(Image, topic)
        peer.wait_for_subscribers(publisher)
        peer.wait_for_publishers(f"/{name}/mask")
        latencies = []
        for index, frame in enumerate(tqdm(frames[:warmup] + frames, desc=f"{case.label}: node", leave=False)):
            msg = image_message(frame, "rgb8")
            msg.header.stamp.sec = index + 1
            sent = time.perf_counter()
            publisher.publish(msg)
            masks.wait_for(index + 1, timeout=60)
            if index >= warmup:
                latencies.append(1e3 * (masks.arrivals[index] - sent))
        return latency_summary(latencies)
    finally:
        peer.close()
        node.stop()


def format_row(label: str, result: dict) -> str:
    cells = [f"{result[k]['median']:7.1f} / {result[k]['p95']:6.1f}" if k in result else f"{'-':>16}"
             for k in ("preprocess", "inference", "postprocess", "total", "model_only", "node")]
    return f"| {label:<34} | " + " | ".join(cells) + " |"


def run_benchmark(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model under test (default: the packaged model)")
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--baseline-model", help="a second model to compare against, in the same run")
    parser.add_argument("--baseline-backend", default="torch")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--data", help="CamVid folder for the frames (default: $CAMVID_ROOT, else the clip)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--node", action="store_true", help="also measure the running node end to end")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args(argv)

    frames = load_frames(args.data, args.split, args.frames)
    cases = [Case("model", args.model, args.backend)]
    if args.baseline_model:
        cases.append(Case("baseline", args.baseline_model, args.baseline_backend))
    pipelines = {}
    for case in cases:
        pipeline = SegmentationPipeline.from_model(case.model, case.backend, "cpu", threads=args.threads)
        case.label = f"{pipeline.card.name} ({case.backend})"
        pipelines[case.label] = pipeline
    results = benchmark_pipelines(pipelines, frames, args.warmup)
    del pipelines, pipeline
    if args.node:
        for case in cases:
            results[case.label]["node"] = benchmark_node(case, frames, args.threads, args.warmup)

    height, width = frames[0].shape[:2]
    print(f"\nlatency in ms, median / p95, {len(frames)} frames of {width}x{height}, {args.threads} threads, CPU")
    print(f"| {'model (backend)':<34} | " + " | ".join(f"{h:>16}" for h in (
        "preprocess", "inference", "postprocess", "pipeline total", "model only", "node end-to-end")) + " |")
    print("|" + "---|" * 7)
    for label, result in results.items():
        print(format_row(label, result))
    if len(cases) == 2:
        model, baseline = (results[c.label]["total"]["median"] for c in cases)
        comparison = f"{baseline / model:.2f}x faster" if model <= baseline else f"{model / baseline:.2f}x slower"
        print(f"\n{cases[0].label} pipeline is {comparison} than {cases[1].label} "
              f"(median total {model:.1f} ms vs {baseline:.1f} ms)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return results


@reports_user_errors
def main(argv: list[str] | None = None) -> None:
    run_benchmark(argv)


if __name__ == "__main__":
    main()
