"""Evaluate a model file on a CamVid split through the node's own pipeline: mIoU, per-class IoU, PNGs.

    seg-eval --model models/camvid_mobile_unet.onnx --data $CAMVID_ROOT --split test --out results/eval

mIoU is one confusion matrix over the whole split with void excluded, as the CamVid benchmark defines it.
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
from ..data import CAMVID_CLASSES, VOID_INDEX, open_dataset
from ..data.camvid import dataset_identity
from .metrics import ConfusionMatrix
from .plots import save_confusion_matrix, save_prediction_grid

GRID_FRAMES = 4


def select(samples: list, sequence: str | None = None, limit: int | None = None) -> list:
    """Frames of one sequence (name prefix, e.g. Seq05VD), then the first `limit`."""
    if sequence:
        samples = [s for s in samples if s.name.startswith(sequence)]
    return samples[:limit] if limit else samples


def evaluate(pipeline: SegmentationPipeline, dataset, limit: int | None = None, grid_frames: int = GRID_FRAMES,
             progress: bool = True, sequence: str | None = None) -> tuple[ConfusionMatrix, list]:
    """Run every frame through `pipeline.segment`; returns the confusion matrix and a few frames for a grid."""
    samples = select(dataset.items(), sequence, limit)
    if not samples:
        raise ValueError(f"no frames of sequence {sequence!r} in {dataset.root / dataset.split}")
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


def run_evaluation(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model card or model file (default: the packaged model)")
    parser.add_argument("--backend", default="onnxruntime", help="onnxruntime or torch")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--data", help="CamVid folder (default: $CAMVID_ROOT)")
    parser.add_argument("--layout", default="auto", help="camvid11, camvid32 or auto")
    parser.add_argument("--split", default="test", choices=["train", "val", "test"])
    parser.add_argument("--sequence", help="only the frames of this sequence (name prefix, e.g. Seq05VD)")
    parser.add_argument("--limit", type=int, help="only the first N frames")
    parser.add_argument("--out", required=True, help="folder for metrics.json, confusion.png, predictions.png")
    parser.add_argument("--update-card", action="store_true",
                        help="record the result in the model card's metrics (full split only)")
    args = parser.parse_args(argv)

    pipeline = SegmentationPipeline.from_model(args.model, args.backend, args.device, threads=args.threads)
    dataset = open_dataset(args.data, args.split, args.layout)
    started = time.time()
    matrix, grid = evaluate(pipeline, dataset, args.limit, sequence=args.sequence)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = command_line("seg-eval", argv)
    result = {
        "model": pipeline.card.name, "backend": pipeline.backend.describe(), "split": args.split,
        "frames": len(select(dataset.items(), args.sequence, args.limit)),
        "data": dataset_identity(dataset), **matrix.summary(CAMVID_CLASSES), "seconds": round(time.time() - started, 1),
        "command": command, "confusion_matrix": matrix.matrix.tolist(),
    }
    (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    save_confusion_matrix(matrix.matrix, CAMVID_CLASSES, out / "confusion.png",
                          f"{pipeline.card.name} on CamVid {args.split}: mIoU {result['miou']:.2f}")
    save_prediction_grid(grid, pipeline.lut, out / "predictions.png", VOID_INDEX)
    if args.update_card and not (args.limit or args.sequence):
        card, card_path = resolve_model(args.model)
        card.metrics[f"camvid_{args.split}"] = {k: result[k] for k in
                                                 ("miou", "pixel_accuracy", "per_class_iou", "frames", "command",
                                                  "data")}
        card.save(card_path)
    print(f"{pipeline.card.name} ({pipeline.backend.describe()}) on {args.split}, {result['frames']} frames: "
          f"mIoU {result['miou']:.2f}, pixel accuracy {result['pixel_accuracy']:.2f}")
    for name, iou in result["per_class_iou"].items():
        print(f"  {name:<11} {iou if iou is not None else float('nan'):6.2f}")
    print(f"wrote {out / 'metrics.json'}, {out / 'confusion.png'}, {out / 'predictions.png'}")
    return result


@reports_user_errors
def main(argv: list[str] | None = None) -> None:
    run_evaluation(argv)


if __name__ == "__main__":
    main()
