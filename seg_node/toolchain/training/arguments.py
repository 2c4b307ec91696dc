"""seg-train's flags, one group per part of a TrainConfig, and the config they make. seg-prune shares the data set,
recipe and run groups (its fine-tuning is seg-train's)."""

from __future__ import annotations

import argparse
import json

from ...core.architectures import ARCHITECTURES
from ...core.model_card import InputSpec
from ..data.arguments import add_dataset_arguments
from .augment import CorruptionRecipe, parse_corruption
from .config import (
    DEFAULT_ARCHITECTURE,
    DEFAULT_CROP,
    DEFAULT_SCALE_RANGE,
    OPTIMIZER_NAMES,
    SCHEDULES,
    TEACHER_INPUTS,
    DataConfig,
    ModelConfig,
    RecipeConfig,
    RunConfig,
    ScheduleConfig,
    TrainConfig,
    TrainingConfigError,
)
from .losses import CLASS_WEIGHTINGS, DISTILLATION_LOSSES, LOSSES

TRAINABLE_SPLITS = ("train", "val")


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataset_arguments(parser)
    parser.add_argument("--train-splits", nargs="+", default=["train"], choices=TRAINABLE_SPLITS,
                        help="splits to train on; 'train val' is the final retraining of a recipe fixed beforehand on "
                             "train/val (val then no longer measures anything: take last.pt, not best.pt)")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--arch", default=json.dumps(DEFAULT_ARCHITECTURE),
                       help="architecture config as JSON, or just a name (" + ", ".join(ARCHITECTURES) + ")")
    group.add_argument("--input-size", type=int, nargs=2, default=[360, 480], metavar=("H", "W"),
                       help="network input size for validation and the model card")
    group.add_argument("--init", help="start from these weights (a run's best.pt or last.pt, or a .safetensors file) "
                                      "with a fresh optimizer and schedule: a second training cycle")


def add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("recipe")
    group.add_argument("--loss", default="ce", choices=sorted(LOSSES))
    group.add_argument("--class-weights", default="median_frequency", choices=CLASS_WEIGHTINGS)
    group.add_argument("--crop", type=int, nargs=2, default=list(DEFAULT_CROP), metavar=("H", "W"))
    group.add_argument("--scale-range", type=float, nargs=2, default=list(DEFAULT_SCALE_RANGE),
                       metavar=("MIN", "MAX"))
    group.add_argument("--corruption", default="",
                       help="camera corruptions on training crops (albumentations): 'default' for the default recipe, "
                            "or JSON overriding its probabilities and strength, e.g. '{\"noise\": 0.6, \"strength\": "
                            "1.2}' (keys: " + ", ".join(CorruptionRecipe().to_dict()) + "); empty: off")
    group.add_argument("--teacher", help="model card of a trained model to distil from (knowledge distillation): "
                                         "the loss adds distill-weight x T^2 x KL(teacher || student) per pixel "
                                         "(or per class map: --distill-loss), "
                                         "both softened by the temperature T; the teacher runs as its card "
                                         "says (flip-averaged, logit offsets)")
    group.add_argument("--distill-weight", type=float, default=1.0, help="weight of the distillation term")
    group.add_argument("--distill-temperature", type=float, default=2.0, help="softmax temperature of distillation")
    group.add_argument("--distill-loss", default="pixel", choices=sorted(DISTILLATION_LOSSES),
                       help="pixel: each pixel's class distribution (KL per pixel); channel: each class map's "
                            "distribution over the pixels (channel-wise distillation, Shu et al. 2021; T=4 there)")
    group.add_argument("--teacher-input", default="augmented", choices=TEACHER_INPUTS,
                       help="what the teacher sees: the student's (corrupted) crop, or the same crop before "
                            "corruption (a clean teacher's answer taught to a student seeing the corrupted frame)")
    group.add_argument("--val-corrupted", type=int, default=0, metavar="SEVERITY",
                       help="also validate on val frames each corrupted at this severity (frame i by the i-th "
                            "benchmark corruption in turn) and keep the epoch best on the mean of clean and "
                            "corrupted mIoU (0: clean val only)")


def add_schedule_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("schedule")
    group.add_argument("--optimizer", default="adamw", choices=OPTIMIZER_NAMES)
    group.add_argument("--lr", type=float, default=1e-3)
    group.add_argument("--weight-decay", type=float, default=1e-4)
    group.add_argument("--schedule", default="poly", choices=SCHEDULES)
    group.add_argument("--warmup-epochs", type=float, default=1.0)
    group.add_argument("--epochs", type=int, default=60)
    group.add_argument("--batch-size", type=int, default=8)
    group.add_argument("--average-from", type=int, default=0, metavar="EPOCH",
                       help="stochastic weight averaging: from this epoch on, average the weights after every epoch; "
                            "validation and best.pt use the average, its BatchNorm statistics recomputed on "
                            "training crops (0: off; pair with --schedule constant)")
    group.add_argument("--val-every", type=int, default=2, help="validate every N epochs (and after the last)")
    group.add_argument("--max-steps-per-epoch", type=int, default=0, help="cap steps per epoch (smoke tests)")
    group.add_argument("--seed", type=int, default=0)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("run")
    group.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    group.add_argument("--amp", action="store_true", help="mixed precision (CUDA only)")
    group.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    group.add_argument("--workers", type=int, default=2,
                       help="data loading processes: each reads, decodes and augments whole frames (0: in the "
                            "training process)")


def data_from_args(args: argparse.Namespace) -> DataConfig:
    return DataConfig(root=args.data, layout=args.layout, ignore_colours=tuple(args.ignore_colour),
                      class_map=args.class_map, train_splits=tuple(args.train_splits))


def recipe_from_args(args: argparse.Namespace) -> RecipeConfig:
    return RecipeConfig(loss=args.loss, class_weights=args.class_weights, crop=tuple(args.crop),
                        scale_range=tuple(args.scale_range), corruption=parse_corruption(args.corruption),
                        teacher=args.teacher, distill_weight=args.distill_weight,
                        distill_temperature=args.distill_temperature, distill_loss=args.distill_loss,
                        teacher_input=args.teacher_input,
                        val_corrupted=args.val_corrupted)


def arch_config(text: str) -> dict:
    """--arch: a JSON object, or just a registry name."""
    text = text.strip()
    if not text.startswith("{"):
        return {"name": text}
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise TrainingConfigError(f"--arch is not valid JSON ({exc}): {text}") from None


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    schedule = ScheduleConfig(
        optimizer=args.optimizer, lr=args.lr, weight_decay=args.weight_decay, schedule=args.schedule,
        warmup_epochs=args.warmup_epochs, epochs=args.epochs, batch_size=args.batch_size,
        average_from=args.average_from, val_every=args.val_every,
        max_steps_per_epoch=args.max_steps_per_epoch, seed=args.seed)
    model = ModelConfig(arch=arch_config(args.arch), input=InputSpec(height=args.input_size[0],
                                                                      width=args.input_size[1]), init=args.init)
    run = RunConfig(out=args.out, resume=args.resume, device=args.device, amp=args.amp, threads=args.threads,
                    workers=args.workers)
    return TrainConfig(data=data_from_args(args), model=model, recipe=recipe_from_args(args), schedule=schedule,
                       run=run)
