"""seg-benchmark: what the pipeline, the model and the running node cost, one subcommand per question.

    seg-benchmark latency --model A.onnx --baseline-model B.onnx --baseline-backend torch --node
    seg-benchmark hd --frames 50 --warmup 5
    seg-benchmark delivery --seconds 10
    seg-benchmark upsampling --data $CAMVID_ROOT
    seg-benchmark confidence --frames 50

Frames come from a data set's split (--data) or the CamVid clip committed in data/camvid_clip. Figures are
medians and 95th percentiles in milliseconds on this machine; nothing here is asserted: they are printed, and
written with the command line to --json.
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
import onnx
from diagnostic_msgs.msg import DiagnosticArray
from sensor_msgs.msg import Image
from tqdm import tqdm

from ..core.command_line import reports_user_errors
from ..core.errors import UserError
from ..core.latency_stats import latency_summary
from ..core.model_card import command_line
from ..core.model_files import model_file, resolve_model
from ..core.pipeline import SegmentationPipeline
from ..ros.image_messages import image_message
from ..toolchain.data.arguments import add_dataset_arguments, dataset_from_args
from ..toolchain.evaluation.timing import benchmark_pipelines, load_frames
from ..toolchain.model_cost import network_cost
from .delivery import measure_delivery
from .node_process import DDS_PROFILE, camera_topic_for, running_seg_node, use_ros_environment

HD_SIZES = ((480, 360), (640, 480), (1280, 720), (1920, 1080))
DELIVERY_SIZES = ((640, 480), (1280, 720), (1920, 1080))
CONFIDENCE_SIZES = ((480, 360), (1920, 1080))
#: the node's ~/latency stages (ms) that the hd subcommand reports
NODE_STAGES = ("decode", "preprocess", "inference", "postprocess", "render", "publish", "total")
OUTPUT_SETS = {"mask": ("mask",), "all": ("mask", "color_mask", "overlay")}


@dataclass
class Case:
    label: str
    model: str | None
    backend: str


def sizes_text(sizes) -> str:
    """((640, 480), (1920, 1080)) -> '640x480,1920x1080', as --sizes takes them."""
    return ",".join(f"{width}x{height}" for width, height in sizes)


def parse_sizes(text: str) -> tuple[tuple[int, int], ...]:
    """'640x480,1920x1080' -> ((640, 480), (1920, 1080))."""
    try:
        return tuple(tuple(int(v) for v in size.lower().split("x")) for size in text.split(","))
    except ValueError as exc:
        raise UserError(f"sizes are WIDTHxHEIGHT separated by commas, got {text!r}") from exc


def node_parameters(model: str | None, backend: str, threads: int, topic: str, **outputs) -> dict:
    """The node for a timing run: on the CPU, one reliable camera, `outputs` (publish_*, upsampling) as given."""
    return {"backend": backend, "device": "cpu", "threads": threads, "input_topics": [topic],
            "qos_reliability": "reliable", **outputs, **({"model": model} if model else {})}


# --- latency ---------------------------------------------------------------------------------------------------
def benchmark_node(case: Case, frames, threads: int, warmup: int) -> dict:
    """Publish one frame, wait for its mask, repeat: publish-to-mask latency of the running node."""
    name = f"seg_node_bench_{os.getpid()}"
    topic = camera_topic_for(name)
    parameters = node_parameters(case.model, case.backend, threads, topic, publish_color_mask=False,
                                 publish_overlay=False)
    with running_seg_node(parameters, name=name) as node:
        masks = node.peer.subscribe(Image, node.topic("mask"))
        publisher = node.peer.publisher(Image, topic)
        node.peer.wait_until_matched([node.topic("mask")], [publisher])
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


def format_row(label: str, result: dict) -> str:
    cells = [f"{result[k]['median']:7.1f} / {result[k]['p95']:6.1f}" if k in result else f"{'-':>16}"
             for k in ("preprocess", "inference", "postprocess", "total", "model_only", "node")]
    return f"| {label:<34} | " + " | ".join(cells) + " |"


def print_latency(results: dict, cases: list[Case], frames, threads: int) -> None:
    height, width = frames[0].shape[:2]
    print(f"\nlatency in ms, median / p95, {len(frames)} frames of {width}x{height}, {threads} threads, CPU")
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


def update_cards(cases: list[Case], pipelines: dict, results: dict, threads: int, command: str) -> None:
    """--update-card: each model's cost into its card (metrics.cost): GMACs and parameters counted from its ONNX
    graph, and the model-only latency of this run."""
    for case in cases:
        card, card_path = resolve_model(case.model)
        graph = onnx.load(model_file(card, card_path, "onnx"))
        cost = network_cost(pipelines[case.label], graph, results[case.label]["model_only"], threads,
                            f"{command} ({case.backend}, cpu)")
        card.metrics["cost"] = cost
        card.save(card_path)
        print(f"{card_path}: {cost['gmacs']:.2f} GMACs, {cost['params_m']:.2f} M parameters, model only "
              f"{cost['latency_ms_median']:.1f} ms median ({cost['fps']:.0f} FPS)")


def run_latency(args) -> dict:
    """The pipeline per stage and the model alone, for the model and an optional baseline taking turns on the
    same frames; with --node, also each one's node end to end."""
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
    if args.update_card:
        update_cards(cases, pipelines, results, args.threads, args.command_line)
    del pipelines, pipeline  # free the sessions' threads before the node runs
    if args.node:
        for case in cases:
            results[case.label]["node"] = benchmark_node(case, frames, args.threads, args.warmup)
    print_latency(results, cases, frames, args.threads)
    return results


