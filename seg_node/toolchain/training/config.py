"""What a training run is made of, as plain values: the data set, the model, the recipe (what the network learns
from), the schedule (how long and how fast) and where it runs. seg-train's flags fill these; seg-prune's fine-tuning
and any script build them directly, so no tool builds another tool's command line. Each part checks its own values
when made and raises TrainingConfigError, a UserError, naming the option.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ...core.errors import UserError
from ...core.model_card import DATA_PLACEHOLDER, InputSpec
from ..data import open_dataset
from ..data.base import ClassTable, SegmentationDataset
from ..data.class_match import dataset_for_model, read_class_map
from .augment import CorruptionRecipe
from .losses import CLASS_WEIGHTINGS, DISTILLATION_LOSSES, LOSSES

DEFAULT_CROP = (288, 384)
DEFAULT_SCALE_RANGE = (0.75, 1.5)
DEFAULT_ARCHITECTURE = {"name": "mobile_unet", "pretrained": True}
OPTIMIZER_NAMES = ("adamw", "sgd")
SCHEDULES = ("poly", "cosine", "constant")
TEACHER_INPUTS = ("augmented", "clean")
SEVERITY_CHOICES = (0, 1, 2, 3, 4, 5)


class TrainingConfigError(UserError, ValueError):
    """A training option out of range or in conflict with another; the message names the option."""


def require(condition: bool, message: str) -> None:
    if not condition:
        raise TrainingConfigError(message)


@dataclass(frozen=True)
class DataConfig:
    """The data set a run reads: its folder (None: $CAMVID_ROOT), layout, the colours that mark unlabelled pixels
    (folders layout with colour labels), the splits trained on, and a class map (CSV `data_class,model_class`)
    for a model whose classes the data set names otherwise."""

    root: str | None = None
    layout: str = "auto"
    ignore_colours: tuple[tuple[int, int, int], ...] = ()
    class_map: str | None = None
    train_splits: tuple[str, ...] = ("train",)

    def __post_init__(self):
        require(bool(self.train_splits), "train_splits: name at least one split to train on")
        object.__setattr__(self, "train_splits", tuple(dict.fromkeys(self.train_splits)))

    def open(self, split: str) -> SegmentationDataset:
        return open_dataset(self.root, split, self.layout, ignore_colours=tuple(self.ignore_colours))

    def for_model(self, dataset: SegmentationDataset, classes: ClassTable) -> SegmentationDataset:
        """`dataset` with labels in the ids of the model's `classes`, matched by name (and the class map)."""
        class_map = read_class_map(self.class_map) if self.class_map else None
        return dataset_for_model(dataset, classes.names, class_map, classes.colours)

    def record(self) -> dict:
        """As a card records it: the folder is named by the data sets' checksums, not by a machine's path; the
        class map by its pairs."""
        return {**asdict(self), "root": DATA_PLACEHOLDER,
                "class_map": read_class_map(self.class_map) if self.class_map else None}


@dataclass(frozen=True)
class ModelConfig:
    """The network: architecture config (registry name and options), the input it is fed (size and
    normalization, as the card will say), weights to start from (a run's checkpoint or a .safetensors file), and
    its classes (None: those the init weights were trained for, else the training data set's; a data set's
    labels are matched to them by name)."""

    arch: dict = field(default_factory=lambda: dict(DEFAULT_ARCHITECTURE))
    input: InputSpec = field(default_factory=lambda: InputSpec(height=360, width=480))
    init: str | None = None
    classes: ClassTable | None = None

    def __post_init__(self):
        require("name" in self.arch, f"arch: an architecture config needs a name, got {self.arch}")
        require(self.init is None or Path(self.init).is_file(), f"init {self.init}: no such file")

    def record(self) -> dict:
        return {"arch": self.arch, "input": asdict(self.input), "init": self.init}


