"""The pruning study: architectures x pruning criteria x MACs ratios x scopes x precisions, in one resumable command.

    seg-sweep run --models models/camvid_bisenetv2.json models/camvid_icnet.json models/camvid_mobile_unet.json \\
        --data $CAMVID_ROOT --fine-tune-epochs 4 --out results/study
    seg-sweep plot results/study/results.json --out results/study

For each model (trained, unpruned, fp32): every criterion (l1, l2, taylor, bn_scale and random, the control) pruning
50% of the MACs; 0, 30, 50 and 70% of the MACs with the criterion best on val; decoder-only against whole-network
pruning at 50%; static INT8, dynamic-range INT8 and FP16 of the unpruned and the 50% models. The channel ratio
that removes a share of the MACs is found by measuring them. Every fp32 point is fine-tuned on the same budget,
distilled from the model as given. Per point: val and test mIoU (through the node's pipeline), GMACs, parameters,
ONNX size, latency (ONNX Runtime, batch 1, 2 threads, spinning off: median, p95, FPS; all of a model's points
timed in one run, in turns). Each point's result is saved under OUT/points as it completes, named by a hash of its
settings: a rerun skips done points (and reuses made models), so an interrupted study continues where it stopped.
Outputs: OUT/results.json, results.csv, table.md, headline.md, miou_vs_latency.png, miou_vs_ratio.png; `plot`
redraws all but the JSON from it.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import torch

from ...core.command_line import reports_user_errors
from ..data.arguments import add_dataset_arguments
from ..training.arguments import add_recipe_arguments, add_run_arguments, recipe_from_args
from ..training.config import DataConfig, RunConfig
from .config import FINE_TUNING_SCHEDULE, IMPORTANCE_CRITERIA, FineTuning
from .study_plan import (
    COMPARED_TARGET,
    CRITERIA,
    QUANTIZED_PRECISIONS,
    RATIO_TARGETS,
    STUDY_SCOPES,
    StudyPlanError,
    StudySettings,
    plan,
)
from .study_points import ResultStore, StudyContext, StudyModel, open_study_model, point_result
from .study_report import load_results, write_report
from .study_timing import time_points


def data_record(data: DataConfig) -> dict:
    """What every key holds of the data: the options and each split's checksum (not a machine's path)."""
    return {"options": data.record(), "splits": {split: data.open(split).identity()["sha256"]
                                                for split in ("train", "val", "test")}}


def measure_points(points: dict, model: StudyModel, context: StudyContext) -> tuple[list[dict], int]:
    """Each point's result with the comparisons it belongs to; and how many were measured now (not found)."""
    results, measured = [], 0
    for point, groups in points.items():
        record, now = point_result(point, model, context)
        measured += now
        results.append({**record, "groups": groups})
        print(f"{model.name} {point.label}: val {record['val_miou']:.2f}, test {record['test_miou']:.2f} mIoU, "
              f"{record['gmacs']:.3f} GMACs" + ("" if now else " (saved)"), flush=True)
    return results, measured


def timed(points: list[dict], model: StudyModel, context: StudyContext) -> list[dict]:
    """The points with their latency, all of the model's timed together in turns (or found from an earlier run)."""
    latency, now = time_points(points, model, context)
    for point in points:
        print(f"{model.name} {point['label']}: {latency[point['key']]['latency_median_ms']:.2f} ms"
              + ("" if now else " (saved)"), flush=True)
    return [{**point, **latency[point["key"]]} for point in points]


def best_criterion(results: list[dict]) -> str:
    """The criterion whose point scores the highest val mIoU (the first listed on a tie)."""
    return max((r for r in results if "criteria" in r["groups"]), key=lambda r: r["val_miou"])["criterion"]


def run_study(model_cards: list[str], settings: StudySettings, out: Path) -> tuple[dict, int]:
    """Every point of every model (measured, or found from an earlier run); the results and how many points were
    measured now."""
    context = StudyContext(settings, data_record(settings.fine_tuning.data), out, ResultStore(out / "points"),
                           ResultStore(out / "timing"))
    results = {"settings": settings.record(), "data": context.data, "models": {}, "points": []}
    measured = 0
    for text in model_cards:
        model = open_study_model(text, settings.fine_tuning.data)
        if model.name in results["models"]:
            raise StudyPlanError(f"two models named {model.name}: give each card its own file name")
        first, count = measure_points(plan(model.name, settings, None), model, context)
        best = best_criterion(first)
        points, more = measure_points(plan(model.name, settings, best), model, context)
        points = timed(points, model, context)
        results["models"][model.name] = {"card": str(model.card_path), "architecture": model.card.architecture,
                                         "best_criterion": best}
        results["points"] += points
        measured += count + more
    return results, measured


