"""`seg-import`: an ONNX segmentation model from another toolchain -> a model folder the node and every tool run.

    seg-import deeplab.onnx --classes cityscapes --normalization imagenet --input-size 512x1024 --out models/mine

Reads what the graph says (input layout from the axis of 3 colours, output layout from the axis that holds the
class count, kind from the output's type and last operator: ArgMax -> labels, Softmax or Sigmoid -> probabilities), asks
through a named flag for what it cannot tell, writes the card, then runs the model once through the pipeline on a
shipped CamVid frame and measures its cost (GMACs, median latency at 2 threads) into the card.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

from ..core.command_line import reports_user_errors
from ..core.errors import UserError
from ..core.model_card import (
    INPUT_LAYOUTS,
    OUTPUT_KINDS,
    OUTPUT_LAYOUTS,
    InputSpec,
    InterfaceSpec,
    ModelCard,
    command_line,
    rounded_size,
)
from ..core.model_files import package_path
from ..core.pipeline import SegmentationPipeline
from .data import CAMVID_CLASSES, ClassTable, cityscapes_classes
from .data.base import read_rgb
from .model_cost import latency_of, network_cost

CLASS_PRESETS = {"camvid": lambda: CAMVID_CLASSES, "cityscapes": cityscapes_classes}
#: (mean, std) in pixel units (0-255), RGB, and the channel order the network expects
NORMALIZATIONS = {
    "imagenet": ([123.675, 116.28, 103.53], [58.395, 57.12, 57.375], "rgb"),
    "zero-one": ([0.0, 0.0, 0.0], [255.0, 255.0, 255.0], "rgb"),
    "minus-one-one": ([127.5, 127.5, 127.5], [127.5, 127.5, 127.5], "rgb"),
    "caffe": ([103.939, 116.779, 123.68], [1.0, 1.0, 1.0], "bgr"),
}
#: operators that move, resize or retype an output without changing what it is (looked through for the last op)
PASS_THROUGH = {"Identity", "Transpose", "Reshape", "Squeeze", "Unsqueeze", "Cast", "Resize", "Upsample", "Slice"}
SCORE_ELEMENT_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16}
LABEL_ELEMENT_TYPES = {TensorProto.INT64, TensorProto.INT32, TensorProto.UINT8}
INPUT_ELEMENT_TYPES = {TensorProto.FLOAT: "float32", TensorProto.UINT8: "uint8"}
SMOKE_FRAME = package_path("data", "camvid_clip", "test", "Seq05VD_f00000.jpg")
COST_THREADS = 2


class ModelImportError(UserError):
    """What seg-import cannot tell or accept about a model; the message names the flag that tells it."""


@dataclass
class GraphTensor:
    name: str
    element_type: int
    shape: list  # ints, or strings / None for axes the graph leaves open


def tensor_info(value: onnx.ValueInfoProto) -> GraphTensor:
    tensor = value.type.tensor_type
    shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim]
    return GraphTensor(value.name, tensor.elem_type, shape)


def load_graph(path: Path) -> onnx.ModelProto:
    """The graph without its weights' external data (read lazily); not ONNX: an error that says so."""
    if not path.is_file():
        raise ModelImportError(f"{path} does not exist")
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends: the file is not an ONNX model
        raise ModelImportError(f"{path} is not an ONNX model ({type(exc).__name__}: {exc}); export it to ONNX first "
                               "(torch.onnx.export, tf2onnx, paddle2onnx)") from exc


def image_input(graph: onnx.GraphProto) -> GraphTensor:
    """The graph's one input that is not a weight; several: refused (seg_node feeds one image)."""
    weights = {init.name for init in graph.initializer}
    inputs = [tensor_info(value) for value in graph.input if value.name not in weights]
    if len(inputs) != 1:
        raise ModelImportError(f"the graph has {len(inputs)} inputs {[(i.name, i.shape) for i in inputs]}; seg_node "
                               "feeds one image: export the model with a single image input")
    image = inputs[0]
    if image.element_type not in INPUT_ELEMENT_TYPES or len(image.shape) != 4:
        raise ModelImportError(f"input {image.name!r} is {TensorProto.DataType.Name(image.element_type)} with shape "
                               f"{image.shape}; seg_node feeds a 4-axis float32 or uint8 image (N x 3 x H x W or "
                               "N x H x W x 3)")
    return image


