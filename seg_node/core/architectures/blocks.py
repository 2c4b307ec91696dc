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


class ConvBNReLU(nn.Sequential):
    """Conv kxk (stride, dilation, groups; padding keeps the size at stride 1), BatchNorm, ReLU."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, dilation: int = 1,
                 groups: int = 1):
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel, stride, dilation * (kernel // 2), dilation, groups, bias=False),
            nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))


KEPT_WHOLE_SCOPES = ("all", "decoder", "expanded")


class SegmentationNetwork(nn.Module):
    """What every architecture offers the toolchain.

    Eval mode: logits at the input size, or with `upsample_logits` off at the classifier's own resolution (the
    pipeline then upsamples them to the frame once, computing the bilinear logits only where classes change,
    instead of the network resizing every class map to its input and the pipeline again to the frame). Training
    mode: logits at the input size; with auxiliary heads (logits, (aux, ...)), each aux at its own resolution,
    weighted by `aux_weights` in the loss. Subclasses set `classifier`, `encoder` (what decoder-only pruning
    keeps) and, when they have any, `aux_heads`; they implement `logits_and_aux`, logits at the classifier's
    resolution.
    """

    aux_weights: tuple[float, ...] = ()
    upsample_logits: bool = True

    def __init__(self):
        super().__init__()
        self.aux_heads = nn.ModuleList()

    def logits_and_aux(self, x: torch.Tensor, with_aux: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor):
        with_aux = self.training and len(self.aux_heads) > 0
        logits, aux = self.logits_and_aux(x, with_aux)
        if self.training or self.upsample_logits:
            logits = resize_to(logits, x)
        return (logits, tuple(aux)) if with_aux else logits

    def all_outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Logits (at the input size) and every auxiliary output in any mode. Torch-Pruning traces its dependency
        graph in eval mode; tracing this instead (`forward_fn=lambda model, x: model.all_outputs(x)`) lets pruning
        a trunk layer also narrow the auxiliary heads that read it, so the pruned model can still be fine-tuned."""
        logits, aux = self.logits_and_aux(x, True)
        return (resize_to(logits, x), *aux)

    def kept_whole(self, scope: str) -> list[nn.Module]:
        """What structured pruning must leave whole: the classifier and auxiliary heads (their outputs are the
        classes), plus the encoder for scope 'decoder', or the encoder's residual stream for scope 'expanded' (an
        inverted-residual encoder then loses channels only inside its blocks, where most of its MACs are)."""
        if scope not in KEPT_WHOLE_SCOPES:
            raise ValueError(f"pruning scope must be one of {KEPT_WHOLE_SCOPES}, got {scope!r}")
        kept = [self.classifier, *self.aux_heads]
        if scope == "decoder":
            return kept + [self.encoder]
        if scope == "expanded":
            if not hasattr(self.encoder, "residual_stream"):
                raise ValueError(f"pruning scope 'expanded' needs an inverted-residual encoder (EfficientNet-Lite); "
                                 f"{type(self).__name__}'s has no expanded channels")
            return kept + self.encoder.residual_stream()
        return kept
