"""Mobile U-Net: an ImageNet-pretrained EfficientNet-Lite0 encoder and a light decoder with skips at strides 2-32."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import DoubleConv, resize_to
from .efficientnet_lite import EfficientNetLite0Encoder


class MobileUNet(nn.Module):
    """Decoder stages at strides 16, 8, 4, 2 (widths `decoder_channels`), classifier at stride 2, 2x up to input."""

    def __init__(self, num_classes: int, decoder_channels: list[int] | None = None, pretrained: bool = False):
        super().__init__()
        decoder_channels = list(decoder_channels or [128, 64, 48, 32])
        self.encoder = EfficientNetLite0Encoder()
        if pretrained:
            self.encoder.load_imagenet()
        skip_channels = list(reversed(self.encoder.feature_channels[:-1]))
        in_channels = [self.encoder.feature_channels[-1]] + decoder_channels[:-1]
        self.decoder = nn.ModuleList(
            DoubleConv(in_ch + skip_ch, out_ch)
            for in_ch, skip_ch, out_ch in zip(in_channels, skip_channels, decoder_channels))
        self.classifier = nn.Conv2d(decoder_channels[-1], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x)
        y = features.pop()
        for stage in self.decoder:
            skip = features.pop()
            y = stage(torch.cat([resize_to(y, skip), skip], dim=1))
        logits = self.classifier(y)
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