def settings_from_args(args: argparse.Namespace) -> StudySettings:
    if args.teacher:
        raise StudyPlanError("--teacher: the study distils every point from its own model as given")
    data = DataConfig(root=args.data, layout=args.layout, ignore_colours=tuple(args.ignore_colour),
                      class_map=args.class_map)
    schedule = replace(FINE_TUNING_SCHEDULE, epochs=args.fine_tune_epochs, lr=args.lr, batch_size=args.batch_size,
                       max_steps_per_epoch=args.max_steps_per_epoch, seed=args.seed)
    run = RunConfig(device=args.device, amp=args.amp, threads=args.threads, workers=args.workers)
    return StudySettings(
        fine_tuning=FineTuning(data=data, recipe=recipe_from_args(args), schedule=schedule, run=run),
        criteria=tuple(args.criteria), ratio_targets=tuple(args.ratios), compared_target=args.compared_ratio,
        scope=args.scope, precisions=tuple(args.precisions), pruning_steps=args.pruning_steps,
        round_to=args.round_to or None, max_layer_ratio=args.max_layer_ratio,
        calibration_frames=args.calibration_frames, timing_threads=args.timing_threads,
        timing_runs=args.timing_runs, seed=args.seed)


def add_study_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", nargs="+", required=True, metavar="CARD",
                        help="trained, unpruned fp32 models (cards), one per architecture")
    group = parser.add_argument_group("points")
    group.add_argument("--criteria", nargs="+", default=list(CRITERIA), choices=sorted(IMPORTANCE_CRITERIA))
    group.add_argument("--ratios", type=float, nargs="+", default=list(RATIO_TARGETS),
                       help="shares of the MACs removed, with the best criterion")
    group.add_argument("--compared-ratio", type=float, default=COMPARED_TARGET,
                       help="share of the MACs removed where criteria, scopes and precisions are compared")
    group.add_argument("--scope", default="all", choices=STUDY_SCOPES,
                       help="scope of the criteria and ratios; the other one is the scope comparison")
    group.add_argument("--precisions", nargs="*", default=list(QUANTIZED_PRECISIONS), choices=QUANTIZED_PRECISIONS)
    group.add_argument("--pruning-steps", type=int, default=1, help="iterative pruning steps per point")
    group.add_argument("--round-to", type=int, default=8, help="keep widths multiples of this (0: off)")
    group.add_argument("--max-layer-ratio", type=float, default=0.8, help="per-layer pruning cap")
    group.add_argument("--calibration-frames", type=int, default=64, help="static INT8: train frames calibrated on")
    group.add_argument("--timing-threads", type=int, default=2)
    group.add_argument("--timing-runs", type=int, default=50, help="timed runs per point")
    budget = parser.add_argument_group("fine-tuning budget (every point the same)")
    budget.add_argument("--fine-tune-epochs", type=int, default=FINE_TUNING_SCHEDULE.epochs,
                        help="epochs after each pruning step")
    budget.add_argument("--max-steps-per-epoch", type=int, default=0, help="cap optimizer steps per epoch (0: none)")
    budget.add_argument("--lr", type=float, default=FINE_TUNING_SCHEDULE.lr)
    budget.add_argument("--batch-size", type=int, default=FINE_TUNING_SCHEDULE.batch_size)
    budget.add_argument("--seed", type=int, default=FINE_TUNING_SCHEDULE.seed)
    add_dataset_arguments(parser)
    add_recipe_arguments(parser)
    add_run_arguments(parser)
    parser.add_argument("--out", required=True, type=Path, help="study folder (results, models, saved points)")


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="seg-sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    add_study_arguments(commands.add_parser("run", help="run (or resume) the study"))
    plot = commands.add_parser("plot", help="redraw the CSV, table and PNGs from a study's results.json")
    plot.add_argument("results", type=Path)
    plot.add_argument("--out", required=True, type=Path)
    return parser.parse_args(argv)


@reports_user_errors
def main(argv: list[str] | None = None) -> None:
    args = parse_arguments(argv)
    if args.command == "plot":
        written = write_report(load_results(args.results), args.out)
    else:
        settings = settings_from_args(args)
        if args.threads:
            torch.set_num_threads(args.threads)  # pruning and the MACs search too, not only fine-tuning
        results, measured = run_study(args.models, settings, args.out)
        (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        written = [args.out / "results.json", *write_report(results, args.out)]
        print(f"{len(results['points'])} points, {measured} measured now, "
              f"{len(results['points']) - measured} found from an earlier run")
    print("wrote " + ", ".join(str(path) for path in written))


if __name__ == "__main__":
    main()
