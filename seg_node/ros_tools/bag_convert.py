"""seg-dataset-to-bag: write a data set split (any registered layout) or a folder of images into a rosbag2, as a
camera driver records them.

A bag is the reproducible way to feed a ROS pipeline: `ros2 bag play` or `seg-bag-replay` turn it back into live
topics, and the ground-truth labels travel on their own topic with the same stamps for live evaluation, with the
data set's class table as classes.csv beside metadata.yaml (seg-live-eval matches it to the model's classes).
Written with the pure-Python `rosbags` library, so it runs without ROS installed.
"""

from __future__ import annotations

import argparse
import itertools
import math
import posixpath
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from functools import partial
from pathlib import Path

import numpy as np
from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore
from tqdm import tqdm

from ..core.command_line import reports_user_errors
from ..core.errors import UserError
from ..core.image_codec import COMPRESSED_FORMATS, encode_compressed, encode_raw
from ..toolchain.data import ClassTable, open_dataset
from ..toolchain.data.arguments import add_dataset_arguments
from ..toolchain.data.base import read_rgb

# rosbags 0.11 writes rosbag2 metadata versions 8 and 9 only (Humble itself writes 5). Humble's reader has no
# upper version check: it reads the fields it knows and ignores newer ones (custom_data, ros_distro,
# type_description_hash), but it parses each topic's offered_qos_profiles as a YAML *string*, which version 9
# turned into a YAML list (the usual "bad conversion" on Jazzy bags in Humble). Version 8 keeps the string, so
# `ros2 bag info/play` of Humble, Iron, Jazzy and later read these bags.
BAG_VERSION = 8
STORAGES = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
RAW_IMAGE_ENCODINGS = ("rgb8", "bgr8")
VIDEO_FPS = 30  # CamVid frame numbers count frames of the 30 fps source video
VIDEO_FRAME_NAME = re.compile(r"^(?P<sequence>.+)_f?(?P<number>\d+)$")  # Seq05VD_f00030, 0001TP_008550
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
CLASSES_FILE = "classes.csv"  # the labels' class table, beside metadata.yaml
NS_PER_S = 1_000_000_000
DEFAULT_START_NS = 1_700_000_000 * NS_PER_S
IMAGE_TYPE, COMPRESSED_TYPE = "sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage"
# What a camera driver offers: ros2 bag play (Humble and later) adapts its publishers to the recorded offer.
RECORDED_QOS = Qos(history=QosHistory.KEEP_LAST, depth=10, reliability=QosReliability.RELIABLE,
                   durability=QosDurability.VOLATILE, deadline=QosTime(0, 0), lifespan=QosTime(0, 0),
                   liveliness=QosLiveliness.AUTOMATIC, liveliness_lease_duration=QosTime(0, 0),
                   avoid_ros_namespace_conventions=False)


class ConversionError(UserError):
    """Input or options that cannot make a bag; the message says what to change."""


@dataclass(frozen=True)
class Frame:
    """One image to write; `load` returns (RGB H x W x 3, class ids H x W or None)."""

    name: str
    load: Callable[[], tuple[np.ndarray, np.ndarray | None]]

    @property
    def video_frame(self) -> tuple[str, int] | None:
        """(sequence, frame number) from a CamVid-style name, None for other names."""
        match = VIDEO_FRAME_NAME.match(self.name)
        return (match["sequence"], int(match["number"])) if match else None


@dataclass(frozen=True)
class FrameSet:
    """Frames to write and the class table of their labels (None for unlabelled frames)."""

    frames: list[Frame]
    classes: ClassTable | None


@dataclass(frozen=True)
class BagSummary:
    path: Path
    storage: str
    message_counts: dict[str, int]
    start_ns: int
    duration_ns: int

    def describe(self) -> str:
        counts = ", ".join(f"{count} on {topic}" for topic, count in self.message_counts.items())
        return f"wrote {self.path} ({self.storage}): {counts}; {self.duration_ns / NS_PER_S:.3f} s"


def _select(items: list, sequence: str | None, limit: int | None, source: str) -> list:
    """Items (anything with a `.name`) whose name starts with `sequence`, at most `limit` of them."""
    if sequence:
        items = [item for item in items if item.name.startswith(sequence)]
    if limit is not None:
        if limit <= 0:
            raise ConversionError(f"--limit must be a positive number of frames, got {limit}")
        items = items[:limit]
    if not items:
        raise ConversionError(f"no frames found in {source}" + (f" whose name starts with {sequence!r}"
                                                                  if sequence else ""))
    return items


