"""Corruption benchmark: frames of any registered data set through the camera corruptions at severities 1-5,
through the node's pipeline.

    seg-robustness --model models/camvid_mobile_unet.json --model models/camvid_mobile_unet_pruned_int8.json \\
        --data $CAMVID_ROOT --split test --out results/robustness

Each frame is corrupted once per (corruption, severity), seeded by its index in the split, the corruption and the
severity, and the same corrupted frame goes to every model, so models are compared on identical inputs (and a
--frames subset sees the frames of the full run). One confusion matrix per (model, corruption, severity) over the
frames, void excluded, as seg-eval's mIoU. Summaries in Michaelis et al. 2019's terms: mPC, the mean over
corruptions of the mean over severities of mIoU, and rPC = mPC / clean mIoU; rPC and every other relative figure
are percentages of the clean mIoU. The corruptions kept out of a model's training (augment.unseen_in_training, read
from its card) are summarised apart.
Writes robustness.json, robustness.md (tables), robustness.png (mIoU against severity) and, with --per-frame,
robustness_per_frame.json.

Beside each frame's mIoU the benchmark records the pipeline's frame confidence score (seg_node.core.confidence,
what the node's reliability monitor watches) and reports how well it tells trouble: AUROC for clean frames
against frames at severity >= 3 (all corruptions, and the unseen ones alone) and Spearman's correlation of score
and per-frame mIoU over the clean and corrupted frames together (and clean with unseen), and, for a card with a
threshold, what it flags: clean frames, frames at severity >= 3, and frames that lost more than a quarter of the
same frame's clean mIoU; robustness_confidence.png plots score against mIoU and shows confidence and error maps
of a few frames.
"""

from __future__ import annotations

import argparse
import json
import time
import zlib
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from scipy.stats import rankdata, spearmanr
from tqdm import tqdm

from ...core.command_line import reports_user_errors
from ...core.errors import UserError
from ...core.model_card import ModelCard, command_line
from ...core.model_files import resolve_model
from ...core.pipeline import SegmentationPipeline
from ..data import IGNORE_INDEX, SegmentationDataset
from ..data.arguments import add_dataset_arguments, dataset_from_args
from ..data.class_match import label_lut, read_class_map
from ..training.augment import unseen_in_training
from .corruptions import CORRUPTIONS, FAMILY, SEVERITIES, corrupt
from .metrics import ConfusionMatrix, mean_iou_of
from .plots import save_confidence_figure, save_robustness_curves

MILD = (1, 2, 3)  # the severities of the "rPC sev 1-3" figure
SEVERE = 3  # frames at this severity or above are the ones the confidence score should tell from clean ones
EXAMPLE_CORRUPTIONS = ("gaussian_noise", "fog", "motion_blur")  # shown in robustness_confidence.png when run
RELIABLE_FRACTION = 0.75  # a corrupted frame that keeps this share of its clean mIoU still counts as reliable


def frame_seed(index: int, corruption: str, severity: int) -> int:
    """The corruption's seed for frame `index` of the split: stable across runs, processes and subsets."""
    return zlib.crc32(f"{index}/{corruption}/{severity}".encode())


def spaced(count: int, frames: int | None) -> list[int]:
    """Indices of `frames` frames evenly spaced over `count` (all of them for None)."""
    if frames is None or frames >= count:
        return list(range(count))
    return sorted(set(np.linspace(0, count - 1, frames).round().astype(int).tolist()))


def mpc_of(miou: dict[str, dict[int, float]], corruptions, severities) -> float | None:
    """Mean over corruptions of the mean over severities (Michaelis et al.), None when nothing is selected."""
    rows = [[miou[c][s] for s in severities if s in miou[c]] for c in corruptions]
    rows = [row for row in rows if row]
    return float(np.mean([np.mean(row) for row in rows])) if rows else None


