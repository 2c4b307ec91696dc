"""Making and measuring one point of the pruning study, and the folder that keeps each result as it completes.

A point's model is made once (pruned to its MACs target and fine-tuned, or converted from its fp32 source) and
kept under OUT/models, named by the key of the settings it was made from; its result (val and test mIoU, cost,
size) is kept under OUT/points, named by that key and the evaluation splits. A rerun finds both and redoes
nothing; an interrupted fine-tuning continues from its last epoch (OUT/work). Latency is measured for all of a
model's points together, in turns: study_timing.py.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.quantization.shape_inference import quant_pre_process

from ...core.backends.torch_backend import build_for_inference
from ...core.errors import UserError
from ...core.model_card import ModelCard
from ...core.model_files import model_file, resolve_model
from ...core.pipeline import SegmentationPipeline
from ..data.base import ClassTable, SegmentationDataset
from ..evaluation.evaluate import evaluate
from ..export import export_model, parity_frames
from ..training.config import DataConfig
from .config import PruningConfig
from .macs_target import ratio_for_macs
from .prune import count_macs_and_params, overall_ratio, prune
from .quantize import calibration_inputs, convert_fp16, quantize_int8, quantized_card
from .study_plan import Point, StudySettings, making_key, measuring_key

PARITY_FRAMES = 4


class StudyModelError(UserError):
    """A model given to the study that it cannot start from."""


class ResultStore:
    """One JSON file per finished result, written whole (a file half-written by an interruption is never read)."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.folder / f"{key[:24]}.json"

    def load(self, key: str) -> dict | None:
        path = self.path(key)
        return json.loads(path.read_text()) if path.is_file() else None

    def save(self, key: str, record: dict) -> None:
        partial = self.path(key).with_suffix(".partial")
        partial.write_text(json.dumps(record, indent=2) + "\n")
        partial.replace(self.path(key))


@dataclass(frozen=True)
class StudyModel:
    """A trained, unpruned fp32 model the study starts from, with the splits it reads (labels in its class ids)
    and what identifies its weights."""

    card: ModelCard
    card_path: Path
    train: SegmentationDataset
    val: SegmentationDataset
    test: SegmentationDataset
    source_sha256: str
    macs: int
    params: int

    @property
    def name(self) -> str:
        """The card's file stem: short, and unique among the study's models."""
        return self.card_path.stem


def open_study_model(text: str, data: DataConfig) -> StudyModel:
    """A model the study can start from: an unpruned fp32 card with torch weights (pruning rebuilds the network);
    one that seg-prune only re-exported or fine-tuned (ratio 0 throughout, e.g. converted to native logits) is
    unpruned."""
    card, card_path = resolve_model(text)
    pruned = "base_model" in card.compression and overall_ratio(card.compression) > 0
    if pruned or card.compression.get("precision", "fp32") != "fp32":
        origin = card.compression.get("base_model") or card.compression.get("source_model")
        raise StudyModelError(f"{card_path} is a pruned or quantized model: give the study the trained, unpruned fp32 "
                              f"model{f' ({origin})' if origin else ''}")
    if "torch" not in card.files:
        raise StudyModelError(f"{card_path} has no torch weights (files.torch): the study prunes the network itself")
    classes = ClassTable(tuple(card.classes), tuple(tuple(colour) for colour in card.palette))
    splits = {split: data.for_model(data.open(split), classes) for split in ("train", "val", "test")}
    network = build_for_inference(card, model_file(card, card_path, "torch"))
    sha256 = hashlib.sha256(model_file(card, card_path, "onnx").read_bytes()).hexdigest()
    macs, params = count_macs_and_params(network, card.input.height, card.input.width)
    return StudyModel(card, card_path, **splits, source_sha256=sha256, macs=macs, params=params)


@dataclass(frozen=True)
class StudyContext:
    """What every point of a study shares: its settings, the data's record (checksums: part of every key), the
    output folder and the stores of results (points, and each model's timing)."""

    settings: StudySettings
    data: dict
    out: Path
    points: ResultStore
    timings: ResultStore


def point_result(point: Point, model: StudyModel, context: StudyContext) -> tuple[dict, bool]:
    """The point's result, and whether it was measured now (False: found in the store)."""
    model_key = making_key(point, model.source_sha256, context.settings, context.data)
    key = measuring_key(model_key, context.data)
    record = context.points.load(key)
    if record is not None:
        return record, False
    card_path = point_model(point, model, context)
    card = ModelCard.load(card_path)
    record = {"model": model.name, "architecture": model.card.architecture["name"], "label": point.label,
              **point.settings(), **cost(card, model), **measure(card_path, model, context.settings),
              "card": str(card_path.relative_to(context.out) if card_path.is_relative_to(context.out) else card_path),
              "key": key}
    context.points.save(key, record)
    return record, True


