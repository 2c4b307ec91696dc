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
    """Build an architecture from {"name": ..., **options}; unknown names and options fail loudly."""
    options = dict(config)
    name = options.pop("name", None)
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; known: {sorted(ARCHITECTURES)}")
    try:
        return ARCHITECTURES[name](num_classes=num_classes, **options)
    except TypeError as exc:
        raise ValueError(f"bad options for architecture {name!r}: {exc}") from exc
