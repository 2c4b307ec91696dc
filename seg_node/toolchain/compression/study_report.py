"""The pruning study's outputs from its results.json: a CSV, a markdown table of every point, a headline table (a
row per model), and two PNGs (test mIoU against latency, one curve per model and criterion with the Pareto front
marked; test mIoU against the share of MACs removed). `seg-sweep plot RESULTS.json --out DIR` redraws them from
the JSON alone."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from ...core.errors import UserError

CSV_COLUMNS = ("model", "architecture", "label", "groups", "criterion", "scope", "macs_target", "channel_ratio",
               "macs_reduction", "precision", "fine_tuned", "gmacs", "params_m", "onnx_mb", "val_miou", "test_miou",
               "latency_median_ms", "latency_p95_ms", "fps", "pareto", "card", "key")
CRITERION_MARKERS = {"l1": "o", "l2": "s", "taylor": "^", "bn_scale": "v", "random": "x"}
CRITERION_LINES = {"l1": "-", "l2": "--", "taylor": "-.", "bn_scale": ":", "random": (0, (1, 3))}
PRECISION_MARKERS = {"int8_static": "P", "int8_dynamic": "D", "fp16": "h"}
OUTPUTS = ("results.csv", "table.md", "headline.md", "miou_vs_latency.png", "miou_vs_ratio.png")


class StudyReportError(UserError):
    """A results file that is not a pruning study's."""


def load_results(path: Path) -> dict:
    try:
        results = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise StudyReportError(f"{path}: cannot read a study's results ({exc})") from None
    if not isinstance(results, dict) or not {"settings", "models", "points"} <= set(results):
        raise StudyReportError(f"{path}: not a pruning study's results.json (needs settings, models and points)")
    return results


def pareto_front(points: list[dict]) -> list[dict]:
    """The points no other point beats on both latency and test mIoU, fastest first."""
    front = []
    for point in sorted(points, key=lambda p: (p["latency_median_ms"], -p["test_miou"])):
        if not front or point["test_miou"] > front[-1]["test_miou"]:
            front.append(point)
    return front


def write_report(results: dict, out: Path) -> list[Path]:
    """results.csv, table.md and the PNGs in `out`; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    front = {id(point) for point in pareto_front(results["points"])}
    rows = [{**point, "groups": ";".join(point["groups"]), "pareto": id(point) in front}
            for point in results["points"]]
    with open(out / "results.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    (out / "table.md").write_text(markdown_table(results, rows))
    (out / "headline.md").write_text(headline_table(results))
    plot_latency(results, out / "miou_vs_latency.png")
    plot_ratio(results, out / "miou_vs_ratio.png")
    return [out / name for name in OUTPUTS]


def threads(settings: dict) -> str:
    return f"{settings['timing_threads']} thread{'s' if settings['timing_threads'] != 1 else ''}"


def markdown_table(results: dict, rows: list[dict]) -> str:
    settings = results["settings"]
    schedule, recipe = settings["fine_tuning"]["schedule"], settings["fine_tuning"]["recipe"]
    best = ", ".join(f"{name}: {model['best_criterion']}" for name, model in results["models"].items())
    budget = (f"{schedule['epochs']} epoch(s)"
              + (f" of at most {schedule['max_steps_per_epoch']} steps" if schedule["max_steps_per_epoch"] else "")
              + f" after each of {settings['pruning']['steps']} pruning step(s), distilled from the model as given "
                f"(weight {recipe['distill_weight']})")
    lines = [f"Best criterion on val: {best}. Fine-tuning of every point but 'given': {budget}. Latency: ONNX "
             f"Runtime, batch 1, {threads(settings)}, thread-pool spinning off, median and p95 of "
             f"{settings['timing_runs']} runs. *: on the Pareto front of latency and test mIoU.", "",
             "| model | point | compared in | MACs cut (target / measured) | GMACs | params (M) | MB | val mIoU "
             "| test mIoU | ms (median / p95) | FPS |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(
            f"| {row['model']} | {row['label']}{' *' if row['pareto'] else ''} | {row['groups'].replace(';', ', ')} "
            f"| {row['macs_target']:.0%} / {row['macs_reduction']:.1%} | {row['gmacs']:.3f} | {row['params_m']:.3f} "
            f"| {row['onnx_mb']:.2f} | {row['val_miou']:.2f} | {row['test_miou']:.2f} "
            f"| {row['latency_median_ms']:.2f} / {row['latency_p95_ms']:.2f} | {row['fps']:.1f} |")
    return "\n".join(lines) + "\n"


def find_point(results: dict, model: str, **settings) -> dict | None:
    """The model's fine-tuned point with these settings (criterion, scope, macs_target, precision), if measured."""
    wanted = {"criterion": None, "scope": None, "macs_target": 0.0, "precision": "fp32", **settings}
    return next((p for p in results["points"] if p["model"] == model and p["fine_tuned"]
                 and all(p[key] == value for key, value in wanted.items())), None)


