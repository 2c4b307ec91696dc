"""Overload and soak runs against the running node: drop rate, mask age, latency drift, errors and memory.

    seg-stress overload --random-model --seconds 60 --factor 3
    seg-stress soak --random-model --frames 10000

`overload` measures the node's processing time, then publishes at `factor` times what it can process: a
node that keeps up with the newest frames drops the rest and its masks stay young. `soak` sends frames one
at a time (publish, wait for the mask), so none is dropped, and compares the first and last frames.
Figures come from the node's own ~/latency and /diagnostics, from mask arrival times in this process and
from the node's VmRSS in /proc; nothing is asserted here (tests/test_reliability.py runs shorter versions
of both and asserts on the same figures).
"""

from __future__ import annotations

import argparse
import bisect
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from sensor_msgs.msg import Image
from tqdm import tqdm

from ..core.command_line import reports_user_errors
from ..core.latency_stats import latency_summary
from ..core.model_card import ModelCard, ModelCardError, command_line
from ..core.model_files import resolve_model
from ..ros.image_messages import NS_PER_S, image_message, stamp_ns
from ..toolchain.evaluation.timing import load_frames
from ..toolchain.random_model import make_random_model
from .node_process import camera_topic_for, running_seg_node, use_ros_environment
from .ros_peer import RELIABLE

SPREAD = "median {median:.1f} ms, p95 {p95:.1f} ms, max {max:.1f} ms"


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MiB, from VmRSS in /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


class StampRecorder:
    """Arrival time (and a few extracted values) of each message on one topic, by header stamp.

    Keeps no images, so ten thousand masks cost a few dictionaries, not gigabytes.
    """

    def __init__(self, peer, msg_type, topic: str, extract=lambda msg: None):
        self._extract = extract
        self._changed = threading.Condition()
        self.arrivals: dict[int, float] = {}
        self.values: dict[int, object] = {}
        self.order: list[int] = []
        peer.node.create_subscription(msg_type, topic, self._on_message, RELIABLE)

    def _on_message(self, msg) -> None:
        arrived = time.perf_counter()
        stamp, value = stamp_ns(msg.header.stamp), self._extract(msg)
        with self._changed:
            self.arrivals[stamp], self.values[stamp] = arrived, value
            self.order.append(stamp)
            self._changed.notify_all()

    def wait(self, stamp: int, timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: stamp in self.arrivals, timeout)


def latency_values(msg) -> dict[str, float]:
    return {kv.key: float(kv.value) for kv in msg.status[0].values}


class Status(NamedTuple):
    arrived: float  # perf_counter here
    stamp_ns: int  # the DiagnosticArray's header stamp: the node's clock when it reported
    level: int
    message: str
    values: dict[str, str]


