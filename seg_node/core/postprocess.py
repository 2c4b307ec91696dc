"""Network output (logits, probabilities or labels) -> class mask at the image's size -> class colours (the
display outputs: render.py)."""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

from .errors import UserError
from .model_card import InterfaceSpec

UPSAMPLING_MODES = ("boundaries", "logits", "labels")


class ModelOutputError(UserError, RuntimeError):
    """The model's output for a frame cannot become a mask (NaN or infinite scores, class ids beyond the card's
    classes, a class axis of another size): that frame fails, with the reason, and the next one is served."""


def decode_output(output: np.ndarray, interface: InterfaceSpec, num_classes: int) -> np.ndarray:
    """The model's output in its layout -> N x C x h x w float32 scores (logits or probabilities), or N x h x w
    uint8 class ids for a labels output; checked, so a broken output fails the frame instead of painting one."""
    problem = interface.output_problem(output.shape, num_classes)
    if problem:
        raise ModelOutputError(problem)
    if interface.output_layout == "NHWC":
        output = output.transpose(0, 3, 1, 2)
    if interface.output_kind == "labels":
        return checked_labels(output.reshape(output.shape[0], *output.shape[-2:]), num_classes)
    scores = np.ascontiguousarray(output, np.float32)
    if not np.isfinite(scores).all():
        bad = int(scores.size - np.isfinite(scores).sum())
        raise ModelOutputError(f"the model's {interface.output_kind} hold {bad} NaN or infinite value(s) of "
                               f"{scores.size}: no mask for this frame")
    return scores


