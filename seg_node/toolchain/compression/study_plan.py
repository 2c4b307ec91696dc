"""What the pruning study measures: its settings, its points, and the key that names each point's settings.

Per model (an architecture, trained and unpruned, given as its card):
- criteria: every importance criterion (random is the control) pruning `compared_target` of the MACs;
- ratios: 0, 30, 50, 70% of the MACs with the criterion best on val;
- scopes: the best criterion at `compared_target` with the other scope (decoder only against the whole network);
- precisions: static INT8, dynamic-range INT8 and FP16 of the unpruned and the `compared_target` models;
- reference: the card as given (no fine-tuning), to show what the study's fine-tuning alone changes.
Every fp32 point but the reference is fine-tuned on the same budget, distilled from the model as given; ratio 0
prunes nothing and is fine-tuned the same way, so the ratios differ in pruning only.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace

from ...core.errors import UserError
from .config import IMPORTANCE_CRITERIA, FineTuning

CRITERIA = ("l1", "l2", "taylor", "bn_scale", "random")
RATIO_TARGETS = (0.0, 0.3, 0.5, 0.7)
COMPARED_TARGET = 0.5
QUANTIZED_PRECISIONS = ("int8_static", "int8_dynamic", "fp16")
#: the comparisons a point can belong to, in the order the reports list them
GROUPS = ("reference", "criteria", "ratios", "scopes", "precisions")
#: the scopes every architecture has, compared with each other ('expanded' needs an inverted-residual encoder)
STUDY_SCOPES = ("all", "decoder")


class StudyPlanError(UserError):
    """Study settings that name no valid point."""


@dataclass(frozen=True)
class Point:
    """One model of the study: `model` (its card's file stem) pruned by `criterion` within `scope` until
    `macs_target` of its MACs are gone, fine-tuned (unless it is the reference), in `precision`."""

    model: str
    criterion: str | None = None  # None: nothing pruned
    scope: str | None = None
    macs_target: float = 0.0
    precision: str = "fp32"
    fine_tuned: bool = True

    @property
    def label(self) -> str:
        """Short and unique within a model, e.g. 'l2 50% all', 'unpruned int8_dynamic', 'given'."""
        if not self.fine_tuned:
            return "given"
        pruned = f"{self.criterion} {round(100 * self.macs_target)}% {self.scope}" if self.criterion else "unpruned"
        return pruned if self.precision == "fp32" else f"{pruned} {self.precision}"

    @property
    def source(self) -> Point:
        """The fp32 point a quantized point is converted from (itself for fp32)."""
        return replace(self, precision="fp32")

    def settings(self) -> dict:
        return {key: value for key, value in asdict(self).items() if key != "model"}


@dataclass(frozen=True)
class StudySettings:
    """Everything a point's result depends on besides its model and the data: what is compared, the pruning
    options every point shares, the fine-tuning budget, calibration and timing."""

    fine_tuning: FineTuning
    criteria: tuple[str, ...] = CRITERIA
    ratio_targets: tuple[float, ...] = RATIO_TARGETS
    compared_target: float = COMPARED_TARGET
    scope: str = "all"
    precisions: tuple[str, ...] = QUANTIZED_PRECISIONS
    pruning_steps: int = 1
    round_to: int | None = 8
    max_layer_ratio: float = 0.8
    calibration_frames: int = 64
    timing_threads: int = 2
    timing_runs: int = 50
    seed: int = 0

    def __post_init__(self):
        unknown = sorted(set(self.criteria) - set(IMPORTANCE_CRITERIA))
        if unknown or not self.criteria:
            raise StudyPlanError(f"criteria must be some of {sorted(IMPORTANCE_CRITERIA)}, got {list(self.criteria)}")
        if self.scope not in STUDY_SCOPES:
            raise StudyPlanError(f"scope must be one of {STUDY_SCOPES}, got {self.scope!r}")
        if not all(0 <= t < 1 for t in (*self.ratio_targets, self.compared_target)) or self.compared_target == 0:
            raise StudyPlanError(f"MACs targets are shares in [0, 1) and the compared one above 0, got "
                                 f"{list(self.ratio_targets)} and {self.compared_target}")
        if not set(self.precisions) <= set(QUANTIZED_PRECISIONS):
            raise StudyPlanError(f"precisions must be some of {QUANTIZED_PRECISIONS}, got {list(self.precisions)}")
        if not self.fine_tuning.schedule.epochs or not self.fine_tuning.recipe.distill_weight:
            raise StudyPlanError("every point is fine-tuned and distilled from its unpruned model: give at least one "
                                 "fine-tuning epoch and a distillation weight > 0")

    @property
    def other_scope(self) -> str:
        return next(scope for scope in STUDY_SCOPES if scope != self.scope)

    def making(self) -> dict:
        """What a fine-tuned model depends on (the data's checksums are added by the caller)."""
        recipe = self.fine_tuning.recipe
        return {"pruning": {"steps": self.pruning_steps, "round_to": self.round_to,
                            "max_layer_ratio": self.max_layer_ratio},
                "fine_tuning": {"schedule": asdict(self.fine_tuning.schedule), "recipe": recipe.record(),
                                "train_splits": list(self.fine_tuning.data.train_splits)},
                "seed": self.seed}

    def measuring(self) -> dict:
        return {"timing_threads": self.timing_threads, "timing_runs": self.timing_runs}

    def record(self) -> dict:
        """As results.json records the study."""
        return {"criteria": list(self.criteria), "ratio_targets": list(self.ratio_targets),
                "compared_target": self.compared_target, "scope": self.scope, "other_scope": self.other_scope,
                "precisions": list(self.precisions), "calibration_frames": self.calibration_frames,
                **self.making(), **self.measuring()}


def plan(model: str, settings: StudySettings, best: str | None) -> dict[Point, list[str]]:
    """The model's points, each with the comparisons it belongs to, in order (a quantized point after its
    source). Without the best criterion (not known before the criteria are measured): the reference, the
    unpruned point and the criteria only."""
    points: dict[Point, list[str]] = {}

    def add(point: Point, group: str) -> None:
        groups = points.setdefault(point, [])
        if group not in groups:
            groups.append(group)

    unpruned = Point(model)
    add(Point(model, fine_tuned=False), "reference")
    add(unpruned, "ratios")
    for criterion in settings.criteria:
        add(Point(model, criterion, settings.scope, settings.compared_target), "criteria")
    if best is None:
        return points
    compared = Point(model, best, settings.scope, settings.compared_target)
    for target in settings.ratio_targets:
        add(replace(compared, macs_target=target) if target else unpruned, "ratios")
    add(compared, "scopes")
    add(replace(compared, scope=settings.other_scope), "scopes")
    for source in (unpruned, compared):
        add(source, "precisions")
        for precision in settings.precisions:
            add(replace(source, precision=precision), "precisions")
    return points


def digest(value: dict) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def making_key(point: Point, source_sha256: str, settings: StudySettings, data: dict) -> str:
    """Names the settings a point's model is made from: the weights it starts from (the SHA-256 of the given ONNX
    file), the point's own settings, the shared pruning and fine-tuning options and the data's checksums; a
    quantized model, its fp32 source's key and its conversion."""
    if point.precision != "fp32":
        return digest({"from": making_key(point.source, source_sha256, settings, data), "precision": point.precision,
                       **({"calibration_frames": settings.calibration_frames}
                          if point.precision == "int8_static" else {})})
    if not point.fine_tuned:
        return digest({"source": source_sha256})
    return digest({"source": source_sha256, "point": point.settings(), **settings.making(), "data": data})


def measuring_key(model_key: str, data: dict) -> str:
    """Names a point's result: its model and the evaluation splits' checksums (its latency is timed apart)."""
    return digest({"model": model_key, "data": data})
