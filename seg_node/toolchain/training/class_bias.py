"""Per-class logit offsets fitted on val to maximize mIoU, folded into the classifier's bias.

    seg-class-bias --model models/camvid_mobile_unet.json --data $CAMVID_ROOT --out models/camvid_mobile_unet

Median-frequency class weights buy recall on rare classes, but the trained network then paints them far
beyond their true extent (on CamVid test the unpruned model predicts twice the Pole and Pedestrian area there
is), which costs IoU. Adding a constant to each class's logit moves the decision boundaries without
retraining; an offset before the final bilinear upsampling equals the same offset after it, so it is folded
into the 1x1 classifier's bias: the exported model costs exactly what it did. The offsets are fitted on a
split other than test (val by default), so test stays a measurement. Offsets fitted on a split score
optimistically there, so the command also fits them on each contiguous half and scores them on the other
(`held_out` in the card): the figure to compare models by. Offsets are applied only where that held-out gain
reaches `--min-held-out-gain` (default half a point, the margin CamVid val's two halves resolve); otherwise
the model is written unchanged and the card says why (`applied: false`): a network trained without class
weights may have no bias left to correct, and offsets fitted to val's one drive then cost on others.

`--flip-average` fits the offsets for the model run on the image and its mirror image with the logits averaged
(the card then says so, and every tool and the node run it that way); `--refit` first takes the card's
earlier offsets out, for offsets fitted anew rather than on top of ones fitted to another way of running it.

An fp32 model gets the offsets in its torch weights and a fresh ONNX export; an INT8 or FP16 model (whose
quantization moved its logits) gets them fitted on its own outputs and written into its ONNX graph: the
classifier's bias initializer, or for INT8 QDQ its int32 quantized bias, in steps of that bias's scale.
`--offsets-in-card` writes no model file: the new card names the model's own files and holds the offsets as
`logit_offsets`, which the pipeline adds to the logits: camvid_mobile_unet_flip holds its offsets so, 11 numbers
instead of a 30 MB copy of camvid_mobile_unet's weights.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn
from tqdm import tqdm

from ...core.backends import create_backend
from ...core.backends.torch_backend import build_for_inference
from ...core.command_line import reports_user_errors
from ...core.errors import UserError
from ...core.model_card import ModelCard, command_line
from ...core.model_files import model_file, resolve_model
from ...core.pipeline import SegmentationPipeline
from ..data.arguments import add_dataset_arguments, dataset_from_args
from ..data.base import SegmentationDataset
from ..evaluation.metrics import ConfusionMatrix, mean_iou_of
from ..export import export_model, parity_dataset, parity_frames


class ClassBiasError(UserError, ValueError):
    """Offsets that cannot be fitted or folded as asked: the message says why."""


DEFAULT_GRID = np.round(np.arange(-4.0, 4.0001, 0.125), 4)
CHUNK_PIXELS = 1 << 21


def flat_pixels(logits: np.ndarray, labels: np.ndarray, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """N x C x H x W logits and N x H x W labels -> P x C logits and P labels of the non-void pixels."""
    flat = torch.from_numpy(logits).permute(0, 2, 3, 1).reshape(-1, logits.shape[1])
    target = torch.from_numpy(labels.astype(np.int64)).reshape(-1)
    keep = target < num_classes
    return flat[keep], target[keep]


def confusion_at(logits: torch.Tensor, target: torch.Tensor, bias: torch.Tensor) -> ConfusionMatrix:
    """The confusion matrix of argmax(logits + bias)."""
    matrix = ConfusionMatrix(bias.numel())
    for start in range(0, len(target), CHUNK_PIXELS):
        predicted = (logits[start:start + CHUNK_PIXELS].float() + bias).argmax(1)
        matrix.update(predicted.numpy(), target[start:start + CHUNK_PIXELS].numpy())
    return matrix


def coordinate_confusions(logits: torch.Tensor, target: torch.Tensor, bias: torch.Tensor, cls: int,
                          grid: torch.Tensor) -> torch.Tensor:
    """Confusion matrices (G x C x C) for every grid value of class `cls`'s offset, the others held fixed.

    Exact, in one pass: a pixel goes to `cls` when its logit plus the offset beats the best other class,
    i.e. for every grid value above a threshold of its own; a histogram of those thresholds, summed up
    the grid, moves pixels from their best other class into `cls`."""
    num_classes, steps = bias.numel(), grid.numel()
    moved = torch.zeros(steps + 1, num_classes, num_classes, dtype=torch.float64)
    for start in range(0, len(target), CHUNK_PIXELS):
        shifted = logits[start:start + CHUNK_PIXELS].float() + bias
        truth = target[start:start + CHUNK_PIXELS]
        own = shifted[:, cls] - bias[cls]
        shifted[:, cls] = float("-inf")
        best_other, other_class = shifted.max(1)
        first_step = torch.searchsorted(grid, (best_other - own).contiguous(), right=True)
        index = (first_step * num_classes + truth) * num_classes + other_class
        moved += torch.bincount(index, minlength=moved.numel()).view_as(moved).double()
    without_cls = moved.sum(0)
    cumulative = moved.cumsum(0)[:steps]
    matrices = without_cls - cumulative
    matrices[:, :, cls] += cumulative.sum(-1)
    return matrices


def fit_class_bias(logits: np.ndarray, labels: np.ndarray, grid: np.ndarray = DEFAULT_GRID,
                   max_rounds: int = 6, progress: bool = True) -> tuple[np.ndarray, float, float]:
    """Coordinate ascent on per-class logit offsets (each chosen from `grid`, which must hold 0) maximizing
    the mIoU of argmax(logits + offsets) over non-void pixels. Returns (offsets centred on zero, mIoU
    before, mIoU after); the mIoU never drops, since every coordinate keeps its value unless another beats it."""
    num_classes = logits.shape[1]
    if not np.any(np.isclose(grid, 0.0)):
        raise ClassBiasError("the grid of offsets must contain 0 (no change)")
    flat, target = flat_pixels(logits, labels, num_classes)
    if not len(target):
        raise ClassBiasError("no labelled (non-void) pixels to fit offsets on")
    grid_t = torch.as_tensor(np.sort(grid), dtype=torch.float32)
    bias = torch.zeros(num_classes)
    before = best = confusion_at(flat, target, bias).miou()
    for _ in tqdm(range(max_rounds), desc="fitting class offsets", disable=not progress):
        changed = False
        for cls in range(num_classes):
            scores = mean_iou_of(coordinate_confusions(flat, target, bias, cls, grid_t).numpy())
            current = int(torch.argmin((grid_t - bias[cls]).abs()))
            candidate = int(np.argmax(scores))
            if scores[candidate] > scores[current] + 1e-9:
                bias[cls], best, changed = grid_t[candidate], float(scores[candidate]), True
        if not changed:
            break
    bias -= bias.mean()
    return bias.numpy().astype(np.float32), 100 * before, 100 * best


def held_out_estimate(logits: np.ndarray, labels: np.ndarray, grid: np.ndarray = DEFAULT_GRID) -> tuple[float, float]:
    """(mIoU without, mIoU with offsets) of each contiguous half of the frames, the offsets fitted on the other
    half, averaged over the two halves: what offsets are worth on frames they were not fitted on. The in-sample
    gain that fit_class_bias reports overstates it; consecutive frames of one drive make halves the honest cut.
    Each half is fitted on once, so the fits' own mIoU before offsets is the mIoU without them of both halves."""
    half = len(labels) // 2
    if half == 0:
        raise ClassBiasError("a held-out estimate needs at least two frames")
    folds = [(slice(0, half), slice(half, None)), (slice(half, None), slice(0, half))]
    without, with_offsets = [], []
    for fitted, held in folds:
        offsets, fitted_without, _ = fit_class_bias(logits[fitted], labels[fitted], grid, progress=False)
        without.append(fitted_without)
        flat, target = flat_pixels(logits[held], labels[held], logits.shape[1])
        with_offsets.append(100 * confusion_at(flat, target, torch.from_numpy(offsets)).miou())
    return float(np.mean(without)), float(np.mean(with_offsets))


