"""The U-Net family at CamVid's 360x480, ONNX export parity, the pretrained encoder, and training."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from camvid_fixtures import write_camvid11
from folders_fixtures import OWN_CLASSES, write_folders

from seg_node.core.architectures import build_model
from seg_node.core.architectures.efficientnet_lite import EfficientNetLiteEncoder
from seg_node.core.architectures.weights import load_weights
from seg_node.core.model_card import InputSpec, ModelCard
from seg_node.core.pipeline import SegmentationPipeline
from seg_node.core.preprocess import normalize, resize_for_network
from seg_node.toolchain.data import CAMVID_CLASSES, ClassTable, open_dataset
from seg_node.toolchain.export import export_onnx, mask_agreement, training_record
from seg_node.toolchain.export import main as export_main
from seg_node.toolchain.random_model import make_random_model
from seg_node.toolchain.training.config import (
    DataConfig,
    ModelConfig,
    RecipeConfig,
    RunConfig,
    ScheduleConfig,
    TrainConfig,
    TrainingConfigError,
)
from seg_node.toolchain.training.losses import (
    DISTILLATION_LOSSES,
    build_loss,
    channel_distillation_loss,
    distillation_loss,
    lovasz_softmax,
)
from seg_node.toolchain.training.teacher import load_teacher
from seg_node.toolchain.training.train import parse_args, train

ARCHITECTURES = [
    {"name": "unet", "base_width": 8},
    {"name": "unet", "base_width": 8, "kernel_sizes": [3, 5, 5, 7, 7]},
    {"name": "unet", "base_width": 8, "upsampling": "bilinear"},
    {"name": "attention_unet", "base_width": 8},
    {"name": "attention_unet", "base_width": 8, "multiscale_skips": True},
    {"name": "mobile_unet"},
]


@pytest.mark.parametrize("architecture", ARCHITECTURES, ids=lambda a: "-".join(str(v) for v in a.values()))
def test_architecture_runs_at_360x480_and_exports_to_matching_onnx(architecture, tmp_path):
    import onnxruntime as ort
    torch.manual_seed(0)
    model = build_model(architecture, 11).eval()
    x = torch.randn(1, 3, 360, 480)
    with torch.inference_mode():
        logits = model(x).numpy()
    assert logits.shape == (1, 11, 360, 480)
    path = export_onnx(model, tmp_path / "m.onnx", 360, 480)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    onnx_logits = session.run(None, {"image": x.numpy()})[0]
    assert np.abs(onnx_logits - logits).max() < 1e-3
    assert mask_agreement(logits, onnx_logits) >= 0.999


def test_unknown_architecture_or_option_fails_loudly():
    with pytest.raises(ValueError, match="unknown architecture"):
        build_model({"name": "segformer"}, 11)
    with pytest.raises(ValueError, match="bad options"):
        build_model({"name": "unet", "width": 3}, 11)
    with pytest.raises(ValueError, match="kernel_sizes"):
        build_model({"name": "unet", "kernel_sizes": [3, 3]}, 11)


def test_imagenet_encoder_expects_inputs_scaled_to_minus_one_one():
    """With (x - 127) / 128 the stem's BatchNorm sees activations of the variance it was trained on."""
    from ros_harness import REPO

    from seg_node.toolchain.data.base import read_rgb
    encoder = EfficientNetLiteEncoder("lite0").eval()
    encoder.load_imagenet()
    frame = next((REPO / "data" / "camvid_clip" / "test").iterdir())
    rgb = torch.from_numpy(read_rgb(frame)).permute(2, 0, 1)[None].float()
    ratios = {}
    for name, x in (("minus_one_one", (rgb - 127) / 128),
                    ("imagenet_mean_std", (rgb / 255 - torch.tensor([0.485, 0.456, 0.406])[:, None, None])
                     / torch.tensor([0.229, 0.224, 0.225])[:, None, None])):
        with torch.no_grad():
            stem = encoder._conv_stem(x)
        ratios[name] = float((stem.var((0, 2, 3)) / encoder._bn0.running_var).median())
    assert 0.5 < ratios["minus_one_one"] < 2.0
    assert ratios["imagenet_mean_std"] > 2 * ratios["minus_one_one"]


