"""Train a segmentation model on any registered data set: `seg-train --data DATA --arch mobile_unet --out runs/x`.

The model's classes are the data set's (names, colours; `--init` weights keep their own, matched by name).
Frames stream through a DataLoader (`--workers` processes read, decode and augment them), so memory holds the batches
in flight, never a split. Multi-GPU: `torchrun --nproc_per_node N -m seg_node.toolchain.training.train ...`
(DistributedDataParallel). Checkpoints hold only tensors and plain values, so they load with
`torch.load(weights_only=True)`. As a library: `train(TrainConfig(...))` (seg_node.toolchain.training.config).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ...core.architectures import build_model
from ...core.architectures.blocks import resize_to
from ...core.architectures.weights import load_weights
from ...core.command_line import reports_user_errors
from ...core.model_card import ModelCard
from ..data.base import ClassTable, SegmentationDataset
from ..data.loader import make_loader
from ..evaluation.metrics import ConfusionMatrix
from .arguments import (
    add_data_arguments,
    add_model_arguments,
    add_recipe_arguments,
    add_run_arguments,
    add_schedule_arguments,
    config_from_args,
)
from .batches import JoinedSplits, TrainingCrops, ValidationFrames, class_pixel_counts, frames_in_order
from .config import TrainConfig, TrainingConfigError, checkpoint_record
from .losses import DISTILLATION_LOSSES, build_loss, median_frequency_weights
from .teacher import load_teacher

OPTIMIZERS = {
    "adamw": lambda params, lr, wd: torch.optim.AdamW(params, lr=lr, weight_decay=wd),
    "sgd": lambda params, lr, wd: torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=wd, nesterov=True),
}
LOG_COLUMNS = ["epoch", "train_loss", "lr", "val_miou", "val_corrupted_miou", "seconds"]


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arguments(parser)
    add_model_arguments(parser)
    add_recipe_arguments(parser)
    add_schedule_arguments(parser)
    add_run_arguments(parser)
    parser.add_argument("--out", required=True, help="run folder: checkpoints, log.csv, curves.png")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    return config_from_args(parser.parse_args(argv))


@dataclass
class TrainingData:
    """The splits a run reads, labels in the model's class ids, and the classes themselves."""

    classes: ClassTable
    train: SegmentationDataset
    val: SegmentationDataset | None  # on the process that validates (rank 0) only
    identities: list[dict]  # what the card records of each split: name, split, frames, checksum


def recorded_classes(path: str) -> ClassTable | None:
    """The classes that `--init` weights were trained for: a run's checkpoint records them, a .safetensors file's
    card beside it names them; None when neither does."""
    if path.endswith(".safetensors"):
        card_path = Path(path).with_suffix(".json")
        if not card_path.is_file():
            return None
        card = ModelCard.load(card_path)
        return ClassTable(tuple(card.classes), tuple(tuple(colour) for colour in card.palette))
    run = json.loads(torch.load(path, map_location="cpu", weights_only=True)["run"])
    return ClassTable(tuple(run["classes"]), tuple(tuple(colour) for colour in run["palette"])) \
        if "classes" in run else None


def open_training_data(config: TrainConfig, validating: bool, progress: bool) -> TrainingData:
    """Each split opened once (val too, when trained on); every split's labels matched by name to the model's
    classes: the given ones, those of the weights it starts from (`--init`, or OUT/last.pt when resuming: a run
    started from weights in another class order goes on in theirs), or else the data set's own."""
    data = config.data
    splits = {split: data.open(split) for split in data.train_splits + (("val",) if validating else ())}
    first = splits[data.train_splits[0]]
    start = str(Path(config.run.out) / "last.pt") if config.run.resume else config.model.init
    classes = config.model.classes or (recorded_classes(start) if start else None) or first.classes
    matched = {split: data.for_model(dataset, classes) for split, dataset in splits.items()}
    parts = [matched[split] for split in data.train_splits]
    train = parts[0] if len(parts) == 1 else JoinedSplits(parts)
    val = matched.get("val")
    identities = ([dataset.identity(progress) for dataset in [*parts, val]] if validating else [])
    return TrainingData(classes=classes, train=train, val=val, identities=identities)


def load_initial_weights(model: nn.Module, path: str) -> None:
    """Weights only (tensor formats, no unpickling of classes); the architecture comes from --arch."""
    try:
        if path.endswith(".safetensors"):
            load_weights(model, path)
        else:
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["model"])
    except RuntimeError as exc:
        raise TrainingConfigError(f"--init {path}: its weights do not fit --arch and the classes: {exc}") from None


