"""HD cameras: best-effort delivery with the shipped Fast DDS profile, the boundary upsampling, one-copy output
messages and the reduced-size visualisation outputs."""

from __future__ import annotations

import array
import threading

import cv2
import numpy as np
import pytest
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
from ros_harness import make_image_msg
from sensor_msgs.msg import Image

from seg_node.core.pipeline import SegmentationPipeline
from seg_node.core.postprocess import colorize, logits_to_mask, palette_lut
from seg_node.ros.image_messages import image_message, stamp_ns
from seg_node.ros_tools.benchmark import NODE_STAGES, run_benchmark
from seg_node.ros_tools.delivery import measure_delivery
from seg_node.toolchain.evaluation.timing import load_frames


def test_best_effort_hd_frames_reach_the_node_with_the_shipped_profile(random_model, tmp_path):
    """1280x720 bgr8 (2.7 MB) at 30 Hz, best effort both ends: without the profile most frames are lost whole
    (Fast DDS's 512 KB shared-memory segment sends them as UDP fragments); with it at least 99% arrive."""
    result = measure_delivery(1280, 720, rate=30.0, seconds=2.5, parameters={"model": str(random_model)},
                              log_dir=tmp_path)
    assert result["sent"] == 75 and result["frame_bytes"] == 1280 * 720 * 3
    assert result["received"] >= 0.99 * result["sent"], result


def test_benchmark_hd_times_every_node_stage_with_the_mask_alone_and_every_output(random_model):
    """seg-benchmark hd on a real node: each ~/latency stage (render and publish apart) and publish-to-mask, per
    size and subscription set, beside the model alone."""
    results = run_benchmark(["hd", "--model", str(random_model), "--sizes", "160x120,320x240", "--frames", "2",
                             "--warmup", "1"])
    assert results["model_only"]["median"] > 0
    assert list(results["node"]) == ["160x120, mask", "320x240, mask", "160x120, all", "320x240, all"]
    for label, stages in results["node"].items():
        assert set(stages) == {*NODE_STAGES, "mask_received"} and {"render", "publish"} <= set(stages), label
        assert all(summary["median"] >= 0 for summary in stages.values()), label
        assert stages["total"]["median"] >= stages["inference"]["median"] > 0, label
        assert stages["mask_received"]["median"] >= stages["inference"]["median"], label


@pytest.fixture(scope="module")
def network_logits():
    """The shipped model's logits (network size) on a committed CamVid frame."""
    pipeline = SegmentationPipeline.from_model(None, threads=2)
    return pipeline.logits(load_frames(None, "test", 1)[0])


@pytest.mark.parametrize("height, width", [(720, 960), (1080, 1920), (720, 1280), (1440, 1920), (481, 643)])
def test_boundary_upsampling_gives_the_mask_of_full_bilinear_logits(network_logits, height, width):
    full = logits_to_mask(network_logits, height, width, "logits")
    boundaries = logits_to_mask(network_logits, height, width, "boundaries")
    nearest = logits_to_mask(network_logits, height, width, "labels")
    assert boundaries.shape == full.shape == (height, width)
    assert np.mean(boundaries != full) < 5e-4
    assert np.mean(nearest != full) > 5e-3  # the blocky edges the boundary mode removes


def test_boundary_upsampling_when_not_enlarging_equals_bilinear_logits(network_logits):
    for height, width in ((180, 240), (360, 480), (200, 960)):
        np.testing.assert_array_equal(logits_to_mask(network_logits, height, width, "boundaries"),
                                      logits_to_mask(network_logits, height, width, "logits"))


