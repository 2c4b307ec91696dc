"""Tensor-only weight files (safetensors): safe to load from anywhere, and they carry pruned widths.

A pruned model is rebuilt from its architecture config at full width, then every layer is shrunk to the
shapes stored in the file before a strict load, so no pickled module ever has to be trusted.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import UserError


class WeightsError(UserError, ValueError):
    """A weight file is unreadable or does not fit the architecture; the message names the tensor."""


def save_weights(model: nn.Module, path: str | Path) -> None:
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(path))


def _shrink_module(module: nn.Module, shapes: dict[str, torch.Size]) -> None:
    """Make a Conv/ConvTranspose/BatchNorm layer match the stored tensor shapes (structured pruning)."""
    if isinstance(module, nn.modules.conv._ConvNd) and "weight" in shapes:
        depthwise = module.groups > 1 and module.groups == module.in_channels == module.out_channels
        shape = shapes["weight"]
        if module.transposed:
            module.in_channels, module.out_channels = shape[0], shape[1] * module.groups
        else:
            module.out_channels = shape[0]
            if depthwise:
                module.groups = module.out_channels
            module.in_channels = shape[1] * module.groups
    elif isinstance(module, nn.modules.batchnorm._BatchNorm) and "weight" in shapes:
        module.num_features = shapes["weight"][0]
    for name, shape in shapes.items():
        current = getattr(module, name)
        if current is None or current.shape == shape:
            continue
        replacement = torch.zeros(shape, dtype=current.dtype)
        if isinstance(current, nn.Parameter):
            setattr(module, name, nn.Parameter(replacement, requires_grad=current.requires_grad))
        else:
            module.register_buffer(name, replacement)


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a safetensors file strictly, first shrinking layers to the file's (pruned) shapes."""
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise WeightsError(f"{path} is not a readable safetensors weight file: {exc}") from exc
    by_module: dict[str, dict[str, torch.Size]] = {}
    for key, tensor in state.items():
        module_name, _, tensor_name = key.rpartition(".")
        by_module.setdefault(module_name, {})[tensor_name] = tensor.shape
    modules = dict(model.named_modules())
    for module_name, shapes in by_module.items():
        if module_name in modules:
            _shrink_module(modules[module_name], shapes)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"{path} does not fit the architecture in its model card: {exc}") from exc
    return model
