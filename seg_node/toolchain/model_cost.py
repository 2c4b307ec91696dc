"""What an ONNX model costs: multiply-accumulates and parameters counted from the graph, and its latency.

Counting from the graph (ONNX shape inference at one input size) works for any model, whatever toolchain made
it, where torch-based counters need the torch module.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import onnx

from ..core.latency_stats import latency_summary
from ..core.pipeline import SegmentationPipeline

#: convolution operator -> index of its weight input
CONVOLUTIONS = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3}
#: matrix products; their left operand is input 0
MATRIX_PRODUCTS = {"MatMul", "MatMulInteger", "QLinearMatMul", "Gemm"}
#: operator -> the inputs that hold its learned weights and bias
WEIGHT_INPUTS = {"Conv": (1, 2), "ConvTranspose": (1, 2), "Gemm": (1, 2), "MatMul": (1,), "ConvInteger": (1,),
                 "MatMulInteger": (1,), "QLinearConv": (3, 8), "QLinearMatMul": (3,)}
#: operators between a stored weight and the operator using it in INT8 (QDQ) and FP16 graphs
WEIGHT_CONVERSIONS = {"DequantizeLinear", "Cast"}


def known_shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    """Tensor name -> shape, for every tensor whose axes are all known numbers."""
    graph = model.graph
    shapes = {init.name: list(init.dims) for init in graph.initializer}
    for value in [*graph.value_info, *graph.input, *graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = [d.dim_value for d in dims]
    return shapes


def node_macs(node: onnx.NodeProto, shapes: dict[str, list[int]]) -> int | None:
    """Multiply-accumulates of one Conv, ConvTranspose, Gemm or MatMul node (quantized forms too); None when a
    shape it needs is unknown, 0 for other operators."""
    needed = []
    if node.op_type in CONVOLUTIONS:
        needed = [node.input[CONVOLUTIONS[node.op_type]], node.output[0]]
    elif node.op_type == "ConvTranspose":
        needed = [node.input[1], node.input[0]]
    elif node.op_type in MATRIX_PRODUCTS:
        needed = [node.input[0], node.output[0]]
    if not needed:
        return 0
    if any(name not in shapes for name in needed):
        return None
    first, second = (shapes[name] for name in needed)
    if node.op_type in CONVOLUTIONS or node.op_type == "ConvTranspose":
        return math.prod(second) * math.prod(first[1:])  # each output (input) value: C_in/groups x kernel (C_out)
    transposed = node.op_type == "Gemm" and any(a.name == "transA" and a.i for a in node.attribute)
    return math.prod(second) * (first[0] if transposed else first[-1])


def count_macs(model: onnx.ModelProto, input_name: str, input_shape: tuple[int, ...]) -> tuple[int, int]:
    """(MACs, operators left uncounted for want of a shape) of `model` with its input fixed at `input_shape`."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for value in fixed.graph.input:
        if value.name == input_name:
            for dim, size in zip(value.type.tensor_type.shape.dim, input_shape):
                dim.Clear()
                dim.dim_value = size
    inferred = onnx.shape_inference.infer_shapes(fixed, data_prop=True)
    shapes = known_shapes(inferred)
    counts = [node_macs(node, shapes) for node in inferred.graph.node]
    return sum(c for c in counts if c), sum(c is None for c in counts)


def count_params(model: onnx.ModelProto) -> int:
    """Weights and biases of the convolutions and matrix products, followed through DequantizeLinear and Cast to
    the tensors stored: the parameters left once BatchNorm is folded into the convolutions, whatever the
    precision."""
    sizes = {init.name: math.prod(init.dims) for init in model.graph.initializer}
    producers = {output: node for node in model.graph.node for output in node.output}
    stored = set()
    for node in model.graph.node:
        for name in (node.input[i] for i in WEIGHT_INPUTS.get(node.op_type, ()) if i < len(node.input)):
            while name in producers and producers[name].op_type in WEIGHT_CONVERSIONS:
                name = producers[name].input[0]
            if name in sizes:
                stored.add(name)
    return sum(sizes[name] for name in stored)


def network_cost(pipeline: SegmentationPipeline, graph: onnx.ModelProto, model_only_ms: dict, threads: int,
                 measured_by: str) -> dict:
    """A card's `metrics.cost`: GMACs (both passes of a flip-averaged model) and parameters counted from its ONNX
    graph at the pipeline's network input (set by a frame segmented before), and the network's latency alone
    (`model_only_ms`: a latency_summary) with the frames per second of its median."""
    interface, network_input = pipeline.interface, pipeline.network_input
    macs, uncounted = count_macs(graph, interface.input_name, network_input.shape)
    passes = 2 if pipeline.card.flip_average else 1
    height, width = network_input.shape[2:] if interface.input_layout == "NCHW" else network_input.shape[1:3]
    return {"gmacs": round(passes * macs / 1e9, 3), "params_m": round(count_params(graph) / 1e6, 3),
            "input": f"{height}x{width}", "latency_ms_median": round(model_only_ms["median"], 2),
            "latency_ms_p95": round(model_only_ms["p95"], 2), "fps": round(1e3 / model_only_ms["median"], 1),
            "threads": threads, "measured_by": measured_by,
            **({"uncounted_operators": uncounted} if uncounted else {})}


def call_times_ms(run: Callable[[int], object], runs: int, warmup: int) -> list[float]:
    """Wall time in ms of `run(index)` for index 0..runs-1, after `warmup` untimed calls `run(0..warmup-1)`."""
    for index in range(warmup):
        run(index)
    times = []
    for index in range(runs):
        started = time.perf_counter()
        run(index)
        times.append(1e3 * (time.perf_counter() - started))
    return times


def latency_of(run: Callable[[], object], runs: int = 20, warmup: int = 2) -> dict[str, float]:
    """latency_summary of `runs` calls of `run()`, after `warmup` untimed calls."""
    return latency_summary(call_times_ms(lambda _index: run(), runs, warmup))
