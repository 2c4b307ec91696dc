"""Stopping the nodes as `ros2 launch` does: under a terminal Ctrl-C a node gets two SIGINTs (the terminal's
and launch's forwarded one), often while frames are in flight. Each must exit 0 with no traceback and no error.

Before the fix, the second SIGINT landed in the cleanup (a KeyboardInterrupt traceback while joining the
worker), and the worker logged "frame failed: ... publisher's context is invalid" as the context went away.
"""

from __future__ import annotations

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
