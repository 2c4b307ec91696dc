"""Reliability and safety of the running node: malformed input, overload, long runs, faults, replay, files.

Every test drives seg_node as ROS runs it: its own process, real DDS. Start-up faults covered elsewhere are
not repeated here: tests/test_node.py (missing model file, unknown backend, CUDA without CUDA, bad
parameters, missing card, truncated ONNX) and tests/test_pipeline.py (cards with missing fields or a bad
palette, cards that disagree with the model's classes or input size, a pickle in place of the weights).
"""

from __future__ import annotations

import ast
import itertools
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray
from onnx import helper, numpy_helper
from ros_harness import REPO, connect, make_image_msg
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CompressedImage, Image
from test_node import as_encoding, scene

from seg_node.core.image_codec import (
    RAW_ENCODINGS,
    ImageRejected,
    check_compressed,
    decode_compressed,
    decode_raw,
    encode_compressed,
    raw_pixels,
)
from seg_node.core.pipeline import SegmentationPipeline
from seg_node.ros.camera_health import ERROR, OK, STALE
from seg_node.ros.image_messages import image_message, stamp_ns
from seg_node.ros_tools.stress import StatusRecorder, StressLink, calibrate, overload, rss_mb, soak

NS_PER_S = 1_000_000_000
MAX_RSS_GROWTH_MB = 50.0


def stamped(msg, ns: int):
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(ns, NS_PER_S)
    return msg


def wait_mask(masks, ns: int, timeout: float = 20.0) -> np.ndarray:
    msg = masks.wait_for(1, timeout, lambda m: stamp_ns(m.header.stamp) == ns)[0]
    return np.frombuffer(msg.data, np.uint8).reshape(msg.height, msg.width)


# --- 1. malformed input -------------------------------------------------------------------------------
BAD_ENCODINGS = ("rgb16", "16UC1", "32FC1", "bayer_rggb8", "yuv420", "nv12", "RGB8", "rgb8 ", "", "mono16")
BAD_FORMATS = ("tiff", "bmp", "webp", "h264", "", "rgb8; tiff compressed bgr8", "jpeg2000", "gif")
RAW_MUTATIONS = ("encoding", "short_data", "long_data", "zero_dims", "odd_packed_width", "huge_dims",
                 "short_step", "long_step")
COMPRESSED_MUTATIONS = ("format", "random_bytes", "empty", "zero_dims", "huge_dims", "truncated", "garbled_body")


def valid_raw(rng) -> Image:
    """Any encoding, odd or even size, padded rows or not, either endianness flag.

    is_bigendian is irrelevant for the node's 8-bit encodings, so a big-endian rgb8 frame is valid and must
    be answered like any other."""
    encoding = str(rng.choice(list(RAW_ENCODINGS)))
    height, width = int(rng.integers(8, 64)), int(rng.integers(8, 96))
    if RAW_ENCODINGS[encoding][0] == 2:
        width += width % 2
    rgb = scene(int(rng.integers(1 << 30)), height, width)
    msg = make_image_msg(as_encoding(rgb, encoding), encoding, 0, row_padding=int(rng.choice([0, 0, 1, 16])))
    msg.is_bigendian = int(rng.integers(0, 2))
    return msg


def malformed_raw(rng) -> Image:
    """A valid frame with one field broken; the big-endian flag is random and changes nothing."""
    msg = valid_raw(rng)
    mutation = rng.choice(RAW_MUTATIONS)
    if mutation == "encoding":
        msg.encoding = str(rng.choice(BAD_ENCODINGS))
    elif mutation == "short_data":
        msg.data = bytes(msg.data)[:int(rng.integers(0, len(msg.data)))]
    elif mutation == "long_data":
        msg.data = bytes(msg.data) + rng.bytes(int(rng.integers(1, 4096)))
    elif mutation == "zero_dims":
        setattr(msg, str(rng.choice(["height", "width"])), 0)
    elif mutation == "odd_packed_width":
        msg.encoding = str(rng.choice(["yuv422", "yuv422_yuy2"]))
        msg.width = 2 * int(rng.integers(4, 40)) + 1
        msg.step = 2 * msg.width
        msg.data = rng.bytes(msg.step * msg.height)
    elif mutation == "huge_dims":
        msg.height, msg.width = (int(v) for v in rng.integers(4097, 1 << 32, 2))
    elif mutation == "short_step":
        msg.step = int(rng.integers(0, msg.width * RAW_ENCODINGS[msg.encoding][0]))
    else:  # long_step: the step promises more bytes than the data holds
        msg.step += int(rng.integers(1, 64))
    msg.is_bigendian = int(rng.integers(0, 2))
    return msg