def auxiliary_loss(criterion: nn.Module, aux_outputs, weights, target: torch.Tensor) -> torch.Tensor | float:
    """sum of w_i x loss(aux_i resized to the label): auxiliary heads at any resolution."""
    if len(aux_outputs) != len(weights):
        raise TrainingConfigError(f"the model returned {len(aux_outputs)} auxiliary outputs but has "
                                  f"{len(weights)} aux_weights")
    return sum(weight * criterion(F.interpolate(aux, size=target.shape[-2:], mode="bilinear", align_corners=False),
                                  target) for weight, aux in zip(weights, aux_outputs))


@torch.no_grad()
def validate(model: nn.Module, frames, device: torch.device, num_classes: int) -> ConfusionMatrix:
    """mIoU at the network input size (logits at a lower resolution resized bilinearly to it), with the same resize
    and normalization as the node's pipeline."""
    model.eval()
    matrix = ConfusionMatrix(num_classes)
    for x, label in frames:
        x = x.to(device).contiguous(memory_format=torch.channels_last)
        pred = resize_to(model(x), x).argmax(1)[0].to(torch.uint8).cpu().numpy()
        label = label[0].numpy()
        if pred.shape != label.shape:
            pred = cv2.resize(pred, (label.shape[1], label.shape[0]), interpolation=cv2.INTER_NEAREST)
        matrix.update(pred, label)
    return matrix


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "poly":
        return (1 - progress) ** 0.9
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    return 1.0


def plot_curves(log_path: Path, png_path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    with open(log_path) as handle:
        rows = list(csv.DictReader(handle))
    epochs = [int(r["epoch"]) for r in rows]
    fig, (ax_loss, ax_miou) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [float(r["train_loss"]) for r in rows])
    ax_loss.set(xlabel="epoch", ylabel="train loss", title="training loss")
    for column, label in (("val_miou", "clean val"), ("val_corrupted_miou", "corrupted val")):
        val = [(int(r["epoch"]), float(r[column])) for r in rows if r.get(column)]
        if val:
            ax_miou.plot(*zip(*val), marker="o", label=label)
    if ax_miou.lines:
        ax_miou.legend()
    ax_miou.set(xlabel="epoch", ylabel="val mIoU (%)", title="validation mIoU")
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)


