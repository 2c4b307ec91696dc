"""BiSeNetV2 (Yu et al., "BiSeNet V2: Bilateral Network with Guided Aggregation for Real-time Semantic
Segmentation", IJCV 2021), trained from scratch as in the paper.

A wide and shallow detail branch keeps spatial detail at stride 8; a narrow and deep semantic branch (stem block,
gather-and-expand layers, context embedding) reaches stride 32; bilateral guided aggregation lets each branch gate
the other; a 3x3 head and a 1x1 classifier predict at stride 8. Booster heads on the semantic stages (strides 4 to
32) add auxiliary losses in training only. Every resize goes to the exact size of the map it meets, so inputs of
any size (361x479) work.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import ConvBNReLU, SegmentationNetwork, resize_to

# Per stage: convolutions (the first one strides by 2). The paper's S1, S2, S3.
DETAIL_REPEATS = (2, 3, 3)
# Gather-and-expand layers at stride 1 after the strided one, in the semantic stages S3, S4, S5.
SEMANTIC_REPEATS = (1, 1, 3)


def conv_bn(in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """Conv kxk and BatchNorm without activation (what the paper's layers end with before a sum or a gate)."""
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(out_ch))


def depthwise_separable(channels: int, out_ch: int) -> nn.Sequential:
    """Depthwise 3x3 and BatchNorm, then a pointwise 1x1 conv."""
    return nn.Sequential(conv_bn(channels, channels, 3, groups=channels),
                         nn.Conv2d(channels, out_ch, 1, bias=False))


class ExpandingDepthwise(nn.Module):
    """The gather-and-expand layer's expansion: a depthwise 3x3 conv with `expand` outputs per input channel
    (at stride 2 followed by a second depthwise 3x3), each with BatchNorm. Written as `expand` parallel depthwise
    paths whose outputs are concatenated, the same function up to the order of the channels: Torch-Pruning's
    DepGraph takes a conv with groups == in_channels for one output per input and cannot prune a channel
    multiplier, but it follows parallel depthwise convs into a concatenation, pruning an input channel together
    with its `expand` outputs."""

    def __init__(self, channels: int, expand: int, stride: int):
        super().__init__()
        self.paths = nn.ModuleList(
            nn.Sequential(conv_bn(channels, channels, 3, stride, groups=channels),
                          *([conv_bn(channels, channels, 3, groups=channels)] if stride == 2 else []))
            for _ in range(expand))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([path(x) for path in self.paths], dim=1)


class DetailBranch(nn.Sequential):
    """Three stages of plain 3x3 convolutions, each starting with a stride of 2: stride 8, widths `widths`."""

    def __init__(self, widths: list[int]):
        layers, in_ch = [], 3
        for width, repeats in zip(widths, DETAIL_REPEATS):
            for index in range(repeats):
                layers.append(ConvBNReLU(in_ch, width, 3, stride=2 if index == 0 else 1))
                in_ch = width
        super().__init__(*layers)


class StemBlock(nn.Module):
    """Stride 4 quickly: a strided conv, then a strided conv path and a max-pool path, concatenated and fused."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = ConvBNReLU(3, channels, 3, stride=2)
        self.conv_path = nn.Sequential(ConvBNReLU(channels, channels // 2, 1),
                                       ConvBNReLU(channels // 2, channels, 3, stride=2))
        self.pool_path = nn.MaxPool2d(3, 2, 1)
        self.fuse = ConvBNReLU(2 * channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return self.fuse(torch.cat([self.conv_path(x), self.pool_path(x)], dim=1))


class GatherExpand(nn.Module):
    """Gather-and-expand layer: a 3x3 conv gathers, a depthwise 3x3 expands `expand` times (at stride 2: strided,
    then a second depthwise 3x3), a 1x1 projects; a residual (at stride 2 a depthwise-separable shortcut), ReLU."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand: int):
        super().__init__()
        self.gather = ConvBNReLU(in_ch, in_ch, 3)
        self.expand = nn.Sequential(ExpandingDepthwise(in_ch, expand, stride), nn.ReLU(inplace=True))
        self.project = conv_bn(in_ch * expand, out_ch, 1)
        self.shortcut = (nn.Sequential(conv_bn(in_ch, in_ch, 3, stride, groups=in_ch), conv_bn(in_ch, out_ch, 1))
                         if stride == 2 else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.project(self.expand(self.gather(x))) + self.shortcut(x))