class StatusRecorder:
    """The /diagnostics statuses of one node, in arrival order."""

    def __init__(self, peer, node_name: str):
        self._prefix = node_name + ":"
        self._changed = threading.Condition()
        self.statuses: list[Status] = []
        peer.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_message, RELIABLE)

    def _on_message(self, msg) -> None:
        arrived = time.perf_counter()
        stamp = stamp_ns(msg.header.stamp)
        mine = [Status(arrived, stamp, s.level[0], s.message, {kv.key: kv.value for kv in s.values})
                for s in msg.status if s.name.startswith(self._prefix)]
        if mine:
            with self._changed:
                self.statuses.extend(mine)
                self._changed.notify_all()

    def _later(self, since: float) -> list[Status]:
        return self.statuses[bisect.bisect_right(self.statuses, since, key=lambda s: s.arrived):]

    def first(self, predicate=lambda status: True, since: float = 0.0, timeout: float = 30.0) -> Status:
        """The first status that arrived after `since` (perf_counter) and satisfies `predicate`."""
        def match():
            return next((s for s in self._later(since) if predicate(s)), None)
        with self._changed:
            if not self._changed.wait_for(lambda: match() is not None, timeout):
                raise TimeoutError(f"no matching /diagnostics status in {timeout} s; the last was "
                                   f"{self.statuses[-1] if self.statuses else None}")
            return match()

    def after(self, since: float, count: int = 2, timeout: float = 30.0) -> Status:
        """The `count`-th status that arrived after `since` (perf_counter): with count 2, one the node began
        after `since`, so its counts include everything the node had done by then."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._later(since)) >= count, timeout):
                raise TimeoutError(f"fewer than {count} /diagnostics statuses in {timeout} s")
            return self._later(since)[count - 1]


class StressLink:
    """The peer's side of one running node: a camera publisher and what the node sends back, by stamp."""

    def __init__(self, peer, node, camera_topic: str, timeout: float = 30.0):
        self.node = node
        self.publisher = peer.publisher(Image, camera_topic)
        self.masks = StampRecorder(peer, Image, node.topic("mask"))
        self.latency = StampRecorder(peer, DiagnosticArray, node.topic("latency"), latency_values)
        self.diagnostics = StatusRecorder(peer, node.name)
        self.sent: dict[int, float] = {}
        self._last_stamp = 0
        peer.wait_until_matched([node.topic("mask")], [self.publisher], timeout)
        self._prime(timeout)

    def _prime(self, timeout: float) -> None:
        """Send a small frame until its mask comes back: both ends have then discovered each other."""
        msg = image_message(np.zeros((16, 16, 3), np.uint8), "rgb8")
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if self.masks.wait(self.publish(msg), 1.0):
                return
        raise TimeoutError(f"no mask from {self.node.name} in {timeout} s")

    def publish(self, msg) -> int:
        """Stamp `msg` with the wall clock (so the node's age_ms means something) and publish it."""
        stamp = max(time.time_ns(), self._last_stamp + 1)
        self._last_stamp = stamp
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, NS_PER_S)
        self.sent[stamp] = time.perf_counter()
        self.publisher.publish(msg)
        return stamp

    def round_trip(self, msg, timeout: float = 30.0) -> int | None:
        """Publish and wait for the mask and latency of this frame; the stamp, or None if none came."""
        stamp = self.publish(msg)
        if self.masks.wait(stamp, timeout) and self.latency.wait(stamp, timeout):
            return stamp
        return None

    def rss_mb(self) -> float:
        return rss_mb(self.node.process.pid)


def calibrate(link: StressLink, messages: list, count: int) -> list[dict[str, float]]:
    """Frames one at a time: the node's ~/latency values of each (what it needs per frame, unloaded)."""
    stamps = [link.round_trip(messages[i % len(messages)]) for i in range(count)]
    return [link.latency.values[s] for s in stamps if s is not None]


@dataclass
class OverloadRun:
    rate_hz: float
    seconds: float  # how long the camera ran
    stamps: list[int]  # frames published during the run
    rss: list[float]  # MiB, sampled through the run; the first sample is taken before it starts
    final: dict[str, str] = field(default_factory=dict)  # /diagnostics values once the node is idle again

    def ages_s(self, link: StressLink) -> list[float]:
        """Mask arrival here minus the publish time of its frame, for each frame of the run that got a mask."""
        return [link.masks.arrivals[s] - link.sent[s] for s in self.stamps if s in link.masks.arrivals]


def overload(link: StressLink, messages: list, rate_hz: float, seconds: float, rss_every: float = 0.25,
             progress: bool = True) -> OverloadRun:
    """Publish at `rate_hz` for `seconds` (never catching up in bursts), then let the node finish."""
    run = OverloadRun(rate_hz, 0.0, [], [link.rss_mb()])
    period = 1.0 / rate_hz
    started = next_at = last_sample = time.perf_counter()
    with tqdm(total=round(seconds), desc=f"overload at {rate_hz:.0f} Hz", unit="s", disable=not progress) as bar:
        while (now := time.perf_counter()) - started < seconds:
            if now < next_at:
                time.sleep(next_at - now)
                continue
            run.stamps.append(link.publish(messages[len(run.stamps) % len(messages)]))
            next_at = max(next_at + period, now)
            if now - last_sample >= rss_every:
                run.rss.append(link.rss_mb())
                last_sample = now
                bar.update(round(now - started) - bar.n)
    run.seconds = time.perf_counter() - started
    if not link.masks.wait(run.stamps[-1], 30.0):
        raise TimeoutError("the node did not answer the last frame of the overload run within 30 s")
    run.rss.append(link.rss_mb())
    run.final = link.diagnostics.after(link.masks.arrivals[run.stamps[-1]]).values
    return run