def dataset_frames(root, split: str = "test", sequence: str | None = None, limit: int | None = None,
                   layout: str = "auto", **layout_options) -> FrameSet:
    """Frames of a data set split (any layout `open_dataset` reads), labels as its class ids, 255 unlabelled."""
    dataset = open_dataset(root, split, layout, **layout_options)
    samples = _select(dataset.samples(), sequence, limit, f"{dataset.root} split {split}")
    return FrameSet([Frame(sample.name, partial(dataset.load, sample)) for sample in samples], dataset.classes)


def _load_unlabelled(image_path: Path) -> tuple[np.ndarray, None]:
    return read_rgb(image_path), None


def folder_frames(frames_dir, sequence: str | None = None, limit: int | None = None) -> FrameSet:
    """Unlabelled images of a plain folder, sorted by name (labelled frames: the folders data set layout)."""
    frames_dir = Path(frames_dir)
    if not frames_dir.is_dir():
        raise ConversionError(f"frames folder {frames_dir} does not exist")
    images = _select(sorted(p for p in frames_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES),
                     sequence, limit, str(frames_dir))
    return FrameSet([Frame(image.stem, partial(_load_unlabelled, image)) for image in images], None)


def bag_classes(bag: str | Path) -> ClassTable | None:
    """The class table of a bag's labels (classes.csv beside metadata.yaml), None when the bag has none."""
    path = Path(bag) / CLASSES_FILE
    return ClassTable.from_csv(path) if path.is_file() else None


def frame_stamps(frames: list[Frame], rate: float | None = 30.0, real_time: bool = False,
                 start_ns: int = DEFAULT_START_NS) -> list[int]:
    """Stamps (ns) of the frames: `rate` Hz apart, or the frames' own spacing in the 30 fps source video."""
    if not real_time:
        if rate is None or not math.isfinite(rate) or rate <= 0:
            raise ConversionError(f"--rate must be a positive number of frames per second, got {rate}")
        return [start_ns + round(index * NS_PER_S / rate) for index in range(len(frames))]
    positions = [frame.video_frame for frame in frames]
    if None in positions:
        unnamed = [frame.name for frame, position in zip(frames, positions) if position is None]
        raise ConversionError(f"--real-time needs names like Seq05VD_f00030 (sequence_frame number), "
                              f"got {unnamed[:3]}; use --rate instead")
    sequences = sorted({sequence for sequence, _ in positions})
    if len(sequences) > 1:
        raise ConversionError(f"--real-time needs one sequence, the frames span {sequences}: pick one with "
                              f"--sequence, or use --rate 1 for CamVid's 1 s spacing")
    numbers = [number for _, number in positions]
    if any(later <= earlier for earlier, later in itertools.pairwise(numbers)):
        raise ConversionError("--real-time needs increasing frame numbers, the sorted names repeat one")
    return [start_ns + round((number - numbers[0]) * NS_PER_S / VIDEO_FPS) for number in numbers]


def label_topic_for(image_topic: str) -> str:
    """/camera/image_raw -> /camera/labels: the labels live beside the camera's image topics."""
    return posixpath.join(posixpath.dirname(image_topic), "labels")


def _check_topic(topic: str, option: str) -> str:
    if not topic.startswith("/") or topic.endswith("/") or "//" in topic:
        raise ConversionError(f"{option} must be an absolute topic name like /camera/image_raw, got {topic!r}")
    return topic


