"""The rules a case is scored by and how its label maps are read (evaluate.py).

    scoring = Scoring("brats2023-gli")                  # or brats2020 (default), brats2025-*
    truth, image = truth_masks(case_id, (path, layout), scoring)   # {"WT", "TC", "ET"} -> bool
    prediction, note = prediction_masks(labels, scoring, case_id)
    row = case_scores(prediction, truth, spacing)       # BraTS 2020: {"Dice_ET": ..., ...}

BraTS 2020 (CaPTk) per region: Dice, Hausdorff95 in mm, sensitivity, specificity; both maps empty
-> Dice 1, HD95 0; exactly one empty -> Dice 0, HD95 373.13 (the diagonal of 240x240x155). The
lesion-wise rules are lesionwise.py's, the BraTS 2025 ones the official package's (brats2025.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from brats.cases import CaseError, convert_labels, read_nifti, strip_nii
from brats.codings import (REGIONS, CodingError, EditionError, check_fits, is_ped,
                           label_values, layout_coding, ped_question, recognise, region_masks)
from scoring import brats2025, lesionwise
from scoring.metrics import dice, hausdorff95, sensitivity, specificity

METRICS = ("Dice", "Sensitivity", "Specificity", "Hausdorff95")
EMPTY_HD95 = math.sqrt(240**2 + 240**2 + 155**2)  # 373.1287...
BRATS2020 = "brats2020: BraTS 2020 online evaluation (CaPTk), whole-region"
CONVENTIONS = ("brats2020", *lesionwise.CONVENTIONS, *brats2025.CONVENTIONS)


class PredictionError(Exception):
    """A prediction whose labels do not fit the chosen coding: the run stops, naming the file."""


# ---- BraTS 2020 rules -------------------------------------------------------------------------

def region_scores(prediction: np.ndarray, truth: np.ndarray, spacing: tuple) -> dict:
    """Dice, Hausdorff95, sensitivity and specificity of one region with the BraTS empty rules."""
    predicted, present = prediction.any(), truth.any()
    if not predicted and not present:
        return {"Dice": 1.0, "Hausdorff95": 0.0, "Sensitivity": 1.0, "Specificity": 1.0}
    scores = {"Dice": dice(prediction, truth), "Sensitivity": sensitivity(prediction, truth),
              "Specificity": specificity(prediction, truth)}
    scores["Hausdorff95"] = hausdorff95(prediction, truth, spacing) if predicted and present else EMPTY_HD95
    return scores


def penalty_scores() -> dict:
    return {"Dice": 0.0, "Hausdorff95": EMPTY_HD95, "Sensitivity": 0.0, "Specificity": 0.0}


def case_scores(prediction: dict, truth: dict, spacing: tuple) -> dict:
    """{"Dice_ET": ..., ...} for one case from region masks {"ET", "WT", "TC"} -> bool (X, Y, Z)."""
    row = {}
    for region in REGIONS:
        scores = region_scores(prediction[region], truth[region], spacing)
        row.update({f"{metric}_{region}": scores[metric] for metric in METRICS})
    return row


# ---- conventions and codings ------------------------------------------------------------------

@dataclass(frozen=True)
class Scoring:
    """Which rules score the cases and how the label maps are coded ("auto": recorded beside the
    predictions in `stored`, case id -> coding, else recognised). `ped_coding`: the coding of
    BraTS-PED cases (brats2023 or brats2024-ped) where the convention does not give one."""

    convention: str = "brats2020"
    pred_coding: str = "auto"
    gt_coding: str = "auto"
    stored: dict = field(default_factory=dict)
    ped_coding: str | None = None

    @property
    def lesion_wise(self) -> lesionwise.Convention | None:
        return lesionwise.CONVENTIONS.get(self.convention)

    @property
    def official(self) -> brats2025.Convention | None:
        return brats2025.CONVENTIONS.get(self.convention)

    @property
    def native(self) -> str:
        """The label coding of the convention's own edition."""
        edition = self.lesion_wise or self.official
        return edition.coding if edition else "brats2020"

    @property
    def candidates(self) -> tuple:
        return tuple(dict.fromkeys((self.native, "brats2020", "brats2023")))

    def describe(self) -> str:
        edition = self.lesion_wise or self.official
        return edition.describe() if edition else BRATS2020

    def columns(self) -> list:
        if self.lesion_wise:
            return lesionwise.columns()
        if self.official:
            return brats2025.columns(self.official)
        return [f"{m}_{r}" for m in METRICS for r in REGIONS]