def test_training_lowers_the_loss_and_resumes(tmp_path):
    data = write_camvid11(tmp_path / "camvid", {"train": 8, "val": 2})
    out = tmp_path / "run"
    common = ["--data", str(data), "--arch", '{"name": "unet", "base_width": 8, "depth": 2}', "--batch-size", "4",
              "--crop", "32", "48", "--input-size", "48", "64", "--lr", "0.01", "--val-every", "1",
              "--warmup-epochs", "0", "--threads", "2", "--workers", "0", "--out", str(out)]
    result = train(parse_args(common + ["--epochs", "3"]))
    with open(out / "log.csv") as handle:
        rows = list(csv.DictReader(handle))
    losses = [float(r["train_loss"]) for r in rows]
    assert len(rows) == 3 and losses[-1] < losses[0]
    assert result["best_val_miou"] > 0
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["epoch"] == 3 and "optimizer" in state
    best = torch.load(out / "best.pt", weights_only=True)
    assert best["val_miou"] == result["best_val_miou"]
    train(parse_args(common + ["--epochs", "5", "--resume"]))
    with open(out / "log.csv") as handle:
        assert [int(r["epoch"]) for r in csv.DictReader(handle)] == [1, 2, 3, 4, 5]
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 5
    assert (out / "curves.png").stat().st_size > 1000


def tiny_cycle_arguments(tmp_path) -> list[str]:
    """seg-train arguments for a one-epoch cycle of a tiny U-Net on a tiny CamVid."""
    data = write_camvid11(tmp_path / "camvid", {"train": 4, "val": 1})
    return ["--data", str(data), "--arch", '{"name": "unet", "base_width": 4, "depth": 2}', "--batch-size", "4",
            "--crop", "32", "48", "--input-size", "48", "64", "--epochs", "1", "--threads", "2", "--workers", "0"]


def test_a_cycle_started_elsewhere_with_relative_paths_keeps_its_lineage_in_the_card(tmp_path, monkeypatch):
    """Trained in runs/ (`--init first/last.pt --out second`), exported from the folder above: the first cycle's
    record is still found and kept, under the path the run was given."""
    common = tiny_cycle_arguments(tmp_path)
    (tmp_path / "runs").mkdir()
    monkeypatch.chdir(tmp_path / "runs")
    train(parse_args(common + ["--lr", "0.01", "--out", "first"]))
    train(parse_args(common + ["--lr", "0", "--init", "first/last.pt", "--out", "second"]))
    monkeypatch.chdir(tmp_path)
    record = training_record(Path("runs/second/last.pt"))
    assert record["initialized_from"]["checkpoint"] == "first/last.pt"
    assert record["initialized_from"]["config"]["schedule"]["lr"] == 0.01
    assert "initialized_from" not in training_record(Path("runs/first/last.pt"))


def test_a_second_training_cycle_starts_from_the_given_weights(tmp_path):
    common = tiny_cycle_arguments(tmp_path)
    train(parse_args(common + ["--lr", "0.01", "--seed", "1", "--out", str(tmp_path / "first")]))
    first = torch.load(tmp_path / "first" / "last.pt", weights_only=True)["model"]
    train(parse_args(common + ["--lr", "0", "--seed", "2", "--init", str(tmp_path / "first" / "last.pt"),
                               "--out", str(tmp_path / "second")]))
    second = torch.load(tmp_path / "second" / "last.pt", weights_only=True)["model"]
    learned = [k for k in first if "running" not in k and "num_batches" not in k]
    assert learned and all(torch.equal(first[k], second[k]) for k in learned)
    record = training_record(tmp_path / "second" / "last.pt")
    assert record["config"]["schedule"]["lr"] == 0 and record["initialized_from"]["config"]["schedule"]["lr"] == 0.01
    assert record["initialized_from"]["checkpoint"] == str(tmp_path / "first" / "last.pt")
    train(parse_args(common + ["--lr", "0", "--seed", "2", "--epochs", "2", "--resume",
                               "--out", str(tmp_path / "second")]))
    resumed = training_record(tmp_path / "second" / "last.pt")
    assert resumed["resumed_at_epochs"] == [1] and resumed["best_epoch"] == 2
    assert resumed["initialized_from"]["checkpoint"] == str(tmp_path / "first" / "last.pt")
    shipped = make_random_model(tmp_path / "shipped", {"name": "unet", "base_width": 4, "depth": 2},
                                size=(48, 64), seed=4).with_suffix(".safetensors")
    train(parse_args(common + ["--lr", "0", "--init", str(shipped), "--out", str(tmp_path / "from_card")]))
    record = training_record(tmp_path / "from_card" / "last.pt")
    assert record["initialized_from"]["weights"] == str(shipped)
    assert record["initialized_from"]["model"] == ModelCard.load(shipped.with_suffix(".json")).name
    train(parse_args(common + ["--lr", "0", "--seed", "2", "--out", str(tmp_path / "fresh")]))
    fresh = torch.load(tmp_path / "fresh" / "last.pt", weights_only=True)["model"]
    assert not all(torch.equal(first[k], fresh[k]) for k in learned)
    for extra, message in ((["--resume", "--init", str(tmp_path / "first" / "last.pt")], "use one"),
                           (["--init", str(tmp_path / "nope.pt")], "no such file")):
        with pytest.raises(TrainingConfigError, match=message):
            parse_args(common + ["--out", str(tmp_path / "refused")] + extra)


