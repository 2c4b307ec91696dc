"""Per-class logit offsets: the fit, its folding into the classifier, and the seg-class-bias command."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from camvid_fixtures import write_camvid11
from ros_harness import REPO

from seg_node.core.architectures import build_model
from seg_node.core.backends import create_backend
from seg_node.core.model_card import ModelCard
from seg_node.core.model_files import models_dir
from seg_node.core.pipeline import SegmentationPipeline
from seg_node.toolchain.compression.quantize import calibration_inputs, convert_fp16, quantize_int8, quantized_card
from seg_node.toolchain.data import CAMVID_CLASSES, open_dataset
from seg_node.toolchain.evaluation.metrics import ConfusionMatrix
from seg_node.toolchain.random_model import make_random_model
from seg_node.toolchain.training.class_bias import (
    final_conv,
    fit_class_bias,
    fold_into_classifier,
    fold_into_onnx,
    held_out_estimate,
)
from seg_node.toolchain.training.class_bias import main as class_bias_main

ARCHITECTURES = [{"name": "unet", "base_width": 8, "depth": 3},
                 {"name": "attention_unet", "base_width": 8, "depth": 3},
                 {"name": "mobile_unet", "decoder_channels": [16, 16, 8, 8]}]


def overpredicting_logits(seed: int = 0, excess: float = 2.0):
    """Three classes with noisy but informative logits; class 2 gets `excess` added everywhere, so it
    swallows pixels of the others; a tenth of the pixels are void (label 3)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, (4, 32, 40)).astype(np.uint8)
    labels[rng.random(labels.shape) < 0.1] = 3
    logits = 2.0 * np.eye(4, 3, dtype=np.float32)[labels].transpose(0, 3, 1, 2)
    logits += rng.normal(0, 1.0, logits.shape).astype(np.float32)
    logits[:, 2] += excess
    return logits, labels


def miou_with(logits: np.ndarray, labels: np.ndarray, offsets: np.ndarray) -> float:
    matrix = ConfusionMatrix(logits.shape[1])
    matrix.update((logits + offsets[None, :, None, None]).argmax(1), labels)
    return 100 * matrix.miou()


def test_fitted_offsets_undo_a_known_overprediction_and_report_the_true_miou():
    logits, labels = overpredicting_logits()
    offsets, before, after = fit_class_bias(logits, labels, progress=False)
    assert before == pytest.approx(miou_with(logits, labels, np.zeros(3, np.float32)), abs=1e-6)
    assert after == pytest.approx(miou_with(logits, labels, offsets), abs=1e-6)
    assert after > before + 10
    assert offsets.mean() == pytest.approx(0, abs=1e-6)
    assert -2.5 <= offsets[2] - offsets[:2].mean() <= -1.5


def test_offsets_never_lower_the_miou_they_are_fitted_on():
    logits, labels = overpredicting_logits(seed=3, excess=0.0)
    offsets, before, after = fit_class_bias(logits, labels, progress=False)
    assert after >= before
    assert miou_with(logits, labels, offsets) == pytest.approx(after, abs=1e-6)


def test_held_out_halves_confirm_offsets_that_transfer_and_expose_ones_that_do_not():
    logits, labels = overpredicting_logits()
    held_without, held_with = held_out_estimate(logits, labels)
    _, before, after = fit_class_bias(logits, labels, progress=False)
    assert held_without == pytest.approx(np.mean([miou_with(logits[half], labels[half], np.zeros(3, np.float32))
                                                  for half in (slice(0, 2), slice(2, 4))]), abs=1e-6)
    assert held_with > held_without + 10 and held_with <= after + 1
    over, over_labels = overpredicting_logits(seed=1, excess=2.5)
    under, under_labels = overpredicting_logits(seed=2, excess=-2.5)
    mixed, mixed_labels = np.concatenate([over, under]), np.concatenate([over_labels, under_labels])
    held_without, held_with = held_out_estimate(mixed, mixed_labels)
    _, before, after = fit_class_bias(mixed, mixed_labels, progress=False)
    assert after >= before and held_with < held_without - 5
    with pytest.raises(ValueError, match="two frames"):
        held_out_estimate(logits[:1], labels[:1])


