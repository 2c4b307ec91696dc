"""Structured and unstructured pruning, safe reload of pruned widths, INT8/FP16 ONNX."""

from __future__ import annotations

import argparse
import hashlib
import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from camvid_fixtures import write_camvid11

from seg_node.core.backends.torch_backend import build_for_inference
from seg_node.core.model_card import InputSpec, ModelCard
from seg_node.core.model_files import model_file, models_dir, resolve_model
from seg_node.toolchain.compression.prune import (
    IMPORTANCE_CRITERIA,
    accumulate_taylor_gradients,
    count_macs_and_params,
    make_pruner,
    overall_ratio,
    parse_layer_ratio,
    prune,
)
from seg_node.toolchain.compression.prune import main as structured_main
from seg_node.toolchain.compression.quantize import calibration_inputs, convert_fp16, quantize_int8
from seg_node.toolchain.compression.sweep import main as sweep_main
from seg_node.toolchain.compression.unstructured import magnitude_prune, weight_sparsity
from seg_node.toolchain.data import CAMVID_CLASSES, CAMVID_PALETTE
from seg_node.toolchain.export import export_model, export_onnx, mask_agreement
from seg_node.core.architectures import build_model
from seg_node.core.architectures.weights import load_weights, save_weights
from seg_node.toolchain.random_model import make_random_model

SMALL_UNET = {"name": "unet", "base_width": 16, "depth": 3}
MOBILE_UNET = {"name": "mobile_unet", "decoder_channels": [64, 32, 24, 16]}
HEIGHT, WIDTH = 64, 96


@pytest.mark.parametrize("architecture", [SMALL_UNET, MOBILE_UNET], ids=lambda a: a["name"])
@pytest.mark.parametrize("criterion", sorted(IMPORTANCE_CRITERIA))
def test_structured_pruning_shrinks_the_model_and_survives_export_and_safe_reload(architecture, criterion, tmp_path):
    torch.manual_seed(0)
    model = build_model(architecture, 11)
    base_macs, base_params = count_macs_and_params(model, HEIGHT, WIDTH)
    pruner = make_pruner(model, 0.5, criterion, HEIGHT, WIDTH, round_to=8)
    if criterion == "taylor":
        batch = (torch.randn(2, 3, HEIGHT, WIDTH), torch.randint(0, 11, (2, HEIGHT, WIDTH)))
        accumulate_taylor_gradients(model, [batch])
    pruner.step()
    model.eval()
    macs, params = count_macs_and_params(model, HEIGHT, WIDTH)
    assert macs < 0.5 * base_macs and params < 0.5 * base_params
    assert model.classifier.out_channels == 11
    widths = [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m is not model.classifier]
    assert all(w % 8 == 0 for w in widths), "round_to=8 keeps hardware-friendly widths"
    x = torch.randn(1, 3, HEIGHT, WIDTH)
    with torch.inference_mode():
        expected = model(x)
    assert expected.shape == (1, 11, HEIGHT, WIDTH)

    save_weights(model, tmp_path / "pruned.safetensors")
    rebuilt = load_weights(build_model(architecture, 11), tmp_path / "pruned.safetensors").eval()
    assert count_macs_and_params(rebuilt, HEIGHT, WIDTH) == (macs, params)
    with torch.inference_mode():
        torch.testing.assert_close(rebuilt(x), expected)

    session = ort.InferenceSession(str(export_onnx(rebuilt, tmp_path / "pruned.onnx", HEIGHT, WIDTH)),
                                   providers=["CPUExecutionProvider"])
    assert mask_agreement(expected.numpy(), session.run(None, {"image": x.numpy()})[0]) >= 0.999


def test_global_pruning_respects_the_per_layer_cap():
    torch.manual_seed(0)
    model = build_model(SMALL_UNET, 11)
    before = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    make_pruner(model, 0.7, "l1", HEIGHT, WIDTH, global_pruning=True, round_to=None, max_layer_ratio=0.8).step()
    after = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    assert all(after[n] >= int(0.2 * before[n]) for n in before), "no layer loses more than 80% of its channels"
    assert sum(after.values()) < 0.5 * sum(before.values())


