"""seg-bag-replay: play a rosbag2 through rclpy publishers, for machines without `ros2 bag play`.

Reads any rosbag2 (mcap or sqlite3, written by rosbags or recorded by `ros2 bag record`) with the pure-Python
`rosbags` library and publishes it on the recorded topics, with the recorded spacing scaled by --rate. Header
stamps stay as recorded; --clock publishes the bag time on /clock, so nodes with use_sim_time follow the bag.
Ctrl-C or SIGTERM ends playback as the end of the bag does (exit status 0). `BagReplayer` is the same player
as a class, to run inside one process next to its subscribers.
"""

from __future__ import annotations

import argparse
import array
import importlib
import math
import posixpath
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
import rclpy
from builtin_interfaces.msg import Time
from rclpy.duration import Duration
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from rclpy.utilities import remove_ros_args
from rosbags.interfaces import MessageDefinitionFormat
from rosbags.rosbag2 import Reader, ReaderError
from rosbags.typesys import Stores, get_types_from_idl, get_types_from_msg, get_typestore
from rosgraph_msgs.msg import Clock
from rosidl_parser.definition import AbstractNestedType, Array, BasicType, NamespacedType

from ..core.command_line import reports_user_errors
from ..core.errors import UserError
from ..ros.node_main import STOP_SIGNALS, ignore_stop_signals

NS_PER_S = 1_000_000_000
CLOCK_TOPIC = "/clock"
IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
RELIABILITY = {"reliable": ReliabilityPolicy.RELIABLE, "best_effort": ReliabilityPolicy.BEST_EFFORT}
IDL_SEPARATOR = "=" * 80 + "\n"


class ReplayError(UserError):
    """A bag or options that cannot be replayed, or subscribers that did not come; the message says what to
    change."""


def is_label_topic(topic: str) -> bool:
    """Ground-truth label images travel on <camera>/labels (seg-dataset-to-bag): for evaluation, not a camera."""
    return posixpath.basename(topic) == "labels"


@dataclass
class ReplaySummary:
    published: dict[str, int] = field(default_factory=dict)
    clock_messages: int = 0
    passes: int = 0
    wall_duration: float = 0.0  # seconds from the start of playback (after waiting for subscribers)

    def describe(self) -> str:
        counts = {**self.published, **({CLOCK_TOPIC: self.clock_messages} if self.clock_messages else {})}
        published = ", ".join(f"{count} on {topic}" for topic, count in counts.items()) or "nothing"
        return (f"published {published}; {self.passes} full pass{'es' if self.passes != 1 else ''} "
                f"in {self.wall_duration:.3f} s")


@cache
def rclpy_class(msgtype: str):
    """'sensor_msgs/msg/Image' -> the installed sensor_msgs.msg.Image class."""
    *namespaces, name = msgtype.split("/")
    try:
        return getattr(importlib.import_module(".".join(namespaces)), name)
    except (ImportError, AttributeError) as exc:
        raise ReplayError(f"message type {msgtype} is not installed for rclpy ({exc}); source the workspace "
                          f"that provides it, or leave its topics out with --topics") from None


def _namespaced_class(slot_type: NamespacedType):
    return rclpy_class("/".join([*slot_type.namespaces, slot_type.name]))


def _field_value(value, slot_type):
    """One rosbags field value -> what the rclpy setter of a field of `slot_type` takes."""
    if isinstance(slot_type, NamespacedType):
        return to_rclpy(value, _namespaced_class(slot_type))
    if isinstance(slot_type, AbstractNestedType):
        element = slot_type.value_type
        if isinstance(element, NamespacedType):
            element_class = _namespaced_class(element)
            return [to_rclpy(item, element_class) for item in value]
        if isinstance(element, BasicType) and element.typename == "octet":
            return [bytes([item]) for item in value]
        if isinstance(value, np.ndarray):
            if isinstance(slot_type, Array):
                return value  # rclpy keeps fixed-size numeric arrays as numpy arrays
            if value.dtype == np.uint8:
                return array.array("B", value.tobytes())  # the fast path for image data
            return value.tolist()
        return list(value)
    if isinstance(slot_type, BasicType) and slot_type.typename == "octet":
        return bytes([value])
    if isinstance(slot_type, BasicType) and slot_type.typename == "char":
        return chr(value)
    return value


