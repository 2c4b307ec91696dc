"""seg-dataset-to-bag and seg-bag-replay: real bags written and read back, real publishers and subscribers."""

from __future__ import annotations

import itertools
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import rclpy
import yaml
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.serialization import deserialize_message, serialize_message
from rosbags.rosbag2 import Reader
from rosbags.typesys import Stores, get_typestore
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from seg_node.core.image_codec import decode_compressed
from seg_node.ros.image_messages import stamp_ns
from seg_node.ros_tools.bag_convert import main as convert_main
from seg_node.ros_tools.bag_replay import BagReplayer, ReplayError, to_rclpy
from seg_node.toolchain.data import CAMVID_CLASSES, IGNORE_INDEX, ClassTable

TYPESTORE = get_typestore(Stores.ROS2_HUMBLE)
HEIGHT, WIDTH = 48, 64
VIDEO_FRAMES = (30, 60, 90, 150, 180, 240)  # Seq05VD frame numbers: 0, 1, 2, 4, 5, 7 s after the first
START_NS = 1_700_000_000 * 10**9
NODE_NUMBERS = itertools.count()


def frame_pixels(index: int) -> np.ndarray:
    """A smooth RGB image, different per frame, so JPEG stays close and mix-ups show."""
    small = np.random.default_rng(index).integers(0, 256, (3, 4, 3), np.uint8)
    return cv2.resize(small, (WIDTH, HEIGHT), interpolation=cv2.INTER_CUBIC)


