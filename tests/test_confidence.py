"""Per-pixel confidence, the frame score, the card's confidence field, its calibration, and the node's
~/confidence output and reliability monitor (OK -> WARN -> OK on clean, noisy, clean frames)."""

from __future__ import annotations

import json
import math
import re
import shutil
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from ros_harness import connect, make_image_msg
from scipy.special import softmax
from test_node import scene

from seg_node.core.confidence import (
    SCORE_STRIDE,
    class_spread,
    confidence_image,
    frame_score,
    top_class_probability,
    top_two_margin,
)
from seg_node.core.model_card import ModelCard, ModelCardError
from seg_node.core.model_files import DEFAULT_MODEL_CARD, models_dir, package_path
from seg_node.core.pipeline import SegmentationPipeline
from seg_node.ros.camera_health import OK, WARN
from seg_node.ros.image_messages import stamp_ns
from seg_node.ros_tools.stress import StatusRecorder
from seg_node.toolchain.data import open_dataset
from seg_node.toolchain.data.base import read_rgb
from seg_node.toolchain.evaluation.calibrate_confidence import (
    clean_recall_threshold,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    run_calibration,
    youden_threshold,
)
from seg_node.toolchain.evaluation.corruptions import corrupt
from seg_node.toolchain.evaluation.metrics import ConfusionMatrix
from seg_node.toolchain.evaluation.robustness import frame_seed

CLASSES = 11


def test_uniform_logits_give_one_over_c_and_a_dominant_class_gives_nearly_one():
    uniform = np.full((CLASSES, 4, 5), 3.7, np.float32)
    np.testing.assert_allclose(top_class_probability(uniform), 1 / CLASSES, rtol=1e-6)
    dominant = np.zeros((CLASSES, 4, 5), np.float32)
    dominant[6] = 20.0
    assert top_class_probability(dominant).min() > 1 - 1e-7
    np.testing.assert_array_equal(confidence_image(uniform, 4, 5), np.full((4, 5), round(255 / CLASSES), np.uint8))
    assert confidence_image(dominant, 8, 10).shape == (8, 10) and confidence_image(dominant, 8, 10).min() == 255


def test_temperature_divides_the_logits_before_the_softmax():
    logits = np.random.default_rng(0).normal(0, 2, (CLASSES, 6, 7)).astype(np.float32)
    for temperature in (0.5, 1.0, 2.0):
        expected = softmax(logits / temperature, axis=0).max(axis=0)
        np.testing.assert_allclose(top_class_probability(logits, temperature), expected, rtol=1e-5)
    cooler, plain, hotter = (top_class_probability(logits, t) for t in (0.5, 1.0, 2.0))
    assert (cooler >= plain).all() and (plain >= hotter).all() and (hotter > 1 / CLASSES).all()
    assert top_class_probability(logits).dtype == np.float32 and logits.max() < 10, "the input is left alone"


def test_the_top_two_margin_is_the_gap_between_the_two_largest_probabilities():
    logits = np.random.default_rng(1).normal(0, 2, (CLASSES, 6, 7)).astype(np.float32)
    for temperature in (0.5, 1.0, 2.0):
        ordered = np.sort(softmax(logits / temperature, axis=0), axis=0)
        np.testing.assert_allclose(top_two_margin(logits, temperature), ordered[-1] - ordered[-2], atol=1e-6)
    np.testing.assert_allclose(top_two_margin(np.full((CLASSES, 2, 2), 1.5, np.float32)), 0.0, atol=1e-7)
    np.testing.assert_array_equal(top_two_margin(np.zeros((1, 2, 3), np.float32)), np.ones((2, 3)))


def test_the_frame_score_is_the_mean_margin_times_the_root_of_the_class_spread():
    assert class_spread(np.zeros((5, 5), np.uint8), CLASSES) == 0.0
    assert class_spread(np.arange(CLASSES, dtype=np.uint8), CLASSES) == pytest.approx(1.0)
    assert class_spread(np.array([0, 1]), 4) == pytest.approx(math.log(2) / math.log(4))
    # two halves of equal size, classes 0 and 3, each with top-class probability p and the others (1 - p) / 10:
    # score (p - (1 - p) / 10) * sqrt(log 2 / log C)
    logits = np.zeros((CLASSES, 8, 16), np.float32)
    logits[0, :, :8] = logits[3, :, 8:] = 4.0
    p = math.exp(4) / (math.exp(4) + CLASSES - 1)
    expected = (p - (1 - p) / (CLASSES - 1)) * math.sqrt(math.log(2) / math.log(CLASSES))
    assert frame_score(logits) == pytest.approx(expected, rel=1e-5)
    collapsed = np.zeros_like(logits)
    collapsed[5] = 30.0  # one class everywhere, certain of it: what strong noise does to an unprotected model
    assert frame_score(collapsed) == 0.0 < frame_score(logits)
    torn = logits.copy()
    torn[1, :, :8] = 3.9  # a second class nearly as likely as the first on half the frame: the margin sees it
    assert frame_score(torn) / frame_score(logits) < 0.6 < 0.75 < (top_class_probability(torn).mean()
                                                                   / top_class_probability(logits).mean())
    # only every SCORE_STRIDE-th row and column is read
    marked = logits.copy()
    marked[:, 1::SCORE_STRIDE, :] = 0.0
    assert frame_score(marked) == frame_score(logits)


