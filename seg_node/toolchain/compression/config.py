"""What a structured pruning run is made of: how far and how to prune (PruningConfig), and how each step is
fine-tuned (FineTuning: seg-train's data set, recipe, schedule and run settings). Each checks its own values when
made and raises PruningConfigError, a UserError."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch_pruning as tp

from ...core.architectures.blocks import KEPT_WHOLE_SCOPES
from ...core.errors import UserError
from ..training.config import DataConfig, RecipeConfig, RunConfig, ScheduleConfig
from .taylor import TaylorImportance

IMPORTANCE_CRITERIA = {
    "l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
    "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
    "taylor": TaylorImportance,  # Torch-Pruning's own mis-sizes groups rooted at depthwise convolutions
    "bn_scale": lambda: tp.importance.BNScaleImportance(),
    "random": lambda: tp.importance.RandomImportance(),  # the control: draws from torch's seeded generator
}
#: the pruner whose penalty sparse training adds, by the criterion that ranks what it shrinks: group norms for the
#: magnitudes (DepGraph), an L1 penalty on the BatchNorm scales for those (network slimming, Liu et al. ICCV 2017)
SPARSE_TRAINING_PRUNERS = {"l1": tp.pruner.GroupNormPruner, "l2": tp.pruner.GroupNormPruner,
                           "bn_scale": tp.pruner.BNScalePruner}
#: seg-prune's fine-tuning defaults: a lower learning rate than training's, no warm-up, validation every epoch
FINE_TUNING_SCHEDULE = ScheduleConfig(epochs=8, lr=3e-4, warmup_epochs=0.0, val_every=1)


class PruningConfigError(UserError, ValueError):
    """A pruning option out of range or naming what the model lacks."""


@dataclass(frozen=True)
class PruningConfig:
    """Prune `steps` times up to `ratio` of the channels of every layer (or ranked across layers with
    `global_pruning`), by an importance criterion, keeping widths multiples of `round_to` and at least
    1 - max_layer_ratio of every layer; scope 'decoder' leaves the encoder whole, 'expanded' its residual stream
    (only the channels inside its inverted-residual blocks are pruned); after each step the BatchNorm statistics
    are re-estimated on `recalibration_batches` training batches (0: not); `layer_ratios` sets the ratio of
    named submodules; no convolution is cut below `min_channels` (one narrower stays whole). With `sparse_epochs`,
    each step is preceded by that many epochs of Torch-Pruning's regularization (coefficient `sparse_reg`) of what
    the criterion ranks (SPARSE_TRAINING_PRUNERS): the weakest channels are driven towards zero before they are
    removed, so a deep cut loses less than removing channels that still carry signal."""

    ratio: float
    criterion: str = "l2"
    steps: int = 2
    global_pruning: bool = False
    round_to: int | None = 8
    max_layer_ratio: float = 0.8
    scope: str = "all"
    layer_ratios: dict[str, float] = field(default_factory=dict)
    recalibration_batches: int = 16
    min_channels: int = 0
    sparse_epochs: int = 0
    sparse_reg: float = 1e-3

    def __post_init__(self):
        if self.scope not in KEPT_WHOLE_SCOPES:
            raise PruningConfigError(f"scope must be one of {KEPT_WHOLE_SCOPES}, got {self.scope!r}")
        if self.criterion not in IMPORTANCE_CRITERIA:
            raise PruningConfigError(f"unknown criterion {self.criterion!r}; known: {sorted(IMPORTANCE_CRITERIA)}")
        if self.steps < 1:
            raise PruningConfigError(f"pruning needs at least one step, got {self.steps}")
        for value in (self.ratio, *self.layer_ratios.values()):
            if not 0.0 <= value < 1.0:
                raise PruningConfigError(f"pruning ratio must be in [0, 1), got {value}")
        if self.recalibration_batches < 0:
            raise PruningConfigError(f"BatchNorm recalibration batches must be >= 0, got {self.recalibration_batches}")
        if self.min_channels < 0 or (self.min_channels and self.global_pruning):
            raise PruningConfigError(f"min_channels must be >= 0, and is a per-layer floor for local pruning (not "
                                     f"--global), got {self.min_channels}")
        if self.sparse_epochs < 0 or self.sparse_reg <= 0:
            raise PruningConfigError(f"sparse training needs epochs >= 0 and a coefficient > 0, got "
                                     f"{self.sparse_epochs} and {self.sparse_reg}")
        if self.sparse_epochs and self.criterion not in SPARSE_TRAINING_PRUNERS:
            raise PruningConfigError(f"sparse training shrinks what a criterion ranks channels by: use --criterion "
                                     f"{', '.join(sorted(SPARSE_TRAINING_PRUNERS))}, not {self.criterion!r}")
        if any(value > self.max_layer_ratio for value in self.layer_ratios.values()):
            raise PruningConfigError(f"layer ratios {self.layer_ratios} exceed the per-layer cap "
                                     f"{self.max_layer_ratio}")

    @property
    def removes_channels(self) -> bool:
        return self.ratio > 0 or any(self.layer_ratios.values())

    def record(self) -> dict:
        """The card's keys for these options."""
        return {"ratio": self.ratio, "scope": self.scope, "layer_ratios": dict(self.layer_ratios),
                "criterion": self.criterion, "global": self.global_pruning, "round_to": self.round_to,
                "max_layer_ratio": self.max_layer_ratio, "min_channels": self.min_channels, "steps": self.steps,
                "bn_recalibration_batches": self.recalibration_batches if self.removes_channels else 0,
                **({"sparse_training": {"epochs_per_step": self.sparse_epochs, "reg": self.sparse_reg}}
                   if self.sparse_epochs else {})}


@dataclass(frozen=True)
class FineTuning:
    """How each pruning step is fine-tuned, as seg-train would train: on `data` (its train splits), with `recipe`
    (by default without distillation) for `schedule.epochs` epochs (0: no fine-tuning). `run.out` keeps each
    step's run in out/step<N> and continues one found there, so a long CPU run survives interruptions (None: a
    temporary folder)."""

    data: DataConfig = field(default_factory=DataConfig)
    recipe: RecipeConfig = field(default_factory=lambda: RecipeConfig(distill_weight=0.0))
    schedule: ScheduleConfig = FINE_TUNING_SCHEDULE
    run: RunConfig = field(default_factory=RunConfig)
