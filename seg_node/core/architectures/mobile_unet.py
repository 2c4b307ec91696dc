"""Mobile U-Net: an ImageNet-pretrained EfficientNet-Lite encoder (Lite0 by default) and a light decoder with skips
at strides 2-32."""

from __future__ import annotations

import torch
from torch import nn

from .blocks import DoubleConv, SegmentationNetwork, resize_to
from .efficientnet_lite import EfficientNetLiteEncoder


class MobileUNet(SegmentationNetwork):
    """Decoder stages at strides 16, 8, 4, 2 (widths `decoder_channels`), classifier at stride 2."""

    def __init__(self, num_classes: int, decoder_channels: list[int] | None = None, pretrained: bool = False,
                 encoder: str = "lite0"):
        super().__init__()
        decoder_channels = list(decoder_channels or [128, 64, 48, 32])
        self.encoder = EfficientNetLiteEncoder(encoder)
        if pretrained:
            self.encoder.load_imagenet()
        skip_channels = list(reversed(self.encoder.feature_channels[:-1]))
        in_channels = [self.encoder.feature_channels[-1]] + decoder_channels[:-1]
        self.decoder = nn.ModuleList(
            DoubleConv(in_ch + skip_ch, out_ch)
            for in_ch, skip_ch, out_ch in zip(in_channels, skip_channels, decoder_channels))
        self.classifier = nn.Conv2d(decoder_channels[-1], num_classes, 1)

    def logits_and_aux(self, x: torch.Tensor, with_aux: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        features = self.encoder(x)
        y = features.pop()
        for stage in self.decoder:
            skip = features.pop()
            y = stage(torch.cat([resize_to(y, skip), skip], dim=1))
        return self.classifier(y), []
