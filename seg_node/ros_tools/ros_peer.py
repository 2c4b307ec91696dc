"""An rclpy node spun in a background thread, with inboxes that collect messages: the other end of the
node for benchmarks, live evaluation and tests."""

from __future__ import annotations

import os
import threading
import time

import rclpy
from rclpy.duration import Duration
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy

RELIABLE = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)


def poll_until(ready, timeout: float, failure: str, interval: float = 0.02) -> None:
    """Return once `ready()` is true; TimeoutError(`failure`) after `timeout` seconds. Graph counts and
    acknowledgements have no callback in rclpy, so they are polled."""
    deadline = time.time() + timeout
    while not ready():
        if time.time() > deadline:
            raise TimeoutError(failure)
        time.sleep(interval)


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
    """One rclpy node in this process, spun by a background executor; a context manager that closes it."""

    def __init__(self, name: str = "seg_node_peer"):
        # A context of its own: a process may hold several peers (a test session and a live evaluation).
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(f"{name}_{os.getpid()}", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()
        self._publishers = {}

    def _spin(self) -> None:
        """Spin until close() asks to stop; the short timeout only bounds how long an idle wait lasts."""
        while not self._stopping.is_set() and self.context.ok():
            self.executor.spin_once(timeout_sec=0.05)

    def subscribe(self, msg_type, topic: str, qos=RELIABLE) -> Inbox:
        inbox = Inbox()
        self.node.create_subscription(msg_type, topic, inbox, qos)
        return inbox

    def publisher(self, msg_type, topic: str, qos=RELIABLE):
        key = (msg_type, topic)
        if key not in self._publishers:
            self._publishers[key] = self.node.create_publisher(msg_type, topic, qos)
        return self._publishers[key]

    def publish_burst(self, publisher, messages, timeout: float = 20.0) -> None:
        """Publish `messages` back to back, waiting for the readers' acknowledgements whenever half the writer's
        history is unacknowledged. A reliable writer whose history is full must drop a sample before it writes
        the next, and Fast DDS refuses the write (`cannot publish data`, ros2/rmw#209) when it cannot; a burst
        longer than the history stays within it this way, while the readers still receive it faster than any
        model serves it (they acknowledge on receipt)."""
        window = max(1, publisher.qos_profile.depth // 2)
        for index, message in enumerate(messages):
            if index and index % window == 0:
                self.wait_for_acknowledgements(publisher, timeout)
            publisher.publish(message)

    def wait_for_acknowledgements(self, publisher, timeout: float = 20.0) -> None:
        """Polled without blocking: rclpy's wait_for_all_acked holds the interpreter while it waits."""
        poll_until(lambda: publisher.wait_for_all_acked(Duration()), timeout,
                   f"the readers of {publisher.topic_name} did not acknowledge in {timeout} s", interval=0.002)

    def wait_for_subscribers(self, publisher, count: int = 1, timeout: float = 20.0) -> None:
        poll_until(lambda: publisher.get_subscription_count() >= count, timeout,
                   f"no subscriber on {publisher.topic_name} after {timeout} s")

    def wait_for_publishers(self, topic: str, count: int = 1, timeout: float = 20.0) -> None:
        poll_until(lambda: self.node.count_publishers(topic) >= count, timeout,
                   f"no publisher on {topic} after {timeout} s")

    def wait_until_matched(self, topics=(), publishers=(), timeout: float = 20.0) -> None:
        """Each of this peer's subscriptions on `topics` has matched a publisher and each of `publishers` a
        subscription: a node publishes an output only to subscribers it has discovered, and DDS matches the two
        ends of a pair in one discovery exchange, so messages sent after this arrive."""
        subscriptions = [s for s in self.node.subscriptions if s.topic_name in topics]
        poll_until(lambda: (all(s.get_publisher_count() >= 1 for s in subscriptions)
                            and all(p.get_subscription_count() >= 1 for p in publishers)), timeout,
                   f"{list(topics)} and {[p.topic_name for p in publishers]} not matched after {timeout} s")

    def __enter__(self) -> RosPeer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Stop and join the spinning thread before destroying the node: destroying a node that another
        thread is waiting on is not safe in rclpy (ros2/rclpy#255, #260) and can hang the process."""
        self._stopping.set()
        self._thread.join(timeout=5.0)
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
