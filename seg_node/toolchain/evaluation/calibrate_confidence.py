"""Calibrate a model's confidence on train and val of any registered data set (classes matched to the model's by
name) and write it into the card's `confidence` field.

    seg-calibrate-confidence --model models/camvid_mobile_unet_pruned_robust_int8.json --data $CAMVID_ROOT --update-card

1. Temperature scaling (Guo et al. 2017): the one scalar T minimising the negative log-likelihood of
   softmax(logits / T) on a seeded sample of val pixels (void excluded), with the network-resolution logits the
   pipeline computes (flip averaging and logit offsets included); the expected calibration error of the
   top-class probability (15 equal-width bins) before (T = 1) and after.
2. The reliability threshold, from frame scores (what the node computes, with T) of clean frames of train and val
   (--threshold-splits) and of the same frames through the benchmark corruptions at severities 1-5, seeded as
   seg-robustness seeds them; by default only the corruptions seen in training, so that seg-robustness's unseen
   figures stay a held-out test of the detector too. Val alone is one stretch of one drive (0016E5) whose clean
   frames score higher than train's, 0016E5's own train frames included: a threshold from val alone flags most
   clean frames elsewhere. Train's frames were seen in training, so their mIoU is optimistic, but their scores
   are not: they spread like other drives'.
   Rule `clean_recall` (default): the highest threshold that leaves at least --clean-recall (0.99) of those clean
   frames unflagged, a bound on false alarms, as an alarm needs (Neyman-Pearson); what it then flags of the
   corrupted frames is recorded. Rules that trade both ways with Youden's J (flagged bad frames minus flagged
   good ones): `accuracy`, where a frame is bad when its mIoU fell under --reliable-fraction (0.75) of the same
   frame's clean mIoU (the clean frames and the corrupted ones that kept their accuracy are good), and
   `corruption`, clean against severity >= 3 frames. J counts a clean frame flagged no worse than a bad one
   missed: on the 0.1.6 default, with its first frame score, `accuracy` flagged 14% of the clean train and
   val frames (docs/results.md).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import replace

import cv2
import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import logsumexp
from tqdm import tqdm

from ...core.command_line import reports_user_errors
from ...core.model_card import command_line
from ...core.model_files import resolve_model
from ...core.pipeline import SegmentationPipeline
from ..data.arguments import add_dataset_arguments, dataset_from_args
from ..data.base import SegmentationDataset
from ..training.augment import unseen_in_training
from .corruptions import CORRUPTIONS, SEVERITIES
from .robustness import RELIABLE_FRACTION, SEVERE, FrameScores, auroc, benchmark, spaced

ECE_BINS = 15
THRESHOLD_RULES = ("clean_recall", "accuracy", "corruption")
SPLITS = ("train", "val")


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Mean NLL of N x C logits / T at the N true labels."""
    scaled = logits / temperature
    return float(np.mean(logsumexp(scaled, axis=1) - scaled[np.arange(len(labels)), labels]))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T in [0.05, 20] that minimises the NLL (a 1-D bounded search over log T: the NLL is smooth in it)."""
    found = minimize_scalar(lambda log_t: negative_log_likelihood(logits, labels, math.exp(log_t)),
                            bounds=(math.log(0.05), math.log(20.0)), method="bounded", options={"xatol": 1e-4})
    return math.exp(found.x)


def expected_calibration_error(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0,
                               bins: int = ECE_BINS) -> float:
    """sum over equal-width bins of top-class probability of |accuracy - mean confidence| x the bin's share."""
    scaled = logits / temperature
    confidence = np.exp(scaled.max(axis=1) - logsumexp(scaled, axis=1))
    correct = scaled.argmax(axis=1) == labels
    which = np.minimum((confidence * bins).astype(np.int64), bins - 1)
    total = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            total += abs(correct[inside].mean() - confidence[inside].mean()) * inside.mean()
    return float(total)


def youden_threshold(good: np.ndarray, bad: np.ndarray) -> float:
    """The threshold t maximising J = share of bad frames with score < t - share of good ones; among the scores
    that reach the maximum, the lowest (fewest good frames flagged)."""
    good, bad = np.sort(good), np.sort(bad)
    candidates = np.unique(np.concatenate([good, bad, [np.inf]]))
    j = np.searchsorted(bad, candidates, "left") / len(bad) - np.searchsorted(good, candidates, "left") / len(good)
    return float(candidates[int(np.argmax(j))])


def clean_recall_threshold(clean: np.ndarray, recall: float) -> float:
    """The highest threshold that leaves at least `recall` of the clean frames at or above it (unflagged)."""
    ordered = np.sort(clean)
    return float(ordered[math.floor(len(ordered) * (1.0 - recall) + 1e-9)])


