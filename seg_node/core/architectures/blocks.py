"""Building blocks shared by the U-Net family."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DoubleConv(nn.Sequential):
    """Two (conv kxk, BatchNorm, ReLU) layers: the U-Net stage."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3):
        pad = kernel // 2
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel, padding=pad, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True),
            nn.Conv2d(out_ch, out_ch, kernel, padding=pad, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))


def resize_to(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Bilinearly resize x to reference's spatial size (sizes like 360 are not divisible by 2**depth)."""
    if x.shape[-2:] == reference.shape[-2:]:
        return x
    return F.interpolate(x, size=reference.shape[-2:], mode="bilinear", align_corners=False)


class Upsample(nn.Module):
    """2x upsampling by transposed convolution or by bilinear interpolation plus a 1x1 conv."""

    modes = ("transpose", "bilinear")

    def __init__(self, in_ch: int, out_ch: int, mode: str):
        super().__init__()
        if mode not in self.modes:
            raise ValueError(f"upsampling must be one of {self.modes}, got {mode!r}")
        self.mode = mode
        if mode == "transpose":
            self.proj = nn.ConvTranspose2d(in_ch, out_ch, 2, stride=2)
        else:
            self.proj = nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        if self.mode == "transpose":
            return resize_to(self.proj(x), skip)
        return self.proj(resize_to(x, skip))
