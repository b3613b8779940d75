"""Score predicted label maps the way the BraTS 2020 online evaluation does (SPEC.md section 5).

    python evaluate.py predictions/ MICCAI_BraTS2020_ValidationData_ground_truth/ --out results.csv

Per case and region (WT, TC, ET): Dice, Hausdorff95 in mm (from the voxel spacing), sensitivity
and specificity. Empty regions follow CaPTk: both empty -> Dice 1, Hausdorff95 0, sensitivity 1,
specificity 1; exactly one empty -> Dice 0 and Hausdorff95 373.13 (the diagonal of 240x240x155).
Sensitivity is 1 when the ground truth region is empty (nothing to miss). A missing or
misaligned prediction scores Dice 0, Hausdorff95 373.13, sensitivity 0 and specificity 0, and is
named in the report. The CSV has the portal's layout: one row per case, then Mean, StdDev
(population, ddof 0), Median, 25quantile and 75quantile. --out is checked before any scoring, and
the table is printed before the CSV is written, so it is on screen even when writing fails.
"""
from __future__ import annotations

import argparse
import csv
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from brats import CaseError, find_label_files, read_labels
from outputs import atomic, check_file, exits_cleanly

REGIONS = ("ET", "WT", "TC")  # the portal's column order
REGION_LABELS = {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}
METRICS = ("Dice", "Sensitivity", "Specificity", "Hausdorff95")
EMPTY_HD95 = math.sqrt(240**2 + 240**2 + 155**2)  # 373.1287...
STATISTICS = ("Mean", "StdDev", "Median", "25quantile", "75quantile")


# ---- metrics on binary masks ------------------------------------------------------------------

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


def _surface_distances(a: np.ndarray, b: np.ndarray, spacing: tuple) -> np.ndarray:
    """Distances (mm) from the surface voxels of a to the nearest surface voxel of b.

    Surfaces as MedPy defines them: a mask minus its erosion with the 6-neighbourhood.
    """
    structure = ndimage.generate_binary_structure(a.ndim, 1)
    a_surface = a ^ ndimage.binary_erosion(a, structure, iterations=1)
    b_surface = b ^ ndimage.binary_erosion(b, structure, iterations=1)
    return ndimage.distance_transform_edt(~b_surface, sampling=spacing)[a_surface]


def hausdorff95(prediction: np.ndarray, truth: np.ndarray, spacing: tuple) -> float:
    """95th percentile of the symmetric surface distances (mm); both masks must be non-empty.

    Computed inside the masks' common bounding box (with a margin), which gives MedPy's result
    on the full volume in a fraction of the time.
    """
    union = prediction | truth
    box = tuple(slice(max(s.start - 2, 0), s.stop + 2) for s in ndimage.find_objects(union.astype(np.uint8))[0])
    p, t = prediction[box], truth[box]
    distances = np.hstack([_surface_distances(p, t, spacing), _surface_distances(t, p, spacing)])
    return float(np.percentile(distances, 95))


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


def case_scores(prediction: np.ndarray, truth: np.ndarray, spacing: tuple) -> dict:
    """{"Dice_ET": ..., ...} for one case from two BraTS label maps."""
    row = {}
    for region in REGIONS:
        labels = REGION_LABELS[region]
        scores = region_scores(np.isin(prediction, labels), np.isin(truth, labels), spacing)
        row.update({f"{metric}_{region}": scores[metric] for metric in METRICS})
    return row


# ---- one case, many cases ---------------------------------------------------------------------

@dataclass
class Scored:
    id: str
    row: dict
    problem: str = ""  # why the case got the penalty, if it did


