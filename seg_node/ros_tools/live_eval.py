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
import os
import threading
import time
from pathlib import Path

import cv2
import numpy as np
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore
from tqdm import tqdm

from ..core.command_line import reports_user_errors
from ..core.image_codec import decode_compressed, decode_raw
from ..core.latency_stats import latency_summary
from ..ros.image_messages import stamp_ns
from ..toolchain.data import CAMVID_CLASSES
from ..toolchain.evaluation.metrics import ConfusionMatrix
from .bag_convert import BAG_VERSION, COMPRESSED_TYPE, IMAGE_TYPE, RECORDED_QOS, label_topic_for

RECORDED_OUTPUTS = {"mask": IMAGE_TYPE, "overlay": IMAGE_TYPE, "latency": "diagnostic_msgs/msg/DiagnosticArray"}


def read_bag_images(bag: Path, image_topic: str | None, label_topic: str | None):
    """(image topic, its type, {stamp: RGB image}, {stamp: label}) from a bag written by seg-camvid-to-bag."""
    typestore = get_typestore(Stores.ROS2_HUMBLE)
    with Reader(bag) as reader:
        image_connections = [c for c in reader.connections if c.msgtype in (IMAGE_TYPE, COMPRESSED_TYPE)
                             and (image_topic is None or c.topic == image_topic)]
        candidates = [c for c in image_connections if not c.topic.endswith("/labels")]
        if not candidates:
            raise SystemExit(f"{bag}: no image topic {image_topic or ''} in {[c.topic for c in reader.connections]}")
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


def live_evaluate(bag: str | Path, out: str | Path, *, model: str | None = None, backend: str = "onnxruntime",
                  device: str = "cpu", threads: int = 2, rate: float = 1.0, image_topic: str | None = None,
                  label_topic: str | None = None, record: bool = False, video: bool = False, pngs: int = 4,
                  video_fps: float = 5.0, node_name: str = "seg_node", settle: float = 3.0) -> dict:
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import Image

    from .bag_replay import BagReplayer
    from .node_process import SegNodeProcess, use_dds_profile
    from .ros_peer import RosPeer

    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    use_dds_profile()
    bag, out = Path(bag), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    topic, msgtype, images, labels = read_bag_images(bag, image_topic, label_topic)
    compressed = msgtype == COMPRESSED_TYPE
    parameters = {"backend": backend, "device": device, "threads": threads, "camera_names": [""],
                  "input_topics": [topic.removesuffix("/compressed") if compressed else topic],
                  "input_transport": "compressed" if compressed else "raw", "qos_reliability": "reliable",
                  "qos_depth": 10, "publish_color_mask": False, "publish_overlay": video or record}
    if model:
        parameters["model"] = str(model)
    node = SegNodeProcess(node_name, parameters, log_dir=out)
    sent_at: dict[int, float] = {}  # stamp -> when the replayer published the image
    peer = RosPeer("seg_node_live_eval")
    try:
        node.wait_until_ready()
        inboxes = {name: peer.subscribe(Image if name != "latency" else DiagnosticArray, node.topic(name))
                   for name in ("mask", "latency") + (("overlay",) if video or record else ())}
        for name in inboxes:
            peer.wait_for_publishers(node.topic(name))
        def note_publication(_, msg) -> None:
            sent_at.setdefault(stamp_ns(msg.header.stamp), time.perf_counter())

        replayer = BagReplayer(peer.node, bag, rate=rate, topics=[topic], wait_for_subscribers=1,
                               on_publish=note_publication)
        with replayer:
            progress = tqdm(total=len(images), desc=f"replaying {bag.name}", unit="frame")
            runner = threading.Thread(target=replayer.run)
            runner.start()
            while runner.is_alive():
                progress.n = len(inboxes["mask"])
                progress.refresh()
                time.sleep(0.1)
            runner.join()
            progress.close()
            summary = replayer.summary()
        settled_at, count = time.time(), len(inboxes["mask"])
        while time.time() - settled_at < settle and count < len(images):
            time.sleep(0.1)
            if len(inboxes["mask"]) != count:
                settled_at, count = time.time(), len(inboxes["mask"])
    finally:
        peer.close()
        status = node.stop()

    masks = inboxes["mask"].messages
    matrix = ConfusionMatrix(len(CAMVID_CLASSES))
    path_latency, scored = [], 0
    for msg, arrival in zip(masks, inboxes["mask"].arrivals):
        stamp = stamp_ns(msg.header.stamp)
        if stamp in labels:
            matrix.update(decode_raw("mono8", msg.height, msg.width, msg.step, msg.data).pixels[..., 0], labels[stamp])
            scored += 1
        if stamp in sent_at:
            path_latency.append(1e3 * (arrival - sent_at[stamp]))
    node_total = [float(next(kv.value for kv in m.status[0].values if kv.key == "total_ms"))
                  for m in inboxes["latency"].messages]
    frames_published = sum(summary.published.values())
    stamps = {stamp_ns(msg.header.stamp) for msg in masks}  # a frame is dropped when no mask carries its stamp
    result = {
        "bag": str(bag), "image_topic": topic, "model": model or "packaged default", "backend": backend,
        "rate": rate, "frames_published": frames_published, "masks_received": len(masks),
        "frames_dropped": frames_published - len(stamps), "masks_repeated": len(masks) - len(stamps),
        "masks_unmatched": len(stamps - set(labels)), "frames_scored": scored,
        **matrix.summary(CAMVID_CLASSES), "ros_path_latency_ms": rounded(latency_summary(path_latency)),
        "node_processing_ms": rounded(latency_summary(node_total)), "node_exit_status": status,
    }
    written = []
    if record:
        record_path = out / "outputs_bag"
        record_outputs(record_path, {node.topic(name): (msgtype_of, inboxes[name].messages)
                                     for name, msgtype_of in RECORDED_OUTPUTS.items() if name in inboxes})
        written.append(record_path)
    if video:
        written += write_overlay_media(out, images, inboxes["overlay"].messages, video_fps, pngs)
    (out / "live_eval.json").write_text(json.dumps(result, indent=2) + "\n")
    result["written"] = [str(p) for p in [out / "live_eval.json", *written]]
    return result