def card_data() -> dict:
    return json.loads((models_dir() / DEFAULT_MODEL_CARD).read_text())


@pytest.mark.parametrize("confidence, words", [
    ({"temperature": 0}, "confidence.temperature must be a finite number > 0"),
    ({"temperature": -1.5}, "confidence.temperature"),
    ({"temperature": "1"}, "confidence.temperature"),
    ({"temperature": True}, "confidence.temperature"),
    ({"threshold": 1.5}, r"confidence.threshold must be a number in \[0, 1\] or null"),
    ({"threshold": "0.5"}, "confidence.threshold"),
    ({"calibration": []}, "confidence.calibration must be an object"),
    ({"temprature": 1.2}, "bad confidence spec"),
    ([1.0], "confidence must be an object"),
])
def test_bad_confidence_fields_are_refused_naming_the_field(confidence, words):
    with pytest.raises(ModelCardError, match=words):
        ModelCard.from_dict({**card_data(), "confidence": confidence}, "card.json")


def test_the_confidence_field_defaults_to_temperature_one_without_threshold_and_round_trips(tmp_path):
    default = ModelCard.from_dict({k: v for k, v in card_data().items() if k != "confidence"})
    assert (default.confidence.temperature, default.confidence.threshold) == (1.0, None)
    card = ModelCard.from_dict({**card_data(), "confidence": {"temperature": 1.3, "threshold": 0.62,
                                                              "calibration": {"split": "val"}}})
    card.save(tmp_path / "card.json")
    assert ModelCard.load(tmp_path / "card.json").confidence == card.confidence


def flip_copy(random_model, folder, temperature: float):
    """A card beside the random model's files: flip-averaged, with a temperature."""
    card = json.loads(random_model.with_suffix(".json").read_text())
    card.update(flip_average=True, confidence={"temperature": temperature})
    shutil.copy(random_model, folder / random_model.name)
    (folder / "flip.json").write_text(json.dumps(card))
    return folder / "flip.json"


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_the_pipeline_scores_every_frame_and_builds_the_map_only_when_asked(random_model, tmp_path, backend):
    if backend == "torch":
        shutil.copy(random_model.with_suffix(".safetensors"), tmp_path)
    pipeline = SegmentationPipeline.from_model(flip_copy(random_model, tmp_path, 1.7), backend, "cpu")
    image = scene(3, 90, 120)
    plain = pipeline.segment(image)
    assert plain.confidence is None
    logits = pipeline.logits(image)  # flip-averaged: the card asks for it
    assert plain.score == pytest.approx(frame_score(logits, 1.7), rel=1e-5)
    assert plain.score != pytest.approx(frame_score(logits, 1.0), rel=1e-3), "the card's temperature is used"
    with_map = pipeline.segment(image, confidence=True)
    assert with_map.confidence.shape == (90, 120) and with_map.confidence.dtype == np.uint8
    np.testing.assert_array_equal(with_map.confidence, confidence_image(logits, 90, 120, 1.7))
    np.testing.assert_array_equal(with_map.mask, plain.mask)


def test_the_temperature_fit_recovers_the_temperature_that_made_the_labels():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 3, (20000, 5))
    labels = np.array([rng.choice(5, p=p) for p in softmax(logits / 2.5, axis=1)])
    fitted = fit_temperature(logits, labels)
    assert fitted == pytest.approx(2.5, rel=0.05)
    assert negative_log_likelihood(logits, labels, fitted) < negative_log_likelihood(logits, labels, 1.0)
    assert expected_calibration_error(logits, labels, fitted) < 0.02 < expected_calibration_error(logits, labels)


