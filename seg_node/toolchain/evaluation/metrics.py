"""Confusion-matrix segmentation metrics: one matrix accumulated over a whole split, void excluded."""

from __future__ import annotations

import numpy as np


class ConfusionMatrix:
    """Rows: ground truth, columns: prediction; labels >= num_classes (void) are ignored."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.matrix = np.zeros((num_classes, num_classes), np.int64)

    def update(self, prediction: np.ndarray, label: np.ndarray) -> None:
        if prediction.shape != label.shape:
            raise ValueError(f"prediction {prediction.shape} and label {label.shape} differ in shape")
        valid = label < self.num_classes
        index = label[valid].astype(np.int64) * self.num_classes + prediction[valid].astype(np.int64)
        self.matrix += np.bincount(index, minlength=self.num_classes ** 2).reshape(self.num_classes, -1)

    def iou(self) -> np.ndarray:
        """Per-class IoU; NaN for a class absent from both labels and predictions."""
        return iou_of(self.matrix)

    def mean_iou(self) -> float:
        return float(mean_iou_of(self.matrix))

    def pixel_accuracy(self) -> float:
        total = self.matrix.sum()
        return float(np.trace(self.matrix) / total) if total else float("nan")

    def summary(self, class_names: list[str] | tuple[str, ...]) -> dict:
        """Percentages rounded to 0.01, ready for JSON and model cards."""
        iou = self.iou()
        return {
            "miou": round(100 * self.mean_iou(), 2),
            "pixel_accuracy": round(100 * self.pixel_accuracy(), 2),
            "per_class_iou": {name: (None if np.isnan(v) else round(100 * float(v), 2))
                              for name, v in zip(class_names, iou)},
        }


def iou_of(matrices: np.ndarray) -> np.ndarray:
    """Per-class IoU of one C x C confusion matrix or a stack (... x C x C, rows: truth); NaN for a class absent
    from both labels and predictions."""
    tp = np.diagonal(matrices, axis1=-2, axis2=-1).astype(np.float64)
    union = matrices.sum(-1) + matrices.sum(-2) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def mean_iou_of(matrices: np.ndarray) -> np.ndarray:
    """mIoU over the classes present, of one confusion matrix or each of a stack."""
    return np.nanmean(iou_of(matrices), axis=-1)