def fold_into_classifier(model: nn.Module, offsets: np.ndarray) -> None:
    """Add per-class offsets to the bias of the model's final 1x1 `classifier` convolution."""
    classifier = getattr(model, "classifier", None)
    if not isinstance(classifier, nn.Conv2d) or classifier.out_channels != len(offsets):
        raise ClassBiasError(f"{type(model).__name__} has no `classifier` Conv2d with {len(offsets)} outputs")
    with torch.no_grad():
        if classifier.bias is None:
            classifier.bias = nn.Parameter(torch.zeros(classifier.out_channels))
        classifier.bias += torch.as_tensor(offsets, dtype=classifier.bias.dtype)


def final_conv(graph: onnx.GraphProto) -> onnx.NodeProto:
    """The Conv that produces the graph's output, through any Resize and quantize/dequantize nodes after it."""
    producers = {output: node for node in graph.node for output in node.output}
    node = producers.get(graph.output[0].name)
    while node is not None and node.op_type != "Conv":
        node = producers.get(node.input[0])
    if node is None or len(node.input) < 3:
        raise ClassBiasError("no Conv with a bias produces the model's output")
    return node


def fold_into_onnx(source: Path, destination: Path, offsets: np.ndarray) -> None:
    """Add per-class offsets to the final Conv's bias in an ONNX graph: a float initializer directly, an int32
    initializer behind DequantizeLinear (INT8 QDQ) as offset / scale rounded to the nearest step."""
    model = onnx.load(str(source))
    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    bias_name = final_conv(model.graph).input[2]
    if bias_name in initializers:
        tensor = initializers[bias_name]
        values = numpy_helper.to_array(tensor)
        values = (values + offsets.astype(values.dtype)).astype(values.dtype)
    else:
        dequantize = next((n for n in model.graph.node if bias_name in n.output and n.op_type == "DequantizeLinear"),
                          None)
        if dequantize is None or dequantize.input[0] not in initializers:
            raise ClassBiasError(f"{source}: the classifier's bias {bias_name!r} is neither a constant nor a "
                             f"dequantized constant")
        tensor = initializers[dequantize.input[0]]
        stored = numpy_helper.to_array(tensor)
        scale = numpy_helper.to_array(initializers[dequantize.input[1]])
        values = (stored.astype(np.int64) + np.round(offsets / scale).astype(np.int64)).astype(stored.dtype)
    tensor.CopyFrom(numpy_helper.from_array(values, tensor.name))
    onnx.save(model, str(destination))


