"""The segmentation pipeline: image -> network input -> backend -> class mask, with per-stage timings.

No ROS here: the node, the evaluator and the benchmarks all call `SegmentationPipeline.segment`, so a
number measured offline is the number the node delivers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .backends import Backend, TensorRTOptions, create_backend
from .confidence import confidence_image, frame_score
from .model_card import ModelCard
from .model_files import resolve_model
from .postprocess import colorize, logits_to_mask, overlay, palette_lut
from .preprocess import normalize, resize_for_network


@dataclass
class SegmentationResult:
    mask: np.ndarray
    #: the frame score in [0, 1] (seg_node.core.confidence.frame_score): low when the mask is unsure
    score: float = float("nan")
    #: H x W uint8 per-pixel confidence (0-255), only when segment() was asked for it
    confidence: np.ndarray | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)


class SegmentationPipeline:
    def __init__(self, backend: Backend, card: ModelCard, upsampling: str = "boundaries"):
        self.backend = backend
        self.card = card
        self.upsampling = upsampling
        self.lut = palette_lut(card.palette)
        self.network_input = np.empty((1, 3, card.input.height, card.input.width), np.float32)
        self.mirrored_input = np.empty_like(self.network_input) if card.flip_average else None
        self.logit_offsets = (np.asarray(card.logit_offsets, np.float32).reshape(1, -1, 1, 1)
                              if card.logit_offsets else None)

    @classmethod
    def from_model(cls, model: str | Path | None, backend: str = "onnxruntime", device: str = "auto",
                   precision: str = "auto", threads: int = 0, upsampling: str = "boundaries",
                   tensorrt: TensorRTOptions = TensorRTOptions()) -> "SegmentationPipeline":
        """Load a model (its card, or any file beside the card; None: the packaged default)."""
        card, card_path = resolve_model(model)
        return cls(create_backend(backend, card, card_path, device, precision, threads, tensorrt), card, upsampling)

    def prepare(self, image: np.ndarray, channel_order: str = "rgb") -> np.ndarray:
        """Resize and normalize into the reused 1 x 3 x h x w network-input buffer."""
        normalize(resize_for_network(image, self.card.input), self.card.input, channel_order, out=self.network_input[0])
        return self.network_input

    def run_network(self, network_input: np.ndarray) -> np.ndarray:
        """1 x C x h x w logits; for a flip-averaged model the mean of the network's logits on the input and,
        mirrored back, on its mirror image (two passes); plus the card's logit_offsets, if it has any."""
        logits = self.backend.infer(network_input)
        if self.mirrored_input is not None:
            np.copyto(self.mirrored_input, network_input[..., ::-1])
            logits += self.backend.infer(self.mirrored_input)[..., ::-1]
            logits *= 0.5
        if self.logit_offsets is not None:
            logits += self.logit_offsets
        return logits

    def logits(self, image: np.ndarray, channel_order: str = "rgb") -> np.ndarray:
        """C x h x w logits at network resolution, for tools that need more than the mask."""
        return self.run_network(self.prepare(image, channel_order))[0]

    def segment(self, image: np.ndarray, channel_order: str = "rgb", confidence: bool = False) -> SegmentationResult:
        """H x W x 3 uint8 image (rgb or bgr) -> H x W uint8 class ids and the frame score; with `confidence`,
        also the per-pixel confidence at the image's size (a full-resolution softmax: only when someone wants it)."""
        start = time.perf_counter()
        network_input = self.prepare(image, channel_order)
        preprocessed = time.perf_counter()
        logits = self.run_network(network_input)[0]
        inferred = time.perf_counter()
        mask = logits_to_mask(logits, image.shape[0], image.shape[1], self.upsampling)
        temperature = self.card.confidence.temperature
        score = frame_score(logits, temperature)
        pixels = confidence_image(logits, image.shape[0], image.shape[1], temperature) if confidence else None
        done = time.perf_counter()
        return SegmentationResult(mask, score, pixels, {
            "preprocess": 1e3 * (preprocessed - start),
            "inference": 1e3 * (inferred - preprocessed),
            "postprocess": 1e3 * (done - inferred),  # mask, score and confidence (seg-benchmark --confidence)
            "total": 1e3 * (done - start),
        })

    def colorize(self, mask: np.ndarray) -> np.ndarray:
        """Class ids -> RGB palette colours."""
        return colorize(mask, self.lut)

    def overlay(self, image_rgb: np.ndarray, color_mask: np.ndarray, alpha: float) -> np.ndarray:
        return overlay(image_rgb, color_mask, alpha)