def raw_verdict(msg) -> tuple[str | None, bool]:
    """(the codec's reason, or None for a valid image; whether it passes the subscription callback's check)."""
    try:
        raw_pixels(msg.encoding, msg.height, msg.width, msg.step, msg.data)
    except ImageRejected as exc:
        return exc.reason, False
    return None, True


def raw_expected(pipeline, msg) -> np.ndarray:
    decoded = decode_raw(msg.encoding, msg.height, msg.width, msg.step, msg.data)
    return pipeline.segment(decoded.pixels, decoded.channel_order).mask


def valid_compressed(rng) -> CompressedImage:
    kind = str(rng.choice(["jpeg", "png"]))
    rgb = scene(int(rng.integers(1 << 30)), int(rng.integers(8, 64)), int(rng.integers(8, 96)))
    fmt = str(rng.choice([kind, f"rgb8; {kind} compressed bgr8", kind.upper(), "jpg" if kind == "jpeg" else kind]))
    return CompressedImage(format=fmt, data=encode_compressed(rgb, "rgb", kind))


def header_end(data: bytes) -> int:
    """Bytes up to and including the image size: the PNG IHDR, or a JPEG's SOF0 marker segment start + 9."""
    return 24 if data.startswith(b"\x89PNG") else data.index(b"\xff\xc0") + 9


def with_size(data: bytes, height: int, width: int) -> bytes:
    """Rewrite the size in a PNG or JPEG header (the PNG CRC is left stale, as a broken camera would)."""
    if data.startswith(b"\x89PNG"):
        return data[:16] + width.to_bytes(4, "big") + height.to_bytes(4, "big") + data[24:]
    at = data.index(b"\xff\xc0") + 5
    return data[:at] + height.to_bytes(2, "big") + width.to_bytes(2, "big") + data[at + 4:]


def malformed_compressed(rng) -> CompressedImage:
    msg = valid_compressed(rng)
    data = bytes(msg.data)
    mutation = rng.choice(COMPRESSED_MUTATIONS)
    if mutation == "format":
        msg.format = str(rng.choice(BAD_FORMATS))
    elif mutation == "random_bytes":
        msg.data = rng.bytes(int(rng.integers(1, 4096)))
    elif mutation == "empty":
        msg.data = b""
    elif mutation == "zero_dims":
        msg.data = with_size(data, *rng.permutation([0, int(rng.integers(1, 64))]).tolist())
    elif mutation == "huge_dims":
        limit = (1 << 31) if data.startswith(b"\x89PNG") else (1 << 16)
        msg.data = with_size(data, int(rng.integers(4097, limit)), int(rng.integers(4097, limit)))
    elif mutation == "truncated":
        msg.data = data[:int(rng.integers(0, len(data)))]
    else:  # garbled_body: an intact header, then noise
        end = header_end(data)
        msg.data = data[:end] + rng.bytes(len(data) - end)
    return msg


def compressed_verdict(msg) -> tuple[str | None, bool]:
    """Like raw_verdict; a body that is broken behind a good header is only found by the decoder (worker)."""
    try:
        check_compressed(msg.format, msg.data)
    except ImageRejected as exc:
        return exc.reason, False
    try:
        decode_compressed(msg.format, msg.data)
    except ImageRejected as exc:
        return exc.reason, True
    return None, True


def compressed_expected(pipeline, msg) -> np.ndarray:
    decoded = decode_compressed(msg.format, msg.data)
    return pipeline.segment(decoded.pixels, decoded.channel_order).mask