def test_expected_calibration_error_on_a_hand_made_case():
    # two pixels at confidence 0.9 (bin 13), one right one wrong: |0.5 - 0.9| x 2/3; one at 0.6 (bin 9), right:
    # |1 - 0.6| x 1/3; ECE = 0.4
    def at(confidence: float, winner: int) -> list[float]:
        row = [0.0, 0.0]
        row[1 - winner] = math.log((1 - confidence) / confidence)
        return row
    logits = np.array([at(0.9, 0), at(0.9, 0), at(0.6, 1)])
    assert expected_calibration_error(logits, np.array([0, 1, 1])) == pytest.approx(0.4, abs=1e-9)


def test_threshold_rules_on_hand_made_scores():
    clean = np.array([0.70, 0.75, 0.80, 0.85])
    corrupted = np.array([0.10, 0.20, 0.72, 0.90])
    # t = 0.70: 2/4 corrupted flagged, 0 clean -> J 0.5; t = 0.75: 3/4 and 1/4 -> 0.5; the lower one wins
    assert youden_threshold(clean, corrupted) == 0.70
    assert youden_threshold(np.array([0.8, 0.9]), np.array([0.1, 0.2])) == 0.8
    assert clean_recall_threshold(clean, 1.0) == 0.70  # every clean frame at or above it
    assert clean_recall_threshold(clean, 0.75) == 0.75 and clean_recall_threshold(clean, 0.5) == 0.80


# --- the node ------------------------------------------------------------------------------------------------
def test_the_confidence_topic_has_the_inputs_size_encoding_header_and_the_pipelines_values(ros, seg_node, pipeline):
    node = seg_node(input_topics=["/conf_cam/image_raw"], qos_reliability="reliable")
    outputs, publisher = connect(ros, node, "/conf_cam/image_raw", names=("confidence", "latency"))
    image = scene(4, 75, 100)
    publisher.publish(make_image_msg(image, "rgb8", 7_000_000_123, frame_id="conf_optical"))
    msg = outputs.confidence.wait_for(1)[0]
    assert (msg.height, msg.width, msg.encoding, msg.step) == (75, 100, "mono8", 100)
    assert stamp_ns(msg.header.stamp) == 7_000_000_123 and msg.header.frame_id == "conf_optical"
    expected = pipeline.segment(image, confidence=True)
    np.testing.assert_array_equal(np.frombuffer(msg.data, np.uint8).reshape(75, 100), expected.confidence)
    values = {kv.key: kv.value for kv in outputs.latency.wait_for(1)[0].status[0].values}
    assert float(values["confidence_score"]) == pytest.approx(expected.score, abs=1e-4)


def clip_frames() -> list[np.ndarray]:
    return [read_rgb(path) for path in sorted(package_path("data", "camvid_clip", "test").iterdir())]


HOLD = 0.6