def checked_labels(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Integer class ids -> uint8, refusing ids outside the card's classes (a card that does not fit the model)."""
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        raise ModelOutputError(f"the model's labels hold class id {high if high >= num_classes else low}, outside "
                               f"the card's {num_classes} classes (0-{num_classes - 1}): the card's classes do not "
                               "match the model")
    return labels.astype(np.uint8)


def upsample_labels(labels: np.ndarray, height: int, width: int) -> np.ndarray:
    """h x w class ids -> height x width by nearest neighbour."""
    if labels.shape == (height, width):
        return labels
    return cv2.resize(labels, (width, height), interpolation=cv2.INTER_NEAREST)


def argmax_channels(logits: np.ndarray) -> np.ndarray:
    """Argmax over the first axis of C x H x W logits as uint8; a channel loop beats np.argmax(axis=0)."""
    best = logits[0].copy()
    labels = np.zeros(logits.shape[1:], np.uint8)
    for class_id in range(1, logits.shape[0]):
        better = logits[class_id] > best
        labels[better] = class_id
        np.maximum(best, logits[class_id], out=best)
    return labels


@lru_cache(maxsize=16)
def _linear_taps(source: int, target: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """cv2.INTER_LINEAR's sampling along one axis (half-pixel centres, edges clamped): for each target index the
    lower source index and the upper one's weight, and for each source index the first target index that has it
    as its lower index and how many do."""
    position = (np.arange(target) + 0.5) * (source / target) - 0.5
    low = np.floor(position).astype(np.intp)
    weight = (position - low).astype(np.float32)
    weight[low < 0] = 0.0
    low[low < 0] = 0
    weight[low >= source - 1] = 0.0
    low[low >= source - 1] = source - 1
    first = np.searchsorted(low, np.arange(source + 1))
    for array in (low, weight, first):
        array.flags.writeable = False
    return low, weight, first[:-1], np.diff(first)


def refine_boundaries(logits: np.ndarray, height: int, width: int) -> np.ndarray:
    """The argmax of bilinearly upsampled logits (height, width >= the logits'), computed only where the
    network-size labels change.

    A target pixel takes a convex combination of its four source pixels' logits; where all four have the same
    argmax, so does the combination, so the nearest-neighbour label is exact there. Elsewhere (a few percent of
    the pixels) the combination is evaluated for the four corners' classes, so a class that wins none of the
    corners cannot win between them (rare: the mask differs from full bilinear logits on ~0.01% of pixels).
    """
    classes, rows, cols = logits.shape
    labels = argmax_channels(logits)
    mask = cv2.resize(labels, (width, height), interpolation=cv2.INTER_NEAREST)
    _, row_weight, row_first, row_count = _linear_taps(rows, height)
    _, col_weight, col_first, col_count = _linear_taps(cols, width)
    padded = np.pad(labels, ((0, 1), (0, 1)), mode="edge")
    corner = padded[:-1, :-1]
    mixed = (corner != padded[:-1, 1:]) | (corner != padded[1:, :-1]) | (corner != padded[1:, 1:])
    cell_row, cell_col = np.nonzero(mixed & (row_count[:, None] > 0) & (col_count[None, :] > 0))
    below, right = np.minimum(cell_row + 1, rows - 1) * cols, np.minimum(cell_col + 1, cols - 1)
    corners = np.stack([cell_row * cols + cell_col, cell_row * cols + right, below + cell_col, below + right], 1)
    candidates = labels.reshape(-1)[corners]  # cells x 4: each corner's class
    values = logits.reshape(classes, -1)[candidates[:, :, None], corners[:, None, :]]  # cells x class x corner
    # the bilinear form a + b x + (c + d x) y of each candidate class over its cell
    terms = (values[..., 0], values[..., 1] - values[..., 0], values[..., 2] - values[..., 0],
             values[..., 3] - values[..., 2] - values[..., 1] + values[..., 0])
    pixels = row_count[cell_row] * col_count[cell_col]  # target pixels in each cell: a rows x cols block
    local = np.arange(int(pixels.sum())) - np.repeat(np.cumsum(pixels) - pixels, pixels)
    block_width = np.repeat(col_count[cell_col], pixels)
    block_row = local // block_width
    y = np.repeat(row_first[cell_row], pixels) + block_row
    x = np.repeat(col_first[cell_col], pixels) + (local - block_row * block_width)
    wx, wy = col_weight[x][:, None], row_weight[y][:, None]
    score = np.repeat(terms[3], pixels, 0)
    score *= wx
    score += np.repeat(terms[2], pixels, 0)
    score *= wy
    score += np.repeat(terms[1], pixels, 0) * wx
    score += np.repeat(terms[0], pixels, 0)
    winner = np.argmax(score, axis=1)[:, None]
    mask[y, x] = np.take_along_axis(np.repeat(candidates, pixels, 0), winner, 1)[:, 0]
    return mask


def logits_to_mask(logits: np.ndarray, height: int, width: int, upsampling: str = "boundaries") -> np.ndarray:
    """C x h x w logits -> H x W uint8 class ids.

    'logits' resizes the logits bilinearly before the argmax (smooth, exact class boundaries, but 12 channels
    at full size: ~90 ms at 1920x1080 on 2 cores); 'boundaries' gives the same mask for a few ms by evaluating
    the bilinear logits only where the classes change (refine_boundaries); 'labels' takes the argmax at network
    size and resizes the mask by nearest neighbour (cheapest, blocky edges when the image is much larger).
    """
    if upsampling not in UPSAMPLING_MODES:
        raise ValueError(f"upsampling must be one of {UPSAMPLING_MODES}, got {upsampling!r}")
    if logits.shape[1:] == (height, width):
        return argmax_channels(logits)
    if upsampling == "labels":
        return upsample_labels(argmax_channels(logits), height, width)
    if upsampling == "boundaries" and height >= logits.shape[1] and width >= logits.shape[2]:
        return refine_boundaries(logits, height, width)  # when shrinking, full-size logits are the cheap way
    return argmax_channels(resize_scores(logits, height, width))


def resize_scores(scores: np.ndarray, height: int, width: int) -> np.ndarray:
    """C x h x w -> C x height x width, bilinear (half-pixel centres, as torch's align_corners=False)."""
    channels_last = np.ascontiguousarray(scores.transpose(1, 2, 0))
    resized = cv2.resize(channels_last, (width, height), interpolation=cv2.INTER_LINEAR)
    if resized.ndim == 2:
        resized = resized[..., None]
    return np.ascontiguousarray(resized.transpose(2, 0, 1))


def palette_lut(palette: list[list[int]] | tuple) -> np.ndarray:
    """256 x 1 x 3 lookup table (cv2.LUT, cv2.applyColorMap); ids beyond the palette map to black."""
    lut = np.zeros((256, 1, 3), np.uint8)
    lut[:len(palette), 0] = np.asarray(palette, np.uint8)
    return lut


def colorize(mask: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """H x W class ids -> H x W x 3 colours (RGB when the palette is RGB). applyColorMap with a user map is the
    same lookup without the 3-channel copy of the mask, and 6x faster than cv2.LUT on it (1.8 vs 11 ms at HD)."""
    return cv2.applyColorMap(mask, lut)