def test_a_checkpoint_from_0_1_starts_a_run_by_its_weights_but_is_not_resumed_or_exported(tmp_path, capsys):
    """0.1 recorded its options under 'args': resuming or exporting such a checkpoint is refused by name, --init
    from it trains, and the new run exports with the old record kept as written."""
    data = write_camvid11(tmp_path / "camvid", {"train": 4, "val": 1})
    common = ["--data", str(data), "--arch", '{"name": "unet", "base_width": 4, "depth": 2}', "--batch-size", "4",
              "--crop", "32", "48", "--input-size", "48", "64", "--epochs", "1", "--threads", "2", "--workers", "0"]
    old = tmp_path / "old"
    train(parse_args(common + ["--out", str(old)]))
    for name in ("last.pt", "best.pt"):
        state = torch.load(old / name, weights_only=True)
        run = json.loads(state["run"])
        run["args"] = run.pop("config")
        torch.save({**state, "run": json.dumps(run)}, old / name)
    (data / "trainannot").rename(data / "moved")  # refused before the data are read
    with pytest.raises(TrainingConfigError, match=r"written by seg_node 0\.1"):
        train(parse_args(common + ["--epochs", "2", "--resume", "--out", str(old)]))
    (data / "moved").rename(data / "trainannot")
    with pytest.raises(SystemExit):
        export_main([str(old / "best.pt"), "--out", str(tmp_path / "refused")])
    assert "written by seg_node 0.1" in capsys.readouterr().err
    train(parse_args(common + ["--init", str(old / "best.pt"), "--out", str(tmp_path / "new")]))
    export_main([str(tmp_path / "new" / "best.pt"), "--out", str(tmp_path / "exported")])
    card = ModelCard.load(tmp_path / "exported.json")
    assert card.training["initialized_from"]["args"]["schedule"]["epochs"] == 1


def test_the_final_retraining_on_train_and_val_records_both_splits_and_says_val_is_not_held_out(tmp_path, capsys):
    data = write_camvid11(tmp_path / "camvid", {"train": 4, "val": 2})
    common = ["--data", str(data), "--arch", '{"name": "unet", "base_width": 4, "depth": 2}', "--batch-size", "2",
              "--crop", "32", "48", "--input-size", "48", "64", "--epochs", "1", "--threads", "2", "--workers", "0"]
    train(parse_args(common + ["--out", str(tmp_path / "train")]))
    assert "not held out" not in capsys.readouterr().out
    train(parse_args(common + ["--train-splits", "train", "val", "--out", str(tmp_path / "trainval")]))
    assert "val is among the training splits" in capsys.readouterr().out
    used = {run: [(d["split"], d["frames"]) for d in training_record(tmp_path / run / "last.pt")["data"]]
            for run in ("train", "trainval")}
    assert used == {"train": [("train", 4), ("val", 2)], "trainval": [("train", 4), ("val", 2), ("val", 2)]}
    with pytest.raises(SystemExit):
        parse_args(common + ["--train-splits", "test", "--out", str(tmp_path / "refused")])


