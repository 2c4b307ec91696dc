"""Structured pruning with Torch-Pruning's DepGraph: channels are removed for real, across skip
concatenations, residual adds and depthwise convolutions, so the pruned network is smaller and faster.

    seg-prune --model models/camvid_mobile_unet.json --ratio 0.55 --round-to 4 --scope decoder \\
              --steps 2 --fine-tune-epochs 10 --data $CAMVID_ROOT --out models/camvid_mobile_unet_pruned

Each step is fine-tuned as seg-train trains (its data set, recipe and run options), on any registered data set whose
classes match the model's by name (--class-map for others). With --distill-weight > 0 the teacher defaults to
--model itself when it is unpruned; to go on fine-tuning a pruned model, name its unpruned base with --teacher.
As a library: `prune(card, card_path, PruningConfig(...), FineTuning(...))` (compression.config).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import replace
from pathlib import Path

import torch
import torch_pruning as tp
from torch import nn

from ...core.architectures.blocks import KEPT_WHOLE_SCOPES
from ...core.backends.torch_backend import build_for_inference
from ...core.command_line import reports_user_errors
from ...core.model_card import ModelCard, command_line
from ...core.model_files import model_file, resolve_model
from ..data.base import ClassTable, SegmentationDataset
from ..data.loader import make_loader
from ..export import add_native_logits_argument, export_model, parity_dataset, parity_frames
from ..training.arguments import (
    add_data_arguments,
    add_recipe_arguments,
    add_run_arguments,
    data_from_args,
    recipe_from_args,
)
from ..training.batches import TrainingCrops
from ..training.config import ModelConfig, RecipeConfig, RunConfig, TrainConfig
from ..training.losses import build_loss
from ..training.train import auxiliary_loss, train
from .config import (
    FINE_TUNING_SCHEDULE,
    IMPORTANCE_CRITERIA,
    SPARSE_TRAINING_PRUNERS,
    FineTuning,
    PruningConfig,
    PruningConfigError,
)

#: labelled batches whose loss gradients Taylor importance accumulates
TAYLOR_BATCHES = 4


def count_macs_and_params(model: nn.Module, height: int, width: int) -> tuple[int, int]:
    """Measured on a forward pass at the given input size, not assumed from the pruning ratio."""
    was_training = model.training
    model.eval()
    macs, params = tp.utils.count_ops_and_params(model, torch.zeros(1, 3, height, width))
    model.train(was_training)
    return int(macs), int(params)


def make_pruner(model: nn.Module, config: PruningConfig, height: int, width: int) -> tp.pruner.MetaPruner:
    """A DepGraph pruner that leaves whole what the architecture says must stay (`kept_whole`: the classifier and
    auxiliary heads, whose channels are the classes; for scope 'decoder' the encoder, for 'expanded' its residual
    stream) and keeps at least 1 - max_layer_ratio of every layer (global pruning can otherwise shrink a stage to
    one channel). The graph is traced through every output (`all_outputs`), so pruning a trunk layer narrows the
    auxiliary heads reading it.

    Scope 'decoder': an ImageNet-pretrained encoder loses what fine-tuning on a small data set cannot give back,
    while the decoder's high-resolution stages hold most of the MACs. Layer ratios: a stage at stride 2 costs 16x
    the MACs per channel of one at stride 8, so thinning it buys the most speed per channel; but a last stage
    narrower than the classes it feeds collapses thin classes (8 channels for 11 classes did). With sparse training
    it is the criterion's regularizing pruner (SPARSE_TRAINING_PRUNERS), whose `regularize` the training steps
    call."""
    kept = kept_whole(model, config.scope)
    pruner_class, regularization = ((SPARSE_TRAINING_PRUNERS[config.criterion], {"reg": config.sparse_reg})
                                    if config.sparse_epochs else (tp.pruner.MetaPruner, {}))
    return pruner_class(
        model, torch.zeros(1, 3, height, width), importance=IMPORTANCE_CRITERIA[config.criterion](), **regularization,
        pruning_ratio=config.ratio, pruning_ratio_dict=layer_ratio_dict(model, config, kept),
        global_pruning=config.global_pruning, iterative_steps=config.steps, round_to=config.round_to,
        max_pruning_ratio=config.max_layer_ratio, ignored_layers=kept,
        forward_fn=lambda network, x: network.all_outputs(x))


def layer_ratio_dict(model: nn.Module, config: PruningConfig, kept: list[nn.Module]) -> dict[nn.Module, float]:
    """Torch-Pruning's per-layer ratios: the named submodules' (`layer_ratios`), then, for every convolution that
    the ratio it gets would cut below `min_channels`, the ratio that leaves that many (later entries win)."""
    modules = dict(model.named_modules())
    unknown = sorted(set(config.layer_ratios) - set(modules))
    if unknown:
        raise PruningConfigError(f"no submodule named {unknown} in this model; top-level ones: "
                                 f"{[name for name, _ in model.named_children()]}")
    ratios = {modules[name]: value for name, value in config.layer_ratios.items()}
    if not config.min_channels:
        return ratios
    named = {layer: value for name, value in config.layer_ratios.items() for layer in modules[name].modules()}
    whole = {layer for module in kept for layer in module.modules()}
    for layer in model.modules():
        if isinstance(layer, nn.Conv2d) and layer not in whole:
            ratio = named.get(layer, config.ratio)
            if layer.out_channels * (1 - ratio) < config.min_channels:  # half a channel spare: Torch-Pruning
                ratios[layer] = max(0.0, 1 - (config.min_channels + 0.5) / layer.out_channels)  # truncates
    return ratios


def kept_whole(model: nn.Module, scope: str) -> list[nn.Module]:
    try:
        return model.kept_whole(scope)
    except ValueError as exc:
        raise PruningConfigError(str(exc)) from None


def accumulate_taylor_gradients(model: nn.Module, batches) -> None:
    """Taylor importance needs d(loss)/d(weight) of every layer a pruned channel touches, auxiliary heads reading
    a trunk layer included: accumulate the training loss (main and auxiliary outputs) over a few labelled batches."""
    model.zero_grad()
    model.train()
    for module in model.modules():  # gradients as in training, but the BatchNorm statistics stay as trained
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
    criterion = build_loss("ce", None)
    for x, y in batches:
        logits, *aux_outputs = model.all_outputs(x)
        (criterion(logits, y) + auxiliary_loss(criterion, aux_outputs, model.aux_weights, y)).backward()


def labelled_batches(dataset: SegmentationDataset, crops: TrainingCrops, count: int, batch_size: int,
                     seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A few augmented, normalized training batches (images, class ids) for Taylor importance."""
    batches = []
    for x, y in make_loader(dataset, crops, batch_size, shuffle=True, seed=seed):
        batches.append((x, y))
        if len(batches) == count:
            break
    return batches


