"""seg_node as ROS runs it: a separate process, real DDS, real publishers and subscribers."""

from __future__ import annotations

import json
import re
import threading
import time

import cv2
import numpy as np
import onnxruntime
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
from ros_harness import Outputs, connect, diagnostic_values, make_image_msg, wait_until_matched
from sensor_msgs.msg import CompressedImage, Image

from seg_node.core.image_codec import decode_raw, encode_compressed
from seg_node.ros.image_messages import stamp_ns

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
    wait_until_matched(ros, front.topics + rear.topics, [pub_front, pub_rear])
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
    for index in range(count):
        publisher.publish(make_image_msg(big, "rgb8", index + 1))
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
    for index, (reason, make_bad) in enumerate(BAD_IMAGES.items()):
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


def set_parameter(ros, node, name, value, kind):
    client = ros.node.create_client(SetParameters, f"/{node.name}/set_parameters")
    assert client.wait_for_service(timeout_sec=20)
    field = {ParameterType.PARAMETER_DOUBLE: "double_value", ParameterType.PARAMETER_BOOL: "bool_value",
             ParameterType.PARAMETER_STRING: "string_value"}[kind]
    parameter = Parameter(name=name, value=ParameterValue(type=kind, **{field: value}))
    request = SetParameters.Request(parameters=[parameter])
    future = client.call_async(request)
    answered = threading.Event()
    future.add_done_callback(lambda _: answered.set())
    assert answered.wait(20), f"no answer from /{node.name}/set_parameters in 20 s"
    ros.node.destroy_client(client)
    return future.result().results[0]


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
])
def test_bad_start_up_configuration_stops_the_node_with_a_clear_message(seg_node, parameters, message):
    node = seg_node(wait=False, **parameters)
    assert node.wait_exit() == 1
    output = node.output()
    assert "FATAL" in output and message in output, output


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