# --- hd --------------------------------------------------------------------------------------------------------
class HdLink:
    """The peer's side of the node in the hd run: a camera publisher, the node's ~/latency and the outputs
    subscribed so far."""

    def __init__(self, node, topic: str):
        self.node, self.peer = node, node.peer
        self.publisher = self.peer.publisher(Image, topic)
        self.latency = self.peer.subscribe(DiagnosticArray, node.topic("latency"))
        self.outputs = {}
        self.stamp = 0
        self.peer.wait_until_matched([node.topic("latency")], [self.publisher])

    def subscribe(self, outputs) -> None:
        for output in outputs:
            if output not in self.outputs:
                self.outputs[output] = self.peer.subscribe(Image, self.node.topic(output))
        self.peer.wait_until_matched([self.node.topic(output) for output in outputs])

    def round_trip(self, msg, outputs) -> tuple[dict[str, float], float]:
        """Publish `msg`, wait for its `outputs` and ~/latency report: (the report's values, publish-to-mask ms)."""
        self.stamp += 1
        msg.header.stamp.sec = self.stamp
        mine = lambda m, s=self.stamp: m.header.stamp.sec == s  # noqa: E731
        sent = time.perf_counter()
        self.publisher.publish(msg)
        for output in outputs:
            self.outputs[output].wait_for(1, 60, mine)
        report = self.latency.wait_for(1, 60, mine)[0]
        mask = self.outputs["mask"]
        mask_index = next(i for i, m in enumerate(mask.messages) if mine(m))
        return {kv.key: float(kv.value) for kv in report.status[0].values}, 1e3 * (mask.arrivals[mask_index] - sent)

    def forget(self) -> None:
        """Keep the inboxes small at HD."""
        for inbox in (self.latency, *self.outputs.values()):
            inbox.messages.clear()
            inbox.arrivals.clear()


def time_size(link: HdLink, frames, size: tuple[int, int], outputs, warmup: int, label: str) -> dict:
    """Each node stage and publish-to-mask at one image size, frames upscaled as bgr8, one at a time."""
    messages = [image_message(cv2.resize(frame, size, interpolation=cv2.INTER_LINEAR)[..., ::-1], "bgr8")
                for frame in frames]
    stages = {stage: [] for stage in NODE_STAGES + ("mask_received",)}
    for index, msg in enumerate(tqdm(messages[:warmup] + messages, desc=label, leave=False)):
        values, mask_ms = link.round_trip(msg, outputs)
        if index >= warmup:
            stages["mask_received"].append(mask_ms)
            for stage in NODE_STAGES:
                stages[stage].append(values[f"{stage}_ms"])
    link.forget()
    return {stage: latency_summary(v) for stage, v in stages.items()}


