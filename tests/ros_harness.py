"""A real rclpy peer for tests, and seg_node started the way ROS starts it (console script + params file)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy

REPO = Path(__file__).resolve().parent.parent
PARAMS_FILE = REPO / "config" / "seg_node.yaml"
RELIABLE = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)


def seg_node_executable() -> str:
    candidate = Path(sys.executable).parent / "seg_node"
    if not candidate.exists():
        raise RuntimeError(f"{candidate} missing: install the package (pip install -e .)")
    return str(candidate)


def ros_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(f"'{v}'" for v in value) + "]"
    return str(value)


class NodeProcess:
    """`seg_node --ros-args --params-file config/seg_node.yaml -r __node:=NAME -p k:=v ...` in a subprocess."""

    def __init__(self, test_name: str, parameters: dict, params_file: Path = PARAMS_FILE):
        self.name = "seg_" + re.sub(r"[^a-zA-Z0-9]", "_", test_name)[-40:].strip("_") + f"_{os.getpid() % 1000}"
        args = [seg_node_executable(), "--ros-args", "--params-file", str(params_file), "-r", f"__node:={self.name}"]
        for key, value in parameters.items():
            args += ["-p", f"{key}:={ros_value(value)}"]
        self.log_path = Path(os.environ.get("PYTEST_TMP", "/tmp")) / f"{self.name}.log"
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env=dict(os.environ))

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text()

    def wait_until_ready(self, timeout: float = 60.0) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if "segmenting" in self.output():
                return
            if self.process.poll() is not None:
                raise RuntimeError(f"seg_node exited with {self.process.returncode}:\n{self.output()}")
            time.sleep(0.05)
        raise TimeoutError(f"seg_node not ready after {timeout} s:\n{self.output()}")

    def wait_exit(self, timeout: float = 60.0) -> int:
        return self.process.wait(timeout)

    def stop(self) -> int:
        """Ctrl-C, as a user would; the node must exit cleanly with status 0."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode

    def topic(self, name: str) -> str:
        return f"/{self.name}/{name}"


class Inbox:
    """Messages received on one subscription, with their arrival times."""

    def __init__(self):
        self.messages: list = []
        self.arrivals: list[float] = []
        self._lock = threading.Lock()

    def __call__(self, msg) -> None:
        with self._lock:
            self.messages.append(msg)
            self.arrivals.append(time.perf_counter())

    def __len__(self) -> int:
        return len(self.messages)

    def wait_for(self, count: int = 1, timeout: float = 20.0, predicate=None) -> list:
        deadline = time.time() + timeout
        while time.time() < deadline:
            with self._lock:
                matching = [m for m in self.messages if predicate is None or predicate(m)]
            if len(matching) >= count:
                return matching
            time.sleep(0.01)
        raise TimeoutError(f"got {len(matching)} of {count} messages in {timeout} s")


class RosPeer:
    """One rclpy node in the test process, spun by a background executor."""

    def __init__(self):
        rclpy.init()
        self.node = rclpy.create_node(f"seg_node_tests_{os.getpid()}")
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self.executor.spin, daemon=True)
        self._thread.start()
        self._publishers = {}

    def subscribe(self, msg_type, topic: str, qos=RELIABLE) -> Inbox:
        inbox = Inbox()
        self.node.create_subscription(msg_type, topic, inbox, qos)
        return inbox

    def publisher(self, msg_type, topic: str, qos=RELIABLE):
        key = (msg_type, topic)
        if key not in self._publishers:
            self._publishers[key] = self.node.create_publisher(msg_type, topic, qos)
        return self._publishers[key]

    def wait_for_subscribers(self, publisher, count: int = 1, timeout: float = 20.0) -> None:
        deadline = time.time() + timeout
        while publisher.get_subscription_count() < count:
            if time.time() > deadline:
                raise TimeoutError(f"no subscriber on {publisher.topic_name} after {timeout} s")
            time.sleep(0.02)

    def wait_for_publishers(self, topic: str, count: int = 1, timeout: float = 20.0) -> None:
        deadline = time.time() + timeout
        while self.node.count_publishers(topic) < count:
            if time.time() > deadline:
                raise TimeoutError(f"no publisher on {topic} after {timeout} s")
            time.sleep(0.02)

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown()


def make_image_msg(pixels: np.ndarray, encoding: str, stamp_ns: int, frame_id: str = "camera",
                   row_padding: int = 0):
    """sensor_msgs/Image from an array laid out for `encoding`, optionally with padded rows."""
    from sensor_msgs.msg import Image
    from seg_node.image_codec import RAW_ENCODINGS
    height = pixels.shape[0]
    row = pixels.reshape(height, -1)
    width = row.shape[1] // RAW_ENCODINGS[encoding][0]
    if row_padding:
        row = np.concatenate([row, np.full((height, row_padding), 0xAB, np.uint8)], axis=1)
    msg = Image(height=height, width=width, encoding=encoding, is_bigendian=0, step=row.shape[1],
                data=np.ascontiguousarray(row).tobytes())
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
    msg.header.frame_id = frame_id
    return msg


def diagnostic_values(status) -> dict[str, str]:
    return {kv.key: kv.value for kv in status.values}