def pixel_sample(pipeline: SegmentationPipeline, dataset, indices: list[int], per_frame: int, seed: int,
                 progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """(N x C logits, N labels): up to `per_frame` non-void pixels of each frame, at network resolution."""
    rng = np.random.default_rng(seed)
    card, samples = pipeline.card, dataset.samples()
    classes = len(card.classes)
    logits_rows, label_rows = [], []
    for index in tqdm(indices, desc="pixels for the temperature", disable=not progress):
        image, label = dataset.load(samples[index])
        logits = pipeline.logits(image, "rgb")
        if label.shape != logits.shape[1:]:
            label = cv2.resize(label, (logits.shape[2], logits.shape[1]), interpolation=cv2.INTER_NEAREST)
        valid = np.flatnonzero(label.ravel() < classes)
        picked = rng.choice(valid, min(per_frame, len(valid)), replace=False)
        logits_rows.append(logits.reshape(classes, -1)[:, picked].T.copy())
        label_rows.append(label.ravel()[picked].astype(np.int64))
    return np.concatenate(logits_rows), np.concatenate(label_rows)


def frame_scores(pipeline: SegmentationPipeline, dataset: SegmentationDataset, indices: list[int],
                 corruptions: list[str], severities: list[int], progress: bool) -> FrameScores:
    """The pipeline's frame scores and per-frame mIoU, clean and corrupted: seg-robustness's own loop, so the
    frames, seeds and scores are the benchmark's (`dataset`: labels in the model's class ids)."""
    _, miou, scores, _, _ = benchmark([pipeline], dataset, indices, corruptions, severities, progress)
    return FrameScores.of(miou[0], scores[0], corruptions, severities)


def flagged_text(flagged: dict) -> str:
    """FrameScores.at_threshold's figures in words."""
    def pct(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.1f}%"

    return (f"flags {pct(flagged['clean'])} of clean frames, {pct(flagged['sev3plus'])} at severity >= {SEVERE}, "
            f"{pct(flagged['unreliable'])} of unreliable frames (under {flagged['reliable_fraction']:g} of their clean "
            f"mIoU) and {pct(flagged['reliable'])} of reliable ones; AUROC reliable against unreliable "
            f"{flagged['auroc_unreliable']}")


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model card or model file (default: the packaged model)")
    parser.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "torch"])
    parser.add_argument("--threads", type=int, default=0)
    add_dataset_arguments(parser)
    parser.add_argument("--split", default="val", choices=SPLITS,
                        help="for the temperature (never test: its figures come from seg-robustness)")
    parser.add_argument("--threshold-splits", nargs="+", default=list(SPLITS), choices=SPLITS,
                        help="for the threshold (default: train and val)")
    parser.add_argument("--frames", type=int,
                        help="only N frames of each threshold split, evenly spaced (the temperature uses all)")
    parser.add_argument("--pixels-per-frame", type=int, default=4000, help="pixels sampled per frame for T")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--corruptions", nargs="+", metavar="NAME",
                        help="for the threshold (default: those the model's card says its training saw)")
    parser.add_argument("--severities", nargs="+", type=int, choices=SEVERITIES, default=list(SEVERITIES))
    parser.add_argument("--rule", default="clean_recall", choices=THRESHOLD_RULES,
                        help="how the threshold is chosen (above; default: clean_recall)")
    parser.add_argument("--reliable-fraction", type=float, default=RELIABLE_FRACTION,
                        help="rule accuracy: a frame that keeps this share of its clean mIoU is reliable")
    parser.add_argument("--clean-recall", type=float, default=0.99,
                        help="rule clean_recall: the share of clean frames left unflagged")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--update-card", action="store_true", help="write the result into the model's card")
    where.add_argument("--out", help="write a copy of the card with the result here (beside the model's files)")
    args = parser.parse_args(argv)
    unknown = [n for n in args.corruptions or [] if n not in CORRUPTIONS]
    if unknown:
        parser.error(f"unknown corruption(s) {unknown}; known: {', '.join(CORRUPTIONS)}")
    if not 0.0 < args.clean_recall <= 1.0:
        parser.error(f"--clean-recall must be in (0, 1], got {args.clean_recall}")
    if not 0.0 < args.reliable_fraction < 1.0:
        parser.error(f"--reliable-fraction must be in (0, 1), got {args.reliable_fraction}")
    if max(args.severities) < SEVERE:
        parser.error(f"--severities needs one of {SEVERE} or more: the AUROC is clean against severity >= {SEVERE}")
    if args.frames is not None and args.frames < 1:
        parser.error(f"--frames must be at least 1, got {args.frames}")
    if args.pixels_per_frame < 1:
        parser.error(f"--pixels-per-frame must be at least 1, got {args.pixels_per_frame}")
    return args


