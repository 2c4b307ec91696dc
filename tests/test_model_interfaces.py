"""Models from other toolchains: every interface a card can describe, built here as tiny ONNX graphs, imported with
seg-import, run through the pipeline and through the node over DDS; and the bad models refused or counted."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from onnx import TensorProto, helper, numpy_helper
from ros_harness import connect, diagnostic_values, make_image_msg
from test_node import node_status, scene, wait_stamp

from seg_node.core.backends import BackendError
from seg_node.core.confidence import frame_score
from seg_node.core.model_card import ModelCard, ModelCardError
from seg_node.core.model_files import models_dir, package_path
from seg_node.core.pipeline import SegmentationPipeline
from seg_node.core.postprocess import ModelOutputError, colorize, logits_to_mask, upsample_labels
from seg_node.core.preprocess import resize
from seg_node.toolchain.data import CAMVID_CLASSES
from seg_node.toolchain.data.base import read_rgb
from seg_node.toolchain.evaluation.evaluate import run_evaluation
from seg_node.toolchain.import_model import main as seg_import

IR_VERSION = 10  # onnx.helper writes IR 14, which ONNX Runtime 1.31 refuses (FINDINGS.md)
OPSET = 17
CLASSES = CAMVID_CLASSES.num_classes
SIZE = (32, 48)  # the tiny models' fixed input
IMAGE = (60, 80)  # the frames sent: another size, so every model's mask is resized back
PIXEL_NORMALIZATION = "mean=127,127,127:std=128,128,128"
rng = np.random.default_rng(7)
WEIGHTS = (3 * rng.standard_normal((CLASSES + 1, 3))).astype(np.float32)  # one spare class for a bad model
BIAS = rng.standard_normal(CLASSES + 1).astype(np.float32)
PALETTE = np.asarray(CAMVID_CLASSES.palette, np.uint8)


@dataclass(frozen=True)
class Tiny:
    """A colour classifier (1x1 convolution on (x - 127) / 128) exported in one of the interfaces a card can
    describe; `size` None: a dynamic input size; `classes` beyond 11: a model the camvid card does not fit."""

    input_layout: str = "NCHW"
    input_dtype: str = "float32"
    stride: int = 1
    kind: str = "logits"
    #: what turns the scores into probabilities (kind "probabilities")
    activation: str = "Softmax"
    output_layout: str = "NCHW"
    label_type: int = TensorProto.INT64
    size: tuple[int, int] | None = SIZE
    batch: str = "fixed"
    classes: int = CLASSES
    #: import flags beyond classes, normalization and name
    flags: tuple[str, ...] = ()


INTERFACES = {
    "nchw_float32_logits": Tiny(),
    "nhwc_input": Tiny(input_layout="NHWC"),
    "uint8_input": Tiny(input_dtype="uint8"),
    "nhwc_uint8_input": Tiny(input_layout="NHWC", input_dtype="uint8"),
    "logits_stride_4": Tiny(stride=4),
    "nhwc_logits_stride_4": Tiny(stride=4, output_layout="NHWC"),
    "probabilities": Tiny(kind="probabilities"),
    "nhwc_probabilities_stride_4": Tiny(kind="probabilities", output_layout="NHWC", stride=4),
    "sigmoid_probabilities": Tiny(kind="probabilities", activation="Sigmoid"),
    "labels_int64_no_channel_axis": Tiny(kind="labels", output_layout="NHW"),
    "labels_int32_channel_axis": Tiny(kind="labels", label_type=TensorProto.INT32),
    "nhwc_labels_int64_channel_axis_stride_4": Tiny(kind="labels", output_layout="NHWC", stride=4),
    "labels_int32_no_channel_axis_stride_4": Tiny(kind="labels", output_layout="NHW", stride=4,
                                                  label_type=TensorProto.INT32),
    "dynamic_size_and_batch": Tiny(size=None, batch="dynamic", flags=("--size-multiple", "8")),
    "dynamic_size_at_card_size": Tiny(size=None, stride=4, flags=("--input-size", "32x48")),
}


def graph_output(tiny: Tiny, scores: str, nodes: list) -> tuple[str, int, int]:
    """Nodes from the class scores to the output; (its name, element type, channel count)."""
    channels, element = tiny.classes, TensorProto.FLOAT
    if tiny.kind == "probabilities":
        nodes.append(helper.make_node(tiny.activation, [scores], ["probabilities"],
                                      **({"axis": 1} if tiny.activation == "Softmax" else {})))
        scores = "probabilities"
    elif tiny.kind == "labels":
        nodes.append(helper.make_node("ArgMax", [scores], ["ids"], axis=1, keepdims=int(tiny.output_layout != "NHW")))
        scores, channels, element = "ids", 1, tiny.label_type
        if tiny.label_type != TensorProto.INT64:
            nodes.append(helper.make_node("Cast", ["ids"], ["cast_ids"], to=tiny.label_type))
            scores = "cast_ids"
    if tiny.output_layout == "NHWC":
        nodes.append(helper.make_node("Transpose", [scores], ["channels_last"], perm=[0, 2, 3, 1]))
        scores = "channels_last"
    nodes.append(helper.make_node("Identity", [scores], ["segmentation"]))
    return "segmentation", element, channels


def output_shape(tiny: Tiny, channels: int) -> list:
    batch = "N" if tiny.batch == "dynamic" else 1
    height, width = (tiny.size[0] // tiny.stride, tiny.size[1] // tiny.stride) if tiny.size else ("h", "w")
    return {"NCHW": [batch, channels, height, width], "NHWC": [batch, height, width, channels],
            "NHW": [batch, height, width]}[tiny.output_layout]


def tiny_model(path: Path, tiny: Tiny, extra_nodes=(), extra_weights=()) -> Path:
    """Write the ONNX file; `extra_nodes` turn the scores "raw_scores" into "scores" (none: Identity)."""
    batch = "N" if tiny.batch == "dynamic" else 1
    height, width = tiny.size or ("H", "W")
    shape = [batch, 3, height, width] if tiny.input_layout == "NCHW" else [batch, height, width, 3]
    element = TensorProto.UINT8 if tiny.input_dtype == "uint8" else TensorProto.FLOAT
    nodes, x = [], "image"
    if tiny.input_layout == "NHWC":
        nodes.append(helper.make_node("Transpose", [x], ["nchw"], perm=[0, 3, 1, 2]))
        x = "nchw"
    if tiny.input_dtype == "uint8":  # a uint8 model normalizes inside its graph
        nodes += [helper.make_node("Cast", [x], ["pixels"], to=TensorProto.FLOAT),
                  helper.make_node("Sub", ["pixels", "mean"], ["centred"]),
                  helper.make_node("Mul", ["centred", "scale"], ["normalized"])]
        x = "normalized"
    if tiny.stride > 1:
        nodes.append(helper.make_node("AveragePool", [x], ["pooled"], kernel_shape=[tiny.stride] * 2,
                                      strides=[tiny.stride] * 2))
        x = "pooled"
    nodes.append(helper.make_node("Conv", [x, "weights", "bias"], ["raw_scores"]))
    nodes += list(extra_nodes) or [helper.make_node("Identity", ["raw_scores"], ["scores"])]
    name, output_element, channels = graph_output(tiny, "scores", nodes)
    weights = [numpy_helper.from_array(WEIGHTS[:tiny.classes, :, None, None], "weights"),
               numpy_helper.from_array(BIAS[:tiny.classes], "bias"), *extra_weights]
    if tiny.input_dtype == "uint8":
        weights += [numpy_helper.from_array(np.float32(127.0), "mean"),
                    numpy_helper.from_array(np.float32(1 / 128), "scale")]
    graph = helper.make_graph(nodes, path.stem, [helper.make_tensor_value_info("image", element, shape)],
                              [helper.make_tensor_value_info(name, output_element, output_shape(tiny, channels))],
                              weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def import_model(model: Path, out: Path, tiny: Tiny = Tiny(), classes: str = "camvid", *flags: str) -> Path:
    """seg-import as a user runs it; returns the card written."""
    normalization = () if tiny.input_dtype == "uint8" else ("--normalization", PIXEL_NORMALIZATION)
    seg_import([str(model), "--classes", classes, *normalization, "--out", str(out), "--name", model.stem,
                *tiny.flags, *flags])
    return out / f"{model.stem}.json"


def reference_scores(image: np.ndarray, stride: int) -> np.ndarray:
    """The tiny models' logits, in numpy: C x h x w."""
    x = (image.astype(np.float32) - 127.0) / 128.0
    if stride > 1:
        h, w = x.shape[0] // stride, x.shape[1] // stride
        x = x[:h * stride, :w * stride].reshape(h, stride, w, stride, 3).mean((1, 3))
    return np.einsum("kc,hwc->khw", WEIGHTS[:CLASSES], x) + BIAS[:CLASSES, None, None]