def test_weight_averaging_keeps_the_mean_of_the_epochs_from_the_given_one_and_validates_it(tmp_path):
    data = write_camvid11(tmp_path / "camvid", {"train": 8, "val": 2})
    common = ["--data", str(data), "--arch", '{"name": "unet", "base_width": 4, "depth": 2}', "--batch-size", "4",
              "--crop", "32", "48", "--input-size", "48", "64", "--lr", "0.01", "--schedule", "constant",
              "--warmup-epochs", "0", "--val-every", "1", "--threads", "2", "--workers", "0", "--average-from", "2"]
    # with a constant schedule the first two epochs of both runs are the same computation
    train(parse_args(common + ["--epochs", "2", "--out", str(tmp_path / "two")]))
    train(parse_args(common + ["--epochs", "3", "--out", str(tmp_path / "three")]))
    after_two = torch.load(tmp_path / "two" / "last.pt", weights_only=True)["model"]
    last = torch.load(tmp_path / "three" / "last.pt", weights_only=True)
    assert int(last["averaged"]["n_averaged"]) == 2
    learned = [k for k in after_two if "running" not in k and "num_batches" not in k]
    for key in learned:
        torch.testing.assert_close(last["averaged"][f"module.{key}"], (after_two[key] + last["model"][key]) / 2)
    best = torch.load(tmp_path / "three" / "best.pt", weights_only=True)
    assert best.get("averaged_epochs", 0) == max(0, best["epoch"] - 1)
    if best["epoch"] == 3:
        assert all(torch.equal(best["model"][k], last["averaged"][f"module.{k}"]) for k in learned)
    assert training_record(tmp_path / "three" / "best.pt").get("averaged_epochs", 0) == best.get("averaged_epochs", 0)
    with pytest.raises(TrainingConfigError, match="average-from"):
        parse_args(common[:-1] + ["4", "--epochs", "3", "--out", str(tmp_path / "refused")])


def test_distillation_loss_is_the_softened_kl_times_t_squared_averaged_over_pixels():
    rng = np.random.default_rng(0)
    teacher, student = (torch.from_numpy(rng.normal(0, 2, (2, 3, 2, 2))) for _ in range(2))
    temperature = 2.0
    per_pixel = []
    for n, y, x in np.ndindex(2, 2, 2):
        p = torch.softmax(teacher[n, :, y, x] / temperature, 0)
        q = torch.softmax(student[n, :, y, x] / temperature, 0)
        per_pixel.append(temperature ** 2 * float((p * (p / q).log()).sum()))
    loss = float(distillation_loss(student, teacher, temperature))
    assert loss == pytest.approx(np.mean(per_pixel), rel=1e-5) and loss > 0
    assert float(distillation_loss(teacher, teacher, temperature)) == pytest.approx(0.0, abs=1e-6)


def test_channel_distillation_is_the_kl_of_each_class_maps_spatial_distribution():
    rng = np.random.default_rng(1)
    teacher, student = (torch.from_numpy(rng.normal(0, 2, (2, 3, 4, 5))) for _ in range(2))
    temperature = 4.0
    per_map = []
    for n, c in np.ndindex(2, 3):
        p = torch.softmax(teacher[n, c].flatten() / temperature, 0)
        q = torch.softmax(student[n, c].flatten() / temperature, 0)
        per_map.append(temperature ** 2 * float((p * (p / q).log()).sum()))
    loss = float(channel_distillation_loss(student, teacher, temperature))
    assert loss == pytest.approx(np.mean(per_map), rel=1e-5) and loss > 0
    offsets = torch.from_numpy(rng.normal(0, 5, (2, 3, 1, 1)))  # a class map shifted as a whole teaches the same
    assert float(channel_distillation_loss(teacher + offsets, teacher, temperature)) == pytest.approx(0.0, abs=1e-6)
    assert float(distillation_loss(teacher + offsets, teacher, temperature)) > 0.1


