"""Stopping the nodes as `ros2 launch` does: under a terminal Ctrl-C a node gets two SIGINTs (the terminal's
and launch's forwarded one), often while frames are in flight. Each must exit 0 with no traceback and no error:
the second SIGINT must not land in the cleanup, and the worker must not report the closing context as a failed
frame. And camera_publisher playing a video file without loop stops by itself at its end, with exit 0.
"""

from __future__ import annotations

import itertools
import signal
import subprocess
import threading
import time

import pytest
from rclpy.qos import qos_profile_sensor_data
from ros_harness import make_image_msg, start_camera_publisher, write_clip
from sensor_msgs.msg import Image
from test_node import scene

ERRORS = ("Traceback", "frame failed", "context is invalid", "terminate called", "ERROR]")


def publish_continuously(publisher, frames, stop: threading.Event) -> threading.Thread:
    def run():
        stamp = 0
        while not stop.is_set():
            stamp += 1
            publisher.publish(frames[stamp % len(frames)])
            stop.wait(0.005)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def interrupt_twice(process: subprocess.Popen, gap: float = 0.05) -> int:
    process.send_signal(signal.SIGINT)
    time.sleep(gap)  # the interval under test, not a synchronisation
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
    return process.wait(30)


@pytest.mark.parametrize("attempt", range(3))
def test_seg_node_under_load_exits_0_quietly_on_two_sigints(ros, seg_node, attempt):
    node = seg_node(input_topics=[f"/shutdown_cam{attempt}/image_raw"], qos_reliability="reliable")
    publisher = ros.publisher(Image, f"/shutdown_cam{attempt}/image_raw")
    masks = ros.subscribe(Image, node.topic("mask"))
    overlays = ros.subscribe(Image, node.topic("overlay"))
    ros.wait_for_subscribers(publisher)
    ros.wait_for_publishers(node.topic("overlay"))
    frames = [make_image_msg(scene(seed, 360, 480), "rgb8", seed + 1) for seed in range(4)]
    stop = threading.Event()
    feeder = publish_continuously(publisher, frames, stop)
    try:
        masks.wait_for(5, timeout=60)  # frames flowing through the whole pipeline
        overlays.wait_for(1, timeout=60)
        status = interrupt_twice(node.process)
    finally:
        stop.set()
        feeder.join()
    log = node.output()
    assert status == 0, log
    assert not [word for word in ERRORS if word in log], log


def test_camera_publisher_streaming_exits_0_quietly_on_two_sigints(ros, tmp_path):
    video = write_clip(tmp_path / "clip.avi", 320, 240, 30)
    inbox = ros.subscribe(Image, "/shutdown_pub/image_raw", qos=qos_profile_sensor_data)
    process = start_camera_publisher("/shutdown_pub", video, 200.0)
    try:
        inbox.wait_for(20, timeout=30)
        status = interrupt_twice(process)
    finally:
        if process.poll() is None:
            process.kill()
    log = process.stdout.read()
    assert status == 0, log
    assert not [word for word in ERRORS if word in log], log


def test_camera_publisher_ends_with_exit_0_when_a_video_file_ends_without_loop(ros, tmp_path):
    """camera.launch.py ends when camera_publisher exits: with loop:=false the file's end must end it, not leave
    it warning every 5 s with seg_node going STALE."""
    video = write_clip(tmp_path / "clip.avi", 160, 120, 12)
    process = start_camera_publisher("/finite_pub", video, 100.0, "loop:=false")
    try:
        status = process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
    log = process.stdout.read()
    assert status == 0, log
    assert "the source ended after 12 frames (loop is false): stopping" in log, log
    assert not [word for word in ERRORS + ("no frame from the source",) if word in log], log


def test_camera_publisher_with_loop_plays_a_video_file_again_from_its_start(ros, tmp_path):
    video = write_clip(tmp_path / "clip.avi", 160, 120, 6)  # frame i is grey at level 42 i
    inbox = ros.subscribe(Image, "/looping_pub/image_raw", qos=qos_profile_sensor_data)
    process = start_camera_publisher("/looping_pub", video, 100.0)
    try:
        frames = inbox.wait_for(13, timeout=30)  # more than twice the file's 6 frames
        assert process.poll() is None, "it must keep running"
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(30)
    levels = [frame.data[0] for frame in frames]
    assert any(last > 190 and first < 20 for last, first in itertools.pairwise(levels)), levels  # 210 -> 0
