"""Live evaluation: replay a labelled bag through a running seg_node and score what it publishes.

    seg-live-eval camvid_clip_bag --model models/camvid_mobile_unet.onnx --rate 0.5 --out out/live

The node runs in its own process, exactly as `ros2 run` starts it; this process replays the bag, receives the
masks, matches them to the bag's label images by header stamp and prints mIoU, frames received and dropped,
and the latency of the whole ROS path (image published -> mask received). Optionally it records the node's
outputs into a bag and writes an overlay clip (MP4, input beside overlay) and a few overlay PNGs.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore
from sensor_msgs.msg import Image
from tqdm import tqdm

from ..core.command_line import reports_user_errors
from ..core.errors import UserError
from ..core.image_codec import decode_compressed, decode_raw
from ..core.latency_stats import latency_summary
from ..core.model_files import resolve_model
from ..ros.image_messages import stamp_ns
from ..toolchain.data.class_match import label_lut, read_class_map
from ..toolchain.evaluation.metrics import ConfusionMatrix
from .bag_convert import (
    BAG_VERSION,
    CLASSES_FILE,
    COMPRESSED_TYPE,
    IMAGE_TYPE,
    RECORDED_QOS,
    bag_classes,
    label_topic_for,
)
from .bag_replay import BagReplayer, ReplaySummary, is_label_topic
from .node_process import running_seg_node, use_ros_environment
from .ros_peer import Inbox

RECORDED_OUTPUTS = {"mask": IMAGE_TYPE, "overlay": IMAGE_TYPE, "latency": "diagnostic_msgs/msg/DiagnosticArray"}


def read_bag_images(bag: Path, image_topic: str | None, label_topic: str | None):
    """(image topic, its type, {stamp: RGB image}, {stamp: label}) from a bag written by seg-dataset-to-bag."""
    typestore = get_typestore(Stores.ROS2_HUMBLE)
    with Reader(bag) as reader:
        image_connections = [c for c in reader.connections if c.msgtype in (IMAGE_TYPE, COMPRESSED_TYPE)
                             and (image_topic is None or c.topic == image_topic)]
        candidates = [c for c in image_connections if not is_label_topic(c.topic)]
        if not candidates:
            raise UserError(f"{bag}: no image topic {image_topic or ''} in {[c.topic for c in reader.connections]}")
        image_connection = candidates[0]
        label_topic = label_topic or label_topic_for(image_connection.topic.removesuffix("/compressed"))
        label_connections = [c for c in reader.connections if c.topic == label_topic]
        images, labels = {}, {}
        for connection, _, raw in reader.messages(connections=[image_connection, *label_connections]):
            msg = typestore.deserialize_cdr(raw, connection.msgtype)
            stamp = stamp_ns(msg.header.stamp)
            if connection.topic == label_topic:
                labels[stamp] = decode_raw("mono8", msg.height, msg.width, msg.step, msg.data).pixels[..., 0].copy()
            elif connection.msgtype == COMPRESSED_TYPE:
                images[stamp] = decode_compressed(msg.format, msg.data).as_rgb()
            else:
                images[stamp] = decode_raw(msg.encoding, msg.height, msg.width, msg.step, msg.data).as_rgb().copy()
    return image_connection.topic, image_connection.msgtype, images, labels


def labels_in_model_ids(bag: Path, labels: dict[int, np.ndarray], model_classes: list[str],
                        class_map: dict[str, str] | None) -> dict[int, np.ndarray]:
    """The bag's labels in the model's class ids, its classes.csv matched to the model's classes by name."""
    if not labels:
        return labels
    classes = bag_classes(bag)
    if classes is None:
        raise UserError(f"{bag} has labels but no {CLASSES_FILE} beside metadata.yaml to say their classes: "
                        f"write the bag with seg-dataset-to-bag")
    lut = label_lut(classes, model_classes, class_map)
    return {stamp: lut[label] for stamp, label in labels.items()}


def rounded(summary: dict[str, float]) -> dict[str, float]:
    return {key: round(value, 2) for key, value in summary.items()}


def record_outputs(path: Path, received: dict[str, list]) -> None:
    """Write the node's messages (as rclpy received them) into a rosbag2 (mcap)."""
    from rclpy.serialization import serialize_message
    typestore = get_typestore(Stores.ROS2_HUMBLE)
    with Writer(path, version=BAG_VERSION, storage_plugin=StoragePlugin.MCAP) as writer:
        for topic, (msgtype, messages) in received.items():
            connection = writer.add_connection(topic, msgtype, typestore=typestore, offered_qos_profiles=[RECORDED_QOS])
            for msg in messages:
                writer.write(connection, stamp_ns(msg.header.stamp), serialize_message(msg))


def image_of(msg) -> np.ndarray:
    return decode_raw(msg.encoding, msg.height, msg.width, msg.step, msg.data).as_rgb()


