"""Lesion-wise scoring of the BraTS 2023 and 2024 challenges (SPEC.md section 7).

    convention = CONVENTIONS["brats2023-gli"]
    row = case_scores(prediction_masks, truth_masks, spacing, convention)  # codings.region_masks
    # {"LesionWise_Dice_ET": ..., "Legacy_HD95_WT": ..., "Num_FN_TC": ..., ...}

Per region: ground-truth components (26-connected) that fall into one component of the ground
truth dilated `dilation` times (3D structure of connectivity 2) form one lesion; a predicted
component (26-connected) serves a lesion when it meets the lesion dilated the same way, and one
lesion may gather several; each lesion is scored (Dice, HD95 in mm) against the union of the
components serving it, a lesion with none is a false negative (Dice 0, HD95 = penalty) and
components serving no lesion are false positives (counted whatever their size). Lesions of volume
<= the minimum (mm^3) leave numerator and denominator. With no lesion and no false positive a
region scores Dice 1 and HD95 0. Labelling runs inside each mask's bounding box and each lesion's
work inside its own box plus the dilation, so a 240x240x155 case takes about a second.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from brats.codings import REGIONS
from scoring.metrics import bounding_box, dice, hausdorff95

COMPONENTS = np.ones((3, 3, 3), bool)  # 26-connectivity
DILATION = ndimage.generate_binary_structure(3, 2)
METRICS = ("LesionWise_Dice", "LesionWise_HD95", "Legacy_Dice", "Legacy_HD95", "Sensitivity",
           "Specificity", "Num_TP", "Num_FP", "Num_FN")


@dataclass(frozen=True)
class Convention:
    """One edition's lesion-wise rules: per region dilation (iterations) and minimum lesion volume
    (mm^3, lesions <= it are left out); HD95 penalty in mm (None: the image diagonal in voxels,
    BraTS 2024 MET); the edition's own label coding (codings.py)."""

    name: str
    edition: str
    dilation: dict
    min_volume: dict
    penalty: float | None
    coding: str

    def hd95_penalty(self, shape: tuple) -> float:
        return self.penalty if self.penalty is not None else math.sqrt(sum(n * n for n in shape))

    def describe(self) -> str:
        def per_region(values: dict) -> str:
            return (f"{values['ET']:g}" if len(set(values.values())) == 1
                    else ", ".join(f"{r} {values[r]:g}" for r in REGIONS))
        penalty = f"{self.penalty:g} mm" if self.penalty is not None else "image diagonal"
        return (f"{self.name}: {self.edition}, lesion-wise (dilation {per_region(self.dilation)}, "
                f"minimum lesion {per_region(self.min_volume)} mm3, HD95 penalty {penalty})")


def _each(value) -> dict:
    return {region: value for region in REGIONS}


CONVENTIONS = {c.name: c for c in (
    Convention("brats2023-gli", "BraTS 2023 adult glioma (GLI)", _each(3), _each(50), 374, "brats2023"),
    Convention("brats2023-ssa", "BraTS 2023 Sub-Saharan Africa glioma (SSA)", _each(3), _each(50), 374,
               "brats2023"),
    Convention("brats2023-ped", "BraTS 2023 paediatric tumours (PED)", _each(3), _each(50), 374,
               "brats2023"),
    Convention("brats2023-men", "BraTS 2023 meningioma (MEN)", _each(1), _each(50), 374, "brats2023"),
    Convention("brats2023-met", "BraTS 2023 brain metastases (MET)", _each(1), _each(2), 374,
               "brats2023"),
    Convention("brats2024-gli", "BraTS 2024 post-treatment adult glioma (GLI)", _each(3),
               {"ET": 10, "WT": 20, "TC": 20}, 337, "brats2024-post"),
    Convention("brats2024-ped", "BraTS 2024 paediatric tumours (PED)", _each(5), _each(10), 374,
               "brats2024-ped"),
    Convention("brats2024-met", "BraTS 2024 brain metastases (MET)", _each(1), _each(2), None,
               "brats2024-post"),
)}


# ---- boxes ------------------------------------------------------------------------------------

def _grown(box: tuple, margin: int, shape: tuple) -> tuple:
    return tuple(slice(max(s.start - margin, 0), min(s.stop + margin, n)) for s, n in zip(box, shape))


def _union(boxes: list) -> tuple:
    return tuple(slice(min(b[a].start for b in boxes), max(b[a].stop for b in boxes))
                 for a in range(len(boxes[0])))


# ---- one region -------------------------------------------------------------------------------

def merged_lesions(truth: np.ndarray, dilation: int) -> tuple:
    """(int32 labels, count): truth components merged when one dilated component holds them.

    Exact on any box holding the truth: the dilated truth clamped into the box keeps its links.
    """
    reach, count = ndimage.label(ndimage.binary_dilation(truth, DILATION, iterations=dilation),
                                 COMPONENTS)
    return np.where(truth, reach, 0).astype(np.int32), count


