"""What a run's predictions hold, measured for compare.py's note column: causes come from the
predictions of the run they are shown for, not from a text written once.

    figures = measure(predictions, ground_truth)   # {"cases", "predicted", "truth", "missing", ...}
    parts = clauses(figures, unlearned=True)        # ["this run's 6 predictions: voxels ...", ...]

Per region (WT, TC, ET) the voxels predicted and in the ground truth (mean per case), the cases
whose prediction holds none of it, and where the false-positive WT voxels lie: the share in
tiles of TILE voxels (the tuned 3D U-Net's 32x32x8 inference tiles at 3 mm, on the 1 mm grid)
that hold no tumour, and the share of the healthy voxels (outside the ground truth's WT) marked.
Label maps are read as evaluate.py reads them (scoring.rules, codings.json beside predictions).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from brats.cases import find_label_files
from brats.codings import stored_codings
from scoring.rules import Scoring, prediction_masks, read_label_map, truth_masks

REGIONS = ("WT", "TC", "ET")
TILE = (96, 96, 24)


def tumour_free_tiles(truth: np.ndarray, tile: tuple = TILE) -> np.ndarray:
    """bool (X, Y, Z): voxels whose tile (a grid of `tile` from the origin) holds no tumour."""
    counts = truth.astype(np.int64)
    for axis, size in enumerate(tile):
        counts = np.add.reduceat(counts, np.arange(0, truth.shape[axis], size), axis=axis)
    free = counts == 0
    for axis, size in enumerate(tile):
        free = np.repeat(free, size, axis=axis)
    return free[: truth.shape[0], : truth.shape[1], : truth.shape[2]]


def case_figures(prediction: dict, truth: dict) -> dict:
    """One case's voxels per region and its WT false positives (count, in tumour-free tiles)."""
    false = prediction["WT"] & ~truth["WT"]
    return {"predicted": {r: int(prediction[r].sum()) for r in REGIONS},
            "truth": {r: int(truth[r].sum()) for r in REGIONS},
            "false_positives": int(false.sum()),
            "in_free_tiles": int((false & tumour_free_tiles(truth["WT"])).sum()),
            "healthy": int((~truth["WT"]).sum())}


def measure(predictions: Path, ground_truth: Path) -> dict:
    """The figures of a folder of predictions against the ground truth (cases with both)."""
    scoring = Scoring(stored=stored_codings(predictions))
    cases = []
    for case_id, truth_file in sorted(find_label_files(ground_truth).items()):
        path = Path(predictions) / f"{case_id}.nii.gz"
        if not path.is_file():
            continue
        truth, _ = truth_masks(case_id, truth_file, scoring)
        prediction, _ = prediction_masks(read_label_map(path, case_id)[1], scoring, case_id)
        cases.append(case_figures(prediction, truth))
    if not cases:
        return {"cases": 0}
    false = sum(c["false_positives"] for c in cases)
    return {"cases": len(cases),
            "predicted": {r: float(np.mean([c["predicted"][r] for c in cases])) for r in REGIONS},
            "truth": {r: float(np.mean([c["truth"][r] for c in cases])) for r in REGIONS},
            "missing": {r: sum(c["predicted"][r] == 0 for c in cases) for r in REGIONS},
            "false_positive_share_in_free_tiles":
                sum(c["in_free_tiles"] for c in cases) / max(false, 1),
            "healthy_marked": false / max(sum(c["healthy"] for c in cases), 1)}


def describe(figures: dict) -> str:
    """The figures in one clause for the note column."""
    if not figures.get("cases"):
        return "no prediction to measure"
    voxels = ", ".join(f"{r} {figures['predicted'][r]:,.0f} (truth {figures['truth'][r]:,.0f})"
                       for r in REGIONS)
    text = (f"this run's {figures['cases']} predictions: voxels per case {voxels}; "
            f"{100 * figures['healthy_marked']:.1f} % of the healthy voxels marked WT, "
            f"{100 * figures['false_positive_share_in_free_tiles']:.0f} % of those in tumour-free "
            f"{'x'.join(map(str, TILE))} tiles")
    none = [r for r in REGIONS if figures["missing"][r] == figures["cases"]]
    return text + (f"; no {' or '.join(none)} predicted in any case" if none else "")


def clauses(figures: dict | None, unlearned: bool) -> list:
    """The note column's measured clauses of a row that does not learn, or that predicts a region
    in no case (with nnU-Net's own output files' voxels where compare.py recorded them)."""
    if not figures or not (unlearned or figures["cases"] and any(
            figures["missing"][r] == figures["cases"] for r in REGIONS)):
        return []
    own = figures.get("own_output")
    return [describe(figures)] + ([
        "nnU-Net's own output files: voxels per case "
        + ", ".join(f"{r} {own[r]:,.0f}" for r in REGIONS) + " (3 mm voxels x 27)"] if own else [])