def write_overlay_media(out: Path, images: dict[int, np.ndarray], overlays: list, fps: float, pngs: int) -> list[Path]:
    """overlay.mp4 (input | overlay, in stamp order) and `pngs` evenly spaced PNG frames of it."""
    frames = sorted(overlays, key=lambda m: stamp_ns(m.header.stamp))
    if not frames:
        return []
    first = image_of(frames[0])
    size = (2 * first.shape[1], first.shape[0])
    video_path = out / "overlay.mp4"
    writer = cv2.VideoWriter(str(video_path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    keep = set(np.linspace(0, len(frames) - 1, min(pngs, len(frames))).astype(int).tolist())
    written = [video_path]
    for index, msg in enumerate(frames):
        side_by_side = np.concatenate([images[stamp_ns(msg.header.stamp)], image_of(msg)], axis=1)
        bgr = cv2.cvtColor(side_by_side, cv2.COLOR_RGB2BGR)
        writer.write(bgr)
        if index in keep:
            png = out / f"overlay_{index:04d}.png"
            cv2.imwrite(str(png), bgr)
            written.append(png)
    writer.release()
    return written


def node_parameters(topic: str, msgtype: str, model: str | None, backend: str, device: str, threads: int,
                    overlays: bool) -> dict:
    """The node for a live evaluation: on the bag's camera topic and transport, reliable and deep enough that no
    frame is lost on the way, overlays only when they are recorded or filmed."""
    compressed = msgtype == COMPRESSED_TYPE
    parameters = {"backend": backend, "device": device, "threads": threads, "camera_names": [""],
                  "input_topics": [topic.removesuffix("/compressed") if compressed else topic],
                  "input_transport": "compressed" if compressed else "raw", "qos_reliability": "reliable",
                  "qos_depth": 10, "publish_color_mask": False, "publish_overlay": overlays}
    if model:
        parameters["model"] = str(model)
    return parameters


def wait_until_settled(inbox: Inbox, expected: int, settle: float) -> None:
    """Until `expected` messages are in, or none has come for `settle` s (the node dropped the rest)."""
    settled_at, count = time.time(), len(inbox)
    while time.time() - settled_at < settle and count < expected:
        time.sleep(0.1)
        if len(inbox) != count:
            settled_at, count = time.time(), len(inbox)


def replay_to_node(node, bag: Path, topic: str, rate: float, frames: int, masks: Inbox,
                   settle: float) -> tuple[ReplaySummary, dict[int, float]]:
    """Play the bag's image topic to the node, once it subscribes, with a progress bar of the masks received,
    until its masks have settled: (what was published, stamp -> when it was published)."""
    sent_at: dict[int, float] = {}

    def note_publication(_, msg) -> None:
        sent_at.setdefault(stamp_ns(msg.header.stamp), time.perf_counter())

    with (BagReplayer(node.peer.node, bag, rate=rate, topics=[topic], wait_for_subscribers=1,
                      on_publish=note_publication) as replayer,
          ThreadPoolExecutor(1, thread_name_prefix="live_eval_replay") as pool,
          tqdm(total=frames, desc=f"replaying {bag.name}", unit="frame") as progress):
        playing = pool.submit(replayer.run)
        while not playing.done():
            progress.n = len(masks)
            progress.refresh()
            time.sleep(0.1)
        summary = playing.result()
    wait_until_settled(masks, frames, settle)
    return summary, sent_at


def frame_counts(masks: list, labels: dict[int, np.ndarray], frames_published: int) -> dict:
    """Frames published, masks received, and frames that got no mask (dropped: no mask carries their stamp)."""
    stamps = {stamp_ns(msg.header.stamp) for msg in masks}
    return {"frames_published": frames_published, "masks_received": len(masks),
            "frames_dropped": frames_published - len(stamps), "masks_repeated": len(masks) - len(stamps),
            "masks_unmatched": len(stamps - set(labels))}


def score_masks(masks: Inbox, labels: dict[int, np.ndarray], sent_at: dict[int, float],
                model_classes: list[str]) -> dict:
    """The masks scored against the labels of the same stamp, and each mask's ROS path latency (published ->
    received here)."""
    matrix = ConfusionMatrix(len(model_classes))
    path_latency, scored = [], 0
    for msg, arrival in zip(masks.messages, masks.arrivals):
        stamp = stamp_ns(msg.header.stamp)
        if stamp in labels:
            matrix.update(decode_raw("mono8", msg.height, msg.width, msg.step, msg.data).pixels[..., 0], labels[stamp])
            scored += 1
        if stamp in sent_at:
            path_latency.append(1e3 * (arrival - sent_at[stamp]))
    return {"frames_scored": scored, **matrix.summary(model_classes),
            "ros_path_latency_ms": rounded(latency_summary(path_latency))}


def write_outputs(out: Path, result: dict, node_topics: dict[str, str], inboxes: dict[str, Inbox],
                  images: dict[int, np.ndarray], record: bool, video: bool, pngs: int, video_fps: float) -> list[Path]:
    """live_eval.json, and the recorded outputs bag and the overlay media when asked for."""
    written = [out / "live_eval.json"]
    if record:
        written.append(out / "outputs_bag")
        record_outputs(written[-1], {node_topics[name]: (msgtype, inboxes[name].messages)
                                     for name, msgtype in RECORDED_OUTPUTS.items() if name in inboxes})
    if video:
        written += write_overlay_media(out, images, inboxes["overlay"].messages, video_fps, pngs)
    (out / "live_eval.json").write_text(json.dumps(result, indent=2) + "\n")
    return written


def live_evaluate(bag: str | Path, out: str | Path, *, model: str | None = None, backend: str = "onnxruntime",
                  device: str = "cpu", threads: int = 2, rate: float = 1.0, image_topic: str | None = None,
                  label_topic: str | None = None, record: bool = False, video: bool = False, pngs: int = 4,
                  video_fps: float = 5.0, node_name: str = "seg_node", settle: float = 3.0,
                  class_map: dict[str, str] | None = None) -> dict:
    bag, out = Path(bag), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    topic, msgtype, images, labels = read_bag_images(bag, image_topic, label_topic)
    model_classes = list(resolve_model(model)[0].classes)
    labels = labels_in_model_ids(bag, labels, model_classes, class_map)  # refuses mismatched classes up front
    outputs = ("mask", "latency") + (("overlay",) if video or record else ())
    parameters = node_parameters(topic, msgtype, model, backend, device, threads, overlays=video or record)
    with running_seg_node(parameters, name=node_name, log_dir=out) as node:
        inboxes = {name: node.peer.subscribe(DiagnosticArray if name == "latency" else Image, node.topic(name))
                   for name in outputs}
        node.peer.wait_until_matched([node.topic(name) for name in outputs])
        summary, sent_at = replay_to_node(node, bag, topic, rate, len(images), inboxes["mask"], settle)
    node_total = [float(next(kv.value for kv in m.status[0].values if kv.key == "total_ms"))
                  for m in inboxes["latency"].messages]
    result = {
        "bag": str(bag), "image_topic": topic, "model": model or "packaged default", "backend": backend,
        "rate": rate, **frame_counts(inboxes["mask"].messages, labels, sum(summary.published.values())),
        **score_masks(inboxes["mask"], labels, sent_at, model_classes),
        "node_processing_ms": rounded(latency_summary(node_total)), "node_exit_status": node.process.returncode,
    }
    written = write_outputs(out, result, {name: node.topic(name) for name in outputs}, inboxes, images, record,
                            video, pngs, video_fps)
    result["written"] = [str(p) for p in written]
    return result


def print_result(result: dict) -> None:
    latency, node = result["ros_path_latency_ms"], result["node_processing_ms"]
    print(f"\n{result['frames_published']} frames published, {result['masks_received']} masks received, "
          f"{result['frames_dropped']} dropped; {result['frames_scored']} scored against the bag's labels")
    if result["masks_repeated"] or result["masks_unmatched"]:
        print(f"{result['masks_repeated']} masks repeated a stamp, {result['masks_unmatched']} stamps match no label")
    print(f"mIoU {result['miou']:.2f}, pixel accuracy {result['pixel_accuracy']:.2f}")
    per_class = ((name, scores["iou"]) for name, scores in result["per_class"].items())
    print("  " + ", ".join(f"{k} {v if v is not None else float('nan'):.1f}" for k, v in per_class))
    if not np.isnan(latency["median"]):
        print(f"ROS path latency (published -> mask received), ms: median {latency['median']}, p95 {latency['p95']}, "
              f"p99 {latency['p99']}, max {latency['max']}")
        print(f"node processing (~/latency total), ms: median {node['median']}, p95 {node['p95']}")
    print("wrote: " + ", ".join(result["written"]))


@reports_user_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bag", help="rosbag2 with images and labels (seg-dataset-to-bag)")
    parser.add_argument("--out", required=True, help="folder for live_eval.json and the optional outputs")
    parser.add_argument("--model", help="model card or file (default: the packaged model)")
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rate", type=float, default=1.0, help="playback speed factor")
    parser.add_argument("--image-topic", help="default: the bag's image topic")
    parser.add_argument("--label-topic", help="default: <image topic base>/labels")
    parser.add_argument("--record", action="store_true", help="record masks, overlays and latency into a bag")
    parser.add_argument("--video", action="store_true", help="write overlay.mp4 and overlay PNGs")
    parser.add_argument("--pngs", type=int, default=4)
    parser.add_argument("--class-map", help="CSV `data_class,model_class` for bag classes named otherwise")
    args = parser.parse_args(argv)
    use_ros_environment()
    print_result(live_evaluate(args.bag, args.out, model=args.model, backend=args.backend, device=args.device,
                               threads=args.threads, rate=args.rate, image_topic=args.image_topic,
                               label_topic=args.label_topic, record=args.record, video=args.video, pngs=args.pngs,
                               class_map=read_class_map(args.class_map) if args.class_map else None))


if __name__ == "__main__":
    main()