def test_prune_command_flow_fine_tunes_between_steps(tmp_path):
    data = write_camvid11(tmp_path / "camvid", {"train": 8, "val": 2})
    onnx_path = make_random_model(tmp_path / "base", SMALL_UNET, size=(48, 64))
    card_path = onnx_path.with_suffix(".json")
    model, summary = prune(ModelCard.load(card_path), card_path, ratio=0.5, criterion="l2", steps=2,
                           fine_tune_epochs=1, data=str(data), batch_size=4, threads=2)
    assert [h["step"] for h in summary["history"]] == [1, 2]
    assert all("val_miou" in h for h in summary["history"])
    assert summary["history"][0]["macs"] > summary["history"][1]["macs"] == summary["macs"]
    assert summary["macs_reduction"] > 0.5 and summary["params"] < summary["base_params"]
    assert summary["distillation"] is None and "previous" not in summary
    assert not model.training


def test_a_final_fine_tune_on_train_and_val_keeps_its_last_epoch_and_says_so(tmp_path):
    data = write_camvid11(tmp_path / "camvid", {"train": 4, "val": 2})
    card_path = make_random_model(tmp_path / "base", SMALL_UNET, size=(48, 64)).with_suffix(".json")
    model, summary = prune(ModelCard.load(card_path), card_path, ratio=0.5, criterion="l2", steps=1,
                           fine_tune_epochs=2, data=str(data), batch_size=2, threads=2, val_corrupted=3,
                           work_dir=tmp_path / "work", train_splits=("train", "val"))
    assert summary["fine_tune_splits"] == ["train", "val"] and "selected_on" not in summary
    assert summary["history"] == [{"step": 1, "macs": summary["macs"]}]  # no val figure: val was trained on
    last = torch.load(tmp_path / "work" / "step1" / "last.pt", weights_only=True)
    assert last["epoch"] == 2 and [d["split"] for d in json.loads(last["run"])["data"]] == ["train", "val", "val"]
    kept = model.state_dict()
    assert all(torch.equal(kept[k], v) for k, v in last["model"].items())


def test_fine_tuning_a_pruned_model_further_counts_savings_from_the_original(tmp_path, capsys):
    """Pruning is often resumed (more fine-tuning, a distillation pass): the card must still say how much the
    original lost, and keep the record of the first pass."""
    data = write_camvid11(tmp_path / "camvid", {"train": 8, "val": 2})
    base_card = make_random_model(tmp_path / "base", SMALL_UNET, size=(48, 64)).with_suffix(".json")
    base_name = ModelCard.load(base_card).name
    pruned_stem = tmp_path / "pruned"
    structured_main(["--model", str(base_card), "--ratio", "0.5", "--steps", "1", "--fine-tune-epochs", "1",
                     "--batch-size", "4", "--threads", "2", "--data", str(data), "--out", str(pruned_stem)])
    first = ModelCard.load(pruned_stem.with_suffix(".json"))
    model, summary = prune(first, pruned_stem.with_suffix(".json"), ratio=0.0, criterion="l2", steps=1,
                           fine_tune_epochs=1, data=str(data), batch_size=4, threads=2, distill_weight=1.0,
                           teacher=base_card, loss="ce_lovasz", class_weights="none", crop=(48, 64),
                           scale_range=(1.0, 1.25))
    assert first.compression["fine_tune_loss"] == {"loss": "ce", "class_weights": "median_frequency"}
    assert summary["fine_tune_loss"] == {"loss": "ce_lovasz", "class_weights": "none"}
    assert first.compression["fine_tune_augmentation"] == {"crop": [288, 384], "scale_range": [0.75, 1.5]}
    assert summary["fine_tune_augmentation"] == {"crop": [48, 64], "scale_range": [1.0, 1.25]}
    assert summary["macs"] == first.compression["macs"] < summary["base_macs"]
    assert (summary["base_model"], summary["base_macs"]) == (base_name, first.compression["base_macs"])
    assert summary["macs_reduction"] == first.compression["macs_reduction"] > 0.5
    assert summary["ratio"] == 0.0 and overall_ratio(summary) == overall_ratio(first.compression) == 0.5
    assert overall_ratio({"ratio": 0.5, "previous": {"ratio": 0.5}}) == 0.75
    assert summary["previous"] == first.compression
    assert summary["distillation"] == {"teacher": base_name, "weight": 1.0, "temperature": 2.0}
    refused = [  # (why, extra arguments, what the error says)
        ("a teacher without a distillation weight would be unused", ["--teacher", str(base_card)],
         "only for distillation"),
        ("a pruned model must not teach itself", ["--distill-weight", "1"], "pruned before"),
        ("a missing teacher fails before any pruning", ["--distill-weight", "1", "--teacher",
                                                        str(tmp_path / "nope.json")], "no such model card"),
        ("the temperature divides the logits", ["--distill-weight", "1", "--teacher", str(base_card),
                                                "--distill-temperature", "0"], "temperature > 0")]
    for why, extra, message in refused:
        with pytest.raises(SystemExit):
            structured_main(["--model", str(pruned_stem.with_suffix(".json")), "--ratio", "0", "--data", str(data),
                             "--out", str(tmp_path / "refused"), *extra])
        assert message in capsys.readouterr().err, why
    assert not (tmp_path / "refused.json").exists()