def test_diagnostics_warn_while_noisy_frames_stay_unreliable_for_the_hold_time_and_recover(ros, seg_node):
    """The shipped default with its card's threshold (0.576): the committed clip scores 0.68-0.75 clean and
    0.46-0.54 under gaussian noise at severity 5."""
    card = models_dir() / DEFAULT_MODEL_CARD
    threshold = ModelCard.load(card).confidence.threshold
    node = seg_node(model=str(card), input_topics=["/noisy_cam/image_raw"], qos_reliability="reliable",
                    diagnostics_period=0.2, latency_budget_ms=5000.0, reliability_hold=HOLD)
    statuses = StatusRecorder(ros, node.name)
    outputs, publisher = connect(ros, node, "/noisy_cam/image_raw", names=("mask", "latency"))
    frames = clip_frames()
    noisy = [corrupt(frame, "gaussian_noise", 5, seed) for seed, frame in enumerate(frames)]
    stamp = 0

    def send(frame) -> float:
        nonlocal stamp
        stamp += 1
        publisher.publish(make_image_msg(frame, "rgb8", stamp))
        report = outputs.latency.wait_for(1, 30, lambda m, s=stamp: stamp_ns(m.header.stamp) == s)[0]
        return float(next(kv.value for kv in report.status[0].values if kv.key == "confidence_score"))

    def until(level: int, source: list, since: float) -> tuple:
        """Send `source` frames round and round until a status of `level` arrives after `since`."""
        scores = []
        while not [s for s in statuses.statuses if s.arrived > since and s.level == level]:
            scores.append(send(source[len(scores) % len(source)]))
            assert len(scores) < 500, f"no level {level} status after {len(scores)} frames"
        return next(s for s in statuses.statuses if s.arrived > since and s.level == level), scores

    clean_scores = [send(frame) for frame in frames[:8]]
    ok = statuses.first(lambda s: s.level == OK and int(s.values["frames_processed"]) >= 8)
    assert min(clean_scores) > threshold and ok.values["confidence_threshold"] == f"{threshold:.3f}"
    assert ok.values["reliability_monitor"] == "on"

    noisy_from = time.perf_counter()
    warned, noisy_scores = until(WARN, noisy, noisy_from)
    assert max(noisy_scores) < threshold
    match = re.fullmatch(rf"segmentation unreliable: confidence (\d\.\d\d) under {re.escape(f'{threshold:.2f}')} "
                         r"for (\d+\.\d) s", warned.message)
    assert match, warned.message
    assert float(match[1]) == pytest.approx(np.mean(noisy_scores), abs=0.06)  # the run's mean, to 2 decimals
    assert HOLD <= float(match[2]) <= HOLD + 5.0 and float(warned.values["seconds_under_confidence_threshold"]) >= HOLD
    assert warned.arrived - noisy_from >= HOLD, "WARN before the scores had stayed low for the hold time"
    before = [s for s in statuses.statuses if ok.arrived <= s.arrived < warned.arrived]
    assert all(s.level == OK for s in before), [(s.level, s.message) for s in before]

    recovered_from = time.perf_counter()
    back, _ = until(OK, frames, recovered_from)
    assert back.message == "ok"
    # the status that recovered may average the last noisy frames of its period with the first clean ones; the
    # next period holds clean frames only (each frame is sent after the previous one's ~/latency came back)
    sent_at = time.perf_counter()
    send(frames[0])
    clean_period = statuses.first(lambda s: int(s.values["frames_processed"]) > int(back.values["frames_processed"]),
                                  since=max(back.arrived, sent_at))
    assert clean_period.level == OK and float(clean_period.values["confidence_score"]) > threshold


def test_seg_calibrate_confidence_end_to_end_writes_temperature_and_threshold_into_the_card(tmp_path):
    """A real run on three frames of the committed CamVid clip laid out as a val split, with a copy of the shipped
    default: the card gets the fitted temperature, the threshold and the record of how they were found, and the
    threshold follows its rule on the frame scores the node would compute with that temperature: the lowest
    clean score (rule clean_recall 0.99, the default, on three frames); Youden's for frames that lost a quarter of
    their clean mIoU (rule accuracy) and for clean against severity >= 3 frames (rule corruption)."""
    data, clip = tmp_path / "camvid", package_path("data", "camvid_clip")
    (data / "val").mkdir(parents=True)
    (data / "valannot").mkdir()
    for frame in sorted((clip / "test").iterdir())[::8]:
        shutil.copy(frame, data / "val")
        shutil.copy(clip / "testannot" / f"{frame.stem}.png", data / "valannot")
    for suffix in (".json", ".onnx"):
        shutil.copy(models_dir() / DEFAULT_MODEL_CARD.replace(".json", suffix), tmp_path)
    card_path = tmp_path / DEFAULT_MODEL_CARD
    options = ["--model", str(card_path), "--data", str(data), "--corruptions", "gaussian_noise", "fog",
               "--severities", "1", "3", "5", "--pixels-per-frame", "500", "--threads", "2",
               "--threshold-splits", "val"]
    by_corruption = run_calibration([*options, "--rule", "corruption"], progress=False)
    by_accuracy = run_calibration([*options, "--rule", "accuracy"], progress=False)
    result = run_calibration([*options, "--update-card"], progress=False)
    card = ModelCard.load(card_path)
    assert card.confidence.temperature == round(result["temperature"], 4) and 0.05 <= result["temperature"] <= 20
    assert by_corruption["temperature"] == result["temperature"]
    assert card.confidence.threshold == round(result["threshold"], 4)
    recorded = card.confidence.calibration
    assert recorded["split"] == "val" and recorded["frames"] == 3 and recorded["pixels"] == 1500
    assert recorded["threshold_rule"] == "clean_recall 0.99" and recorded["threshold_frames"] == {"val": 3}
    assert (by_accuracy["threshold_rule"], by_corruption["threshold_rule"]) == ("accuracy 0.75", "corruption")
    assert recorded["nll"]["after"] <= recorded["nll"]["before"] + 1e-4
    pipeline = SegmentationPipeline.from_model(card_path)
    assert pipeline.card.confidence.temperature == card.confidence.temperature
    dataset = open_dataset(data, "val")
    frames = [dataset.load(sample) for sample in dataset.samples()]

    def scored(image, label) -> tuple[float, float]:
        result = pipeline.segment(image)
        matrix = ConfusionMatrix(CLASSES)
        matrix.update(result.mask, label)
        return result.score, matrix.miou()

    clean = [scored(image, label) for image, label in frames]
    corrupted = [(severity, index, *scored(corrupt(image, name, severity, frame_seed(index, name, severity)), label))
                 for index, (image, label) in enumerate(frames) for name in ("gaussian_noise", "fog")
                 for severity in (1, 3, 5)]
    clean_scores = np.array([score for score, _ in clean])
    severe = np.array([score for severity, _, score, _ in corrupted if severity >= 3])
    assert by_corruption["threshold"] == pytest.approx(min(youden_threshold(clean_scores, severe), 1.0), abs=1e-3)
    held = [score for _, index, score, miou in corrupted if miou >= 0.75 * clean[index][1]]
    lost = [score for _, index, score, miou in corrupted if miou < 0.75 * clean[index][1]]
    assert lost, "no corrupted frame lost a quarter of its mIoU: the accuracy rule is untested"
    expected = youden_threshold(np.concatenate([clean_scores, held]), np.array(lost))
    assert by_accuracy["threshold"] == pytest.approx(min(expected, 1.0), abs=1e-3)
    assert result["threshold"] == pytest.approx(clean_scores.min(), abs=1e-3)
    # (the card keeps T to 4 decimals, so a frame scored exactly at the threshold may fall either side of it here)
    assert recorded["flagged"]["clean"] <= 1 / 3  # the lowest clean frame, if 4 decimals rounded the threshold up
    assert recorded["flagged"]["unreliable"] == pytest.approx(np.mean(np.array(lost) < result["threshold"]), abs=0.01)
    assert recorded["score_median"]["clean"] == pytest.approx(np.median(clean_scores), abs=1e-3)
    assert recorded["score_median"]["sev3plus"] == pytest.approx(np.median(severe), abs=1e-3)