def expected_mask(tiny: Tiny, image: np.ndarray, network_size: tuple[int, int]) -> np.ndarray:
    """What the pipeline must return, computed without it: the scores' mask (bilinear boundaries), or the labels
    resized by nearest neighbour."""
    scores = reference_scores(resize(image, *network_size), tiny.stride)
    if tiny.kind == "labels":
        return upsample_labels(scores.argmax(0).astype(np.uint8), *image.shape[:2])
    if tiny.kind == "probabilities" and tiny.activation == "Sigmoid":
        scores = 1 / (1 + np.exp(-scores))
    elif tiny.kind == "probabilities":
        scores = np.exp(scores - scores.max(0))
        scores /= scores.sum(0)
    return logits_to_mask(np.ascontiguousarray(scores, np.float32), *image.shape[:2], "boundaries")


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """Every interface built and imported once: name -> (Tiny, card path, seg-import's printout)."""
    folder = tmp_path_factory.mktemp("interfaces")
    cards = {}
    for name, tiny in INTERFACES.items():
        cards[name] = (tiny, import_model(tiny_model(folder / f"{name}.onnx", tiny), folder / "imported", tiny))
    return cards


@pytest.mark.parametrize("name", INTERFACES)
def test_seg_import_reads_each_interface_from_the_graph_and_the_pipeline_runs_it(imported, name):
    tiny, card_path = imported[name]
    card = ModelCard.load(card_path)
    interface = card.interface
    assert (interface.input_layout, interface.input_dtype, interface.output_kind, interface.output_layout,
            interface.batch) == (tiny.input_layout, tiny.input_dtype, tiny.kind, tiny.output_layout, tiny.batch)
    assert interface.input_size == ("fixed" if tiny.size else "dynamic")
    assert card.classes == list(CAMVID_CLASSES.names) and card.metrics["cost"]["gmacs"] >= 0
    pipeline = SegmentationPipeline.from_model(card_path, device="cpu")
    pipeline.backend.warm_up()
    assert pipeline.has_confidence == (tiny.kind != "labels")
    for seed in range(3):
        image = scene(seed, *IMAGE)
        result = pipeline.segment(image, "rgb", confidence=True)
        network_size = interface.network_size(card.input, *IMAGE)
        expected = expected_mask(tiny, image, network_size)
        assert result.mask.shape == IMAGE and result.mask.dtype == np.uint8
        assert (result.mask == expected).mean() >= 0.995, name
        np.testing.assert_array_equal(colorize(result.mask, pipeline.lut), PALETTE[result.mask])
        assert len(np.unique(result.mask)) > 2
        if tiny.kind == "labels":
            assert math.isnan(result.score) and result.confidence is None
        else:
            assert 0.0 <= result.score <= 1.0 and result.confidence.shape == IMAGE  # few pixels at stride 4: 0


