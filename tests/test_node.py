"""seg_node as ROS runs it: a separate process, real DDS, real publishers and subscribers."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import threading
import time

import cv2
import numpy as np
import onnxruntime
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters, SetParametersAtomically
from rclpy.qos import qos_profile_sensor_data
from ros_harness import Outputs, connect, diagnostic_values, make_image_msg
from sensor_msgs.msg import CompressedImage, Image

from seg_node.core.image_codec import decode_raw, encode_compressed
from seg_node.core.model_card import ModelCard
from seg_node.core.model_files import models_dir
from seg_node.core.pipeline import SegmentationPipeline
from seg_node.ros.image_messages import stamp_ns
from seg_node.ros.node_parameters import PARAMETERS, RUNTIME_PARAMETERS, ParameterError, RuntimeSettings
from seg_node.toolchain.data import open_dataset
from seg_node.toolchain.evaluation.timing import CLIP

HEIGHT, WIDTH = 60, 80


def scene(seed: int, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """A smooth RGB test image (random blobs), so JPEG round trips stay close."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (6, 8, 3), np.uint8)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)


def as_encoding(rgb: np.ndarray, encoding: str) -> np.ndarray:
    """Lay an RGB image out as `encoding` stores it."""
    if encoding == "rgb8":
        return rgb
    if encoding == "bgr8":
        return rgb[..., ::-1]
    if encoding == "rgba8":
        return np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    if encoding == "bgra8":
        return np.dstack([rgb[..., ::-1], np.full(rgb.shape[:2], 255, np.uint8)])
    if encoding == "mono8":
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    yuv = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV)
    y, u, v = yuv[..., 0], yuv[:, 0::2, 1], yuv[:, 0::2, 2]
    packed = np.empty((rgb.shape[0], rgb.shape[1] * 2), np.uint8)
    if encoding == "yuv422":  # UYVY
        packed[:, 0::4], packed[:, 1::2], packed[:, 2::4] = u, y, v
    else:  # YUYV
        packed[:, 0::2], packed[:, 1::4], packed[:, 3::4] = y, u, v
    return packed


def wait_stamp(inbox, ns, timeout=20.0):
    return inbox.wait_for(1, timeout, lambda m: stamp_ns(m.header.stamp) == ns)[0]


def node_status(ros_inbox, node, predicate=lambda s: True, timeout=20.0):
    """The newest /diagnostics status of `node` that satisfies `predicate`."""
    def matching(msg):
        return [s for s in msg.status if s.name.startswith(node.name + ":") and predicate(s)]
    msg = ros_inbox.wait_for(1, timeout, lambda m: bool(matching(m)))[-1]
    return matching(msg)[-1]


@pytest.fixture(scope="module")
def diagnostics(ros):
    return ros.subscribe(DiagnosticArray, "/diagnostics")


def test_every_raw_encoding_is_segmented_with_header_and_size_kept(ros, seg_node, pipeline):
    node = seg_node(input_topics=["/enc_cam/image_raw"], qos_reliability="reliable", overlay_alpha=0.4)
    outputs, publisher = connect(ros, node, "/enc_cam/image_raw")
    cases = [(enc, 0) for enc in ("rgb8", "bgr8", "rgba8", "bgra8", "mono8", "yuv422", "yuv422_yuy2")]
    cases += [("rgb8", 16), ("yuv422", 6)]  # padded rows: step > width * bytes per pixel
    for index, (encoding, padding) in enumerate(cases):
        rgb = scene(index)
        ns = 1_700_000_000_000_000_000 + index * 1_000_000
        msg = make_image_msg(as_encoding(rgb, encoding), encoding, ns, frame_id=f"cam_{encoding}", row_padding=padding)
        publisher.publish(msg)
        mask = wait_stamp(outputs.mask, ns)
        color = wait_stamp(outputs.color_mask, ns)
        blended = wait_stamp(outputs.overlay, ns)
        decoded = decode_raw(msg.encoding, msg.height, msg.width, msg.step, msg.data)
        expected = pipeline.segment(decoded.pixels, decoded.channel_order).mask
        for out, enc, channels in ((mask, "mono8", 1), (color, "rgb8", 3), (blended, "rgb8", 3)):
            assert (out.height, out.width, out.encoding, out.step) == (HEIGHT, WIDTH, enc, WIDTH * channels)
            assert out.header.frame_id == f"cam_{encoding}"
        got = np.frombuffer(mask.data, np.uint8).reshape(HEIGHT, WIDTH)
        np.testing.assert_array_equal(got, expected, err_msg=f"{encoding} (padding {padding})")
        colors = np.frombuffer(color.data, np.uint8).reshape(HEIGHT, WIDTH, 3)
        np.testing.assert_array_equal(colors, np.asarray(pipeline.card.palette, np.uint8)[expected])
        overlay = np.frombuffer(blended.data, np.uint8).reshape(HEIGHT, WIDTH, 3).astype(int)
        reference = 0.6 * decoded.as_rgb().astype(float) + 0.4 * colors
        assert np.abs(overlay - reference).max() <= 1
        latency = wait_stamp(outputs.latency, ns)
        values = diagnostic_values(latency.status[0])
        for key in ("preprocess_ms", "inference_ms", "postprocess_ms", "total_ms", "age_ms"):
            assert float(values[key]) >= 0.0, key
        assert float(values["total_ms"]) >= float(values["inference_ms"])