@pytest.mark.parametrize("global_pruning", [True, False])
def test_unstructured_pruning_reaches_the_requested_sparsity(global_pruning):
    torch.manual_seed(0)
    model = build_model(SMALL_UNET, 11)
    macs_before = count_macs_and_params(model, HEIGHT, WIDTH)
    sparsity = magnitude_prune(model, 0.6, global_pruning)
    assert sparsity == pytest.approx(0.6, abs=0.01) and weight_sparsity(model) == sparsity
    assert not any(name.endswith("_orig") for name, _ in model.named_parameters()), "pruning made permanent"
    assert count_macs_and_params(model, HEIGHT, WIDTH) == macs_before, "dense shapes: no fewer MACs"


def test_int8_and_fp16_models_load_and_agree_with_fp32(tmp_path):
    data = write_camvid11(tmp_path / "camvid", {"train": 8})
    onnx_path = make_random_model(tmp_path / "fp32", MOBILE_UNET, size=(64, 96))
    card = ModelCard.load(onnx_path.with_suffix(".json"))
    inputs = calibration_inputs(str(data), 8, card)
    assert inputs.shape == (8, 3, 64, 96)
    reference = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    expected = np.concatenate([reference.run(None, {"image": x[None]})[0] for x in inputs])
    for activation_type in ("u8", "s8"):
        int8_path = tmp_path / f"int8_{activation_type}.onnx"
        quantize_int8(onnx_path, int8_path, inputs, activation_type)
        session = ort.InferenceSession(str(int8_path), providers=["CPUExecutionProvider"])
        ops = {node.op_type for node in __import__("onnx").load(str(int8_path)).graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops
        got = np.concatenate([session.run(None, {"image": x[None]})[0] for x in inputs])
        assert mask_agreement(expected, got) > 0.8, activation_type
    fp16_path = tmp_path / "fp16.onnx"
    convert_fp16(onnx_path, fp16_path)
    session = ort.InferenceSession(str(fp16_path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(float)"
    got = np.concatenate([session.run(None, {"image": x[None]})[0] for x in inputs])
    assert mask_agreement(expected, got) > 0.98


def test_dynamic_batch_and_size_export_runs_at_other_shapes(tmp_path):
    torch.manual_seed(0)
    model = build_model(MOBILE_UNET, 11).eval()
    path = export_onnx(model, tmp_path / "dynamic.onnx", HEIGHT, WIDTH, dynamic_batch=True, dynamic_size=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [type(d) for d in session.get_inputs()[0].shape] == [str, int, str, str]
    for batch, height, width in ((2, HEIGHT, WIDTH), (1, 96, 128)):
        x = torch.randn(batch, 3, height, width)
        with torch.inference_mode():
            expected = model(x).numpy()
        got = session.run(None, {"image": x.numpy()})[0]
        assert got.shape == (batch, 11, height, width)
        assert mask_agreement(expected, got) >= 0.999


@pytest.mark.parametrize("architecture", [SMALL_UNET, MOBILE_UNET], ids=lambda a: a["name"])
def test_decoder_scope_leaves_the_encoder_whole(architecture):
    torch.manual_seed(0)
    model = build_model(architecture, 11)
    encoder_before = {n: p.shape for n, p in model.encoder.named_parameters()}
    base_macs, _ = count_macs_and_params(model, HEIGHT, WIDTH)
    make_pruner(model, 0.5, "l2", HEIGHT, WIDTH, scope="decoder").step()
    assert {n: p.shape for n, p in model.encoder.named_parameters()} == encoder_before
    assert count_macs_and_params(model, HEIGHT, WIDTH)[0] < 0.9 * base_macs
    with pytest.raises(ValueError, match="scope"):
        make_pruner(build_model(architecture, 11), 0.5, "l2", HEIGHT, WIDTH, scope="encoder")


def test_layer_ratios_thin_the_named_stage_more_than_the_rest():
    torch.manual_seed(0)
    model = build_model(MOBILE_UNET, 11)
    make_pruner(model, 0.5, "l2", HEIGHT, WIDTH, scope="decoder", round_to=4, layer_ratios={"decoder.3": 0.75}).step()
    widths = [[m.out_channels for m in stage.modules() if isinstance(m, torch.nn.Conv2d)] for stage in model.decoder]
    assert widths == [[32, 32], [16, 16], [12, 12], [4, 4]]
    with pytest.raises(ValueError, match="no submodule named"):
        make_pruner(build_model(MOBILE_UNET, 11), 0.5, "l2", HEIGHT, WIDTH, layer_ratios={"decoder.9": 0.5})
    with pytest.raises(ValueError, match="cap"):
        make_pruner(build_model(MOBILE_UNET, 11), 0.5, "l2", HEIGHT, WIDTH, layer_ratios={"decoder.3": 0.9})
    assert parse_layer_ratio("decoder.3=0.75") == ("decoder.3", 0.75)
    for bad in ("decoder.3", "=0.5", "decoder.3=half"):
        with pytest.raises(argparse.ArgumentTypeError, match="NAME=RATIO"):
            parse_layer_ratio(bad)


def test_sweep_tabulates_ratios_precisions_the_given_model_and_the_unstructured_baseline(tmp_path):
    data = write_camvid11(tmp_path / "camvid", {"train": 8, "val": 2, "test": 3})
    torch.manual_seed(0)
    export_model(build_model(SMALL_UNET, 11), tmp_path / "tiny_unet", name="tiny_unet", architecture=SMALL_UNET,
                 classes=CAMVID_CLASSES, palette=CAMVID_PALETTE, spec=InputSpec(height=48, width=64),
                 parity_inputs=np.random.default_rng(0).standard_normal((2, 3, 48, 64)).astype(np.float32))
    base = tmp_path / "tiny_unet.json"
    structured_main(["--model", str(base), "--ratio", "0.25", "--layer-ratio", "up_conv.2=0.5", "--scope", "decoder",
                     "--steps", "1", "--fine-tune-epochs", "0", "--data", str(data), "--out", str(tmp_path / "first")])
    structured_main(["--model", str(tmp_path / "first.json"), "--ratio", "0", "--steps", "1", "--fine-tune-epochs",
                     "0", "--data", str(data), "--out", str(tmp_path / "given")])  # a second pass, as shipped
    given = ModelCard.load(tmp_path / "given.json")
    assert given.compression["previous"]["layer_ratios"] == {"up_conv.2": 0.5}
    out = tmp_path / "sweep"
    sweep_main(["--base", str(base), "--ratios", "0", "0.5", "--steps", "1", "--fine-tune-epochs", "0",
                "--also", str(tmp_path / "given.json"), "--calibration-frames", "4", "--frames", "3",
                "--data", str(data), "--out", str(out)])
    rows = json.loads((out / "results.json").read_text())
    assert [(r["model"], r["method"], r["precision"]) for r in rows] == [
        ("tiny_unet", "structured", "fp32"), ("tiny_unet_int8", "structured", "int8"),
        ("tiny_unet_p50", "structured", "fp32"), ("tiny_unet_p50_int8", "structured", "int8"),
        ("given", "structured (given)", "fp32"), ("given_int8", "structured (given)", "int8"),
        ("tiny_unet_unstructured50", "unstructured", "fp32")]
    by_model = {r["model"]: r for r in rows}
    assert by_model["tiny_unet_p50"]["macs"] < 0.6 * by_model["tiny_unet"]["macs"]
    assert by_model["given"]["macs"] == given.compression["macs"] < by_model["tiny_unet"]["macs"]
    assert by_model["given"]["ratio"] == by_model["given_int8"]["ratio"] == 0.25  # the chain's, not the last pass's
    assert by_model["tiny_unet_unstructured50"]["macs"] == by_model["tiny_unet"]["macs"]
    assert by_model["tiny_unet_int8"]["onnx_mb"] < by_model["tiny_unet"]["onnx_mb"]
    assert all(0 <= r["test_miou"] <= 100 and 0 < r["ort_median_ms"] <= r["ort_p95_ms"] for r in rows)
    assert all(("torch_median_ms" in r) == (r["precision"] == "fp32") for r in rows)
    assert len((out / "table.md").read_text().splitlines()) == 2 + len(rows)
    assert (out / "accuracy_vs_latency.png").stat().st_size > 10_000
    made = {path.name: path.stat().st_mtime_ns for path in (out / "models").glob("*.onnx")}
    assert set(made) == {"tiny_unet_int8.onnx", "tiny_unet_p50.onnx", "tiny_unet_p50_int8.onnx", "given_int8.onnx",
                         "tiny_unet_unstructured50.onnx"}
    sweep_args = ["--base", str(base), "--ratios", "0", "0.5", "--steps", "1", "--fine-tune-epochs", "0",
                  "--calibration-frames", "4", "--frames", "3", "--data", str(data), "--out", str(out)]
    sweep_main(sweep_args)
    assert {name: (out / "models" / name).stat().st_mtime_ns for name in made} == made  # same base: all reused
    torch.manual_seed(1)  # the base retrained under the same name: every variant of it is made again
    export_model(build_model(SMALL_UNET, 11), tmp_path / "tiny_unet", name="tiny_unet", architecture=SMALL_UNET,
                 classes=CAMVID_CLASSES, palette=CAMVID_PALETTE, spec=InputSpec(height=48, width=64),
                 parity_inputs=np.random.default_rng(0).standard_normal((2, 3, 48, 64)).astype(np.float32))
    sweep_main(sweep_args)
    new_sha256 = hashlib.sha256((tmp_path / "tiny_unet.onnx").read_bytes()).hexdigest()
    for name in ("tiny_unet_p50", "tiny_unet_unstructured50", "tiny_unet_int8"):
        assert (out / "models" / f"{name}.onnx").stat().st_mtime_ns > made[f"{name}.onnx"]
        assert ModelCard.load(out / "models" / f"{name}.json").compression["origin"]["source_sha256"] == new_sha256
    remade = {name: (out / "models" / name).stat().st_mtime_ns for name in made}
    sweep_main([*sweep_args, "--calibration-frames", "3"])  # other calibration: only the INT8 models are remade
    assert ModelCard.load(out / "models" / "tiny_unet_int8.json").compression["origin"]["calibration_frames"] == 3
    assert {name for name in made if (out / "models" / name).stat().st_mtime_ns != remade[name]} == {
        "tiny_unet_int8.onnx", "tiny_unet_p50_int8.onnx"}
    other = tmp_path / "other_base"
    make_random_model(other, SMALL_UNET, size=(48, 64))
    with pytest.raises(SystemExit, match="must record structured pruning of"):
        sweep_main(["--base", str(other.with_suffix(".json")), "--ratios", "0", "--also", str(tmp_path / "given.json"),
                    "--data", str(data), "--out", str(tmp_path / "sweep2")])


def test_the_shipped_default_is_a_pruned_model_with_half_the_macs_of_its_base_and_its_recorded_accuracy():
    """The claims the README makes of the default model, checked on the shipped files: MACs measured from the
    weights (its accuracy figures: tests/test_docs.py, re-measured by the CAMVID_ROOT opt-in test)."""
    default, default_path = resolve_model(None)
    fp32_path = models_dir() / f"{default.compression['source_model']}.json"
    pruned = ModelCard.load(fp32_path)
    base_path = models_dir() / f"{pruned.compression['base_model']}.json"
    base = ModelCard.load(base_path)
    macs = {name: count_macs_and_params(build_for_inference(card, model_file(card, path, "torch")),
                                        card.input.height, card.input.width)[0]
            for name, card, path in (("base", base, base_path), ("pruned", pruned, fp32_path))}
    assert macs["pruned"] <= 0.5 * macs["base"]
    assert (pruned.compression["macs"], pruned.compression["base_macs"]) == (macs["pruned"], macs["base"])
    assert default.compression["precision"] == "int8"
    # class offsets: the base's gained on held-out halves of val and were applied, the pruned model has none applied
    assert default.class_bias == pruned.class_bias and base.class_bias["applied"]
    assert not pruned.class_bias.get("applied")
