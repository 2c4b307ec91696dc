"""Sweep prune ratios x precisions and tabulate accuracy, size and CPU latency: the README's compression table.

    seg-sweep --base models/camvid_mobile_unet.json --data $CAMVID_ROOT --out results/sweep

Each ratio > 0 is pruned structurally and fine-tuned (seg-prune's method), then quantized to INT8 (U8S8).
Every model is scored on the CamVid test split by the evaluation command's code and timed through the node's
pipeline at the card's input size (480x360), batch 1, 2 threads: torch (fp32 only) and onnxruntime.
An unstructured magnitude-pruning row shows that zeroed weights do not buy speed on dense kernels.
`--also` adds models pruned from the same base by other seg-prune options (other ratios, rounding, per-stage
ratios) to the same table. Models the sweep makes are kept under OUT/models and reused by a later sweep only
if their card records the SHA-256 of the very ONNX file they were made from and the same options
(`compression.origin`): a retrained base under the same name, or other fine-tuning options, get new variants.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
from pathlib import Path

import torch

from ...core.backends.torch_backend import build_for_inference
from ...core.command_line import reports_user_errors
from ...core.model_card import ModelCard
from ...core.model_files import model_file, resolve_model
from ...core.pipeline import SegmentationPipeline
from ..evaluation.timing import benchmark_pipelines, load_frames
from ..data import open_dataset
from ..evaluation.evaluate import evaluate
from ..export import export_model, parity_frames
from .prune import SCOPES, count_macs_and_params, overall_ratio, prune
from .quantize import calibration_inputs, quantize_int8, quantized_card
from .unstructured import magnitude_prune


def measure(card_path: Path, test_set, frames, threads: int, torch_too: bool) -> dict:
    """Test mIoU (onnxruntime), file size, and pipeline latency with onnxruntime (and torch for fp32)."""
    pipeline = SegmentationPipeline.from_model(card_path, "onnxruntime", "cpu", threads=threads)
    matrix, _ = evaluate(pipeline, test_set)
    pipelines = {"ort": pipeline}
    if torch_too:
        pipelines["torch"] = SegmentationPipeline.from_model(card_path, "torch", "cpu", threads=threads)
    latency = benchmark_pipelines(pipelines, frames, 5, desc=f"{card_path.stem}: {', '.join(pipelines)}")
    return {"test_miou": round(100 * matrix.mean_iou(), 2),
            "onnx_mb": round(model_file(pipeline.card, card_path, "onnx").stat().st_size / 1e6, 2),
            **{key: latency[key]["total"] for key in pipelines}}


def export_variant(model, stem: Path, base: ModelCard, data, compression: dict, notes: str) -> Path:
    export_model(model, stem, name=stem.name, architecture=base.architecture, classes=base.classes,
                 palette=base.palette, spec=base.input, parity_inputs=parity_frames(data, 8, base.input),
                 training=base.training, compression=compression, notes=notes)
    return stem.with_suffix(".json")


def onnx_sha256(card_path: Path) -> str:
    """Digest of a model's ONNX file: what identifies the weights a saved variant was made from."""
    card = ModelCard.load(card_path)
    return hashlib.sha256(model_file(card, card_path, "onnx").read_bytes()).hexdigest()


def made_from(variant_card: Path, origin: dict) -> bool:
    """Whether an earlier sweep's saved variant was made from these very weights with these options (so it can
    be reused)."""
    return variant_card.exists() and ModelCard.load(variant_card).compression.get("origin") == origin


