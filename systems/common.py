"""What the three baseline systems share (BASELINES.md, "Shared machinery").

    volume = cached_intensities(cache, case_id)        # (H, W, D, 4) raw intensities of the crop
    inputs = normalise_slices(volume, (1, 99))          # Kermi / Ben naceur per-slice z-scores

Each baseline normalises the raw scanner intensities its own way, whereas the cache holds the
EEN's per-volume brain z-scores; the cache's meta.json keeps that z-score's mean and std, so the
raw intensities come back exactly (background stays 0). Labels travel as the cache stores them,
nested regions (..., 3) = WT, TC, ET; each loss turns them into its system's own coding.
"""
from __future__ import annotations

import numpy as np

from brats.cases import MODALITIES
from datasets.volumes import block_mean, upsample

BACKGROUND_MARKER = -9.0  # Kermi and Ben naceur set each slice's minimum (the background) to this


# ---- intensities ------------------------------------------------------------------------------

def cached_intensities(cache, case_id: str) -> np.ndarray:
    """float32 (H, W, D, 4) raw intensities of a cached crop, channels FLAIR, T1, T1ce, T2.

    Inverts the cache's brain z-score with the mean and std in meta.json; background voxels (0 in
    the cache, 0 in the scan) stay 0.
    """
    stats = cache.meta(case_id)["normalisation"]
    image = np.array(cache.image(case_id, MODALITIES), dtype=np.float32)
    for channel, modality in enumerate(MODALITIES):
        z, scale = image[..., channel], stats[modality]
        brain = z != 0
        z[brain] = z[brain] * np.float32(scale["std"]) + np.float32(scale["mean"])
    return image


def case_intensities(case, factor: int = 1) -> np.ndarray:
    """float32 (X, Y, Z, 4) raw intensities of a loaded case on its whole grid (block-averaged by
    `factor` as preprocess.py does, so that a 3 mm model sees 3 mm voxels)."""
    images = [case.stored[m] for m in MODALITIES]
    if factor > 1:
        images = [block_mean(image, factor) for image in images]
    return np.stack([np.asarray(image, np.float32) for image in images], axis=-1)


def normalise_slices(volume: np.ndarray, percentiles: tuple = (1.0, 99.0),
                     marker: float = BACKGROUND_MARKER) -> np.ndarray:
    """Per axial slice and channel: clip to the percentiles, z-score on the non-zero pixels, and
    set the pixels at the slice minimum to `marker`. (H, W, D, C) -> float32 (H, W, D, C).

    The published rule (Kermi et al.; Ben naceur et al. with its clip repaired): percentiles over
    the whole slice, background included; a slice constant overall or over its non-zero pixels is
    only clipped. The slices are the columns of an (H*W, D*C) matrix, done 64 at a time.
    """
    height, width = volume.shape[:2]
    columns = np.asarray(volume, np.float32).reshape(height * width, -1)
    out = np.empty(columns.shape, np.float32)
    for start in range(0, columns.shape[1], 64):
        chunk = slice(start, start + 64)
        out[:, chunk] = normalise_columns(columns[:, chunk], percentiles, marker)
    return out.reshape(volume.shape)


def normalise_columns(columns: np.ndarray, percentiles: tuple, marker: float) -> np.ndarray:
    """normalise_slices on flattened slices: (pixels, slices) -> float32 (pixels, slices)."""
    low, high = np.percentile(columns, percentiles, axis=0).astype(np.float32)
    clipped = np.clip(columns, low, high)
    nonzero = clipped != 0
    count = nonzero.sum(axis=0)
    mean = np.where(nonzero, clipped, 0).sum(axis=0, dtype=np.float64) / np.maximum(count, 1)
    spread = np.where(nonzero, (clipped - mean) ** 2, 0).sum(axis=0) / np.maximum(count, 1)
    top = np.where(nonzero, clipped, -np.inf).max(axis=0)
    bottom = np.where(nonzero, clipped, np.inf).min(axis=0)
    scaled = (clipped.max(axis=0) > clipped.min(axis=0)) & (top > bottom)
    std = np.sqrt(np.where(scaled, spread, 1.0))
    out = np.where(scaled, (clipped - mean) / std, clipped).astype(np.float32)
    out[(clipped == clipped.min(axis=0)) & scaled] = marker
    return out


def brain_pixels(inputs: np.ndarray) -> np.ndarray:
    """bool (H, W, D): FLAIR neither the background marker nor 0 (Kermi's patch-centre rule)."""
    flair = inputs[..., 0]
    return (flair != BACKGROUND_MARKER) & (flair != 0)


# ---- labels -----------------------------------------------------------------------------------

def regions_from_classes(classes: np.ndarray) -> np.ndarray:
    """Class indices (...) 0..3 for labels 0, 1, 2, 4 -> float32 regions (..., 3) WT, TC, ET."""
    return np.stack([classes > 0, (classes == 1) | (classes == 3), classes == 3],
                    axis=-1).astype(np.float32)


# ---- whole-case inference ---------------------------------------------------------------------

def predict_slices(model, inputs: np.ndarray, multiple: int, batch: int = 4,
                   pad_value: float = BACKGROUND_MARKER) -> np.ndarray:
    """A fully convolutional 2D network on every axial slice: (X, Y, Z, C) -> (X, Y, Z, K).

    Slices are padded with `pad_value` (the background) to multiples of `multiple` (the network's
    total down-sampling) and cropped back; 240x240 needs no padding for either 2D baseline.
    """
    height, width, depth = inputs.shape[:3]
    pad = [(0, -height % multiple), (0, -width % multiple), (0, 0), (0, 0)]
    slices = np.moveaxis(np.pad(inputs, pad, constant_values=pad_value), 2, 0)
    outputs = [np.asarray(model.predict_on_batch(slices[start:start + batch]), np.float32)
               for start in range(0, depth, batch)]
    return np.moveaxis(np.concatenate(outputs), 0, 2)[:height, :width]


def argmax_regions(probabilities: np.ndarray) -> np.ndarray:
    """Softmax outputs (..., 4) -> their argmax as 0/1 regions (..., 3) (class 3 is label 4)."""
    return regions_from_classes(np.argmax(probabilities, axis=-1))


def on_case_grid(regions: np.ndarray, factor: int, shape: tuple) -> np.ndarray:
    """Regions computed on a block-averaged grid -> the case's grid (X, Y, Z, 3)."""
    return upsample(regions, factor, tuple(shape[:3]))