def summarize(clean: np.ndarray, corrupted: dict[str, dict[int, np.ndarray]], unseen) -> dict:
    """Clean mIoU, mIoU per corruption and severity, and the robustness summaries (`unseen`: the corruptions kept
    out of the model's training, summarised apart), from confusion matrices (clean: C x C; corrupted[name][severity]:
    C x C), in percent rounded to 0.01."""
    clean_miou = 100 * float(mean_iou_of(clean))
    miou = {name: {s: 100 * float(mean_iou_of(m)) for s, m in by_severity.items()}
            for name, by_severity in corrupted.items()}
    severities = sorted({s for by_severity in miou.values() for s in by_severity})
    mild = [s for s in severities if s in MILD]

    def relative(value: float | None) -> float | None:
        return None if value is None else round(100 * value / clean_miou, 2)

    def group(names: list[str]) -> dict | None:
        if not names:
            return None
        mpc, mpc_mild = mpc_of(miou, names, severities), mpc_of(miou, names, mild)
        return {"corruptions": names, "mpc": round(mpc, 2), "rpc": relative(mpc),
                "mpc_sev1_3": None if mpc_mild is None else round(mpc_mild, 2), "rpc_sev1_3": relative(mpc_mild)}

    names = list(miou)
    everything = group(names)
    worst = min(names, key=lambda n: miou[n][1]) if 1 in severities else None
    return {
        "clean": round(clean_miou, 2),
        **{k: everything[k] for k in ("mpc", "rpc", "mpc_sev1_3", "rpc_sev1_3")},
        "worst_sev1": None if worst is None else {"corruption": worst, "miou": round(miou[worst][1], 2),
                                                  "relative": relative(miou[worst][1])},
        "unseen": group([n for n in names if n in unseen]),
        "seen": group([n for n in names if n not in unseen]),
        "families": {family: group([n for n in names if FAMILY[n] == family])
                     for family in dict.fromkeys(FAMILY[n] for n in names)},
        "miou": {name: {str(s): round(v, 2) for s, v in by_severity.items()} for name, by_severity in miou.items()},
    }


def example_conditions(corruptions: list[str], severities: list[int]) -> list[tuple[str | None, int]]:
    """The clean frame and up to three corruptions at the strongest severity run, for the confidence maps."""
    chosen = [n for n in EXAMPLE_CORRUPTIONS if n in corruptions] or corruptions[:3]
    return [(None, 0)] + [(name, max(severities)) for name in chosen]


def condition_tables(corruptions: list[str], severities: list[int], make) -> dict:
    """{"clean": make(), name: {severity: make()}}: one entry per condition a frame is run in."""
    return {"clean": make(), **{n: {s: make() for s in severities} for n in corruptions}}


def cell(table: dict, name: str | None, severity: int):
    """A condition's entry of a condition_tables table (the clean frame's for name None)."""
    return table["clean"] if name is None else table[name][severity]


def warm_up(pipelines: list[SegmentationPipeline], corruptions: list[str], frame: np.ndarray) -> None:
    """Imports, numba compilation and the backends' first runs, outside the costs."""
    for name in corruptions:
        corrupt(np.zeros((32, 32, 3), np.uint8), name, 1)
    for pipeline in pipelines:
        pipeline.segment(frame, "rgb")


