"""The channel ratio that removes a given share of a model's MACs, found by measuring.

Removing a share r of every layer's channels does not remove r of the MACs: a convolution's cost falls with both
its input and its output width (up to 1 - (1 - r)^2), layers left whole keep theirs, and widths rounded to a
multiple of `round_to` move in steps. So the ratio is searched: bisection on the MACs counted after pruning a copy
of the model.
"""

from __future__ import annotations

import copy
from dataclasses import replace

from torch import nn

from .config import PruningConfig
from .prune import count_macs_and_params, make_pruner

#: at most this many trial prunings per search
SEARCH_TRIES = 8
#: a reduction this close to the target ends the search (rounded widths move the MACs in steps anyway)
TOLERANCE = 0.01


def macs_reduction(model: nn.Module, pruning: PruningConfig, height: int, width: int, base_macs: int) -> float:
    """Share of `base_macs` (the model's) that pruning a copy of the model as `pruning` says removes. Local
    (per-layer) pruning sets each group's width by the ratio, whichever channels the criterion picks, but a
    criterion may pass groups by (BN scale: those without BatchNorm); Taylor, which scores every group, is
    stood in for by L1 magnitude, which needs no gradients."""
    trial = copy.deepcopy(model)
    criterion = "l1" if pruning.criterion == "taylor" else pruning.criterion
    pruner = make_pruner(trial, replace(pruning, criterion=criterion), height, width)
    for _ in range(pruning.steps):
        pruner.step()
    return 1 - count_macs_and_params(trial, height, width)[0] / base_macs


def next_ratio(low: tuple[float, float], high: tuple[float, float], target: float) -> float:
    """Where the line through the bracket's two (ratio, reduction) ends meets the target (regula falsi), or the
    middle when that falls near an end (slow convergence) or the ends do not rise (tiny layers that rounding
    empties prune nothing at high ratios)."""
    (r_low, f_low), (r_high, f_high) = low, high
    middle = (r_low + r_high) / 2
    if f_high <= f_low:
        return middle
    guess = r_low + (target - f_low) * (r_high - r_low) / (f_high - f_low)
    margin = (r_high - r_low) / 8
    return guess if r_low + margin < guess < r_high - margin else middle


def ratio_for_macs(model: nn.Module, pruning: PruningConfig, target: float, height: int, width: int
                   ) -> tuple[float, float]:
    """(channel ratio, measured MACs reduction) of the ratio whose reduction came closest to `target` (a share,
    e.g. 0.5), searched between 0 and the per-layer cap; where even the cap falls short (a scope that leaves most
    of the MACs whole), about the cap and what it reaches."""
    if target <= 0:
        return 0.0, 0.0
    base_macs, _ = count_macs_and_params(model, height, width)
    low, high = (0.0, 0.0), (pruning.max_layer_ratio, None)
    tried: dict[float, float] = {}
    ratio = min(1 - (1 - target) ** 0.5, pruning.max_layer_ratio)  # a convolution thinned on both sides
    for _ in range(SEARCH_TRIES):
        tried[ratio] = macs_reduction(model, replace(pruning, ratio=ratio), height, width, base_macs)
        if abs(tried[ratio] - target) <= TOLERANCE:
            break
        if tried[ratio] < target:
            low = (ratio, tried[ratio])
        else:
            high = (ratio, tried[ratio])
        ratio = (low[0] + high[0]) / 2 if high[1] is None else next_ratio(low, high, target)
    best = min(tried, key=lambda r: (abs(tried[r] - target), r))
    return best, tried[best]