def labels_only_card(random_model: Path, out: Path) -> Path:
    """The random model with the argmax inside its graph (int64 labels, N x H x W, as PaddleSeg exports them) and
    a card that says so."""
    graph = onnx.load(random_model)
    graph.graph.node.append(helper.make_node("ArgMax", [graph.graph.output[0].name], ["labels"], axis=1, keepdims=0))
    del graph.graph.output[:]
    graph.graph.output.append(helper.make_tensor_value_info("labels", TensorProto.INT64, None))
    onnx.save(graph, out.with_suffix(".onnx"))
    card = json.loads(random_model.with_suffix(".json").read_text())
    card.update(files={"onnx": out.with_suffix(".onnx").name},
                interface={"output_kind": "labels", "output_layout": "NHW"})
    out.with_suffix(".json").write_text(json.dumps(card))
    return out.with_suffix(".json")


def test_a_labels_only_model_has_no_confidence_topic_and_diagnostics_say_its_monitor_is_off(
        ros, seg_node, random_model, tmp_path):
    card = labels_only_card(random_model, tmp_path / "labels_only")
    node = seg_node(model=str(card), input_topics=["/labels_cam/image_raw"], qos_reliability="reliable",
                    diagnostics_period=0.2)
    statuses = StatusRecorder(ros, node.name)
    outputs, publisher = connect(ros, node, "/labels_cam/image_raw", names=("mask", "latency"))
    published = {topic for topic, _ in ros.node.get_publisher_names_and_types_by_node(node.name, "/")}
    assert node.topic("mask") in published and node.topic("confidence") not in published
    image = scene(8)
    publisher.publish(make_image_msg(image, "rgb8", 3))
    mask = outputs.mask.wait_for(1)[0]
    expected = SegmentationPipeline.from_model(card, backend="onnxruntime", device="cpu").segment(image).mask
    np.testing.assert_array_equal(np.frombuffer(mask.data, np.uint8).reshape(mask.height, mask.width), expected)
    latency = {kv.key: kv.value for kv in outputs.latency.wait_for(1)[0].status[0].values}
    assert latency["confidence_score"] == "nan"
    status = statuses.first(lambda s: int(s.values["frames_processed"]) == 1)
    assert (status.level, status.message) == (OK, "ok; reliability monitor off: the model gives labels only")
    assert status.values["reliability_monitor"] == "off: the model gives labels only (no confidence)"
    assert status.values["confidence_threshold"] == "none"
    assert node.output().count("gives labels only") == 1, "said once, at start-up"