class MessageMaker:
    """Serialized Image, CompressedImage and label messages with the stamps and frame id of a camera driver."""

    def __init__(self, frame_id: str, encoding: str, compressed: str | None, jpeg_quality: int):
        self.frame_id, self.encoding, self.compressed, self.jpeg_quality = frame_id, encoding, compressed, jpeg_quality
        self.typestore = get_typestore(Stores.ROS2_HUMBLE)

    @property
    def image_type(self) -> str:
        return COMPRESSED_TYPE if self.compressed else IMAGE_TYPE

    def header(self, stamp_ns: int):
        Header, Time = self.typestore.types["std_msgs/msg/Header"], self.typestore.types["builtin_interfaces/msg/Time"]
        sec, nanosec = divmod(stamp_ns, NS_PER_S)
        return Header(stamp=Time(sec=sec, nanosec=nanosec), frame_id=self.frame_id)

    def raw(self, pixels: np.ndarray, pixel_encoding: str, stamp_ns: int) -> bytes:
        height, width, step, data = encode_raw(pixels, pixel_encoding)
        message = self.typestore.types[IMAGE_TYPE](header=self.header(stamp_ns), height=height, width=width,
                                                   encoding=pixel_encoding, is_bigendian=0, step=step,
                                                   data=np.frombuffer(data, np.uint8))
        return self.typestore.serialize_cdr(message, IMAGE_TYPE)

    def image(self, rgb: np.ndarray, stamp_ns: int) -> bytes:
        if not self.compressed:
            pixels = rgb if self.encoding == "rgb8" else np.ascontiguousarray(rgb[..., ::-1])
            return self.raw(pixels, self.encoding, stamp_ns)
        data = encode_compressed(rgb, "rgb", self.compressed, self.jpeg_quality)
        # image_transport's format: original encoding; codec compressed <encoding inside the codec>
        message = self.typestore.types[COMPRESSED_TYPE](
            header=self.header(stamp_ns), format=f"{self.encoding}; {self.compressed} compressed bgr8",
            data=np.frombuffer(data, np.uint8))
        return self.typestore.serialize_cdr(message, COMPRESSED_TYPE)

    def label(self, label: np.ndarray, stamp_ns: int) -> bytes:
        return self.raw(label, "mono8", stamp_ns)


def check_output_options(output: Path, storage: str, encoding: str, compressed: str | None, jpeg_quality: int
                         ) -> None:
    if output.exists():
        raise ConversionError(f"{output} already exists; remove it or choose another --output")
    if storage not in STORAGES:
        raise ConversionError(f"--storage must be one of {sorted(STORAGES)}, got {storage!r}")
    if encoding not in RAW_IMAGE_ENCODINGS:
        raise ConversionError(f"--encoding must be one of {RAW_IMAGE_ENCODINGS}, got {encoding!r}")
    if compressed is not None and compressed not in COMPRESSED_FORMATS:
        raise ConversionError(f"--compressed must be one of {COMPRESSED_FORMATS}, got {compressed!r}")
    if not 0 <= jpeg_quality <= 100:
        raise ConversionError(f"--jpeg-quality must be 0..100, got {jpeg_quality}")


def write_frames(writer: Writer, frames: list[Frame], stamps: list[int], maker: MessageMaker, image_topic: str,
                 label_topic: str, progress: bool, desc: str) -> dict[str, int]:
    """Each frame's image, and its label when it has one; returns the message count per topic."""
    image_connection = writer.add_connection(image_topic, maker.image_type, typestore=maker.typestore,
                                             offered_qos_profiles=[RECORDED_QOS])
    label_connection, counts = None, {image_topic: 0}
    for frame, stamp_ns in zip(tqdm(frames, desc=desc, unit="frame", disable=not progress), stamps):
        rgb, label = frame.load()
        writer.write(image_connection, stamp_ns, maker.image(rgb, stamp_ns))
        counts[image_topic] += 1
        if label is None:
            continue
        if label_connection is None:
            label_connection = writer.add_connection(label_topic, IMAGE_TYPE, typestore=maker.typestore,
                                                     offered_qos_profiles=[RECORDED_QOS])
            counts[label_topic] = 0
        writer.write(label_connection, stamp_ns, maker.label(label, stamp_ns))
        counts[label_topic] += 1
    return counts


