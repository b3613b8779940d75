"""What a segmentation finds on a case that has no labels (a real scan): voxels per region, and
how much of it lies in the lesion a crude FLAIR threshold shows (a yardstick, not a truth).

    lesion = flair_lesion(flair)                 # bool (X, Y, Z): the FLAIR-bright lesion
    row = region_report(labels, lesion)          # {"WT": voxels, ..., "WT in lesion": ...,
                                                 #  "Dice WT vs lesion": ...}

The yardstick: FLAIR z-scored over the brain (non-zero voxels), voxels above `z` standard
deviations, opened once (a 3x3x3 cross) so that single bright voxels go, the largest connected
component kept. It marks the FLAIR-hyperintense lesion (edema and tumour), i.e. roughly BraTS's
whole tumour of a glioma; it also marks bright non-tumour tissue that touches it.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

REGION_LABELS = {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}  # BraTS 2020 labels of each region


def flair_lesion(flair: np.ndarray, z: float = 2.0) -> np.ndarray:
    """bool (X, Y, Z): the largest FLAIR-bright component, z standard deviations above the brain."""
    brain = flair != 0
    if brain.sum() < 2:
        return np.zeros(flair.shape, bool)
    values = flair[brain].astype(np.float64)
    bright = brain & (flair > values.mean() + z * values.std())
    bright = ndimage.binary_opening(bright)
    components, count = ndimage.label(bright)
    if count == 0:
        return bright
    sizes = np.bincount(components.ravel())[1:]
    return components == 1 + int(np.argmax(sizes))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Hard Dice of two boolean masks (both empty: 1)."""
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2 * int(np.logical_and(a, b).sum()) / total


def region_report(labels: np.ndarray, lesion: np.ndarray) -> dict:
    """Voxels of WT, TC and ET in BraTS 2020 `labels`, the whole tumour's voxels inside `lesion`,
    and the whole tumour's Dice against it."""
    report = {region: int(np.isin(labels, codes).sum()) for region, codes in REGION_LABELS.items()}
    whole = labels > 0
    report["WT in lesion"] = int(np.logical_and(whole, lesion).sum())
    report["lesion"] = int(lesion.sum())
    report["Dice WT vs lesion"] = round(dice(whole, lesion), 3)
    return report