def frame_label(index: int) -> np.ndarray:
    """Class ids 0..11 in vertical stripes, shifted per frame; 11 is void (as CamVid's files hold it)."""
    return ((np.arange(WIDTH) // 5 + index) % 12).astype(np.uint8)[None, :].repeat(HEIGHT, axis=0)


def bag_label(index: int) -> np.ndarray:
    """frame_label as a bag carries it: void is IGNORE_INDEX (255), as every data set's labels."""
    label = frame_label(index)
    label[label == 11] = IGNORE_INDEX
    return label


@pytest.fixture(scope="module")
def camvid(tmp_path_factory):
    """An 11-class CamVid test split: six Seq05VD frames and two of another sequence."""
    root = tmp_path_factory.mktemp("camvid")
    (root / "test").mkdir()
    (root / "testannot").mkdir()
    names = [f"Seq05VD_f{number:05d}" for number in VIDEO_FRAMES] + ["0001TP_008550", "0001TP_008580"]
    for index, name in enumerate(names):
        cv2.imwrite(str(root / "test" / f"{name}.png"), cv2.cvtColor(frame_pixels(index), cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(root / "testannot" / f"{name}.png"), frame_label(index))
    return root


def convert(camvid: Path, output: Path, *options: str) -> Path:
    convert_main(["--data", str(camvid), "--split", "test", "--sequence", "Seq05VD", "-o", str(output),
                  "--no-progress", *options])
    return output


def read_bag(path: Path) -> dict[str, list]:
    """topic -> [(bag timestamp, msgtype, rosbags message, raw CDR bytes)] in bag order."""
    topics: dict[str, list] = {}
    with Reader(path) as reader:
        for connection, timestamp, raw in reader.messages():
            message = TYPESTORE.deserialize_cdr(raw, connection.msgtype)
            topics.setdefault(connection.topic, []).append((timestamp, connection.msgtype, message, bytes(raw)))
    return topics


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
@pytest.mark.parametrize("image_format", ["rgb8", "bgr8", "jpeg", "png"])
def test_camvid_sequence_round_trips_through_a_bag(camvid, tmp_path, storage, image_format):
    compressed = image_format in ("jpeg", "png")
    options = ["--compressed", image_format] if compressed else ["--encoding", image_format]
    bag = convert(camvid, tmp_path / "bag", "--storage", storage, "--rate", "10", *options)

    assert (bag / f"bag.{'mcap' if storage == 'mcap' else 'db3'}").is_file()
    metadata = yaml.safe_load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    # What Humble's reader needs: version <= 8 and each topic's QoS offer as a YAML string.
    assert metadata["version"] == 8
    assert all(isinstance(t["topic_metadata"]["offered_qos_profiles"], str)
               for t in metadata["topics_with_message_count"])
    image_topic = "/camera/image_raw/compressed" if compressed else "/camera/image_raw"
    topics = read_bag(bag)
    assert sorted(topics) == sorted([image_topic, "/camera/labels"])
    expected_stamps = [START_NS + index * 100_000_000 for index in range(len(VIDEO_FRAMES))]
    for topic, messages in topics.items():
        assert [timestamp for timestamp, *_ in messages] == expected_stamps, topic
        assert [stamp_ns(message.header.stamp) for _, _, message, _ in messages] == expected_stamps, topic
        assert {message.header.frame_id for _, _, message, _ in messages} == {"camera"}
    for index, (_, msgtype, message, _) in enumerate(topics[image_topic]):
        rgb = frame_pixels(index)
        if compressed:
            assert msgtype == "sensor_msgs/msg/CompressedImage"
            assert message.format == f"rgb8; {image_format} compressed bgr8"
            decoded = decode_compressed(message.format, message.data).as_rgb().astype(int)
            error = np.abs(decoded - rgb)
            assert error.max() == 0 if image_format == "png" else error.mean() < 3, index
        else:
            assert msgtype == "sensor_msgs/msg/Image"
            assert (message.encoding, message.height, message.width, message.step) == (
                image_format, HEIGHT, WIDTH, WIDTH * 3)
            expected = rgb if image_format == "rgb8" else rgb[..., ::-1]
            np.testing.assert_array_equal(message.data.reshape(HEIGHT, WIDTH, 3), expected)
    for index, (_, msgtype, message, _) in enumerate(topics["/camera/labels"]):
        assert (msgtype, message.encoding, message.height, message.width, message.step) == (
            "sensor_msgs/msg/Image", "mono8", HEIGHT, WIDTH, WIDTH)
        np.testing.assert_array_equal(message.data.reshape(HEIGHT, WIDTH), bag_label(index))
    assert IGNORE_INDEX in topics["/camera/labels"][0][2].data  # void is kept as unlabelled, not dropped
    assert ClassTable.from_csv(bag / "classes.csv") == CAMVID_CLASSES  # the labels' class table travels along


def test_real_time_stamps_follow_the_video_frame_numbers(camvid, tmp_path):
    bag = convert(camvid, tmp_path / "bag", "--real-time", "--start-time", "1800000000.25",
                  "--label-topic", "/ground_truth/labels")
    start = 1_800_000_000_250_000_000
    expected = [start + (number - VIDEO_FRAMES[0]) * 10**9 // 30 for number in VIDEO_FRAMES]
    assert expected[-1] - expected[0] == 7 * 10**9
    topics = read_bag(bag)
    assert sorted(topics) == ["/camera/image_raw", "/ground_truth/labels"]
    for topic, messages in topics.items():
        assert [timestamp for timestamp, *_ in messages] == expected, topic
        assert [stamp_ns(message.header.stamp) for _, _, message, _ in messages] == expected, topic


def test_plain_folders_custom_topics_and_limit(camvid, tmp_path):
    options = ["--sequence", "Seq05VD", "--limit", "4", "--no-progress", "--topic", "/front/image", "--frame-id",
               "front", "--rate", "5"]
    convert_main(["--frames", str(camvid / "test"), *options, "-o", str(tmp_path / "images_only")])
    topics = read_bag(tmp_path / "images_only")
    assert list(topics) == ["/front/image"]
    assert len(topics["/front/image"]) == 4
    assert topics["/front/image"][3][2].header.frame_id == "front"
    assert topics["/front/image"][3][0] == START_NS + 600_000_000
    assert not (tmp_path / "images_only" / "classes.csv").exists()  # no labels, no class table

    convert_main(["--data", str(camvid), "--split", "test", *options, "-o", str(tmp_path / "labelled")])
    topics = read_bag(tmp_path / "labelled")
    assert sorted(topics) == ["/front/image", "/front/labels"]
    for index, (_, _, message, _) in enumerate(topics["/front/labels"]):
        np.testing.assert_array_equal(message.data.reshape(HEIGHT, WIDTH), bag_label(index))

    convert_main(["--data", str(camvid), "--split", "test", "-o", str(tmp_path / "whole_split"), "--no-progress"])
    assert len(read_bag(tmp_path / "whole_split")["/camera/image_raw"]) == 8  # both sequences without --sequence


def test_rclpy_deserializes_the_bag_bytes(camvid, tmp_path):
    raw_topics = read_bag(convert(camvid, tmp_path / "raw"))
    for index, (timestamp, _, _, raw) in enumerate(raw_topics["/camera/image_raw"]):
        image = deserialize_message(raw, Image)
        assert (stamp_ns(image.header.stamp), image.header.frame_id) == (timestamp, "camera")
        assert (image.height, image.width, image.encoding, image.is_bigendian, image.step) == (
            HEIGHT, WIDTH, "rgb8", 0, WIDTH * 3)
        np.testing.assert_array_equal(np.frombuffer(image.data, np.uint8).reshape(HEIGHT, WIDTH, 3),
                                      frame_pixels(index))
    label = deserialize_message(raw_topics["/camera/labels"][2][3], Image)
    assert label.encoding == "mono8"
    np.testing.assert_array_equal(np.frombuffer(label.data, np.uint8).reshape(HEIGHT, WIDTH), bag_label(2))

    compressed_topics = read_bag(convert(camvid, tmp_path / "png", "--compressed", "png"))
    timestamp, _, stored, raw = compressed_topics["/camera/image_raw/compressed"][1]
    compressed = deserialize_message(raw, CompressedImage)
    assert (stamp_ns(compressed.header.stamp), compressed.format) == (timestamp, stored.format)
    assert bytes(compressed.data) == stored.data.tobytes()


def test_a_folders_data_set_bag_carries_its_own_classes(tmp_path):
    """Any registered layout converts; the bag's classes.csv is the data set's class table, void left out."""
    root = tmp_path / "mine"
    (root / "test" / "images").mkdir(parents=True)
    (root / "test" / "labels").mkdir()
    (root / "classes.csv").write_text("name,r,g,b\nvoid,0,0,0\nlane,255,255,0\nkerb,10,20,30\n")
    colours = np.array([(0, 0, 0), (255, 255, 0), (10, 20, 30)], np.uint8)
    stripes = (np.arange(WIDTH) // 8 % 3).astype(np.uint8)[None, :].repeat(HEIGHT, axis=0)
    for index in range(2):
        cv2.imwrite(str(root / "test" / "images" / f"f{index}.png"), cv2.cvtColor(frame_pixels(index),
                                                                                  cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(root / "test" / "labels" / f"f{index}.png"), cv2.cvtColor(colours[stripes],
                                                                                  cv2.COLOR_RGB2BGR))
    convert_main(["--data", str(root), "--no-progress", "-o", str(tmp_path / "bag")])
    assert ClassTable.from_csv(tmp_path / "bag" / "classes.csv") == ClassTable(("lane", "kerb"),
                                                                               ((255, 255, 0), (10, 20, 30)))
    labels = read_bag(tmp_path / "bag")["/camera/labels"]
    expected = np.array([IGNORE_INDEX, 0, 1], np.uint8)[stripes]
    assert len(labels) == 2 and all(np.array_equal(m.data.reshape(HEIGHT, WIDTH), expected) for _, _, m, _ in labels)


def conversion_error(capsys, *argv: str) -> str:
    """seg-dataset-to-bag's message for a bad input: exit status 2, the message on stderr."""
    with pytest.raises(SystemExit) as stop:
        convert_main(list(argv))
    assert stop.value.code == 2
    return capsys.readouterr().err


def test_conversion_errors_say_what_is_wrong(camvid, tmp_path, capsys):
    assert re.search("no frames found.*'Seq99'", conversion_error(capsys, "--data", str(camvid), "--sequence",
                                                                 "Seq99", "-o", str(tmp_path / "a")))
    (tmp_path / "empty").mkdir()
    assert "no frames found" in conversion_error(capsys, "--frames", str(tmp_path / "empty"), "-o", str(tmp_path / "a"))
    assert "already exists" in conversion_error(capsys, "--data", str(camvid), "-o", str(tmp_path / "empty"))
    for rate in ("0", "-5", "nan"):
        assert "--rate must be a positive" in conversion_error(capsys, "--data", str(camvid), "--rate", rate, "-o",
                                                               str(tmp_path / "a"))
    assert re.search("needs one sequence.*0001TP.*Seq05VD", conversion_error(
        capsys, "--data", str(camvid), "--real-time", "-o", str(tmp_path / "a")))
    assert "lacks" in conversion_error(capsys, "--data", str(tmp_path / "empty"), "-o", str(tmp_path / "a"))
    assert not (tmp_path / "a").exists()


def test_to_rclpy_matches_rclpy_serialization_field_for_field():
    """Converted messages equal rclpy's own decoding of the bytes: nested, sequence and fixed-array fields."""
    Header, Time = TYPESTORE.types["std_msgs/msg/Header"], TYPESTORE.types["builtin_interfaces/msg/Time"]
    DiagnosticStatus = TYPESTORE.types["diagnostic_msgs/msg/DiagnosticStatus"]
    KeyValue = TYPESTORE.types["diagnostic_msgs/msg/KeyValue"]
    RegionOfInterest = TYPESTORE.types["sensor_msgs/msg/RegionOfInterest"]
    header = Header(stamp=Time(sec=12, nanosec=345), frame_id="cam")
    messages = {
        "sensor_msgs/msg/CameraInfo": TYPESTORE.types["sensor_msgs/msg/CameraInfo"](
            header=header, height=48, width=64, distortion_model="plumb_bob", d=np.array([0.1, -0.2, 0, 0, 0.01]),
            k=np.arange(9, dtype=np.float64), r=np.eye(3).ravel(), p=np.arange(12, dtype=np.float64), binning_x=1,
            binning_y=2, roi=RegionOfInterest(x_offset=1, y_offset=2, height=3, width=4, do_rectify=True)),
        "diagnostic_msgs/msg/DiagnosticArray": TYPESTORE.types["diagnostic_msgs/msg/DiagnosticArray"](
            header=header, status=[DiagnosticStatus(level=b"\x01"[0], name="seg", message="ok", hardware_id="gpu",
                                                    values=[KeyValue(key="fps", value="30")])]),
        "sensor_msgs/msg/Image": TYPESTORE.types["sensor_msgs/msg/Image"](
            header=header, height=2, width=2, encoding="mono8", is_bigendian=0, step=2,
            data=np.array([1, 2, 3, 250], np.uint8)),
    }
    classes = {"sensor_msgs/msg/CameraInfo": CameraInfo, "diagnostic_msgs/msg/DiagnosticArray": DiagnosticArray,
               "sensor_msgs/msg/Image": Image}
    for msgtype, message in messages.items():
        raw = TYPESTORE.serialize_cdr(message, msgtype)
        converted = to_rclpy(TYPESTORE.deserialize_cdr(raw, msgtype), classes[msgtype])
        assert converted == deserialize_message(bytes(raw), classes[msgtype]), msgtype
        # and back: rclpy's bytes (CDR padding may differ) decode to the message rosbags wrote
        assert TYPESTORE.serialize_cdr(TYPESTORE.deserialize_cdr(serialize_message(converted), msgtype),
                                       msgtype) == raw, msgtype


@pytest.fixture
def replay_node(ros):
    """A node of its own for the replayer's publishers (the `ros` peer holds the subscribers)."""
    node = rclpy.create_node(f"bag_replay_test_{next(NODE_NUMBERS)}", context=ros.context)
    yield node
    node.destroy_node()


def test_replay_delivers_every_message_in_order_at_the_rate_factor(ros, replay_node, camvid, tmp_path):
    bag = convert(camvid, tmp_path / "bag", "--rate", "5", "--topic", "/replay_rate/image_raw")  # 1.0 s of bag
    images = ros.subscribe(Image, "/replay_rate/image_raw")
    labels = ros.subscribe(Image, "/replay_rate/labels")
    with BagReplayer(replay_node, bag, rate=2.0, wait_for_subscribers=1, wait_timeout=20) as replayer:
        assert replayer.wait_topics == ["/replay_rate/image_raw"]  # the camera, not its labels
        summary = replayer.run()
    expected_stamps = [START_NS + index * 200_000_000 for index in range(len(VIDEO_FRAMES))]
    for inbox, encoding in ((images, "rgb8"), (labels, "mono8")):
        received = inbox.wait_for(len(VIDEO_FRAMES), timeout=10)
        assert [stamp_ns(m.header.stamp) for m in received] == expected_stamps
        assert {(m.encoding, m.header.frame_id) for m in received} == {(encoding, "camera")}
    for index, message in enumerate(images.messages):
        np.testing.assert_array_equal(np.frombuffer(message.data, np.uint8).reshape(HEIGHT, WIDTH, 3),
                                      frame_pixels(index))
    np.testing.assert_array_equal(np.frombuffer(labels.messages[4].data, np.uint8).reshape(HEIGHT, WIDTH),
                                  bag_label(4))
    # 1.0 s of bag at 2x: 0.5 s. Pacing is behaviour, not speed: never faster than asked (a sleep cannot
    # finish early), and told apart from 1x (1.0 s) with room for a loaded machine.
    span = images.arrivals[-1] - images.arrivals[0]
    assert 0.4 < span < 0.95, span
    assert 0.45 < summary.wall_duration < 0.95, summary.wall_duration
    assert summary.published == {"/replay_rate/image_raw": 6, "/replay_rate/labels": 6}
    assert (summary.passes, summary.clock_messages) == (1, 0)


def test_replay_filters_topics_skips_the_start_and_loops_until_stopped(ros, replay_node, camvid, tmp_path):
    bag = convert(camvid, tmp_path / "bag", "--rate", "5", "--topic", "/replay_loop/image_raw",
                  "--storage", "sqlite3", "--compressed", "jpeg")
    images = ros.subscribe(CompressedImage, "/replay_loop/image_raw/compressed")
    replayer = BagReplayer(replay_node, bag, rate=4.0, loop=True, start_offset=0.5,
                           topics=["/replay_loop/image_raw/compressed"], wait_for_subscribers=1)
    assert replayer.topics == {"/replay_loop/image_raw/compressed": "sensor_msgs/msg/CompressedImage"}
    results = []
    worker = threading.Thread(target=lambda: results.append(replayer.run()))
    worker.start()
    try:
        images.wait_for(7, timeout=20)  # into the third pass
    finally:
        replayer.stop()
        worker.join(10)
        replayer.close()
    assert not worker.is_alive()
    summary = results[0]
    assert summary.passes >= 2 and list(summary.published) == ["/replay_loop/image_raw/compressed"]
    published = summary.published["/replay_loop/image_raw/compressed"]
    received = images.wait_for(published, timeout=10)
    after_offset = [START_NS + index * 200_000_000 for index in (3, 4, 5)]  # frames at >= 0.5 s
    assert [stamp_ns(m.header.stamp) for m in received] == (after_offset * published)[:published]
    assert len(images.messages) == published
    assert replay_node.count_publishers("/replay_loop/labels") == 0


def test_replay_cli_publishes_bag_time_on_clock(ros, camvid, tmp_path):
    start_ns = 1_900_000_000 * 10**9
    bag = convert(camvid, tmp_path / "bag", "--rate", "10", "--topic", "/replay_cli/image_raw",
                  "--start-time", str(start_ns // 10**9))
    images = ros.subscribe(Image, "/replay_cli/image_raw")
    clock = ros.subscribe(Clock, "/clock")
    result = subprocess.run([str(REPLAY), str(bag), "--clock", "--rate", "2", "--wait-for-subscribers", "1",
                             "--wait-topics", "/replay_cli/image_raw", "/clock"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    expected = [start_ns + index * 100_000_000 for index in range(len(VIDEO_FRAMES))]
    assert [stamp_ns(m.header.stamp) for m in images.wait_for(len(VIDEO_FRAMES), timeout=10)] == expected
    ours = clock.wait_for(len(VIDEO_FRAMES), timeout=10, predicate=lambda m: stamp_ns(m.clock) >= start_ns)
    assert [stamp_ns(m.clock) for m in ours] == expected  # one tick per bag time, image and label share it
    assert "published 6 on /replay_cli/image_raw, 6 on /replay_cli/labels, 6 on /clock" in result.stdout


REPLAY = Path(sys.executable).parent / "seg-bag-replay"


def test_replay_cli_waits_for_the_camera_topics_not_the_labels(ros, camvid, tmp_path):
    """A project bag holds <camera>/labels too, which nothing but an evaluation subscribes to: by default
    --wait-for-subscribers waits on the camera topics alone, so a node on the camera is enough to start."""
    bag = convert(camvid, tmp_path / "bag", "--rate", "10", "--topic", "/replay_wait/image_raw")
    images = ros.subscribe(Image, "/replay_wait/image_raw")
    result = subprocess.run([str(REPLAY), str(bag), "--wait-for-subscribers", "1", "--wait-timeout", "10"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert len(images.wait_for(len(VIDEO_FRAMES), timeout=10)) == len(VIDEO_FRAMES)
    assert "published 6 on /replay_wait/image_raw, 6 on /replay_wait/labels" in result.stdout


def test_replay_cli_looping_with_clock_ends_cleanly_on_stop_signals(ros, camvid, tmp_path):
    """`--loop` plays until Ctrl-C or the SIGTERM of launch or systemd, also with the second SIGINT that a
    terminal's Ctrl-C under ros2 launch brings: exit 0 and the summary, no traceback. Each stop is a race with
    the playback (the publishers' acknowledgement wait at its end), so it is tried several times."""
    bag = convert(camvid, tmp_path / "bag", "--rate", "10", "--topic", "/replay_stop/image_raw")
    images = ros.subscribe(Image, "/replay_stop/image_raw")
    for signals in ((signal.SIGINT,), (signal.SIGTERM,), (signal.SIGINT, signal.SIGINT)):
        arrived = len(images)
        process = subprocess.Popen([str(REPLAY), str(bag), "--clock", "--loop", "--rate", "2"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            images.wait_for(arrived + 3, timeout=30)  # playing, and subscribed to
        finally:
            for stop in signals:
                process.send_signal(stop)
                time.sleep(0.1)  # launch forwards its SIGINT shortly after the terminal's: during the cleanup
            out, err = process.communicate(timeout=30)
        assert process.returncode == 0 and "Traceback" not in err, (signals, err)
        assert "seg-bag-replay: published" in out and "on /clock" in out, (signals, out)


def test_replay_errors_say_what_is_wrong(ros, replay_node, camvid, tmp_path):
    bag = convert(camvid, tmp_path / "bag", "--topic", "/replay_err/image_raw")
    with pytest.raises(ReplayError, match=r"\['/nope'\] are not in the bag"):
        BagReplayer(replay_node, bag, topics=["/nope"])
    with pytest.raises(ReplayError, match="--rate must be a positive"):
        BagReplayer(replay_node, bag, rate=0)
    with pytest.raises(ReplayError, match="past the bag's end"):
        BagReplayer(replay_node, bag, start_offset=5.0)
    with pytest.raises(ReplayError, match="does not exist"):
        BagReplayer(replay_node, tmp_path / "missing")
    with (BagReplayer(replay_node, bag, wait_for_subscribers=1, wait_timeout=0.3) as replayer,
          pytest.raises(ReplayError, match="/replay_err/image_raw")):
        replayer.run()
    assert replay_node.count_publishers("/replay_err/image_raw") == 0  # close() removed the publishers
