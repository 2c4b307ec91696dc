"""The classic U-Net (Ronneberger et al., 2015) with per-stage kernel sizes and a choice of upsampling."""

from __future__ import annotations

import torch
from torch import nn

from .blocks import DoubleConv, SegmentationNetwork, Upsample


class UNet(SegmentationNetwork):
    """Encoder of `depth` poolings with widths base * 2**i; symmetric decoder with skip concatenations.

    `kernel_sizes` gives one kernel per encoder stage (depth + 1 values); the decoder mirrors it.
    """

    def __init__(self, num_classes: int, base_width: int = 64, depth: int = 4,
                 kernel_sizes: list[int] | None = None, upsampling: str = "transpose"):
        super().__init__()
        kernel_sizes = list(kernel_sizes or [3] * (depth + 1))
        if len(kernel_sizes) != depth + 1:
            raise ValueError(f"kernel_sizes needs {depth + 1} values (one per stage), got {kernel_sizes}")
        widths = [base_width * 2 ** i for i in range(depth + 1)]
        self.pool = nn.MaxPool2d(2)
        self.down = nn.ModuleList(
            DoubleConv(3 if i == 0 else widths[i - 1], widths[i], kernel_sizes[i]) for i in range(depth + 1))
        self.up = nn.ModuleList(Upsample(widths[i + 1], widths[i], upsampling) for i in reversed(range(depth)))
        self.up_conv = nn.ModuleList(
            DoubleConv(2 * widths[i], widths[i], kernel_sizes[i]) for i in reversed(range(depth)))
        self.classifier = nn.Conv2d(widths[0], num_classes, 1)

    @property
    def encoder(self) -> nn.ModuleList:
        """The contracting path (what decoder-only pruning leaves whole)."""
        return self.down

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        skips = []
        for index, stage in enumerate(self.down):
            x = stage(x if index == 0 else self.pool(x))
            skips.append(x)
        return skips

    def logits_and_aux(self, x: torch.Tensor, with_aux: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = self.encode(x)
        x = skips.pop()
        for up, conv in zip(self.up, self.up_conv):
            skip = skips.pop()
            x = conv(torch.cat([up(x, skip), skip], dim=1))
        return self.classifier(x), []