def int8_variant(card_path: Path, out_dir: Path, data, calibration_frames: int, origin: dict) -> Path:
    card = ModelCard.load(card_path)
    out = out_dir / f"{card_path.stem}_int8.onnx"
    quantize_int8(model_file(card, card_path, "onnx"), out, calibration_inputs(data, calibration_frames, card), "u8")
    int8_card = quantized_card(card, out, "int8", {"method": "onnxruntime static QDQ, per-channel weights, MinMax",
                                                   "activation_type": "u8", "weight_type": "s8",
                                                   "calibration": f"{calibration_frames} CamVid train frames"})
    int8_card.compression["origin"] = origin
    int8_card.save(out.with_suffix(".json"))
    return out.with_suffix(".json")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 5))
    for precision, marker in (("fp32", "o"), ("int8", "s")):
        chosen = [r for r in rows if r["precision"] == precision and r["method"] == "structured"]
        extra = [r for r in rows if r["precision"] == precision and r["method"] == "structured (given)"]
        ax.scatter([r["ort_median_ms"] for r in extra], [r["test_miou"] for r in extra], marker="*", s=120,
                   color="C2" if precision == "fp32" else "C3", zorder=3, label=f"given model, {precision}")
        for r in extra:
            ax.annotate(r["model"], (r["ort_median_ms"], r["test_miou"]), textcoords="offset points",
                        xytext=(4, -10), fontsize=7)
        ax.plot([r["ort_median_ms"] for r in chosen], [r["test_miou"] for r in chosen], marker=marker,
                label=f"structured pruning, {precision} (onnxruntime)")
        for r in chosen:
            ax.annotate(f"{r['ratio']:.0%}", (r["ort_median_ms"], r["test_miou"]), textcoords="offset points",
                        xytext=(4, 4), fontsize=8)
    baseline = [r for r in rows if r["precision"] == "fp32" and r["ratio"] == 0 and "torch_median_ms" in r]
    if baseline:
        ax.scatter([baseline[0]["torch_median_ms"]], [baseline[0]["test_miou"]], marker="x", color="k",
                   label="unpruned fp32 (torch)")
    for r in rows:
        if r["method"] == "unstructured":
            ax.scatter([r["ort_median_ms"]], [r["test_miou"]], marker="^", color="r",
                       label=f"unstructured {r['ratio']:.0%} (onnxruntime)")
    ax.set(xlabel="CPU latency, median ms (480x360, 2 threads)", ylabel="CamVid test mIoU (%)",
           title="Accuracy vs latency")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_table(rows: list[dict], path: Path) -> str:
    header = ("| model | method | ratio | precision | params (M) | GMACs | ONNX MB | test mIoU "
              "| torch ms (median / p95) "
              "| onnxruntime ms (median / p95) |\n|---|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for r in rows:
        torch_ms = f"{r['torch_median_ms']:.1f} / {r['torch_p95_ms']:.1f}" if "torch_median_ms" in r else "-"
        lines.append(f"| {r['model']} | {r['method']} | {r['ratio']:.0%} | {r['precision']} | {r['params'] / 1e6:.2f} "
                     f"| {r['macs'] / 1e9:.2f} | {r['onnx_mb']:.1f} | {r['test_miou']:.2f} | {torch_ms} "
                     f"| {r['ort_median_ms']:.1f} / {r['ort_p95_ms']:.1f} |")
    text = header + "\n".join(lines) + "\n"
    path.write_text(text)
    return text


@reports_user_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="the trained fp32 model (card or a file beside it)")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.0, 0.3, 0.5, 0.7])
    parser.add_argument("--criterion", default="l2")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--fine-tune-epochs", type=int, default=8, help="per pruning step")
    parser.add_argument("--lr", type=float, default=3e-4, help="fine-tuning learning rate")
    parser.add_argument("--scope", default="decoder", choices=SCOPES, help="prune everything or the decoder only")
    parser.add_argument("--also", nargs="*", default=[], metavar="CARD",
                        help="already-pruned fp32 models to measure alongside (their INT8 is made here too)")
    parser.add_argument("--unstructured", type=float, default=0.5, help="sparsity of the baseline row (0: none)")
    parser.add_argument("--calibration-frames", type=int, default=64)
    parser.add_argument("--frames", type=int, default=50, help="frames timed per model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data", help="CamVid folder (default: $CAMVID_ROOT)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    out = Path(args.out)
    (out / "models").mkdir(parents=True, exist_ok=True)
    base, base_path = resolve_model(args.base)
    test_set = open_dataset(args.data, "test")
    frames = load_frames(args.data, "test", args.frames)
    torch.set_num_threads(args.threads)
    base_macs, base_params = count_macs_and_params(
        build_for_inference(base, model_file(base, base_path, "torch")), base.input.height, base.input.width)

    base_sha256 = onnx_sha256(base_path)
    pruned_origin = {"source_sha256": base_sha256, "criterion": args.criterion, "steps": args.steps,
                     "fine_tune_epochs": args.fine_tune_epochs, "lr": args.lr, "scope": args.scope}
    variants = []  # (card path, method, ratio, macs, params)
    for ratio in args.ratios:
        if ratio == 0:
            variants.append((base_path, "structured", 0.0, base_macs, base_params))
            continue
        stem = out / "models" / f"{base.name}_p{round(ratio * 100):02d}"
        if not made_from(stem.with_suffix(".json"), pruned_origin):
            model, summary = prune(base, base_path, ratio, args.criterion, args.steps, args.fine_tune_epochs,
                                   args.data, lr=args.lr, threads=args.threads, scope=args.scope)
            export_variant(model, stem, base, args.data, {**summary, "origin": pruned_origin},
                           f"{base.name} pruned by {ratio:.0%} ({args.scope}, {args.criterion}), fine-tuned on "
                           "CamVid train")
        summary = ModelCard.load(stem.with_suffix(".json")).compression
        variants.append((stem.with_suffix(".json"), "structured", ratio, summary["macs"], summary["params"]))
    for given in args.also:
        card, card_path = resolve_model(given)
        summary = card.compression
        if "macs" not in summary or summary.get("base_model") != base.name:
            raise SystemExit(f"--also {given}: its card must record structured pruning of {base.name} "
                             f"(compression.macs and compression.base_model)")
        variants.append((card_path, "structured (given)", overall_ratio(summary),
                         summary["macs"], summary["params"]))
    if args.unstructured:
        stem = out / "models" / f"{base.name}_unstructured{round(args.unstructured * 100):02d}"
        if not made_from(stem.with_suffix(".json"), {"source_sha256": base_sha256}):
            model = build_for_inference(base, model_file(base, base_path, "torch"))
            sparsity = magnitude_prune(model, args.unstructured)
            export_variant(model, stem, base, args.data,
                           {"method": "unstructured magnitude (torch.nn.utils.prune)", "sparsity": sparsity,
                            "origin": {"source_sha256": base_sha256}},
                           f"{base.name} with {sparsity:.0%} of conv weights zeroed, no fine-tuning")
        variants.append((stem.with_suffix(".json"), "unstructured", args.unstructured, base_macs, base_params))

    rows = []
    for card_path, method, ratio, macs, params in variants:
        paths = [(card_path, "fp32")]
        if method.startswith("structured"):
            int8_path = out / "models" / f"{card_path.stem}_int8.json"
            int8_origin = {"source_sha256": onnx_sha256(card_path), "calibration_frames": args.calibration_frames}
            if not made_from(int8_path, int8_origin):
                int8_path = int8_variant(card_path, out / "models", args.data, args.calibration_frames, int8_origin)
            paths.append((int8_path, "int8"))
        for path, precision in paths:
            measured = measure(path, test_set, frames, args.threads, torch_too=precision == "fp32")
            row = {"model": path.stem, "method": method, "ratio": ratio, "precision": precision, "params": params,
                   "macs": macs, "onnx_mb": measured["onnx_mb"], "test_miou": measured["test_miou"],
                   "ort_median_ms": measured["ort"]["median"], "ort_p95_ms": measured["ort"]["p95"]}
            if "torch" in measured:
                row.update(torch_median_ms=measured["torch"]["median"], torch_p95_ms=measured["torch"]["p95"])
            rows.append(row)
            print(f"{row['model']}: test mIoU {row['test_miou']:.2f}, onnxruntime {row['ort_median_ms']:.1f} ms")

    (out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    with open(out / "results.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=sorted({k for r in rows for k in r}))
        writer.writeheader()
        writer.writerows(rows)
    table = write_table(rows, out / "table.md")
    plot(rows, out / "accuracy_vs_latency.png")
    reference = next(r for r in rows if r["ratio"] == 0 and r["precision"] == "fp32")
    print(f"\nCamVid test, {len(frames)} frames timed at {base.input.width}x{base.input.height}, batch 1, "
          f"{args.threads} threads, CPU\n{table}")
    for r in rows:
        if r["method"].startswith("structured") and r["ratio"] > 0 and "torch_median_ms" in reference:
            print(f"{r['model']}: {1 - r['macs'] / reference['macs']:.0%} fewer MACs, "
                  f"{r['test_miou'] - reference['test_miou']:+.2f} mIoU, "
                  f"{reference['torch_median_ms'] / r['ort_median_ms']:.2f}x faster than the unpruned fp32 "
                  f"model through torch")
    print(f"wrote {out / 'table.md'}, {out / 'results.csv'}, {out / 'accuracy_vs_latency.png'}")


if __name__ == "__main__":
    main()