def fuzz(ros, node, msg_type, topic, valid, malformed, verdict, expected, count, rng):
    """Publish `count` malformed messages with a valid frame every 20; return the expected rejections by
    reason, the valid frames sent and the node's RSS after the first valid frame and at the end.

    A message that passes the callback's check but not the decoder is parked for the worker, where the next
    good-looking message would replace it (a drop, not a rejection): before publishing such a message, wait
    until /diagnostics has counted every rejection so far."""
    statuses = StatusRecorder(ros, node.name)
    outputs, publisher = connect(ros, node, topic, msg_type, names=("mask",))
    masks = outputs.mask
    rejected, answered, rss = Counter(), 0, []
    worker_pending = False

    def settle():
        nonlocal worker_pending
        if worker_pending:
            total = str(sum(rejected.values()))
            statuses.first(lambda s: s.values["frames_rejected"] == total)
            worker_pending = False

    def send_valid():
        nonlocal answered
        settle()
        msg = stamped(valid(rng), 1000 + answered)
        publisher.publish(msg)
        np.testing.assert_array_equal(wait_mask(masks, 1000 + answered), expected(msg),
                                      err_msg=f"{msg_type.__name__} frame {answered}")
        answered += 1

    for index in range(count):
        if index % 20 == 0:
            send_valid()
            if index == 0:
                rss.append(rss_mb(node.process.pid))
        while (result := verdict(msg := malformed(rng)))[0] is None:
            pass  # libjpeg decodes some damaged bodies: those are images, not malformed messages
        reason, reaches_worker = result
        if reaches_worker:
            settle()
        publisher.publish(msg)
        rejected[reason] += 1
        worker_pending |= reaches_worker
    send_valid()
    final = statuses.after(time.perf_counter()).values
    rss.append(rss_mb(node.process.pid))
    return rejected, answered, final, rss


def test_fuzzed_malformed_images_are_rejected_by_reason_and_valid_frames_still_answered(
        ros, seg_node, pipeline):
    raw = seg_node(wait=False, suffix="raw", input_topics=["/fuzz_raw/image_raw"], qos_reliability="reliable",
                     qos_depth=100, diagnostics_period=0.2)
    compressed = seg_node(wait=False, suffix="compressed", input_topics=["/fuzz_comp/image_raw"],
                            input_transport="compressed", qos_reliability="reliable", qos_depth=100,
                            diagnostics_period=0.05)
    raw.wait_until_ready()
    compressed.wait_until_ready()
    rng = np.random.default_rng(20240601)
    runs = {
        "raw": fuzz(ros, raw, Image, "/fuzz_raw/image_raw", valid_raw, malformed_raw, raw_verdict,
                    lambda msg: raw_expected(pipeline, msg), 520, rng),
        "compressed": fuzz(ros, compressed, CompressedImage, "/fuzz_comp/image_raw/compressed", valid_compressed,
                           malformed_compressed, compressed_verdict, lambda msg: compressed_expected(pipeline, msg),
                           520, rng),
    }
    assert sum(sum(rejected.values()) for rejected, *_ in runs.values()) >= 1000
    for (name, (rejected, answered, final, rss)), node in zip(runs.items(), (raw, compressed)):
        assert node.process.poll() is None, f"the {name} node died:\n{node.output()}"
        counted = {key[len("rejected_"):]: int(value) for key, value in final.items() if key.startswith("rejected_")}
        assert counted == dict(rejected), name
        assert int(final["frames_rejected"]) == sum(rejected.values()), name
        assert int(final["frames_processed"]) == answered, name
        assert final["frames_dropped"] == "0" and final["frames_failed"] == "0", name
        assert int(final["frames_received"]) == answered + sum(rejected.values()), f"{name}: lost in transport"
        assert rss[-1] - rss[0] < MAX_RSS_GROWTH_MB, f"{name} node RSS {rss[0]:.1f} -> {rss[-1]:.1f} MiB"
    assert {"unknown_encoding", "data_size", "zero_size", "odd_width", "too_large", "bad_step"} <= set(runs["raw"][0])
    assert {"unknown_format", "corrupt_compressed", "zero_size", "too_large"} <= set(runs["compressed"][0])