def chosen_output(graph: onnx.GraphProto, name: str | None) -> GraphTensor:
    outputs = [tensor_info(value) for value in graph.output]
    if name is None and len(outputs) > 1:
        raise ModelImportError(f"the graph has {len(outputs)} outputs {[(o.name, o.shape) for o in outputs]}: name the "
                               "segmentation one with --output")
    chosen = [o for o in outputs if name in (None, o.name)]
    if not chosen:
        raise ModelImportError(f"--output {name!r} is not among the graph's outputs {[o.name for o in outputs]}")
    return chosen[0]


def input_layout(image: GraphTensor, asked: str | None) -> str:
    """NCHW when axis 1 holds the 3 colours, NHWC when axis 3 does; --input-layout when both or neither do."""
    found = [layout for layout, axis in (("NCHW", 1), ("NHWC", 3)) if image.shape[axis] == 3]
    if asked:
        return asked
    if len(found) != 1:
        raise ModelImportError(f"cannot tell the layout of input {image.name!r} {image.shape} (which axis holds the 3 "
                               "colours): give --input-layout NCHW or NHWC")
    return found[0]


def last_operator(graph: onnx.GraphProto, tensor: str) -> str | None:
    """The operator that computes `tensor`, looking through operators that only move or retype it."""
    producers = {output: node for node in graph.node for output in node.output}
    node = producers.get(tensor)
    while node is not None and node.op_type in PASS_THROUGH and node.input:
        node = producers.get(node.input[0])
    return node.op_type if node is not None else None


def output_kind(graph: onnx.GraphProto, output: GraphTensor, asked: str | None) -> str:
    """labels for integer outputs (an ArgMax inside), probabilities after a Softmax or a per-class Sigmoid (whose
    maximum is that class's own probability; a softmax over them would flatten it towards 1 / classes), else
    logits."""
    if asked:
        return asked
    if output.element_type in LABEL_ELEMENT_TYPES:
        return "labels"
    if output.element_type not in SCORE_ELEMENT_TYPES:
        raise ModelImportError(f"output {output.name!r} is {TensorProto.DataType.Name(output.element_type)}: seg_node "
                               "reads float scores or integer labels")
    operator = last_operator(graph, output.name)
    return {"Softmax": "probabilities", "Sigmoid": "probabilities", "ArgMax": "labels"}.get(operator, "logits")


def output_layout(shape: tuple, kind: str, num_classes: int, asked: str | None) -> str:
    """From a real output's shape: the axis that holds the classes (labels: the channel axis of 1, or none)."""
    if asked:
        return asked
    if len(shape) == 3 and kind == "labels":
        return "NHW"
    wanted = 1 if kind == "labels" else num_classes
    found = [layout for layout, axis in (("NCHW", 1), ("NHWC", 3)) if len(shape) == 4 and shape[axis] == wanted]
    if len(found) == 1:
        return found[0]
    what = "the channel axis of 1 (labels)" if kind == "labels" else f"the {num_classes} classes"
    if not found:
        raise ModelImportError(f"{what} are at neither axis 1 (NCHW) nor axis 3 (NHWC) of the output "
                               f"{list(shape)}: check --classes (or --output-kind, --output)")
    raise ModelImportError(f"cannot tell the layout of the output {list(shape)}: both axes 1 and 3 could hold {what}; "
                           "give --output-layout NCHW or NHWC")


def class_table(preset: str) -> ClassTable:
    """A preset's table, or a `name,r,g,b` CSV file."""
    return CLASS_PRESETS[preset]() if preset in CLASS_PRESETS else ClassTable.from_csv(preset)