def _labelled(mask: np.ndarray, labelling) -> tuple:
    """(int32 labels of the whole volume, count), labelling(mask cropped to its box) inside."""
    labels, box = np.zeros(mask.shape, np.int32), bounding_box(mask)
    if box is None:
        return labels, 0
    labels[box], count = labelling(mask[box])
    return labels, count


def legacy_scores(prediction: np.ndarray, truth: np.ndarray, spacing: tuple, penalty: float) -> dict:
    """Whole-region Dice, HD95, sensitivity and specificity as the challenge scripts report them:
    both empty -> 1, 0, 1, 1; one empty -> HD95 = penalty; truth empty -> sensitivity 0."""
    predicted, present = int(np.count_nonzero(prediction)), int(np.count_nonzero(truth))
    overlap = int(np.count_nonzero(prediction & truth))
    if not predicted and not present:
        return {"Legacy_Dice": 1.0, "Legacy_HD95": 0.0, "Sensitivity": 1.0, "Specificity": 1.0}
    negatives = truth.size - present
    return {"Legacy_Dice": 2 * overlap / (predicted + present),
            "Legacy_HD95": hausdorff95(prediction, truth, spacing) if predicted and present else penalty,
            "Sensitivity": overlap / present if present else 0.0,
            "Specificity": (negatives - (predicted - overlap)) / negatives if negatives else 1.0}


def lesion_scores(prediction: np.ndarray, truth: np.ndarray, spacing: tuple, dilation: int,
                  min_volume: float, penalty: float) -> dict:
    """Lesion-wise Dice and HD95 of one region and its counts of lesions (see module docstring).

    prediction, truth: bool (X, Y, Z); spacing in mm; dilation >= 1 iterations; min_volume mm^3.
    """
    lesions, _ = _labelled(truth, lambda box: merged_lesions(box, dilation))
    components, component_count = _labelled(prediction, lambda box: ndimage.label(box, COMPONENTS))
    component_boxes = ndimage.find_objects(components)
    voxel_volume = float(np.prod(spacing))
    served, dices, distances, found, missed = set(), [], [], 0, 0
    for index, box in enumerate(ndimage.find_objects(lesions), start=1):
        near = _grown(box, dilation, lesions.shape)
        lesion = lesions[near] == index
        reach = ndimage.binary_dilation(lesion, DILATION, iterations=dilation)
        ids = np.unique(components[near][reach])
        ids = ids[ids > 0]
        served.update(ids.tolist())
        if np.count_nonzero(lesion) * voxel_volume <= min_volume:
            continue
        if ids.size == 0:
            missed += 1
            dices.append(0.0)
            distances.append(penalty)
            continue
        found += 1
        span = _union([near, *(component_boxes[i - 1] for i in ids)])
        lesion, serving = lesions[span] == index, np.isin(components[span], ids)
        dices.append(dice(serving, lesion))
        distances.append(hausdorff95(serving, lesion, spacing))
    false_positives = component_count - len(served)
    counted = len(dices) + false_positives
    if counted == 0:
        return {"LesionWise_Dice": 1.0, "LesionWise_HD95": 0.0, "Num_TP": found, "Num_FP": 0,
                "Num_FN": missed}
    return {"LesionWise_Dice": float(sum(dices)) / counted,
            "LesionWise_HD95": float(sum(distances) + penalty * false_positives) / counted,
            "Num_TP": found, "Num_FP": false_positives, "Num_FN": missed}


# ---- one case ---------------------------------------------------------------------------------

def columns() -> list:
    return [f"{m}_{r}" for m in METRICS for r in REGIONS]


def case_scores(prediction: dict, truth: dict, spacing: tuple, convention: Convention) -> dict:
    """{"LesionWise_Dice_ET": ..., ...} of one case from region masks {"ET", "WT", "TC"} -> bool."""
    penalty = convention.hd95_penalty(truth["WT"].shape)
    row = {}
    for region in REGIONS:
        p, t = prediction[region], truth[region]
        scores = {**lesion_scores(p, t, spacing, convention.dilation[region],
                                  convention.min_volume[region], penalty),
                  **legacy_scores(p, t, spacing, penalty)}
        row.update({f"{metric}_{region}": scores[metric] for metric in METRICS})
    return row


def penalty_scores(truth: dict, spacing: tuple, convention: Convention) -> dict:
    """The row of a case without a usable prediction: the worst scores, every lesion missed."""
    empty = {region: np.zeros_like(mask) for region, mask in truth.items()}
    row = case_scores(empty, truth, spacing, convention)
    worst = {"LesionWise_Dice": 0.0, "LesionWise_HD95": convention.hd95_penalty(truth["WT"].shape),
             "Legacy_Dice": 0.0, "Legacy_HD95": convention.hd95_penalty(truth["WT"].shape),
             "Sensitivity": 0.0, "Specificity": 0.0}
    row.update({f"{metric}_{region}": value for metric, value in worst.items() for region in REGIONS})
    return row