def test_lovasz_softmax_on_hard_predictions_is_one_minus_the_iou_of_each_present_class():
    rng = np.random.default_rng(2)
    target = torch.from_numpy(rng.integers(0, 4, (2, 12, 16)))
    target[0, :3] = 255  # unlabelled: ignored whatever is predicted there
    predicted = torch.from_numpy(rng.integers(0, 5, (2, 12, 16)))
    logits = 60.0 * torch.nn.functional.one_hot(predicted, 11).permute(0, 3, 1, 2).float()
    valid = target != 255
    ious = [((predicted == c) & (target == c) & valid).sum() / (((predicted == c) | (target == c)) & valid).sum()
            for c in range(4)]
    assert float(lovasz_softmax(logits, target)) == pytest.approx(float(1 - torch.stack(ious).mean()), abs=1e-5)
    assert float(lovasz_softmax(60.0 * torch.nn.functional.one_hot(torch.where(valid, target, 0), 11)
                                .permute(0, 3, 1, 2).float(), target)) == pytest.approx(0.0, abs=1e-6)
    painted = predicted.clone()
    painted[:, 6:, :] = 3  # class 3 painted over the lower half: over-prediction costs
    over = 60.0 * torch.nn.functional.one_hot(painted, 11).permute(0, 3, 1, 2).float()
    assert float(lovasz_softmax(over, target)) > float(lovasz_softmax(logits, target))
    all_void = lovasz_softmax(logits.requires_grad_(), torch.full_like(target, 255))
    all_void.backward()
    assert float(all_void.detach()) == 0.0 and float(logits.grad.abs().sum()) == 0.0


def test_ce_lovasz_adds_the_lovasz_term_on_every_second_pixel_to_the_weighted_cross_entropy():
    rng = np.random.default_rng(3)
    logits = torch.from_numpy(rng.normal(0, 2, (2, 11, 10, 14))).float()
    target = torch.from_numpy(rng.integers(0, 12, (2, 10, 14)))
    target[target == 11] = 255  # unlabelled
    weights = torch.from_numpy(rng.uniform(0.5, 2.0, 11)).float()
    expected = (torch.nn.functional.cross_entropy(logits, target, weight=weights, ignore_index=255)
                + lovasz_softmax(logits[:, :, ::2, ::2], target[:, ::2, ::2]))
    assert float(build_loss("ce_lovasz", weights)(logits, target)) == pytest.approx(float(expected), rel=1e-6)


@pytest.mark.parametrize("distill_loss", sorted(DISTILLATION_LOSSES))
def test_distillation_pulls_the_student_towards_the_teacher(distill_loss, tmp_path):
    data = write_camvid11(tmp_path / "camvid", {"train": 8, "val": 2})
    architecture = {"name": "unet", "base_width": 8, "depth": 2}
    teacher_card = make_random_model(tmp_path / "teacher", architecture, size=(48, 64), seed=5).with_suffix(".json")
    common = ["--data", str(data), "--arch", json.dumps(architecture), "--batch-size", "4", "--crop", "32", "48",
              "--input-size", "48", "64", "--epochs", "8", "--lr", "0.01", "--warmup-epochs", "0",
              "--threads", "1", "--workers", "0", "--seed", "3"]
    train(parse_args(common + ["--out", str(tmp_path / "plain")]))
    train(parse_args(common + ["--out", str(tmp_path / "taught"), "--teacher", str(teacher_card),
                               "--distill-weight", "50", "--distill-loss", distill_loss]))

    spec = InputSpec(height=48, width=64)
    dataset = open_dataset(str(data), "val")
    images = torch.from_numpy(np.stack([normalize(resize_for_network(dataset.load(item)[0], spec), spec, "rgb")
                                        for item in dataset.samples()]))

    def logits(weights_of):
        model = build_model(architecture, len(ModelCard.load(teacher_card).classes))
        weights_of(model)
        with torch.no_grad():
            return model.eval()(images)

    teacher = logits(lambda m: load_weights(m, teacher_card.with_suffix(".safetensors")))
    plain, taught = (logits(lambda m, run=run: m.load_state_dict(
        torch.load(tmp_path / run / "last.pt", weights_only=True)["model"])) for run in ("plain", "taught"))
    plain_gap, taught_gap = (float(DISTILLATION_LOSSES[distill_loss](student, teacher, temperature=1.0))
                             for student in (plain, taught))
    assert taught_gap < 0.5 * plain_gap, (plain_gap, taught_gap)


@pytest.mark.parametrize("field, value, message", [
    ("input", {"height": 48, "width": 64, "channel_order": "rgb", "mean": [123.7, 116.3, 103.5],
               "std": [128.0, 128.0, 128.0]}, "normalization"),
    ("classes", ["Sky", "Building", *CAMVID_CLASSES.names[3:], "Lamp"], "classes")])