def to_rclpy(value, message_class):
    """A message deserialized by rosbags -> an instance of the rclpy `message_class`, field by field."""
    message = message_class()
    for name, slot_type in zip(message_class.get_fields_and_field_types(), message_class.SLOT_TYPES):
        setattr(message, name, _field_value(getattr(value, name), slot_type))
    return message


def _idl_documents(text: str) -> list[str]:
    """An IDL definition as rosbag2 stores it: one document, or several each under an '===...\nIDL: name' line."""
    if not text.startswith(IDL_SEPARATOR + "IDL: "):
        return [text]
    return [part.split("\n", 1)[1] for part in text.split(IDL_SEPARATOR)[1:]]


def bag_typestore(connections):
    """Humble's standard types, overridden by the definitions the bag carries (they describe its bytes).

    Bags from rosbags, from `ros2 bag record` into mcap and from Iron or later carry definitions; Humble's
    sqlite3 bags carry none, and the standard types cover them.
    """
    types = dict(get_typestore(Stores.ROS2_HUMBLE).fielddefs)
    for connection in connections:
        definition = connection.msgdef
        if definition.format == MessageDefinitionFormat.MSG:
            types.update(get_types_from_msg(definition.data, connection.msgtype))
        elif definition.format == MessageDefinitionFormat.IDL:
            for document in _idl_documents(definition.data):
                types.update(get_types_from_idl(document))
    typestore = get_typestore(Stores.EMPTY)
    typestore.register(types)
    return typestore


