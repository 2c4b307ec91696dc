"""Evaluate a model file on a data set split through the node's own pipeline: mIoU, pixel accuracy and per-class
IoU, precision, recall and F1, with a confusion matrix and a grid of predictions as PNGs.

    seg-eval --model models/camvid_mobile_unet.onnx --data $CAMVID_ROOT --split test --out results/eval
    seg-eval --model my_model.json --data my_frames --layout folders --class-map map.csv --out results/mine

The data set's classes are matched to the model's by name (another order is fine); classes named otherwise
need --class-map. Metrics come from one confusion matrix over the whole split with unlabelled pixels left out,
as the CamVid and Cityscapes benchmarks define them.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ...core.command_line import reports_user_errors
from ...core.model_card import command_line
from ...core.model_files import resolve_model
from ...core.pipeline import SegmentationPipeline
from ..data import IGNORE_INDEX, DatasetError, SegmentationDataset
from ..data.arguments import add_dataset_arguments, dataset_from_args
from .metrics import ConfusionMatrix
from .plots import save_confusion_matrix, save_prediction_grid

GRID_FRAMES = 4
CARD_KEYS = ("miou", "pixel_accuracy", "per_class", "frames", "command", "data")


def select(samples: list, sequence: str | None = None, limit: int | None = None) -> list:
    """Frames of one sequence (name prefix, e.g. Seq05VD), then the first `limit`."""
    if sequence:
        samples = [s for s in samples if s.name.startswith(sequence)]
    return samples[:limit] if limit else samples


def evaluate(pipeline: SegmentationPipeline, dataset: SegmentationDataset, limit: int | None = None,
             grid_frames: int = GRID_FRAMES, progress: bool = True, sequence: str | None = None
             ) -> tuple[ConfusionMatrix, list]:
    """Run every frame through `pipeline.segment`; `dataset` labels in the model's class ids (see
    `dataset_for_model`). Returns the confusion matrix and a few frames for a grid."""
    samples = select(dataset.samples(), sequence, limit)
    if not samples:
        raise DatasetError(f"no frames of sequence {sequence!r} in {dataset.root} split {dataset.split}")
    matrix = ConfusionMatrix(len(pipeline.card.classes))
    keep = set(np.linspace(0, len(samples) - 1, min(grid_frames, len(samples))).astype(int).tolist())
    grid = []
    for index, sample in enumerate(tqdm(samples, desc=f"evaluating {dataset.split}", disable=not progress)):
        image, label = dataset.load(sample)
        mask = pipeline.segment(image, "rgb").mask
        matrix.update(mask, label)
        if index in keep:
            grid.append((sample.name, image, label, mask))
    return matrix, grid


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model card or model file (default: the packaged model)")
    parser.add_argument("--backend", default="onnxruntime", help="onnxruntime or torch")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0)
    add_dataset_arguments(parser)
    parser.add_argument("--split", default="test", help="split to evaluate (default: %(default)s)")
    parser.add_argument("--sequence", help="only the frames of this sequence (name prefix, e.g. Seq05VD)")
    parser.add_argument("--limit", type=int, help="only the first N frames")
    parser.add_argument("--out", required=True, help="folder for metrics.json, confusion.png, predictions.png")
    parser.add_argument("--update-card", action="store_true",
                        help="record the result in the model card's metrics as <layout>_<split> (full split only)")
    return parser.parse_args(argv)


def print_table(result: dict) -> None:
    print(f"{result['model']} ({result['backend']}) on {result['data']['name']} {result['split']}, "
          f"{result['frames']} frames: mIoU {result['miou']:.2f}, pixel accuracy {result['pixel_accuracy']:.2f}")
    width = max(len(name) for name in result["per_class"])
    print(f"  {'class':<{width}} {'IoU':>6} {'prec.':>6} {'recall':>6} {'F1':>6}")
    for name, scores in result["per_class"].items():
        cells = (scores[key] for key in ("iou", "precision", "recall", "f1"))
        print(f"  {name:<{width}} " + " ".join(f"{float('nan') if v is None else v:6.2f}" for v in cells))


def run_evaluation(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    pipeline = SegmentationPipeline.from_model(args.model, args.backend, args.device, threads=args.threads)
    classes = list(pipeline.card.classes)
    dataset = dataset_from_args(args, args.split, classes, pipeline.card.palette)
    started = time.time()
    matrix, grid = evaluate(pipeline, dataset, args.limit, sequence=args.sequence)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "model": pipeline.card.name, "backend": pipeline.backend.describe(), "split": args.split,
        "frames": len(select(dataset.samples(), args.sequence, args.limit)),
        "data": dataset.identity(progress=True), **matrix.summary(classes), "seconds": round(time.time() - started, 1),
        "command": command_line("seg-eval", argv), "confusion_matrix": matrix.matrix.tolist(),
    }
    (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    save_confusion_matrix(matrix.matrix, classes, out / "confusion.png",
                          f"{pipeline.card.name} on {dataset.title} {args.split}: mIoU {result['miou']:.2f}")
    save_prediction_grid(grid, pipeline.lut, out / "predictions.png", IGNORE_INDEX)
    if args.update_card and not (args.limit or args.sequence):
        card, card_path = resolve_model(args.model)
        card.metrics[f"{dataset.layout}_{args.split}"] = {key: result[key] for key in CARD_KEYS}
        card.save(card_path)
    print_table(result)
    print(f"wrote {out / 'metrics.json'}, {out / 'confusion.png'}, {out / 'predictions.png'}")
    return result


@reports_user_errors
def main(argv: list[str] | None = None) -> None:
    run_evaluation(argv)


if __name__ == "__main__":
    main()