def normalization(text: str | None, input_dtype: str, channel_order: str | None) -> tuple[list, list, str]:
    """(mean, std, channel order) from a preset name or mean=R,G,B:std=R,G,B in pixel units; uint8 inputs take
    pixels as they are and need none."""
    if input_dtype == "uint8":
        if text:
            raise ModelImportError("the model's input is uint8: it takes pixels without normalization; drop "
                                   "--normalization")
        return [0, 0, 0], [1, 1, 1], channel_order or "rgb"
    if not text:
        raise ModelImportError("the model's input is float32 and the graph does not say how pixels are scaled: give "
                               f"--normalization {'|'.join(NORMALIZATIONS)}|mean=R,G,B:std=R,G,B")
    if text in NORMALIZATIONS:
        mean, std, order = NORMALIZATIONS[text]
        return in_channel_order(mean, std, order, channel_order or order)
    try:
        parts = dict(part.split("=", 1) for part in text.split(":"))
        mean, std = ([float(v) for v in parts[key].split(",")] for key in ("mean", "std"))
    except (KeyError, ValueError) as exc:
        raise ModelImportError(f"--normalization {text!r}: expected a preset ({', '.join(NORMALIZATIONS)}) or "
                               "mean=R,G,B:std=R,G,B") from exc
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ModelImportError(f"--normalization {text!r}: 3 means and 3 positive stds")
    if max(std) < 1.0:
        raise ModelImportError(f"--normalization {text!r}: give mean and std in pixel units (0-255); for values on a "
                               "0-1 scale multiply them by 255")
    return in_channel_order(mean, std, "rgb", channel_order or "rgb")


def in_channel_order(mean: list[float], std: list[float], given: str, wanted: str) -> tuple[list, list, str]:
    """The card applies mean and std in its channel order: values given per R, G, B (or per the preset's own
    order) are reversed when the network takes the other order."""
    if given != wanted:
        mean, std = mean[::-1], std[::-1]
    return list(mean), list(std), wanted


def parse_size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected HxW, e.g. 512x1024, got {text!r}") from exc
    return height, width


def input_size(image: GraphTensor, layout: str, asked: tuple[int, int] | None, multiple: int | None
               ) -> tuple[str, tuple[int, int], int | None]:
    """(interface.input_size, the card's height x width, size_multiple): a fixed graph gives its own size; a
    dynamic one needs --input-size (every frame resized to it) or --size-multiple (each frame at its own size)."""
    height, width = image.shape[2:] if layout == "NCHW" else image.shape[1:3]
    if isinstance(height, int) and isinstance(width, int):
        if multiple:
            raise ModelImportError(f"the graph fixes its input at {height}x{width}: --size-multiple needs a "
                                   "dynamic input size")
        if asked and asked != (height, width):
            raise ModelImportError(f"the graph fixes its input at {height}x{width}, --input-size says "
                                   f"{asked[0]}x{asked[1]}: drop --input-size")
        return "fixed", (height, width), None
    if asked is None and multiple is None:
        raise ModelImportError(f"the graph's input size is dynamic ({image.shape}): give --input-size HxW (every "
                               "frame is resized to it) or --size-multiple K (each frame at its own size, rounded "
                               "to a multiple of K)")
    if asked is None:  # the card's size (the warm-up's): the shipped frames', rounded
        asked = rounded_size(*read_rgb(SMOKE_FRAME).shape[:2], multiple)
    return "dynamic", asked, multiple


def batch_axis(image: GraphTensor) -> str:
    batch = image.shape[0]
    if isinstance(batch, int) and batch != 1:
        raise ModelImportError(f"the graph fixes its batch at {batch}: seg_node needs 1 or a dynamic batch axis")
    return "fixed" if batch == 1 else "dynamic"