def benchmark_node_hd(model: str | None, backend: str, threads: int, frames, sizes, warmup: int,
                      upsampling: str) -> dict:
    """One node, frames upscaled to each size as bgr8, one at a time (reliable): each stage from ~/latency and
    publish-to-mask-received, first with only ~/mask subscribed, then with every output subscribed."""
    name = f"seg_node_hd_{os.getpid()}"
    topic = camera_topic_for(name)
    results = {}
    with running_seg_node(node_parameters(model, backend, threads, topic, upsampling=upsampling), name=name) as node:
        link = HdLink(node, topic)
        for outputs_label, outputs in OUTPUT_SETS.items():
            link.subscribe(outputs)
            for width, height in sizes:
                label = f"{width}x{height}, {outputs_label}"
                results[label] = time_size(link, frames, (width, height), outputs, warmup, label)
    return results


def print_hd(results: dict, model_only: dict, frames: int, threads: int) -> None:
    print(f"\nnode latency in ms, median / p95, {frames} frames upscaled (bgr8, reliable, one at a time), "
          f"{threads} threads, CPU; model only (in-process, network input): "
          f"{model_only['median']:.1f} / {model_only['p95']:.1f}")
    columns = NODE_STAGES + ("mask_received",)
    print("| size, subscribed | " + " | ".join(f"{c:>15}" for c in columns) + " | e2e / inference p50 |")
    print("|" + "---|" * (len(columns) + 2))
    for label, stages in results.items():
        cells = [f"{stages[c]['median']:6.1f} / {stages[c]['p95']:6.1f}" for c in columns]
        ratio = stages["mask_received"]["median"] / stages["inference"]["median"]
        print(f"| {label:<16} | " + " | ".join(cells) + f" | {ratio:.2f}x |")


def run_hd(args) -> dict:
    """The node per stage and publish-to-mask at HD sizes, beside the model alone in this process."""
    frames = load_frames(args.data, args.split, args.frames)
    pipeline = SegmentationPipeline.from_model(args.model, args.backend, "cpu", threads=args.threads)
    model_only = benchmark_pipelines({"model": pipeline}, frames, args.warmup)["model"]["model_only"]
    del pipeline  # free the session's threads before the node runs
    node = benchmark_node_hd(args.model, args.backend, args.threads, frames, args.sizes, args.warmup,
                             args.upsampling)
    print_hd(node, model_only, len(frames), args.threads)
    return {"model_only": model_only, "node": node}


# --- delivery --------------------------------------------------------------------------------------------------
def run_delivery(args) -> list:
    """Best-effort frames at --rate for --seconds at each size, received by the node, with and without the
    shipped Fast DDS profile."""
    parameters = {"backend": args.backend, "threads": args.threads, **({"model": args.model} if args.model else {})}
    rows = []
    for width, height in args.sizes:
        for profile in (DDS_PROFILE, None):
            rows.append(measure_delivery(width, height, args.rate, args.seconds, profile, parameters))
            print(f"  {rows[-1]['size']}, {rows[-1]['profile']}: {rows[-1]['received']}/{rows[-1]['sent']}",
                  flush=True)
    print(f"\nbest-effort delivery to the node (its default QoS), bgr8 at {args.rate:g} Hz for {args.seconds:g} s, "
          "frames_received in /diagnostics")
    print("| size | frame | with config/fastdds_large_images.xml | Fast DDS defaults |")
    print("|---|---|---|---|")
    for with_profile, without in zip(rows[::2], rows[1::2]):
        print(f"| {with_profile['size']} | {with_profile['frame_bytes'] / 1e6:.1f} MB | "
              + " | ".join(f"{r['received']}/{r['sent']} ({100 * r['received_share']:.1f}%)"
                           for r in (with_profile, without)) + " |")
    return rows


