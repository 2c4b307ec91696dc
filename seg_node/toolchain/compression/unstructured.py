"""Unstructured magnitude pruning (torch.nn.utils.prune), kept as the baseline the seeds used.

Zeroing individual weights reaches any sparsity, but dense convolution kernels still multiply the zeros:
the model is neither smaller on disk (dense tensors) nor faster. The sweep measures that rather than
assuming it.
"""

from __future__ import annotations

from torch import nn
from torch.nn.utils import prune


def prunable_weights(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """Every convolution's weight except the classifier's."""
    return [(m, "weight") for name, m in model.named_modules()
            if isinstance(m, nn.modules.conv._ConvNd) and m is not getattr(model, "classifier", None)]


def magnitude_prune(model: nn.Module, amount: float, global_pruning: bool = True) -> float:
    """Zero the smallest-|w| fraction `amount` of conv weights (globally or per layer), make it permanent,
    and return the measured sparsity of those weights."""
    targets = prunable_weights(model)
    if global_pruning:
        prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=amount)
    else:
        for module, name in targets:
            prune.l1_unstructured(module, name, amount=amount)
    for module, name in targets:
        prune.remove(module, name)
    return weight_sparsity(model)


def weight_sparsity(model: nn.Module) -> float:
    weights = [getattr(m, n).detach() for m, n in prunable_weights(model)]
    zeros = sum(int((w == 0).sum()) for w in weights)
    return zeros / sum(w.numel() for w in weights)
