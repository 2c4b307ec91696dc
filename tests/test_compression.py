"""Structured pruning, safe reload of pruned widths, INT8/FP16 ONNX (the pruning study that
compares them: tests/test_sweep.py)."""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import replace

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from camvid_fixtures import write_camvid11
from folders_fixtures import OWN_CLASSES, write_folders

from seg_node.core.architectures import build_model
from seg_node.core.architectures.weights import load_weights, save_weights
from seg_node.core.backends.torch_backend import build_for_inference
from seg_node.core.model_card import ModelCard
from seg_node.core.model_files import model_file, models_dir, resolve_model
from seg_node.core.pipeline import SegmentationPipeline
from seg_node.toolchain.compression.config import (
    FINE_TUNING_SCHEDULE,
    IMPORTANCE_CRITERIA,
    FineTuning,
    PruningConfig,
    PruningConfigError,
)
from seg_node.toolchain.compression.prune import (
    accumulate_taylor_gradients,
    count_macs_and_params,
    make_pruner,
    overall_ratio,
    parse_layer_ratio,
    prune,
    training_batches,
)
from seg_node.toolchain.compression.prune import main as structured_main
from seg_node.toolchain.compression.quantize import calibration_inputs, convert_fp16, quantize_int8
from seg_node.toolchain.data import ClassTable, open_dataset
from seg_node.toolchain.export import export_onnx, mask_agreement
from seg_node.toolchain.model_cost import count_macs, count_params
from seg_node.toolchain.random_model import make_random_model
from seg_node.toolchain.training.augment import parse_corruption
from seg_node.toolchain.training.config import DataConfig, RecipeConfig, RunConfig

SMALL_UNET = {"name": "unet", "base_width": 16, "depth": 3}
MOBILE_UNET = {"name": "mobile_unet", "decoder_channels": [64, 32, 24, 16]}
HEIGHT, WIDTH = 64, 96


def fine_tuning(data, epochs: int, batch_size: int) -> FineTuning:
    """seg-prune's fine-tuning on `data` at test sizes, frames read in the training process."""
    return FineTuning(data=DataConfig(root=str(data)), run=RunConfig(threads=2, workers=0),
                      schedule=replace(FINE_TUNING_SCHEDULE, epochs=epochs, batch_size=batch_size))


@pytest.mark.parametrize("architecture", [SMALL_UNET, MOBILE_UNET], ids=lambda a: a["name"])
@pytest.mark.parametrize("criterion", sorted(IMPORTANCE_CRITERIA))
def test_structured_pruning_shrinks_the_model_and_survives_export_and_safe_reload(architecture, criterion, tmp_path):
    torch.manual_seed(0)
    model = build_model(architecture, 11)
    base_macs, base_params = count_macs_and_params(model, HEIGHT, WIDTH)
    pruner = make_pruner(model, PruningConfig(0.5, criterion, steps=1, round_to=8), HEIGHT, WIDTH)
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
    make_pruner(model, PruningConfig(0.7, "l1", steps=1, global_pruning=True, round_to=None, max_layer_ratio=0.8),
                HEIGHT, WIDTH).step()
    after = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    assert all(after[n] >= int(0.2 * before[n]) for n in before), "no layer loses more than 80% of its channels"
    assert sum(after.values()) < 0.5 * sum(before.values())


def test_prune_command_flow_fine_tunes_between_steps(tmp_path, capsys):
    data = write_camvid11(tmp_path / "camvid", {"train": 8, "val": 2})
    onnx_path = make_random_model(tmp_path / "base", SMALL_UNET, size=(48, 64))
    card_path = onnx_path.with_suffix(".json")
    tuning = fine_tuning(data, epochs=1, batch_size=4)
    tuning = replace(tuning, recipe=replace(tuning.recipe, val_corrupted=3),
                     run=replace(tuning.run, out=str(tmp_path / "work")))
    model, summary = prune(ModelCard.load(card_path), card_path, PruningConfig(0.5, "l2", steps=2), tuning)
    assert [h["step"] for h in summary["history"]] == [1, 2]
    for entry in summary["history"]:  # the kept epoch's clean and corrupted val mIoU, not their mean
        best = torch.load(tmp_path / "work" / f"step{entry['step']}" / "best.pt", weights_only=True)
        assert (entry["val_miou"], entry["val_corrupted_miou"]) == (best["val_miou"], best["val_corrupted_miou"])
    assert summary["history"][0]["macs"] > summary["history"][1]["macs"] == summary["macs"]
    said = re.findall(r"pruning step (\d)/2: ([\d.e-]+) GMACs", capsys.readouterr().out)
    assert said == [(str(h["step"]), f"{h['macs'] / 1e9:.3g}") for h in summary["history"]]
    assert summary["macs_reduction"] > 0.5 and summary["params"] < summary["base_params"]
    assert summary["distillation"] is None and "previous" not in summary
    assert not model.training