def test_a_teacher_that_sees_or_predicts_differently_is_refused(field, value, message, tmp_path):
    teacher_card = make_random_model(tmp_path / "teacher", size=(48, 64)).with_suffix(".json")
    card = json.loads(teacher_card.read_text())
    card[field] = value
    teacher_card.write_text(json.dumps(card))
    with pytest.raises(TrainingConfigError, match=message):
        load_teacher(str(teacher_card), InputSpec(height=48, width=64), CAMVID_CLASSES, torch.device("cpu"))


def test_a_teacher_gives_the_logits_the_pipeline_computes_from_its_card(tmp_path):
    """A flip-averaged card with logit offsets teaches what the node would answer: both passes averaged, offsets
    added; not the single pass of its network."""
    teacher_card = make_random_model(tmp_path / "teacher", size=(48, 64)).with_suffix(".json")
    card = json.loads(teacher_card.read_text())
    card["flip_average"], card["logit_offsets"] = True, [0.25 * i for i in range(CAMVID_CLASSES.num_classes)]
    teacher_card.write_text(json.dumps(card))
    teacher, _ = load_teacher(str(teacher_card), InputSpec(height=48, width=64), CAMVID_CLASSES, torch.device("cpu"))
    pipeline = SegmentationPipeline.from_model(teacher_card, backend="torch", device="cpu")
    image = np.random.default_rng(3).integers(0, 256, (48, 64, 3), np.uint8)
    network_input = pipeline.prepare(image)
    with torch.no_grad():
        taught = teacher(torch.from_numpy(network_input.copy())).numpy()
        one_pass = teacher.network(torch.from_numpy(network_input.copy())).numpy()
    np.testing.assert_allclose(taught, pipeline.run_network(network_input), atol=1e-4)
    assert np.abs(taught - one_pass - np.float32(card["logit_offsets"]).reshape(1, -1, 1, 1)).max() > 1e-3


def test_a_teacher_with_the_same_classes_in_another_order_has_its_logits_reordered(tmp_path):
    teacher_card = make_random_model(tmp_path / "teacher", size=(48, 64)).with_suffix(".json")
    card = json.loads(teacher_card.read_text())
    card["classes"], card["palette"] = card["classes"][::-1], card["palette"][::-1]
    teacher_card.write_text(json.dumps(card))
    _, order = load_teacher(str(teacher_card), InputSpec(height=48, width=64), CAMVID_CLASSES, torch.device("cpu"))
    assert order == list(range(len(CAMVID_CLASSES.names)))[::-1]
    _, same = load_teacher(str(make_random_model(tmp_path / "same", size=(48, 64)).with_suffix(".json")),
                           InputSpec(height=48, width=64), CAMVID_CLASSES, torch.device("cpu"))
    assert same is None


def tiny_config(data, out, **schedule) -> TrainConfig:
    """One step of a tiny U-Net on `data`: the defaults of every part but the sizes."""
    return TrainConfig(
        data=DataConfig(root=str(data)),
        model=ModelConfig(arch={"name": "unet", "base_width": 4, "depth": 2}, input=InputSpec(height=32, width=48)),
        recipe=RecipeConfig(crop=(32, 48), class_weights="none"),
        schedule=ScheduleConfig(**{"epochs": 1, "batch_size": 2, "max_steps_per_epoch": 1, **schedule}),
        run=RunConfig(out=str(out), threads=2, workers=0))