def model_classes(card: ModelCard) -> ClassTable:
    return ClassTable(tuple(card.classes), tuple(tuple(colour) for colour in card.palette))


def distillation_teacher(card: ModelCard, card_path: Path, recipe: RecipeConfig) -> str | None:
    """The card to distil from (None without distillation). It defaults to the model as given, which must then be
    unpruned: a pruned model taught by itself is only held in place."""
    if not recipe.distill_weight:
        return None
    if recipe.teacher is None and "base_model" in card.compression:
        raise PruningConfigError(f"{card.name} was pruned before: name the model to distil from (its base, "
                                 f"{card.compression['base_model']}) with --teacher")
    return str(recipe.teacher or card_path)


def train_in_place(model: nn.Module, card: ModelCard, fine_tuning: FineTuning, run_name: str, step: int,
                   regularize=None) -> dict:
    """seg-train on the pruned `model` in place (on --device), in the work folder's `run_name` (resumed if found
    there), then the checkpoint kept loaded back on the CPU and returned: the best epoch when val is held out and
    nothing is regularized, else the last."""
    with tempfile.TemporaryDirectory() as temporary:
        run_dir = Path(fine_tuning.run.out) / run_name if fine_tuning.run.out else Path(temporary)
        config = TrainConfig(
            data=fine_tuning.data, recipe=fine_tuning.recipe,
            model=ModelConfig(arch=card.architecture, input=card.input, classes=model_classes(card)),
            schedule=replace(fine_tuning.schedule, seed=fine_tuning.schedule.seed + step),
            run=replace(fine_tuning.run, out=str(run_dir), resume=(run_dir / "last.pt").is_file()))
        train(config, model=model, regularize=regularize)
        best = held_out(fine_tuning) and regularize is None
        kept = torch.load(run_dir / ("best.pt" if best else "last.pt"), weights_only=True, map_location="cpu")
        model.load_state_dict(kept["model"])
        model.cpu()  # training moved it to --device; counting, Taylor gradients and pruning run on the CPU
    return kept


