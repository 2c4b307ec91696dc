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

import cv2
import numpy as np
from tqdm import tqdm

from ..core.command_line import reports_user_errors
from ..core.errors import UserError
from ..core.latency_stats import latency_summary
from ..core.model_card import command_line
from ..core.pipeline import SegmentationPipeline
from ..toolchain.data import open_dataset
from ..toolchain.evaluation.timing import benchmark_pipelines, load_frames



@dataclass
class Case:
    label: str
    model: str | None
    backend: str


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


HD_SIZES = ((480, 360), (640, 480), (1280, 720), (1920, 1080))
DELIVERY_SIZES = ((640, 480), (1280, 720), (1920, 1080))
NODE_STAGES = ("decode", "preprocess", "inference", "postprocess", "publish", "total")
OUTPUT_SETS = {"mask": ("mask",), "all": ("mask", "color_mask", "overlay")}


def parse_sizes(text: str) -> tuple[tuple[int, int], ...]:
    """'640x480,1920x1080' -> ((640, 480), (1920, 1080))."""
    try:
        return tuple(tuple(int(v) for v in size.lower().split("x")) for size in text.split(","))
    except ValueError as exc:
        raise UserError(f"sizes are WIDTHxHEIGHT separated by commas, got {text!r}") from exc


def benchmark_node_hd(model: str | None, backend: str, threads: int, frames, sizes, warmup: int,
                      upsampling: str) -> dict:
    """One node, frames upscaled to each size as bgr8, one at a time (reliable): each stage from ~/latency and
    publish-to-mask-received, first with only ~/mask subscribed, then with every output subscribed."""
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import Image

    from ..ros.image_messages import image_message
    from .node_process import SegNodeProcess, use_dds_profile
    from .ros_peer import RosPeer
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    use_dds_profile()
    name = f"seg_node_hd_{os.getpid()}"
    topic = f"/{name}_camera/image_raw"
    parameters = {"backend": backend, "device": "cpu", "threads": threads, "input_topics": [topic],
                  "qos_reliability": "reliable", "upsampling": upsampling, **({"model": model} if model else {})}
    node = SegNodeProcess(name, parameters)
    peer = RosPeer("seg_node_hd_benchmark")
    results = {}
    try:
        node.wait_until_ready()
        publisher = peer.publisher(Image, topic)
        latency = peer.subscribe(DiagnosticArray, node.topic("latency"))
        inboxes = {}
        peer.wait_for_subscribers(publisher)
        stamp = 0
        for outputs_label, outputs in OUTPUT_SETS.items():
            for output in outputs:
                if output not in inboxes:
                    inboxes[output] = peer.subscribe(Image, node.topic(output))
                    peer.wait_for_publishers(node.topic(output))
            for width, height in sizes:
                messages = [image_message(cv2.resize(frame, (width, height), interpolation=cv2.INTER_LINEAR)[..., ::-1],
                                          "bgr8") for frame in frames]
                stages = {stage: [] for stage in NODE_STAGES + ("mask_received",)}
                label = f"{width}x{height}, {outputs_label}"
                for index, msg in enumerate(tqdm(messages[:warmup] + messages, desc=label, leave=False)):
                    stamp += 1
                    msg.header.stamp.sec = stamp
                    mine = lambda m, s=stamp: m.header.stamp.sec == s  # noqa: E731
                    sent = time.perf_counter()
                    publisher.publish(msg)
                    for output in outputs:  # warm-up frames also wait until every subscription has matched
                        inboxes[output].wait_for(1, 60, mine)
                    report = latency.wait_for(1, 60, mine)[0]
                    if index < warmup:
                        continue
                    mask_index = next(i for i, m in enumerate(inboxes["mask"].messages) if mine(m))
                    stages["mask_received"].append(1e3 * (inboxes["mask"].arrivals[mask_index] - sent))
                    values = {kv.key: float(kv.value) for kv in report.status[0].values}
                    for stage in NODE_STAGES:
                        stages[stage].append(values[f"{stage}_ms"])
                results[label] = {stage: latency_summary(v) for stage, v in stages.items()}
                for inbox in (latency, *inboxes.values()):  # keep the inboxes small at HD
                    inbox.messages.clear()
                    inbox.arrivals.clear()
        return results
    finally:
        peer.close()
        node.stop()


def print_hd(results: dict, model_only: dict, frames: int, threads: int) -> None:
    print(f"\nnode latency in ms, median / p95, {frames} CamVid frames upscaled (bgr8, reliable, one at a time), "
          f"{threads} threads, CPU; model only (in-process, network input): "
          f"{model_only['median']:.1f} / {model_only['p95']:.1f}")
    columns = NODE_STAGES + ("mask_received",)
    print("| size, subscribed | " + " | ".join(f"{c:>15}" for c in columns) + " | e2e / inference p50 |")
    print("|" + "---|" * (len(columns) + 2))
    for label, stages in results.items():
        cells = [f"{stages[c]['median']:6.1f} / {stages[c]['p95']:6.1f}" for c in columns]
        ratio = stages["mask_received"]["median"] / stages["inference"]["median"]
        print(f"| {label:<16} | " + " | ".join(cells) + f" | {ratio:.2f}x |")