# --- upsampling ------------------------------------------------------------------------------------------------
def upsampling_scores(pipeline: SegmentationPipeline, dataset, samples, scale: int) -> dict:
    """mIoU, pixels equal to the full bilinear logits' mask and postprocess time of each upsampling mode, on
    frames upscaled `scale`x (bilinear image, nearest labels)."""
    from ..core.postprocess import UPSAMPLING_MODES, logits_to_mask
    from ..toolchain.evaluation.metrics import ConfusionMatrix
    matrices = {mode: ConfusionMatrix(len(pipeline.card.classes)) for mode in UPSAMPLING_MODES}
    agree = dict.fromkeys(UPSAMPLING_MODES, 0)
    times = {mode: [] for mode in UPSAMPLING_MODES}
    pixels = 0
    for sample in tqdm(samples, desc=f"upsampling at {scale}x", leave=False):
        image, label = dataset.load(sample)
        height, width = image.shape[0] * scale, image.shape[1] * scale
        big_label = cv2.resize(label, (width, height), interpolation=cv2.INTER_NEAREST)
        logits = pipeline.logits(cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR))
        masks = {}
        for mode in UPSAMPLING_MODES:
            started = time.perf_counter()
            masks[mode] = logits_to_mask(logits, height, width, mode)
            times[mode].append(1e3 * (time.perf_counter() - started))
            matrices[mode].update(masks[mode], big_label)
        for mode in UPSAMPLING_MODES:
            agree[mode] += int(np.count_nonzero(masks[mode] == masks["logits"]))
        pixels += height * width
    return {mode: {"miou": 100 * matrices[mode].miou(), "equal_to_logits": agree[mode] / pixels,
                   "postprocess_ms": latency_summary(times[mode])} for mode in UPSAMPLING_MODES}


def run_upsampling(args) -> dict:
    """mIoU of each upsampling mode on a data set's frames upscaled --scales times, labels matched to the model's
    classes by name."""
    pipeline = SegmentationPipeline.from_model(args.model, args.backend, "cpu", threads=args.threads)
    dataset = dataset_from_args(args, args.split, model_classes=list(pipeline.card.classes))
    samples = dataset.samples()[:args.limit] if args.limit else dataset.samples()
    results = {f"{scale}x": upsampling_scores(pipeline, dataset, samples, scale) for scale in args.scales}
    print(f"\nupsampling on {len(samples)} {args.split} frames upscaled, {pipeline.card.name}: mIoU, pixels "
          f"equal to full bilinear logits' mask, postprocess ms median / p95 ({args.threads} threads)")
    print("| upscale | mode | mIoU | vs logits | equal pixels | postprocess ms |")
    print("|---|---|---|---|---|---|")
    for scale, modes in results.items():
        for mode, r in modes.items():
            print(f"| {scale} | {mode} | {r['miou']:.2f} | {r['miou'] - modes['logits']['miou']:+.2f} | "
                  f"{100 * r['equal_to_logits']:.3f}% | {r['postprocess_ms']['median']:.1f} / "
                  f"{r['postprocess_ms']['p95']:.1f} |")
    return results


# --- confidence ------------------------------------------------------------------------------------------------
def confidence_cost(pipeline: SegmentationPipeline, frames, size: tuple[int, int], warmup: int) -> dict:
    """At one image size: the frame score (every frame; it reads the network-resolution logits, so its cost does
    not depend on the size), the ~/confidence map (only while subscribed: softmax at network resolution,
    resized to the image) and, for scale, the mask's postprocess."""
    from ..core.confidence import confidence_image, frame_score
    from ..core.postprocess import logits_to_mask
    temperature = pipeline.card.confidence.temperature
    width, height = size
    steps = {"score": lambda logits: frame_score(logits, temperature),
             "confidence_map": lambda logits: confidence_image(logits, height, width, temperature),
             "mask": lambda logits: logits_to_mask(logits, height, width, pipeline.upsampling)}
    times = {step: [] for step in steps}
    for index, frame in enumerate(tqdm(frames[:warmup] + frames, desc=f"confidence {width}x{height}",
                                       leave=False)):
        logits = pipeline.logits(cv2.resize(frame, (width, height), interpolation=cv2.INTER_LINEAR))
        for step, run in steps.items():
            started = time.perf_counter()
            run(logits)
            if index >= warmup:
                times[step].append(1e3 * (time.perf_counter() - started))
    return {step: latency_summary(values) for step, values in times.items()}


def run_confidence(args) -> dict:
    """What confidence adds to the pipeline, per image size."""
    frames = load_frames(args.data, args.split, args.frames)
    pipeline = SegmentationPipeline.from_model(args.model, args.backend, "cpu", threads=args.threads)
    results = {f"{w}x{h}": confidence_cost(pipeline, frames, (w, h), args.warmup) for w, h in args.sizes}
    print(f"\nconfidence cost in ms, median / p95, {len(frames)} frames, {pipeline.card.name}, network input "
          f"{pipeline.card.input.width}x{pipeline.card.input.height}: the score runs on every frame, the map only "
          "while ~/confidence is subscribed")
    print("| image size | frame score | confidence map (~/confidence) | mask (postprocess, for scale) |")
    print("|---|---|---|---|")
    for size, steps in results.items():
        print(f"| {size} | " + " | ".join(f"{steps[k]['median']:.2f} / {steps[k]['p95']:.2f}"
                                           for k in ("score", "confidence_map", "mask")) + " |")
    return results