def fine_tune(model: nn.Module, card: ModelCard, fine_tuning: FineTuning, step: int) -> dict:
    """The fine-tuning after a step: its kept epoch's clean (and corrupted) val mIoU, when val was held out, and
    the data sets read."""
    kept = train_in_place(model, card, fine_tuning, f"step{step + 1}", step)
    return {**{key: kept[key] for key in ("val_miou", "val_corrupted_miou") if key in kept},
            "data": json.loads(kept["run"])["data"]}


def sparsify(model: nn.Module, card: ModelCard, pruning: PruningConfig, fine_tuning: FineTuning, step: int,
             pruner: tp.pruner.BasePruner) -> None:
    """Sparse training before a step: the fine-tuning's recipe for `sparse_epochs` epochs with the pruner's
    penalty; its last epoch is kept (the most regularized, not the best on val)."""
    schedule = replace(fine_tuning.schedule, epochs=pruning.sparse_epochs)
    train_in_place(model, card, replace(fine_tuning, schedule=schedule), f"sparse{step + 1}", step,
                   regularize=pruner.regularize)


def held_out(fine_tuning: FineTuning) -> bool:
    """Whether val is held out of fine-tuning (else it selects and measures nothing)."""
    return "val" not in fine_tuning.data.train_splits


def training_batches(card: ModelCard, fine_tuning: FineTuning, count: int, seed: int
                     ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`count` augmented training batches without camera corruptions, at the fine-tuning's crop and batch size:
    what Taylor importance and BatchNorm recalibration read."""
    data = fine_tuning.data
    crops = TrainingCrops(fine_tuning.recipe.crop, fine_tuning.recipe.scale_range, card.input)
    train_split = data.for_model(data.open(data.train_splits[0]), model_classes(card))
    return labelled_batches(train_split, crops, count, fine_tuning.schedule.batch_size, seed)


def recalibrate_batchnorm(model: nn.Module, batches) -> None:
    """Adaptive BatchNorm (Li et al., EagleEye, ECCV 2020): removing channels changes what every later layer
    receives, so the running statistics no longer describe it and the pruned network collapses until training
    has moved them. Re-estimating them on training batches (forward only, a plain average over the batches)
    gives fine-tuning a working network to start from; a short fine-tuning budget gains the most."""
    torch.optim.swa_utils.update_bn([x for x, _ in batches], model)


def prune_steps(model: nn.Module, card: ModelCard, pruning: PruningConfig, fine_tuning: FineTuning
                ) -> tuple[list[dict], list[dict]]:
    """Each step: sparse training and Taylor gradients if asked, the pruning step, BatchNorm recalibration,
    fine-tuning. Returns the history (MACs and val mIoU after each step) and the data sets the last fine-tuning
    read."""
    spec = card.input
    pruner = make_pruner(model, pruning, spec.height, spec.width)
    history, data_read = [], []
    for step in range(pruning.steps):
        seed = fine_tuning.schedule.seed + step
        if pruning.sparse_epochs:
            sparsify(model, card, pruning, fine_tuning, step, pruner)
        if pruning.criterion == "taylor":
            accumulate_taylor_gradients(model, training_batches(card, fine_tuning, TAYLOR_BATCHES, seed))
        pruner.step()
        if pruning.sparse_epochs:
            pruner.update_regularizer()  # the groups of the narrower network
        model.zero_grad(set_to_none=True)
        if pruning.recalibration_batches and pruning.removes_channels:
            recalibrate_batchnorm(model, training_batches(card, fine_tuning, pruning.recalibration_batches, seed))
        macs, params = count_macs_and_params(model, spec.height, spec.width)
        print(f"pruning step {step + 1}/{pruning.steps}: {macs / 1e9:.3g} GMACs, {params / 1e6:.3g} M parameters",
              flush=True)  # where a long fine-tuning starts from
        entry = {"step": step + 1, "macs": macs}
        if fine_tuning.schedule.epochs:
            run = fine_tune(model, card, fine_tuning, step)
            data_read = run["data"]
            entry.update({key: value for key, value in run.items() if key != "data"})
        history.append(entry)
    return history, data_read


def fine_tuning_record(fine_tuning: FineTuning, teacher: str | None, data_read: list[dict]) -> dict:
    """The card's record of how the steps were fine-tuned."""
    recipe, schedule = fine_tuning.recipe, fine_tuning.schedule
    return {
        "fine_tune_epochs_per_step": schedule.epochs, "fine_tune_lr": schedule.lr,
        "fine_tune_loss": {"loss": recipe.loss, "class_weights": recipe.class_weights},
        **({"fine_tune_splits": list(fine_tuning.data.train_splits)}
           if fine_tuning.data.train_splits != ("train",) else {}),
        **({"fine_tune_data": data_read} if data_read else {}),
        "fine_tune_augmentation": {"crop": list(recipe.crop), "scale_range": list(recipe.scale_range),
                                   **({"corruption": recipe.corruption.to_dict(),
                                       "teacher_input": recipe.teacher_input} if recipe.corruption else {})},
        **({"selected_on": f"mean of clean and severity-{recipe.val_corrupted} corrupted val mIoU"}
           if recipe.val_corrupted and held_out(fine_tuning) else {}),
        "distillation": ({"teacher": resolve_model(teacher)[0].name, "weight": recipe.distill_weight,
                          "temperature": recipe.distill_temperature, "loss": recipe.distill_loss}
                         if teacher else None)}


def prune(card: ModelCard, card_path: Path, pruning: PruningConfig, fine_tuning: FineTuning
          ) -> tuple[nn.Module, dict]:
    """Prune as `pruning` says, fine-tuning after each step as `fine_tuning` says (matching the data set's classes
    to the card's by name); with distillation, the teacher defaults to the model as given, if unpruned. Returns
    the pruned model (eval mode) and the card's compression record.

    A model that was pruned before keeps its original as the base, so MACs saved are counted from the unpruned
    model and the earlier record is kept under `previous`."""
    spec = card.input
    teacher = distillation_teacher(card, card_path, fine_tuning.recipe)
    fine_tuning = replace(fine_tuning, recipe=replace(fine_tuning.recipe, teacher=teacher))
    model = build_for_inference(card, model_file(card, card_path, "torch"))
    previous = card.compression if "base_model" in card.compression else None
    base_model, base_macs, base_params = (
        (previous["base_model"], previous["base_macs"], previous["base_params"]) if previous
        else (card.name, *count_macs_and_params(model, spec.height, spec.width)))
    history, data_read = prune_steps(model, card, pruning, fine_tuning)
    model = model.eval().to(memory_format=torch.contiguous_format)
    macs, params = count_macs_and_params(model, spec.height, spec.width)
    summary = {"method": "structured (Torch-Pruning DepGraph)", **pruning.record(),
               **fine_tuning_record(fine_tuning, teacher, data_read), "base_model": base_model,
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


def add_pruning_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("pruning")
    group.add_argument("--ratio", type=float, required=True, help="fraction of channels removed per layer")
    group.add_argument("--criterion", default="l2", choices=sorted(IMPORTANCE_CRITERIA))
    group.add_argument("--global", dest="global_pruning", action="store_true",
                       help="rank channels across layers instead of the same ratio everywhere")
    group.add_argument("--round-to", type=int, default=8, help="keep widths multiples of this (0: off)")
    group.add_argument("--max-layer-ratio", type=float, default=0.8, help="per-layer pruning cap")
    group.add_argument("--min-channels", type=int, default=0,
                       help="per-layer floor: no convolution is cut below this many channels (0: none)")
    group.add_argument("--steps", type=int, default=2, help="iterative pruning steps")
    group.add_argument("--bn-recalibration-batches", type=int, default=16,
                       help="training batches that re-estimate the BatchNorm statistics after each step (0: off)")
    group.add_argument("--scope", default="all", choices=KEPT_WHOLE_SCOPES,
                       help="prune everything; the decoder only; or the decoder and the channels inside the "
                            "encoder's inverted-residual blocks (expanded), its residual stream whole")
    group.add_argument("--layer-ratio", action="append", default=[], type=parse_layer_ratio, metavar="NAME=RATIO",
                       help="ratio for one submodule, e.g. decoder.3=0.75 (repeatable)")
    group.add_argument("--sparse-epochs", type=int, default=0,
                       help="epochs of regularized training before each step, so the channels removed carry "
                            "little: group norms for --criterion l1/l2 (Torch-Pruning's GroupNormPruner), L1 on the "
                            "BatchNorm scales for bn_scale (BNScalePruner); 0: none")
    group.add_argument("--sparse-reg", type=float, default=PruningConfig.sparse_reg,
                       help="the coefficient of that penalty")


def add_fine_tuning_arguments(parser: argparse.ArgumentParser) -> None:
    """seg-train's data set, recipe and run options, and the schedule of the fine-tuning after each step."""
    add_data_arguments(parser)
    add_recipe_arguments(parser)
    add_run_arguments(parser)
    parser.set_defaults(distill_weight=0.0)
    group = parser.add_argument_group("fine-tuning")
    group.add_argument("--fine-tune-epochs", type=int, default=FINE_TUNING_SCHEDULE.epochs,
                       help="epochs of fine-tuning after each step")
    group.add_argument("--lr", type=float, default=FINE_TUNING_SCHEDULE.lr,
                       help="fine-tuning learning rate (training used 1e-3)")
    group.add_argument("--batch-size", type=int, default=FINE_TUNING_SCHEDULE.batch_size)
    group.add_argument("--seed", type=int, default=FINE_TUNING_SCHEDULE.seed)
    group.add_argument("--work-dir", help="keep each step's fine-tuning run here and resume one found there "
                                          "(default: a temporary folder)")


def configs_from_args(args: argparse.Namespace) -> tuple[PruningConfig, FineTuning]:
    pruning = PruningConfig(ratio=args.ratio, criterion=args.criterion, steps=args.steps,
                            global_pruning=args.global_pruning, round_to=args.round_to or None,
                            max_layer_ratio=args.max_layer_ratio, scope=args.scope,
                            layer_ratios=dict(args.layer_ratio), recalibration_batches=args.bn_recalibration_batches,
                            min_channels=args.min_channels, sparse_epochs=args.sparse_epochs,
                            sparse_reg=args.sparse_reg)
    schedule = replace(FINE_TUNING_SCHEDULE, epochs=args.fine_tune_epochs, lr=args.lr, batch_size=args.batch_size,
                       seed=args.seed)
    run = RunConfig(out=args.work_dir, device=args.device, amp=args.amp, threads=args.threads,
                    workers=args.workers)
    return pruning, FineTuning(data=data_from_args(args), recipe=recipe_from_args(args), schedule=schedule, run=run)


def pruned_notes(card: ModelCard, summary: dict, upsample_logits: bool) -> str:
    """The card's notes: what was pruned, how, fine-tuned on what, and whether the logits are native."""
    data_title = summary["fine_tune_data"][0]["name"] if "fine_tune_data" in summary else ""
    pruned = ""
    if summary["ratio"]:
        pruned = (f"pruned structurally by {summary['ratio']:.0%} ({summary['scope']}, {summary['criterion']}"
                  + "".join(f", {name} by {value:.0%}" for name, value in summary["layer_ratios"].items())
                  + (", after sparse training" if "sparse_training" in summary else "") + "), ")
    tuned = (f"fine-tuned on {data_title} {'+'.join(summary.get('fine_tune_splits', ['train']))}"
             + (f", distilled from {summary['distillation']['teacher']}" if summary["distillation"] else "")
             if summary["fine_tune_epochs_per_step"] else "not fine-tuned")
    native = "" if upsample_logits else ", logits at the classifier's resolution"
    return (f"{card.notes}; then " if "previous" in summary else f"{card.name} ") + pruned + tuned + native


@reports_user_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="card (or a file beside it) of the model to prune")
    add_pruning_arguments(parser)
    add_fine_tuning_arguments(parser)
    parser.add_argument("--out", required=True, help="output stem, e.g. models/camvid_mobile_unet_pruned")
    add_native_logits_argument(parser)
    args = parser.parse_args(argv)
    card, card_path = resolve_model(args.model)
    model, summary = prune(card, card_path, *configs_from_args(args))
    model.upsample_logits = model.upsample_logits and not args.native_logits
    summary["command"] = command_line("seg-prune", argv)
    parity = parity_dataset(args)
    unchanged = not summary["ratio"] and not summary["fine_tune_epochs_per_step"]  # the same weights: a conversion
    exported = export_model(
        model, args.out, name=Path(args.out).name, architecture=card.architecture, classes=card.classes,
        palette=card.palette, spec=card.input, parity_inputs=parity_frames(parity, 8, card.input),
        training=card.training, compression=summary, flip_average=card.flip_average,
        class_bias=card.class_bias if unchanged else None, logit_offsets=card.logit_offsets if unchanged else None,
        notes=pruned_notes(card, summary, model.upsample_logits))
    print(f"pruned {summary['base_model']}: MACs {summary['base_macs'] / 1e9:.2f} G -> {summary['macs'] / 1e9:.2f} G "
          f"({summary['macs_reduction']:.0%} fewer), params {summary['base_params'] / 1e6:.2f} M -> "
          f"{summary['params'] / 1e6:.2f} M; wrote {args.out}.{{onnx,safetensors,json}} ({exported.name})")


if __name__ == "__main__":
    main()
