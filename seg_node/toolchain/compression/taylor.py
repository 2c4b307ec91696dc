"""First-order Taylor importance (Molchanov et al., CVPR 2019) scored the way Torch-Pruning scores magnitudes.

Torch-Pruning 1.6.1's GroupTaylorImportance sizes a group's scores by the first layer it scores and skips
depthwise convolutions and BatchNorm: in a group rooted at a depthwise convolution (BiSeNetV2's expansion, six
parallel depthwise paths concatenated) the first layer it scores is the 1x1 projection over the concatenation, so
the scores outgrow the root's channels and pruning breaks the network's widths (or, where it runs, prunes by
numbers that belong to no channel). Its magnitude importance walks the same group correctly; here it walks it
over |w x dL/dw| in place of |w|.
"""

from __future__ import annotations

import torch
import torch_pruning as tp


class TaylorImportance(tp.importance.GroupMagnitudeImportance):
    """Sum over a channel's weights of |w x dL/dw|, accumulated over the group and mean-normalised as the
    magnitude criteria are. Needs the gradients of a loss (prune.accumulate_taylor_gradients)."""

    def __init__(self):
        super().__init__(p=1)

    @torch.no_grad()
    def __call__(self, group):
        layers = {dep.layer for dep, _ in group if isinstance(getattr(dep.layer, "weight", None), torch.Tensor)}
        kept = {layer: layer.weight.data for layer in layers}
        try:
            for layer in layers:
                gradient = layer.weight.grad
                layer.weight.data = (layer.weight.data * gradient if gradient is not None
                                     else torch.zeros_like(layer.weight.data))
            return super().__call__(group)
        finally:
            for layer, weight in kept.items():
                layer.weight.data = weight