class BagReplayer:
    """Plays one bag through publishers on `node`: `run()` blocks until the bag ends, or `stop()` is called.

    Message i goes out at start + (t_i - t_0) / rate on the wall clock, t being the bag's receive timestamps.
    Messages are converted before their publication time comes, so a slow conversion does not delay them.
    With `loop`, each pass starts as soon as the previous one ends and stamps repeat, as with `ros2 bag play -l`.
    Publishing needs no executor: the node may be spun elsewhere, or not at all.
    """

    def __init__(self, node, bag_path, *, rate: float = 1.0, loop: bool = False, start_offset: float = 0.0,
                 topics: list[str] | None = None, reliability: str = "reliable", qos_depth: int = 10,
                 clock: bool = False, wait_for_subscribers: int = 0, wait_topics: list[str] | None = None,
                 wait_timeout: float = 30.0, on_publish: Callable[[str, object], None] | None = None):
        if not math.isfinite(rate) or rate <= 0:
            raise ReplayError(f"--rate must be a positive playback speed factor, got {rate}")
        if not math.isfinite(start_offset) or start_offset < 0:
            raise ReplayError(f"--start-offset must be >= 0 seconds, got {start_offset}")
        if reliability not in RELIABILITY:
            raise ReplayError(f"--qos must be one of {sorted(RELIABILITY)}, got {reliability!r}")
        if qos_depth < 1 or wait_for_subscribers < 0:
            raise ReplayError("--qos-depth must be >= 1 and --wait-for-subscribers >= 0")
        self.node, self.rate, self.loop = node, rate, loop
        self.on_publish = on_publish  # called as each message is about to go out: (topic, message)
        self.wait_for_subscribers, self.wait_timeout = wait_for_subscribers, wait_timeout
        self._stop = threading.Event()
        self._summary = ReplaySummary()
        self._publishers, self._clock_publisher = {}, None
        self._started: float | None = None
        self._finished: float | None = None
        bag_path = Path(bag_path)
        if not bag_path.exists():
            raise ReplayError(f"bag {bag_path} does not exist")
        try:
            self._reader = Reader(bag_path)
            self._reader.open()
        except (ReaderError, FileNotFoundError) as exc:
            raise ReplayError(f"cannot read the bag {bag_path}: {exc}") from exc
        try:
            self._setup(topics, RELIABILITY[reliability], qos_depth, clock, start_offset, wait_topics)
        except BaseException:
            self.close()
            raise

    def _setup(self, topics, reliability, qos_depth, clock, start_offset, wait_topics) -> None:
        available = {connection.topic for connection in self._reader.connections}
        unknown = sorted(set(topics or ()) - available)
        if unknown:
            raise ReplayError(f"topics {unknown} are not in the bag, which holds {sorted(available)}")
        self._connections = [c for c in self._reader.connections if not topics or c.topic in topics]
        if not self._connections:
            raise ReplayError(f"{self._reader.path} holds no topics")
        types = {}
        for connection in self._connections:
            if types.setdefault(connection.topic, connection.msgtype) != connection.msgtype:
                raise ReplayError(f"{connection.topic} holds both {types[connection.topic]} and "
                                  f"{connection.msgtype}; pick one type's topics with --topics")
        self.topics: dict[str, str] = types
        self._typestore = bag_typestore(self._connections)
        missing = sorted({t for t in types.values() if t not in self._typestore.fielddefs})
        if missing:
            raise ReplayError(f"the bag has no definition of {missing}, and they are not standard Humble types")
        bag_start, bag_duration = self._reader.start_time, self._reader.duration
        self._start_ns = bag_start + round(start_offset * NS_PER_S)
        if self._start_ns > bag_start + bag_duration:
            raise ReplayError(f"--start-offset {start_offset} s is past the bag's end ({bag_duration / NS_PER_S:.3f} "
                              f"s long)")
        self._reliability = reliability
        qos = QoSProfile(depth=qos_depth, reliability=reliability)
        self._publishers = {topic: self.node.create_publisher(rclpy_class(msgtype), topic, qos)
                            for topic, msgtype in types.items()}
        if clock:
            # Reliable: matches rclpy's and rclcpp's best-effort /clock subscriptions and reliable ones alike.
            self._clock_publisher = self.node.create_publisher(Clock, CLOCK_TOPIC, QoSProfile(depth=qos_depth))
        self.wait_topics = list(wait_topics) if wait_topics is not None else \
            [topic for topic, msgtype in types.items() if msgtype in IMAGE_TYPES and not is_label_topic(topic)]
        waitable = set(self._publishers) | ({CLOCK_TOPIC} if clock else set())
        unknown = sorted(set(self.wait_topics) - waitable)
        if unknown:
            raise ReplayError(f"--wait-topics {unknown} are not published; choose among {sorted(waitable)}")

    def _publisher_of(self, topic: str):
        return self._clock_publisher if topic == CLOCK_TOPIC else self._publishers[topic]

    def wait_until_subscribed(self) -> None:
        """Block until every wait topic has `wait_for_subscribers` subscribers; ReplayError names the rest."""
        deadline = time.monotonic() + self.wait_timeout
        while True:
            lacking = {topic: count for topic in self.wait_topics
                       if (count := self._publisher_of(topic).get_subscription_count()) < self.wait_for_subscribers}
            if not lacking:
                return
            if time.monotonic() > deadline:
                raise ReplayError(f"after {self.wait_timeout} s, fewer than {self.wait_for_subscribers} subscribers "
                                   f"on {lacking} (topic: subscribers); --wait-topics chooses the topics to wait for")
            if self._stop.wait(0.02):
                return

    def run(self) -> ReplaySummary:
        """Play the bag (again and again with loop) and return what was published."""
        if self.wait_for_subscribers:
            self.wait_until_subscribed()
        self._started = time.monotonic()
        try:
            while not self._stop.is_set():
                finished = self._play_once()
                if finished:
                    self._summary.passes += 1
                if not (finished and self.loop):
                    break
        finally:
            self._finished = time.monotonic()
            self._wait_for_acknowledgements()
        return self.summary()

    def _wait_for_acknowledgements(self, timeout: float = 5.0) -> None:
        """Reliable readers must acknowledge the last messages before the publishers go (or the process ends):
        otherwise the tail of the bag can be lost in flight."""
        if self._reliability != ReliabilityPolicy.RELIABLE:
            return
        for publisher in [*self._publishers.values(), self._clock_publisher]:
            if publisher is not None:
                publisher.wait_for_all_acked(Duration(seconds=timeout))

    def _play_once(self) -> bool:
        """One pass through the bag; False when stopped before its end."""
        first_ns = start = last_clock_ns = None
        for connection, timestamp, raw in self._reader.messages(self._connections, start=self._start_ns):
            message = to_rclpy(self._typestore.deserialize_cdr(raw, connection.msgtype),
                               rclpy_class(connection.msgtype))
            if first_ns is None:
                first_ns, start = timestamp, time.monotonic()
            delay = start + (timestamp - first_ns) / NS_PER_S / self.rate - time.monotonic()
            if self._stop.wait(max(delay, 0.0)):
                return False
            if self._clock_publisher is not None and timestamp != last_clock_ns:
                sec, nanosec = divmod(timestamp, NS_PER_S)
                self._clock_publisher.publish(Clock(clock=Time(sec=sec, nanosec=nanosec)))
                self._summary.clock_messages += 1
                last_clock_ns = timestamp
            if self.on_publish is not None:
                self.on_publish(connection.topic, message)
            self._publishers[connection.topic].publish(message)
            self._summary.published[connection.topic] = self._summary.published.get(connection.topic, 0) + 1
        return True

    def summary(self) -> ReplaySummary:
        """What has been published so far (a copy)."""
        wall_duration = 0.0 if self._started is None else (self._finished or time.monotonic()) - self._started
        return ReplaySummary(dict(self._summary.published), self._summary.clock_messages, self._summary.passes,
                             wall_duration)

    def stop(self) -> None:
        """Make `run()` return soon; safe from any thread."""
        self._stop.set()

    def close(self) -> None:
        """Close the bag and remove the publishers from the node; after `run()` has returned."""
        self._stop.set()
        for publisher in [*self._publishers.values(), self._clock_publisher]:
            if publisher is not None:
                self.node.destroy_publisher(publisher)
        self._publishers, self._clock_publisher = {}, None
        if self._reader.is_open:
            self._reader.close()

    def __enter__(self) -> BagReplayer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seg-bag-replay", description=__doc__.split("\n\n")[0])
    parser.add_argument("bag", help="rosbag2 folder (mcap or sqlite3)")
    parser.add_argument("--rate", type=float, default=1.0, help="playback speed factor (default: %(default)s)")
    parser.add_argument("--loop", action="store_true", help="start again at the end, until Ctrl-C")
    parser.add_argument("--start-offset", type=float, default=0.0, metavar="SECONDS",
                        help="skip this many seconds of the bag")
    parser.add_argument("--topics", nargs="+", help="only these topics (default: all)")
    parser.add_argument("--qos", choices=sorted(RELIABILITY), default="reliable",
                        help="publisher reliability (default: %(default)s)")
    parser.add_argument("--qos-depth", type=int, default=10, help="publisher history depth (default: %(default)s)")
    parser.add_argument("--clock", action="store_true", help=f"publish the bag time on {CLOCK_TOPIC}")
    parser.add_argument("--wait-for-subscribers", type=int, default=0, metavar="N",
                        help="before starting, wait until each of the --wait-topics has N subscribers")
    parser.add_argument("--wait-topics", nargs="+",
                        help="topics --wait-for-subscribers waits on (default: the camera topics, i.e. the Image "
                             "and CompressedImage topics except .../labels)")
    parser.add_argument("--wait-timeout", type=float, default=30.0, metavar="SECONDS",
                        help="give up waiting for subscribers after this long (default: %(default)s)")
    return parser