# --- command line ----------------------------------------------------------------------------------------------
def option_groups() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """(the model options every subcommand has, the frame options of those that time frames)."""
    model = argparse.ArgumentParser(add_help=False)
    model.add_argument("--model", help="model card or file (default: the packaged model)")
    model.add_argument("--backend", default="onnxruntime")
    model.add_argument("--threads", type=int, default=2)
    model.add_argument("--json", help="write the figures and the command line to this file")
    frames = argparse.ArgumentParser(add_help=False)
    frames.add_argument("--data", help="data set folder for the frames (default: $CAMVID_ROOT, else the clip)")
    frames.add_argument("--split", default="test")
    frames.add_argument("--frames", type=int, default=50)
    frames.add_argument("--warmup", type=int, default=5)
    return model, frames


def build_parser() -> argparse.ArgumentParser:
    model, frames = option_groups()
    parser = argparse.ArgumentParser(prog="seg-benchmark", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    latency = commands.add_parser("latency", parents=[model, frames], help="pipeline per stage, model alone, "
                                  "node end to end (--node), against a baseline")
    latency.set_defaults(run=run_latency)
    latency.add_argument("--baseline-model", help="a second model to compare against, in the same run")
    latency.add_argument("--baseline-backend", default="torch")
    latency.add_argument("--node", action="store_true", help="also measure the running node end to end")
    latency.add_argument("--update-card", action="store_true", help="write each model's cost into its card "
                         "(metrics.cost: GMACs and parameters from its ONNX graph, this run's model-only latency)")
    hd = commands.add_parser("hd", parents=[model, frames], help="the node per stage at HD sizes (bgr8), only "
                             "~/mask subscribed and all outputs, beside model-only inference")
    hd.set_defaults(run=run_hd)
    hd.add_argument("--sizes", type=parse_sizes, default=sizes_text(HD_SIZES), help="WxH,... (default: %(default)s)")
    hd.add_argument("--upsampling", default="boundaries", help="the node's upsampling (default: %(default)s)")
    delivery = commands.add_parser("delivery", parents=[model], help="best-effort frames received by the node, "
                                   "with and without the shipped Fast DDS profile")
    delivery.set_defaults(run=run_delivery)
    delivery.add_argument("--sizes", type=parse_sizes, default=sizes_text(DELIVERY_SIZES),
                          help="WxH,... (default: %(default)s)")
    delivery.add_argument("--seconds", type=float, default=10.0, help="how long the camera sends, per size")
    delivery.add_argument("--rate", type=float, default=30.0, help="camera rate (Hz)")
    upsampling = commands.add_parser("upsampling", parents=[model], help="mIoU of each upsampling mode on a data "
                                     "set's frames upscaled (needs a labelled data set)")
    upsampling.set_defaults(run=run_upsampling)
    add_dataset_arguments(upsampling)
    upsampling.add_argument("--split", default="test")
    upsampling.add_argument("--limit", type=int, help="only the first N frames")
    upsampling.add_argument("--scales", type=int, nargs="+", default=[2, 4], help="upscale factors")
    confidence = commands.add_parser("confidence", parents=[model, frames], help="cost of the frame confidence "
                                     "score and the ~/confidence map")
    confidence.set_defaults(run=run_confidence)
    confidence.add_argument("--sizes", type=parse_sizes, default=sizes_text(CONFIDENCE_SIZES),
                            help="WxH,... (default: %(default)s)")
    return parser


def run_benchmark(argv: list[str] | None = None):
    """Run one subcommand; its figures are returned and, with --json, written beside the command line."""
    args = build_parser().parse_args(argv)
    args.command_line = command_line("seg-benchmark", argv)
    results = args.run(args)
    if args.json:
        record = {"command": args.command_line, args.command: results}
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
    return results


@reports_user_errors
def main(argv: list[str] | None = None) -> None:
    use_ros_environment()
    run_benchmark(argv)


if __name__ == "__main__":
    main()
