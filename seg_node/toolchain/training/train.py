"""Train a U-Net-family model on CamVid: `seg-train --data CAMVID --arch mobile_unet --out runs/x`.

Multi-GPU: `torchrun --nproc_per_node N -m seg_node.toolchain.training.train ...` (DistributedDataParallel).
Checkpoints hold only tensors and plain values, so they load with `torch.load(weights_only=True)`.
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
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from ...core.backends.torch_backend import build_for_inference
from ...core.command_line import reports_user_errors
from ...core.model_card import DATA_PLACEHOLDER, InputSpec
from ...core.model_files import model_file, resolve_model
from ...core.preprocess import normalize, resize_for_network
from ..data import CAMVID_CLASSES, open_dataset
from ..data.camvid import dataset_identity
from ..evaluation.metrics import ConfusionMatrix
from ...core.architectures import build_model
from ...core.architectures.weights import load_weights
from .augment import CorruptionRecipe, augment, corruption_transform, parse_corruption
from .losses import CLASS_WEIGHTINGS, LOSSES, build_loss, distillation_loss, median_frequency_weights

OPTIMIZERS = {
    "adamw": lambda params, lr, wd: torch.optim.AdamW(params, lr=lr, weight_decay=wd),
    "sgd": lambda params, lr, wd: torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=wd, nesterov=True),
}
DEFAULT_CROP = (288, 384)
DEFAULT_SCALE_RANGE = (0.75, 1.5)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="CamVid folder (default: $CAMVID_ROOT)")
    p.add_argument("--layout", default="auto", help="camvid11, camvid32 or auto")
    p.add_argument("--train-splits", nargs="+", default=["train"], choices=["train", "val"],
                   help="splits to train on; 'train val' is the final retraining of a recipe fixed beforehand on "
                        "train/val (val then no longer measures anything: take last.pt, not best.pt)")
    p.add_argument("--arch", default='{"name": "mobile_unet", "pretrained": true}',
                   help="architecture config as JSON, or just a name (unet, attention_unet, mobile_unet)")
    p.add_argument("--loss", default="ce", choices=sorted(LOSSES))
    p.add_argument("--class-weights", default="median_frequency", choices=CLASS_WEIGHTINGS)
    p.add_argument("--optimizer", default="adamw", choices=sorted(OPTIMIZERS))
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--schedule", default="poly", choices=["poly", "cosine", "constant"])
    p.add_argument("--warmup-epochs", type=float, default=1.0)
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--crop", type=int, nargs=2, default=list(DEFAULT_CROP), metavar=("H", "W"))
    p.add_argument("--scale-range", type=float, nargs=2, default=list(DEFAULT_SCALE_RANGE), metavar=("MIN", "MAX"))
    p.add_argument("--input-size", type=int, nargs=2, default=[360, 480], metavar=("H", "W"),
                   help="network input size for validation and the model card")
    p.add_argument("--average-from", type=int, default=0, metavar="EPOCH",
                   help="stochastic weight averaging: from this epoch on, average the weights after every epoch; "
                        "validation and best.pt use the average, its BatchNorm statistics recomputed on "
                        "training crops (0: off; pair with --schedule constant)")
    p.add_argument("--val-every", type=int, default=2, help="validate every N epochs (and after the last)")
    p.add_argument("--max-steps-per-epoch", type=int, default=0, help="cap steps per epoch (smoke tests)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--amp", action="store_true", help="mixed precision (CUDA only)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="run folder: checkpoints, log.csv, curves.png")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--init", help="start from these weights (a run's best.pt or last.pt, or a .safetensors file) "
                                  "with a fresh optimizer and schedule: a second training cycle")
    p.add_argument("--teacher", help="model card of a trained model to distil from (knowledge distillation): "
                                     "the loss adds distill-weight x T^2 x KL(teacher || student) per pixel, "
                                     "both softened by the temperature T")
    p.add_argument("--distill-weight", type=float, default=1.0, help="weight of the distillation term")
    p.add_argument("--distill-temperature", type=float, default=2.0, help="softmax temperature of distillation")
    p.add_argument("--corruption", default="",
                   help="camera corruptions on training crops (albumentations): 'default' for the default recipe, "
                        "or JSON overriding its probabilities and strength, e.g. '{\"noise\": 0.6, \"strength\": "
                        "1.2}' (keys: " + ", ".join(CorruptionRecipe().to_dict()) + "); empty: off")
    p.add_argument("--teacher-input", default="augmented", choices=["augmented", "clean"],
                   help="what the teacher sees: the student's (corrupted) crop, or the same crop before corruption "
                        "(a clean teacher's answer taught to a student seeing the corrupted frame)")
    p.add_argument("--val-corrupted", type=int, default=0, metavar="SEVERITY",
                   help="also validate on val frames each corrupted at this severity (frame i by the i-th benchmark "
                        "corruption in turn) and keep the epoch best on the mean of clean and corrupted mIoU "
                        "(0: clean val only)")
    args = p.parse_args(argv)
    if args.val_corrupted not in (0, 1, 2, 3, 4, 5):
        p.error(f"--val-corrupted must be a severity 1-5, or 0 for off, got {args.val_corrupted}")
    try:
        args.corruption_recipe = parse_corruption(args.corruption)
    except ValueError as exc:
        p.error(f"--corruption: {exc}")
    if args.teacher_input == "clean" and not (args.teacher and args.corruption_recipe):
        p.error("--teacher-input clean needs --teacher and --corruption (otherwise both inputs are the same)")
    problem = distillation_problem(args.teacher, args.distill_weight, args.distill_temperature)
    if problem:
        p.error(problem)
    if args.init and args.resume:
        p.error("--init starts a new run from given weights, --resume continues OUT/last.pt: use one")
    if args.average_from < 0 or args.average_from > args.epochs:
        p.error(f"--average-from must be an epoch from 1 to --epochs ({args.epochs}), or 0 for off")
    if args.init and not Path(args.init).is_file():
        p.error(f"--init {args.init}: no such file")
    return args


def distillation_problem(teacher: str | os.PathLike | None, weight: float, temperature: float) -> str | None:
    """What is wrong with these distillation options, if anything: seg-train and seg-prune both ask."""
    if weight < 0 or temperature <= 0:
        return f"distillation needs weight >= 0 and temperature > 0, got {weight} and {temperature}"
    if teacher and not weight:
        return "a teacher is used only for distillation: give a distillation weight > 0 too"
    if teacher and not Path(teacher).is_file():
        return f"teacher {teacher}: no such model card"
    return None


def parse_arch(text: str) -> dict:
    text = text.strip()
    return json.loads(text) if text.startswith("{") else {"name": text}


def corrupted_copies(images: list[np.ndarray], severity: int) -> list[np.ndarray]:
    """Frame i through the i-th benchmark corruption (cycling), seeded by i: a fixed corrupted val set."""
    from ..evaluation.corruptions import CORRUPTIONS, corrupt
    names = sorted(CORRUPTIONS)
    return [corrupt(image, names[i % len(names)], severity, seed=i)
            for i, image in enumerate(tqdm(images, desc="corrupting val", leave=False))]


def load_split(root, split, layout, desc):
    """(images, labels, the split's identity for the card: name and checksum, not a path)."""
    dataset = open_dataset(root, split, layout)
    pairs = [dataset.load(s) for s in tqdm(dataset.items(), desc=f"loading {desc}", leave=False)]
    return [p[0] for p in pairs], [p[1] for p in pairs], dataset_identity(dataset)


def make_batch(images, labels, indices, rng, args, spec, corruption=None):
    """(student input, teacher input or None, labels): the teacher's is the clean crop with --teacher-input
    clean, else the student's own."""
    xs, cleans, ys = [], [], []
    for i in indices:
        clean, corrupted, label = augment(images[i], labels[i], rng, tuple(args.crop), tuple(args.scale_range),
                                          corruption)
        xs.append(normalize(corrupted, spec, "rgb"))
        if args.teacher_input == "clean":
            cleans.append(normalize(clean, spec, "rgb"))
        ys.append(label.astype(np.int64))
    teacher_x = torch.from_numpy(np.stack(cleans)) if cleans else None
    return torch.from_numpy(np.stack(xs)), teacher_x, torch.from_numpy(np.stack(ys))


@torch.no_grad()
def validate(model, images, labels, spec, device, num_classes) -> ConfusionMatrix:
    """mIoU at the network input size, with the same resize and normalization as the node's pipeline."""
    model.eval()
    matrix = ConfusionMatrix(num_classes)
    for image, label in zip(images, labels):
        x = torch.from_numpy(normalize(resize_for_network(image, spec), spec, "rgb"))[None].to(device)
        x = x.contiguous(memory_format=torch.channels_last)
        pred = model(x).argmax(1)[0].to(torch.uint8).cpu().numpy()
        if pred.shape != label.shape:
            pred = cv2.resize(pred, (label.shape[1], label.shape[0]), interpolation=cv2.INTER_NEAREST)
        matrix.update(pred, label)
    return matrix


@torch.no_grad()
def recompute_batchnorm(model, images, labels, rng, args, spec, device) -> None:
    """BatchNorm statistics of averaged weights, from one pass over augmented training crops: the running
    statistics of the weights that were averaged do not belong to their average."""
    order = rng.permutation(len(images))
    batches = (make_batch(images, labels, order[start:start + args.batch_size], rng, args, spec)[0]
               .to(device).contiguous(memory_format=torch.channels_last)
               for start in range(0, len(order) - args.batch_size + 1, args.batch_size))
    torch.optim.swa_utils.update_bn(batches, model)


def load_initial_weights(model: torch.nn.Module, path: str) -> None:
    """Weights only (tensor formats, no unpickling of classes); the architecture comes from --arch."""
    if path.endswith(".safetensors"):
        load_weights(model, path)
    else:
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["model"])