class ContextEmbedding(nn.Module):
    """Global average pooling, BatchNorm, 1x1 conv, broadcast back onto the map, then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.pooled_norm = nn.BatchNorm2d(channels)
        self.pooled_conv = ConvBNReLU(channels, channels, 1)
        self.conv = ConvBNReLU(channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        context = self.pooled_conv(self.pooled_norm(F.adaptive_avg_pool2d(x, 1)))
        return self.conv(x + context)


class SemanticBranch(nn.Module):
    """Stem (stride 4), gather-and-expand stages at strides 8, 16, 32, context embedding. Returns the map of
    every stage (the booster heads' inputs) and the context-embedded map."""

    def __init__(self, widths: list[int], expand: int):
        super().__init__()
        self.stem = StemBlock(widths[0])
        self.stages = nn.ModuleList(
            nn.Sequential(GatherExpand(in_ch, out_ch, 2, expand),
                          *(GatherExpand(out_ch, out_ch, 1, expand) for _ in range(repeats)))
            for in_ch, out_ch, repeats in zip(widths[:-1], widths[1:], SEMANTIC_REPEATS))
        self.context = ContextEmbedding(widths[-1])

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        x = self.stem(x)
        stage_maps = [x]
        for stage in self.stages:
            x = stage(x)
            stage_maps.append(x)
        return stage_maps, self.context(x)


class BilateralGuidedAggregation(nn.Module):
    """Each branch gates the other at its own resolution: detail * sigmoid(semantic upsampled to stride 8), and
    (detail downsampled to stride 32) * sigmoid(semantic), upsampled; the sum goes through a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.detail_keep = depthwise_separable(channels, channels)
        self.detail_down = nn.Sequential(conv_bn(channels, channels, 3, 2), nn.AvgPool2d(3, 2, 1))
        self.semantic_up = conv_bn(channels, channels, 3)
        self.semantic_keep = depthwise_separable(channels, channels)
        self.fuse = ConvBNReLU(channels, channels, 3)

    def forward(self, detail: torch.Tensor, semantic: torch.Tensor) -> torch.Tensor:
        fine = self.detail_keep(detail) * torch.sigmoid(resize_to(self.semantic_up(semantic), detail))
        coarse = self.detail_down(detail)
        coarse = coarse * torch.sigmoid(resize_to(self.semantic_keep(semantic), coarse))
        return self.fuse(fine + resize_to(coarse, fine))


class BoosterHead(nn.Sequential):
    """Training-only segmentation head on a semantic stage: 3x3 conv, dropout, 1x1 classifier."""

    def __init__(self, in_ch: int, mid_ch: int, num_classes: int):
        super().__init__(ConvBNReLU(in_ch, mid_ch, 3), nn.Dropout(0.1), nn.Conv2d(mid_ch, num_classes, 1))


class BiSeNetV2(SegmentationNetwork):
    """`detail_channels` (3 stages) and `semantic_channels` (stem and 3 stages) default to the paper's widths;
    both branches must end at the same width. `expand` is the gather-and-expand ratio, `head_channels` the
    segmentation head's width (1024 as the reference implementations), `aux_channels` the booster heads' width;
    `aux_heads` turns the booster heads (weight 1 each, as the paper) on."""

    def __init__(self, num_classes: int, detail_channels: list[int] | None = None,
                 semantic_channels: list[int] | None = None, expand: int = 6, head_channels: int = 1024,
                 aux_channels: int = 128, aux_heads: bool = True):
        super().__init__()
        detail_channels = list(detail_channels or [64, 64, 128])
        semantic_channels = list(semantic_channels or [16, 32, 64, 128])
        if len(detail_channels) != 3 or len(semantic_channels) != 4:
            raise ValueError(f"detail_channels needs 3 widths and semantic_channels 4 (stem and 3 stages), got "
                             f"{detail_channels} and {semantic_channels}")
        if detail_channels[-1] != semantic_channels[-1]:
            raise ValueError(f"the branches must end at the same width to be aggregated, got "
                             f"{detail_channels[-1]} (detail) and {semantic_channels[-1]} (semantic)")
        self.detail = DetailBranch(detail_channels)
        self.semantic = SemanticBranch(semantic_channels, expand)
        self.aggregation = BilateralGuidedAggregation(detail_channels[-1])
        self.head = nn.Sequential(ConvBNReLU(detail_channels[-1], head_channels, 3), nn.Dropout(0.1))
        self.classifier = nn.Conv2d(head_channels, num_classes, 1)
        if aux_heads:
            self.aux_heads = nn.ModuleList(BoosterHead(width, aux_channels, num_classes)
                                           for width in semantic_channels)
            self.aux_weights = (1.0,) * len(self.aux_heads)
        for module in self.modules():  # from scratch, as the paper: Kaiming normal
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    @property
    def encoder(self) -> nn.ModuleList:
        """The two branches (what decoder-only pruning leaves whole)."""
        return nn.ModuleList([self.detail, self.semantic])

    def logits_and_aux(self, x: torch.Tensor, with_aux: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        stage_maps, semantic = self.semantic(x)
        fused = self.aggregation(self.detail(x), semantic)
        logits = self.classifier(self.head(fused))
        aux = [head(stage) for head, stage in zip(self.aux_heads, stage_maps)] if with_aux else []
        return logits, aux