@dataclass
class SoakRun:
    stamps: list[int | None]  # per frame: its stamp, or None when no mask came back
    rss: list[tuple[int, float]]  # (frames sent, MiB)
    final: dict[str, str] = field(default_factory=dict)

    def answered(self) -> list[int]:
        return [s for s in self.stamps if s is not None]

    def round_trips_ms(self, link: StressLink) -> list[float]:
        return [1e3 * (link.masks.arrivals[s] - link.sent[s]) for s in self.answered()]

    def node_ms(self, link: StressLink, key: str = "total_ms") -> list[float]:
        return [link.latency.values[s][key] for s in self.answered()]


def soak(link: StressLink, messages: list, frames: int, rss_every: int = 100, timeout: float = 30.0,
         progress: bool = True) -> SoakRun:
    """`frames` frames, each published when the previous mask is back: nothing is dropped, all is measured."""
    run = SoakRun([], [(0, link.rss_mb())])
    for index in tqdm(range(frames), desc="soak", unit="frame", disable=not progress):
        run.stamps.append(link.round_trip(messages[index % len(messages)], timeout))
        if (index + 1) % rss_every == 0:
            run.rss.append((index + 1, link.rss_mb()))
    run.rss.append((frames, link.rss_mb()))
    run.final = link.diagnostics.after(time.perf_counter()).values
    return run


def print_table(title: str, rows: list[tuple[str, str]]) -> None:
    width = max(len(label) for label, _ in rows)
    print(f"\n{title}")
    for label, value in rows:
        print(f"  {label:<{width}}  {value}")


def report_overload(link: StressLink, unloaded: list[dict], run: OverloadRun) -> list[tuple[str, str]]:
    ages = np.array(run.ages_s(link)) * 1e3
    run_stamps = set(run.stamps)
    node = [link.latency.values[s] for s in run.stamps if s in link.latency.values]
    total = [v["total_ms"] for v in node]
    node_age = [v["age_ms"] for v in node]
    unloaded_summary = latency_summary([v["total_ms"] for v in unloaded])
    inference = latency_summary([v["inference_ms"] for v in unloaded])["median"]
    received, dropped = int(run.final["frames_received"]), int(run.final["frames_dropped"])
    period_drop_rates = [float(s.values["drop_rate"]) for s in link.diagnostics.statuses]
    in_order = [s for s in link.masks.order if s in run_stamps]
    return [
        ("processing time, unloaded", f"median {unloaded_summary['median']:.1f} ms, p95 "
                                      f"{unloaded_summary['p95']:.1f} ms (inference median {inference:.1f} ms)"),
        ("camera rate", f"{len(run.stamps) / run.seconds:.1f} Hz for {run.seconds:.1f} s "
                        f"(target {run.rate_hz:.1f} Hz), {len(run.stamps)} frames"),
        ("node counts", f"received {received}, processed {run.final['frames_processed']}, dropped {dropped}, "
                        f"failed {run.final['frames_failed']}, rejected {run.final['frames_rejected']}"),
        ("lost before the node", f"{len(link.sent) - received} of {len(link.sent)} published (the camera "
                                 f"subscription's queue overflowed before the callback ran)"),
        ("drop rate", f"{dropped / max(received, 1):.3f} overall, {max(period_drop_rates):.3f} "
                      f"highest in a /diagnostics period"),
        ("masks", f"{len(in_order)} published, in stamp order: {in_order == sorted(in_order)}"),
        ("processing time, loaded", SPREAD.format(**latency_summary(total))),
        ("mask age (publish -> mask here)", SPREAD.format(**latency_summary(ages))),
        ("mask age (node's age_ms)", SPREAD.format(**latency_summary(node_age))),
        ("node RSS", f"start {run.rss[0]:.1f} MiB, peak {max(run.rss):.1f} MiB, end {run.rss[-1]:.1f} MiB"),
    ]


