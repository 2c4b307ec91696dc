"""A compact CamVid copy, for a (GPU) machine reached through a size-limited upload:

    seg-camvid-compact --data $CAMVID_ROOT --out .camvid_compact --splits train val --quality 90

Frames become JPEG, labels stay lossless PNG (class ids must not change), written in the 11-class layout
whatever the source layout was. Train and select models on the copy; measure test on the original PNGs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
from tqdm import tqdm

from ...core.command_line import reports_user_errors
from . import open_dataset
from .base import IGNORE_INDEX
from .camvid import SEGNET_VOID, SPLITS


def write_compact_copy(data: str | None, out: Path, splits: list[str], quality: int) -> dict[str, int]:
    """Write <out>/<split>/<name>.jpg and <out>/<split>annot/<name>.png; return the bytes written per split."""
    sizes = {}
    for split in splits:
        dataset = open_dataset(data, split, "camvid")
        image_dir, label_dir = out / split, out / f"{split}annot"
        image_dir.mkdir(parents=True, exist_ok=True)
        label_dir.mkdir(parents=True, exist_ok=True)
        sizes[split] = 0
        for sample in tqdm(dataset.samples(), desc=f"compacting {split}"):
            image, label = dataset.load(sample)
            image_path, label_path = image_dir / f"{sample.name}.jpg", label_dir / f"{sample.name}.png"
            cv2.imwrite(str(image_path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
            label[label == IGNORE_INDEX] = SEGNET_VOID
            cv2.imwrite(str(label_path), label, [cv2.IMWRITE_PNG_COMPRESSION, 9])
            sizes[split] += image_path.stat().st_size + label_path.stat().st_size
    return sizes


@reports_user_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="CamVid folder, either layout (default: $CAMVID_ROOT)")
    parser.add_argument("--out", required=True, type=Path, help="folder for the copy")
    parser.add_argument("--splits", nargs="+", default=["train", "val"], choices=SPLITS)
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality of the frames (1-100)")
    args = parser.parse_args(argv)
    if not 1 <= args.quality <= 100:
        parser.error(f"--quality must be in 1..100, got {args.quality}")
    sizes = write_compact_copy(args.data, args.out, args.splits, args.quality)
    print(", ".join(f"{split}: {size / 2**20:.1f} MiB" for split, size in sizes.items())
          + f"; {sum(sizes.values()) / 2**20:.1f} MiB in all, in {args.out}")


if __name__ == "__main__":
    main()