@pytest.mark.parametrize("kind", ["jpeg", "png"])
def test_compressed_images_are_segmented(ros, seg_node, pipeline, kind):
    node = seg_node(input_topics=[f"/comp_{kind}/image_raw"], input_transport="compressed",
                    qos_reliability="reliable")
    outputs, publisher = connect(ros, node, f"/comp_{kind}/image_raw/compressed", CompressedImage)
    rgb = scene(7)
    msg = CompressedImage(format=kind, data=encode_compressed(rgb, "rgb", kind))
    msg.header.stamp.sec, msg.header.frame_id = 42, "compressed_cam"
    publisher.publish(msg)
    mask = wait_stamp(outputs.mask, 42_000_000_000)
    assert (mask.height, mask.width, mask.encoding, mask.header.frame_id) == (HEIGHT, WIDTH, "mono8", "compressed_cam")
    decoded = cv2.imdecode(np.frombuffer(msg.data, np.uint8), cv2.IMREAD_COLOR)
    expected = pipeline.segment(decoded, "bgr").mask
    np.testing.assert_array_equal(np.frombuffer(mask.data, np.uint8).reshape(HEIGHT, WIDTH), expected)


def test_diagnostics_summary_reports_latency_rates_and_model(ros, seg_node, diagnostics):
    node = seg_node(input_topics=["/diag_cam/image_raw"], qos_reliability="reliable", latency_budget_ms=5000.0)
    outputs, publisher = connect(ros, node, "/diag_cam/image_raw", Image)
    for index in range(10):
        publisher.publish(make_image_msg(scene(index), "rgb8", (index + 1) * 1_000_000))
        outputs.mask.wait_for(index + 1)
    status = node_status(diagnostics, node, lambda s: int(diagnostic_values(s)["frames_processed"]) >= 10)
    values = diagnostic_values(status)
    assert status.level == b"\x00", status.message
    assert status.hardware_id == "seg_node/onnxruntime/cpu"
    for key in ("latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "latency_max_ms"):
        assert key in values
    assert values["backend"] == "onnxruntime" and values["device"] == "cpu"
    assert values["model"].startswith("random-unet")
    assert values["frames_received"] == "10" and values["frames_dropped"] == "0"
    assert values["frames_rejected"] == "0" and values["frames_failed"] == "0"


def test_latency_budget_exceeded_warns(ros, seg_node, diagnostics):
    node = seg_node(input_topics=["/budget_cam/image_raw"], qos_reliability="reliable", latency_budget_ms=0.1)
    outputs, publisher = connect(ros, node, "/budget_cam/image_raw", Image)
    deadline = time.time() + 20
    while time.time() < deadline:
        publisher.publish(make_image_msg(scene(1), "rgb8", 5))
        outputs.mask.wait_for(len(outputs.mask) + 1)
        warned = [s for m in diagnostics.messages for s in m.status
                  if s.name.startswith(node.name + ":") and s.level == b"\x01"]
        if warned:
            assert re.fullmatch(r"p95 latency \d+\.\d ms \(queue \+ processing\) over the 0\.1 ms budget",
                                warned[-1].message), warned[-1].message
            return
        diagnostics.wait_for(len(diagnostics) + 1)  # the next report, not a sleep
    pytest.fail("diagnostics never went WARN with a 0.1 ms latency budget")


def test_two_cameras_get_their_own_outputs(ros, seg_node, pipeline):
    node = seg_node(input_topics=["/front/image_raw", "/rear/image_raw"], camera_names=[],
                    qos_reliability="reliable")
    front, rear = Outputs(ros, node, "front/"), Outputs(ros, node, "rear/")
    pub_front, pub_rear = ros.publisher(Image, "/front/image_raw"), ros.publisher(Image, "/rear/image_raw")
    ros.wait_until_matched(front.topics + rear.topics, [pub_front, pub_rear])
    front_rgb, rear_rgb = scene(1), scene(2, 48, 64)
    pub_front.publish(make_image_msg(front_rgb, "rgb8", 11, frame_id="front"))
    pub_rear.publish(make_image_msg(rear_rgb, "rgb8", 22, frame_id="rear"))
    front_mask, rear_mask = wait_stamp(front.mask, 11), wait_stamp(rear.mask, 22)
    assert (front_mask.header.frame_id, front_mask.width) == ("front", WIDTH)
    assert (rear_mask.header.frame_id, rear_mask.width, rear_mask.height) == ("rear", 64, 48)
    np.testing.assert_array_equal(np.frombuffer(rear_mask.data, np.uint8).reshape(48, 64),
                                  pipeline.segment(rear_rgb, "rgb").mask)
    assert len(front.mask) == 1 and len(rear.mask) == 1


def test_fast_camera_drops_old_frames_and_serves_the_newest(ros, seg_node, diagnostics):
    node = seg_node(input_topics=["/fast_cam/image_raw"], qos_reliability="reliable", qos_depth=1000,
                    publish_color_mask=False, publish_overlay=False)
    outputs, publisher = connect(ros, node, "/fast_cam/image_raw", Image)
    big = scene(3, 240, 320)
    count = 150
    ros.publish_burst(publisher, (make_image_msg(big, "rgb8", index + 1) for index in range(count)))
    last = wait_stamp(outputs.mask, count, timeout=60)
    assert last.width == 320
    served = len(outputs.mask)
    status = node_status(diagnostics, node, lambda s: int(diagnostic_values(s)["frames_processed"]) == served)
    values = diagnostic_values(status)
    received, processed = int(values["frames_received"]), int(values["frames_processed"])
    dropped = int(values["frames_dropped"])
    assert dropped > 0, "a camera much faster than the model must cause drops"
    assert processed + dropped == received <= count
    rates = [float(diagnostic_values(s)["drop_rate"]) for m in diagnostics.messages for s in m.status
             if s.name.startswith(node.name + ":")]
    assert max(rates) > 0, "the drop rate of the period with the burst must be reported"
    stamps = [stamp_ns(m.header.stamp) for m in outputs.mask.messages]
    assert stamps == sorted(stamps), "frames must be served in order, newest last"


BAD_IMAGES = {
    "unknown_encoding": lambda: _with(make_image_msg(scene(0), "rgb8", 1), encoding="xyz16"),
    "data_size": lambda: _with(make_image_msg(scene(0), "rgb8", 1), data=bytes(100)),
    "zero_size": lambda: _with(make_image_msg(scene(0), "rgb8", 1), height=0, step=0, data=b""),
    "too_large": lambda: _with(make_image_msg(scene(0), "rgb8", 1), height=100000, width=100000, step=300000),
    "bad_step": lambda: _with(make_image_msg(scene(0), "rgb8", 1), step=10, data=bytes(10 * HEIGHT)),
}


def _with(msg, **fields):
    for key, value in fields.items():
        setattr(msg, key, value)
    return msg


def test_bad_images_are_rejected_counted_and_the_next_frame_served(ros, seg_node, diagnostics, pipeline):
    node = seg_node(input_topics=["/bad_cam/image_raw"], qos_reliability="reliable")
    outputs, publisher = connect(ros, node, "/bad_cam/image_raw", Image)
    for index, make_bad in enumerate(BAD_IMAGES.values()):
        publisher.publish(make_bad())
        good_ns = 1000 + index
        publisher.publish(make_image_msg(scene(index), "rgb8", good_ns))
        mask = wait_stamp(outputs.mask, good_ns)
        np.testing.assert_array_equal(np.frombuffer(mask.data, np.uint8).reshape(HEIGHT, WIDTH),
                                      pipeline.segment(scene(index), "rgb").mask)
    status = node_status(diagnostics, node,
                         lambda s: int(diagnostic_values(s)["frames_rejected"]) == len(BAD_IMAGES))
    values = diagnostic_values(status)
    for reason in BAD_IMAGES:
        assert values[f"rejected_{reason}"] == "1", reason
    assert values["frames_processed"] == str(len(BAD_IMAGES))
    assert "rejected image" in node.output()


def test_corrupt_compressed_image_is_rejected_and_the_next_served(ros, seg_node, diagnostics):
    node = seg_node(input_topics=["/badc_cam/image_raw"], input_transport="compressed", qos_reliability="reliable",
                    diagnostics_period=0.2)
    outputs, publisher = connect(ros, node, "/badc_cam/image_raw/compressed", CompressedImage)
    good = encode_compressed(scene(0), "rgb", "jpeg")
    corrupt = good[:20] + bytes(len(good) - 20)
    for data, fmt in ((b"not an image at all", "jpeg"), (good, "tiff"), (corrupt, "jpeg")):
        publisher.publish(CompressedImage(format=fmt, data=data))
    # the corrupt body passes the header check and fails in the decoder: let it be decoded before the next frame
    node_status(diagnostics, node, lambda s: int(diagnostic_values(s)["frames_rejected"]) == 3)
    ok = CompressedImage(format="jpeg", data=good)
    ok.header.stamp.sec = 9
    publisher.publish(ok)
    wait_stamp(outputs.mask, 9_000_000_000)
    values = diagnostic_values(node_status(
        diagnostics, node, lambda s: int(diagnostic_values(s)["frames_rejected"]) == 3))
    assert values["rejected_corrupt_compressed"] == "2" and values["rejected_unknown_format"] == "1"


def call_service(ros, node, service_type, service: str, request):
    client = ros.node.create_client(service_type, f"/{node.name}/{service}")
    assert client.wait_for_service(timeout_sec=20)
    future = client.call_async(request)
    answered = threading.Event()
    future.add_done_callback(lambda _: answered.set())
    assert answered.wait(20), f"no answer from /{node.name}/{service} in 20 s"
    ros.node.destroy_client(client)
    return future.result()


def parameter(name, value, kind) -> Parameter:
    field = {ParameterType.PARAMETER_DOUBLE: "double_value", ParameterType.PARAMETER_BOOL: "bool_value",
             ParameterType.PARAMETER_STRING: "string_value"}[kind]
    return Parameter(name=name, value=ParameterValue(type=kind, **{field: value}))


def set_parameter(ros, node, name, value, kind):
    request = SetParameters.Request(parameters=[parameter(name, value, kind)])
    return call_service(ros, node, SetParameters, "set_parameters", request).results[0]


def set_parameters_atomically(ros, node, *parameters: Parameter):
    request = SetParametersAtomically.Request(parameters=list(parameters))
    return call_service(ros, node, SetParametersAtomically, "set_parameters_atomically", request).result


def test_run_time_parameters_apply_and_start_up_ones_are_refused(ros, seg_node):
    node = seg_node(input_topics=["/param_cam/image_raw"], qos_reliability="reliable", overlay_alpha=0.0)
    outputs, publisher = connect(ros, node, "/param_cam/image_raw", Image)
    rgb = scene(5)
    publisher.publish(make_image_msg(rgb, "rgb8", 1))
    first = wait_stamp(outputs.overlay, 1)
    np.testing.assert_array_equal(np.frombuffer(first.data, np.uint8).reshape(HEIGHT, WIDTH, 3), rgb)

    assert set_parameter(ros, node, "overlay_alpha", 1.0, ParameterType.PARAMETER_DOUBLE).successful
    publisher.publish(make_image_msg(rgb, "rgb8", 2))
    overlay = np.frombuffer(wait_stamp(outputs.overlay, 2).data, np.uint8).reshape(HEIGHT, WIDTH, 3)
    color = np.frombuffer(wait_stamp(outputs.color_mask, 2).data, np.uint8).reshape(HEIGHT, WIDTH, 3)
    np.testing.assert_array_equal(overlay, color)

    bad_alpha = set_parameter(ros, node, "overlay_alpha", 1.5, ParameterType.PARAMETER_DOUBLE)
    assert not bad_alpha.successful and "overlay_alpha" in bad_alpha.reason
    refused = set_parameter(ros, node, "backend", "torch", ParameterType.PARAMETER_STRING)
    assert not refused.successful and "read-only" in refused.reason.lower()

    assert set_parameter(ros, node, "publish_mask", False, ParameterType.PARAMETER_BOOL).successful
    publisher.publish(make_image_msg(rgb, "rgb8", 3))
    wait_stamp(outputs.overlay, 3)
    assert set_parameter(ros, node, "publish_mask", True, ParameterType.PARAMETER_BOOL).successful
    publisher.publish(make_image_msg(rgb, "rgb8", 4))
    wait_stamp(outputs.mask, 4)  # one reliable topic delivers in order: a mask of frame 3 would have come first
    assert [stamp_ns(m.header.stamp) for m in outputs.mask.messages] == [1, 2, 4]


@pytest.mark.parametrize("parameters, message", [
    ({"model": "/nonexistent/model.onnx"}, "does not exist"),
    ({"backend": "tensorflow"}, "backend must be one of"),
    pytest.param({"device": "cuda"}, "CUDAExecutionProvider", marks=pytest.mark.skipif(
        "CUDAExecutionProvider" in onnxruntime.get_available_providers(), reason="this machine has CUDA")),
    ({"overlay_alpha": 2.0}, "overlay_alpha must be in"),
    ({"input_transport": "h264"}, "input_transport must be one of"),
    ({"input_topics": ["/front/image_raw", "/rear/image_raw"], "camera_names": ["front"]}, "camera_names"),
])
def test_bad_start_up_configuration_stops_the_node_with_a_clear_message(seg_node, parameters, message):
    """Also when the start fails after the model is loaded (the cameras come last): FATAL, and no traceback."""
    node = seg_node(wait=False, **parameters)
    assert node.wait_exit() == 1
    output = node.output()
    assert "FATAL" in output and message in output, output
    assert "Traceback" not in output, output


def test_missing_card_and_truncated_model_stop_the_node(seg_node, random_model, tmp_path):
    lonely = tmp_path / "lonely.onnx"
    lonely.write_bytes(random_model.read_bytes())
    node = seg_node(wait=False, model=str(lonely))
    assert node.wait_exit() == 1 and "model card" in node.output()
    truncated = tmp_path / "truncated"
    for suffix in (".json", ".safetensors"):
        truncated.with_suffix(suffix).write_bytes(random_model.with_suffix(suffix).read_bytes())
    truncated.with_suffix(".onnx").write_bytes(random_model.read_bytes()[:500])
    node = seg_node(wait=False, model=str(truncated.with_suffix(".onnx")))
    assert node.wait_exit() == 1 and "cannot load" in node.output()
    card = json.loads(random_model.with_suffix(".json").read_text())
    (tmp_path / card["files"]["torch"]).write_bytes(random_model.with_suffix(".safetensors").read_bytes())
    (tmp_path / "unknown.json").write_text(json.dumps({**card, "architecture": {"name": "segformer"}}))
    node = seg_node(wait=False, backend="torch", model=str(tmp_path / "unknown.json"))
    assert node.wait_exit() == 1 and "FATAL" in node.output() and "unknown architecture" in node.output()


def image_pixels(msg, channels: int = 3) -> np.ndarray:
    return np.frombuffer(msg.data, np.uint8).reshape(msg.height, msg.width, channels)


def test_run_time_settings_are_the_dynamic_parameters_checked_and_replaced_as_a_whole():
    assert set(RUNTIME_PARAMETERS) == {name for name, spec in PARAMETERS.items() if spec.dynamic}
    defaults = RuntimeSettings.from_values({name: PARAMETERS[name].default for name in RUNTIME_PARAMETERS})
    with pytest.raises(ParameterError, match=r"^overlay_alpha must be in .*; camera_timeout must be in"):
        defaults.updated({"overlay_alpha": 1.5, "camera_timeout": 0.0})
    changed = defaults.updated({"overlay_alpha": 1, "publish_mask": False})
    assert (changed.overlay_alpha, changed.publish_mask, defaults.overlay_alpha) == (1.0, False, 0.5)
    assert isinstance(changed.overlay_alpha, float)
    with pytest.raises(dataclasses.FrozenInstanceError):
        changed.overlay_alpha = 0.2  # a change is a new object, swapped in whole


def test_the_reliability_threshold_and_the_monitor_state_follow_the_settings_card_and_model():
    defaults = RuntimeSettings.from_values({name: PARAMETERS[name].default for name in RUNTIME_PARAMETERS})
    assert defaults.health_thresholds(0.58, True).reliability_threshold == 0.58
    assert defaults.reliability_monitor_state(0.58, True) == "on"
    explicit = defaults.updated({"reliability_threshold": 0.3, "latency_budget_ms": 40.0})
    assert explicit.health_thresholds(0.58, True).reliability_threshold == 0.3
    assert explicit.health_thresholds(None, True).latency_budget_ms == 40.0
    assert defaults.health_thresholds(None, True).reliability_threshold is None
    assert defaults.reliability_monitor_state(None, True).startswith("off: no threshold (set reliability_threshold")
    switched_off = defaults.updated({"reliability_monitor": False})
    assert switched_off.health_thresholds(0.58, True).reliability_threshold is None
    assert switched_off.reliability_monitor_state(0.58, True) == "off: reliability_monitor is false"
    assert explicit.health_thresholds(0.58, False).reliability_threshold is None
    assert explicit.reliability_monitor_state(0.58, False) == "off: the model gives labels only (no confidence)"


def test_a_change_of_several_run_time_parameters_applies_whole_or_not_at_all(ros, seg_node):
    node = seg_node(input_topics=["/atomic_cam/image_raw"], qos_reliability="reliable", overlay_alpha=0.0)
    outputs, publisher = connect(ros, node, "/atomic_cam/image_raw")
    rgb, double = scene(6), ParameterType.PARAMETER_DOUBLE
    refused = set_parameters_atomically(ros, node, parameter("overlay_alpha", 1.0, double),
                                        parameter("visualization_scale", 2.0, double))
    assert not refused.successful and "visualization_scale must be in" in refused.reason
    publisher.publish(make_image_msg(rgb, "rgb8", 1))
    np.testing.assert_array_equal(image_pixels(wait_stamp(outputs.overlay, 1)), rgb)  # alpha still 0, full size

    accepted = set_parameters_atomically(ros, node, parameter("overlay_alpha", 1.0, double),
                                         parameter("visualization_scale", 0.5, double))
    assert accepted.successful, accepted.reason
    publisher.publish(make_image_msg(rgb, "rgb8", 2))
    overlay, colors = wait_stamp(outputs.overlay, 2), wait_stamp(outputs.color_mask, 2)
    assert (overlay.height, overlay.width) == (colors.height, colors.width) == (HEIGHT // 2, WIDTH // 2)
    np.testing.assert_array_equal(image_pixels(overlay), image_pixels(colors))  # both changes in the same frame
    assert wait_stamp(outputs.mask, 2).width == WIDTH


STAGES = ("decode", "preprocess", "inference", "postprocess", "render", "publish")


def test_latency_times_rendering_apart_from_publishing_and_the_stages_make_up_the_total(ros, seg_node):
    node = seg_node(input_topics=["/stage_cam/image_raw"], qos_reliability="reliable")
    outputs, publisher = connect(ros, node, "/stage_cam/image_raw")

    def timings(ns: int) -> dict[str, float]:
        publisher.publish(make_image_msg(scene(ns, 240, 320), "rgb8", ns))
        values = diagnostic_values(wait_stamp(outputs.latency, ns).status[0])
        assert list(values) == [f"{key}_ms" for key in ("queue", *STAGES, "total", "age")] + [
            "confidence_score", "frames_lost", "batch_size"]
        return {key[:-3]: float(value) for key, value in values.items() if key.endswith("_ms")}

    rendered = timings(1)
    assert min(rendered.values()) >= 0.0 and rendered["render"] > 0.0
    stages = sum(rendered[stage] for stage in STAGES)
    assert stages <= rendered["total"] + 0.01  # each printed to 0.001 ms
    assert rendered["total"] - stages < max(2.0, 0.2 * rendered["total"]), rendered  # only bookkeeping between
    for name in ("publish_color_mask", "publish_overlay"):
        assert set_parameter(ros, node, name, False, ParameterType.PARAMETER_BOOL).successful
    unrendered = timings(2)
    assert unrendered["render"] < 0.1 < rendered["render"], (unrendered, rendered)


def test_frames_lost_in_transport_are_counted_per_camera_and_warn_with_the_profile_hint(ros, seg_node, diagnostics):
    """A best-effort 1920x1080 sender without the large-image profile (this test process: see conftest) to the
    node (with it): Fast DDS loses most frames whole and reports each loss to the node's subscription."""
    assert not os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE"), "the sender must run without the profile"
    node = seg_node(input_topics=["/lossy_cam/image_raw"], camera_timeout=600.0, diagnostics_period=0.5)
    outputs = Outputs(ros, node, names=("mask", "latency"))
    best_effort = ros.node.create_publisher(Image, "/lossy_cam/image_raw", qos_profile_sensor_data)
    small = ros.publisher(Image, "/lossy_cam/image_raw")
    ros.wait_until_matched(outputs.topics, [best_effort, small])
    hd = make_image_msg(scene(1, 1080, 1920), "rgb8", 1)
    for _ in range(40):
        best_effort.publish(hd)
        time.sleep(0.05)  # a 20 Hz camera (pacing the sender, not waiting for the node)
    warned = node_status(diagnostics, node, lambda s: "lost in transport" in s.message, timeout=30)
    assert warned.level == b"\x01", warned.message
    assert re.match(r"\d+ frame\(s\) lost in transport \(DDS loses images over 512 KB", warned.message)
    assert "FASTDDS_DEFAULT_PROFILES_FILE=" in warned.message and "fastdds_large_images.xml" in warned.message
    lost = int(diagnostic_values(warned)["frames_lost"])
    small.publish(make_image_msg(scene(2), "rgb8", 2))
    latency = diagnostic_values(wait_stamp(outputs.latency, 2).status[0])
    received = int(diagnostic_values(node_status(diagnostics, node))["frames_received"])
    assert lost >= 20 and int(latency["frames_lost"]) >= lost, (lost, latency["frames_lost"])
    assert int(latency["frames_lost"]) + received <= 41


def test_a_camera_whose_frames_keep_being_replaced_is_not_starved_by_one_in_lockstep_ahead_of_it():
    """Two cameras in lockstep, faster than the model: each serve goes to the camera that has waited longest
    since its first untaken frame, so both are served in turn (ordering by the newest frame's arrival served the
    camera a millisecond ahead every time)."""
    from types import SimpleNamespace

    from seg_node.ros.camera_health import CameraHealth
    from seg_node.ros.segmentation_node import Camera, SegNode

    cameras = [Camera(name, f"/{name}/image_raw", CameraHealth(0.0), outputs=None) for name in ("left", "right")]
    node = SimpleNamespace(cameras=cameras, batch_cameras=False, max_pixels=1 << 24, _running=True,
                           _wakeup=threading.Condition(), _now=lambda: 1.0)
    served = []
    rgb = np.zeros((8, 8, 3), np.uint8)
    for frame in range(12):
        for camera in cameras:  # both cameras deliver a new frame before the model finishes the last one
            SegNode._on_image(node, camera, make_image_msg(rgb, "rgb8", frame))
        (job,) = SegNode._take_frames(node)
        served.append(job.camera.name)
    assert served.count("left") == served.count("right") == 6, served


REFERENCE_CARDS = sorted(path.name for path in models_dir().glob("*.json")
                         if ModelCard.load(path).architecture["name"] in ("bisenetv2", "icnet"))


@pytest.mark.parametrize("card_name", REFERENCE_CARDS)
def test_the_shipped_reference_architectures_run_in_the_node_as_offline(ros, seg_node, card_name):
    """ICNet's and BiSeNetV2's cards over DDS: the mask of a CamVid frame is the offline pipeline's, pixel for
    pixel, and its confidence map is published."""
    card_path = models_dir() / card_name
    node = seg_node(model=str(card_path), input_topics=["/reference_cam/image_raw"], qos_reliability="reliable")
    outputs, publisher = connect(ros, node, "/reference_cam/image_raw", names=("mask", "confidence"))
    clip = open_dataset(CLIP, "test")
    frame = clip.load(clip.samples()[0])[0]
    ns = 1_700_000_000_000_000_000
    publisher.publish(make_image_msg(frame, "rgb8", ns))
    mask = wait_stamp(outputs.mask, ns)
    confidence = wait_stamp(outputs.confidence, ns)
    expected = SegmentationPipeline.from_model(card_path, backend="onnxruntime", device="cpu").segment(frame).mask
    got = np.frombuffer(mask.data, np.uint8).reshape(mask.height, mask.width)
    np.testing.assert_array_equal(got, expected)
    assert (confidence.height, confidence.width) == frame.shape[:2] and len(np.unique(expected)) > 3