def report_soak(link: StressLink, run: SoakRun, window: int) -> list[tuple[str, str]]:
    answered = run.answered()
    window = max(1, min(window, len(answered) // 2))
    total, trips = run.node_ms(link), run.round_trips_ms(link)
    rss = [mb for _, mb in run.rss]

    def drift(values):
        first, last = latency_summary(values[:window]), latency_summary(values[-window:])
        return (f"first {window}: median {first['median']:.1f} / p95 {first['p95']:.1f} ms; "
                f"last {window}: median {last['median']:.1f} / p95 {last['p95']:.1f} ms")

    return [
        ("frames", f"{len(run.stamps)} sent, {len(answered)} answered, {len(run.stamps) - len(answered)} missing"),
        ("node counts", f"received {run.final['frames_received']}, processed {run.final['frames_processed']}, "
                        f"dropped {run.final['frames_dropped']}, failed {run.final['frames_failed']}, "
                        f"rejected {run.final['frames_rejected']}"),
        ("node latency (total_ms)", drift(total)),
        ("round trip here", drift(trips)),
        ("node RSS", f"start {rss[0]:.1f} MiB, peak {max(rss):.1f} MiB, end {rss[-1]:.1f} MiB, "
                     f"growth {rss[-1] - rss[0]:+.1f} MiB"),
    ]


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", help="model card or file beside its card (default: the packaged model)")
    common.add_argument("--random-model", action="store_true",
                        help="make a small random U-Net (96x128 input) in a temporary folder and use it")
    common.add_argument("--backend", default="onnxruntime")
    common.add_argument("--device", default="cpu")
    common.add_argument("--threads", type=int, default=2)
    common.add_argument("--data", help="CamVid folder for the frames (default: $CAMVID_ROOT, else the committed clip)")
    parser = argparse.ArgumentParser(prog="seg-stress", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    over = commands.add_parser("overload", parents=[common],
                               help="camera faster than the node: drops, mask age, memory")
    over.add_argument("--factor", type=float, default=3.0, help="camera rate / the node's measured capacity")
    over.add_argument("--seconds", type=float, default=60.0)
    over.add_argument("--calibration-frames", type=int, default=30)
    long_run = commands.add_parser("soak", parents=[common],
                                   help="many frames, none dropped: latency drift, memory, errors")
    long_run.add_argument("--frames", type=int, default=10_000)
    long_run.add_argument("--window", type=int, default=1000, help="frames compared at the start and the end")
    return parser


def model_under_test(args, scratch: Path) -> tuple[str | None, ModelCard]:
    """(the model the node loads, its card): --random-model made in `scratch`, --model, or the packaged one."""
    model = str(make_random_model(scratch / "random_unet")) if args.random_model else args.model
    try:
        return model, resolve_model(model)[0]
    except ModelCardError as exc:
        raise ModelCardError(f"{exc} (pass --model PATH, or --random-model for a small random model)") from exc


def run_header(args, argv, card: ModelCard, frames) -> str:
    """The command, the model, the frames and the machine, above the figures."""
    height, width = frames[0].shape[:2]
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return (f"{command_line('seg-stress', argv)}\n"
            f"model {card.name} ({card.input.width}x{card.input.height} input), {args.backend} on "
            f"{args.device}, {args.threads} threads; frames {width}x{height} rgb8; "
            f"{os.cpu_count()} CPUs, load average {load} at start")


def run_command(args, link: StressLink, messages: list) -> list[tuple[str, str]]:
    """overload: calibrate, then publish at --factor times the node's capacity; soak: --frames one at a time."""
    if args.command == "overload":
        unloaded = calibrate(link, messages, args.calibration_frames)
        capacity_hz = 1e3 / float(np.median([v["total_ms"] for v in unloaded]))
        return report_overload(link, unloaded, overload(link, messages, args.factor * capacity_hz, args.seconds))
    calibrate(link, messages, 10)
    return report_soak(link, soak(link, messages, args.frames), args.window)


@reports_user_errors
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    use_ros_environment()
    with tempfile.TemporaryDirectory(prefix="seg_stress_") as scratch:
        model, card = model_under_test(args, Path(scratch))
        frames = load_frames(args.data, "test", 24)
        header = run_header(args, argv, card, frames)
        name = f"seg_stress_{os.getpid()}"
        topic = camera_topic_for(name)
        parameters = {"backend": args.backend, "device": args.device, "threads": args.threads,
                      "input_topics": [topic], "qos_reliability": "reliable", **({"model": model} if model else {})}
        with running_seg_node(parameters, name=name, log_dir=scratch) as node:
            link = StressLink(node.peer, node, topic)
            rows = run_command(args, link, [image_message(frame, "rgb8") for frame in frames])
        print_table(header, rows)


if __name__ == "__main__":
    main()
