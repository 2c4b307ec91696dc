"""Model cards: the JSON beside every model file that says how to feed it and what it was measured to do.

A card is validated when it is read, so a bad card stops the node at start-up with a message naming the
field, instead of producing garbage masks later.
"""

from __future__ import annotations

import json
import math
import shlex
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import UserError

CARD_FORMAT = "seg_node-model-card/1"
CHANNEL_ORDERS = ("rgb", "bgr")


class ModelCardError(UserError, ValueError):
    """A model card is missing, unreadable or inconsistent; the message says which file and field."""


def is_numbers(values: Any, count: int) -> bool:
    """A JSON list of `count` numbers (booleans are not numbers here)."""
    return (isinstance(values, list) and len(values) == count
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values))


@dataclass
class InputSpec:
    """What the network expects: size, channel order and per-channel (x - mean) / std in pixel units."""

    height: int
    width: int
    channel_order: str = "rgb"
    mean: list[float] = field(default_factory=lambda: [127.0, 127.0, 127.0])
    std: list[float] = field(default_factory=lambda: [128.0, 128.0, 128.0])

    def validate(self, where: str) -> None:
        if not (isinstance(self.height, int) and isinstance(self.width, int)) or min(self.height, self.width) < 8:
            raise ModelCardError(f"{where}: input height/width must be integers >= 8, got "
                                 f"{self.height}x{self.width}")
        if self.channel_order not in CHANNEL_ORDERS:
            raise ModelCardError(f"{where}: input.channel_order must be one of {CHANNEL_ORDERS}, "
                                 f"got {self.channel_order!r}")
        if not (is_numbers(self.mean, 3) and is_numbers(self.std, 3)) or any(s <= 0 for s in self.std):
            raise ModelCardError(f"{where}: input.mean and input.std need 3 numbers each, std > 0, got "
                                 f"{self.mean!r} and {self.std!r}")


@dataclass
class ConfidenceSpec:
    """How the pipeline turns logits into confidence (seg_node.core.confidence): the softmax temperature, and
    the frame score under which the node's diagnostics warn (None: not calibrated, no warning unless the node
    is given one); `calibration` records how seg-calibrate-confidence chose both."""

    temperature: float = 1.0
    threshold: float | None = None
    calibration: dict[str, Any] = field(default_factory=dict)

    def validate(self, where: str) -> None:
        if not (is_numbers([self.temperature], 1) and math.isfinite(self.temperature) and self.temperature > 0):
            raise ModelCardError(f"{where}: confidence.temperature must be a finite number > 0, "
                                 f"got {self.temperature!r}")
        if self.threshold is not None and not (is_numbers([self.threshold], 1) and 0.0 <= self.threshold <= 1.0):
            raise ModelCardError(f"{where}: confidence.threshold must be a number in [0, 1] or null, "
                                 f"got {self.threshold!r}")
        if not isinstance(self.calibration, dict):
            raise ModelCardError(f"{where}: confidence.calibration must be an object, got {self.calibration!r}")


