#!/usr/bin/env python3
"""Peak resident memory of one epoch through the streaming loader, for a small and a large split.

Builds a synthetic Cityscapes-layout split of 2048x1024 frames in a temporary folder (one smooth frame and one
label, linked under every frame name, so the disk holds two files while every item is still read and decoded),
then iterates one epoch of `make_loader` with a random-crop transform in a fresh process per split size. A
sampler polls the resident memory (VmRSS) of that process and its workers every 20 ms and keeps the peak of the
sum. Prints the peaks; nothing is asserted. Run it on a quiet machine:

    python scripts/measure_loader_memory.py                       # 100 and 1,000 frames, 1 worker
    python scripts/measure_loader_memory.py --frames 100 3000 --workers 2 --crop 512
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

WIDTH, HEIGHT = 2048, 1024
KIB = 1024


def build_split(root: Path, frames: int) -> None:
    """leftImg8bit/train/synth/*_leftImg8bit.png and gtFine/train/synth/*_gtFine_labelIds.png, all links to one
    frame and one label."""
    rng = np.random.default_rng(0)
    image = cv2.resize(rng.integers(0, 256, (16, 32, 3), np.uint8), (WIDTH, HEIGHT), interpolation=cv2.INTER_CUBIC)
    label = np.repeat(np.array([7, 8, 11, 21, 23, 26], np.uint8), HEIGHT // 6 + 1)[:HEIGHT, None].repeat(WIDTH, 1)
    images, labels = root / "leftImg8bit" / "train" / "synth", root / "gtFine" / "train" / "synth"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    cv2.imwrite(str(root / "frame.png"), image)
    cv2.imwrite(str(root / "label.png"), label)
    for index in range(frames):
        (images / f"synth_{index:06d}_000019_leftImg8bit.png").symlink_to(root / "frame.png")
        (labels / f"synth_{index:06d}_000019_gtFine_labelIds.png").symlink_to(root / "label.png")


def iterate_epoch(root: str, workers: int, crop: int, batch_size: int) -> None:
    """One epoch of random crops (run in the measured process)."""
    from seg_node.toolchain.data import open_dataset
    from seg_node.toolchain.data.loader import make_loader

    def random_crop(image, label, rng):
        y, x = rng.integers(0, HEIGHT - crop), rng.integers(0, WIDTH - crop)
        return (image[y:y + crop, x:x + crop].transpose(2, 0, 1).astype(np.float32),
                label[y:y + crop, x:x + crop].astype(np.int64))

    loader = make_loader(open_dataset(root, "train", "cityscapes"), random_crop, batch_size=batch_size,
                         shuffle=True, workers=workers)
    loader.set_epoch(0)
    pixels = sum(int(y.numel()) for _, y in loader)
    print(f"{len(loader.frames)} frames, {pixels} label pixels", file=sys.stderr)


def tree_rss_kib(pid: int) -> int:
    """VmRSS of a process and all its descendants, in KiB (0 for a process that is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        rss = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
        children = " ".join(p.read_text() for p in Path(f"/proc/{pid}/task").glob("*/children")).split()
    except (FileNotFoundError, ProcessLookupError):
        return 0
    return rss + sum(tree_rss_kib(int(child)) for child in children)


def peak_rss_mib(root: Path, workers: int, crop: int, batch_size: int) -> tuple[float, float]:
    """(peak MiB of the process tree, seconds) for one epoch in a fresh interpreter."""
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import measure_loader_memory as m; "
            f"m.iterate_epoch({str(root)!r}, {workers}, {crop}, {batch_size})")
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-c", code])
    peak = 0
    while process.poll() is None:
        peak = max(peak, tree_rss_kib(process.pid))
        time.sleep(0.02)
    if process.returncode:
        raise SystemExit(f"the epoch failed with exit status {process.returncode}")
    return peak / KIB, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, nargs="+", default=[100, 1000], help="split sizes to compare")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--crop", type=int, default=256, help="square random crop, pixels")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    frame_mib = WIDTH * HEIGHT * 4 / 2**20  # RGB + label, uint8
    for frames in args.frames:
        with tempfile.TemporaryDirectory(prefix="loader_memory_") as folder:
            build_split(Path(folder), frames)
            peak, seconds = peak_rss_mib(Path(folder), args.workers, args.crop, args.batch_size)
        print(f"{frames:>6} frames of {WIDTH}x{HEIGHT}: peak RSS {peak:7.0f} MiB over one epoch ({seconds:.0f} s, "
              f"{args.workers} worker(s), {args.crop}px crops, batch {args.batch_size}); the split in arrays would "
              f"take {frames * frame_mib:,.0f} MiB", flush=True)


if __name__ == "__main__":
    main()
