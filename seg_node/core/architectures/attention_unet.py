"""Attention U-Net (Oktay et al., 2018): additive attention gates weight each skip before concatenation.

With `multiscale_skips`, each decoder stage also receives the finer encoder stage below its own skip,
pooled to its size, so fine detail reaches the coarse stages too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import DoubleConv
from .unet import UNet


class AttentionGate(nn.Module):
    """alpha = sigmoid(psi(relu(W_x skip + W_g gate))); returns skip * alpha."""

    def __init__(self, skip_ch: int, gate_ch: int, inter_ch: int):
        super().__init__()
        self.skip_proj = nn.Sequential(nn.Conv2d(skip_ch, inter_ch, 1, bias=False), nn.BatchNorm2d(inter_ch))
        self.gate_proj = nn.Sequential(nn.Conv2d(gate_ch, inter_ch, 1, bias=False), nn.BatchNorm2d(inter_ch))
        self.psi = nn.Sequential(nn.Conv2d(inter_ch, 1, 1), nn.BatchNorm2d(1), nn.Sigmoid())

    def forward(self, skip: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        alpha = self.psi(F.relu(self.skip_proj(skip) + self.gate_proj(gate)))
        return skip * alpha


class AttentionUNet(UNet):
    def __init__(self, num_classes: int, base_width: int = 32, depth: int = 4,
                 kernel_sizes: list[int] | None = None, upsampling: str = "bilinear",
                 multiscale_skips: bool = False):
        super().__init__(num_classes, base_width, depth, kernel_sizes, upsampling)
        widths = [base_width * 2 ** i for i in range(depth + 1)]
        kernel_sizes = list(kernel_sizes or [3] * (depth + 1))
        self.multiscale_skips = multiscale_skips
        self.gates = nn.ModuleList(
            AttentionGate(widths[i], widths[i], max(widths[i] // 2, 1)) for i in reversed(range(depth)))
        if multiscale_skips:
            self.up_conv = nn.ModuleList(
                DoubleConv(2 * widths[i] + (widths[i - 1] if i > 0 else 0), widths[i], kernel_sizes[i])
                for i in reversed(range(depth)))

    def logits_and_aux(self, x: torch.Tensor, with_aux: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = self.encode(x)
        x = skips.pop()
        for up, gate, conv in zip(self.up, self.gates, self.up_conv):
            skip = skips.pop()
            upsampled = up(x, skip)
            parts = [upsampled, gate(skip, upsampled)]
            if self.multiscale_skips and skips:
                parts.append(F.adaptive_avg_pool2d(skips[-1], skip.shape[-2:]))
            x = conv(torch.cat(parts, dim=1))
        return self.classifier(x), []