def test_the_fit_refuses_a_grid_without_zero_and_labels_that_are_all_void():
    logits, labels = overpredicting_logits()
    with pytest.raises(ValueError, match="must contain 0"):
        fit_class_bias(logits, labels, grid=np.array([-1.0, 1.0]), progress=False)
    with pytest.raises(ValueError, match="no labelled"):
        fit_class_bias(logits, np.full_like(labels, 3), progress=False)


@pytest.mark.parametrize("architecture", ARCHITECTURES, ids=lambda a: a["name"])
def test_folding_offsets_shifts_every_output_logit_by_exactly_its_class_offset(architecture):
    torch.manual_seed(0)
    model = build_model(architecture, CAMVID_CLASSES.num_classes).eval()
    x = torch.randn(1, 3, 64, 96)
    offsets = np.linspace(-2, 2, CAMVID_CLASSES.num_classes).astype(np.float32)
    with torch.no_grad():
        before = model(x)
        fold_into_classifier(model, offsets)
        after = model(x)
    torch.testing.assert_close(after - before, torch.from_numpy(offsets)[None, :, None, None].expand_as(before),
                               atol=1e-4, rtol=0)


def test_folding_refuses_offsets_for_another_number_of_classes():
    model = build_model(ARCHITECTURES[0], CAMVID_CLASSES.num_classes)
    with pytest.raises(ValueError, match="classifier"):
        fold_into_classifier(model, np.zeros(3, np.float32))


def class_bias_on_a_random_model(tmp_path, min_held_out_gain: str):
    """seg-class-bias on a random U-Net and three fixture val frames: (source ONNX, written card, random input)."""
    data = write_camvid11(tmp_path / "camvid", {"train": 2, "val": 3})
    source = make_random_model(tmp_path / "random_unet")
    class_bias_main(["--model", str(source), "--data", str(data), "--min-held-out-gain", min_held_out_gain,
                     "--out", str(tmp_path / "balanced")])
    card = ModelCard.load(tmp_path / "balanced.json")
    x = np.random.default_rng(1).standard_normal((1, 3, card.input.height, card.input.width)).astype(np.float32)
    return source, card, x


def test_class_bias_command_writes_a_model_whose_logits_move_by_the_recorded_offsets(tmp_path, capsys):
    source, card, x = class_bias_on_a_random_model(tmp_path, "-100")
    assert "val mIoU" in capsys.readouterr().out
    record = card.class_bias
    assert list(record["offsets"]) == list(CAMVID_CLASSES.names) and record["applied"] is True
    assert "fitted_offsets" not in record
    assert record["fitted_on"] == "CamVid (11-class SegNet split) val (3 frames)"
    assert record["val_miou_after"] >= record["val_miou_before"]
    assert set(record["held_out"]) == {"method", "miou_before", "miou_after", "min_gain"}
    assert card.metrics == {}
    old, new = (onnx_logits(path, x) for path in (source, tmp_path / "balanced.onnx"))
    offsets = np.array(list(record["offsets"].values()), np.float32)
    assert np.abs(offsets).max() > 0
    np.testing.assert_allclose(new - old, np.broadcast_to(offsets[None, :, None, None], old.shape), atol=1e-3)
    assert quantized_card(card, tmp_path / "balanced_int8.onnx", "int8", {}).class_bias == record


def test_offsets_that_gain_too_little_on_held_out_halves_are_recorded_but_not_applied(tmp_path, capsys):
    """The same fit as above, with a held-out gain it cannot reach: the model is written unchanged and the card
    keeps the offsets that were fitted, with why they were left out."""
    source, card, x = class_bias_on_a_random_model(tmp_path, "100")
    assert "NOT applied" in capsys.readouterr().out
    record = card.class_bias
    assert record["applied"] is False and record["held_out"]["min_gain"] == 100
    assert set(record["offsets"].values()) == {0.0} and any(record["fitted_offsets"].values())
    assert card.notes.endswith("not applied (too little held-out gain)")
    np.testing.assert_allclose(onnx_logits(tmp_path / "balanced.onnx", x), onnx_logits(source, x), atol=1e-5)