def read_label_map(path: Path, what: str) -> tuple:
    """(NIfTI image, integer labels as stored) of a label map; CaseError for non-integer values."""
    img, data = read_nifti(path, what)
    if data.dtype.kind == "f":
        if not np.isfinite(data).all() or not np.array_equal(data, np.round(data)):
            raise CaseError(f"{what}: {path.name} holds non-integer or non-finite labels")
        data = data.astype(np.int64)
    return img, data


PED_STATED = ("--ped-coding brats2023 or brats2024-ped, or a PED convention (--convention "
              "brats2023-ped, brats2024-ped or brats2025-ped)")


def ped_coding_of(case_id: str, scoring: Scoring) -> str:
    """The coding of a BraTS-PED case under brats2020 rules: stated, else EditionError."""
    if scoring.ped_coding is None:
        raise ped_question(case_id, PED_STATED)
    return scoring.ped_coding


def layout_coding_of(case_id: str, truth_file: tuple, values: tuple, scoring: Scoring) -> str:
    """The coding of a ground truth none is stated for: `_seg` files 2020, `-seg` files the
    convention's edition's (under brats2020 the case's: ET = 3, BraTS-PED as --ped-coding states),
    a file named after its case (no layout to go by) recognised from its values."""
    path, layout = truth_file
    if strip_nii(path.name) == case_id:
        return recognise(values, scoring.candidates, scoring.native)[0]
    if layout == "brats2023":
        if scoring.native != "brats2020":
            return scoring.native
        ped = ped_coding_of(case_id, scoring) if is_ped(case_id) else None
        return layout_coding(layout, case_id, ped)
    return "brats2020"


def truth_masks(case_id: str, truth_file: tuple, scoring: Scoring) -> tuple:
    """(region masks, NIfTI image) of a ground truth, in the coding its layout or values give."""
    path, layout = truth_file
    img, data = read_label_map(path, case_id)
    coding = scoring.gt_coding
    if coding == "auto" and layout == "msd":
        data, coding = convert_labels(data, "msd", f"{case_id}: {path.name}"), "brats2020"
    values = label_values(data)
    try:
        if coding == "auto":
            coding = layout_coding_of(case_id, truth_file, values, scoring)
        check_fits(values, coding)
    except EditionError:
        raise
    except CodingError as error:
        raise CaseError(f"{case_id}: {path.name}: {error}") from None
    return region_masks(data, coding), img


def prediction_coding(values: tuple, scoring: Scoring, case_id: str = "") -> tuple:
    """(coding, note) of a prediction holding `values`: stated, recorded by predict.py, or
    recognised (a BraTS-PED case under brats2020 rules preferring the stated PED coding);
    CodingError when its labels fit no usable coding or when a reading would drop its ET,
    EditionError for a BraTS-PED case whose coding nothing states."""
    stated = scoring.pred_coding if scoring.pred_coding != "auto" else scoring.stored.get(case_id)
    if stated:
        check_fits(values, stated)
        return stated, ""
    candidates, preferred = scoring.candidates, scoring.native
    if preferred == "brats2020" and is_ped(case_id):
        preferred = ped_coding_of(case_id, scoring)
        candidates = tuple(dict.fromkeys((preferred, *candidates)))
    try:
        return recognise(values, candidates, preferred)
    except CodingError as error:
        raise CodingError(f"{error} (--pred-coding)") from None


def prediction_masks(data: np.ndarray, scoring: Scoring, case_id: str = "") -> tuple:
    """(region masks, note) of a prediction; CodingError when its labels fit no usable coding."""
    coding, note = prediction_coding(label_values(data), scoring, case_id)
    return region_masks(data, coding), note


def unfit(path: Path, labels: np.ndarray, error: CodingError) -> PredictionError:
    """The one-line error of a prediction whose labels do not fit: the file and what it holds."""
    shown = "{" + ", ".join(f"{v:g}" for v in label_values(labels)) + "}"
    return PredictionError(f"{path}: holds labels {shown}: {error}")