def probe_output_shape(path: Path, interface: InterfaceSpec, height: int, width: int) -> tuple[int, ...]:
    """The real output shape of one run on a blank image: what the graph leaves open, the run fixes."""
    import onnxruntime as ort
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    blank = np.zeros(interface.input_shape(1, height, width), interface.input_dtype_numpy)
    try:
        return session.run([interface.output_name], {interface.input_name: blank})[0].shape
    except Exception as exc:  # onnxruntime's own exception types
        raise ModelImportError(f"the model rejected a {height}x{width} input: {exc}; check --input-size") from exc


def read_interface(path: Path, graph: onnx.GraphProto, args: argparse.Namespace, classes: ClassTable
                   ) -> tuple[InterfaceSpec, InputSpec]:
    """Everything the card says about feeding the model, from the graph and the flags."""
    image, output = image_input(graph), chosen_output(graph, args.output)
    layout = input_layout(image, args.input_layout)
    size, (height, width), multiple = input_size(image, layout, args.input_size, args.size_multiple)
    dtype = INPUT_ELEMENT_TYPES[image.element_type]
    mean, std, channel_order = normalization(args.normalization, dtype, args.channel_order)
    kind = output_kind(graph, output, args.output_kind)
    interface = InterfaceSpec(input_name=image.name, input_layout=layout, input_dtype=dtype, input_size=size,
                              size_multiple=multiple, output_name=output.name, output_kind=kind,
                              output_layout="NHW" if kind == "labels" else "NCHW", batch=batch_axis(image))
    shape = probe_output_shape(path, interface, height, width)
    interface.output_layout = output_layout(shape, kind, classes.num_classes, args.output_layout)
    return interface, InputSpec(height, width, channel_order, list(mean), list(std))


def file_precision(graph: onnx.GraphProto) -> str:
    """int8 for a quantized graph (QDQ or QLinear operators), fp16 for half-precision weights, else fp32: what the
    onnxruntime backend reports as the model's precision."""
    if any(node.op_type in ("QuantizeLinear", "QLinearConv", "ConvInteger") for node in graph.node):
        return "int8"
    if any(init.data_type == TensorProto.FLOAT16 for init in graph.initializer):
        return "fp16"
    return "fp32"


def copy_model(source: Path, graph: onnx.ModelProto, folder: Path, name: str) -> Path:
    """The model file as NAME.onnx in `folder`, with any external weight files beside it (same names)."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{name}.onnx"
    if target.resolve() == source.resolve():
        return target
    shutil.copyfile(source, target)
    for tensor in graph.graph.initializer:
        if tensor.data_location == TensorProto.EXTERNAL:
            location = next(entry.value for entry in tensor.external_data if entry.key == "location")
            if not (folder / location).exists():
                shutil.copyfile(source.parent / location, folder / location)
    return target


def write_card(source: Path, graph: onnx.ModelProto, args: argparse.Namespace, argv: list[str] | None) -> Path:
    """Copy the model and write its card; returns the card's path."""
    classes = class_table(args.classes)
    interface, spec = read_interface(source, graph.graph, args, classes)
    name = args.name or source.stem
    model_path = copy_model(source, graph, Path(args.out), name)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    card = ModelCard(name=name, architecture={"name": "imported", "source": source.name, "sha256": digest},
                     classes=list(classes.names), palette=classes.palette, input=spec,
                     files={"onnx": model_path.name}, interface=interface,
                     compression={"precision": file_precision(graph.graph)},
                     notes=f"imported from another toolchain: {command_line('seg-import', argv)}")
    card.validate(str(model_path.with_suffix(".json")))
    card.save(model_path.with_suffix(".json"))
    return model_path.with_suffix(".json")