def cell(point: dict | None) -> str:
    return f"{point['test_miou']:.1f} / {point['latency_median_ms']:.1f}" if point else "–"


def headline_columns(settings: dict, best: str) -> dict[str, dict]:
    """The headline's columns: heading -> the settings of the model's point under it (pruned by its best
    criterion, but for the random control)."""
    compared = {"criterion": best, "scope": settings["scope"], "macs_target": settings["compared_target"]}
    share = f"{settings['compared_target']:.0%}"
    columns = {f"{target:.0%}": {**compared, "macs_target": target} for target in settings["ratio_targets"] if target}
    columns[f"random {share}"] = {**compared, "criterion": "random"}
    columns[f"{share} {settings['other_scope']} only"] = {**compared, "scope": settings["other_scope"]}
    columns.update({f"{share} {precision}": {**compared, "precision": precision}
                    for precision in settings["precisions"]})
    return columns


def headline_table(results: dict) -> str:
    """A row per model: the unpruned point, then the MACs shares removed by its best criterion, the random
    control, the other scope and the precisions of the compared share, each as test mIoU / median ms."""
    settings = results["settings"]
    headings = list(headline_columns(settings, "random"))
    lines = [f"Test mIoU / median latency in ms (ONNX Runtime, batch 1, {threads(settings)}) of each model "
             f"unpruned and with a share of its MACs removed by its criterion best on val ({settings['scope']} "
             f"scope but where named); every point fine-tuned on the same budget.", "",
             f"| model | GMACs | criterion | unpruned | {' | '.join(headings)} |",
             "|---|---|---|---|" + "---|" * len(headings)]
    for model, record in results["models"].items():
        best = record["best_criterion"]
        unpruned = find_point(results, model)
        gmacs = f"{unpruned['gmacs']:.2f}" if unpruned else "–"
        cells = [cell(find_point(results, model, **point)) for point in headline_columns(settings, best).values()]
        lines.append(f"| {model} | {gmacs} | {best} | {cell(unpruned)} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def figure():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(9, 6))
    return plt, fig, ax


def model_colours(results: dict) -> dict[str, str]:
    return {name: f"C{index % 10}" for index, name in enumerate(results["models"])}


def criterion_curve(points: list[dict], model: str, criterion: str, scope: str) -> list[dict]:
    """A model's fp32 points pruned by one criterion within the study's scope, from the unpruned point on, by
    MACs target."""
    chosen = [p for p in points if p["model"] == model and p["precision"] == "fp32" and p["fine_tuned"]
              and (p["criterion"] is None or (p["criterion"] == criterion and p["scope"] == scope))]
    return sorted(chosen, key=lambda p: p["macs_target"])


def finish(plt, fig, ax, path: Path, results: dict, kinds: list) -> None:
    """Two legends beside the axes: models by colour, point kinds by line and marker; the saved figure grows to
    hold them (tight_layout alone cut off the longer names)."""
    from matplotlib.lines import Line2D
    colours = model_colours(results)
    first = ax.legend(handles=[Line2D([], [], color=c, lw=3, label=name) for name, c in colours.items()],
                      loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, title="model")
    ax.add_artist(first)
    ax.legend(handles=kinds, loc="lower left", bbox_to_anchor=(1.01, 0), fontsize=8, title="point")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def kind_handles(criteria: list[str], extra: dict[str, str]) -> list:
    from matplotlib.lines import Line2D
    handles = [Line2D([], [], color="k", ls=CRITERION_LINES[c], marker=CRITERION_MARKERS[c], label=c)
               for c in criteria]
    return handles + [Line2D([], [], color="k", ls="", marker=marker, label=label) for label, marker in extra.items()]


def plot_latency(results: dict, path: Path) -> None:
    plt, fig, ax = figure()
    points, settings, colours = results["points"], results["settings"], model_colours(results)
    for model, colour in colours.items():
        for criterion in settings["criteria"]:
            curve = criterion_curve(points, model, criterion, settings["scope"])
            ax.plot([p["latency_median_ms"] for p in curve], [p["test_miou"] for p in curve], color=colour,
                    ls=CRITERION_LINES[criterion], marker=CRITERION_MARKERS[criterion], ms=5, lw=1)
        for point in (p for p in points if p["model"] == model):
            marker = ("*" if not point["fine_tuned"] else PRECISION_MARKERS.get(point["precision"])
                      or ("X" if point["scope"] == settings["other_scope"] else None))
            if marker:
                ax.scatter(point["latency_median_ms"], point["test_miou"], color=colour, marker=marker, s=60, zorder=3)
    front = pareto_front(points)
    ax.plot([p["latency_median_ms"] for p in front], [p["test_miou"] for p in front], color="k", lw=0.8,
            drawstyle="steps-post", zorder=2)
    ax.scatter([p["latency_median_ms"] for p in front], [p["test_miou"] for p in front], s=160, facecolors="none",
               edgecolors="k", zorder=4)
    ax.set(xlabel=f"latency, median ms (ONNX Runtime, {threads(settings)}, batch 1)",
           ylabel="test mIoU (%)", title="Pruning study: accuracy against latency")
    extra = {"as given (no fine-tuning)": "*", f"{settings['other_scope']} scope": "X",
             **{precision: PRECISION_MARKERS[precision] for precision in settings["precisions"]}}
    from matplotlib.lines import Line2D
    kinds = kind_handles(settings["criteria"], extra) + [
        Line2D([], [], color="k", lw=0.8, marker="o", mfc="none", ms=10, label="Pareto front")]
    finish(plt, fig, ax, path, results, kinds)


def plot_ratio(results: dict, path: Path) -> None:
    plt, fig, ax = figure()
    points, settings = results["points"], results["settings"]
    for model, colour in model_colours(results).items():
        best = results["models"][model]["best_criterion"]
        for criterion in settings["criteria"]:  # the best one's curve; the others' points
            curve = [p for p in criterion_curve(points, model, criterion, settings["scope"])
                     if criterion == best or p["criterion"] == criterion]
            ax.plot([100 * p["macs_reduction"] for p in curve], [p["test_miou"] for p in curve], color=colour,
                    ls=CRITERION_LINES[criterion] if criterion == best else "", marker=CRITERION_MARKERS[criterion],
                    ms=5, lw=1.2)
        for point in (p for p in points if p["model"] == model and p["precision"] == "fp32"
                      and p["scope"] == settings["other_scope"]):
            ax.scatter(100 * point["macs_reduction"], point["test_miou"], color=colour, marker="X", s=60, zorder=3)
    ax.set(xlabel="MACs removed, measured (%)", ylabel="test mIoU (%)",
           title="Pruning study: accuracy against pruning (line: each model's best criterion on val)")
    finish(plt, fig, ax, path, results,
           kind_handles(settings["criteria"], {f"{settings['other_scope']} scope": "X"}))