@dataclass
class ModelCard:
    name: str
    architecture: dict[str, Any]
    classes: list[str]
    palette: list[list[int]]
    input: InputSpec
    files: dict[str, str]
    metrics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    compression: dict[str, Any] = field(default_factory=dict)
    #: per-class logit offsets folded into the classifier after training (seg-class-bias), and how they were fit
    class_bias: dict[str, Any] = field(default_factory=dict)
    #: run the network on the image and on its mirror image and average the logits: twice the cost, for
    #: accuracy (the offsets in class_bias are then fitted to the averaged logits)
    flip_average: bool = False
    #: one number per class that the pipeline adds to the network's logits (after flip averaging), so a card can
    #: name another model's files and differ from it only in offsets instead of shipping a copy of its weights
    logit_offsets: list[float] = field(default_factory=list)
    confidence: ConfidenceSpec = field(default_factory=ConfidenceSpec)
    notes: str = ""
    format: str = CARD_FORMAT

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def validate(self, where: str = "model card") -> None:
        if self.format != CARD_FORMAT:
            raise ModelCardError(f"{where}: format must be {CARD_FORMAT!r}, got {self.format!r}")
        if not isinstance(self.name, str) or not self.name:
            raise ModelCardError(f"{where}: name must be a non-empty string")
        if not isinstance(self.classes, list) or not self.classes or not all(isinstance(c, str) for c in self.classes):
            raise ModelCardError(f"{where}: classes must be a non-empty list of names")
        if len(self.classes) > 255:
            raise ModelCardError(f"{where}: at most 255 classes fit a mono8 mask, got {len(self.classes)}")
        if not isinstance(self.palette, list) or len(self.palette) != len(self.classes) or any(
                not is_numbers(c, 3) or not all(0 <= v <= 255 for v in c) for c in self.palette):
            raise ModelCardError(f"{where}: palette needs one [r, g, b] (0-255) per class "
                                 f"({len(self.classes)} classes, {len(self.palette)} colours)")
        if not isinstance(self.architecture, dict) or not isinstance(self.architecture.get("name"), str):
            raise ModelCardError(f"{where}: architecture must be an object with a 'name'")
        if not isinstance(self.files, dict) or not self.files or not all(
                isinstance(f, str) for f in self.files.values()):
            raise ModelCardError(f"{where}: files must map at least one format (onnx or torch) to a file name")
        if not isinstance(self.flip_average, bool):
            raise ModelCardError(f"{where}: flip_average must be true or false, got {self.flip_average!r}")
        if self.logit_offsets != [] and not (is_numbers(self.logit_offsets, len(self.classes))
                                             and all(math.isfinite(v) for v in self.logit_offsets)):
            raise ModelCardError(f"{where}: logit_offsets needs one finite number per class ({len(self.classes)}) "
                                 f"or none, got {self.logit_offsets!r}")
        self.input.validate(where)
        self.confidence.validate(where)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "model card") -> "ModelCard":
        required = ("name", "architecture", "classes", "palette", "input", "files")
        missing = [k for k in required if k not in data]
        if missing:
            raise ModelCardError(f"{where}: missing field(s) {', '.join(missing)}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelCardError(f"{where}: unknown field(s) {', '.join(unknown)}")
        try:
            spec = InputSpec(**data["input"])
        except TypeError as exc:
            raise ModelCardError(f"{where}: bad input spec: {exc}") from exc
        confidence = data.get("confidence", {})
        try:
            confidence = ConfidenceSpec(**confidence) if isinstance(confidence, dict) else None
        except TypeError as exc:
            raise ModelCardError(f"{where}: bad confidence spec: {exc}") from exc
        if confidence is None:
            raise ModelCardError(f"{where}: confidence must be an object {{temperature, threshold, calibration}}")
        card = cls(**{**data, "input": spec, "confidence": confidence})
        card.validate(where)
        return card

    @classmethod
    def load(cls, path: str | Path) -> "ModelCard":
        path = Path(path)
        if not path.is_file():
            raise ModelCardError(f"model card {path} not found: every model file needs its .json card beside it")
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelCardError(f"model card {path} is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ModelCardError(f"model card {path} must hold a JSON object")
        return cls.from_dict(data, str(path))


def card_path_for(model_path: str | Path) -> Path:
    """The card of `models/x.onnx` (or `.safetensors`) is `models/x.json`."""
    return Path(model_path).with_suffix(".json")


DATA_PLACEHOLDER = "$CAMVID_ROOT"


def command_line(program: str, argv: list[str] | None) -> str:
    """The command as typed (argv, or this process's arguments), for the card's record of how it was made; the
    --data folder reads $CAMVID_ROOT there, since a card names its data set by checksum, not by a machine's path."""
    words = [shlex.quote(word) for word in (sys.argv[1:] if argv is None else argv)]
    for i, word in enumerate(words):
        if word == "--data" and i + 1 < len(words):
            words[i + 1] = DATA_PLACEHOLDER
        elif word.startswith("--data="):
            words[i] = f"--data={DATA_PLACEHOLDER}"
    return " ".join([program, *words])
