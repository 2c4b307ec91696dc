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
from .confidence import as_logits, confidence_image, frame_score, score_stride
from .model_card import ModelCard, ModelCardError
from .model_files import resolve_model
from .postprocess import decode_output, logits_to_mask, palette_lut, resize_scores, upsample_labels
from .preprocess import resize, to_network_input
from .render import DisplayImages, render_display


@dataclass
class SegmentationResult:
    mask: np.ndarray
    #: the frame score in [0, 1] (seg_node.core.confidence.frame_score): low when the mask is unsure; NaN for a
    #: model that outputs labels only (no scores, no confidence)
    score: float = float("nan")
    #: H x W uint8 per-pixel confidence (0-255), only when segment() was asked for it and the model has scores
    confidence: np.ndarray | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)


def per_image(value, count: int) -> list:
    """One value for all images, or a sequence of one per image."""
    if not isinstance(value, (list, tuple)):
        return [value] * count
    if len(value) != count:
        raise ValueError(f"{len(value)} values for {count} images: give one for all, or one per image")
    return list(value)


class SegmentationPipeline:
    def __init__(self, backend: Backend, card: ModelCard, upsampling: str = "boundaries"):
        self.backend = backend
        self.card = card
        self.interface = card.interface
        self.upsampling = upsampling
        self.lut = palette_lut(card.palette)
        #: the last network-input batch, reused while its shape holds (card size, batch of one at first)
        self.network_input = np.empty(self.interface.input_shape(1, card.input.height, card.input.width),
                                      self.interface.input_dtype_numpy)
        self.logit_offsets = (np.asarray(card.logit_offsets, np.float32).reshape(1, -1, 1, 1)
                              if card.logit_offsets else None)

    @property
    def has_confidence(self) -> bool:
        """False for a model that outputs labels: no frame score, no confidence image, no reliability monitor."""
        return self.interface.has_scores

    @classmethod
    def from_model(cls, model: str | Path | None, backend: str = "onnxruntime", device: str = "auto",
                   precision: str = "auto", threads: int = 0, upsampling: str = "boundaries",
                   tensorrt: TensorRTOptions | None = None) -> SegmentationPipeline:
        """Load a model (its card, or any file beside the card; None: the packaged default)."""
        card, card_path = resolve_model(model)
        return cls(create_backend(backend, card, card_path, device, precision, threads, tensorrt), card, upsampling)

    def prepare(self, image: np.ndarray, channel_order: str = "rgb") -> np.ndarray:
        """Resize and normalize into the reused network-input buffer, a batch of one."""
        return self.prepare_batch([image], [channel_order])

    def prepare_batch(self, images: list[np.ndarray], channel_orders: list[str]) -> np.ndarray:
        """Images that share a network size (interface.network_size) -> one network-input batch in the model's
        layout and dtype."""
        height, width = self.interface.network_size(self.card.input, *images[0].shape[:2])
        shape = self.interface.input_shape(len(images), height, width)
        if self.network_input.shape != shape:
            self.network_input = np.empty(shape, self.interface.input_dtype_numpy)
        for slot, image, order in zip(self.network_input, images, channel_orders):
            to_network_input(resize(image, height, width), self.card.input, self.interface, order, slot)
        return self.network_input

    def run_network(self, network_input: np.ndarray) -> np.ndarray:
        """N x C x h x w scores (logits or probabilities), or N x h x w uint8 class ids for a labels model; for a
        flip-averaged model the mean of the network's scores on the input and, mirrored back, on its mirror image
        (two passes); plus the card's logit_offsets, if it has any."""
        output = decode_output(self.backend.infer(network_input), self.interface, self.card.num_classes)
        if self.card.flip_average:
            width_axis = 3 if self.interface.input_layout == "NCHW" else 2
            mirrored = np.ascontiguousarray(np.flip(network_input, axis=width_axis))
            output += decode_output(self.backend.infer(mirrored), self.interface, self.card.num_classes)[..., ::-1]
            output *= 0.5
        if self.logit_offsets is not None:
            output += self.logit_offsets
        return output

    def logits(self, image: np.ndarray, channel_order: str = "rgb") -> np.ndarray:
        """C x h x w logits at the network input's size (resized bilinearly when the network returns fewer), for
        tools that need more than the mask; for a model that outputs probabilities their logarithm (whose softmax
        is the probabilities again)."""
        if not self.has_confidence:
            raise ModelCardError(f"model {self.card.name} outputs labels, not per-class scores: this needs a model "
                                 "whose output is logits or probabilities")
        scores = self.run_network(self.prepare(image, channel_order))[0]
        height, width = self.interface.network_size(self.card.input, *image.shape[:2])
        if scores.shape[1] < height:
            scores = resize_scores(scores, height, width)
        return as_logits(scores) if self.interface.output_kind == "probabilities" else scores

    def segment(self, image: np.ndarray, channel_order: str = "rgb", confidence: bool = False) -> SegmentationResult:
        """H x W x 3 uint8 image (rgb or bgr) -> H x W uint8 class ids and the frame score; with `confidence`,
        also the per-pixel confidence at the image's size (a full-resolution softmax: only when someone wants it)."""
        return self.segment_together([image], [channel_order], [confidence])[0]

    def segment_batch(self, images: list[np.ndarray], channel_order: str | list[str] = "rgb",
                      confidence: bool | list[bool] = False) -> list[SegmentationResult]:
        """segment() for several images (several cameras' frames) with one backend call for all that share a
        network size (all of them unless the model takes each image at its own size); masks equal to segment()'s.
        `channel_order` and `confidence`: one for all, or one per image."""
        orders, wanted = per_image(channel_order, len(images)), per_image(confidence, len(images))
        groups: dict[tuple[int, int], list[int]] = {}
        for index, image in enumerate(images):
            groups.setdefault(self.interface.network_size(self.card.input, *image.shape[:2]), []).append(index)
        results: list[SegmentationResult] = [None] * len(images)
        for indices in groups.values():
            together = self.segment_together([images[i] for i in indices], [orders[i] for i in indices],
                                             [wanted[i] for i in indices])
            for index, result in zip(indices, together):
                results[index] = result
        return results

    def segment_together(self, images: list[np.ndarray], channel_orders: list[str],
                         confidence: list[bool]) -> list[SegmentationResult]:
        """Images of one network size through one backend call. Each result's timings are what its frame waited
        for: the batch's preprocessing and inference, then its own postprocessing (after the ones before it)."""
        start = time.perf_counter()
        network_input = self.prepare_batch(images, channel_orders)
        preprocessed = time.perf_counter()
        outputs = self.run_network(network_input)
        inferred = finished = time.perf_counter()
        results = []
        for image, output, wanted in zip(images, outputs, confidence):
            began, result = finished, self.finish(output, image.shape[0], image.shape[1], wanted)
            finished = time.perf_counter()
            result.timings_ms = {
                "preprocess": 1e3 * (preprocessed - start),
                "inference": 1e3 * (inferred - preprocessed),
                "postprocess": 1e3 * (finished - began),  # mask, score and confidence (seg-benchmark confidence)
                "total": 1e3 * (finished - start),
            }
            results.append(result)
        return results

    def finish(self, output: np.ndarray, height: int, width: int, confidence: bool) -> SegmentationResult:
        """One image's network output -> its mask at height x width, frame score and (if asked) confidence."""
        if not self.has_confidence:
            return SegmentationResult(upsample_labels(output, height, width))
        kind, temperature = self.interface.output_kind, self.card.confidence.temperature
        mask = logits_to_mask(output, height, width, self.upsampling)
        input_height = self.interface.network_size(self.card.input, height, width)[0]
        score = frame_score(output, temperature, kind, score_stride(output.shape[1], input_height))
        pixels = confidence_image(output, height, width, temperature, kind) if confidence else None
        return SegmentationResult(mask, score, pixels)

    def render(self, image: np.ndarray, channel_order: str, mask: np.ndarray, scale: float = 1.0, alpha: float = 0.5,
               color_mask: bool = True, blended: bool = True) -> DisplayImages:
        """The display outputs of `mask` over `image` in the card's palette (seg_node.core.render)."""
        return render_display(image, channel_order, mask, self.lut, scale, alpha, color_mask, blended)