def test_image_message_copies_the_pixels_once_into_the_array_the_message_keeps(monkeypatch):
    """The generated `data` setter (per-element checks on Humble, an extra copy on Kilted) never sees the frame:
    the pixels go by frombytes into the array.array that the message already holds, as cv_bridge does."""
    values = []
    setter = Image.data.fset
    monkeypatch.setattr(Image, "data", property(Image.data.fget, lambda msg, v: (values.append(len(v)),
                                                                                  setter(msg, v))))
    frame = np.random.default_rng(0).integers(0, 256, (1080, 1920, 3), np.uint8)
    msg = image_message(frame[:, ::-1], "bgr8")  # a view: made contiguous on the way, still one copy into data
    assert type(msg.data) is array.array and msg.data.typecode == "B"
    assert values == [0]  # only the constructor's empty default
    assert (msg.height, msg.width, msg.step) == (1080, 1920, 1920 * 3)
    assert msg.data.tobytes() == np.ascontiguousarray(frame[:, ::-1]).tobytes()
    with pytest.raises(ValueError, match="cannot write a 3-channel"):
        image_message(frame, "mono8")
    with pytest.raises(ValueError, match="int64"):
        image_message(np.zeros((4, 4), np.int64), "mono8")


def set_double(ros, node, name: str, value: float):
    client = ros.node.create_client(SetParameters, f"/{node.name}/set_parameters")
    assert client.wait_for_service(timeout_sec=20)
    parameter = Parameter(name=name, value=ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=value))
    future = client.call_async(SetParameters.Request(parameters=[parameter]))
    answered = threading.Event()
    future.add_done_callback(lambda _: answered.set())
    assert answered.wait(20), f"no answer from /{node.name}/set_parameters in 20 s"
    ros.node.destroy_client(client)
    return future.result().results[0]


def test_visualization_outputs_at_a_reduced_size_and_the_mask_at_full_size(ros, seg_node, random_model):
    node = seg_node(input_topics=["/vis_cam/image_raw"], qos_reliability="reliable", visualization_scale=0.5,
                    overlay_alpha=1.0)
    inboxes = {name: ros.subscribe(Image, node.topic(name)) for name in ("mask", "color_mask", "overlay")}
    publisher = ros.publisher(Image, "/vis_cam/image_raw")
    ros.wait_until_matched([node.topic(name) for name in inboxes], [publisher])
    pipeline = SegmentationPipeline.from_model(str(random_model))
    rng = np.random.default_rng(3)
    frame = cv2.resize(rng.integers(0, 256, (6, 8, 3), np.uint8), (160, 120), interpolation=cv2.INTER_CUBIC)

    def outputs(ns):
        publisher.publish(make_image_msg(frame, "rgb8", ns))
        return {name: inbox.wait_for(1, 20, lambda m: stamp_ns(m.header.stamp) == ns)[0]
                for name, inbox in inboxes.items()}

    got = outputs(1)
    mask = np.frombuffer(got["mask"].data, np.uint8).reshape(120, 160)
    np.testing.assert_array_equal(mask, pipeline.segment(frame).mask)
    small = cv2.resize(mask, (80, 60), interpolation=cv2.INTER_NEAREST)
    expected_colors = colorize(small, palette_lut(pipeline.card.palette))
    for name in ("color_mask", "overlay"):  # alpha 1: the overlay is the colour mask
        assert (got[name].height, got[name].width, got[name].encoding) == (60, 80, "rgb8")
        np.testing.assert_array_equal(np.frombuffer(got[name].data, np.uint8).reshape(60, 80, 3), expected_colors)

    assert not set_double(ros, node, "visualization_scale", 0.0).successful
    assert set_double(ros, node, "visualization_scale", 1.0).successful
    got = outputs(2)
    assert (got["overlay"].height, got["overlay"].width) == (got["mask"].height, got["mask"].width) == (120, 160)


def test_started_processes_get_the_shipped_profile_and_localhost_discovery_unless_the_user_chose(tmp_path):
    from seg_node.ros_tools.node_process import DDS_PROFILE, ros_environment
    assert DDS_PROFILE.is_file() and "<segment_size>" in DDS_PROFILE.read_text()
    variable = "FASTDDS_DEFAULT_PROFILES_FILE"
    assert ros_environment({}) == {variable: str(DDS_PROFILE), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
    assert ros_environment({"ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET"})["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "SUBNET"
    mine = str(tmp_path / "mine.xml")
    assert ros_environment({variable: mine})[variable] == mine
    assert variable not in ros_environment({"FASTRTPS_DEFAULT_PROFILES_FILE": mine})
    assert variable not in ros_environment(ros_environment({}), dds_profile=None)
    assert ros_environment({variable: mine}, dds_profile=None)[variable] == mine
