"""The study's latency: all of a model's points timed in one run, taking turns, so that a change in the machine's
load falls on all of them alike. Timed one after the other, each when its point was made, ICNet's 50% points
(one shape, five criteria) read 11.0 to 15.8 ms; in turns, 11.3 to 11.6.

Each point's network runs in its own ONNX Runtime session (batch 1, the study's threads, thread-pool spinning off,
so no idle pool competes for the cores) on normalized test frames. The figures are kept under OUT/timing, named by
the model's point keys and the timing options: a rerun of a finished study times nothing again.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from ...core.latency_stats import latency_summary
from ...core.model_card import ModelCard
from ...core.model_files import model_file
from ..evaluation.timing import call_times_in_turns
from ..export import parity_frames
from .study_plan import digest
from .study_points import StudyContext, StudyModel

#: frames of the test split fed in turn to each timed session
TIMED_FRAMES = 8
WARMUP_RUNS = 5


def timed_session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def session_run(session: ort.InferenceSession, inputs: np.ndarray):
    """run(index): the session on the index-th frame, in turn (batch 1)."""
    name = session.get_inputs()[0].name
    return lambda index: session.run(None, {name: inputs[index % len(inputs)][None]})


def point_onnx(point: dict, model: StudyModel, out: Path) -> Path:
    """The point's ONNX file: its card is the study folder's, or the model's as given (recorded as it was given)."""
    card_path = model.card_path if point["card"] == str(model.card_path) else out / point["card"]
    return model_file(ModelCard.load(card_path), card_path, "onnx")


def time_points(points: list[dict], model: StudyModel, context: StudyContext) -> tuple[dict[str, dict], bool]:
    """Latency (median, p95 and FPS) of each of a model's points by key; and whether it was measured now (False:
    found from an earlier run)."""
    settings = context.settings
    key = digest({"points": sorted(point["key"] for point in points), **settings.measuring()})
    found = context.timings.load(key)
    if found is not None:
        return found["latency"], False
    inputs = parity_frames(model.test, TIMED_FRAMES, model.card.input)
    sessions = {point["key"]: timed_session(point_onnx(point, model, context.out), settings.timing_threads)
                for point in points}
    runs = {point_key: session_run(session, inputs) for point_key, session in sessions.items()}
    times = call_times_in_turns(runs, settings.timing_runs, WARMUP_RUNS)
    latency = {}
    for point_key, values in times.items():
        summary = latency_summary(values)
        latency[point_key] = {"latency_median_ms": round(summary["median"], 3),
                              "latency_p95_ms": round(summary["p95"], 3), "fps": round(1e3 / summary["median"], 1)}
    context.timings.save(key, {"model": model.name, "latency": latency})
    return latency, True
