"""Structured pruning with Torch-Pruning's DepGraph: channels are removed for real, across skip
concatenations, residual adds and depthwise convolutions, so the pruned network is smaller and faster.

    seg-prune --model models/camvid_mobile_unet.json --ratio 0.55 --round-to 4 --scope decoder \\
              --steps 2 --fine-tune-epochs 10 --data $CAMVID_ROOT --out models/camvid_mobile_unet_pruned
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from ...core.backends.torch_backend import build_for_inference
from ...core.command_line import reports_user_errors
from ...core.model_card import ModelCard, command_line
from ...core.model_files import model_file, resolve_model
from ...core.preprocess import normalize
from ..data import open_dataset
from ..export import export_model, parity_frames
from ..training.augment import augment, parse_corruption
from ..training.losses import CLASS_WEIGHTINGS, LOSSES, build_loss
from ..training.train import DEFAULT_CROP, DEFAULT_SCALE_RANGE, distillation_problem, train

IMPORTANCE_CRITERIA = {
    "l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
    "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
    "taylor": lambda: tp.importance.GroupTaylorImportance(),
    "bn_scale": lambda: tp.importance.BNScaleImportance(),
}


def count_macs_and_params(model: nn.Module, height: int, width: int) -> tuple[int, int]:
    """Measured on a forward pass at the given input size, not assumed from the pruning ratio."""
    was_training = model.training
    model.eval()
    macs, params = tp.utils.count_ops_and_params(model, torch.zeros(1, 3, height, width))
    model.train(was_training)
    return int(macs), int(params)


SCOPES = ("all", "decoder")


def make_pruner(model: nn.Module, ratio: float, criterion: str, height: int, width: int, steps: int = 1,
                global_pruning: bool = False, round_to: int | None = 8, max_layer_ratio: float = 0.8,
                scope: str = "all", layer_ratios: dict[str, float] | None = None):
    """A DepGraph pruner that never touches the classifier (its channels are the classes) and keeps at least
    1 - max_layer_ratio of every layer (global pruning can otherwise shrink a stage to one channel).

    scope 'decoder' leaves the encoder whole: an ImageNet-pretrained encoder loses what fine-tuning on CamVid
    cannot give back, while the decoder's high-resolution stages hold most of the MACs.
    layer_ratios overrides the ratio for named submodules (e.g. {"decoder.3": 0.6}): a stage at stride 2
    costs 16x the MACs per channel of one at stride 8, so thinning it buys the most speed per channel; but a
    last stage narrower than the classes it feeds collapses thin classes (8 channels for 11 classes did).
    """
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    if criterion not in IMPORTANCE_CRITERIA:
        raise ValueError(f"unknown criterion {criterion!r}; known: {sorted(IMPORTANCE_CRITERIA)}")
    layer_ratios = layer_ratios or {}
    for value in (ratio, *layer_ratios.values()):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"pruning ratio must be in [0, 1), got {value}")
    if any(value > max_layer_ratio for value in layer_ratios.values()):
        raise ValueError(f"layer ratios {layer_ratios} exceed the per-layer cap {max_layer_ratio}")
    modules = dict(model.named_modules())
    unknown = sorted(set(layer_ratios) - set(modules))
    if unknown:
        raise ValueError(f"no submodule named {unknown} in this model; top-level ones: "
                         f"{[name for name, _ in model.named_children()]}")
    return tp.pruner.MetaPruner(
        model, torch.zeros(1, 3, height, width), importance=IMPORTANCE_CRITERIA[criterion](),
        pruning_ratio=ratio, pruning_ratio_dict={modules[name]: value for name, value in layer_ratios.items()},
        global_pruning=global_pruning, iterative_steps=steps, round_to=round_to,
        max_pruning_ratio=max_layer_ratio,
        ignored_layers=[model.classifier] + ([model.encoder] if scope == "decoder" else []))


def accumulate_taylor_gradients(model: nn.Module, batches) -> None:
    """Taylor importance needs d(loss)/d(weight): accumulate it over a few labelled batches."""
    model.zero_grad()
    model.train()
    criterion = build_loss("ce", None)
    for x, y in batches:
        criterion(model(x), y).backward()


def labelled_batches(data: str | None, count: int, batch_size: int, crop: tuple[int, int],
                     scale_range: tuple[float, float], spec, seed: int = 0):
    """A few augmented, normalized training batches (images, class ids) for Taylor importance."""
    dataset = open_dataset(data, "train")
    samples = dataset.items()
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(count):
        xs, ys = [], []
        for index in rng.choice(len(samples), batch_size, replace=False):
            _, image, label = augment(*dataset.load(samples[index]), rng, crop, scale_range)
            xs.append(normalize(image, spec, "rgb"))
            ys.append(label.astype(np.int64))
        batches.append((torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))))
    return batches


def distillation_teacher(card: ModelCard, card_path: Path, weight: float, temperature: float,
                         teacher: str | Path | None) -> Path | None:
    """The card to distil from (None for weight 0). It defaults to the model as given, which must then be
    unpruned: a pruned model taught by itself is only held in place."""
    problem = distillation_problem(teacher, weight, temperature)
    if problem:
        raise ValueError(problem)
    if not weight:
        return None
    if teacher is None and "base_model" in card.compression:
        raise ValueError(f"{card.name} was pruned before: name the model to distil from (its base, "
                         f"{card.compression['base_model']}) with --teacher")
    return Path(teacher or card_path)


def prune(card: ModelCard, card_path: Path, ratio: float, criterion: str, steps: int, fine_tune_epochs: int,
          data: str | None, global_pruning: bool = False, round_to: int | None = 8, max_layer_ratio: float = 0.8,
          lr: float = 3e-4, batch_size: int = 8, threads: int = 0, seed: int = 0, scope: str = "all",
          layer_ratios: dict[str, float] | None = None, distill_weight: float = 0.0,
          distill_temperature: float = 2.0, teacher: Path | None = None, loss: str = "ce",
          class_weights: str = "median_frequency", crop: tuple[int, int] = DEFAULT_CROP,
          scale_range: tuple[float, float] = DEFAULT_SCALE_RANGE, corruption: str = "",
          teacher_input: str = "augmented", val_corrupted: int = 0,
          work_dir: Path | None = None, train_splits: tuple[str, ...] = ("train",)) -> tuple[nn.Module, dict]:
    """Prune `steps` times up to `ratio`, fine-tuning `fine_tune_epochs` on CamVid `train_splits` after each step;
    with distill_weight > 0 a teacher (default: the model as given, if unpruned) guides the fine-tuning;
    `loss`, `class_weights`, `crop`, `scale_range`, `corruption`, `teacher_input` and `val_corrupted` are
    seg-train's. With `work_dir` each step fine-tunes in `work_dir/step<N>` and continues a run found there
    (seg-train --resume), so a long CPU run survives interruptions; without it, in a temporary folder.

    A model that was pruned before keeps its original as the base, so MACs saved are counted from the
    unpruned model and the earlier record is kept under `previous`."""
    spec = card.input
    model = build_for_inference(card, model_file(card, card_path, "torch"))
    previous = card.compression if "base_model" in card.compression else None
    base_model, base_macs, base_params = (
        (previous["base_model"], previous["base_macs"], previous["base_params"]) if previous
        else (card.name, *count_macs_and_params(model, spec.height, spec.width)))
    teacher = distillation_teacher(card, card_path, distill_weight, distill_temperature, teacher)
    distillation = (["--teacher", str(teacher), "--distill-weight", str(distill_weight),
                     "--distill-temperature", str(distill_temperature)] if teacher else [])
    pruner = make_pruner(model, ratio, criterion, spec.height, spec.width, steps, global_pruning, round_to,
                         max_layer_ratio, scope, layer_ratios)
    val_held_out = "val" not in train_splits  # else val was trained on: it selects and measures nothing
    history = []
    for step in range(steps):
        if criterion == "taylor":
            batches = labelled_batches(data, 4, batch_size, crop, scale_range, spec, seed + step)
            accumulate_taylor_gradients(model, batches)
        pruner.step()
        model.zero_grad(set_to_none=True)
        entry = {"step": step + 1, "macs": count_macs_and_params(model, spec.height, spec.width)[0]}
        if fine_tune_epochs:
            with tempfile.TemporaryDirectory() as temporary:
                run_dir = Path(work_dir) / f"step{step + 1}" if work_dir else Path(temporary)
                resume = ["--resume"] if (run_dir / "last.pt").is_file() else []
                result = train(["--data", str(data) if data else "", "--arch", json.dumps(card.architecture),
                                "--epochs", str(fine_tune_epochs), "--lr", str(lr), "--warmup-epochs", "0",
                                "--batch-size", str(batch_size), "--val-every", "1", "--threads", str(threads),
                                "--seed", str(seed + step), "--loss", loss, "--class-weights", class_weights,
                                "--crop", *map(str, crop), "--scale-range", *map(str, scale_range),
                                "--corruption", corruption, "--teacher-input", teacher_input,
                                "--val-corrupted", str(val_corrupted), "--train-splits", *train_splits,
                                "--out", str(run_dir), *distillation, *resume], model=model)
                kept = "best.pt" if val_held_out else "last.pt"
                model.load_state_dict(torch.load(run_dir / kept, weights_only=True)["model"])
            if val_held_out:
                entry["val_miou"] = result["best_val_miou"]
        history.append(entry)
    model = model.eval().to(memory_format=torch.contiguous_format)
    macs, params = count_macs_and_params(model, spec.height, spec.width)
    summary = {"method": "structured (Torch-Pruning DepGraph)", "ratio": ratio, "scope": scope,
               "layer_ratios": layer_ratios or {}, "criterion": criterion,
               "global": global_pruning, "round_to": round_to, "max_layer_ratio": max_layer_ratio, "steps": steps,
               "fine_tune_epochs_per_step": fine_tune_epochs, "fine_tune_lr": lr,
               "fine_tune_loss": {"loss": loss, "class_weights": class_weights},
               **({"fine_tune_splits": list(train_splits)} if tuple(train_splits) != ("train",) else {}),
               "fine_tune_augmentation": {"crop": list(crop), "scale_range": list(scale_range),
                                          **({"corruption": parse_corruption(corruption).to_dict(),
                                              "teacher_input": teacher_input} if corruption else {})},
               **({"selected_on": f"mean of clean and severity-{val_corrupted} corrupted val mIoU"}
                  if val_corrupted and val_held_out else {}),
               "base_model": base_model,
               "distillation": ({"teacher": resolve_model(teacher)[0].name, "weight": distill_weight,
                                 "temperature": distill_temperature} if teacher else None),
               "base_macs": base_macs, "base_params": base_params, "macs": macs, "params": params,
               "macs_reduction": round(1 - macs / base_macs, 4), "history": history,
               **({"previous": previous} if previous else {})}
    return model, summary


def overall_ratio(compression: dict) -> float:
    """The share of channels a chain of pruning passes removed (each pass's ratio applies to what was left)."""
    earlier = overall_ratio(compression["previous"]) if "previous" in compression else 0.0
    return 1 - (1 - compression["ratio"]) * (1 - earlier)


def parse_layer_ratio(text: str) -> tuple[str, float]:
    name, separator, value = text.partition("=")
    try:
        if not separator or not name:
            raise ValueError
        return name, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME=RATIO (e.g. decoder.3=0.75), got {text!r}") from None


@reports_user_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="card (or a file beside it) of the model to prune")
    parser.add_argument("--ratio", type=float, required=True, help="fraction of channels removed per layer")
    parser.add_argument("--criterion", default="l2", choices=sorted(IMPORTANCE_CRITERIA))
    parser.add_argument("--global", dest="global_pruning", action="store_true",
                        help="rank channels across layers instead of the same ratio everywhere")
    parser.add_argument("--round-to", type=int, default=8, help="keep widths multiples of this (0: off)")
    parser.add_argument("--max-layer-ratio", type=float, default=0.8, help="per-layer pruning cap")
    parser.add_argument("--steps", type=int, default=2, help="iterative pruning steps")
    parser.add_argument("--fine-tune-epochs", type=int, default=8, help="epochs of fine-tuning after each step")
    parser.add_argument("--lr", type=float, default=3e-4, help="fine-tuning learning rate (training used 1e-3)")
    parser.add_argument("--scope", default="all", choices=SCOPES, help="prune everything, or the decoder only")
    parser.add_argument("--layer-ratio", action="append", default=[], type=parse_layer_ratio, metavar="NAME=RATIO",
                        help="ratio for one submodule, e.g. decoder.3=0.75 (repeatable)")
    parser.add_argument("--distill-weight", type=float, default=0.0,
                        help="fine-tune with knowledge distillation at this weight (0: off), from --teacher")
    parser.add_argument("--distill-temperature", type=float, default=2.0)
    parser.add_argument("--teacher", help="card of the model to distil from (default: --model, if unpruned; "
                                          "to go on fine-tuning a pruned model, name its unpruned base)")
    parser.add_argument("--loss", default="ce", choices=sorted(LOSSES), help="fine-tuning loss (as seg-train's)")
    parser.add_argument("--class-weights", default="median_frequency", choices=CLASS_WEIGHTINGS)
    parser.add_argument("--crop", type=int, nargs=2, default=list(DEFAULT_CROP), metavar=("H", "W"),
                        help="fine-tuning crop (as seg-train's)")
    parser.add_argument("--scale-range", type=float, nargs=2, default=list(DEFAULT_SCALE_RANGE),
                        metavar=("MIN", "MAX"), help="fine-tuning random scale (as seg-train's)")
    parser.add_argument("--corruption", default="", help="camera corruptions while fine-tuning (as seg-train's)")
    parser.add_argument("--teacher-input", default="augmented", choices=["augmented", "clean"],
                        help="what the teacher sees (as seg-train's)")
    parser.add_argument("--val-corrupted", type=int, default=0, metavar="SEVERITY",
                        help="select epochs on clean and corrupted val (as seg-train's)")
    parser.add_argument("--work-dir", help="keep each step's fine-tuning run here and resume one found there "
                                           "(default: a temporary folder)")
    parser.add_argument("--train-splits", nargs="+", default=["train"], choices=["train", "val"],
                        help="splits to fine-tune on (as seg-train's; with val, each step keeps its last epoch)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--data", help="CamVid folder (default: $CAMVID_ROOT)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="output stem, e.g. models/camvid_mobile_unet_pruned")
    args = parser.parse_args(argv)
    card, card_path = resolve_model(args.model)
    try:
        distillation_teacher(card, card_path, args.distill_weight, args.distill_temperature, args.teacher)
    except ValueError as exc:
        parser.error(str(exc))
    model, summary = prune(card, card_path, args.ratio, args.criterion, args.steps, args.fine_tune_epochs,
                           args.data, args.global_pruning, args.round_to or None, args.max_layer_ratio, args.lr,
                           args.batch_size, args.threads, args.seed, args.scope, dict(args.layer_ratio),
                           args.distill_weight, args.distill_temperature, args.teacher, args.loss,
                           args.class_weights, tuple(args.crop), tuple(args.scale_range), args.corruption,
                           args.teacher_input, args.val_corrupted, args.work_dir, tuple(args.train_splits))
    summary["command"] = command_line("seg-prune", argv)
    exported = export_model(
        model, args.out, name=Path(args.out).name, architecture=card.architecture, classes=card.classes,
        palette=card.palette, spec=card.input, parity_inputs=parity_frames(args.data, 8, card.input),
        training=card.training, compression=summary,
        notes=(f"{card.notes}; then " if "previous" in summary else f"{card.name} ")
              + (f"pruned structurally by {args.ratio:.0%} ({args.scope}, {args.criterion}"
                 + "".join(f", {name} by {value:.0%}" for name, value in args.layer_ratio) + "), "
                 if args.ratio else "")
              + f"fine-tuned on CamVid {'+'.join(args.train_splits)}"
              + (f", distilled from {summary['distillation']['teacher']}" if summary["distillation"] else ""))
    print(f"pruned {summary['base_model']}: MACs {summary['base_macs'] / 1e9:.2f} G -> {summary['macs'] / 1e9:.2f} G "
          f"({summary['macs_reduction']:.0%} fewer), params {summary['base_params'] / 1e6:.2f} M -> "
          f"{summary['params'] / 1e6:.2f} M; wrote {args.out}.{{onnx,safetensors,json}} ({exported.name})")


if __name__ == "__main__":
    main()
