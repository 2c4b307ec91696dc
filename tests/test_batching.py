"""Several cameras' frames in one inference (batch_cameras): the masks of one-by-one inference, a lone camera's frame
never held back, and one by one where batching is off (CPU by default)."""

from __future__ import annotations

import numpy as np
import pytest
from ros_harness import Outputs, diagnostic_values, make_image_msg
from sensor_msgs.msg import Image
from test_node import scene, wait_stamp

from seg_node.core.pipeline import SegmentationPipeline
from seg_node.ros.node_parameters import batches_cameras, validate

CAMERAS = ("left", "right")
#: two cameras' frames of different sizes, so that swapped outputs would show
FRAMES = (scene(1, 60, 80), scene(2, 96, 128))
#: mono8 noise: under Fast DDS's 512 KB shared-memory segment, so it arrives at once, and class boundaries
#: everywhere, so its full-size mask keeps the worker busy for tens of milliseconds while later frames arrive
BUSY_FRAME = np.random.default_rng(0).integers(0, 256, (480, 640), np.uint8)
ATTEMPTS = 10


def test_auto_batches_on_gpu_devices_with_a_model_that_takes_a_batch_and_never_on_cpu():
    assert batches_cameras("auto", "cuda", True) and batches_cameras("auto", "cuda:1", True)
    assert batches_cameras("auto", "tensorrt", True)
    assert not batches_cameras("auto", "cpu", True), "measured on CPU: batching does not pay there"
    assert not batches_cameras("auto", "cuda", False), "a graph with a fixed batch of one runs frame by frame"
    assert batches_cameras("always", "cpu", False) and not batches_cameras("never", "cuda", True)
    assert validate("batch_cameras", "always") is None
    assert "must be one of ['auto', 'always', 'never']" in validate("batch_cameras", "on")


def test_one_call_for_several_frames_gives_one_by_one_masks_and_each_frame_the_batch_inference_time(
        dynamic_batch_model):
    """What a camera's ~/latency reports from a batch: the call's preprocessing and inference, its own
    postprocessing, and a total that includes the postprocessing of the frames before it."""
    pipeline = SegmentationPipeline.from_model(dynamic_batch_model, device="cpu")
    images = [*FRAMES, FRAMES[0][..., ::-1]]
    results = pipeline.segment_batch(images, ["rgb", "rgb", "bgr"])
    for result, image, order in zip(results, images, ["rgb", "rgb", "bgr"]):
        np.testing.assert_array_equal(result.mask, pipeline.segment(image, order).mask)
    assert len({(r.timings_ms["preprocess"], r.timings_ms["inference"]) for r in results}) == 1
    totals = [r.timings_ms["total"] for r in results]
    assert totals == sorted(totals)
    assert totals[-1] >= results[0].timings_ms["inference"] + sum(r.timings_ms["postprocess"] for r in results)


def mask_of(msg) -> np.ndarray:
    return np.frombuffer(msg.data, np.uint8).reshape(msg.height, msg.width)


def two_camera_node(ros, seg_node, batch_cameras: str, model):
    """(node, [left, right] Outputs, [left, right] publishers), matched."""
    node = seg_node(input_topics=[f"/{name}_cam/image_raw" for name in CAMERAS], camera_names=list(CAMERAS),
                    qos_reliability="reliable", batch_cameras=batch_cameras, model=str(model), suffix="two")
    outputs = [Outputs(ros, node, f"{name}/") for name in CAMERAS]
    publishers = [ros.publisher(Image, f"/{name}_cam/image_raw") for name in CAMERAS]
    ros.wait_until_matched([topic for o in outputs for topic in o.topics], publishers)
    return node, outputs, publishers


def frames_sent_one_at_a_time(outputs, publishers) -> list[tuple]:
    """FRAMES[i] on camera i (stamp i + 1), each sent once the one before has its ~/latency: frames that never wait
    together. [(~/latency values, mask message)] of each."""
    sent = []
    for index, (out, publisher, frame) in enumerate(zip(outputs, publishers, FRAMES)):
        publisher.publish(make_image_msg(frame, "rgb8", index + 1, frame_id=CAMERAS[index]))
        sent.append((diagnostic_values(wait_stamp(out.latency, index + 1).status[0]), wait_stamp(out.mask, index + 1)))
    return sent