def load_teacher(card_path: str, spec: InputSpec, device: torch.device) -> torch.nn.Module:
    """A frozen model to distil from; it must predict the same classes from the same normalized input."""
    card, path = resolve_model(card_path)
    if list(card.classes) != list(CAMVID_CLASSES):
        raise SystemExit(f"--teacher {card_path}: its classes {card.classes} are not CamVid's {list(CAMVID_CLASSES)}")
    if (card.input.channel_order, card.input.mean, card.input.std) != (spec.channel_order, spec.mean, spec.std):
        raise SystemExit(f"--teacher {card_path}: its input normalization {card.input} differs from training's "
                         f"{spec}; distil from a model trained with the same input")
    teacher = build_for_inference(card, model_file(card, path, "torch")).to(device)
    return teacher.to(memory_format=torch.channels_last).requires_grad_(False)


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


def setup_distributed(args):
    """(rank, world_size, device); torchrun sets WORLD_SIZE/RANK/LOCAL_RANK."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but torch sees no CUDA device")
    if world == 1:
        return 0, 1, torch.device(args.device)
    local_rank = int(os.environ["LOCAL_RANK"])
    backend = "nccl" if args.device.startswith("cuda") else "gloo"
    dist.init_process_group(backend)
    device = torch.device(f"cuda:{local_rank}") if backend == "nccl" else torch.device("cpu")
    if backend == "nccl":
        torch.cuda.set_device(device)
    return dist.get_rank(), world, device


def train(argv: list[str] | None = None, model: torch.nn.Module | None = None) -> dict:
    """Train from scratch, or fine-tune `model` in place (a pruned network keeps its shapes)."""
    args = parse_args(argv)
    rank, world, device = setup_distributed(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    random.seed(args.seed + rank)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed + rank)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    arch = parse_arch(args.arch)
    spec = InputSpec(height=args.input_size[0], width=args.input_size[1])
    num_classes = len(CAMVID_CLASSES)
    training_splits = list(dict.fromkeys(args.train_splits))
    loaded = {split: load_split(args.data, split, args.layout, split)  # each split read once, val included
              for split in dict.fromkeys(training_splits + (["val"] if rank == 0 else []))}
    train_images = [image for split in training_splits for image in loaded[split][0]]
    train_labels = [label for split in training_splits for label in loaded[split][1]]
    train_identities = [loaded[split][2] for split in training_splits]
    if "val" in training_splits and rank == 0:
        print("seg-train: val is among the training splits, so its figures below are not held out: "
              "the run's result is last.pt, by the recipe fixed beforehand, not best.pt", flush=True)
    val_images, val_labels, val_identity = loaded["val"] if rank == 0 else ([], [], None)
    val_corrupted = corrupted_copies(val_images, args.val_corrupted) if args.val_corrupted else None
    weights = (torch.from_numpy(median_frequency_weights(train_labels, num_classes))
               if args.class_weights == "median_frequency" else None)

    if model is None:
        model = build_model(arch, num_classes)
        if args.init:
            load_initial_weights(model, args.init)
    model = model.to(device)
    model = model.to(memory_format=torch.channels_last)
    criterion = build_loss(args.loss, weights).to(device)
    teacher = load_teacher(args.teacher, spec, device) if args.teacher else None
    optimizer = OPTIMIZERS[args.optimizer](model.parameters(), args.lr, args.weight_decay)
    use_amp = args.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    per_rank = len(train_images) // world
    steps_per_epoch = max(1, per_rank // args.batch_size)
    if args.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, args.max_steps_per_epoch)
    total_steps = steps_per_epoch * args.epochs
    warmup = int(args.warmup_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, warmup, args.schedule))

    averaged = torch.optim.swa_utils.AveragedModel(model) if args.average_from else None
    recipe = args.corruption_recipe
    corruption = corruption_transform(recipe, args.seed) if recipe else None
    run_info = {"arch": arch, "args": {**{k: v for k, v in vars(args).items() if k != "corruption_recipe"},
                                       "data": DATA_PLACEHOLDER},
                "data": [*train_identities, val_identity],
                "corruption": recipe.to_dict() if recipe else None,
                "world_size": world, "hardware": describe_hardware(device),
                "class_weights": None if weights is None else [round(float(w), 4) for w in weights]}
    start_epoch, best_miou = 0, -1.0
    last_path, best_path, log_path = out / "last.pt", out / "best.pt", out / "log.csv"
    if args.resume:
        state = torch.load(last_path, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, best_miou = state["epoch"], state["best_miou"]
        started_as = json.loads(state["run"])  # a resumed run still started from the weights it was given
        run_info["args"]["init"] = started_as["args"].get("init")
        run_info["resumed_at_epochs"] = started_as.get("resumed_at_epochs", []) + [start_epoch]
        if averaged is not None and "averaged" in state:
            averaged.load_state_dict(state["averaged"])
        rng = np.random.default_rng(args.seed + rank + 1000 * start_epoch)
    elif rank == 0:
        with open(log_path, "w", newline="") as handle:
            csv.writer(handle).writerow(["epoch", "train_loss", "lr", "val_miou", "val_corrupted_miou", "seconds"])
    train_model = model
    if world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    for epoch in range(start_epoch, args.epochs):
        started = time.time()
        train_model.train()
        order = rng.permutation(len(train_images))[rank * per_rank:(rank + 1) * per_rank]
        if corruption is not None:  # reseeded per epoch, so a resumed run draws what it would have drawn
            corruption.set_random_seed(args.seed + rank + 1000 * epoch)
        losses = []
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{args.epochs}", disable=rank != 0)
        for step in bar:
            x, teacher_x, y = make_batch(train_images, train_labels,
                                         order[step * args.batch_size:(step + 1) * args.batch_size], rng, args,
                                         spec, corruption)
            x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            y = y.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                logits = train_model(x)
                loss = criterion(logits, y)
                if teacher is not None:
                    with torch.no_grad():
                        teacher_logits = teacher(x if teacher_x is None else teacher_x.to(device).contiguous(
                            memory_format=torch.channels_last))
                    loss = loss + args.distill_weight * distillation_loss(logits, teacher_logits,
                                                                          args.distill_temperature)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
        averaging = averaged is not None and epoch + 1 >= args.average_from
        if averaging:
            averaged.update_parameters(model)
        if rank != 0:
            continue
        val_miou = corrupted_miou = ""
        if (epoch + 1) % args.val_every == 0 or epoch + 1 == args.epochs:
            candidate = model
            if averaging:
                candidate = averaged.module
                recompute_batchnorm(candidate, train_images, train_labels, rng, args, spec, device)
            val_miou = round(100 * validate(candidate, val_images, val_labels, spec, device,
                                            num_classes).mean_iou(), 2)
            score = val_miou
            if val_corrupted is not None:
                corrupted_miou = round(100 * validate(candidate, val_corrupted, val_labels, spec, device,
                                                      num_classes).mean_iou(), 2)
                score = round((val_miou + corrupted_miou) / 2, 2)
            if score > best_miou:
                best_miou = score
                torch.save({"model": candidate.state_dict(), "epoch": epoch + 1, "val_miou": val_miou,
                            **({"val_corrupted_miou": corrupted_miou} if corrupted_miou != "" else {}),
                            "averaged_epochs": int(averaged.n_averaged) if averaging else 0,
                            "run": json.dumps(run_info)}, best_path)
            tqdm.write(f"epoch {epoch + 1}: val mIoU {val_miou:.2f}"
                       + (f", corrupted {corrupted_miou:.2f}, selection score {score:.2f}" if corrupted_miou != ""
                          else "") + f" (best {best_miou:.2f})")
        with open(log_path, "a", newline="") as handle:
            csv.writer(handle).writerow([epoch + 1, round(float(np.mean(losses)), 4),
                                         f"{scheduler.get_last_lr()[0]:.3e}", val_miou, corrupted_miou,
                                         round(time.time() - started, 1)])
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch + 1,
                    "best_miou": best_miou, "run": json.dumps(run_info),
                    **({"averaged": averaged.state_dict()} if averaged is not None else {})}, last_path)
        plot_curves(log_path, out / "curves.png")
    if world > 1:
        dist.destroy_process_group()
    return {"best_val_miou": best_miou, "out": str(out)}


@reports_user_errors
def main(argv: list[str] | None = None) -> None:
    train(argv)


if __name__ == "__main__":
    main()
