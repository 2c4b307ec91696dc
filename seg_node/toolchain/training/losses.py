"""Segmentation losses chosen by name; all ignore the void label."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data import IGNORE_INDEX

CLASS_WEIGHTINGS = ("median_frequency", "none")


def median_frequency_weights(class_pixels: np.ndarray, image_pixels: np.ndarray) -> np.ndarray:
    """w_c = median(f) / f_c with f_c = pixels of c / pixels of the images where c appears (Eigen & Fergus), from
    the per-class sums of both over a split; a class that never appears weighs 0."""
    freq = np.where(image_pixels > 0, class_pixels / np.maximum(image_pixels, 1), 0.0)
    median = np.median(freq[freq > 0])
    return np.where(freq > 0, median / np.maximum(freq, 1e-12), 0.0).astype(np.float32)


class WeightedCrossEntropy(nn.Module):
    def __init__(self, class_weights: torch.Tensor | None):
        super().__init__()
        self.register_buffer("class_weights", class_weights)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, target, weight=self.class_weights, ignore_index=IGNORE_INDEX)


class DiceFocal(nn.Module):
    """Soft Dice over the classes plus focal loss (gamma 2): both favour small, rare classes."""

    def __init__(self, class_weights: torch.Tensor | None, gamma: float = 2.0):
        super().__init__()
        self.register_buffer("class_weights", class_weights)
        self.gamma = gamma

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid = target != IGNORE_INDEX
        safe_target = torch.where(valid, target, torch.zeros_like(target))
        log_prob = F.log_softmax(logits.float(), dim=1)
        log_pt = log_prob.gather(1, safe_target.unsqueeze(1)).squeeze(1)
        focal = -((1 - log_pt.exp()) ** self.gamma) * log_pt
        if self.class_weights is not None:
            focal = focal * self.class_weights[safe_target]
        focal = (focal * valid).sum() / valid.sum().clamp(min=1)
        prob = log_prob.exp() * valid.unsqueeze(1)
        one_hot = F.one_hot(safe_target, logits.shape[1]).permute(0, 3, 1, 2) * valid.unsqueeze(1)
        dims = (0, 2, 3)
        dice = (2 * (prob * one_hot).sum(dims) + 1) / (prob.sum(dims) + one_hot.sum(dims) + 1)
        return focal + (1 - dice.mean())


def lovasz_softmax(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Lovasz-softmax (Berman et al., CVPR 2018) over all non-void pixels of the batch: the convex extension of
    the Jaccard loss, mean over the classes present. On one-hot probabilities it equals mean(1 - IoU) exactly,
    so it optimizes the quantity mIoU measures, over-prediction of a class included."""
    prob = F.softmax(logits.float(), dim=1).permute(0, 2, 3, 1).reshape(-1, logits.shape[1])
    target = target.reshape(-1)
    valid = target != IGNORE_INDEX
    prob, target = prob[valid], target[valid]
    losses = []
    for cls in torch.unique(target).tolist():
        foreground = (target == cls).float()
        errors, order = torch.sort((foreground - prob[:, cls]).abs(), descending=True)
        truth = foreground[order]
        intersection = truth.sum() - truth.cumsum(0)
        union = truth.sum() + (1 - truth).cumsum(0)
        jaccard = 1 - intersection / union
        gradient = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])
        losses.append(torch.dot(errors, gradient))
    return torch.stack(losses).mean() if losses else logits.sum() * 0


class CrossEntropyLovasz(WeightedCrossEntropy):
    """Cross-entropy (weighted as chosen) plus Lovasz-softmax: the usual recipe for fine-tuning a CE-trained
    network towards IoU, the cross-entropy term keeping every pixel's gradient alive.

    The Lovasz term takes every second pixel in each direction: its cost is one sort per class (it doubled a
    CPU training step at full resolution), the mobile U-Net predicts at stride 2 and upsamples bilinearly, and
    the IoU of a regular quarter of the pixels is the whole's within noise, at a quarter of the sorting."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return super().forward(logits, target) + lovasz_softmax(logits[:, :, ::2, ::2], target[:, ::2, ::2])


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Pixel-wise KL(teacher || student) of temperature-softened class distributions, times T^2 (Hinton et al.)
    so its gradient scale does not shrink with T; every pixel counts, void too: the teacher has an opinion there."""
    log_student = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    kl = (log_teacher.exp() * (log_teacher - log_student)).sum(1)
    return kl.mean() * temperature ** 2


def channel_distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                              temperature: float) -> torch.Tensor:
    """Channel-wise distillation (Shu et al., ICCV 2021): each class map softened into a distribution over the
    pixels, KL(teacher || student) per map, mean over maps, times T^2. It teaches where each class lies rather
    than every pixel's class mix, so the salient regions of each map dominate and a map's offset does not count."""
    n, c, h, w = student_logits.shape
    log_student = F.log_softmax(student_logits.float().reshape(n * c, h * w) / temperature, dim=1)
    log_teacher = F.log_softmax(teacher_logits.float().reshape(n * c, h * w) / temperature, dim=1)
    kl = (log_teacher.exp() * (log_teacher - log_student)).sum(1)
    return kl.mean() * temperature ** 2


#: what a teacher's logits teach: each pixel's class distribution, or each class map's spatial distribution
DISTILLATION_LOSSES = {"pixel": distillation_loss, "channel": channel_distillation_loss}


LOSSES = {"ce": WeightedCrossEntropy, "dice_focal": DiceFocal, "ce_lovasz": CrossEntropyLovasz}


def build_loss(name: str, class_weights: torch.Tensor | None) -> nn.Module:
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; known: {sorted(LOSSES)}")
    return LOSSES[name](class_weights)
