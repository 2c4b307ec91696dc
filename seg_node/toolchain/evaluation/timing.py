"""Pipeline timing without ROS: per-stage latency of several pipelines in turns, on the same frames.

The benchmarks, the pruning study and the GPU check time their runs through these, so their figures are taken
the same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import numpy as np
from tqdm import tqdm

from ...core.latency_stats import latency_summary
from ...core.model_files import package_path
from ...core.pipeline import SegmentationPipeline
from ..data import DatasetError, SegmentationDataset, open_dataset

#: the CamVid clip shipped in the package (data/camvid_clip): frames when no data set is given
CLIP = package_path("data", "camvid_clip")
STAGES = ("preprocess", "inference", "postprocess", "total")
TURN_FRAMES = 10


def load_frames(data: str | None, split: str, count: int) -> list[np.ndarray]:
    """RGB frames: a split of the data set in `data` when given (or $CAMVID_ROOT), else the committed clip."""
    try:
        dataset = open_dataset(data, split)
    except DatasetError:
        if data:
            raise
        dataset = open_dataset(CLIP, "test")
    return frames_of(dataset, count)


def frames_of(dataset: SegmentationDataset, count: int) -> list[np.ndarray]:
    """`count` RGB frames of a split from its first, cycling through it when it is shorter."""
    samples = dataset.samples()
    return [dataset.load(samples[i % len(samples)])[0] for i in range(count)]


def turn_schedule(labels, count: int, warmup: int, turn: int = TURN_FRAMES) -> Iterator[tuple[str, int, bool]]:
    """(label, index, timed) for calls of each label's run on indexes 0..count-1: `warmup` untimed calls each,
    then the labels take turns in blocks of `turn` timed calls, so a change in the machine's load during the run
    falls on all of them alike and their ratio holds (run one after the other, the same pair's ratio moved by half).
    Each block starts with one untimed call: the previous run's thread pool still spins for a while after its last
    call (alternating every frame, inference timed 40 ms slower than the same network alone)."""
    for label in labels:
        for index in range(warmup):
            yield label, index, False
    for start in range(0, count, turn):
        for label in labels:
            yield label, start, False
            for index in range(start, min(start + turn, count)):
                yield label, index, True


def call_times_in_turns(runs: dict[str, Callable[[int], object]], count: int, warmup: int,
                        turn: int = TURN_FRAMES) -> dict[str, list[float]]:
    """Wall times in ms of `count` calls of each `run(index)`, taken in turns (turn_schedule)."""
    times = {label: [] for label in runs}
    for label, index, timed in turn_schedule(list(runs), count, warmup, turn):
        started = time.perf_counter()
        runs[label](index)
        if timed:
            times[label].append(1e3 * (time.perf_counter() - started))
    return times


def benchmark_pipelines(pipelines: dict[str, SegmentationPipeline], frames, warmup: int,
                        desc: str = "") -> dict[str, dict]:
    """Per-stage timings of each pipeline's segment, and of its network alone (run_network) on the same prepared
    input, the pipelines taking turns on the same frames (turn_schedule)."""
    timings = {label: {stage: [] for stage in STAGES + ("model_only",)} for label in pipelines}
    progress = tqdm(total=len(frames) * len(pipelines), desc=desc or ", ".join(pipelines), leave=False)
    for label, index, timed in turn_schedule(list(pipelines), len(frames), warmup):
        pipeline = pipelines[label]
        result = pipeline.segment(frames[index % len(frames)])
        if not timed:
            continue
        for stage in STAGES:
            timings[label][stage].append(result.timings_ms[stage])
        started = time.perf_counter()
        pipeline.run_network(pipeline.network_input)
        timings[label]["model_only"].append(1e3 * (time.perf_counter() - started))
        progress.update()
    progress.close()
    return {label: {stage: latency_summary(values) for stage, values in stages.items()}
            for label, stages in timings.items()}