def test_each_pruning_step_re_estimates_the_batchnorm_statistics_on_clean_training_batches(tmp_path):
    data = write_camvid11(tmp_path / "camvid", {"train": 8, "val": 2})
    card_path = make_random_model(tmp_path / "base", MOBILE_UNET, size=(48, 64)).with_suffix(".json")
    card = ModelCard.load(card_path)
    tuning = fine_tuning(data, epochs=0, batch_size=4)
    tuning = replace(tuning, recipe=replace(tuning.recipe, crop=(32, 48), corruption=parse_corruption("default")))
    model, summary = prune(card, card_path, PruningConfig(0.5, "l2", steps=1, recalibration_batches=2), tuning)
    assert summary["bn_recalibration_batches"] == 2
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    recalibrated = [m.running_mean.clone() for m in norms]
    batch_means = {m: [] for m in norms}
    for m in norms:
        m.register_forward_pre_hook(lambda module, args: batch_means[module].append(args[0].mean((0, 2, 3))))
    with torch.no_grad():
        for x, _ in training_batches(card, tuning, 2, tuning.schedule.seed):
            model.train()(x)
    for norm, running_mean in zip(norms, recalibrated):  # the plain average of the batches' means
        torch.testing.assert_close(running_mean, torch.stack(batch_means[norm]).mean(0), rtol=1e-4, atol=1e-5)
    _, unpruned = prune(card, card_path, PruningConfig(0.0, "l2", steps=1, recalibration_batches=2), tuning)
    assert unpruned["bn_recalibration_batches"] == 0  # nothing removed, statistics left as trained


