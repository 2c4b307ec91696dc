"""The ROS-free pipeline, both backends, model cards and safe weight files."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from test_node import scene

from seg_node.core.architectures.weights import WeightsError
from seg_node.core.backends import BackendError
from seg_node.core.latency_stats import latency_summary
from seg_node.core.model_card import ModelCard, ModelCardError
from seg_node.core.pipeline import SegmentationPipeline
from seg_node.core.postprocess import argmax_channels, logits_to_mask
from seg_node.ros_tools.benchmark import run_benchmark
from seg_node.toolchain.evaluation.timing import CLIP, benchmark_pipelines, call_times_in_turns
from seg_node.toolchain.model_cost import count_macs, count_params
from seg_node.toolchain.random_model import make_random_model


def test_torch_and_onnxruntime_give_the_same_mask(random_model):
    torch_pipe = SegmentationPipeline.from_model(random_model, backend="torch", device="cpu")
    ort_pipe = SegmentationPipeline.from_model(random_model, backend="onnxruntime", device="cpu")
    equal = []
    for seed in range(4):
        image = scene(seed, 120, 160)
        a, b = torch_pipe.segment(image).mask, ort_pipe.segment(image).mask
        assert a.shape == (120, 160) and a.dtype == np.uint8
        equal.append((a == b).mean())
    assert np.mean(equal) >= 0.999


def test_pipeline_reports_stage_timings_and_honours_channel_order(random_model):
    pipe = SegmentationPipeline.from_model(random_model, backend="onnxruntime", device="cpu")
    rgb = scene(1, 96, 128)
    result = pipe.segment(rgb, "rgb")
    assert set(result.timings_ms) == {"preprocess", "inference", "postprocess", "total"}
    assert result.timings_ms["total"] >= result.timings_ms["inference"] > 0
    np.testing.assert_array_equal(pipe.segment(rgb[..., ::-1], "bgr").mask, result.mask)
    assert len(np.unique(result.mask)) > 1


def test_latency_summary_against_hand_computed_percentiles():
    summary = latency_summary([4.0, 1.0, 3.0, 2.0, 100.0])
    assert summary == {"median": 3.0, "p95": pytest.approx(80.8), "p99": pytest.approx(96.16), "max": 100.0}
    assert all(np.isnan(v) for v in latency_summary([]).values())


def flip_averaged_card(random_model, folder):
    """A card for the random model's own files that asks for flip averaging."""
    card_path = folder / "flip_averaged.json"
    files = {"onnx": str(random_model), "torch": str(random_model.with_suffix(".safetensors"))}
    card_path.write_text(json.dumps({**card_dict(random_model), "name": "flip_averaged", "files": files,
                                     "flip_average": True}))
    return card_path


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_a_flip_averaged_card_averages_the_logits_of_the_image_and_its_mirror_image(random_model, tmp_path, backend):
    """The same weights under a card with flip_average: logits are the mean of the network on the frame and,
    mirrored back, on its mirror image, so mirroring the frame mirrors the mask exactly; the network alone
    (a random U-Net, not symmetric) does not have that property."""
    flipped_card = flip_averaged_card(random_model, tmp_path)
    single = SegmentationPipeline.from_model(random_model, backend=backend, device="cpu")
    averaged = SegmentationPipeline.from_model(flipped_card, backend=backend, device="cpu")
    image = scene(3, *single.network_input.shape[2:])
    mirror = np.ascontiguousarray(image[:, ::-1])
    expected = (single.logits(image) + single.logits(mirror)[..., ::-1]) / 2
    np.testing.assert_allclose(averaged.logits(image), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(averaged.logits(mirror), averaged.logits(image)[..., ::-1], rtol=1e-5, atol=1e-5)
    assert np.abs(single.logits(mirror) - single.logits(image)[..., ::-1]).max() > 0.1
    mask = averaged.segment(image).mask
    assert (averaged.segment(mirror).mask == mask[:, ::-1]).mean() > 0.999 and len(np.unique(mask)) > 1
    assert (single.segment(image).mask != mask).any()


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_logit_offsets_in_a_card_are_added_to_its_networks_logits_after_flip_averaging(random_model, tmp_path,
                                                                                       backend):
    """A card that names another model's files and carries logit_offsets (how camvid_mobile_unet_flip uses
    camvid_mobile_unet's weights): its logits are the other card's plus one offset per class, and they move
    the masks."""
    offsets = np.linspace(-3, 3, 11).astype(np.float32)
    flipped_card = flip_averaged_card(random_model, tmp_path)
    shifted_card = tmp_path / "shifted.json"
    shifted_card.write_text(json.dumps({**json.loads(flipped_card.read_text()), "name": "shifted",
                                        "logit_offsets": offsets.tolist()}))
    averaged, shifted = (SegmentationPipeline.from_model(card, backend=backend, device="cpu")
                         for card in (flipped_card, shifted_card))
    image = scene(4, *averaged.network_input.shape[2:])
    np.testing.assert_allclose(shifted.logits(image), averaged.logits(image) + offsets[:, None, None],
                               rtol=1e-5, atol=1e-5)
    assert (shifted.segment(image).mask != averaged.segment(image).mask).mean() > 0.05


def test_benchmark_latency_reports_every_stage_of_a_model_and_its_baseline_in_one_run(random_model, tmp_path, capsys):
    """Two turns of the pipelines (a full block of frames and a part of one), every stage summarized; with
    --update-card each model's cost goes into its card."""
    baseline = tmp_path / "models" / random_model.name  # a copy: its card gets written
    baseline.parent.mkdir()
    for suffix in (".onnx", ".safetensors", ".json"):
        shutil.copy(random_model.with_suffix(suffix), baseline.with_suffix(suffix))
    figures = tmp_path / "latency.json"
    argv = ["latency", "--model", str(flip_averaged_card(baseline, tmp_path)), "--baseline-model",
            str(baseline), "--baseline-backend", "onnxruntime", "--data", str(CLIP), "--frames", "12",
            "--warmup", "1", "--json", str(figures), "--update-card"]
    results = run_benchmark(argv)
    labels = ["flip_averaged (onnxruntime)", f"{ModelCard.load(baseline.with_suffix('.json')).name} (onnxruntime)"]
    assert list(results) == labels
    record = json.loads(figures.read_text())
    assert record["latency"] == results and record["command"].startswith("seg-benchmark latency --model ")
    for stages in results.values():
        assert set(stages) == {"preprocess", "inference", "postprocess", "total", "model_only"}
        assert all(0 < summary["median"] <= summary["p95"] <= summary["max"] for summary in stages.values())
        assert stages["total"]["median"] >= stages["inference"]["median"]
    printed = capsys.readouterr().out
    assert "12 frames of 480x360" in printed and "flip_averaged (onnxruntime) pipeline is " in printed
    graph = onnx.load(str(baseline))
    spec = ModelCard.load(baseline.with_suffix(".json")).input
    macs, _ = count_macs(graph, "image", (1, 3, spec.height, spec.width))
    for card_path, label, passes in ((tmp_path / "flip_averaged.json", labels[0], 2),
                                     (baseline.with_suffix(".json"), labels[1], 1)):
        cost = ModelCard.load(card_path).metrics["cost"]
        median = results[label]["model_only"]["median"]
        assert cost["gmacs"] == round(passes * macs / 1e9, 3) and cost["input"] == f"{spec.height}x{spec.width}"
        assert cost["params_m"] == round(count_params(graph) / 1e6, 3) > 0
        assert cost["latency_ms_median"] == round(median, 2) and cost["fps"] == round(1e3 / median, 1)
        assert cost["measured_by"] == f"{record['command']} (onnxruntime, cpu)" and cost["threads"] == 2


class RecordedPipeline:
    """A real pipeline whose segment calls are written down as (label, frame number)."""

    def __init__(self, label, pipeline, frames, calls):
        self.label, self.pipeline, self.frames, self.calls = label, pipeline, frames, calls
        self.run_network = pipeline.run_network

    @property
    def network_input(self):
        return self.pipeline.network_input

    def segment(self, frame):
        self.calls.append((self.label, next(i for i, known in enumerate(self.frames) if known is frame)))
        return self.pipeline.segment(frame)


def test_the_benchmark_and_the_study_time_their_runs_in_the_same_turns(random_model):
    """seg-benchmark's pipelines and the study's sessions follow one schedule: a warm-up each, then blocks of
    frames in turn, each block after one untimed frame; every timed frame also times the network alone."""
    frames = [scene(seed, 48, 64) for seed in range(13)]
    calls = []
    pipelines = {label: RecordedPipeline(label, SegmentationPipeline.from_model(random_model), frames, calls)
                 for label in ("a", "b")}
    results = benchmark_pipelines(pipelines, frames, warmup=2)
    study = []
    call_times_in_turns({label: (lambda index, _label=label: study.append((_label, index))) for label in "ab"},
                        len(frames), 2)
    assert calls == study
    assert calls[:4] == [("a", 0), ("a", 1), ("b", 0), ("b", 1)] and calls[4:6] == [("a", 0), ("a", 0)]
    assert len(calls) == 2 * (2 + 2 + len(frames))  # warm-ups, one untimed frame per block, the timed frames
    for stages in results.values():
        assert all(0 < summary["median"] <= summary["max"] for summary in stages.values())


def test_benchmark_upsampling_and_confidence_report_each_mode_and_size(random_model):
    upsampling = run_benchmark(["upsampling", "--model", str(random_model), "--data", str(CLIP), "--limit", "1",
                                "--scales", "2"])
    assert list(upsampling) == ["2x"] and upsampling["2x"]["logits"]["equal_to_logits"] == 1.0
    assert upsampling["2x"]["boundaries"]["equal_to_logits"] > 0.99
    assert all(0 <= mode["miou"] <= 100 for mode in upsampling["2x"].values())
    confidence = run_benchmark(["confidence", "--model", str(random_model), "--sizes", "64x48,320x240", "--frames",
                                "2", "--warmup", "0"])
    assert list(confidence) == ["64x48", "320x240"]
    assert all(set(steps) == {"score", "confidence_map", "mask"} and steps["mask"]["median"] > 0
               for steps in confidence.values())


@pytest.mark.parametrize("command, foreign", [("latency", "--sizes"), ("delivery", "--frames"),
                                              ("upsampling", "--warmup"), ("confidence", "--node"),
                                              ("hd", "--baseline-model")])
def test_each_benchmark_subcommand_takes_only_its_own_options(command, foreign, capsys):
    with pytest.raises(SystemExit) as refused:
        run_benchmark([command, foreign, "1"])
    assert refused.value.code == 2 and f"unrecognized arguments: {foreign}" in capsys.readouterr().err


def test_argmax_and_upsampling_modes():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((11, 12, 16)).astype(np.float32)
    np.testing.assert_array_equal(argmax_channels(logits), logits.argmax(0))
    big = logits_to_mask(logits, 24, 32, "logits")
    nearest = logits_to_mask(logits, 24, 32, "labels")
    assert big.shape == nearest.shape == (24, 32)
    np.testing.assert_array_equal(nearest[::2, ::2], logits.argmax(0))
    assert (big == nearest).mean() > 0.5
    with pytest.raises(ValueError):
        logits_to_mask(logits, 24, 32, "bicubic")


@pytest.mark.skipif(torch.cuda.is_available() or "CUDAExecutionProvider" in onnxruntime.get_available_providers(),
                    reason="this machine has CUDA")
def test_cuda_requests_without_cuda_fail_with_a_clear_message(random_model):
    for backend in ("torch", "onnxruntime"):
        with pytest.raises(BackendError, match=r"CUDA|cuda"):
            SegmentationPipeline.from_model(random_model, backend=backend, device="cuda")
    with pytest.raises(BackendError, match="fp16"):
        SegmentationPipeline.from_model(random_model, backend="torch", device="cpu", precision="fp16")
    with pytest.raises(BackendError, match="unknown backend"):
        SegmentationPipeline.from_model(random_model, backend="tflite")


def card_dict(random_model, stem=None):
    card = json.loads(random_model.with_suffix(".json").read_text())
    if stem:
        card["files"] = {"onnx": f"{stem}.onnx", "torch": f"{stem}.safetensors"}
    return card


@pytest.mark.parametrize("change, message", [
    (lambda c: c.pop("classes"), "missing field"),
    (lambda c: c.update(palette=c["palette"][:3]), "palette"),
    (lambda c: c["input"].update(channel_order="yuv"), "channel_order"),
    (lambda c: c["input"].update(std=[0, 1, 1]), "std"),
    (lambda c: c.update(surprise=1), "unknown field"),
    (lambda c: c["input"].update(std=["a", 1, 1]), "std"),
    (lambda c: c.update(palette=[1] * 11), "palette"),
    (lambda c: c.update(classes="SkyRoad"), "classes"),
    (lambda c: c.update(files=["m.onnx"]), "files"),
    (lambda c: c.update(architecture={"name": 3}), "architecture"),
    (lambda c: c.update(flip_average="yes"), "flip_average"),
    (lambda c: c.update(logit_offsets=[0.5] * 3), "logit_offsets needs one finite number per class"),
    (lambda c: c.update(logit_offsets=[float("nan")] * 11), "logit_offsets"),
    (lambda c: c.update(interface={"input_layout": "CHW"}), "interface.input_layout must be one of"),
    (lambda c: c.update(interface={"colour_space": "yuv"}), "bad interface spec"),
    (lambda c: c.update(interface={"size_multiple": 32}), "size_multiple must be null or an integer >= 1 with"),
    (lambda c: c.update(interface={"output_layout": "NHW"}), "'NHW' .no class axis. fits only output_kind 'labels'"),
    (lambda c: c.update(interface={"input_dtype": "uint8"}), "uint8 input takes pixels without normalization"),
    (lambda c: c.update(interface={"output_kind": "labels"}, flip_average=True), "no scores to flip-average"),
    (lambda c: c.update(interface={"output_kind": "probabilities"}, logit_offsets=[0.5] * 11),
     "logit_offsets need an output of logits"),
])
def test_bad_model_cards_are_refused_naming_the_field(random_model, change, message):
    card = card_dict(random_model)
    change(card)
    with pytest.raises(ModelCardError, match=message):
        ModelCard.from_dict(card)


def test_card_naming_an_unknown_architecture_is_refused_by_the_torch_backend(random_model, tmp_path):
    for suffix in (".onnx", ".safetensors"):
        (tmp_path / f"m{suffix}").write_bytes(random_model.with_suffix(suffix).read_bytes())
    card = card_dict(random_model, "m")
    card["architecture"] = {"name": "segformer"}
    (tmp_path / "m.json").write_text(json.dumps(card))
    with pytest.raises(BackendError, match="unknown architecture 'segformer'"):
        SegmentationPipeline.from_model(tmp_path / "m.json", backend="torch", device="cpu")
    card["architecture"] = {"name": "mobile_unet", "wings": 2}
    (tmp_path / "m.json").write_text(json.dumps(card))
    with pytest.raises(BackendError, match="bad options"):
        SegmentationPipeline.from_model(tmp_path / "m.json", backend="torch", device="cpu")


def test_card_that_disagrees_with_the_model_is_refused(random_model, tmp_path):
    for suffix in (".onnx", ".safetensors"):
        (tmp_path / f"m{suffix}").write_bytes(random_model.with_suffix(suffix).read_bytes())
    card = card_dict(random_model, "m")
    card["classes"] = card["classes"][:5]
    card["palette"] = card["palette"][:5]
    (tmp_path / "m.json").write_text(json.dumps(card))
    with pytest.raises(BackendError, match="outputs 11 classes"):
        SegmentationPipeline.from_model(tmp_path / "m.onnx", backend="onnxruntime", device="cpu")
    card = card_dict(random_model, "m")
    card["input"]["height"] = 200
    (tmp_path / "m.json").write_text(json.dumps(card))
    with pytest.raises(BackendError, match="input is 96x128"):
        SegmentationPipeline.from_model(tmp_path / "m.onnx", backend="onnxruntime", device="cpu")


def test_a_crafted_pickle_in_place_of_weights_is_refused_without_running(random_model, tmp_path, crafted_pickle):
    payload, marker = crafted_pickle
    (tmp_path / "m.onnx").write_bytes(random_model.read_bytes())
    (tmp_path / "m.json").write_text(json.dumps(card_dict(random_model, "m")))
    (tmp_path / "m.safetensors").write_bytes(payload)
    with pytest.raises(WeightsError, match="not a readable safetensors"):
        SegmentationPipeline.from_model(tmp_path / "m.onnx", backend="torch", device="cpu")
    assert not marker.exists()


def test_every_architecture_runs_through_both_backends(tmp_path):
    for arch in ({"name": "unet", "base_width": 4, "depth": 2, "upsampling": "bilinear", "kernel_sizes": [3, 5, 3]},
                 {"name": "attention_unet", "base_width": 4, "depth": 2, "multiscale_skips": True},
                 {"name": "mobile_unet", "decoder_channels": [16, 16, 8, 8]}):
        onnx_path = make_random_model(tmp_path / arch["name"], arch, size=(64, 96))
        masks = [SegmentationPipeline.from_model(onnx_path, backend=b, device="cpu").segment(scene(2, 64, 96)).mask
                 for b in ("torch", "onnxruntime")]
        assert (masks[0] == masks[1]).mean() >= 0.999, arch["name"]


def counting_calls(pipeline: SegmentationPipeline) -> list:
    """The batch sizes of the pipeline's backend calls, as they happen."""
    calls, infer = [], pipeline.backend.infer
    pipeline.backend.infer = lambda batch: calls.append(len(batch)) or infer(batch)
    return calls


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_a_batch_of_cameras_frames_goes_through_one_backend_call_with_the_masks_of_one_by_one(
        dynamic_batch_model, backend):
    """Four cameras' frames of three sizes and both channel orders: one call of four, the masks, scores and
    confidence images of segment() frame by frame."""
    pipeline = SegmentationPipeline.from_model(dynamic_batch_model, backend=backend, device="cpu")
    assert pipeline.card.interface.batch == "dynamic" and pipeline.backend.batches
    images = [scene(0, 60, 80), scene(1, 96, 128)[..., ::-1], scene(2, 120, 160), scene(3, 60, 80)[..., ::-1]]
    orders, confidence = ["rgb", "bgr", "rgb", "bgr"], [True, False, False, True]
    alone = [pipeline.segment(image, order, wanted) for image, order, wanted in zip(images, orders, confidence)]
    calls = counting_calls(pipeline)
    together = pipeline.segment_batch(images, orders, confidence)
    assert calls == [4] and pipeline.network_input.shape[0] == 4
    for one, batched, image, wanted in zip(alone, together, images, confidence):
        assert batched.mask.shape == image.shape[:2]
        assert (batched.mask == one.mask).mean() >= (1.0 if backend == "onnxruntime" else 0.9999)
        assert batched.score == pytest.approx(one.score, abs=1e-5)
        assert (batched.confidence is not None) == wanted
        assert set(batched.timings_ms) == set(one.timings_ms)
        assert batched.timings_ms["total"] >= batched.timings_ms["inference"] > 0
    assert len({result.mask.tobytes() for result in together}) == 4


def test_a_lone_frame_through_segment_batch_is_segment(random_model):
    """A model with a fixed batch of one: a lone camera's frame is one call, as segment(); several frames run
    one by one inside the backend, with the same masks."""
    pipeline = SegmentationPipeline.from_model(random_model, device="cpu")
    assert not pipeline.backend.batches
    image = scene(5, 90, 120)
    expected = pipeline.segment(image)
    calls = counting_calls(pipeline)
    (lone,) = pipeline.segment_batch([image])
    np.testing.assert_array_equal(lone.mask, expected.mask)
    assert lone.score == expected.score and calls == [1] and pipeline.network_input.shape[0] == 1
    images = [scene(seed, 90, 120) for seed in range(3)]
    for result, image in zip(pipeline.segment_batch(images), images):
        np.testing.assert_array_equal(result.mask, pipeline.segment(image).mask)
