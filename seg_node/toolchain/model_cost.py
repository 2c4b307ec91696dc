"""What an ONNX model costs: multiply-accumulates counted from the graph, and a median latency.

Counting from the graph (ONNX shape inference at one input size) works for any model, whatever toolchain made
it, where torch-based counters need the torch module.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import onnx

#: convolution operator -> index of its weight input
CONVOLUTIONS = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3}
#: matrix products; their left operand is input 0
MATRIX_PRODUCTS = {"MatMul", "MatMulInteger", "QLinearMatMul", "Gemm"}


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


def median_latency_ms(run: Callable[[], object], runs: int = 20, warmup: int = 2) -> float:
    """Median wall time of `run()` in ms, after `warmup` untimed calls."""
    return float(np.median(call_times_ms(lambda _index: run(), runs, warmup)))