@dataclass(frozen=True)
class RecipeConfig:
    """What the network learns from and is chosen on: loss and class weighting, augmentation (crop, scale range,
    camera corruptions), distillation from a teacher (a model card; per pixel or per class map, `distill_loss`),
    which sees the student's crop or the same crop before corruption, and the epoch kept: best on clean val, or on
    the mean of clean and corrupted val at a severity (`val_corrupted`)."""

    loss: str = "ce"
    class_weights: str = "median_frequency"
    crop: tuple[int, int] = DEFAULT_CROP
    scale_range: tuple[float, float] = DEFAULT_SCALE_RANGE
    corruption: CorruptionRecipe | None = None
    teacher: str | None = None
    distill_weight: float = 1.0
    distill_temperature: float = 2.0
    distill_loss: str = "pixel"
    teacher_input: str = "augmented"
    val_corrupted: int = 0

    def __post_init__(self):
        require(self.loss in LOSSES, f"loss must be one of {sorted(LOSSES)}, got {self.loss!r}")
        require(self.class_weights in CLASS_WEIGHTINGS,
                f"class_weights must be one of {CLASS_WEIGHTINGS}, got {self.class_weights!r}")
        require(len(self.crop) == 2 and min(self.crop) > 0, f"crop needs a height and a width > 0, got {self.crop}")
        low, high = self.scale_range
        require(0 < low <= high, f"scale_range needs 0 < MIN <= MAX, got {self.scale_range}")
        require(self.distill_loss in DISTILLATION_LOSSES,
                f"distill_loss must be one of {sorted(DISTILLATION_LOSSES)}, got {self.distill_loss!r}")
        require(self.teacher_input in TEACHER_INPUTS,
                f"teacher_input must be one of {TEACHER_INPUTS}, got {self.teacher_input!r}")
        problem = distillation_problem(self.teacher, self.distill_weight, self.distill_temperature)
        require(problem is None, str(problem))
        require(self.teacher_input == "augmented" or bool(self.teacher and self.corruption),
                "teacher input 'clean' needs a teacher and a corruption recipe (otherwise both inputs are the same)")
        require(self.val_corrupted in SEVERITY_CHOICES,
                f"val-corrupted must be a severity 1-5, or 0 for off, got {self.val_corrupted}")

    def record(self) -> dict:
        return {**asdict(self), "crop": list(self.crop), "scale_range": list(self.scale_range),
                "corruption": self.corruption.to_dict() if self.corruption else None}


def distillation_problem(teacher: str | os.PathLike | None, weight: float, temperature: float) -> str | None:
    """What is wrong with these distillation options, if anything."""
    if weight < 0 or temperature <= 0:
        return f"distillation needs weight >= 0 and temperature > 0, got {weight} and {temperature}"
    if teacher and not weight:
        return "a teacher is used only for distillation: give a distillation weight > 0 too"
    if teacher and not Path(teacher).is_file():
        return f"teacher {teacher}: no such model card"
    return None


@dataclass(frozen=True)
class ScheduleConfig:
    """How long and how fast: optimizer, learning rate and its schedule, epochs (0: none, seg-prune's fine-tuning
    off) and batch size, weight averaging from an epoch on, how often to validate, and the seed."""

    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    schedule: str = "poly"
    warmup_epochs: float = 1.0
    epochs: int = 60
    batch_size: int = 8
    average_from: int = 0
    val_every: int = 2
    max_steps_per_epoch: int = 0
    seed: int = 0

    def __post_init__(self):
        require(self.optimizer in OPTIMIZER_NAMES, f"optimizer must be one of {OPTIMIZER_NAMES}, "
                                                   f"got {self.optimizer!r}")
        require(self.schedule in SCHEDULES, f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        require(self.epochs >= 0 and self.batch_size >= 1 and self.val_every >= 1,
                f"epochs must not be negative, batch size and val-every must be at least 1, got {self.epochs}, "
                f"{self.batch_size} and {self.val_every}")
        require(self.lr >= 0 and self.warmup_epochs >= 0 and self.max_steps_per_epoch >= 0,
                "lr, warmup epochs and max steps per epoch must not be negative")
        require(0 <= self.average_from <= self.epochs,
                f"average-from must be an epoch from 1 to epochs ({self.epochs}), or 0 for off")


@dataclass(frozen=True)
class RunConfig:
    """Where and how a run executes: its output folder (checkpoints, log.csv, curves.png), whether it continues
    the run found there, the device, mixed precision, torch threads and data-loading worker processes."""

    out: str | None = None
    resume: bool = False
    device: str = "auto"
    amp: bool = False
    threads: int = 0
    workers: int = 2

    def __post_init__(self):
        require(self.threads >= 0 and self.workers >= 0, "threads and workers must not be negative")


@dataclass(frozen=True)
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    recipe: RecipeConfig = field(default_factory=RecipeConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self):
        require(self.run.out is not None, "a training run needs an output folder (out)")
        require(self.schedule.epochs >= 1, "a training run needs at least one epoch")
        require(not (self.model.init and self.run.resume),
                "init starts a new run from given weights, resume continues OUT/last.pt: use one")

    def record(self) -> dict:
        """JSON-ready, as the checkpoint and the model card keep it."""
        return {"data": self.data.record(), "model": self.model.record(), "recipe": self.recipe.record(),
                "schedule": asdict(self.schedule), "run": asdict(self.run)}


def checkpoint_record(state: dict, path: str | Path) -> dict:
    """The run record a seg-train checkpoint carries. One written before 0.2 (its options under 'args') no longer
    maps onto TrainConfig, so resuming or exporting it is refused by name; its weights still start a run."""
    run = json.loads(state["run"])
    if "config" not in run:
        raise TrainingConfigError(f"{path} was written by seg_node 0.1 (its record holds 'args', not 'config'): "
                                  "resume or export it with seg_node 0.1, or start a new run from its weights "
                                  "with seg-train --init")
    return run