class StopRequest:
    """Notes the first SIGINT or SIGTERM for `play_until_stopped`. The handler only sets a flag: a Python handler
    runs between any two bytecodes of the main thread, possibly inside a lock it would need, and rclpy's own
    handler (left out by rclpy.init here) would invalidate the context that the publishers' last
    acknowledgements are awaited on."""

    def __init__(self):
        self.requested = False
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._note)

    def _note(self, signum, frame) -> None:
        self.requested = True


def play_until_stopped(replayer: BagReplayer, stop: StopRequest) -> ReplaySummary:
    """Play in a worker thread until the bag ends or a stop is requested, which ends playback as the end of the
    bag does (the last messages acknowledged)."""
    with ThreadPoolExecutor(1, thread_name_prefix="bag_replay") as pool:
        playing = pool.submit(replayer.run)
        while not playing.done():
            if stop.requested:
                replayer.stop()
            wait([playing], timeout=0.05)
        return playing.result()


@reports_user_errors
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(remove_ros_args(["seg-bag-replay", *argv])[1:])
    stop = StopRequest()
    rclpy.init(args=["seg-bag-replay", *argv], signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node("bag_replay")
    try:
        with BagReplayer(node, args.bag, rate=args.rate, loop=args.loop, start_offset=args.start_offset,
                         topics=args.topics, reliability=args.qos, qos_depth=args.qos_depth, clock=args.clock,
                         wait_for_subscribers=args.wait_for_subscribers, wait_topics=args.wait_topics,
                         wait_timeout=args.wait_timeout) as replayer:
            print(f"seg-bag-replay: {args.bag} at {args.rate:g}x: {', '.join(replayer.topics)}", flush=True)
            summary = play_until_stopped(replayer, stop)
    finally:
        ignore_stop_signals()  # this process is ending: nothing may interrupt the cleanup, however many signals come
        node.destroy_node()
        rclpy.try_shutdown()
    print(f"seg-bag-replay: {summary.describe()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
