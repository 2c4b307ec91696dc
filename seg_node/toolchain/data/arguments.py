"""The data set options every tool that reads one shares: --data, --layout, --ignore-colour, --class-map."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from . import LAYOUTS, open_dataset
from .base import SegmentationDataset
from .class_match import dataset_for_model, read_class_map


def colour(text: str) -> tuple[int, int, int]:
    """`R,G,B` -> (r, g, b), each 0..255."""
    try:
        rgb = tuple(int(part) for part in text.split(","))
    except ValueError:
        rgb = ()
    if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
        raise argparse.ArgumentTypeError(f"expected R,G,B with each in 0..255, got {text!r}")
    return rgb


def add_dataset_arguments(parser: argparse.ArgumentParser, class_map: bool = True) -> None:
    """The data set options; `class_map=False` for tools that read a data set without a model's classes."""
    group = parser.add_argument_group("data set")
    group.add_argument("--data", help="data set folder (default: $CAMVID_ROOT)")
    group.add_argument("--layout", default="auto", choices=["auto", *sorted(LAYOUTS)],
                       help="data set layout (default: auto, the one the folder matches)")
    group.add_argument("--ignore-colour", type=colour, action="append", default=[], metavar="R,G,B",
                       help="folders layout with colour labels: a colour that marks unlabelled pixels (repeatable)")
    if class_map:
        group.add_argument("--class-map", metavar="FILE",
                           help="CSV `data_class,model_class` for data classes named otherwise than the model's")


def dataset_from_args(args: argparse.Namespace, split: str, model_classes: Sequence[str] | None = None,
                      model_palette: Sequence[Sequence[int]] | None = None) -> SegmentationDataset:
    """The split the options name; with `model_classes`, its labels in the model's class ids (matched by name)."""
    dataset = open_dataset(args.data, split, args.layout, ignore_colours=tuple(args.ignore_colour))
    if model_classes is None:
        return dataset
    class_map = read_class_map(args.class_map) if getattr(args, "class_map", None) else None
    return dataset_for_model(dataset, model_classes, class_map, model_palette)