def print_result(result: dict) -> None:
    latency, node = result["ros_path_latency_ms"], result["node_processing_ms"]
    print(f"\n{result['frames_published']} frames published, {result['masks_received']} masks received, "
          f"{result['frames_dropped']} dropped; {result['frames_scored']} scored against the bag's labels")
    if result["masks_repeated"] or result["masks_unmatched"]:
        print(f"{result['masks_repeated']} masks repeated a stamp, {result['masks_unmatched']} stamps match no label")
    print(f"mIoU {result['miou']:.2f}, pixel accuracy {result['pixel_accuracy']:.2f}")
    per_class = result["per_class_iou"].items()
    print("  " + ", ".join(f"{k} {v if v is not None else float('nan'):.1f}" for k, v in per_class))
    if not np.isnan(latency["median"]):
        print(f"ROS path latency (published -> mask received), ms: median {latency['median']}, p95 {latency['p95']}, "
              f"p99 {latency['p99']}, max {latency['max']}")
        print(f"node processing (~/latency total), ms: median {node['median']}, p95 {node['p95']}")
    print("wrote: " + ", ".join(result["written"]))


@reports_user_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bag", help="rosbag2 with images and labels (seg-camvid-to-bag)")
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
    args = parser.parse_args(argv)
    print_result(live_evaluate(args.bag, args.out, model=args.model, backend=args.backend, device=args.device,
                               threads=args.threads, rate=args.rate, image_topic=args.image_topic,
                               label_topic=args.label_topic, record=args.record, video=args.video, pngs=args.pngs))


if __name__ == "__main__":
    main()