def collect_logits(pipeline: SegmentationPipeline, dataset) -> tuple[np.ndarray, np.ndarray]:
    """Network-resolution logits (float16) of every frame through the node's preprocessing, and labels
    resized to that resolution (nearest)."""
    logits, labels = [], []
    for sample in tqdm(dataset.samples(), desc=f"logits of {dataset.split}"):
        image, label = dataset.load(sample)
        frame_logits = pipeline.logits(image, "rgb")
        height, width = frame_logits.shape[1:]
        if label.shape != (height, width):
            label = cv2.resize(label, (width, height), interpolation=cv2.INTER_NEAREST)
        logits.append(frame_logits.astype(np.float16))
        labels.append(label)
    return np.stack(logits), np.stack(labels)


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model to adjust (card or a file beside it); fp32, "
                                                         "or INT8/FP16 ONNX after quantization")
    add_dataset_arguments(parser)
    parser.add_argument("--split", default="val", choices=["val", "train"],
                        help="split to fit on; never test, which measures the result")
    parser.add_argument("--min-held-out-gain", type=float, default=0.5,
                        help="apply the offsets only if they gain at least this much mIoU on held-out halves")
    parser.add_argument("--flip-average", action="store_true",
                        help="fit for (and record in the card) averaging the logits of each image and its mirror "
                             "image: twice the inference cost")
    parser.add_argument("--refit", action="store_true",
                        help="take the card's earlier offsets out and fit from the bare network (default: fit "
                             "further offsets on top of them)")
    parser.add_argument("--offsets-in-card", action="store_true",
                        help="write only a card that names the model's files and holds the offsets (logit_offsets), "
                             "not a copy of the weights with the offsets folded in")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", required=True,
                        help="output stem; the model's own stem rewrites it in place (its metrics are cleared)")
    return parser.parse_args(argv)


@dataclass
class OffsetFit:
    """Offsets fitted on a split: the earlier ones (in the card) and those taken out (--refit), the fitted ones,
    the mIoU before and after in-sample and on held-out halves, and whether they are applied."""

    earlier: np.ndarray
    removed: np.ndarray
    fitted: np.ndarray
    before: float
    after: float
    held_without: float
    held_with: float
    applied: bool

    @property
    def change(self) -> np.ndarray:
        """What the model's logits move by: the applied offsets, less the ones taken out."""
        return (self.fitted if self.applied else np.zeros_like(self.fitted)) - self.removed


def fit_offsets(card: ModelCard, logits: np.ndarray, labels: np.ndarray, refit: bool, min_gain: float) -> OffsetFit:
    earlier = np.array([card.class_bias.get("offsets", {}).get(name, 0.0) for name in card.classes], np.float32)
    removed = earlier if refit else np.zeros_like(earlier)
    logits -= removed[None, :, None, None].astype(logits.dtype)
    fitted, before, after = fit_class_bias(logits, labels)
    held_without, held_with = held_out_estimate(logits, labels)
    return OffsetFit(earlier, removed, fitted, before, after, held_without, held_with,
                     applied=held_with - held_without >= min_gain)


