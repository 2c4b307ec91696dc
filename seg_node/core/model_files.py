"""Find a model's card from what a user passes: the card, any model file beside it, or nothing (the default)."""

from __future__ import annotations

import os
from pathlib import Path

from .model_card import ModelCard, ModelCardError, card_path_for

PACKAGE_NAME = "seg_node"
DEFAULT_MODEL_CARD = "camvid_mobile_unet_pruned_robust_int8.json"


def installed_prefix() -> Path | None:
    """seg_node's install prefix in a sourced ROS workspace (colcon install), None outside one."""
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_prefix
    except ImportError:
        return None
    try:
        return Path(get_package_prefix(PACKAGE_NAME))
    except (PackageNotFoundError, OSError):  # not in the index, or AMENT_PREFIX_PATH unset
        return None


def package_path(*parts: str) -> Path:
    """A shipped file or folder (models/, config/, data/): the source tree's when running from a checkout or a
    pip install -e (package.xml beside the package), else the one in share/seg_node of a colcon install."""
    source_tree = Path(__file__).resolve().parents[2]
    prefix = installed_prefix()
    if (source_tree / "package.xml").is_file() or prefix is None:
        return source_tree.joinpath(*parts)
    return prefix.joinpath("share", PACKAGE_NAME, *parts)


def models_dir() -> Path:
    return package_path("models")


def resolve_model(model: str | os.PathLike | None) -> tuple[ModelCard, Path]:
    """(card, card path); raises ModelCardError naming the file and what to fix."""
    if model is None or str(model) == "":
        card_path = models_dir() / DEFAULT_MODEL_CARD
        if not card_path.is_file():
            raise ModelCardError(f"the packaged default model {card_path} is missing: "
                                 "pass a model file (parameter 'model' or --model)")
    else:
        path = Path(model).expanduser()
        if not path.exists():
            raise ModelCardError(f"model file {path} does not exist: check the 'model' path")
        card_path = path if path.suffix == ".json" else card_path_for(path)
    return ModelCard.load(card_path), card_path


def model_file(card: ModelCard, card_path: Path, key: str) -> Path:
    """The file a backend needs (card.files[key]), resolved beside the card and checked to exist."""
    if key not in card.files:
        raise ModelCardError(f"{card_path}: files has no {key!r} entry (has {sorted(card.files)}); "
                             f"this model cannot run on that backend")
    path = card_path.parent / card.files[key]
    if not path.is_file():
        raise ModelCardError(f"{card_path}: files.{key} names {path}, which does not exist")
    return path