def test_dynamic_sizes_feed_the_image_at_its_own_size_or_the_cards(imported):
    own = SegmentationPipeline.from_model(imported["dynamic_size_and_batch"][1], device="cpu")
    card_size = SegmentationPipeline.from_model(imported["dynamic_size_at_card_size"][1], device="cpu")
    own.segment(scene(0, *IMAGE))
    card_size.segment(scene(0, *IMAGE))
    assert own.network_input.shape == (1, 3, 64, 80)  # 60x80 rounded to multiples of 8 (7.5 up to 8)
    own.segment(scene(0, 59, 83))
    assert own.network_input.shape == (1, 3, 56, 80)
    assert card_size.network_input.shape == (1, 3, *SIZE)


def test_frames_a_model_takes_at_their_own_sizes_are_batched_by_size(imported):
    """Four cameras, two network sizes (a dynamic batch and size model): one backend call per size, the masks of
    frame-by-frame segment()."""
    pipeline = SegmentationPipeline.from_model(imported["dynamic_size_and_batch"][1], device="cpu")
    images = [scene(0, *IMAGE), scene(1, 96, 128), scene(2, *IMAGE), scene(3, 97, 126)]
    alone = [pipeline.segment(image).mask for image in images]
    calls, infer = [], pipeline.backend.infer
    pipeline.backend.infer = lambda batch: calls.append(batch.shape) or infer(batch)
    masks = [result.mask for result in pipeline.segment_batch(images)]
    assert calls == [(2, 3, 64, 80), (2, 3, 96, 128)]
    for mask, expected in zip(masks, alone):
        np.testing.assert_array_equal(mask, expected)