def frames_sent_while_busy(outputs, publishers, stamp: int) -> list[tuple]:
    """Send a large frame on each camera, then FRAMES[i] on camera i (stamp + i, frame_id the camera's name): each
    small frame arrives after its camera's large one (one publisher's messages arrive in order), mostly while the
    worker is busy with a large frame. [(~/latency values, mask message)] of each camera's small frame."""
    for index, publisher in enumerate(publishers):
        publisher.publish(make_image_msg(BUSY_FRAME, "mono8", stamp - 1 - index))
    for index, (publisher, frame) in enumerate(zip(publishers, FRAMES)):
        publisher.publish(make_image_msg(frame, "rgb8", stamp + index, frame_id=CAMERAS[index]))
    return [(diagnostic_values(wait_stamp(out.latency, stamp + index).status[0]), wait_stamp(out.mask, stamp + index))
            for index, out in enumerate(outputs)]


def waited_together(one: dict, other: dict) -> bool:
    """Whether the frame served second queued through all of the processing of the one served first (values
    printed to 0.001 ms): it was waiting when the worker took that one, or came within the moment between two
    frames."""
    pairs = ((one, other), (other, one))
    return any(float(second["queue_ms"]) + 0.01 >= float(first["total_ms"]) for first, second in pairs)


def test_frames_waiting_from_two_cameras_go_through_one_inference_with_a_lone_cameras_masks(
        ros, seg_node, dynamic_batch_model):
    lone = seg_node(input_topics=["/lone_cam/image_raw"], qos_reliability="reliable", batch_cameras="always",
                    model=str(dynamic_batch_model))
    lone_outputs, lone_publisher = Outputs(ros, lone), ros.publisher(Image, "/lone_cam/image_raw")
    ros.wait_until_matched(lone_outputs.topics, [lone_publisher])
    expected = []
    for stamp, frame in enumerate(FRAMES, 1):  # a lone camera: a batch of one, frame after frame
        lone_publisher.publish(make_image_msg(frame, "rgb8", stamp))
        expected.append(mask_of(wait_stamp(lone_outputs.mask, stamp)))
        assert diagnostic_values(wait_stamp(lone_outputs.latency, stamp).status[0])["batch_size"] == "1"

    _, outputs, publishers = two_camera_node(ros, seg_node, "always", dynamic_batch_model)
    for (values, mask), lone_mask in zip(frames_sent_one_at_a_time(outputs, publishers), expected):
        assert values["batch_size"] == "1", "a frame while the other camera is silent: served alone, at once"
        np.testing.assert_array_equal(mask_of(mask), lone_mask)
    for attempt in range(ATTEMPTS):
        (first, first_mask), (second, second_mask) = frames_sent_while_busy(outputs, publishers, 100 * attempt + 10)
        if first["batch_size"] == second["batch_size"] == "2":
            break
    else:
        pytest.fail(f"the two cameras' frames were never segmented together in {ATTEMPTS} attempts")
    for mask, lone_mask, camera in zip((first_mask, second_mask), expected, CAMERAS):
        assert mask.header.frame_id == camera
        np.testing.assert_array_equal(mask_of(mask), lone_mask)
    assert first["inference_ms"] == second["inference_ms"], "one inference, reported for both frames"


@pytest.mark.parametrize("batch_cameras", ["never", "auto"])
def test_without_batching_frames_waiting_from_two_cameras_go_one_by_one(
        ros, seg_node, dynamic_batch_model, batch_cameras):
    """`never`, and `auto` on CPU: each frame alone (batch_size 1), even when both wait."""
    _, outputs, publishers = two_camera_node(ros, seg_node, batch_cameras, dynamic_batch_model)
    pipeline = SegmentationPipeline.from_model(dynamic_batch_model, device="cpu")
    assert [values["batch_size"] for values, _ in frames_sent_one_at_a_time(outputs, publishers)] == ["1", "1"]
    for attempt in range(ATTEMPTS):
        (first, first_mask), (second, second_mask) = frames_sent_while_busy(outputs, publishers, 100 * attempt + 10)
        assert first["batch_size"] == second["batch_size"] == "1"
        if waited_together(first, second):
            break
    else:
        pytest.fail(f"the two frames never waited together in {ATTEMPTS} attempts")
    for mask, frame in zip((first_mask, second_mask), FRAMES):
        np.testing.assert_array_equal(mask_of(mask), pipeline.segment(frame).mask)
