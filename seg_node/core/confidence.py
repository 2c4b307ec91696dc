"""Per-pixel confidence and a frame-level reliability score from the logits the pipeline already has.

Confidence is the top-class softmax probability of the logits divided by the card's temperature (temperature
scaling, Guo et al. 2017): 1 / C for uniform logits, near 1 where one class dominates. Alone it misses the
worst failure: under strong noise a network can paint the whole frame one class, confidently. The frame score
therefore multiplies the mean margin between the two most probable classes (which tells clean frames from
corrupted ones better than the top-class probability) by the square root of the predicted classes' spread (the
normalised entropy of the mask's class histogram: 0 for one class everywhere, which catches that collapse).
The candidates compared, and how each told clean from corrupted frames: docs/results.md, "Confidence".

Both terms are read on every SCORE_STRIDE-th row and column of the network input's pixels (fewer rows of logits
that come at a lower resolution): the same value in the node, seg-robustness and seg-calibrate-confidence, at a
fixed cost whatever the image size.
"""

from __future__ import annotations

import cv2
import numpy as np

from .postprocess import argmax_channels

#: the frame score reads every 8th row and column: 1/64 of the pixels, 0.73 ms at 480x360 (seg-benchmark
#: confidence), scores within 0.01 of every 4th's on the committed clip
SCORE_STRIDE = 8


def score_stride(scores_height: int, input_height: int) -> int:
    """The stride over scores at `scores_height` rows that reads every SCORE_STRIDE-th input row."""
    return max(1, round(SCORE_STRIDE * scores_height / input_height))


#: the smallest probability taken as a logarithm: log(0) would turn a certain class's rivals into -inf
SMALLEST_PROBABILITY = np.finfo(np.float32).tiny


def as_logits(probabilities: np.ndarray) -> np.ndarray:
    """log p: logits whose softmax is p again, so temperature scaling applies to a model that outputs
    probabilities (softmax(log p / T) = p^(1/T), renormalised)."""
    return np.log(np.maximum(probabilities, SMALLEST_PROBABILITY))


def direct(kind: str, temperature: float) -> bool:
    """Whether the scores are the probabilities wanted as they are (a softmax in the graph, no temperature)."""
    return kind == "probabilities" and temperature == 1.0


def top_class_probability(scores: np.ndarray, temperature: float = 1.0, kind: str = "logits") -> np.ndarray:
    """C x h x w logits -> h x w float32 max_c softmax(logits / T)_c = 1 / sum_c exp((l_c - l_max) / T); for
    probabilities (`kind`) their maximum, tempered when T != 1."""
    if direct(kind, temperature):
        return scores.max(axis=0)
    logits = as_logits(scores) if kind == "probabilities" else scores
    shifted = logits - logits.max(axis=0)
    if temperature != 1.0:
        shifted *= np.float32(1.0 / temperature)
    np.exp(shifted, out=shifted)
    return np.reciprocal(shifted.sum(axis=0))


def class_spread(labels: np.ndarray, classes: int) -> float:
    """Entropy of the labels' class histogram divided by log(classes): 0 when one class fills the frame, 1 when
    all share it equally (1 for a one-class model, which cannot collapse)."""
    if classes < 2:
        return 1.0
    shares = np.bincount(labels.ravel(), minlength=classes) / labels.size
    shares = shares[shares > 0]
    return max(0.0, float(-(shares * np.log(shares)).sum() / np.log(classes)))  # one class: -0.0 otherwise


def top_two_margin(scores: np.ndarray, temperature: float = 1.0, kind: str = "logits") -> np.ndarray:
    """C x h x w logits -> h x w float32 p1 - p2, the two largest softmax(logits / T): p1 (1 - exp((l2 - l1) / T));
    for probabilities (`kind`) the difference of the two largest, tempered when T != 1."""
    if scores.shape[0] < 2:
        return np.ones(scores.shape[1:], np.float32)
    top_two = np.partition(scores, scores.shape[0] - 2, axis=0)[-2:]
    if direct(kind, temperature):
        return top_two[1] - top_two[0]
    if kind == "probabilities":
        scores, top_two = as_logits(scores), as_logits(top_two)
    gap = (top_two[0] - top_two[1]) * np.float32(1.0 / temperature)  # <= 0
    return top_class_probability(scores, temperature) * -np.expm1(gap)


def frame_score(scores: np.ndarray, temperature: float = 1.0, kind: str = "logits", stride: int = SCORE_STRIDE
                ) -> float:
    """Mean top-two margin x sqrt(class spread of the argmax), both over every `stride`-th row and column of the
    C x h x w logits (or probabilities, `kind`): in [0, 1], higher is more reliable."""
    sample = np.ascontiguousarray(scores[:, ::stride, ::stride])  # a copy first: 2x faster after
    margin = float(top_two_margin(sample, temperature, kind).mean())
    return margin * float(np.sqrt(class_spread(argmax_channels(sample), scores.shape[0])))


def confidence_image(scores: np.ndarray, height: int, width: int, temperature: float = 1.0,
                     kind: str = "logits") -> np.ndarray:
    """H x W uint8 confidence, 0-255 for probability 0-1: computed at network resolution, then resized
    bilinearly to the image (resizing the uint8 map is cheaper than resizing C float channels)."""
    scaled = top_class_probability(scores, temperature, kind)
    scaled *= 255.0
    scaled += 0.5
    image = scaled.astype(np.uint8)
    if image.shape != (height, width):
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    return image
