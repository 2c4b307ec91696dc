"""ICNet (Zhao et al., "ICNet for Real-Time Semantic Segmentation on High-Resolution Images", ECCV 2018) with an
ImageNet-pretrained EfficientNet-Lite backbone (Lite0 by default) in place of the paper's half-width PSPNet50.

Three resolutions in cascade, as the paper's Caffe model: the half-size image runs the backbone to stride 8
(stride 16 of the input); that map, shrunk by 2, runs the rest of the backbone with dilated convolutions instead of
strides (stride 32 of the input) and a pyramid pooling; the full-size image runs three light strided convolutions
(stride 8). Two cascade feature fusion units merge them coarse to fine; the classifier sees the fused map
upsampled to stride 4. Cascade label guidance: in training, a classifier on each fusion unit's upsampled coarse
input adds an auxiliary loss (weight 0.4 each, as the reference implementations).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import ConvBNReLU, SegmentationNetwork, resize_to
from .efficientnet_lite import EfficientNetLiteEncoder

# Index of the stride-8 map among the encoder's feature maps (strides 2, 4, 8, 16, 32).
STRIDE8_FEATURE = 2


def dilate_after_stride8(encoder: EfficientNetLiteEncoder) -> None:
    """Replace the strides of the stride-16 and stride-32 stages by dilation (rates 2 and 4, the strided block
    keeping the previous rate), as PSPNet's dilated ResNet: the pretrained weights keep their meaning, the map
    keeps its resolution."""
    dilation = 1
    for block in encoder._blocks[encoder.feature_blocks[STRIDE8_FEATURE] + 1:]:
        conv = block._depthwise_conv
        rate = dilation
        if conv.stride != (1, 1):
            conv.stride = (1, 1)
            dilation *= 2
        conv.dilation = (rate, rate)
        conv.padding = (rate * (conv.kernel_size[0] // 2), rate * (conv.kernel_size[1] // 2))


def pyramid_pooling(x: torch.Tensor, bins: tuple[int, ...]) -> torch.Tensor:
    """ICNet's pyramid pooling: average pools over about bin x bin cells, upsampled and summed with the map.
    Pools have a fixed kernel and stride as in the Caffe model (exact cells: stride size // bin, kernel
    size - (bin - 1) * stride), which exports to plain ONNX AveragePool where adaptive pooling of sizes that are
    not multiples of the bins does not. The windows follow the map's size, so the ONNX file has a fixed input size
    (a dynamic-size export fails)."""
    out = x
    for bins_wanted in bins:
        kernel, stride = [], []
        for size in x.shape[-2:]:
            cells = min(bins_wanted, size)
            stride.append(size // cells)
            kernel.append(size - (cells - 1) * stride[-1])
        out = out + resize_to(F.avg_pool2d(x, kernel, stride), x)
    return out


class CascadeFeatureFusion(nn.Module):
    """CFF unit: the coarse map upsampled to the fine one's size through a 3x3 conv with dilation 2, the fine map
    through a 1x1 projection, both batch-normalised, summed, ReLU. Also returns the upsampled coarse map, which
    the label-guidance classifier reads."""

    def __init__(self, coarse_ch: int, fine_ch: int, out_ch: int):
        super().__init__()
        self.coarse = nn.Sequential(nn.Conv2d(coarse_ch, out_ch, 3, padding=2, dilation=2, bias=False),
                                    nn.BatchNorm2d(out_ch))
        self.fine = nn.Sequential(nn.Conv2d(fine_ch, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, coarse: torch.Tensor, fine: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        coarse = resize_to(coarse, fine)
        return F.relu(self.coarse(coarse) + self.fine(fine)), coarse


class ICNet(SegmentationNetwork):
    """`sub1_channels`: the full-resolution branch's three convolutions (paper: 32, 32, 64); `pyramid_channels`:
    the coarse branch after pyramid pooling (256); `fusion_channels`: the fusion units' width (128);
    `pyramid_bins`: the pooling grid sizes (1, 2, 3, 6); `encoder`: lite0, lite1 or lite2, with its ImageNet
    weights when `pretrained`; `aux_heads`: cascade label guidance in training."""

    def __init__(self, num_classes: int, sub1_channels: list[int] | None = None, pyramid_channels: int = 256,
                 fusion_channels: int = 128, pyramid_bins: list[int] | None = None, encoder: str = "lite0",
                 pretrained: bool = False, aux_heads: bool = True):
        super().__init__()
        sub1_channels = list(sub1_channels or [32, 32, 64])
        if len(sub1_channels) != 3:
            raise ValueError(f"sub1_channels needs 3 widths (one per strided conv), got {sub1_channels}")
        self.pyramid_bins = tuple(pyramid_bins or (1, 2, 3, 6))
        self.encoder = EfficientNetLiteEncoder(encoder)
        if pretrained:
            self.encoder.load_imagenet()
        dilate_after_stride8(self.encoder)
        self.sub1 = nn.Sequential(*(ConvBNReLU(in_ch, out_ch, 3, stride=2)
                                    for in_ch, out_ch in zip([3, *sub1_channels[:-1]], sub1_channels)))
        self.pyramid_proj = ConvBNReLU(self.encoder.feature_channels[-1], pyramid_channels, 1)
        self.fuse_sub24 = CascadeFeatureFusion(pyramid_channels, self.encoder.feature_channels[STRIDE8_FEATURE],
                                               fusion_channels)
        self.fuse_sub12 = CascadeFeatureFusion(fusion_channels, sub1_channels[-1], fusion_channels)
        self.classifier = nn.Conv2d(fusion_channels, num_classes, 1)
        if aux_heads:
            self.aux_heads = nn.ModuleList([nn.Conv2d(pyramid_channels, num_classes, 1),
                                            nn.Conv2d(fusion_channels, num_classes, 1)])
            self.aux_weights = (0.4, 0.4)

    def branches(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The maps at strides 32 (pyramid-pooled), 16 and 8 of the input."""
        encoder = self.encoder
        y = encoder.act(encoder._bn0(encoder._conv_stem(F.interpolate(x, scale_factor=0.5, mode="bilinear"))))
        split = encoder.feature_blocks[STRIDE8_FEATURE] + 1
        for block in encoder._blocks[:split]:
            y = block(y)
        sub2 = y
        y = F.interpolate(sub2, scale_factor=0.5, mode="bilinear")
        for block in encoder._blocks[split:]:
            y = block(y)
        sub4 = self.pyramid_proj(pyramid_pooling(y, self.pyramid_bins))
        return sub4, sub2, self.sub1(x)

    def logits_and_aux(self, x: torch.Tensor, with_aux: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        sub4, sub2, sub1 = self.branches(x)
        sub24, sub4_up = self.fuse_sub24(sub4, sub2)
        sub124, sub24_up = self.fuse_sub12(sub24, sub1)
        stride4 = F.interpolate(sub124, scale_factor=2.0, mode="bilinear")
        logits = self.classifier(stride4)
        aux = [head(coarse) for head, coarse in zip(self.aux_heads, (sub4_up, sub24_up))] if with_aux else []
        return logits, aux