def benchmark_delivery(sizes, seconds: float, rate: float, model: str | None, backend: str, threads: int) -> list:
    """Best-effort frames at `rate` for `seconds` at each size, received by the node, with and without the
    shipped Fast DDS profile."""
    from .delivery import measure_delivery
    from .node_process import DDS_PROFILE
    parameters = {"backend": backend, "threads": threads, **({"model": model} if model else {})}
    rows = []
    for width, height in sizes:
        for profile in (DDS_PROFILE, None):
            rows.append(measure_delivery(width, height, rate, seconds, profile, parameters))
            print(f"  {rows[-1]['size']}, {rows[-1]['profile']}: {rows[-1]['received']}/{rows[-1]['sent']}",
                  flush=True)
    print(f"\nbest-effort delivery to the node (its default QoS), bgr8 at {rate:g} Hz for {seconds:g} s, "
          "frames_received in /diagnostics")
    print("| size | frame | with config/fastdds_large_images.xml | Fast DDS defaults |")
    print("|---|---|---|---|")
    for with_profile, without in zip(rows[::2], rows[1::2]):
        print(f"| {with_profile['size']} | {with_profile['frame_bytes'] / 1e6:.1f} MB | "
              + " | ".join(f"{r['received']}/{r['sent']} ({100 * r['received_share']:.1f}%)"
                           for r in (with_profile, without)) + " |")
    return rows


def upsampling_quality(model: str | None, backend: str, threads: int, data: str | None, split: str,
                       limit: int | None, scales=(2, 4)) -> dict:
    """mIoU of each upsampling mode on CamVid frames upscaled `scales`x (bilinear image, nearest labels; the
    network sees the frame resized back to its input), the share of pixels equal to full bilinear logits' mask,
    and postprocess time."""
    from ..core.postprocess import UPSAMPLING_MODES, logits_to_mask
    from ..toolchain.evaluation.metrics import ConfusionMatrix
    pipeline = SegmentationPipeline.from_model(model, backend, "cpu", threads=threads)
    dataset = open_dataset(data, split)
    samples = dataset.items()[:limit] if limit else dataset.items()
    classes = len(pipeline.card.classes)
    results = {}
    for scale in scales:
        matrices = {mode: ConfusionMatrix(classes) for mode in UPSAMPLING_MODES}
        agree = dict.fromkeys(UPSAMPLING_MODES, 0)
        times = {mode: [] for mode in UPSAMPLING_MODES}
        pixels = 0
        for sample in tqdm(samples, desc=f"upsampling at {scale}x", leave=False):
            image, label = dataset.load(sample)
            height, width = image.shape[0] * scale, image.shape[1] * scale
            big = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
            big_label = cv2.resize(label, (width, height), interpolation=cv2.INTER_NEAREST)
            logits = pipeline.logits(big)
            masks = {}
            for mode in UPSAMPLING_MODES:
                started = time.perf_counter()
                masks[mode] = logits_to_mask(logits, height, width, mode)
                times[mode].append(1e3 * (time.perf_counter() - started))
                matrices[mode].update(masks[mode], big_label)
            for mode in UPSAMPLING_MODES:
                agree[mode] += int(np.count_nonzero(masks[mode] == masks["logits"]))
            pixels += height * width
        results[f"{scale}x"] = {mode: {"miou": 100 * matrices[mode].mean_iou(), "equal_to_logits": agree[mode] / pixels,
                                       "postprocess_ms": latency_summary(times[mode])} for mode in UPSAMPLING_MODES}
    print(f"\nupsampling on {len(samples)} CamVid {split} frames upscaled, {pipeline.card.name}: mIoU, pixels equal to "
          "full bilinear logits' mask, postprocess ms median / p95 (2 threads)")
    print("| upscale | mode | mIoU | vs logits | equal pixels | postprocess ms |")
    print("|---|---|---|---|---|---|")
    for scale, modes in results.items():
        for mode, r in modes.items():
            print(f"| {scale} | {mode} | {r['miou']:.2f} | {r['miou'] - modes['logits']['miou']:+.2f} | "
                  f"{100 * r['equal_to_logits']:.3f}% | {r['postprocess_ms']['median']:.1f} / "
                  f"{r['postprocess_ms']['p95']:.1f} |")
    return results


CONFIDENCE_SIZES = ((480, 360), (1920, 1080))