def describe_hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA), {os.cpu_count()} CPU cores"
    return f"CPU only: {platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def setup_distributed(device_name: str) -> tuple[int, int, torch.device]:
    """(rank, world_size, device); torchrun sets WORLD_SIZE/RANK/LOCAL_RANK."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if device_name == "auto":
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    if device_name.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingConfigError("--device cuda asked for, but torch sees no CUDA device")
    if world == 1:
        return 0, 1, torch.device(device_name)
    local_rank = int(os.environ["LOCAL_RANK"])
    backend = "nccl" if device_name.startswith("cuda") else "gloo"
    dist.init_process_group(backend)
    device = torch.device(f"cuda:{local_rank}") if backend == "nccl" else torch.device("cpu")
    if backend == "nccl":
        torch.cuda.set_device(device)
    return dist.get_rank(), world, device


class Trainer:
    """One training run: its data, model, optimization state and epoch loop, as a TrainConfig says. `regularize`,
    if given, adds a penalty's gradient to the model's after each backward pass (sparse training before pruning)."""

    def __init__(self, config: TrainConfig, model: nn.Module | None = None,
                 regularize: Callable[[nn.Module], None] | None = None):
        self.config, schedule = config, config.schedule
        self.regularize = regularize
        self.rank, self.world, self.device = setup_distributed(config.run.device)
        if config.run.threads:
            torch.set_num_threads(config.run.threads)
        random.seed(schedule.seed + self.rank)
        torch.manual_seed(schedule.seed)
        self.out = Path(config.run.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.resume_state = self._read_resume_state() if config.run.resume else None
        self.data = open_training_data(config, validating=self.rank == 0, progress=self.rank == 0)
        if "val" in config.data.train_splits and self.rank == 0:
            print("seg-train: val is among the training splits, so its figures below are not held out: "
                  "the run's result is last.pt, by the recipe fixed beforehand, not best.pt", flush=True)
        self._build_model(model)
        self._build_loaders()
        self._build_optimization()

    def _build_model(self, model: nn.Module | None) -> None:
        config = self.config
        if model is None:
            model = build_model(config.model.arch, self.data.classes.num_classes)
            if config.model.init:
                load_initial_weights(model, config.model.init)
        self.model = model.to(self.device).to(memory_format=torch.channels_last)
        self.aux_weights = tuple(getattr(self.model, "aux_weights", ()))
        self.class_weights = None
        if config.recipe.class_weights == "median_frequency":
            counts = class_pixel_counts(self.data.train, self.data.classes.num_classes, config.run.workers)
            self.class_weights = torch.from_numpy(median_frequency_weights(*counts))
        self.criterion = build_loss(config.recipe.loss, self.class_weights).to(self.device)
        self.teacher, self.teacher_order = (load_teacher(config.recipe.teacher, config.model.input,
                                                         self.data.classes, self.device)
                                            if config.recipe.teacher else (None, None))
        self.train_model = self.model
        if self.world > 1:
            self.train_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def _build_loaders(self) -> None:
        config, schedule, recipe = self.config, self.config.schedule, self.config.recipe
        crops = TrainingCrops(recipe.crop, recipe.scale_range, config.model.input, recipe.corruption,
                              clean_teacher=recipe.teacher_input == "clean")
        whole_batches = len(self.data.train.samples()) // self.world >= schedule.batch_size
        self.loader = make_loader(self.data.train, crops, schedule.batch_size, shuffle=True,
                                  workers=config.run.workers, seed=schedule.seed, drop_last=whole_batches)
        self.steps_per_epoch = len(self.loader)
        if schedule.max_steps_per_epoch:
            self.steps_per_epoch = min(self.steps_per_epoch, schedule.max_steps_per_epoch)
        self.val_frames = self.val_corrupted = None
        if self.data.val is not None:
            self.val_frames = frames_in_order(ValidationFrames(self.data.val, config.model.input), config.run.workers)
            if recipe.val_corrupted:
                self.val_corrupted = frames_in_order(ValidationFrames(self.data.val, config.model.input,
                                                                      recipe.val_corrupted), config.run.workers)

    def _build_optimization(self) -> None:
        schedule = self.config.schedule
        self.optimizer = OPTIMIZERS[schedule.optimizer](self.model.parameters(), schedule.lr, schedule.weight_decay)
        self.use_amp = self.config.run.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        total_steps = self.steps_per_epoch * schedule.epochs
        warmup = int(schedule.warmup_epochs * self.steps_per_epoch)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, total_steps, warmup, schedule.schedule))
        self.averaged = torch.optim.swa_utils.AveragedModel(self.model) if schedule.average_from else None
        self.best_miou = -1.0
        self.run_info = {
            "arch": self.config.model.arch, "config": self.config.record(),
            "classes": list(self.data.classes.names), "palette": self.data.classes.palette,
            "data": self.data.identities,
            "corruption": self.config.recipe.corruption.to_dict() if self.config.recipe.corruption else None,
            "world_size": self.world, "hardware": describe_hardware(self.device),
            "class_weights": None if self.class_weights is None else [round(float(w), 4) for w in self.class_weights]}

    def _read_resume_state(self) -> dict:
        """OUT/last.pt, read before the data so that a checkpoint that cannot be resumed is refused at once."""
        state = torch.load(self.out / "last.pt", map_location=self.device, weights_only=True)
        checkpoint_record(state, self.out / "last.pt")
        return state

    def resume(self) -> int:
        """Continue OUT/last.pt; the epoch to start from."""
        state, self.resume_state = self.resume_state, None  # not kept for the whole run
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.best_miou = state["best_miou"]
        started_as = checkpoint_record(state, self.out / "last.pt")  # it started from the weights it was given
        self.run_info["config"]["model"]["init"] = started_as["config"]["model"]["init"]
        self.run_info["resumed_at_epochs"] = started_as.get("resumed_at_epochs", []) + [state["epoch"]]
        if self.averaged is not None and "averaged" in state:
            self.averaged.load_state_dict(state["averaged"])
        return state["epoch"]

    def run(self) -> dict:
        schedule = self.config.schedule
        start_epoch = 0
        if self.config.run.resume:
            start_epoch = self.resume()
        elif self.rank == 0:
            with open(self.out / "log.csv", "w", newline="") as handle:
                csv.writer(handle).writerow(LOG_COLUMNS)
        for epoch in range(start_epoch, schedule.epochs):
            started = time.time()
            losses = self.train_epoch(epoch)
            averaging = self.averaged is not None and epoch + 1 >= schedule.average_from
            if averaging:
                self.averaged.update_parameters(self.model)
            if self.rank == 0:
                scores = self.validate_and_keep(epoch, averaging)
                self.save_epoch(epoch, losses, scores, time.time() - started)
        if self.world > 1:
            dist.destroy_process_group()
        return {"best_val_miou": self.best_miou, "out": str(self.out)}

    def train_epoch(self, epoch: int) -> list[float]:
        self.train_model.train()
        self.loader.set_epoch(epoch)  # reshuffled and re-drawn per epoch, so a resumed run draws what it would have
        losses = []
        bar = tqdm(total=self.steps_per_epoch, desc=f"epoch {epoch + 1}/{self.config.schedule.epochs}",
                   disable=self.rank != 0)
        for step, batch in enumerate(self.loader):
            if step == self.steps_per_epoch:
                break
            losses.append(self.step(batch))
            bar.update()
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}")
        bar.close()
        return losses

    def step(self, batch) -> float:
        """One optimizer step; the loss: main + weighted auxiliary outputs (+ distillation on the main logits)."""
        x, *teacher_x, y = batch  # teacher_x: the clean crop when the teacher sees it, else absent
        x = x.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        y = y.to(self.device, non_blocking=True)
        recipe = self.config.recipe
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.use_amp):
            output = self.train_model(x)
            logits, aux_outputs = output if isinstance(output, tuple) else (output, ())
            loss = self.criterion(logits, y) + auxiliary_loss(self.criterion, aux_outputs, self.aux_weights, y)
            if self.teacher is not None:
                with torch.no_grad():
                    seen = teacher_x[0].to(self.device).contiguous(memory_format=torch.channels_last) \
                        if teacher_x else x
                    teacher_logits = self.teacher(seen)
                    if self.teacher_order is not None:
                        teacher_logits = teacher_logits[:, self.teacher_order]
                distill = DISTILLATION_LOSSES[recipe.distill_loss]
                loss = loss + recipe.distill_weight * distill(logits, teacher_logits, recipe.distill_temperature)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.regularize is not None:  # on the true gradients: mixed precision's loss scale removed first
            self.scaler.unscale_(self.optimizer)
            self.regularize(self.model)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return loss.item()

    def validate_and_keep(self, epoch: int, averaging: bool) -> tuple[float | str, float | str]:
        """(val mIoU, corrupted val mIoU), '' where not measured this epoch; best.pt when the selection score
        (clean, or the mean of clean and corrupted) beats the best so far."""
        schedule = self.config.schedule
        if (epoch + 1) % schedule.val_every and epoch + 1 != schedule.epochs:
            return "", ""
        candidate = self.model
        if averaging:  # BatchNorm statistics of the average, from one pass over training crops
            candidate = self.averaged.module
            torch.optim.swa_utils.update_bn(self.loader, candidate, self.device)
        classes = self.data.classes.num_classes
        val_miou = round(100 * validate(candidate, self.val_frames, self.device, classes).miou(), 2)
        corrupted_miou, score = "", val_miou
        if self.val_corrupted is not None:
            corrupted_miou = round(100 * validate(candidate, self.val_corrupted, self.device, classes).miou(), 2)
            score = round((val_miou + corrupted_miou) / 2, 2)
        if score > self.best_miou:
            self.best_miou = score
            torch.save({"model": candidate.state_dict(), "epoch": epoch + 1, "val_miou": val_miou,
                        **({"val_corrupted_miou": corrupted_miou} if corrupted_miou != "" else {}),
                        "averaged_epochs": int(self.averaged.n_averaged) if averaging else 0,
                        "run": json.dumps(self.run_info)}, self.out / "best.pt")
        tqdm.write(f"epoch {epoch + 1}: val mIoU {val_miou:.2f}"
                   + (f", corrupted {corrupted_miou:.2f}, selection score {score:.2f}" if corrupted_miou != ""
                      else "") + f" (best {self.best_miou:.2f})")
        return val_miou, corrupted_miou

    def save_epoch(self, epoch: int, losses: list[float], scores: tuple, seconds: float) -> None:
        """The log row, last.pt (everything a resumed run needs) and the curves."""
        with open(self.out / "log.csv", "a", newline="") as handle:
            csv.writer(handle).writerow([epoch + 1, round(float(np.mean(losses)), 4),
                                         f"{self.scheduler.get_last_lr()[0]:.3e}", *scores, round(seconds, 1)])
        torch.save({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(), "epoch": epoch + 1,
                    "best_miou": self.best_miou, "run": json.dumps(self.run_info),
                    **({"averaged": self.averaged.state_dict()} if self.averaged is not None else {})},
                   self.out / "last.pt")
        plot_curves(self.out / "log.csv", self.out / "curves.png")


def train(config: TrainConfig, model: nn.Module | None = None,
          regularize: Callable[[nn.Module], None] | None = None) -> dict:
    """Train as `config` says, from scratch, or fine-tune `model` in place (a pruned network keeps its shapes),
    with `regularize`'s gradient added at each step if given; returns the best validation score and the run
    folder."""
    return Trainer(config, model, regularize).run()


@reports_user_errors
def main(argv: list[str] | None = None) -> None:
    train(parse_args(argv))


if __name__ == "__main__":
    main()
