#!/usr/bin/env python3
"""Node start-up and memory: process start to first mask, and RSS after it, with the default model.

Each run starts seg_node as a fresh process (console-script equivalent, the shipped params file), publishes a
CamVid clip frame until the first mask comes back, and reads VmRSS. `--preload torch` imports torch first,
as the node did before backends were imported lazily, to measure what the lazy import saves. Prints the
median and p95 over the runs; nothing is asserted. Run it on a quiet machine:

    python scripts/measure_startup.py --runs 10
    python scripts/measure_startup.py --runs 10 --preload torch
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import cv2
import numpy as np

from seg_node.core.latency_stats import latency_summary
from seg_node.core.model_files import package_path
from seg_node.ros.image_messages import image_message
from seg_node.ros_tools.node_process import PARAMS_FILE, ros_environment
from seg_node.ros_tools.ros_peer import RELIABLE, RosPeer
from seg_node.ros_tools.stress import rss_mb

os.environ.update(ros_environment(dds_profile=None))  # this process and the nodes it starts; Fast DDS's defaults


def one_run(peer: RosPeer, index: int, preload: list[str], timeout: float) -> tuple[float, float]:
    from sensor_msgs.msg import Image
    name = f"startup_probe_{os.getpid()}_{index}"
    camera = f"/{name}_cam/image_raw"
    frame = cv2.imread(str(sorted(package_path("data", "camvid_clip", "test").iterdir())[0]), cv2.IMREAD_COLOR)
    msg = image_message(np.ascontiguousarray(frame), "bgr8")
    masks = peer.subscribe(Image, f"/{name}/mask")
    publisher = peer.publisher(Image, camera, RELIABLE)
    code = "".join(f"import {m}; " for m in preload) + \
        "import sys; from seg_node.ros.segmentation_node import main; sys.exit(main())"
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-c", code, "--ros-args", "--params-file", str(PARAMS_FILE),
                                "-r", f"__node:={name}", "-p", f"input_topics:=['{camera}']",
                                "-p", "qos_reliability:=reliable"], stdout=subprocess.DEVNULL)
    try:
        while not len(masks):
            if process.poll() is not None or time.perf_counter() - started > timeout:
                raise RuntimeError(f"seg_node exited or sent no mask within {timeout} s")
            if publisher.get_subscription_count():
                publisher.publish(msg)
            time.sleep(0.005)
        first_mask_s = masks.arrivals[0] - started
        return first_mask_s, rss_mb(process.pid)
    finally:
        process.send_signal(2)
        process.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--preload", nargs="*", default=[], help="modules the node imports first (e.g. torch)")
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()
    peer = RosPeer("startup_probe")
    try:
        results = [one_run(peer, i, args.preload, args.timeout) for i in range(args.runs)]
    finally:
        peer.close()
    seconds, rss = (latency_summary(np.array(column) * scale) for column, scale in
                    zip(zip(*results), (1e3, 1.0)))
    label = f"preload {' '.join(args.preload)}" if args.preload else "as shipped"
    print(f"seg_node start-up, default model, {label}, {args.runs} runs")
    print(f"  process start -> first mask: median {seconds['median']:.0f} ms, p95 {seconds['p95']:.0f} ms")
    print(f"  RSS after the first mask:    median {rss['median']:.0f} MiB, p95 {rss['p95']:.0f} MiB")


if __name__ == "__main__":
    main()
