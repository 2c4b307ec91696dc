"""The demo: a CamVid clip replayed as a rosbag through seg_node with the shipped model.

    scripts/demo                 # the 24-frame clip committed in data/camvid_clip, no download needed
    scripts/demo --full          # the full 171-frame Seq05VD test clip from $CAMVID_ROOT

Writes the bag, the node's recorded outputs, an overlay clip (MP4, input beside overlay), overlay PNGs and a
latency summary (live_eval.json) into --out, and prints where they are.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from ..core.command_line import reports_user_errors
from ..toolchain.evaluation.timing import CLIP
from .bag_convert import dataset_frames, write_bag
from .live_eval import live_evaluate, print_result
from .node_process import use_ros_environment


@reports_user_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="out/demo", help="output folder (replaced if it exists)")
    parser.add_argument("--full", action="store_true", help="use Seq05VD from $CAMVID_ROOT (or --data)")
    parser.add_argument("--data", help="CamVid folder for --full (default: $CAMVID_ROOT)")
    parser.add_argument("--model", help="model card or file (default: the packaged model)")
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--camera-hz", type=float, default=10.0, help="frame rate written into the bag")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    use_ros_environment()

    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    frames = dataset_frames(args.data if args.full else CLIP, "test", sequence="Seq05VD")
    bag = out / "camvid_seq05vd_bag"
    summary = write_bag(frames, bag, rate=args.camera_hz)
    print(summary.describe())
    result = live_evaluate(bag, out, model=args.model, backend=args.backend, threads=args.threads, record=True,
                           video=True, video_fps=args.camera_hz)
    print_result(result)
    print(f"\ndemo outputs are in {out.resolve()}: overlay.mp4, overlay_*.png, live_eval.json (latency and mIoU), "
          f"outputs_bag (recorded masks, overlays, latency), {bag.name} (the input bag)")


if __name__ == "__main__":
    main()
