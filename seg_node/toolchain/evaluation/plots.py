"""PNG figures people would rather look at than numbers: confusion matrices, prediction grids, robustness curves."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_confusion_matrix(matrix: np.ndarray, class_names, path: str | Path, title: str) -> None:
    """Row-normalised confusion matrix (each ground-truth class sums to 1)."""
    plt = _pyplot()
    rows = matrix.sum(1, keepdims=True)
    normalised = np.divide(matrix, rows, out=np.zeros(matrix.shape), where=rows > 0)
    fig, ax = plt.subplots(figsize=(8, 7))
    image = ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(class_names)), class_names, rotation=60, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set(xlabel="predicted", ylabel="ground truth", title=title)
    for i in range(len(class_names)):
        for j in range(len(class_names)):
            if normalised[i, j] >= 0.01:
                ax.text(j, i, f"{normalised[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if normalised[i, j] > 0.5 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save_prediction_grid(rows: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]], lut: np.ndarray,
                         path: str | Path, void_index: int) -> None:
    """One row per frame: input | ground truth | prediction (void shown black); RGB arrays in, PNG out."""
    from ...core.postprocess import colorize
    tiles = []
    for name, image, label, prediction in rows:
        truth = colorize(label, lut)
        truth[label == void_index] = 0
        row = np.concatenate([image, truth, colorize(prediction, lut)], axis=1)
        cv2.putText(row, name, (8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 2)
        tiles.append(row)
    header = np.full((28, tiles[0].shape[1], 3), 255, np.uint8)
    width = tiles[0].shape[1] // 3
    for index, text in enumerate(("input", "ground truth", "prediction")):
        cv2.putText(header, text, (index * width + 8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1)
    cv2.imwrite(str(path), cv2.cvtColor(np.concatenate([header, *tiles]), cv2.COLOR_RGB2BGR))


def save_robustness_curves(summaries: dict[str, dict], unseen: dict[str, list[str]], path: str | Path,
                           title: str) -> None:
    """mIoU against severity (0: clean), one curve per corruption (dashed: unseen in that model's training), one
    panel per model on a shared y axis; `summaries` and `unseen` map a model's label to seg-robustness's summary of
    it and to the corruptions its training did not see."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(summaries), figsize=(4.2 * len(summaries) + 2.2, 4.6), sharey=True,
                             squeeze=False)
    colours = plt.get_cmap("tab20").colors[0::2] + plt.get_cmap("tab20").colors[1::2]  # neighbours apart
    for ax, (label, summary) in zip(axes[0], summaries.items()):
        for index, (name, by_severity) in enumerate(summary["miou"].items()):
            severities = [int(s) for s in by_severity]
            ax.plot([0, *severities], [summary["clean"], *by_severity.values()], marker="o", markersize=3,
                    color=colours[index % len(colours)], linestyle="--" if name in unseen[label] else "-", label=name)
        ax.set_title(f"{label}\nclean {summary['clean']:.1f}, mPC {summary['mpc']:.1f}, rPC {summary['rpc']:.0f}%",
                     fontsize=9)
        ax.set_xticks(range(6), ["clean", "1", "2", "3", "4", "5"])
        ax.set_xlabel("severity")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("mIoU (%)")
    axes[0][-1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=7, title="dashed: unseen")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save_confidence_figure(scores: dict[str, dict], miou: dict[str, dict], figures: dict[str, dict], examples: list,
                           void_index: int, path: Path, title: str) -> None:
    """Top: per model, frame score against per-frame mIoU (colour: severity, 0 clean). Below: the first model's
    example frames, each beside its confidence map (bright: confident) and its errors (red: wrong, grey: void)."""
    plt = _pyplot()
    fig = plt.figure(figsize=(max(4.5 * len(scores), 12), 4.2 + 2.9 * len(examples)))
    top, bottom = fig.subfigures(2, 1, height_ratios=[4.2, 2.9 * max(len(examples), 1)])
    axes = top.subplots(1, len(scores), squeeze=False)[0]
    for ax, (label, table) in zip(axes, scores.items()):
        points = [(score, value, 0) for score, value in zip(table["clean"], miou[label]["clean"])]
        points += [(score, value, s) for n, by_severity in table.items() if n != "clean"
                   for s, values in by_severity.items() for score, value in zip(values, miou[label][n][s])]
        points = np.array([p for p in points if p[1] is not None], np.float64).reshape(-1, 3)
        cloud = ax.scatter(points[:, 0], points[:, 1], c=points[:, 2], cmap="viridis_r", vmin=0, vmax=5, s=6,
                           alpha=0.6)
        every = figures[label]["all"]
        ax.set_title(f"{label}\nAUROC clean vs sev>=3 {every['auroc_sev3plus']}, Spearman {every['spearman']}",
                     fontsize=9)
        ax.set(xlabel="frame confidence score", ylabel="frame mIoU (%)")
        ax.grid(alpha=0.3)
    top.subplots_adjust(top=0.8)  # room for the figure's title above the panels' own
    top.colorbar(cloud, ax=axes.tolist(), label="severity (0: clean)")
    if examples:
        cells = bottom.subplots(len(examples), 3, squeeze=False)
        for row, ((name, severity), image, label, mask, confidence, score, value) in zip(cells, examples):
            errors = np.full(image.shape, 40, np.uint8)
            errors[(mask != label) & (label != void_index)] = (255, 0, 0)
            errors[label == void_index] = 128
            condition = "clean" if name is None else f"{name} {severity}"
            for ax, picture, text in zip(row, (image, confidence, errors),
                                         (f"{condition}: score {score:.3f}, mIoU {value}", "confidence", "errors")):
                ax.imshow(picture, cmap="gray" if picture.ndim == 2 else None, vmin=0, vmax=255)
                ax.set_title(text, fontsize=8)
                ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=90)
    plt.close(fig)