def point_model(point: Point, model: StudyModel, context: StudyContext) -> Path:
    """The card of the point's model, made now unless an earlier run made it from the same settings."""
    if not point.fine_tuned:
        return model.card_path
    key = making_key(point, model.source_sha256, context.settings, context.data)
    stem = context.out / "models" / f"{model.name}_{point.label.replace(' ', '_').replace('%', '')}_{key[:8]}"
    if not stem.with_suffix(".json").is_file():
        if point.precision == "fp32":
            make_pruned(point, model, context.settings, stem, context.out / "work" / key[:24])
        else:
            make_converted(point.precision, point_model(point.source, model, context), stem, model.train,
                           context.settings)
    return stem.with_suffix(".json")


def make_pruned(point: Point, model: StudyModel, settings: StudySettings, stem: Path, work: Path) -> None:
    """Prune the model to the point's share of MACs (the channel ratio found by measuring), fine-tune it with the
    study's budget distilled from the model as given, and export it with its card."""
    card, spec = model.card, model.card.input
    pruning = PruningConfig(ratio=0.0, criterion=point.criterion or "l2", steps=settings.pruning_steps,
                            round_to=settings.round_to, max_layer_ratio=settings.max_layer_ratio,
                            scope=point.scope or "all")
    ratio, _ = ratio_for_macs(build_for_inference(card, model_file(card, model.card_path, "torch")), pruning,
                              point.macs_target, spec.height, spec.width)
    fine_tuning = replace(settings.fine_tuning, run=replace(settings.fine_tuning.run, out=str(work)))
    torch.manual_seed(settings.seed)  # the random criterion draws from it
    network, summary = prune(card, model.card_path, replace(pruning, ratio=ratio), fine_tuning)
    export_model(network, stem, name=stem.name, architecture=card.architecture, classes=card.classes,
                 palette=card.palette, spec=spec, parity_inputs=parity_frames(model.val, PARITY_FRAMES, spec),
                 training=card.training, compression={**summary, "macs_target": point.macs_target},
                 notes=f"{model.name}, the pruning study's point '{point.label}'")
    shutil.rmtree(work, ignore_errors=True)
    if not any(work.parent.iterdir()):
        work.parent.rmdir()


def static_int8(fp32_onnx: Path, out: Path, card: ModelCard, train: SegmentationDataset,
                settings: StudySettings) -> dict:
    inputs = calibration_inputs(train, settings.calibration_frames, card)
    quantize_int8(fp32_onnx, out, inputs, "u8")
    return {"method": "onnxruntime static QDQ, per-channel weights, MinMax", "activation_type": "u8",
            "weight_type": "s8", "calibration": f"{len(inputs)} {train.title} train frames"}


def dynamic_int8(fp32_onnx: Path, out: Path, card: ModelCard, train: SegmentationDataset,
                 settings: StudySettings) -> dict:
    """Weights quantized ahead, activations at run time from their own range: no calibration data."""
    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(fp32_onnx), str(prepared))
        quantize_dynamic(str(prepared), str(out), per_channel=True, weight_type=QuantType.QInt8)
    return {"method": "onnxruntime quantize_dynamic (ConvInteger), per-channel int8 weights"}


def float16(fp32_onnx: Path, out: Path, card: ModelCard, train: SegmentationDataset, settings: StudySettings) -> dict:
    convert_fp16(fp32_onnx, out)
    return {"method": "onnxruntime.transformers.float16, keep_io_types"}


CONVERSIONS = {"int8_static": static_int8, "int8_dynamic": dynamic_int8, "fp16": float16}


def make_converted(precision: str, source_card: Path, stem: Path, train: SegmentationDataset,
                   settings: StudySettings) -> None:
    card = ModelCard.load(source_card)
    out = stem.with_suffix(".onnx")
    details = CONVERSIONS[precision](model_file(card, source_card, "onnx"), out, card, train, settings)
    quantized = quantized_card(card, out, precision, details)
    quantized.save(stem.with_suffix(".json"))


def cost(card: ModelCard, model: StudyModel) -> dict:
    """Channel ratio, measured share of MACs removed, GMACs and parameters (counted on the torch network by the
    pruning; a converted model has its source's)."""
    summary = card.compression
    if "macs" not in summary:  # the model as given
        return {"channel_ratio": 0.0, "macs_reduction": 0.0, "gmacs": round(model.macs / 1e9, 4),
                "params_m": round(model.params / 1e6, 4)}
    return {"channel_ratio": round(summary["ratio"], 4), "macs_reduction": summary["macs_reduction"],
            "gmacs": round(summary["macs"] / 1e9, 4), "params_m": round(summary["params"] / 1e6, 4)}


def measure(card_path: Path, model: StudyModel, settings: StudySettings) -> dict:
    """val and test mIoU through the node's pipeline (ONNX Runtime), and the ONNX file's size."""
    pipeline = SegmentationPipeline.from_model(card_path, "onnxruntime", "cpu", threads=settings.timing_threads)
    scores = {f"{split}_miou": round(100 * evaluate(pipeline, dataset, grid_frames=0, progress=False)[0].miou(), 2)
              for split, dataset in (("val", model.val), ("test", model.test))}
    return {**scores, "onnx_mb": round(model_file(pipeline.card, card_path, "onnx").stat().st_size / 1e6, 3)}