def smoke_test(card_path: Path) -> SegmentationPipeline:
    """One shipped CamVid frame through the pipeline as the node runs it: the mask's size and classes."""
    pipeline = SegmentationPipeline.from_model(card_path, backend="onnxruntime", device="cpu", threads=COST_THREADS)
    pipeline.backend.warm_up()
    frame = read_rgb(SMOKE_FRAME)
    result = pipeline.segment(frame, "rgb")
    shares = np.bincount(result.mask.ravel(), minlength=pipeline.card.num_classes) / result.mask.size
    seen = ", ".join(f"{pipeline.card.classes[i]} {shares[i]:.0%}" for i in np.argsort(-shares) if shares[i] > 0)
    score = "no confidence (labels only)" if not pipeline.has_confidence else f"frame score {result.score:.3f}"
    print(f"smoke test on {SMOKE_FRAME.name}: mask {result.mask.shape[1]}x{result.mask.shape[0]} in "
          f"{result.timings_ms['total']:.1f} ms, {score}; classes seen: {seen}")
    return pipeline


def measure_cost(card_path: Path, graph: onnx.ModelProto, pipeline: SegmentationPipeline) -> dict:
    """GMACs and parameters counted from the graph at the network input of the smoke test, and the model's latency
    on it at COST_THREADS threads; recorded in the card's metrics."""
    network_input = pipeline.network_input
    cost = network_cost(pipeline, graph, latency_of(lambda: pipeline.backend.infer(network_input)), COST_THREADS,
                        "seg-import (onnxruntime, cpu)")
    uncounted = cost.get("uncounted_operators")
    print(f"cost at {cost['input']}: {cost['gmacs']:.2f} GMACs (Conv, ConvTranspose, Gemm, MatMul"
          + (f"; {uncounted} operator(s) of unknown shape not counted" if uncounted else "")
          + f"), {cost['params_m']:.2f} M parameters, median latency {cost['latency_ms_median']:.1f} ms at "
            f"{COST_THREADS} threads")
    card = ModelCard.load(card_path)
    card.metrics["cost"] = cost
    card.save(card_path)
    return cost


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seg-import", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="the ONNX file")
    parser.add_argument("--classes", required=True, help="camvid, cityscapes or a CSV file `name,r,g,b` (id order)")
    parser.add_argument("--normalization", help=f"{', '.join(NORMALIZATIONS)} or mean=R,G,B:std=R,G,B (pixel "
                        "units 0-255, RGB); float32 inputs only")
    parser.add_argument("--input-size", type=parse_size, metavar="HxW", help="for a dynamic input: the size fed")
    parser.add_argument("--size-multiple", type=int, metavar="K", help="for a dynamic input: feed each frame at "
                        "its own size rounded to a multiple of K")
    parser.add_argument("--name", help="model name, and the file names in --out (default: the model file's stem)")
    parser.add_argument("--out", required=True, type=Path, help="folder for NAME.onnx and NAME.json")
    parser.add_argument("--channel-order", choices=("rgb", "bgr"), help="the network's channel order (default: "
                        "the normalization preset's; rgb)")
    parser.add_argument("--input-layout", choices=INPUT_LAYOUTS, help="when the graph does not tell")
    parser.add_argument("--output", help="the segmentation output's name, when the graph has several")
    parser.add_argument("--output-kind", choices=OUTPUT_KINDS, help="when the graph does not tell")
    parser.add_argument("--output-layout", choices=OUTPUT_LAYOUTS, help="when the graph does not tell")
    return parser


@reports_user_errors
def main(argv: list[str] | None = None) -> None:
    """Import, smoke-test and measure."""
    args = build_parser().parse_args(argv)
    graph = load_graph(args.model)
    card_path = write_card(args.model, graph, args, argv)
    card = ModelCard.load(card_path)
    interface = card.interface
    print(f"wrote {card_path}: {interface.input_layout} {interface.input_dtype} input "
          f"{card.input.height}x{card.input.width} ({interface.input_size}"
          + (f", multiple of {interface.size_multiple}" if interface.size_multiple else "")
          + f"), {interface.output_kind} output {interface.output_layout}, batch {interface.batch}, "
          f"{card.num_classes} classes")
    started = time.perf_counter()
    pipeline = smoke_test(card_path)
    measure_cost(card_path, graph, pipeline)
    print(f"done in {time.perf_counter() - started:.1f} s; run it: seg_node --ros-args -p model:={card_path}")


if __name__ == "__main__":
    main()
