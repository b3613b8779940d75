"""A case's volumes on the network's grid and back (SPEC.md section 1).

Forward, for the cache and for prediction: crop to the network's box (centred on the volume or on
the brain), optionally block-averaged to a coarser grid, z-scored over the brain, labels turned
into the nested regions WT, TC, ET. Back, for the portal files: probabilities upsampled and put
back into the original grid (full_grid).

Shapes: volumes (X, Y, Z) or (X, Y, Z, C); regions (..., 3) uint8 in the order WT, TC, ET.
"""
from __future__ import annotations

import numpy as np

from brats.cases import MODALITIES, Case, CaseError, in_threads

REGIONS = ("WT", "TC", "ET")
REGION_LABELS = {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}


# ---- geometry ---------------------------------------------------------------------------------

def crop_offsets(shape: tuple, size: tuple, mode: str = "center",
                 brain: np.ndarray | None = None) -> tuple:
    """Start index of the crop box per axis (negative where the box is larger than the volume).

    center: (shape - size) // 2, so 240x240x155 -> 192x160x108 starts at (24, 40, 23). brain: the box centred on the bounding box of `brain` (a boolean
    mask), moved inside the volume where it would leave it.
    """
    if mode == "center" or brain is None or not brain.any():
        return tuple(int((n - s) // 2) for n, s in zip(shape, size))
    if mode != "brain":
        raise ValueError(f"unknown crop mode {mode!r}")
    offsets = []
    for axis, (n, s) in enumerate(zip(shape, size)):
        other = tuple(a for a in range(brain.ndim) if a != axis)
        present = np.flatnonzero(brain.any(axis=other))
        centre = (present[0] + present[-1] + 1) / 2
        start = int(round(centre - s / 2))
        offsets.append(int((n - s) // 2) if s >= n else min(max(start, 0), n - s))
    return tuple(offsets)


def _box(offsets: tuple, size: tuple, shape: tuple) -> tuple:
    """(slices into the volume, slices into the crop) of the overlap of box and volume."""
    source = tuple(slice(max(o, 0), min(o + s, n)) for o, s, n in zip(offsets, size, shape))
    target = tuple(slice(sl.start - o, sl.stop - o) for sl, o in zip(source, offsets))
    return source, target


def crop(volume: np.ndarray, offsets: tuple, size: tuple) -> np.ndarray:
    """volume[(X, Y, Z, ...)] -> (size..., ...), zero-padded where the box leaves the volume."""
    source, target = _box(offsets, size, volume.shape[:3])
    if all(sl.stop - sl.start == s for sl, s in zip(source, size)):
        return volume[source]
    out = np.zeros(tuple(size) + volume.shape[3:], volume.dtype)
    out[target] = volume[source]
    return out


def uncrop(cropped: np.ndarray, offsets: tuple, shape: tuple) -> np.ndarray:
    """Inverse of crop: put (size..., ...) back into a zero volume of `shape` (X, Y, Z)."""
    size = cropped.shape[:3]
    source, target = _box(offsets, size, shape)
    out = np.zeros(tuple(shape) + cropped.shape[3:], cropped.dtype)
    out[source] = cropped[target]
    return out


def block_mean(volume: np.ndarray, factor: int) -> np.ndarray:
    """float32 mean over factor^3 blocks of (X, Y, Z, ...), zero-padding X, Y, Z up to a multiple.

    Summed one block axis at a time, the innermost first: 5-8 times faster than numpy's mean over
    the three at once, and the same numbers for integer images and 0/1 regions, whose float32
    sums are exact in any order (tests/test_preprocess.py)."""
    pad = [(0, -n % factor) for n in volume.shape[:3]] + [(0, 0)] * (volume.ndim - 3)
    padded = np.pad(volume.astype(np.float32, copy=False), pad)
    x, y, z = (n // factor for n in padded.shape[:3])
    blocks = padded.reshape(x, factor, y, factor, z, factor, *padded.shape[3:])
    for axis in (5, 3, 1):
        blocks = blocks.sum(axis=axis, dtype=np.float32)
    return blocks / np.float32(factor ** 3)


def downsampled_shape(shape: tuple, factor: int) -> tuple:
    return tuple(-(-n // factor) for n in shape[:3])


def upsample(volume: np.ndarray, factor: int, shape: tuple) -> np.ndarray:
    """Inverse of block_mean for probabilities: (x, y, z, ...) -> `shape` (X, Y, Z, ...) by linear
    interpolation, each block's value at its centre and repeated past the edges.

    The function of scipy's ndimage.zoom(order=1, mode="nearest", grid_mode=True) cut to `shape`,
    to within float32 rounding (1e-6), one axis at a time, Z first while the volume is smallest
    (its gathers are the slowest): 0.1 s instead of 3.0 s for the three 80x80x52 maps of a BraTS
    case (tests/test_predict.py, docs/test-durations.md)."""
    if factor == 1:
        return volume
    if volume.dtype.kind != "f":
        volume = volume.astype(np.float32)
    for axis in (2, 1, 0):
        volume = linear_along(volume, axis, factor, shape[axis])
    return volume


def linear_along(volume: np.ndarray, axis: int, factor: int, size: int) -> np.ndarray:
    """`volume` interpolated along `axis` to `size` voxels of 1/factor of its own: voxel i of the
    output lies at (i + 0.5) / factor - 0.5 of the input, between its neighbours low and low + 1
    (clamped to the volume: the edge repeated)."""
    centres = (np.arange(size) + 0.5) / factor - 0.5
    low = np.floor(centres)
    shape = [1] * volume.ndim
    shape[axis] = size
    weight = (centres - low).astype(np.float32).reshape(shape)
    last = volume.shape[axis] - 1
    below = np.take(volume, np.clip(low.astype(int), 0, last), axis=axis)
    above = np.take(volume, np.clip(low.astype(int) + 1, 0, last), axis=axis)
    above -= below
    above *= weight
    below += above
    return below


# ---- intensities and labels -------------------------------------------------------------------

def brain_stats(image: np.ndarray, what: str) -> tuple:
    """(mean, std) over the non-zero voxels of an image (Myronenko 2018, SPEC section 1).

    Zeros add nothing to the sums, so one pass of count, sum and sum of squares (in 64 bits) gives
    both without copying the brain voxels out.
    """
    flat = image.ravel(order="K")
    count = np.count_nonzero(flat)
    wide = np.int64 if flat.dtype.kind in "iu" else np.float64
    total = float(flat.sum(dtype=wide))
    squares = float(np.einsum("i,i->", flat, flat, dtype=wide))
    mean = total / max(count, 1)
    variance = squares / max(count, 1) - mean * mean
    if count < 2 or variance <= 1e-12 * max(mean * mean, 1.0):
        raise CaseError(f"{what}: image is constant over the brain, cannot normalise")
    return mean, float(np.sqrt(variance))


def normalise(image: np.ndarray, mean: float, std: float) -> np.ndarray:
    """float32 z-scores on the brain (non-zero voxels), 0 on the background, C-ordered."""
    image = np.ascontiguousarray(image)
    out = image.astype(np.float32)
    out -= np.float32(mean)
    out *= np.float32(1 / std)
    out[image == 0] = 0
    return out


def label_regions(seg: np.ndarray) -> np.ndarray:
    """BraTS labels (X, Y, Z) -> nested regions uint8 (X, Y, Z, 3) in the order WT, TC, ET."""
    regions = np.zeros(seg.shape + (len(REGIONS),), np.uint8)
    for channel, region in enumerate(REGIONS):
        for label in REGION_LABELS[region]:
            regions[..., channel] |= seg == label
    return regions


# ---- one case ---------------------------------------------------------------------------------

def preprocess_case(case: Case, size: tuple, mode: str = "center", factor: int = 1) -> tuple:
    """(arrays, meta): cropped z-scored images, regions when labelled, and what undoes the crop.

    With factor > 1 every image (and each region mask) is first block-averaged by that factor;
    regions are kept where at least half of a block is inside.
    """
    stored = case.stored if factor == 1 else {m: block_mean(a, factor) for m, a in case.stored.items()}
    grid = next(iter(stored.values())).shape
    brain = None
    if mode == "brain":
        brain = np.zeros(grid, bool)
        for image in stored.values():
            brain |= image != 0
    offsets = crop_offsets(grid, size, mode, brain)

    def prepare(modality: str) -> tuple:
        image = stored[modality]
        stats = brain_stats(image, f"{case.id}: {modality}")
        return stats, normalise(crop(image, offsets, size), *stats)

    prepared = dict(zip(MODALITIES, in_threads(prepare, list(MODALITIES))))
    arrays = {m: p[1] for m, p in prepared.items()}
    stats = {m: p[0] for m, p in prepared.items()}
    meta = {
        "id": case.id,
        "layout": case.layout,
        "source_files": {m: str(p) for m, p in case.files.images.items()} if case.files else {},
        "seg_file": str(case.files.seg) if case.files and case.files.seg else None,
        "original_shape": list(case.shape),
        "affine": np.asarray(case.affine).tolist(),
        "downsample": factor,
        "grid_shape": list(grid),
        "crop_size": list(size),
        "crop_mode": mode,
        "crop_offsets": list(offsets),
        "normalisation": {m: {"mean": s[0], "std": s[1]} for m, s in stats.items()},
        "has_labels": case.seg is not None,
    }
    if case.seg is not None and factor == 1:
        seg_crop = crop(case.seg, offsets, size)
        arrays["regions"] = label_regions(np.ascontiguousarray(seg_crop))
        total, kept = int(np.count_nonzero(case.seg)), int(np.count_nonzero(seg_crop))
    elif case.seg is not None:
        regions = (block_mean(label_regions(case.seg), factor) >= 0.5).astype(np.uint8)
        arrays["regions"] = np.ascontiguousarray(crop(regions, offsets, size))
        total = int(np.count_nonzero(regions[..., 0]))
        kept = int(np.count_nonzero(arrays["regions"][..., 0]))
    if case.seg is not None:
        meta.update(wt_voxels=total, wt_voxels_lost=total - kept,
                    label_counts={str(v): int(np.count_nonzero(case.seg == v)) for v in (1, 2, 4)})
    return arrays, meta


def full_grid(probabilities: np.ndarray, meta: dict) -> np.ndarray:
    """Cropped (H, W, D, 3) probabilities -> the original grid (X, Y, Z, 3)."""
    factor = meta["downsample"]
    shape = tuple(meta["original_shape"])
    grid = uncrop(probabilities, tuple(meta["crop_offsets"]), downsampled_shape(shape, factor))
    return upsample(grid, factor, shape)