def test_refitting_for_flip_averaging_replaces_the_earlier_offsets_instead_of_adding_to_them(tmp_path, capsys):
    """--refit --flip-average from the bare model and from the model with offsets gives the same offsets and
    the same network; the card says to run it flip-averaged and keeps the earlier record."""
    source, balanced, x = class_bias_on_a_random_model(tmp_path, "-100")
    data = tmp_path / "camvid"
    for start, out in ((source, "from_bare"), (tmp_path / "balanced.json", "from_balanced")):
        class_bias_main(["--model", str(start), "--data", str(data), "--min-held-out-gain", "-100",
                         "--flip-average", "--refit", "--out", str(tmp_path / out)])
    assert "-> " in capsys.readouterr().out
    bare, refitted = (ModelCard.load(tmp_path / f"{out}.json") for out in ("from_bare", "from_balanced"))
    assert bare.flip_average and refitted.flip_average and "run flip-averaged" in refitted.notes
    assert refitted.class_bias["previous"] == balanced.class_bias and "previous" not in bare.class_bias
    assert refitted.class_bias["offsets"] == bare.class_bias["offsets"] != balanced.class_bias["offsets"]
    offsets = np.array(list(bare.class_bias["offsets"].values()), np.float32)
    for out in ("from_bare", "from_balanced"):
        np.testing.assert_allclose(onnx_logits(tmp_path / f"{out}.onnx", x) - onnx_logits(source, x),
                                   np.broadcast_to(offsets[None, :, None, None], x.shape[:1] + (11,) + x.shape[2:]),
                                   atol=1e-3)
    assert quantized_card(refitted, tmp_path / "refitted_int8.onnx", "int8", {}).flip_average


def test_offsets_in_card_name_the_models_files_and_segment_as_the_model_with_them_folded_in(tmp_path):
    """--offsets-in-card writes only a card: the source's files (relative to the card's folder), the offsets as
    logit_offsets, the data set by name and checksum; its pipeline gives the folded model's logits, and folding
    it again (offsets not applied: no change) gives a model file with the same logits and no logit_offsets."""
    source, folded, _ = class_bias_on_a_random_model(tmp_path, "-100")
    data = tmp_path / "camvid"
    out = tmp_path / "cards" / "in_card"
    class_bias_main(["--model", str(source), "--data", str(data), "--min-held-out-gain", "-100",
                     "--offsets-in-card", "--out", str(out)])
    card = ModelCard.load(out.with_suffix(".json"))
    assert card.files == {"onnx": "../random_unet.onnx", "torch": "../random_unet.safetensors"}
    assert sorted(p.name for p in out.parent.iterdir()) == ["in_card.json"]
    assert card.class_bias["offsets"] == folded.class_bias["offsets"]
    np.testing.assert_allclose(card.logit_offsets, list(folded.class_bias["offsets"].values()), atol=1e-4)
    assert card.class_bias["data"] == open_dataset(data, "val").identity()
    assert "--data $CAMVID_ROOT" in card.class_bias["command"] and str(data) not in card.to_json()
    image = (np.random.default_rng(3).random((card.input.height, card.input.width, 3)) * 255).astype(np.uint8)
    in_card, in_model = (SegmentationPipeline.from_model(path, device="cpu").logits(image)
                         for path in (out.with_suffix(".json"), tmp_path / "balanced.json"))
    np.testing.assert_allclose(in_card, in_model, atol=1e-3)
    class_bias_main(["--model", str(out.with_suffix(".json")), "--data", str(data), "--min-held-out-gain", "100",
                     "--out", str(tmp_path / "refolded")])
    refolded = ModelCard.load(tmp_path / "refolded.json")
    assert refolded.logit_offsets == [] and refolded.files["onnx"] == "refolded.onnx"
    np.testing.assert_allclose(SegmentationPipeline.from_model(tmp_path / "refolded.json", device="cpu").logits(image),
                               in_card, atol=1e-3)


def test_class_bias_command_refuses_test_a_missing_data_set_and_a_missing_model(tmp_path, capsys):
    source = make_random_model(tmp_path / "random_unet")
    for arguments, message in ((["--model", str(source), "--split", "test"], "invalid choice: 'test'"),
                               (["--model", str(source), "--data", str(tmp_path / "nowhere")], "nowhere"),
                               (["--model", str(tmp_path / "missing.json")], "missing.json")):
        with pytest.raises(SystemExit) as refused:
            class_bias_main(arguments + ["--out", str(tmp_path / "x")])
        assert refused.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()


def onnx_logits(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]