def write_bag(frames: FrameSet, output, *, topic: str = "/camera/image_raw", label_topic: str | None = None,
              encoding: str = "rgb8", compressed: str | None = None, jpeg_quality: int = 90,
              frame_id: str = "camera", rate: float | None = 30.0, real_time: bool = False,
              start_ns: int = DEFAULT_START_NS, storage: str = "mcap", progress: bool = True) -> BagSummary:
    """Write `frames` as Image (or CompressedImage on <topic>/compressed), their labels as mono8 Image and the
    labels' class table as classes.csv beside metadata.yaml.

    Header stamps equal the bag's receive timestamps, so playback with or without sim time agrees with the
    stamps. A failed conversion removes the half-written bag.
    """
    output = Path(output)
    check_output_options(output, storage, encoding, compressed, jpeg_quality)
    if not frames.frames:
        raise ConversionError("no frames to write")
    image_topic = _check_topic(topic, "--topic") + ("/compressed" if compressed else "")
    label_topic = _check_topic(label_topic or label_topic_for(topic), "--label-topic")
    if label_topic == image_topic:
        raise ConversionError(f"images and labels would share the topic {image_topic}; set --label-topic")
    stamps = frame_stamps(frames.frames, rate, real_time, start_ns)
    maker = MessageMaker(frame_id, encoding, compressed, jpeg_quality)
    try:
        with Writer(output, version=BAG_VERSION, storage_plugin=STORAGES[storage]) as writer:
            counts = write_frames(writer, frames.frames, stamps, maker, image_topic, label_topic, progress,
                                  output.name)
        if label_topic in counts and frames.classes is not None:
            frames.classes.to_csv(output / CLASSES_FILE)
    except BaseException:
        shutil.rmtree(output, ignore_errors=True)
        raise
    return BagSummary(output, storage, counts, stamps[0], stamps[-1] - stamps[0])


def _seconds_to_ns(text: str) -> int:
    """Seconds as typed -> exact nanoseconds (a float cannot hold ns at epoch scale)."""
    try:
        seconds = Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not seconds.is_finite() or seconds < 0:
        raise argparse.ArgumentTypeError(f"--start-time must be >= 0 seconds, got {text}")
    return int(seconds * NS_PER_S)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seg-dataset-to-bag", description=__doc__.split("\n\n")[0])
    add_dataset_arguments(parser, class_map=False)
    source = parser.add_argument_group("frames")
    source.add_argument("--split", default="test", help="data set split (default: %(default)s)")
    source.add_argument("--frames", help="a plain folder of unlabelled images instead of a data set")
    source.add_argument("--sequence", help="only frames whose name starts with this, e.g. Seq05VD")
    source.add_argument("--limit", type=int, help="at most this many frames")
    output = parser.add_argument_group("output")
    output.add_argument("-o", "--output", required=True, help="bag folder to create (must not exist)")
    output.add_argument("--storage", choices=sorted(STORAGES), default="mcap", help="(default: %(default)s)")
    output.add_argument("--topic", default="/camera/image_raw",
                        help="image topic, + /compressed with --compressed (default: %(default)s)")
    output.add_argument("--label-topic", help="labels topic (default: labels beside --topic, /camera/labels)")
    output.add_argument("--frame-id", default="camera", help="(default: %(default)s)")
    output.add_argument("--encoding", choices=RAW_IMAGE_ENCODINGS, default="rgb8",
                        help="pixel order of raw images (default: %(default)s)")
    output.add_argument("--compressed", choices=COMPRESSED_FORMATS, help="write CompressedImage instead of Image")
    output.add_argument("--jpeg-quality", type=int, default=90, help="(default: %(default)s)")
    timing = parser.add_argument_group("timing").add_mutually_exclusive_group()
    timing.add_argument("--rate", type=float, default=30.0, help="frames per second (default: %(default)s)")
    timing.add_argument("--real-time", action="store_true",
                        help="the frames' spacing in the 30 fps video (1 Hz for CamVid's annotated frames)")
    parser.add_argument("--start-time", type=_seconds_to_ns, default="1700000000.0",
                        help="stamp of the first frame, seconds since the epoch (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


@reports_user_errors
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.frames:
        frames = folder_frames(args.frames, args.sequence, args.limit)
    else:
        frames = dataset_frames(args.data, args.split, args.sequence, args.limit, args.layout,
                                ignore_colours=tuple(args.ignore_colour))
    summary = write_bag(frames, args.output, topic=args.topic, label_topic=args.label_topic,
                        encoding=args.encoding, compressed=args.compressed, jpeg_quality=args.jpeg_quality,
                        frame_id=args.frame_id, rate=args.rate, real_time=args.real_time,
                        start_ns=args.start_time, storage=args.storage, progress=not args.no_progress)
    print(summary.describe() + (f", classes in {summary.path / CLASSES_FILE}" if frames.classes else ""),
          flush=True)


if __name__ == "__main__":
    main()