def benchmark(pipelines: list[SegmentationPipeline], dataset: SegmentationDataset, indices: list[int],
              corruptions: list[str], severities: list[int], progress: bool = True,
              class_map: dict[str, str] | None = None) -> tuple[list[dict], list[dict], list[dict], list, dict]:
    """Run every selected frame, clean and through every (corruption, severity), through every pipeline; each
    model is scored on the labels in its own class ids (matched by name, or by `class_map`).

    Returns, per pipeline, the confusion matrices ({"clean": C x C, name: {severity: C x C}}), the per-frame
    mIoU in percent and the per-frame confidence scores (same keys, lists in frame order); the first pipeline's
    example_conditions on the first frame (condition, image, label, mask, confidence map, score, mIoU); and the
    mean cost of a frame in ms, of each corruption (over its severities) and of each pipeline's segment(), so a
    --frames run says what a whole split costs."""
    samples = dataset.samples()
    luts = [label_lut(dataset.classes, pipeline.card.classes, class_map) for pipeline in pipelines]
    spent = {"corruptions": dict.fromkeys(corruptions, 0.0), "pipelines": [0.0] * len(pipelines)}
    warm_up(pipelines, corruptions, dataset.load(samples[indices[0]])[0])
    conditions = [(None, 0)] + [(name, s) for name in corruptions for s in severities]
    matrices = [condition_tables(corruptions, severities, partial(np.zeros, (len(p.card.classes),) * 2, np.int64))
                for p in pipelines]
    per_frame = [condition_tables(corruptions, severities, list) for _ in pipelines]
    frame_scores = [condition_tables(corruptions, severities, list) for _ in pipelines]
    examples, shown = [], example_conditions(corruptions, severities)
    with tqdm(total=len(indices) * len(conditions), desc=f"robustness on {dataset.split}", unit="frame",
              disable=not progress) as bar:
        for index in indices:
            image, data_label = dataset.load(samples[index])
            for name, severity in conditions:
                started = time.perf_counter()
                frame = image if name is None else corrupt(image, name, severity, frame_seed(index, name, severity))
                if name is not None:
                    spent["corruptions"][name] += time.perf_counter() - started
                for number, pipeline in enumerate(pipelines):
                    example = number == 0 and index == indices[0] and (name, severity) in shown
                    label = luts[number][data_label]
                    started = time.perf_counter()
                    result = pipeline.segment(frame, "rgb", confidence=example)
                    spent["pipelines"][number] += time.perf_counter() - started
                    one = ConfusionMatrix(len(pipeline.card.classes))
                    one.update(result.mask, label)
                    score = None if np.isnan(one.miou()) else round(100 * one.miou(), 2)  # None: all void
                    cell(matrices[number], name, severity)[...] += one.matrix
                    cell(per_frame[number], name, severity).append(score)
                    cell(frame_scores[number], name, severity).append(result.score)
                    if example:
                        examples.append(((name, severity), frame, label, result.mask, result.confidence,
                                         result.score, score))
                bar.update()
    cost = {"corruptions": {n: round(1e3 * t / (len(indices) * len(severities)), 1)
                            for n, t in spent["corruptions"].items()},
            "pipelines": [round(1e3 * t / (len(indices) * len(conditions)), 1) for t in spent["pipelines"]]}
    return matrices, per_frame, frame_scores, examples, cost