def score_case(case_id: str, truth_file: tuple, prediction_dir: Path) -> Scored:
    truth, truth_img = read_labels(truth_file[0], truth_file[1], case_id)
    spacing = tuple(float(v) for v in truth_img.header.get_zooms()[:3])
    path = next((prediction_dir / f"{case_id}{s}" for s in (".nii.gz", ".nii")
                 if (prediction_dir / f"{case_id}{s}").is_file()), None)
    penalty = {f"{m}_{r}": penalty_scores()[m] for r in REGIONS for m in METRICS}
    if path is None:
        return Scored(case_id, penalty, "no prediction")
    try:
        prediction, prediction_img = read_labels(path, "brats2020", case_id)
    except CaseError as error:
        return Scored(case_id, penalty, str(error).split(": ", 1)[-1])
    if prediction.shape != truth.shape or not np.allclose(prediction_img.affine, truth_img.affine,
                                                          atol=1e-3):
        return Scored(case_id, penalty, f"{path.name} is misaligned with the ground truth "
                                        f"(shape {prediction.shape} vs {truth.shape} or affine)")
    return Scored(case_id, case_scores(prediction, truth, spacing))


def statistics(rows: list) -> dict:
    """The portal's summary rows over the cases."""
    columns = list(rows[0])
    values = np.array([[r[c] for c in columns] for r in rows], dtype=np.float64)
    summary = {"Mean": values.mean(0), "StdDev": values.std(0), "Median": np.median(values, 0),
               "25quantile": np.percentile(values, 25, axis=0),
               "75quantile": np.percentile(values, 75, axis=0)}
    return {name: dict(zip(columns, summary[name])) for name in STATISTICS}


def columns() -> list:
    return [f"{m}_{r}" for m in METRICS for r in REGIONS]


def write_csv(results: list, summary: dict, path: Path) -> None:
    """Portal layout, written through a temporary file."""
    with atomic(path) as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Label", *columns()])
        for result in results:
            writer.writerow([result.id, *(f"{result.row[c]:.6f}" for c in columns())])
        for name, row in summary.items():
            writer.writerow([name, *(f"{row[c]:.6f}" for c in columns())])


def table(summary: dict) -> str:
    """Mean, StdDev and Median of Dice (%) and Hausdorff95 (mm), as the paper's Table 2."""
    lines = [f"{'':8s}" + "".join(f"{'Dice ' + r:>10s}" for r in ("ET", "WT", "TC"))
             + "".join(f"{'HD95 ' + r:>10s}" for r in ("ET", "WT", "TC"))]
    for name in ("Mean", "StdDev", "Median"):
        row = summary[name]
        lines.append(f"{name:8s}" + "".join(f"{100 * row[f'Dice_{r}']:10.2f}" for r in ("ET", "WT", "TC"))
                     + "".join(f"{row[f'Hausdorff95_{r}']:10.2f}" for r in ("ET", "WT", "TC")))
    return "\n".join(lines)


def evaluate(prediction_dir: Path, truth_dir: Path, progress: bool = True) -> list:
    """Score every ground-truth case; a case whose ground truth cannot be read is skipped."""
    truths = find_label_files(truth_dir)
    if not truths:
        raise CaseError(f"{truth_dir}: no ground-truth label maps found")
    from tqdm import tqdm

    results = []
    for case_id, truth_file in tqdm(sorted(truths.items()), desc="evaluate", unit="case",
                                    disable=not progress):
        try:
            results.append(score_case(case_id, truth_file, prediction_dir))
        except CaseError as error:
            print(f"error: ground truth {error}; case skipped", file=sys.stderr)
    return results


@exits_cleanly(CaseError)
def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("predictions", type=Path, help="folder of <case id>.nii.gz label maps")
    parser.add_argument("ground_truth", type=Path, help="ground-truth folder, any BraTS layout")
    parser.add_argument("--out", type=Path, default=Path("results.csv"), help="CSV to write")
    args = parser.parse_args(argv)
    if not args.predictions.is_dir():
        parser.exit(2, f"error: {args.predictions}: not a folder\n")
    check_file(args.out)
    results = evaluate(args.predictions, args.ground_truth)
    if not results:
        parser.exit(2, "error: no case could be scored\n")
    summary = statistics([r.row for r in results])
    for result in results:
        if result.problem:
            print(f"penalised: {result.id}: {result.problem}")
    print(table(summary), flush=True)  # on screen even when the CSV cannot be written
    write_csv(results, summary, args.out)
    print(f"{len(results)} cases scored, {sum(bool(r.problem) for r in results)} penalised; "
          f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