# --- 2. and 3. overload and soak ------------------------------------------------------------------------
def test_overload_serves_the_newest_frames_reports_drops_and_keeps_memory_bounded(ros, seg_node):
    node = seg_node(input_topics=["/overload_cam/image_raw"], qos_reliability="reliable", diagnostics_period=0.5,
                    latency_budget_ms=5000.0)
    link = StressLink(ros, node, "/overload_cam/image_raw")
    messages = [image_message(scene(seed, 240, 320), "rgb8") for seed in range(8)]
    unloaded = calibrate(link, messages, 20)
    rate_hz = 3e3 / float(np.median([v["total_ms"] for v in unloaded]))
    run = overload(link, messages, rate_hz, 20.0, progress=False)

    received, processed = int(run.final["frames_received"]), int(run.final["frames_processed"])
    dropped = int(run.final["frames_dropped"])
    assert run.final["frames_failed"] == "0" and run.final["frames_rejected"] == "0"
    assert dropped > 0, f"{len(run.stamps)} frames at {rate_hz:.0f} Hz caused no drop"
    assert processed + dropped == received
    assert max(float(s.values["drop_rate"]) for s in link.diagnostics.statuses) > 0
    published = set(run.stamps)
    served = [s for s in link.masks.order if s in published]
    assert served == sorted(served) and served[-1] == run.stamps[-1], "masks must follow the newest frames"
    total_ms = [link.latency.values[s]["total_ms"] for s in served if s in link.latency.values]
    ages = run.ages_s(link)
    bound = 3e-3 * max(total_ms) + 0.5
    assert max(ages) < bound, (f"mask age up to {max(ages):.3f} s, bound {bound:.3f} s "
                               f"(processing up to {max(total_ms):.1f} ms)")
    assert max(run.rss) - run.rss[0] < MAX_RSS_GROWTH_MB, f"RSS {run.rss[0]:.1f} -> peak {max(run.rss):.1f} MiB"


def test_soak_answers_every_frame_without_errors_drift_or_growth(ros, seg_node):
    node = seg_node(input_topics=["/soak_cam/image_raw"], qos_reliability="reliable", diagnostics_period=0.5)
    link = StressLink(ros, node, "/soak_cam/image_raw")
    messages = [image_message(scene(seed, 120, 160), "rgb8") for seed in range(8)]
    calibrate(link, messages, 10)
    frames = 1000
    run = soak(link, messages, frames, progress=False)

    assert len(run.answered()) == frames, f"{frames - len(run.answered())} frames got no mask"
    assert run.final["frames_dropped"] == "0" and run.final["frames_failed"] == "0"
    assert run.final["frames_rejected"] == "0"
    assert run.final["frames_processed"] == run.final["frames_received"]
    total = run.node_ms(link)
    first, last = float(np.median(total[:200])), float(np.median(total[-200:]))
    assert last < 3 * first + 20.0, f"median processing time drifted from {first:.1f} to {last:.1f} ms"
    rss = [mb for _, mb in run.rss]
    assert rss[-1] - rss[0] < MAX_RSS_GROWTH_MB, f"RSS {rss[0]:.1f} -> {rss[-1]:.1f} MiB"


# --- 4. faults while running --------------------------------------------------------------------------
def guarded_model(random_model, folder, name, guard) -> Path:
    """The random model with its output renamed `unguarded_logits` and `guard(graph, output)` adding the nodes
    that compute the real output from it, saved as folder/name.onnx with its card beside it."""
    model = onnx.load(str(random_model))
    graph = model.graph
    output = graph.output[0].name
    for node in graph.node:
        for index, produced in enumerate(node.output):
            if produced == output:
                node.output[index] = "unguarded_logits"
    guard(graph, output)
    onnx.checker.check_model(model)
    onnx.save(model, str(folder / f"{name}.onnx"))
    card = json.loads(random_model.with_suffix(".json").read_text())
    card["files"] = {"onnx": f"{name}.onnx"}
    (folder / f"{name}.json").write_text(json.dumps(card))
    return folder / f"{name}.onnx"