def test_probabilities_give_the_confidence_of_the_logits_they_came_from(imported):
    """A softmax inside the graph: the confidence is read from the probabilities, not from a softmax of them
    (which would flatten it towards 1 / classes); so it equals the logits model's, and so does the score."""
    logits = SegmentationPipeline.from_model(imported["nchw_float32_logits"][1], device="cpu")
    probabilities = SegmentationPipeline.from_model(imported["probabilities"][1], device="cpu")
    image = scene(5, *SIZE)
    from_logits, from_probabilities = (p.segment(image, confidence=True) for p in (logits, probabilities))
    assert np.abs(from_logits.confidence.astype(int) - from_probabilities.confidence).max() <= 1
    assert from_probabilities.score == pytest.approx(from_logits.score, abs=1e-4)
    assert from_probabilities.confidence.mean() > 1.5 * 255 / CLASSES
    scores = probabilities.run_network(probabilities.prepare(image))[0]
    np.testing.assert_allclose(scores.sum(0), 1.0, atol=1e-5)
    assert from_probabilities.score == pytest.approx(frame_score(scores, 1.0, "probabilities"), rel=1e-6)
    np.testing.assert_allclose(probabilities.logits(image), logits.logits(image) - logits.logits(image).max(0)
                               - np.log(np.exp(logits.logits(image) - logits.logits(image).max(0)).sum(0)),
                               atol=1e-4)


def test_a_sigmoid_model_is_as_confident_as_its_own_probability_of_the_chosen_class(imported):
    """Per-class sigmoids do not sum to 1: the confidence is the chosen class's own probability, not a softmax of
    the probabilities (near 1 / classes whatever the model says)."""
    pipeline = SegmentationPipeline.from_model(imported["sigmoid_probabilities"][1], device="cpu")
    image = scene(5, *SIZE)
    logits = reference_scores(resize(image, *SIZE), 1)
    own_probability = 1 / (1 + np.exp(-logits.max(0)))
    result = pipeline.segment(image, confidence=True)
    np.testing.assert_array_equal(result.mask, logits.argmax(0))
    assert np.abs(result.confidence.astype(float) - 255 * own_probability).max() <= 1.5
    assert result.confidence.mean() > 1.5 * 255 / CLASSES


def test_a_labels_model_has_no_logits_for_the_tools_that_need_them(imported):
    pipeline = SegmentationPipeline.from_model(imported["labels_int32_channel_axis"][1], device="cpu")
    with pytest.raises(ModelCardError, match="outputs labels, not per-class scores"):
        pipeline.logits(scene(0, *SIZE))


def test_seg_import_prints_the_smoke_test_and_the_cost(tmp_path, capsys):
    tiny = INTERFACES["logits_stride_4"]
    card_path = import_model(tiny_model(tmp_path / "costly.onnx", tiny), tmp_path / "out", tiny)
    printed = capsys.readouterr().out
    card = ModelCard.load(card_path)
    assert "smoke test on Seq05VD_f00000.jpg: mask 480x360" in printed and "classes seen:" in printed
    macs = CLASSES * 3 * (SIZE[0] // 4) * (SIZE[1] // 4)  # the 1x1 convolution at stride 4
    assert card.metrics["cost"]["gmacs"] == round(macs / 1e9, 3) and "GMACs" in printed
    assert card.metrics["cost"]["latency_ms_median"] > 0 and card.metrics["cost"]["threads"] == 2
    assert (tmp_path / "out" / "costly.onnx").read_bytes() == (tmp_path / "costly.onnx").read_bytes()


@pytest.mark.parametrize("tiny, flags, message", [
    (Tiny(size=None), (), "give --input-size HxW"),
    (Tiny(), ("--size-multiple", "8"), "--size-multiple needs a dynamic input size"),
    (Tiny(), ("--input-size", "64x64"), "fixes its input at 32x48"),
    (Tiny(input_dtype="uint8"), ("--normalization", "imagenet"), "drop --normalization"),
    (Tiny(), ("--normalization", "mean=0.485,0.456,0.406:std=0.229,0.224,0.225"), "pixel units"),
    (Tiny(), ("--classes", "cityscapes"), "the 19 classes are at neither axis 1 (NCHW) nor axis 3"),
])
def test_seg_import_names_the_flag_for_what_the_graph_does_not_tell(tmp_path, capsys, tiny, flags, message):
    model = tiny_model(tmp_path / "m.onnx", tiny)
    normalization = () if tiny.input_dtype == "uint8" or "--normalization" in flags else (
        "--normalization", PIXEL_NORMALIZATION)
    classes = () if "--classes" in flags else ("--classes", "camvid")
    with pytest.raises(SystemExit) as exit_info:
        seg_import([str(model), *classes, *normalization, "--out", str(tmp_path / "out"), *flags])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def hand_card(card_path: Path, folder: Path, name: str, model: Path | None = None, **changes) -> Path:
    """A copy of a card in `folder`, naming `model` (default: the card's own, copied), with top-level or
    interface (`interface_*`) fields changed: what a user writing a card by hand may get wrong."""
    card = json.loads(card_path.read_text())
    model = model or card_path.parent / card["files"]["onnx"]
    (folder / f"{name}.onnx").write_bytes(model.read_bytes())
    card["files"] = {"onnx": f"{name}.onnx"}
    for key, value in changes.items():
        if key.startswith("interface_"):
            card["interface"][key.removeprefix("interface_")] = value
        else:
            card[key] = value
    (folder / f"{name}.json").write_text(json.dumps(card))
    return folder / f"{name}.json"


def test_a_file_that_is_not_onnx_is_refused(imported, tmp_path, capsys):
    fake = tmp_path / "fake.onnx"
    fake.write_text("a segmentation model, honestly")
    with pytest.raises(SystemExit):
        import_model(fake, tmp_path / "out")
    assert "is not an ONNX model" in capsys.readouterr().err
    card = hand_card(imported["nchw_float32_logits"][1], tmp_path, "fake_card", fake)
    with pytest.raises(BackendError, match="not an ONNX model"):
        SegmentationPipeline.from_model(card, device="cpu")


def two_input_model(path: Path) -> Path:
    """A graph fed a colour image and a depth image."""
    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, channels, *SIZE])
              for name, channels in (("image", 3), ("depth", 1))]
    nodes = [helper.make_node("Concat", ["image", "depth"], ["rgbd"], axis=1),
             helper.make_node("Conv", ["rgbd", "weights"], ["scores"])]
    weights = numpy_helper.from_array(np.ones((CLASSES, 4, 1, 1), np.float32), "weights")
    graph = helper.make_graph(nodes, "rgbd", inputs,
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, CLASSES, *SIZE])],
                              [weights])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION), path)
    return path


