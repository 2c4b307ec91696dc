"""Confusion-matrix segmentation metrics: one matrix accumulated over a whole split, unlabelled pixels excluded."""

from __future__ import annotations

import numpy as np


class ConfusionMatrix:
    """Rows: ground truth, columns: prediction; labels >= num_classes (IGNORE_INDEX) are left out."""

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

    def precision(self) -> np.ndarray:
        """Per class: of the pixels predicted as it, the share labelled as it; NaN where it was never predicted."""
        return ratio(np.diagonal(self.matrix), self.matrix.sum(0))

    def recall(self) -> np.ndarray:
        """Per class: of the pixels labelled as it, the share predicted as it; NaN where it is never labelled."""
        return ratio(np.diagonal(self.matrix), self.matrix.sum(1))

    def f1(self) -> np.ndarray:
        """Per class: the harmonic mean of precision and recall (the Dice score)."""
        return ratio(2 * np.diagonal(self.matrix), self.matrix.sum(0) + self.matrix.sum(1))

    def miou(self) -> float:
        return float(mean_iou_of(self.matrix))

    def pixel_accuracy(self) -> float:
        total = self.matrix.sum()
        return float(np.trace(self.matrix) / total) if total else float("nan")

    def summary(self, class_names: list[str] | tuple[str, ...]) -> dict:
        """Percentages rounded to 0.01 (None where undefined), ready for JSON and model cards."""
        per_class = zip(class_names, self.iou(), self.precision(), self.recall(), self.f1())
        return {
            "miou": percent(self.miou()),
            "pixel_accuracy": percent(self.pixel_accuracy()),
            "per_class": {name: {"iou": percent(iou), "precision": percent(precision), "recall": percent(recall),
                                 "f1": percent(f1)} for name, iou, precision, recall, f1 in per_class},
        }


def percent(value: float) -> float | None:
    return None if np.isnan(value) else round(100 * float(value), 2)


def ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / np.maximum(denominator, 1), np.nan)


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