def failing_model(random_model, folder):
    """The random model behind a guard that makes ONNX Runtime fail at run time on a very bright image:
    when every input value is near white, Reshape gets an impossible target shape. A real model error, no mock."""
    return guarded_model(random_model, folder, "failing", reshape_guard)


def reshape_guard(graph, output) -> None:
    shape = [d.dim_value for d in graph.output[0].type.tensor_type.shape.dim]
    graph.initializer.extend([
        numpy_helper.from_array(np.array(shape, np.int64), "guard_shape"),
        numpy_helper.from_array(np.array(shape[:-1] + [shape[-1] + 1], np.int64), "guard_impossible_shape"),
        numpy_helper.from_array(np.array(0.9, np.float32), "guard_threshold"),  # normalized: pixel ~242
    ])
    graph.node.extend([
        helper.make_node("ReduceMin", [graph.input[0].name], ["guard_darkest"], keepdims=0),
        helper.make_node("Greater", ["guard_darkest", "guard_threshold"], ["guard_all_bright"]),
        helper.make_node("Where", ["guard_all_bright", "guard_impossible_shape", "guard_shape"], ["guard_target"]),
        helper.make_node("Reshape", ["unguarded_logits", "guard_target"], [output], name="bright_image_guard"),
    ])


def serving_first_frame(ros, seg_node, pipeline, model, topic: str, **parameters):
    """A node on `model` (reliable, diagnostics at 5 Hz) that has answered one good frame correctly and said OK:
    (node, its status recorder, its mask inbox, the camera publisher)."""
    node = seg_node(model=str(model), input_topics=[topic], qos_reliability="reliable", diagnostics_period=0.2,
                    latency_budget_ms=5000.0, **parameters)
    statuses = StatusRecorder(ros, node.name)
    outputs, publisher = connect(ros, node, topic, names=("mask",))
    publisher.publish(make_image_msg(scene(1), "rgb8", 1))
    np.testing.assert_array_equal(wait_mask(outputs.mask, 1), pipeline.segment(scene(1)).mask)
    assert statuses.first(lambda s: s.values["frames_processed"] == "1").level == OK
    return node, statuses, outputs.mask, publisher


def test_backend_failure_is_logged_counted_error_while_it_lasts_then_recovers(ros, seg_node, random_model,
                                                                           pipeline, tmp_path):
    model = failing_model(random_model, tmp_path)
    bright = np.full((60, 80, 3), 250, np.uint8)
    with pytest.raises(Exception, match="bright_image_guard"):
        SegmentationPipeline.from_model(model, backend="onnxruntime", device="cpu").segment(bright)
    node, statuses, masks, publisher = serving_first_frame(ros, seg_node, pipeline, model, "/failing_cam/image_raw")

    failing_from = time.perf_counter()
    for index in range(5):
        publisher.publish(make_image_msg(bright, "rgb8", 100 + index))
        statuses.first(lambda s, failed=str(index + 1): s.values["frames_failed"] == failed)
    error = statuses.first(lambda s: s.level == ERROR, since=failing_from)
    assert "frame(s) failed:" in error.message and "bright_image_guard" in error.message, error.message

    for index in range(3):
        publisher.publish(make_image_msg(scene(2 + index), "rgb8", 200 + index))
        np.testing.assert_array_equal(wait_mask(masks, 200 + index), pipeline.segment(scene(2 + index)).mask)
    recovered = statuses.after(time.perf_counter())
    assert recovered.level == OK, recovered.message
    assert recovered.values["frames_failed"] == "5" and recovered.values["frames_processed"] == "4"
    failed_stamps = [m for m in masks.messages if 100 <= stamp_ns(m.header.stamp) < 200]
    assert not failed_stamps, "a failed frame must not get a mask"

    history = [s for s in statuses.statuses if s.arrived > failing_from and s.arrived <= recovered.arrived]
    for before, after in itertools.pairwise(history):
        if int(after.values["frames_failed"]) > int(before.values["frames_failed"]):
            assert after.level == ERROR, f"a period with failures reported {after.level}: {after.message}"
    assert "frame failed" in node.output() and "bright_image_guard" in node.output()