def test_a_graph_with_several_image_inputs_is_refused(imported, tmp_path, capsys):
    model = two_input_model(tmp_path / "rgbd.onnx")
    with pytest.raises(SystemExit):
        import_model(model, tmp_path / "out")
    assert "the graph has 2 inputs" in capsys.readouterr().err
    card = hand_card(imported["nchw_float32_logits"][1], tmp_path, "rgbd_card", model)
    with pytest.raises(BackendError, match=r"the graph has 2 inputs .* feeds one image"):
        SegmentationPipeline.from_model(card, device="cpu")


def open_class_axis_model(path: Path) -> Path:
    """11 classes that only a run shows: the output passes through an If on the image's content, whose branches
    give different class counts (the graph's shape inference leaves the axis open)."""
    branches = {name: helper.make_graph([node], name, [], [helper.make_tensor_value_info(node.output[0],
                                                                                          TensorProto.FLOAT, None)])
                for name, node in (("all", helper.make_node("Identity", ["scores"], ["all"])),
                                   ("some", helper.make_node("Slice", ["scores", "zero", "five", "one"], ["some"])))}
    nodes = [helper.make_node("Conv", ["image", "weights", "bias"], ["scores"]),
             helper.make_node("ReduceMax", ["image"], ["brightest"], keepdims=0),
             helper.make_node("Greater", ["brightest", "never"], ["always"]),
             helper.make_node("If", ["always"], ["segmentation"], then_branch=branches["all"],
                              else_branch=branches["some"])]
    constants = {"weights": WEIGHTS[:CLASSES, :, None, None], "bias": BIAS[:CLASSES], "never": np.float32(-1e9),
                 "zero": np.array([0]), "five": np.array([5]), "one": np.array([1])}
    graph = helper.make_graph(
        nodes, "open", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, *SIZE])],
        [helper.make_tensor_value_info("segmentation", TensorProto.FLOAT, [1, "classes", *SIZE])],
        [numpy_helper.from_array(value, name) for name, value in constants.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION), path)
    return path


def test_an_output_whose_class_axis_contradicts_the_card_is_refused_at_start_up(imported, tmp_path):
    """The NHWC output of the TF-style model read as NCHW would be 12 (its width) classes: refused with the
    hint; a card listing other classes: refused at load, or, where the graph leaves the axis open, at warm-up."""
    nhwc = hand_card(imported["nhwc_logits_stride_4"][1], tmp_path, "as_nchw", interface_output_layout="NCHW")
    with pytest.raises(BackendError, match=r"outputs 8 classes .* lists 11; axis 3 has 11: the output is NHWC"):
        SegmentationPipeline.from_model(nhwc, device="cpu")
    cityscapes = {"classes": [f"c{i}" for i in range(19)], "palette": [[i, i, i] for i in range(19)]}
    other = hand_card(imported["nchw_float32_logits"][1], tmp_path, "other_classes", **cityscapes)
    with pytest.raises(BackendError, match=r"outputs 11 classes .* lists 19"):
        SegmentationPipeline.from_model(other, device="cpu")
    open_axis = open_class_axis_model(tmp_path / "open.onnx")
    late = hand_card(imported["nchw_float32_logits"][1], tmp_path, "late", open_axis, **cityscapes)
    pipeline = SegmentationPipeline.from_model(late, device="cpu")
    with pytest.raises(BackendError, match=r"outputs 11 classes .* lists 19"):
        pipeline.backend.warm_up()


