"""The architectures, built by name from the small config a model card records."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from .attention_unet import AttentionUNet
from .bisenetv2 import BiSeNetV2
from .icnet import ICNet
from .mobile_unet import MobileUNet
from .unet import UNet

ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "unet": UNet,
    "attention_unet": AttentionUNet,
    "mobile_unet": MobileUNet,
    "bisenetv2": BiSeNetV2,
    "icnet": ICNet,
}


def build_model(config: dict[str, Any], num_classes: int) -> nn.Module:
    """Build an architecture from {"name": ..., **options}; unknown names and options fail loudly. The option
    every architecture takes, `upsample_logits` (default true), says whether inference returns logits at the
    input size or at the classifier's resolution (SegmentationNetwork)."""
    options = dict(config)
    name = options.pop("name", None)
    upsample_logits = options.pop("upsample_logits", True)
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; known: {sorted(ARCHITECTURES)}")
    if not isinstance(upsample_logits, bool):
        raise ValueError(f"architecture option upsample_logits must be true or false, got {upsample_logits!r}")
    try:
        model = ARCHITECTURES[name](num_classes=num_classes, **options)
    except TypeError as exc:
        raise ValueError(f"bad options for architecture {name!r}: {exc}") from exc
    model.upsample_logits = upsample_logits
    return model