@pytest.mark.parametrize("precision", ["int8", "fp16"])
def test_offsets_go_into_the_bias_of_a_quantized_onnx_graph(precision, tmp_path):
    data = write_camvid11(tmp_path / "camvid", {"train": 8, "val": 2})
    source = make_random_model(tmp_path / "random_unet")
    card = ModelCard.load(source.with_suffix(".json"))
    quantized = tmp_path / f"random_{precision}.onnx"
    if precision == "int8":
        quantize_int8(source, quantized, calibration_inputs(open_dataset(data, "train"), 8, card))
    else:
        convert_fp16(source, quantized)
    offsets = np.linspace(-0.3, 0.3, CAMVID_CLASSES.num_classes).astype(np.float32)
    fold_into_onnx(quantized, tmp_path / "shifted.onnx", offsets)
    x = np.random.default_rng(2).standard_normal((1, 3, card.input.height, card.input.width)).astype(np.float32)
    shift = onnx_logits(tmp_path / "shifted.onnx", x) - onnx_logits(quantized, x)
    # INT8 logits are requantized in steps of the output's scale, so compare the typical shift per class
    np.testing.assert_allclose(np.median(shift, axis=(0, 2, 3)), offsets, atol=0.02)
    quantized_card(card, quantized, precision, {}).save(quantized.with_suffix(".json"))
    class_bias_main(["--model", str(quantized.with_suffix(".json")), "--data", str(data),
                     "--min-held-out-gain", "-100", "--out", str(tmp_path / "balanced")])
    balanced = ModelCard.load(tmp_path / "balanced.json")
    assert balanced.compression["precision"] == precision and balanced.files == {"onnx": "balanced.onnx"}
    assert balanced.class_bias["val_miou_after"] >= balanced.class_bias["val_miou_before"]


def test_folding_into_onnx_refuses_a_graph_whose_output_no_biased_conv_makes(tmp_path):
    source = make_random_model(tmp_path / "random_unet")
    model = onnx.load(str(source))
    conv = final_conv(model.graph)
    del conv.input[2]
    onnx.save(model, str(tmp_path / "no_bias.onnx"))
    with pytest.raises(ValueError, match="no Conv with a bias"):
        fold_into_onnx(tmp_path / "no_bias.onnx", tmp_path / "x.onnx", np.zeros(CAMVID_CLASSES.num_classes, np.float32))


def test_the_shipped_flip_averaged_model_is_the_single_pass_network_with_refitted_offsets():
    """What models/README.md says of camvid_mobile_unet_flip, checked on the shipped files: camvid_mobile_unet's
    own files, run flip-averaged, with the change of offsets as logit_offsets (its figures: tests/test_docs.py)."""
    single, flipped = (ModelCard.load(models_dir() / f"{name}.json")
                       for name in ("camvid_mobile_unet", "camvid_mobile_unet_flip"))
    assert flipped.flip_average and not single.flip_average and flipped.class_bias["previous"] == single.class_bias
    assert flipped.files == single.files and not single.logit_offsets
    change = [flipped.class_bias["offsets"][c] - single.class_bias["offsets"][c] for c in single.classes]
    np.testing.assert_allclose(flipped.logit_offsets, change, atol=2e-4)  # the record rounds to 4 decimals


def test_the_shipped_flip_card_segments_the_clip_as_its_network_with_the_offsets_folded_into_the_bias():
    """The pipeline's logit_offsets on ONNX give the masks of the torch network with the offsets in its
    classifier's bias (what camvid_mobile_unet_flip shipped as a 15 MB copy up to 0.1.5): on the committed clip they
    agreed on all but 1 of 4.1 M pixels, the ONNX export's float rounding."""
    flip_path = models_dir() / "camvid_mobile_unet_flip.json"
    flipped = ModelCard.load(flip_path)
    card_only = SegmentationPipeline.from_model(flip_path, device="cpu", threads=1)
    folded_card = dataclasses.replace(flipped, logit_offsets=[])
    backend = create_backend("torch", folded_card, flip_path, "cpu", threads=1)
    fold_into_classifier(backend.model, np.array(flipped.logit_offsets, np.float32))
    folded = SegmentationPipeline(backend, folded_card)
    clip = open_dataset(REPO / "data" / "camvid_clip", "test")
    frames = [clip.load(sample)[0] for sample in clip.samples()[::3]]
    agreement = np.mean([np.mean(card_only.segment(f).mask == folded.segment(f).mask) for f in frames])
    assert agreement >= 0.99999, agreement
