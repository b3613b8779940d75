"""Overlap and surface metrics of two binary masks, shared by every scoring convention.

    dice(prediction, truth); hausdorff95(prediction, truth, spacing)   # masks (X, Y, Z) bool

Hausdorff95 follows MedPy (the BraTS 2020 reference): surfaces are a mask minus its erosion with
the 6-neighbourhood, distances in mm from the voxel spacing, the 95th percentile of the pooled
distances of both directions.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    total = np.count_nonzero(prediction) + np.count_nonzero(truth)
    return 2 * np.count_nonzero(prediction & truth) / total if total else 1.0


def sensitivity(prediction: np.ndarray, truth: np.ndarray) -> float:
    positives = np.count_nonzero(truth)
    return np.count_nonzero(prediction & truth) / positives if positives else 1.0


def specificity(prediction: np.ndarray, truth: np.ndarray) -> float:
    negatives = truth.size - np.count_nonzero(truth)
    false_positives = np.count_nonzero(prediction & ~truth)
    return (negatives - false_positives) / negatives if negatives else 1.0


def bounding_box(mask: np.ndarray, margin: int = 0) -> tuple | None:
    """Slices of the smallest box holding the mask, grown by margin voxels and clipped to the
    array; None for an empty mask."""
    box = []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if hit.size == 0:
            return None
        box.append(slice(max(int(hit[0]) - margin, 0), min(int(hit[-1]) + 1 + margin, mask.shape[axis])))
    return tuple(box)


def _surface_points(mask: np.ndarray, spacing: tuple) -> np.ndarray:
    """(N, 3) positions in mm of the surface voxels: the mask minus its 6-neighbourhood erosion."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    surface = mask & ~ndimage.binary_erosion(mask, structure, iterations=1)
    return np.argwhere(surface) * np.asarray(spacing, dtype=np.float64)


def hausdorff95(prediction: np.ndarray, truth: np.ndarray, spacing: tuple) -> float:
    """95th percentile of the symmetric surface distances (mm); both masks must be non-empty.

    Nearest surface voxels come from k-d trees of the surface points rather than a distance
    transform of the masks' bounding box: MedPy's result (exact Euclidean distances), in a time
    that grows with the surfaces, not with the box that scattered specks span.
    """
    box = bounding_box(prediction | truth, 1)  # erosion sees the volume's edge as MedPy does
    p, t = _surface_points(prediction[box], spacing), _surface_points(truth[box], spacing)
    distances = np.hstack([cKDTree(t).query(p)[0], cKDTree(p).query(t)[0]])
    return float(np.percentile(distances, 95))