def hanging_model(random_model, folder):
    """The random model behind an ONNX Loop that, on a very bright image, runs 10^15 identity iterations before
    it answers: a real backend that hangs inside session.run (it can only be stopped by cancelling the run)."""
    return guarded_model(random_model, folder, "hanging", loop_guard)


def loop_guard(graph, output) -> None:
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Identity", ["carried_in"], ["carried_out"])], "spin",
        [helper.make_tensor_value_info("iteration", onnx.TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", onnx.TensorProto.BOOL, []),
         helper.make_tensor_value_info("carried_in", onnx.TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("cond_out", onnx.TensorProto.BOOL, []),
         helper.make_tensor_value_info("carried_out", onnx.TensorProto.FLOAT, None)])
    graph.initializer.extend([
        numpy_helper.from_array(np.array(0.9, np.float32), "hang_threshold"),  # normalized: pixel ~242
        numpy_helper.from_array(np.array(10**15, np.int64), "hang_iterations"),
        numpy_helper.from_array(np.array(True), "hang_true"),
    ])
    graph.node.extend([
        helper.make_node("ReduceMin", [graph.input[0].name], ["hang_darkest"], keepdims=0),
        helper.make_node("Greater", ["hang_darkest", "hang_threshold"], ["hang_all_bright"]),
        helper.make_node("Cast", ["hang_all_bright"], ["hang_bright"], to=onnx.TensorProto.INT64),
        helper.make_node("Mul", ["hang_bright", "hang_iterations"], ["hang_trips"]),
        helper.make_node("Loop", ["hang_trips", "hang_true", "unguarded_logits"], [output], body=body,
                         name="bright_image_hang"),
    ])


def test_a_hung_backend_turns_diagnostics_error_and_ctrl_c_still_exits_cleanly(ros, seg_node, random_model,
                                                                             pipeline, tmp_path):
    """Before the fix the level stayed OK (p95 of no frames is NaN, and NaN > budget is false)."""
    model = hanging_model(random_model, tmp_path)
    node, statuses, masks, publisher = serving_first_frame(ros, seg_node, pipeline, model, "/hung_cam/image_raw",
                                                           output_timeout=1.0)

    hung_from = time.perf_counter()
    bright = np.full((60, 80, 3), 250, np.uint8)
    for index in range(2, 8):  # the camera keeps sending; the worker hangs on the first it takes
        publisher.publish(make_image_msg(bright, "rgb8", index))
        statuses.first(lambda s, received=str(index): s.values["frames_received"] == received)
    error = statuses.first(lambda s: s.level == ERROR, since=hung_from)
    assert "inference stalled" in error.message and error.values["frames_processed"] == "1", error.message
    assert float(error.values["seconds_since_last_mask"]) > 1.0 and error.values["worker_alive"] == "true"
    assert int(error.values["frames_waiting"]) >= 1 and error.values["frames_failed"] == "0"
    assert not [m for m in masks.messages if stamp_ns(m.header.stamp) > 1]

    status = node.stop()  # the backend is mid-call: cancelled, joined, exit 0
    log = node.log_path.read_text()
    assert status == 0 and "Traceback" not in log and "frame failed" not in log, log
    assert "cancelling it" in log


def test_a_camera_that_stops_goes_stale_after_the_timeout_and_recovers_when_it_resumes(ros, seg_node):
    node = seg_node(input_topics=["/pausing_cam/image_raw"], qos_reliability="reliable", camera_timeout=0.5,
                    diagnostics_period=0.2, latency_budget_ms=5000.0)
    statuses = StatusRecorder(ros, node.name)
    outputs, publisher = connect(ros, node, "/pausing_cam/image_raw", names=("mask",))
    masks = outputs.mask

    def send(stamps):
        for ns in stamps:
            publisher.publish(make_image_msg(scene(ns), "rgb8", ns))
            wait_mask(masks, ns)
        return time.perf_counter()

    sent = send(range(1, 4))
    running = statuses.first(lambda s: s.level == OK and s.values["frames_received"] == "3", since=sent)
    stale = statuses.first(lambda s: s.level == STALE, since=running.arrived)
    assert stale.values["frames_received"] == "3" and "no image for" in stale.message
    assert float(stale.values["seconds_since_last_image"]) >= 0.5  # over the timeout, printed to 2 decimals
    assert stale.arrived - sent < 0.5 + 5.0, "STALE must follow the timeout, not minutes later"

    resumed = send(range(4, 7))
    back = statuses.first(lambda s: s.level == OK, since=resumed)
    assert back.values["frames_received"] == "6"
    assert float(back.values["seconds_since_last_image"]) <= 0.5  # within the timeout, printed to 2 decimals


# --- 6. diagnostics on replay (sim time) ----------------------------------------------------------------
def test_with_sim_time_ages_rates_and_stamps_follow_the_bag_clock(ros, seg_node):
    """A bag from 2009 replayed with its /clock: ages, rates and stamps are bag time, from the first tick on,
    and stay sane when the bag loops back to its start."""
    node = seg_node(input_topics=["/replay_cam/image_raw"], qos_reliability="reliable", use_sim_time=True,
                    diagnostics_period=1.0, camera_timeout=5.0, latency_budget_ms=5000.0)
    statuses = StatusRecorder(ros, node.name)
    outputs, publisher = connect(ros, node, "/replay_cam/image_raw", names=("mask",))
    masks = outputs.mask
    latency = ros.subscribe(DiagnosticArray, node.topic("latency"))
    clock = ros.publisher(Clock, "/clock")
    ros.wait_for_subscribers(clock)
    bag_start = 1_234_567_890 * NS_PER_S  # February 2009
    frames_per_second, age_ns = 4, 50_000_000

    def play(second: int, ticks: bool = True, lap: int = 0):
        """Set the bag clock to `second`, wait for the diagnostics tick it causes, then send that second's
        frames (stamped a little before the clock, a few ns apart per lap of the bag so that every frame
        is told apart) and check each one's age in ~/latency: an age of 50 ms also proves the node has taken
        this clock."""
        now = bag_start + second * NS_PER_S
        ticked = time.perf_counter()
        clock.publish(Clock(clock=Time(sec=now // NS_PER_S, nanosec=now % NS_PER_S)))
        tick = statuses.first(lambda s: s.stamp_ns == now, since=ticked) if ticks else None
        for index in range(frames_per_second):
            ns = now - age_ns - index - 100 * lap
            publisher.publish(make_image_msg(scene(index), "rgb8", ns))
            wait_mask(masks, ns)
            values = {kv.key: float(kv.value) for kv in latency.wait_for(
                1, 20.0, lambda m, sent=ns: stamp_ns(m.header.stamp) == sent)[0].status[0].values}
            assert values["age_ms"] == pytest.approx((now - ns) / 1e6, abs=1.0)
        return tick

    early = bag_start - NS_PER_S  # a frame before the first /clock: the node's clock still reads 0
    publisher.publish(make_image_msg(scene(9), "rgb8", early))
    wait_mask(masks, early)
    early_latency = latency.wait_for(1, 20.0, lambda m: stamp_ns(m.header.stamp) == early)[0]
    early_age = next(kv.value for kv in early_latency.status[0].values if kv.key == "age_ms")
    assert early_age == "nan", f"an age against a clock that has not started: {early_age} ms"

    first = play(0)
    assert first.level == OK, f"the first tick on the bag clock: {first.message}"
    assert float(first.values["seconds_since_last_image"]) == 0.0
    for second in range(1, 4):  # each tick covers the bag second before it
        tick = play(second)
        assert tick.level == OK, tick.message
        assert float(tick.values["input_rate_hz"]) == pytest.approx(frames_per_second, abs=0.05)
        assert float(tick.values["output_rate_hz"]) == pytest.approx(frames_per_second, abs=0.05)
        assert float(tick.values["age_p50_ms"]) == pytest.approx(age_ns / 1e6 + 1.5e-6, abs=0.5)
        assert 0.9 <= float(tick.values["seconds_since_last_image"]) <= 1.0

    play(0, ticks=False, lap=1)  # the bag loops: its clock goes back, the timer restarts and ticks a period later
    looped = play(1, lap=1)
    assert looped.level == OK and float(looped.values["input_rate_hz"]) <= frames_per_second
    assert 0.0 <= float(looped.values["seconds_since_last_image"]) <= 1.0
    again = play(2, lap=1)
    assert float(again.values["input_rate_hz"]) == pytest.approx(frames_per_second, abs=0.05)
    assert int(again.values["frames_received"]) == 1 + 6 * frames_per_second


# --- 5. file safety ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend, replaced", [("onnxruntime", "onnx"), ("torch", "safetensors")])
def test_a_crafted_pickle_in_place_of_the_model_stops_the_node_without_running(
        seg_node, random_model, tmp_path, crafted_pickle, backend, replaced):
    payload, marker = crafted_pickle
    for suffix in ("onnx", "safetensors"):
        data = payload if suffix == replaced else random_model.with_suffix(f".{suffix}").read_bytes()
        (tmp_path / f"m.{suffix}").write_bytes(data)
    card = json.loads(random_model.with_suffix(".json").read_text())
    card["files"] = {"onnx": "m.onnx", "torch": "m.safetensors"}
    (tmp_path / "m.json").write_text(json.dumps(card))
    node = seg_node(wait=False, model=str(tmp_path / "m.json"), backend=backend, device="cpu")
    assert node.wait_exit() == 1
    assert "FATAL" in node.output() and "cannot load the model" in node.output(), node.output()
    assert not marker.exists(), "the pickle was executed"


def dotted(node) -> str:
    """`torch.load` for the expression torch.load, '' for anything that is not a plain dotted name."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = dotted(node.value)
        return f"{base}.{node.attr}" if base else ""
    return ""


UNPICKLING_MODULES = {"pickle", "_pickle", "cPickle", "dill", "joblib", "cloudpickle", "shelve", "marshal"}


def scan_loads(source: str) -> tuple[list[str], int]:
    """(calls in `source` that could unpickle arbitrary objects, number of torch.load(weights_only=True) calls).

    Unsafe: torch.load without weights_only=True, any use of a pickling module, numpy loads that allow pickles."""
    found, safe = [], 0
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if a.name.split(".")[0] in UNPICKLING_MODULES]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] in UNPICKLING_MODULES or (
                    node.module == "torch" and any(a.name == "load" for a in node.names)):
                found.append(f"from {node.module} import ...")
        elif isinstance(node, ast.Call):
            name = dotted(node.func)
            keywords = {k.arg: k.value for k in node.keywords}
            if name == "torch.load":
                weights_only = keywords.get("weights_only")
                if isinstance(weights_only, ast.Constant) and weights_only.value is True:
                    safe += 1
                else:
                    found.append(f"line {node.lineno}: torch.load without weights_only=True")
            allow_pickle = keywords.get("allow_pickle")
            if name in ("np.load", "numpy.load") and allow_pickle is not None and not (
                    isinstance(allow_pickle, ast.Constant) and allow_pickle.value is False):
                found.append(f"line {node.lineno}: {name} with allow_pickle")
            if name.endswith(("read_pickle", "Unpickler")):
                found.append(f"line {node.lineno}: {name}")
    return found, safe


def test_no_code_path_unpickles_arbitrary_objects():
    bad = ("import torch\ntorch.load(f)\ntorch.load(f, weights_only=False)\ntorch.load(f, weights_only=True)\n"
           "import pickle\nfrom joblib import load\nnp.load(p, allow_pickle=True)\nfrom torch import load\n")
    found, safe = scan_loads(bad)
    assert sorted(found) == sorted([
        "line 2: torch.load without weights_only=True", "line 3: torch.load without weights_only=True",
        "import pickle", "from joblib import ...", "line 7: np.load with allow_pickle", "from torch import ..."])
    assert safe == 1
    scans = {str(p.relative_to(REPO)): scan_loads(p.read_text()) for p in sorted((REPO / "seg_node").rglob("*.py"))}
    assert {path: found for path, (found, _) in scans.items() if found} == {}
    assert sum(safe for _, safe in scans.values()) >= 4, "the scan must see the package's torch.load calls"