@dataclass
class FrameScores:
    """Frame scores of the clean frames and of every (frame, corruption, severity), with each corrupted frame's
    severity and its mIoU as a fraction of the same frame's clean mIoU (NaN where either is all void)."""

    clean: np.ndarray
    corrupted: np.ndarray
    severity: np.ndarray
    kept: np.ndarray

    @classmethod
    def of(cls, miou: dict, scores: dict, corruptions: list[str], severities: list[int]) -> FrameScores:
        """From benchmark()'s per-frame tables ({"clean": [...], name: {severity: [...]}}, frames in one order)."""
        def values(table: list) -> np.ndarray:
            return np.array([np.nan if v is None else v for v in table], np.float64)

        conditions = [(name, severity) for name in corruptions for severity in severities]
        with np.errstate(invalid="ignore", divide="ignore"):
            kept = np.concatenate([values(miou[n][s]) / values(miou["clean"]) for n, s in conditions])
        return cls(clean=np.array(scores["clean"], np.float64),
                   corrupted=np.concatenate([np.array(scores[n][s], np.float64) for n, s in conditions]),
                   severity=np.concatenate([np.full(len(scores["clean"]), s) for _, s in conditions]),
                   kept=np.where(np.isfinite(kept), kept, np.nan))

    @classmethod
    def joined(cls, parts: list[FrameScores]) -> FrameScores:
        """Several splits' frames as one set."""
        fields = ("clean", "corrupted", "severity", "kept")
        return cls(*(np.concatenate([getattr(part, name) for part in parts]) for name in fields))

    def sides(self, rule: str, reliable_fraction: float = RELIABLE_FRACTION) -> tuple[np.ndarray, np.ndarray]:
        """(good, bad) scores: rule `corruption`, clean frames against severity >= SEVERE ones; rule `accuracy`,
        clean frames and corrupted ones that kept reliable_fraction of their clean mIoU against those that did not
        (frames without an mIoU left out)."""
        if rule == "corruption":
            return self.clean, self.corrupted[self.severity >= SEVERE]
        known = ~np.isnan(self.kept)
        held = known & (self.kept >= reliable_fraction)
        return np.concatenate([self.clean, self.corrupted[held]]), self.corrupted[known & ~held]

    def at_threshold(self, threshold: float, reliable_fraction: float = RELIABLE_FRACTION) -> dict:
        """Shares of frames a threshold flags (score under it): clean, severity >= SEVERE, and the accuracy rule's
        reliable and unreliable frames; with the AUROC of the score for reliable against unreliable frames."""
        reliable, unreliable = self.sides("accuracy", reliable_fraction)

        def share(scores: np.ndarray) -> float | None:
            return round(float(np.mean(scores < threshold)), 4) if len(scores) else None

        return {"threshold": threshold, "reliable_fraction": reliable_fraction, "clean": share(self.clean),
                "sev3plus": share(self.sides("corruption")[1]),
                "reliable": share(reliable), "unreliable": share(unreliable),
                "auroc_unreliable": round(auroc(reliable, unreliable), 4) if len(unreliable) else None}


def auroc(higher, lower) -> float:
    """Area under the ROC curve of a score meant to be higher on `higher` than on `lower` samples: the chance
    that a random one of the first outscores a random one of the second, ties counting half (the Mann-Whitney
    rank-sum form, with average ranks for ties)."""
    higher, lower = np.asarray(higher, np.float64), np.asarray(lower, np.float64)
    if not (len(higher) and len(lower)):
        raise ValueError("AUROC needs samples on both sides")
    ranks = rankdata(np.concatenate([higher, lower]))
    n = len(higher)
    return float((ranks[:n].sum() - n * (n + 1) / 2) / (n * len(lower)))


def reliability(miou: dict, scores: dict, corruptions: list[str], severities: list[int], unseen,
                threshold: float | None = None) -> dict:
    """How well the frame score tells trouble, from per-frame mIoU and scores ({"clean": [...], name: {severity:
    [...]}}, same frames): AUROC for clean frames against frames at severity >= SEVERE, and Spearman's rho of score
    and mIoU over clean and all corrupted frames (frames whose mIoU is None, all void, left out), for all
    corruptions and for the `unseen` ones alone; None where a side is empty. With the card's threshold, what it
    flags (FrameScores.at_threshold): a threshold chosen on train and val, measured here."""
    def pooled(table: dict, names: list[str], chosen: list[int]) -> list:
        return [v for n in names for s in chosen for v in table[n][s]]

    severe = [s for s in severities if s >= SEVERE]

    def figures(names: list[str]) -> dict:
        corrupted = pooled(scores, names, severe)
        pairs = [(score, value) for score, value in zip(scores["clean"] + pooled(scores, names, severities),
                                                        miou["clean"] + pooled(miou, names, severities))
                 if value is not None]
        varied = len(pairs) > 2 and all(len(set(column)) > 1 for column in zip(*pairs))  # else no rank order
        rho = spearmanr(*zip(*pairs)).statistic if names and varied else None
        flagged = None if threshold is None else FrameScores.of(miou, scores, names, severities).at_threshold(threshold)
        return {"auroc_sev3plus": round(auroc(scores["clean"], corrupted), 4) if corrupted else None,
                "spearman": None if rho is None or np.isnan(rho) else round(float(rho), 4),
                "frames_sev3plus": len(corrupted), "frames_paired": len(pairs), "at_card_threshold": flagged}

    held_out = [n for n in corruptions if n in unseen]
    return {"all": figures(corruptions), "unseen": figures(held_out) if held_out else None,
            "score_median": {"clean": round(float(np.median(scores["clean"])), 4),
                             **{f"{n} sev3plus": round(float(np.median(pooled(scores, [n], severe))), 4)
                                for n in (corruptions if severe else [])}}}