def threshold_by_rule(frames: FrameScores, args: argparse.Namespace) -> tuple[str, float]:
    """(the rule in words, the threshold it chooses from the frame scores)."""
    if args.rule == "clean_recall":
        return f"clean_recall {args.clean_recall:g}", min(clean_recall_threshold(frames.clean, args.clean_recall), 1.0)
    good, bad = frames.sides(args.rule, args.reliable_fraction)
    rule = args.rule + (f" {args.reliable_fraction:g}" if args.rule == "accuracy" else "")
    threshold = youden_threshold(good, bad) if len(bad) else 0.0  # nothing unreliable: nothing to flag
    return rule, min(threshold, 1.0)  # Youden's J peaks at +inf only when nothing is told apart: flag everything


def calibration_record(logits: np.ndarray, labels: np.ndarray, temperature: float, by_split: dict[str, FrameScores],
                       rule: str, threshold: float, args: argparse.Namespace) -> dict:
    """The card's confidence.calibration: what the temperature did to NLL and ECE, and what the threshold flags."""
    frames = FrameScores.joined(list(by_split.values()))
    severe = frames.sides("corruption")[1]  # the frames at severity >= SEVERE
    return {
        "split": args.split, "pixels": len(labels),
        "threshold_frames": {split: len(part.clean) for split, part in by_split.items()},
        "nll": {"before": round(negative_log_likelihood(logits, labels, 1.0), 4),
                "after": round(negative_log_likelihood(logits, labels, temperature), 4)},
        "ece_percent": {"bins": ECE_BINS,
                        "before": round(100 * expected_calibration_error(logits, labels, 1.0), 2),
                        "after": round(100 * expected_calibration_error(logits, labels, temperature), 2)},
        "threshold_rule": rule, "corruptions": args.corruptions, "severities": args.severities,
        "auroc_sev3plus": round(auroc(frames.clean, severe), 4),
        "flagged": frames.at_threshold(round(threshold, 4), args.reliable_fraction),  # what the card's value flags
        "score_median": {"clean": round(float(np.median(frames.clean)), 4),
                         **{f"clean {split}": round(float(np.median(part.clean)), 4)
                            for split, part in by_split.items()},
                         "sev3plus": round(float(np.median(severe)), 4)},
    }


def run_calibration(argv: list[str] | None = None, progress: bool = True) -> dict:
    args = parse_arguments(argv)
    card, card_path = resolve_model(args.model)
    pipeline = SegmentationPipeline.from_model(card_path, args.backend, "cpu", threads=args.threads)
    unseen = unseen_in_training(card.training, card.compression)
    args.corruptions = args.corruptions or [n for n in CORRUPTIONS if n not in unseen]
    splits = {split: dataset_from_args(args, split, card.classes, card.palette)
              for split in dict.fromkeys([args.split, *args.threshold_splits])}
    dataset = splits[args.split]
    indices = list(range(len(dataset.samples())))
    logits, labels = pixel_sample(pipeline, dataset, indices, args.pixels_per_frame, args.seed, progress)
    temperature = fit_temperature(logits, labels)
    pipeline.card.confidence = replace(pipeline.card.confidence, temperature=temperature)  # the scores use it
    by_split = {split: frame_scores(pipeline, splits[split], spaced(len(splits[split].samples()), args.frames),
                                    args.corruptions, args.severities, progress)
                for split in dict.fromkeys(args.threshold_splits)}
    rule, threshold = threshold_by_rule(FrameScores.joined(list(by_split.values())), args)
    calibration = {**calibration_record(logits, labels, temperature, by_split, rule, threshold, args),
                   "frames": len(indices), "data": [split.identity() for split in splits.values()],
                   "command": command_line("seg-calibrate-confidence", argv)}
    card.confidence = replace(card.confidence, temperature=round(temperature, 4), threshold=round(threshold, 4),
                              calibration=calibration)
    card.validate(str(card_path))
    print(f"{card.name} on {args.split} ({len(indices)} frames, {len(labels)} pixels): temperature {temperature:.3f}, "
          f"NLL {calibration['nll']['before']} -> {calibration['nll']['after']}, ECE "
          f"{calibration['ece_percent']['before']}% -> {calibration['ece_percent']['after']}% ({ECE_BINS} bins)")
    print(f"threshold {threshold:.4f} ({rule}): {flagged_text(calibration['flagged'])}; AUROC clean against severity "
          f">= {SEVERE} {calibration['auroc_sev3plus']}")
    if args.update_card or args.out:
        target = card_path if args.update_card else args.out
        card.save(target)
        print(f"wrote {target}")
    return {"temperature": temperature, "threshold": threshold, **calibration}


@reports_user_errors
def main(argv: list[str] | None = None) -> None:
    run_calibration(argv)


if __name__ == "__main__":
    main()