def pruning_damage(before: torch.nn.Module, after: torch.nn.Module) -> float:
    """How far a pruning step moved the network's logits, relative to their size."""
    x = torch.randn(4, 3, 48, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = before.eval()(x)
        return float((after.eval()(x) - reference).abs().mean() / reference.abs().mean())


def test_sparse_training_before_a_step_drives_the_channels_it_removes_to_zero(tmp_path):
    """DepGraph's sparse training: the group-norm penalty pushes the weakest channels of each group to zero before
    the step removes them, so the cut barely moves the network, where the same cut of the untrained network moves
    its logits by about their own size. The regularized run is kept as sparse<N> (its last epoch) and resumed."""
    data = write_camvid11(tmp_path / "camvid", {"train": 8, "val": 2})
    card_path = make_random_model(tmp_path / "base", MOBILE_UNET, size=(48, 64)).with_suffix(".json")
    card = ModelCard.load(card_path)
    tuning = fine_tuning(data, epochs=0, batch_size=4)
    tuning = replace(tuning, recipe=replace(tuning.recipe, crop=(48, 64)),
                     schedule=replace(tuning.schedule, optimizer="sgd", lr=0.1),
                     run=replace(tuning.run, out=str(tmp_path / "work")))
    sparse = PruningConfig(0.5, "l2", steps=1, sparse_epochs=3, sparse_reg=1.0, recalibration_batches=0)
    pruned, summary = prune(card, card_path, sparse, tuning)
    regularized = build_for_inference(card, model_file(card, card_path, "torch"))
    kept = torch.load(tmp_path / "work" / "sparse1" / "last.pt", weights_only=True)
    assert kept["epoch"] == 3
    regularized.load_state_dict(kept["model"])
    plain, _ = prune(card, card_path, replace(sparse, sparse_epochs=0), tuning)
    unregularized = build_for_inference(card, model_file(card, card_path, "torch"))
    assert pruning_damage(regularized, pruned) < 0.05 < 0.5 < pruning_damage(unregularized, plain)
    assert summary["sparse_training"] == {"epochs_per_step": 3, "reg": 1.0}
    assert "sparse_training" not in PruningConfig(0.5).record()
    again, _ = prune(card, card_path, sparse, tuning)  # the finished run is read back, not trained again
    assert all(torch.equal(a, b) for a, b in zip(pruned.state_dict().values(), again.state_dict().values()))
    _, two_steps = prune(card, card_path, replace(sparse, steps=2, sparse_epochs=1),
                         replace(tuning, run=replace(tuning.run, out=str(tmp_path / "two"))))
    assert [(tmp_path / "two" / f"sparse{n}" / "last.pt").is_file() for n in (1, 2)] == [True, True]
    assert two_steps["history"][1]["macs"] < two_steps["history"][0]["macs"]
    slimmed = build_model(MOBILE_UNET, 11)  # network slimming: an L1 penalty on the BatchNorm scales
    slimming = make_pruner(slimmed, replace(sparse, criterion="bn_scale"), HEIGHT, WIDTH)
    norms = [m for m in slimmed.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for norm in norms:
        norm.weight.grad = torch.zeros_like(norm.weight)
    slimming.regularize(slimmed)
    assert all(torch.equal(norm.weight.grad, torch.sign(norm.weight.detach())) for norm in norms)
    for bad, message in (({"criterion": "taylor"}, "bn_scale, l1, l2"), ({"sparse_reg": 0.0}, "coefficient > 0"),
                         ({"sparse_epochs": -1}, "epochs >= 0")):
        with pytest.raises(PruningConfigError, match=message):
            replace(sparse, **bad)


def test_a_final_fine_tune_on_train_and_val_keeps_its_last_epoch_and_says_so(tmp_path):
    data = write_camvid11(tmp_path / "camvid", {"train": 4, "val": 2})
    card_path = make_random_model(tmp_path / "base", SMALL_UNET, size=(48, 64)).with_suffix(".json")
    tuning = fine_tuning(data, epochs=2, batch_size=2)
    tuning = replace(tuning, data=replace(tuning.data, train_splits=("train", "val")),
                     recipe=replace(tuning.recipe, val_corrupted=3),
                     run=replace(tuning.run, out=str(tmp_path / "work")))
    model, summary = prune(ModelCard.load(card_path), card_path, PruningConfig(0.5, "l2", steps=1), tuning)
    assert summary["fine_tune_splits"] == ["train", "val"] and "selected_on" not in summary
    assert summary["history"] == [{"step": 1, "macs": summary["macs"]}]  # no val figure: val was trained on
    last = torch.load(tmp_path / "work" / "step1" / "last.pt", weights_only=True)
    assert summary["fine_tune_data"] == json.loads(last["run"])["data"]
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
    recipe = RecipeConfig(distill_weight=1.0, teacher=str(base_card), loss="ce_lovasz", class_weights="none",
                          crop=(48, 64), scale_range=(1.0, 1.25))
    _, summary = prune(first, pruned_stem.with_suffix(".json"), PruningConfig(0.0, "l2", steps=1),
                       replace(fine_tuning(data, epochs=1, batch_size=4), recipe=recipe))
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
    assert summary["distillation"] == {"teacher": base_name, "weight": 1.0, "temperature": 2.0, "loss": "pixel"}
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


def test_a_card_is_re_exported_with_native_logits_unpruned_and_untuned_with_the_same_masks(tmp_path):
    """seg-prune --ratio 0 --fine-tune-epochs 0 --native-logits: the same weights, logits at the classifier's
    resolution, the card saying so; the pipeline's masks are the original's."""
    base_card = make_random_model(tmp_path / "base", {"name": "mobile_unet", "decoder_channels": [32, 24, 16, 16]},
                                  size=(96, 128)).with_suffix(".json")
    offsets = [0.1 * i for i in range(11)]
    base_card.write_text(json.dumps({**json.loads(base_card.read_text()), "flip_average": True,
                                     "logit_offsets": offsets}))
    structured_main(["--model", str(base_card), "--ratio", "0", "--fine-tune-epochs", "0", "--native-logits",
                     "--out", str(tmp_path / "native")])
    card = ModelCard.load(tmp_path / "native.json")
    assert card.architecture["upsample_logits"] is False
    assert card.notes.endswith("not fine-tuned, logits at the classifier's resolution")
    assert card.flip_average and card.logit_offsets == offsets  # the same weights: how they are run carries over
    assert card.compression["macs"] == card.compression["base_macs"]
    original, native = (SegmentationPipeline.from_model(path, device="cpu")
                        for path in (base_card, tmp_path / "native.json"))
    image = cv2.resize(np.random.default_rng(4).integers(0, 256, (6, 8, 3), np.uint8), (160, 120),
                       interpolation=cv2.INTER_CUBIC)
    assert original.run_network(original.prepare(image)).shape[-2:] == (96, 128)
    assert native.run_network(native.prepare(image)).shape[-2:] == (48, 64)
    # the same up to where rough random logits resized twice (network, then pipeline) or once disagree
    assert (original.segment(image).mask == native.segment(image).mask).mean() >= 0.95


def test_pruning_fine_tunes_on_a_folders_data_set_of_other_classes_matched_to_the_models_by_name(tmp_path):
    """Five classes of one's own, listed in classes.csv in another order than the model's: fine-tuning reads the
    labels in the model's class ids, and the pruned model keeps the model's classes and palette."""
    model_classes = ClassTable(OWN_CLASSES.names[::-1], OWN_CLASSES.colours[::-1])
    data = write_folders(tmp_path / "own", OWN_CLASSES, {"train": 2, "val": 1})
    card_path = make_random_model(tmp_path / "own_model", {"name": "unet", "base_width": 8, "depth": 2},
                                  size=(32, 48), classes=model_classes).with_suffix(".json")
    tuning = replace(fine_tuning(data, epochs=1, batch_size=2), run=RunConfig(out=str(tmp_path / "work"), workers=0),
                     recipe=RecipeConfig(distill_weight=0.0, crop=(32, 48)))
    model, summary = prune(ModelCard.load(card_path), card_path, PruningConfig(0.5, steps=1), tuning)
    assert model.classifier.out_channels == 5 and summary["macs"] < summary["base_macs"]
    run = json.loads(torch.load(tmp_path / "work" / "step1" / "best.pt", weights_only=True)["run"])
    assert run["classes"] == list(model_classes.names) and run["palette"] == model_classes.palette
    assert [(d["split"], d["frames"]) for d in summary["fine_tune_data"]] == [("train", 2), ("val", 1)]
    assert "val_miou" in summary["history"][0]


def test_int8_and_fp16_models_load_and_agree_with_fp32(tmp_path):
    data = write_camvid11(tmp_path / "camvid", {"train": 8})
    onnx_path = make_random_model(tmp_path / "fp32", MOBILE_UNET, size=(64, 96))
    card = ModelCard.load(onnx_path.with_suffix(".json"))
    inputs = calibration_inputs(open_dataset(data, "train"), 8, card)
    assert inputs.shape == (8, 3, 64, 96)
    reference = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    expected = np.concatenate([reference.run(None, {"image": x[None]})[0] for x in inputs])
    for activation_type in ("u8", "s8"):
        int8_path = tmp_path / f"int8_{activation_type}.onnx"
        quantize_int8(onnx_path, int8_path, inputs, activation_type)
        session = ort.InferenceSession(str(int8_path), providers=["CPUExecutionProvider"])
        ops = {node.op_type for node in onnx.load(str(int8_path)).graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops
        got = np.concatenate([session.run(None, {"image": x[None]})[0] for x in inputs])
        assert mask_agreement(expected, got) > 0.8, activation_type
    fp16_path = tmp_path / "fp16.onnx"
    convert_fp16(onnx_path, fp16_path)
    session = ort.InferenceSession(str(fp16_path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(float)"
    got = np.concatenate([session.run(None, {"image": x[None]})[0] for x in inputs])
    assert mask_agreement(expected, got) > 0.98
    graphs = [onnx.load(str(path)) for path in (onnx_path, tmp_path / "int8_u8.onnx", fp16_path)]
    torch_params = sum(p.numel() for p in build_model(MOBILE_UNET, 11).parameters())
    assert len({count_params(graph) for graph in graphs}) == 1  # the same weights, stored in three precisions
    assert 0.95 * torch_params < count_params(graphs[0]) <= torch_params  # BatchNorm folded into the convolutions
    assert len({count_macs(graph, "image", (1, 3, 64, 96)) for graph in graphs}) == 1


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
    make_pruner(model, PruningConfig(0.5, "l2", steps=1, scope="decoder"), HEIGHT, WIDTH).step()
    assert {n: p.shape for n, p in model.encoder.named_parameters()} == encoder_before
    assert count_macs_and_params(model, HEIGHT, WIDTH)[0] < 0.9 * base_macs
    with pytest.raises(PruningConfigError, match="scope"):
        PruningConfig(0.5, "l2", scope="encoder")


def test_expanded_scope_thins_the_encoder_blocks_inside_and_keeps_their_residual_stream():
    torch.manual_seed(0)
    model = build_model(MOBILE_UNET, 11)
    encoder = model.encoder
    stream_before = [layer.out_channels for layer in encoder.residual_stream()]
    expanded_before = [block._expand_conv.out_channels for block in encoder._blocks if block.has_expand]
    base_macs, _ = count_macs_and_params(model, HEIGHT, WIDTH)
    make_pruner(model, PruningConfig(0.5, "l2", steps=1, scope="expanded"), HEIGHT, WIDTH).step()
    assert [layer.out_channels for layer in encoder.residual_stream()] == stream_before
    expanded_after = [block._expand_conv.out_channels for block in encoder._blocks if block.has_expand]
    assert all(after == 8 * round(before / 2 / 8) for before, after in zip(expanded_before, expanded_after))
    assert [block._depthwise_conv.out_channels for block in encoder._blocks if block.has_expand] == expanded_after
    assert count_macs_and_params(model, HEIGHT, WIDTH)[0] < 0.6 * base_macs
    assert model.eval()(torch.zeros(1, 3, HEIGHT, WIDTH)).shape == (1, 11, HEIGHT, WIDTH)
    with pytest.raises(PruningConfigError, match="inverted-residual encoder"):
        make_pruner(build_model(SMALL_UNET, 11), PruningConfig(0.5, scope="expanded"), HEIGHT, WIDTH)


def test_min_channels_keeps_every_convolution_at_its_floor_and_prunes_the_wider_ones_as_asked():
    """Whole-network pruning at 0.6 cuts a 16-channel stem to 8 and a 32-channel block to 16; a floor of 16 keeps
    the narrow ones at 16 (or whole when narrower) while the wide ones lose the asked share, named stages too, over
    iterative steps (1 - 16/48 of 48 channels is 15.99 in floating point: the floor must not round down to 8)."""
    torch.manual_seed(0)
    architecture = {"name": "mobile_unet", "decoder_channels": [64, 48, 24, 16]}
    model = build_model(architecture, 11)
    before = {name: m.out_channels for name, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    config = PruningConfig(0.6, "l2", steps=2, round_to=8, min_channels=16, layer_ratios={"decoder.1": 0.8})
    pruner = make_pruner(model, config, HEIGHT, WIDTH)
    for _ in range(config.steps):
        pruner.step()
    after = {name: m.out_channels for name, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    assert all(after[name] >= min(16, width) for name, width in before.items())
    assert after["decoder.1.0"] == 16 and before["decoder.1.0"] == 48
    assert after["encoder._blocks.15._expand_conv"] < 0.5 * before["encoder._blocks.15._expand_conv"]
    unfloored = build_model(architecture, 11)
    make_pruner(unfloored, PruningConfig(0.6, "l2", steps=1, round_to=8), HEIGHT, WIDTH).step()
    assert min(m.out_channels for m in unfloored.encoder.modules() if isinstance(m, torch.nn.Conv2d)) < 16
    with pytest.raises(PruningConfigError, match="not --global"):
        PruningConfig(0.5, global_pruning=True, min_channels=16)


def test_layer_ratios_thin_the_named_stage_more_than_the_rest():
    torch.manual_seed(0)
    model = build_model(MOBILE_UNET, 11)
    make_pruner(model, PruningConfig(0.5, "l2", steps=1, scope="decoder", round_to=4,
                                     layer_ratios={"decoder.3": 0.75}), HEIGHT, WIDTH).step()
    widths = [[m.out_channels for m in stage.modules() if isinstance(m, torch.nn.Conv2d)] for stage in model.decoder]
    assert widths == [[32, 32], [16, 16], [12, 12], [4, 4]]
    with pytest.raises(PruningConfigError, match="no submodule named"):
        make_pruner(build_model(MOBILE_UNET, 11), PruningConfig(0.5, layer_ratios={"decoder.9": 0.5}), HEIGHT, WIDTH)
    with pytest.raises(PruningConfigError, match="cap"):
        PruningConfig(0.5, layer_ratios={"decoder.3": 0.9})
    assert parse_layer_ratio("decoder.3=0.75") == ("decoder.3", 0.75)
    for bad in ("decoder.3", "=0.5", "decoder.3=half"):
        with pytest.raises(argparse.ArgumentTypeError, match="NAME=RATIO"):
            parse_layer_ratio(bad)


def test_the_shipped_default_is_a_pruned_model_with_half_the_macs_of_its_base_and_its_recorded_accuracy():
    """The claims the README makes of the default model, checked on the shipped files: MACs measured from the
    weights (its accuracy figures: tests/test_docs.py, re-measured by the CAMVID_ROOT opt-in test)."""
    default, _ = resolve_model(None)
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