def spare_class_model(path: Path) -> Path:
    """Labels from 12 scores, the 12th winning in the left half of the image: ids the 11-class card lacks."""
    offset = np.zeros((1, CLASSES + 1, 1, SIZE[1]), np.float32)
    offset[0, CLASSES, 0, :SIZE[1] // 2] = 1e4
    nodes = [helper.make_node("Add", ["raw_scores", "spare_class"], ["scores"])]
    return tiny_model(path, Tiny(kind="labels", classes=CLASSES + 1), nodes,
                      [numpy_helper.from_array(offset, "spare_class")])


def test_labels_beyond_the_cards_classes_fail_the_frame_naming_the_id(imported, tmp_path, capsys):
    model = spare_class_model(tmp_path / "spare.onnx")
    with pytest.raises(SystemExit):  # seg-import's smoke test meets it first
        import_model(model, tmp_path / "out", Tiny(kind="labels"))
    assert "class id 11, outside the card's 11 classes" in capsys.readouterr().err
    card = hand_card(imported["labels_int64_no_channel_axis"][1], tmp_path, "spare", model,
                     interface_output_layout="NCHW")
    pipeline = SegmentationPipeline.from_model(card, device="cpu")
    with pytest.raises(ModelOutputError, match="class id 11, outside the card's 11 classes"):
        pipeline.segment(scene(0, *IMAGE))


def nan_when_bright_model(path: Path) -> Path:
    """Logits plus 0 x sqrt(-mean normalized pixel): NaN everywhere for a bright frame, exact for a dark one
    (the smoke test's CamVid frame is dark enough)."""
    nodes = [helper.make_node("ReduceMean", ["image"], ["brightness"], axes=[1, 2, 3], keepdims=1),
             helper.make_node("Neg", ["brightness"], ["darkness"]),
             helper.make_node("Sqrt", ["darkness"], ["root"]),
             helper.make_node("Mul", ["root", "zero"], ["nothing_or_nan"]),
             helper.make_node("Add", ["raw_scores", "nothing_or_nan"], ["scores"])]
    return tiny_model(path, Tiny(), nodes, [numpy_helper.from_array(np.float32(0.0), "zero")])


def dark(seed: int) -> np.ndarray:
    return scene(seed, *IMAGE) // 4


def bright(seed: int) -> np.ndarray:
    return 255 - scene(seed, *IMAGE) // 4


def test_nan_or_infinite_scores_fail_the_frame(tmp_path):
    card = import_model(nan_when_bright_model(tmp_path / "nan.onnx"), tmp_path / "out")
    pipeline = SegmentationPipeline.from_model(card, device="cpu")
    with pytest.raises(ModelOutputError, match=r"logits hold 16896 NaN or infinite value.s. of 16896"):
        pipeline.segment(bright(0))  # 11 x 32 x 48 logits, all NaN
    assert pipeline.segment(dark(0)).mask.shape == IMAGE


def size_bound_model(path: Path) -> Path:
    """A graph with a dynamic input that only runs at 32x48 (it adds a constant of that size)."""
    constant = numpy_helper.from_array(np.zeros((1, CLASSES, *SIZE), np.float32), "fixed_size")
    nodes = [helper.make_node("Add", ["raw_scores", "fixed_size"], ["scores"])]
    return tiny_model(path, Tiny(size=None), nodes, [constant])


def test_an_input_size_the_model_rejects_is_an_error_at_start_up_or_a_failed_frame(tmp_path, capsys):
    model = size_bound_model(tmp_path / "bound.onnx")
    with pytest.raises(SystemExit):
        import_model(model, tmp_path / "out", Tiny(size=None), "camvid", "--input-size", "40x40")
    assert "the model rejected a 40x40 input" in capsys.readouterr().err
    card = import_model(model, tmp_path / "out", Tiny(size=None), "camvid", "--input-size", "32x48")
    wrong_size = hand_card(card, tmp_path, "wrong_size", input={**json.loads(card.read_text())["input"],
                                                               "height": 40, "width": 40})
    with pytest.raises(BackendError, match="rejected a 1 x 3 x 40 x 40 float32 input"):
        SegmentationPipeline.from_model(wrong_size, device="cpu").backend.warm_up()
    own_size = SegmentationPipeline.from_model(hand_card(card, tmp_path, "own_size", interface_size_multiple=8),
                                               device="cpu")
    assert own_size.segment(scene(0, *SIZE)).mask.shape == SIZE
    with pytest.raises(BackendError, match="rejected a 1 x 3 x 64 x 80 float32 input"):
        own_size.segment(scene(0, *IMAGE))


def clip_in_folders_layout(root: Path, frames: int) -> Path:
    """The shipped CamVid clip's first frames as a `folders` data set (class-id labels, void -> 255)."""
    clip = package_path("data", "camvid_clip")
    for kind in ("images", "labels"):
        (root / "test" / kind).mkdir(parents=True)
    CAMVID_CLASSES.to_csv(root / "classes.csv")
    for image in sorted((clip / "test").glob("*.jpg"))[:frames]:
        cv2.imwrite(str(root / "test" / "images" / f"{image.stem}.png"), cv2.imread(str(image)))
        label = cv2.imread(str(clip / "testannot" / f"{image.stem}.png"), cv2.IMREAD_UNCHANGED)
        cv2.imwrite(str(root / "test" / "labels" / f"{image.stem}.png"), np.where(label >= CLASSES, 255, label))
    return root


def test_a_model_of_this_project_reimported_gets_the_same_seg_eval_miou(tmp_path):
    """seg-eval on a data set in the folders layout: the shipped default through its own card and re-imported."""
    source = models_dir() / ModelCard.load(models_dir() / "camvid_mobile_unet_pruned_robust_int8.json").files["onnx"]
    reimported = import_model(source, tmp_path / "out")
    data = clip_in_folders_layout(tmp_path / "drive", 3)
    results = [run_evaluation(["--model", str(card), "--data", str(data), "--layout", "folders", "--split", "test",
                               "--out", str(tmp_path / card.stem)])
               for card in (models_dir() / "camvid_mobile_unet_pruned_robust_int8.json", reimported)]
    assert results[0]["miou"] == results[1]["miou"] and results[0]["frames"] == 3
    assert results[0]["confusion_matrix"] == results[1]["confusion_matrix"]


def test_a_model_of_this_project_reimported_gives_the_masks_of_its_own_card(tmp_path):
    """The shipped default's ONNX file through seg-import, as is and with an ArgMax appended (labels out):
    the same masks as its own card on the shipped CamVid frames."""
    own = SegmentationPipeline.from_model(None, device="cpu")
    source = models_dir() / own.card.files["onnx"]
    graph = onnx.load(source)
    graph.graph.node.append(helper.make_node("ArgMax", ["logits"], ["labels"], axis=1, keepdims=0))
    del graph.graph.output[:]
    graph.graph.output.append(helper.make_tensor_value_info("labels", TensorProto.INT64, [1, 360, 480]))
    onnx.save(graph, tmp_path / "with_argmax.onnx")
    reimported = [SegmentationPipeline.from_model(import_model(path, tmp_path / "out"), device="cpu")
                  for path in (source, tmp_path / "with_argmax.onnx")]
    assert [p.card.interface.output_kind for p in reimported] == ["logits", "labels"]
    assert reimported[0].card.compression["precision"] == "int8"
    frames = sorted(package_path("data", "camvid_clip", "test").glob("*.jpg"))[::8]
    for frame in map(read_rgb, frames):
        expected = own.segment(frame)
        logits, labels = (p.segment(frame) for p in reimported)
        np.testing.assert_array_equal(logits.mask, expected.mask)
        np.testing.assert_array_equal(labels.mask, expected.mask)
        assert len(np.unique(expected.mask)) > 4
        assert logits.score == pytest.approx(frame_score(own.logits(frame)), rel=1e-6)  # the own card's T: 1.081


def start_nodes(seg_node, cards: dict[str, Path]) -> dict:
    """One node per card, started side by side (each on its own camera topic), once all are ready."""
    nodes = {name: seg_node(wait=False, suffix=f"m{index}", model=str(card), input_topics=[f"/m{index}/image_raw"],
                            qos_reliability="reliable") for index, (name, card) in enumerate(cards.items())}
    for node in nodes.values():
        node.wait_until_ready(timeout=180.0)
    return nodes


def test_every_interface_runs_in_the_node_over_dds(ros, seg_node, imported):
    """Each imported model in a node: its mask at the input's size with the input's header, the colour mask in the
    card's palette; a labels-only model has no ~/confidence, and /diagnostics says its monitor is off."""
    diagnostics = ros.subscribe(DiagnosticArray, "/diagnostics")
    nodes = start_nodes(seg_node, {name: card for name, (_, card) in imported.items()})
    for index, (name, node) in enumerate(nodes.items()):
        tiny, card = imported[name]
        outputs, publisher = connect(ros, node, f"/m{index}/image_raw", names=("mask", "color_mask"))
        image, stamp = scene(index, *IMAGE), 1_800_000_000_000_000_000 + index
        publisher.publish(make_image_msg(image, "rgb8", stamp, frame_id=f"camera_{index}"))
        mask, colours = wait_stamp(outputs.mask, stamp), wait_stamp(outputs.color_mask, stamp)
        for message, encoding in ((mask, "mono8"), (colours, "rgb8")):
            assert (message.height, message.width, message.encoding) == (*IMAGE, encoding), name
            assert message.header.frame_id == f"camera_{index}", name
        labels = np.frombuffer(mask.data, np.uint8).reshape(IMAGE)
        np.testing.assert_array_equal(labels, SegmentationPipeline.from_model(card, device="cpu").segment(image).mask,
                                      err_msg=name)
        np.testing.assert_array_equal(np.frombuffer(colours.data, np.uint8).reshape(*IMAGE, 3), PALETTE[labels])
        status = node_status(diagnostics, node, lambda s: "reliability_monitor" in diagnostic_values(s))
        monitor = diagnostic_values(status)["reliability_monitor"]
        if tiny.kind == "labels":
            assert ros.node.count_publishers(node.topic("confidence")) == 0, name
            assert monitor.startswith("off") and "labels only" in monitor, monitor
        else:
            ros.wait_for_publishers(node.topic("confidence"))
            assert "labels" not in monitor, monitor


def test_frames_a_model_cannot_segment_are_counted_as_failed_and_the_node_stays_up(ros, seg_node, imported,
                                                                                   tmp_path):
    """NaN logits for bright frames, and labels with an id the card lacks: each such frame fails, counted and
    named in /diagnostics; the next good frame is segmented."""
    diagnostics = ros.subscribe(DiagnosticArray, "/diagnostics")
    cards = {"nan": import_model(nan_when_bright_model(tmp_path / "nan.onnx"), tmp_path / "out"),
             "spare": hand_card(imported["labels_int64_no_channel_axis"][1], tmp_path, "spare",
                                spare_class_model(tmp_path / "spare_model.onnx"), interface_output_layout="NCHW")}
    nodes = start_nodes(seg_node, cards)
    for index, (name, reason) in enumerate((("nan", "NaN or infinite value"), ("spare", "class id 11"))):
        node = nodes[name]
        outputs, publisher = connect(ros, node, f"/m{index}/image_raw", names=("mask",))
        publisher.publish(make_image_msg(bright(index), "rgb8", 1_000 + index))
        status = node_status(diagnostics, node, lambda s: "frame(s) failed" in s.message)
        assert reason in status.message and int(diagnostic_values(status)["frames_failed"]) == 1, status.message
    outputs, publisher = connect(ros, nodes["nan"], "/m0/image_raw", names=("mask",))
    publisher.publish(make_image_msg(dark(3), "rgb8", 2_000))
    assert wait_stamp(outputs.mask, 2_000).height == IMAGE[0]


def test_a_card_that_contradicts_its_model_stops_the_node_at_start_up(seg_node, imported, tmp_path):
    """At load (the graph fixes the class axis) and at the warm-up inference (the graph leaves it open)."""
    cityscapes = {"classes": [f"c{i}" for i in range(19)], "palette": [[i, i, i] for i in range(19)]}
    cards = {"set interface.output_layout": hand_card(imported["nhwc_logits_stride_4"][1], tmp_path, "as_nchw",
                                                      interface_output_layout="NCHW"),
             "lists 19": hand_card(imported["nchw_float32_logits"][1], tmp_path, "late",
                                   open_class_axis_model(tmp_path / "open.onnx"), **cityscapes)}
    nodes = {reason: seg_node(wait=False, suffix=f"c{index}", model=str(card))
             for index, (reason, card) in enumerate(cards.items())}
    for reason, node in nodes.items():
        assert node.wait_exit() == 1
        assert "FATAL" in node.output() and reason in node.output(), node.output()


def test_normalization_values_follow_the_channel_order_the_network_takes():
    """Presets and mean=R,G,B are given per colour; the card applies them in its channel order."""
    from seg_node.toolchain.import_model import normalization
    assert normalization("imagenet", "float32", None) == ([123.675, 116.28, 103.53], [58.395, 57.12, 57.375], "rgb")
    assert normalization("imagenet", "float32", "bgr") == ([103.53, 116.28, 123.675], [57.375, 57.12, 58.395], "bgr")
    assert normalization("caffe", "float32", "rgb") == ([123.68, 116.779, 103.939], [1.0, 1.0, 1.0], "rgb")
    assert normalization("mean=10,20,30:std=2,2,4", "float32", "bgr") == ([30.0, 20.0, 10.0], [4.0, 2.0, 2.0], "bgr")
