"""Weight-space interpolation of two fine-tunings of one network (WiSE-FT, Wortsman et al. 2022).

    seg-interpolate --model models/camvid_mobile_unet_pruned.json \\
        --model runs/robust_pruned/camvid_mobile_unet_pruned_robust.json --alpha 0.5 \\
        --data $CAMVID_ROOT --out runs/soup/camvid_mobile_unet_pruned_robust

Writes theta = (1 - alpha) theta_first + alpha theta_second, BatchNorm statistics included, as a model of its own
(safetensors, ONNX, card). Fine-tuning on corrupted frames trades clean accuracy for robustness; two models
fine-tuned from the same weights sit in one basin, so the straight line between them keeps most of each one's
strength at no cost in size or speed. Both must have the same classes and the same tensors, name for name and
shape for shape (for pruned models: the same pruned structure). Choose alpha on val, never on test.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ...core.backends.torch_backend import build_for_inference
from ...core.command_line import reports_user_errors
from ...core.errors import UserError
from ...core.model_card import ModelCard, command_line
from ...core.model_files import model_file, resolve_model
from ..data.arguments import add_dataset_arguments
from ..export import export_model, parity_dataset, parity_frames


def interpolate_states(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor],
                       alpha: float) -> dict[str, torch.Tensor]:
    """(1 - alpha) first + alpha second for every floating-point tensor; integer ones (BatchNorm's batch counts)
    come from the first. Raises UserError naming the first tensor whose name or shape differs."""
    if first.keys() != second.keys():
        raise UserError(f"the models have different tensors: {sorted(first.keys() ^ second.keys())[:5]}")
    mixed = {}
    for key, a in first.items():
        b = second[key]
        if a.shape != b.shape:
            raise UserError(f"tensor {key} is {tuple(a.shape)} in one model and {tuple(b.shape)} in the other: "
                            "interpolation needs the same (pruned) structure")
        mixed[key] = torch.lerp(a, b, alpha) if a.is_floating_point() else a.clone()
    return mixed


def interpolated_model(cards: list[tuple[ModelCard, Path]], alpha: float) -> torch.nn.Module:
    (first_card, first_path), (second_card, second_path) = cards
    if first_card.classes != second_card.classes or first_card.input != second_card.input:
        raise UserError(f"{first_card.name} and {second_card.name} differ in classes or input (size, normalization)")
    for card in (first_card, second_card):
        if card.flip_average or card.logit_offsets:
            raise UserError(f"{card.name} runs its network with flip averaging or logit offsets, which weights do "
                            "not carry: interpolate the card whose files it names")
    first = build_for_inference(first_card, model_file(first_card, first_path, "torch"))
    second = build_for_inference(second_card, model_file(second_card, second_path, "torch"))
    first.load_state_dict(interpolate_states(first.state_dict(), second.state_dict(), alpha))
    return first


@reports_user_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True,
                        help="card (or a file beside it) of an endpoint; give exactly two, alpha 0 is the first")
    parser.add_argument("--alpha", type=float, required=True, help="weight of the second model, in [0, 1]")
    add_dataset_arguments(parser, class_map=False)  # val frames for the export's parity check
    parser.add_argument("--out", required=True, help="output stem")
    args = parser.parse_args(argv)
    if len(args.model) != 2:
        raise UserError(f"give --model exactly twice, got {len(args.model)}")
    if not 0.0 <= args.alpha <= 1.0:
        raise UserError(f"--alpha must be in [0, 1], got {args.alpha}")
    cards = [resolve_model(m) for m in args.model]
    model = interpolated_model(cards, args.alpha)
    (first, _), (second, _) = cards
    weights = [round(1.0 - args.alpha, 4), round(args.alpha, 4)]
    training = {"interpolation": {"method": "weight-space interpolation (WiSE-FT), BatchNorm statistics included",
                                  "command": command_line("seg-interpolate", argv)},
                "endpoints": [{"model": card.name, "weight": weight, "training": card.training}
                              for (card, _), weight in zip(cards, weights)]}
    compression = {k: v for k, v in second.compression.items() if k not in ("precision", "export_parity")}
    name = Path(args.out).name
    export_model(model, args.out, name=name, architecture=second.architecture, classes=second.classes,
                 palette=second.palette, spec=second.input,
                 parity_inputs=parity_frames(parity_dataset(args), 8, second.input), training=training,
                 compression=compression,
                 notes=f"{1 - args.alpha:.0%} {first.name} + {args.alpha:.0%} {second.name}, weights interpolated; "
                       f"{second.name}: {second.notes}")
    print(f"wrote {args.out}.{{onnx,safetensors,json}}: {weights[0]:g} x {first.name} + {weights[1]:g} x {second.name}")


if __name__ == "__main__":
    main()
