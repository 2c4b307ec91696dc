"""Live evaluation through ROS equals offline evaluation; the demo command produces what it promises."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
from ros_harness import REPO
from rosbags.rosbag2 import Reader
from std_msgs.msg import String

from seg_node.ros_tools.bag_convert import dataset_frames, write_bag
from seg_node.ros_tools.live_eval import live_evaluate
from seg_node.ros_tools.ros_peer import RosPeer
from seg_node.toolchain.evaluation.evaluate import run_evaluation

CLIP = REPO / "data" / "camvid_clip"


def test_live_evaluation_of_the_committed_clip_matches_the_offline_evaluation(tmp_path):
    bag = tmp_path / "clip_bag"
    write_bag(dataset_frames(CLIP, "test"), bag, rate=30.0, progress=False)
    # 0.1x of 30 Hz: 3 frames a second, slow enough that the node drops none
    live = live_evaluate(bag, tmp_path / "live", rate=0.1, node_name="seg_node_live_clip")
    offline = run_evaluation(["--data", str(CLIP), "--split", "test", "--threads", "2", "--out",
                              str(tmp_path / "offline")])
    assert live["frames_published"] == 24 and live["frames_dropped"] == 0 and live["frames_scored"] == 24
    assert live["node_exit_status"] == 0
    assert abs(live["miou"] - offline["miou"]) <= 0.1, (live["miou"], offline["miou"])
    assert live["ros_path_latency_ms"]["median"] >= live["node_processing_ms"]["median"] > 0


def test_the_node_runs_the_shipped_flip_averaged_model_as_the_offline_evaluation_does(tmp_path):
    """The flip-averaged card through a real node and replay scores per class what seg-eval scores offline, and
    not what the same network in one pass scores: the node runs both passes."""
    bag = tmp_path / "clip_bag"
    write_bag(dataset_frames(CLIP, "test"), bag, rate=30.0, progress=False)
    flip, single = (str(REPO / "models" / f"{name}.json") for name in ("camvid_mobile_unet_flip", "camvid_mobile_unet"))
    live = live_evaluate(bag, tmp_path / "live", model=flip, rate=0.1, node_name="seg_node_live_flip")
    offline = {model: {name: scores["iou"] for name, scores in run_evaluation(
        ["--model", model, "--data", str(CLIP), "--split", "test", "--threads", "2", "--out",
         str(tmp_path / Path(model).stem)])["per_class"].items()} for model in (flip, single)}
    assert live["frames_scored"] == 24 and live["frames_dropped"] == 0 and live["node_exit_status"] == 0, live
    assert live["masks_repeated"] == 0 and live["masks_unmatched"] == 0
    live_iou = {name: scores["iou"] for name, scores in live["per_class"].items()}
    for name, iou in live_iou.items():
        assert abs(iou - offline[flip][name]) <= 0.05, (name, iou, offline[flip][name])
    assert max(abs(iou - offline[single][name]) for name, iou in live_iou.items()) > 0.5


def test_demo_command_writes_overlays_latency_and_a_recorded_bag(tmp_path):
    out = tmp_path / "demo"
    result = subprocess.run([str(Path(sys.executable).parent / "seg-demo"), "--out", str(out)],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"demo outputs are in {out.resolve()}" in result.stdout
    summary = json.loads((out / "live_eval.json").read_text())
    assert summary["frames_published"] == 24 and summary["masks_received"] > 0
    assert {"median", "p95", "p99", "max"} <= set(summary["ros_path_latency_ms"])
    video = cv2.VideoCapture(str(out / "overlay.mp4"))
    assert int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == summary["masks_received"]
    assert int(video.get(cv2.CAP_PROP_FRAME_WIDTH)) == 960
    pngs = sorted(out.glob("overlay_*.png"))
    assert len(pngs) == 4 and cv2.imread(str(pngs[0])).shape == (360, 960, 3)
    with Reader(out / "outputs_bag") as reader:
        counts = {c.topic: c.msgcount for c in reader.connections}
    assert counts == {"/seg_node/mask": summary["masks_received"], "/seg_node/overlay": summary["masks_received"],
                      "/seg_node/latency": summary["masks_received"]}


def test_peers_close_while_messages_arrive_and_leave_no_thread_spinning(ros):
    """Live evaluation, benchmarks and tests close their peer while the node may still be publishing; the
    spinning thread must be gone before the node is destroyed (destroying it under a waiting thread can hang),
    so close it again and again under a flood of messages."""
    topic = "/peer_close_check"
    publisher = ros.publisher(String, topic)
    stop = threading.Event()

    def flood():
        while not stop.is_set():
            publisher.publish(String(data="x"))
            time.sleep(0.001)

    flooding = threading.Thread(target=flood)
    flooding.start()
    try:
        for cycle in range(10):
            listener = RosPeer(f"peer_close_check_{cycle}")
            inbox = listener.subscribe(String, topic)
            inbox.wait_for(5)
            listener.close()
            assert not listener._thread.is_alive() and not listener.context.ok()
            received = len(inbox)
            time.sleep(0.05)
            assert len(inbox) == received
    finally:
        stop.set()
        flooding.join()