def rounded(values: list[float]) -> list[float]:
    return [round(v, 4) for v in values]


def model_labels(cards: list[ModelCard], backends: list[str]) -> list[str]:
    """The card's name, with the backend where one model runs on several."""
    names = [card.name for card in cards]
    return [f"{n} ({b})" if names.count(n) > 1 else n for n, b in zip(names, backends)]


def markdown_table(results: dict) -> str:
    families = list(dict.fromkeys(FAMILY[n] for n in results["corruptions"]))

    def pct(value) -> str:
        return "–" if value is None else f"{value:.1f}"

    def rpc(group) -> str:
        return "–" if group is None else f"{group['rpc']:.1f}"

    head = (["model", "clean", "mPC", "rPC %", "rPC sev 1-3 %", "worst sev 1 (% of clean)", "unseen rPC %",
             "seen rPC %"] + [f"{f} rPC %" for f in families])
    lines = [f"{results['data']['name']} {results['split']}, {results['frames']} frames, severities "
             f"{', '.join(map(str, results['severities']))}; mIoU in %, rPC = mPC / clean.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, model in results["models"].items():
        s = model["summary"]
        worst = "–" if s["worst_sev1"] is None else f"{s['worst_sev1']['corruption']} {s['worst_sev1']['relative']:.1f}"
        lines.append("| " + " | ".join([label, pct(s["clean"]), pct(s["mpc"]), pct(s["rpc"]), pct(s["rpc_sev1_3"]),
                                        worst, rpc(s["unseen"]), rpc(s["seen"])]
                                       + [rpc(s["families"].get(f)) for f in families]) + " |")
    labels = list(results["models"])
    lines += ["", "mIoU per corruption, mean over the severities (* unseen in that model's training):", "",
              "| corruption | family | " + " | ".join(labels) + " |", "|---|---|" + "---|" * len(labels)]
    for name in results["corruptions"]:
        cells = [f"{np.mean(list(results['models'][m]['summary']['miou'][name].values())):.1f}"
                 f"{'*' if name in results['unseen_in_training'][m] else ''}" for m in labels]
        lines.append(f"| {name} | {FAMILY[name]} | " + " | ".join(cells) + " |")

    def figure(value) -> str:
        return "–" if value is None else f"{value:.3f}"

    def share(value) -> str:
        return "–" if value is None else f"{100 * value:.1f}%"

    lines += ["", f"Frame confidence score: AUROC for clean frames against severity >= {SEVERE}, Spearman's rho with "
              "per-frame mIoU over clean and corrupted frames (unseen: the unseen corruptions alone); at the card's "
              "threshold, the share of frames it flags: clean, severity >= 3, and unreliable / reliable (a corrupted "
              f"frame is unreliable under {RELIABLE_FRACTION:g} of the same frame's clean mIoU):", "",
              "| model | AUROC | AUROC unseen | Spearman | Spearman unseen | median score clean | card threshold | "
              "flags clean | flags sev >= 3 | flags unreliable | flags reliable |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for label, model in results["models"].items():
        c = model["confidence"]
        unseen = c["unseen"] or {"auroc_sev3plus": None, "spearman": None}
        flagged = c["all"]["at_card_threshold"] or dict.fromkeys(("threshold", "clean", "sev3plus", "unreliable",
                                                                  "reliable"))
        lines.append(f"| {label} | {figure(c['all']['auroc_sev3plus'])} | {figure(unseen['auroc_sev3plus'])} | "
                     f"{figure(c['all']['spearman'])} | {figure(unseen['spearman'])} | "
                     f"{c['score_median']['clean']:.3f} | {figure(flagged['threshold'])} | "
                     + " | ".join(share(flagged[k]) for k in ("clean", "sev3plus", "unreliable", "reliable")) + " |")
    return "\n".join(lines) + "\n"


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append",
                        help="model card or model file, repeat for several (default: the packaged model)")
    parser.add_argument("--backend", action="append", choices=["onnxruntime", "torch"],
                        help="once for all models, or once per --model in the same order (default: onnxruntime)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0)
    add_dataset_arguments(parser)
    parser.add_argument("--split", default="test", help="split to run (default: %(default)s)")
    parser.add_argument("--frames", type=int, help="only N frames, evenly spaced over the split (quick runs)")
    parser.add_argument("--corruptions", nargs="+", metavar="NAME", default=list(CORRUPTIONS),
                        help=f"default: all of {', '.join(CORRUPTIONS)}")
    parser.add_argument("--severities", nargs="+", type=int, choices=SEVERITIES, default=list(SEVERITIES))
    parser.add_argument("--per-frame", action="store_true",
                        help="also write each frame's mIoU (over the classes in its label or prediction) per model, "
                             "corruption and severity, to robustness_per_frame.json")
    parser.add_argument("--out", required=True, help="folder for robustness.json, robustness.md, robustness.png")
    parser.add_argument("--update-card", action="store_true",
                        help="record the summary in each model card's metrics['robustness'] (whole split only)")
    args = parser.parse_args(argv)
    args.model = args.model or [None]
    args.backend = args.backend or ["onnxruntime"]
    if len(args.backend) == 1:
        args.backend *= len(args.model)
    elif len(args.backend) != len(args.model):
        parser.error(f"give --backend once, or once per --model ({len(args.model)} models, "
                     f"{len(args.backend)} backends)")
    pairs = [(None if m is None else Path(m).resolve(), b) for m, b in zip(args.model, args.backend)]
    if len(set(pairs)) < len(pairs):
        parser.error("the same --model with the same --backend twice")
    unknown = [n for n in args.corruptions if n not in CORRUPTIONS]
    if unknown:
        parser.error(f"unknown corruption(s) {unknown}; known: {', '.join(CORRUPTIONS)}")
    args.corruptions = list(dict.fromkeys(args.corruptions))
    args.severities = sorted(set(args.severities))
    if args.frames is not None and args.frames < 1:
        parser.error(f"--frames must be at least 1, got {args.frames}")
    if args.update_card and args.frames is not None:
        parser.error("--update-card records whole-split figures in the cards: drop --frames")
    return args


def model_results(labels: list[str], pipelines: list[SegmentationPipeline], models: list, matrices: list[dict],
                  per_frame: list[dict], scores: list[dict], args: argparse.Namespace, unseen: dict) -> dict:
    """Per model: its card, backend, robustness summary and how well its frame score tells trouble."""
    return {label: {"model": p.card.name, "card": str(resolve_model(m)[1]), "backend": p.backend.describe(),
                    "summary": summarize(matrix["clean"], {n: matrix[n] for n in args.corruptions}, unseen[label]),
                    "confidence": reliability(miou, score, args.corruptions, args.severities, unseen[label],
                                              p.card.confidence.threshold)}
            for label, p, m, matrix, miou, score in zip(labels, pipelines, models, matrices, per_frame, scores)}


def write_per_frame(path: Path, results: dict, labels: list[str], per_frame: list[dict], scores: list[dict]) -> None:
    """Each frame's mIoU and score per model, corruption and severity: compact, beside the summary (5 models on
    the whole test split are 100 000 numbers)."""
    def table(values: dict, rounding) -> dict:
        return {"clean": rounding(values["clean"]),
                **{n: {str(s): rounding(values[n][s]) for s in results["severities"]} for n in results["corruptions"]}}

    path.write_text(json.dumps({
        "split": results["split"], "frame_names": results["frame_names"], "command": results["command"],
        "models": {label: table(values, list) for label, values in zip(labels, per_frame)},
        "scores": {label: table(values, rounded) for label, values in zip(labels, scores)}}) + "\n")


def write_figures(out: Path, results: dict, labels: list[str], per_frame: list[dict], scores: list[dict],
                  examples: list) -> None:
    where = f"{results['data']['name']} {results['split']}, {results['frames']} frames"
    save_robustness_curves({label: m["summary"] for label, m in results["models"].items()},
                           results["unseen_in_training"], out / "robustness.png", where)
    save_confidence_figure(dict(zip(labels, scores)), dict(zip(labels, per_frame)),
                           {label: m["confidence"] for label, m in results["models"].items()}, examples,
                           IGNORE_INDEX, out / "robustness_confidence.png",
                           f"frame confidence score, {where} (first frame shown)")


def update_cards(models: list, labels: list[str], results: dict) -> None:
    """Each card's metrics['robustness']: the whole split's summary."""
    for model, label in zip(models, labels):
        card, card_path = resolve_model(model)
        card.metrics["robustness"] = {"split": results["split"], "frames": results["frames"], "data": results["data"],
                                      "corruptions": results["corruptions"], "severities": results["severities"],
                                      **results["models"][label]["summary"], "command": results["command"]}
        card.save(card_path)


def run_robustness(argv: list[str] | None = None) -> dict:
    args = parse_arguments(argv)
    dataset = dataset_from_args(args, args.split)
    count = len(dataset.samples())
    if args.frames is not None and args.frames > count:
        raise UserError(f"--frames {args.frames}: the {args.split} split of {dataset.root} has only {count} frames")
    pipelines = [SegmentationPipeline.from_model(m, b, args.device, threads=args.threads)
                 for m, b in zip(args.model, args.backend)]
    labels = model_labels([p.card for p in pipelines], args.backend)
    held_out = {label: unseen_in_training(p.card.training, p.card.compression) for label, p in zip(labels, pipelines)}
    unseen = {label: [n for n in args.corruptions if n in held_out[label]] for label in labels}
    indices = spaced(count, args.frames)
    started = time.time()
    matrices, per_frame, scores, examples, cost = benchmark(
        pipelines, dataset, indices, args.corruptions, args.severities,
        class_map=read_class_map(args.class_map) if args.class_map else None)
    results = {
        "split": args.split, "data": dataset.identity(), "frames": len(indices),
        "frame_names": [dataset.samples()[i].name for i in indices],
        "corruptions": args.corruptions, "severities": args.severities, "unseen_in_training": unseen,
        "seconds": round(time.time() - started, 1), "command": command_line("seg-robustness", argv),
        "ms_per_frame": {"corruptions": cost["corruptions"], "models": dict(zip(labels, cost["pipelines"]))},
        "models": model_results(labels, pipelines, args.model, matrices, per_frame, scores, args, unseen)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "robustness.json").write_text(json.dumps(results, indent=1) + "\n")
    if args.per_frame:
        write_per_frame(out / "robustness_per_frame.json", results, labels, per_frame, scores)
    (out / "robustness.md").write_text(markdown_table(results))
    write_figures(out, results, labels, per_frame, scores, examples)
    if args.update_card:
        update_cards(args.model, labels, results)
    print(markdown_table(results))
    print("mean ms per frame: " + ", ".join(f"{k} {v}" for k, v in {**results["ms_per_frame"]["corruptions"],
                                                                   **results["ms_per_frame"]["models"]}.items()))
    print(f"wrote {out / 'robustness.json'}, {out / 'robustness.md'}, {out / 'robustness.png'}, "
          f"{out / 'robustness_confidence.png'}")
    return results


@reports_user_errors
def main(argv: list[str] | None = None) -> None:
    run_robustness(argv)


if __name__ == "__main__":
    main()
