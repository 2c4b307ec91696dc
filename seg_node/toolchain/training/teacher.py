"""The teacher a student is distilled from: a model card, run as the node runs it."""

from __future__ import annotations

import torch
from torch import nn

from ...core.architectures.blocks import resize_to
from ...core.backends.torch_backend import build_for_inference
from ...core.model_card import InputSpec, ModelCard
from ...core.model_files import model_file, resolve_model
from ..data.base import ClassTable
from .config import TrainingConfigError


class CardTeacher(nn.Module):
    """A network's logits as its card has the pipeline compute them: averaged with the mirrored pass when the card
    flip-averages (a better answer than one pass, which is what a teacher is for), plus the card's logit offsets."""

    def __init__(self, network: nn.Module, card: ModelCard):
        super().__init__()
        self.network = network
        self.flip_average = card.flip_average
        offsets = torch.tensor(card.logit_offsets, dtype=torch.float32).view(1, -1, 1, 1) if card.logit_offsets \
            else None
        self.register_buffer("offsets", offsets)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits at the input size, as the student's are in training."""
        logits = resize_to(self.network(x), x)
        if self.flip_average:
            logits = 0.5 * (logits + resize_to(self.network(x.flip(-1)), x).flip(-1))
        return logits if self.offsets is None else logits + self.offsets


def load_teacher(card_path: str, spec: InputSpec, classes: ClassTable, device: torch.device
                 ) -> tuple[nn.Module, list[int] | None]:
    """A frozen model to distil from, and the order that puts its logits in the student's class order (None: the
    same order). It must predict the same classes (by name) from the same normalized input."""
    card, path = resolve_model(card_path)
    if sorted(card.classes) != sorted(classes.names):
        raise TrainingConfigError(f"--teacher {card_path}: its classes {list(card.classes)} are not the student's "
                                  f"{list(classes.names)}")
    if (card.input.channel_order, card.input.mean, card.input.std) != (spec.channel_order, spec.mean, spec.std):
        raise TrainingConfigError(f"--teacher {card_path}: its input normalization {card.input} differs from "
                                  f"training's {spec}; distil from a model trained with the same input")
    network = build_for_inference(card, model_file(card, path, "torch"))
    teacher = CardTeacher(network, card).to(device).eval()
    order = [list(card.classes).index(name) for name in classes.names]
    return (teacher.to(memory_format=torch.channels_last).requires_grad_(False),
            None if order == list(range(len(order))) else order)