def confidence_cost(model: str | None, backend: str, threads: int, frames, sizes, warmup: int) -> dict:
    """What confidence adds to the pipeline, per image size: the frame score (every frame; it reads the
    network-resolution logits, so its cost does not depend on the size) and the ~/confidence map (only while
    subscribed: softmax at network resolution, resized to the image), beside the mask's postprocess."""
    from ..core.confidence import confidence_image, frame_score
    from ..core.postprocess import logits_to_mask
    pipeline = SegmentationPipeline.from_model(model, backend, "cpu", threads=threads)
    temperature = pipeline.card.confidence.temperature
    results = {}
    for width, height in sizes:
        times = {"score": [], "confidence_map": [], "mask": []}
        for index, frame in enumerate(tqdm(frames[:warmup] + frames, desc=f"confidence {width}x{height}",
                                           leave=False)):
            logits = pipeline.logits(cv2.resize(frame, (width, height), interpolation=cv2.INTER_LINEAR))
            steps = {"score": lambda: frame_score(logits, temperature),
                     "confidence_map": lambda: confidence_image(logits, height, width, temperature),
                     "mask": lambda: logits_to_mask(logits, height, width, pipeline.upsampling)}
            for step, run in steps.items():
                started = time.perf_counter()
                run()
                if index >= warmup:
                    times[step].append(1e3 * (time.perf_counter() - started))
        results[f"{width}x{height}"] = {step: latency_summary(values) for step, values in times.items()}
    print(f"\nconfidence cost in ms, median / p95, {len(frames)} frames, {pipeline.card.name}, network input "
          f"{pipeline.card.input.width}x{pipeline.card.input.height}: the score runs on every frame, the map only "
          "while ~/confidence is subscribed")
    print("| image size | frame score | confidence map (~/confidence) | mask (postprocess, for scale) |")
    print("|---|---|---|---|")
    for size, steps in results.items():
        print(f"| {size} | " + " | ".join(f"{steps[k]['median']:.2f} / {steps[k]['p95']:.2f}"
                                           for k in ("score", "confidence_map", "mask")) + " |")
    return results


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
    hd = parser.add_argument_group("HD cameras (instead of the table above)")
    hd.add_argument("--hd", action="store_true", help="the node per stage and publish-to-mask at --hd-sizes (bgr8), "
                    "only ~/mask subscribed and all outputs, beside model-only inference")
    hd.add_argument("--hd-sizes", type=parse_sizes, default=HD_SIZES, help="WxH,... (default: %(default)s)")
    hd.add_argument("--upsampling", default="boundaries", help="the node's upsampling for --hd")
    hd.add_argument("--delivery", action="store_true",
                    help="best-effort frames received by the node, with and without the shipped Fast DDS profile")
    hd.add_argument("--delivery-sizes", type=parse_sizes, default=DELIVERY_SIZES)
    hd.add_argument("--delivery-seconds", type=float, default=10.0)
    hd.add_argument("--rate", type=float, default=30.0, help="camera rate for --delivery (Hz)")
    hd.add_argument("--upsampling-quality", action="store_true",
                    help="mIoU of each upsampling mode on CamVid frames upscaled 2x and 4x (needs CamVid)")
    hd.add_argument("--limit", type=int, help="--upsampling-quality: only the first N frames")
    hd.add_argument("--confidence", action="store_true",
                    help="cost of the frame confidence score and the ~/confidence map at --confidence-sizes")
    hd.add_argument("--confidence-sizes", type=parse_sizes, default=CONFIDENCE_SIZES,
                    help="WxH,... (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.hd or args.delivery or args.upsampling_quality or args.confidence:
        return run_hd_benchmark(args, argv)

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


def run_hd_benchmark(args, argv: list[str] | None) -> dict:
    """--confidence, --upsampling-quality, --hd and --delivery, in that order, in one run."""
    results = {"command": command_line("seg-benchmark", argv)}
    if args.confidence:
        results["confidence"] = confidence_cost(args.model, args.backend, args.threads,
                                                load_frames(args.data, args.split, args.frames),
                                                args.confidence_sizes, args.warmup)
    if args.upsampling_quality:
        results["upsampling_quality"] = upsampling_quality(args.model, args.backend, args.threads, args.data,
                                                           args.split, args.limit)
    if args.hd:
        frames = load_frames(args.data, args.split, args.frames)
        pipeline = SegmentationPipeline.from_model(args.model, args.backend, "cpu", threads=args.threads)
        model_only = benchmark_pipelines({"model": pipeline}, frames, args.warmup)["model"]["model_only"]
        del pipeline
        node = benchmark_node_hd(args.model, args.backend, args.threads, frames, args.hd_sizes, args.warmup,
                                 args.upsampling)
        print_hd(node, model_only, len(frames), args.threads)
        results["hd"] = {"model_only": model_only, "node": node}
    if args.delivery:
        results["delivery"] = benchmark_delivery(args.delivery_sizes, args.delivery_seconds, args.rate, args.model,
                                                 args.backend, args.threads)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return results


@reports_user_errors
def main(argv: list[str] | None = None) -> None:
    run_benchmark(argv)


if __name__ == "__main__":
    main()