def bias_record(card: ModelCard, fit: OffsetFit, dataset: SegmentationDataset, args: argparse.Namespace,
                argv: list[str] | None) -> dict:
    """The card's class_bias field."""
    def named(values: np.ndarray) -> dict:
        return {name: round(float(value), 4) for name, value in zip(card.classes, values)}

    return {"offsets": named(fit.earlier - fit.removed + (fit.fitted if fit.applied else 0.0)),
            "applied": fit.applied, **({} if fit.applied else {"fitted_offsets": named(fit.fitted)}),
            "fitted_on": f"{dataset.title} {args.split} ({len(dataset.samples())} frames)", "data": dataset.identity(),
            f"{args.split}_miou_before": round(fit.before, 2), f"{args.split}_miou_after": round(fit.after, 2),
            "held_out": {"method": f"offsets fitted on one contiguous half of {args.split}, scored on the other, "
                                   f"both ways, averaged", "miou_before": round(fit.held_without, 2),
                         "miou_after": round(fit.held_with, 2), "min_gain": args.min_held_out_gain},
            "command": command_line("seg-class-bias", argv),
            **({"previous": card.class_bias} if card.class_bias else {})}


def write_adjusted(card: ModelCard, card_path: Path, args: argparse.Namespace, record: dict, offsets: np.ndarray,
                   notes: str) -> None:
    """The card alone (--offsets-in-card), an fp32 model with the offsets in its classifier's bias, or a quantized
    ONNX graph with them in its bias initializer."""
    if args.offsets_in_card:
        out_path = Path(args.out).with_suffix(".json")
        out_path.parent.mkdir(parents=True, exist_ok=True)
        files = {key: Path(os.path.relpath(model_file(card, card_path, key), out_path.parent)).as_posix()
                 for key in card.files}
        dataclasses.replace(card, name=out_path.stem, files=files, metrics={}, class_bias=record,
                            logit_offsets=[float(v) for v in offsets], notes=notes).save(out_path)
    elif card.compression.get("precision", "fp32") == "fp32":
        model = build_for_inference(card, model_file(card, card_path, "torch")).float()
        fold_into_classifier(model, offsets)
        export_model(model, args.out, name=Path(args.out).name, architecture=card.architecture,
                     classes=card.classes, palette=card.palette, spec=card.input,
                     parity_inputs=parity_frames(parity_dataset(args), 8, card.input), training=card.training,
                     compression={k: v for k, v in card.compression.items() if k != "export_parity"},
                     class_bias=record, flip_average=card.flip_average, notes=notes)
    else:
        out_path = Path(args.out).with_suffix(".onnx")
        out_path.parent.mkdir(parents=True, exist_ok=True)
        fold_into_onnx(model_file(card, card_path, "onnx"), out_path, offsets)
        dataclasses.replace(card, name=out_path.stem, files={"onnx": out_path.name}, metrics={},
                            class_bias=record, logit_offsets=[], notes=notes).save(out_path.with_suffix(".json"))


@reports_user_errors
def main(argv: list[str] | None = None) -> None:
    args = parse_arguments(argv)
    card, card_path = resolve_model(args.model)
    card = dataclasses.replace(card, flip_average=card.flip_average or args.flip_average)
    dataset = dataset_from_args(args, args.split, card.classes, card.palette)
    pipeline = SegmentationPipeline(create_backend("onnxruntime", card, card_path, "cpu", threads=args.threads), card)
    fit = fit_offsets(card, *collect_logits(pipeline, dataset), args.refit, args.min_held_out_gain)
    record = bias_record(card, fit, dataset, args, argv)
    notes = "; ".join(filter(None, [card.notes, "run flip-averaged" if args.flip_average else "",
                                    f"per-class logit offsets {'refitted' if args.refit else 'fitted'} on {args.split}"
                                    + ("" if fit.applied else ", not applied (too little held-out gain)")]))
    in_card = np.asarray(card.logit_offsets or np.zeros_like(fit.change), np.float32)
    write_adjusted(card, card_path, args, record, in_card + fit.change, notes)
    precision = card.compression.get("precision", "fp32")
    written = "json" if args.offsets_in_card else f"{{{'onnx,safetensors' if precision == 'fp32' else 'onnx'},json}}"
    print(f"{card.name}: {args.split} mIoU {fit.before:.2f} -> {fit.after:.2f} with offsets (on held-out halves "
          f"{fit.held_without:.2f} -> {fit.held_with:.2f}, {'applied' if fit.applied else 'NOT applied'}: held-out "
          f"gain {fit.held_with - fit.held_without:+.2f}, at least {args.min_held_out_gain:g} required): "
          + ", ".join(f"{name} {value:+.3f}" for name, value in zip(card.classes, fit.fitted))
          + f"; wrote {args.out}.{written}: measure it with seg-eval --split test --update-card")


if __name__ == "__main__":
    main()