def test_a_run_from_config_objects_trains_on_the_data_sets_own_classes_and_records_them(tmp_path):
    """No command line: the library call. The model's classes, palette and the data sets' identities come from the
    folders layout's classes.csv, and reading frames in worker processes changes no number."""
    data = write_folders(tmp_path / "own", OWN_CLASSES, {"train": 4, "val": 2})
    result = train(tiny_config(data, tmp_path / "run"))
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    run = json.loads(state["run"])
    assert run["classes"] == list(OWN_CLASSES.names) and run["palette"] == OWN_CLASSES.palette
    assert state["model"]["classifier.weight"].shape[0] == 5
    assert [(d["split"], d["frames"]) for d in run["data"]] == [("train", 4), ("val", 2)]
    assert all(len(d["sha256"]) == 64 for d in run["data"]) and run["config"]["data"]["root"] == "$CAMVID_ROOT"
    assert 0 <= result["best_val_miou"] <= 100
    in_workers = tiny_config(data, tmp_path / "workers")
    train(replace(in_workers, run=replace(in_workers.run, workers=2)))
    with open(tmp_path / "run" / "log.csv") as one, open(tmp_path / "workers" / "log.csv") as other:
        assert [r["train_loss"] for r in csv.DictReader(one)] == [r["train_loss"] for r in csv.DictReader(other)]
    export_main([str(tmp_path / "run" / "last.pt"), "--out", str(tmp_path / "own_model"), "--data", str(data)])
    card = ModelCard.load(tmp_path / "own_model.json")
    assert card.classes == list(OWN_CLASSES.names) and card.palette == OWN_CLASSES.palette
    assert (card.input.height, card.input.width) == (32, 48)
    assert card.training["data"][0]["sha256"] == run["data"][0]["sha256"]


def test_a_resumed_run_keeps_the_class_order_of_the_weights_it_started_from(tmp_path):
    """A run started from weights whose classes are the data set's in another order, then resumed: the resumed
    epochs train and record in the weights' order, not the data set's."""
    data = write_folders(tmp_path / "own", OWN_CLASSES, {"train": 4, "val": 2})
    reversed_classes = ClassTable(OWN_CLASSES.names[::-1], OWN_CLASSES.colours[::-1])
    first = tiny_config(data, tmp_path / "first")
    train(replace(first, model=replace(first.model, classes=reversed_classes)))
    started = tiny_config(data, tmp_path / "run", epochs=2)
    train(replace(started, model=replace(started.model, init=str(tmp_path / "first" / "last.pt")),
                  schedule=replace(started.schedule, epochs=1)))
    train(replace(started, run=replace(started.run, resume=True)))
    run = json.loads(torch.load(tmp_path / "run" / "last.pt", weights_only=True)["run"])
    assert run["classes"] == list(reversed_classes.names) and run["resumed_at_epochs"] == [1]


class TinyWithAux(torch.nn.Module):
    """A 1x1 classifier; in training mode also one auxiliary output of all-zero logits at a quarter of the
    resolution, whose cross-entropy is ln(C) on every labelled pixel wherever it is resized to."""

    def __init__(self, num_classes: int, aux_weight: float):
        super().__init__()
        self.classifier = torch.nn.Conv2d(3, num_classes, 1)
        self.aux_weights = (aux_weight,)

    def forward(self, x):
        logits = self.classifier(x)
        if not self.training:
            return logits
        return logits, (torch.zeros_like(logits[:, :, ::4, ::4]),)


def test_training_adds_each_auxiliary_output_at_its_weight_and_validates_the_main_logits(tmp_path):
    data = write_folders(tmp_path / "own", OWN_CLASSES, {"train": 4, "val": 2})
    losses = {}
    for weight in (0.0, 0.5):
        torch.manual_seed(0)
        out = tmp_path / f"aux{weight}"
        result = train(tiny_config(data, out, lr=0.0), model=TinyWithAux(5, weight))
        with open(out / "log.csv") as handle:
            losses[weight] = float(next(csv.DictReader(handle))["train_loss"])
        assert 0 <= result["best_val_miou"] <= 100
    assert losses[0.5] - losses[0.0] == pytest.approx(0.5 * np.log(5), abs=2e-3)


def test_training_runs_distributed_with_torchrun(tmp_path):
    """DistributedDataParallel through torchrun (gloo on CPU; nccl on GPUs uses the same code path)."""
    import subprocess
    import sys
    from pathlib import Path
    data = write_camvid11(tmp_path / "camvid", {"train": 8, "val": 2})
    out = tmp_path / "ddp"
    torchrun = Path(sys.executable).parent / "torchrun"
    result = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "seg_node.toolchain.training.train",
         "--data", str(data),
         "--arch", '{"name": "unet", "base_width": 4, "depth": 2}', "--batch-size", "2", "--crop", "32", "48",
         "--input-size", "48", "64", "--epochs", "2", "--threads", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["epoch"] == 2 and json.loads(state["run"])["world_size"] == 2
    with open(out / "log.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 2
