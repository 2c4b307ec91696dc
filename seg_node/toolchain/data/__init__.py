"""Datasets: each layout is one class with `items()`; `open_dataset` picks the layout by name or detects it."""

from .camvid import (
                     CAMVID_CLASSES,
                     CAMVID_PALETTE,
                     DATASET_LAYOUTS,
                     VOID_INDEX,
                     CamVid11,
                     CamVid32,
                     CamVidLayoutError,
                     Sample,
                     camvid_root,
                     open_dataset,
)

__all__ = ["CAMVID_CLASSES", "CAMVID_PALETTE", "VOID_INDEX", "CamVid11", "CamVid32", "CamVidLayoutError",
           "DATASET_LAYOUTS", "Sample", "camvid_root", "open_dataset"]
