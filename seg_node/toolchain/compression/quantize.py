"""ONNX Runtime static INT8 quantization and FP16 conversion, each written with its own model card.

    seg-quantize --model models/camvid_mobile_unet_pruned.onnx --precision int8 --data $CAMVID_ROOT \\
                 --out models/camvid_mobile_unet_pruned_int8

INT8 is QDQ with per-channel weights after `quant_pre_process`, calibrated (min/max) on training frames of any
registered data set (only the images count). The activation type matters on x86: U8S8 (uint8 activations, int8
weights) fuses into QLinearConv and is about twice as fast as fp32, while S8S8 leaves fp32 Convs in the graph.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from ...core.command_line import reports_user_errors
from ...core.errors import UserError
from ...core.model_card import ModelCard, command_line
from ...core.model_files import model_file, resolve_model
from ...core.preprocess import normalize, resize_for_network
from ..data.arguments import add_dataset_arguments, dataset_from_args
from ..data.base import SegmentationDataset
from ..export import INPUT_NAME
from ..training.augment import CorruptionRecipe, CorruptionRecipeError, corruption_transform, parse_corruption

ACTIVATION_TYPES = {"u8": QuantType.QUInt8, "s8": QuantType.QInt8}
PRECISIONS = ("int8", "fp16")
CALIBRATION_STRIDE = 8


class QuantizeError(UserError):
    """A model that cannot be quantized as asked."""


class FrameReader(CalibrationDataReader):
    """Feeds normalized frames; supports len/set_range so calibration can run in strides (bounded memory)."""

    def __init__(self, inputs: np.ndarray):
        self.inputs = inputs
        self.set_range(0, len(inputs))

    def get_next(self):
        if self._next >= self._end:
            return None
        self._next += 1
        return {INPUT_NAME: self.inputs[self._next - 1][None]}

    def __len__(self) -> int:
        return len(self.inputs)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._next, self._end = start_index, min(end_index, len(self.inputs))


def calibration_inputs(dataset: SegmentationDataset, count: int, card: ModelCard,
                       corruption: CorruptionRecipe | None = None, seed: int = 0) -> np.ndarray:
    """`count` frames spread over a *training* split (of any data set: only the images count), through the
    node's own preprocessing; with a corruption recipe (seg-train's --corruption) every other frame goes through
    it, so activation ranges cover noisy and blurred inputs as well as clean ones (MinMax ranges from clean
    frames clip noise)."""
    samples = dataset.samples()
    picks = np.linspace(0, len(samples) - 1, min(count, len(samples))).astype(int)
    images = [dataset.load(samples[i])[0] for i in picks]
    if corruption:
        transform = corruption_transform(corruption, seed)
        images = [transform(image=image)["image"] if i % 2 else image for i, image in enumerate(images)]
    return np.stack([normalize(resize_for_network(image, card.input), card.input, "rgb") for image in images])


def quantize_int8(fp32_path: Path, out_path: Path, inputs: np.ndarray, activation_type: str = "u8") -> None:
    if activation_type not in ACTIVATION_TYPES:
        raise QuantizeError(f"activation type must be one of {sorted(ACTIVATION_TYPES)}, got {activation_type!r}")
    usable = len(inputs) - len(inputs) % CALIBRATION_STRIDE or len(inputs)
    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared))
        quantize_static(
            str(prepared), str(out_path), FrameReader(inputs[:usable]), quant_format=QuantFormat.QDQ,
            per_channel=True, activation_type=ACTIVATION_TYPES[activation_type], weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"CalibStridedMinMax": min(CALIBRATION_STRIDE, usable)})


def convert_fp16(fp32_path: Path, out_path: Path) -> None:
    """FP16 weights and compute for GPUs; inputs and outputs stay float32 so the pipeline is unchanged."""
    from onnxruntime.transformers.float16 import convert_float_to_float16
    model = convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=True)
    onnx.save(model, str(out_path))


def quantized_card(card: ModelCard, out_path: Path, precision: str, details: dict) -> ModelCard:
    """The fp32 card with the new file, ONNX only (the torch weights are the fp32 ones), and fresh metrics."""
    return ModelCard(name=out_path.stem, architecture=card.architecture, classes=card.classes,
                     palette=card.palette, input=card.input, files={"onnx": out_path.name}, metrics={},
                     training=card.training,
                     compression={**card.compression, "precision": precision, "quantization": details,
                                  "source_model": card.name},
                     class_bias=card.class_bias, flip_average=card.flip_average, logit_offsets=card.logit_offsets,
                     interface=card.interface,
                     notes=f"{card.name} converted to {precision}")


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="fp32 model (card or a file beside it)")
    parser.add_argument("--precision", default="int8", choices=PRECISIONS)
    parser.add_argument("--activation-type", default="u8", choices=sorted(ACTIVATION_TYPES))
    parser.add_argument("--calibration-frames", type=int, default=64)
    parser.add_argument("--calibration-corruption", default="",
                        help="every other calibration frame through this corruption recipe (seg-train's "
                             "--corruption: 'default' or JSON; empty: clean frames only)")
    add_dataset_arguments(parser, class_map=False)
    parser.add_argument("--out", required=True, help="output stem, e.g. models/camvid_mobile_unet_pruned_int8")
    return parser.parse_args(argv)


def int8_details(args: argparse.Namespace, card: ModelCard, source: Path, out_path: Path) -> dict:
    """Quantize to INT8 on the train split's frames; the card's record of how."""
    try:
        corruption = parse_corruption(args.calibration_corruption)
    except CorruptionRecipeError as exc:
        raise CorruptionRecipeError(f"--calibration-corruption: {exc}") from None
    train_split = dataset_from_args(args, "train")
    inputs = calibration_inputs(train_split, args.calibration_frames, card, corruption)
    quantize_int8(source, out_path, inputs, args.activation_type)
    return {"method": "onnxruntime static QDQ, per-channel weights, MinMax calibration",
            "activation_type": args.activation_type, "weight_type": "s8",
            "calibration": f"{len(inputs)} {train_split.title} train frames"
                           + (", every other one corrupted" if corruption else ""),
            **({"calibration_corruption": corruption.to_dict()} if corruption else {})}


@reports_user_errors
def main(argv: list[str] | None = None) -> None:
    args = parse_arguments(argv)
    card, card_path = resolve_model(args.model)
    if card.compression.get("precision", "fp32") != "fp32":
        raise QuantizeError(f"{card_path} is already {card.compression['precision']}: start from the fp32 model")
    source = model_file(card, card_path, "onnx")
    out_path = Path(args.out).with_suffix(".onnx")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if args.precision == "int8":
        details = int8_details(args, card, source, out_path)
    else:
        convert_fp16(source, out_path)
        details = {"method": "onnxruntime.transformers.float16, keep_io_types"}
    details["command"] = command_line("seg-quantize", argv)
    quantized_card(card, out_path, args.precision, details).save(out_path.with_suffix(".json"))
    print(f"wrote {out_path} ({out_path.stat().st_size / 1e6:.1f} MB) and its card")


if __name__ == "__main__":
    main()
