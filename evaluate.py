"""Score predicted label maps by the BraTS 2020 online evaluation (SPEC.md section 5), by the
lesion-wise rules of BraTS 2023/2024 (section 7, lesionwise.py) or by the BraTS 2025 official package.

    python evaluate.py predictions/ MICCAI_BraTS2020_ValidationData_ground_truth/ --out results.csv
    python evaluate.py predictions/ BraTS2023-GLI-ground-truth/ --convention brats2023-gli
    python evaluate.py predictions/ BraTS2025-GLI-ground-truth/ --convention brats2025-gli

--convention brats2020 (the default), per case and region (WT, TC, ET): Dice, Hausdorff95 in mm
(from the voxel spacing), sensitivity and specificity. Empty regions follow CaPTk: both empty ->
Dice 1, Hausdorff95 0, sensitivity 1, specificity 1; exactly one empty -> Dice 0 and Hausdorff95
373.13 (the diagonal of 240x240x155). Sensitivity is 1 when the ground truth region is empty
(nothing to miss). A missing or misaligned prediction scores Dice 0, Hausdorff95 373.13,
sensitivity 0 and specificity 0, and is named in the report. The CSV has the portal's layout: one
row per case, then Mean, StdDev (population, ddof 0), Median, 25quantile and 75quantile.

A lesion-wise convention (brats2023-gli, -ssa, -ped, -men, -met, brats2024-gli, -ped, -met)
reports per region the lesion-wise Dice and HD95, the legacy whole-region Dice and HD95,
sensitivity, specificity and the numbers of true-positive, false-positive and false-negative
lesions; its CSV starts with a `# convention:` line naming the edition and its parameters. A
missing or unusable prediction misses every lesion and gets the worst scores.

A BraTS 2025 convention (brats2025-gli, -ped, -met, -men-rt, -men-pre, -goat) scores each case
with the challenge's own package, brats-evaluation on panoptica (brats2025.py): per region of the
task's config, panoptic, segmentation and recognition quality (pq_dsc, sq_dsc, all_instance_f1),
lesion-wise and global DSC, HD95 and NSD and lesion counts, as its parser reports them; a region
empty in both maps is NaN and left out of the statistics.

Label codings (ET = 4 of BraTS 2017-2021, ET = 3 of 2023+, BraTS 2024 PED's own, MSD's, RC = 4 of
the post-treatment data) are found per file: ground truth from its layout (`_seg` 2020 coding,
`-seg` the edition's, MSD's labelsTr), files named after their case and predictions from the
codings.json that predict.py leaves beside them, else from the labels they hold; --pred-coding and
--gt-coding state them. BraTS-PED cases are coded differently in BraTS 2023 and 2024+ under the
same ids: under brats2020 rules --ped-coding states which (a PED convention states its own), and
without it a PED case stops the run with one line. A prediction whose labels fit no coding, or
not the stated one, or whose reading would drop its ET (a 2020-coded map, 4 = ET, under a
post-treatment convention, 4 = resection cavity, with no codings.json) stops the run with one line
naming the file and its labels, and no CSV is written. --out is checked before
any scoring, and the table is printed before the CSV is written, so it is on screen even when
writing fails.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from brats.cases import CaseError, find_label_files
from brats.codings import (CODINGS, PED_CODINGS, REGIONS, CodingError, EditionError, check_fits,
                           label_values, recode, recoding, stored_codings)
from scoring import brats2025, lesionwise
from scoring.rules import (CONVENTIONS, METRICS, PredictionError, Scoring, case_scores,
                           layout_coding_of, penalty_scores, prediction_coding, prediction_masks,
                           read_label_map, truth_masks, unfit)
from util.outputs import atomic, check_file, exits_cleanly

STATISTICS = ("Mean", "StdDev", "Median", "25quantile", "75quantile")


# ---- one case, many cases ---------------------------------------------------------------------

@dataclass
class Scored:
    id: str
    row: dict
    problem: str = ""  # why the case got the penalty, if it did
    note: str = ""  # how an ambiguous prediction was read


def find_prediction(case_id: str, prediction_dir: Path) -> Path | None:
    return next((prediction_dir / f"{case_id}{s}" for s in (".nii.gz", ".nii")
                 if (prediction_dir / f"{case_id}{s}").is_file()), None)


def read_prediction(case_id: str, prediction_dir: Path):
    """(path, NIfTI image, labels) of a case's prediction, or the problem that penalises the case
    (a string: none found, or unreadable)."""
    path = find_prediction(case_id, prediction_dir)
    if path is None:
        return "no prediction"
    try:
        img, labels = read_label_map(path, case_id)
    except CaseError as error:
        return str(error).split(": ", 1)[-1]
    return path, img, labels


def score_case(case_id: str, truth_file: tuple, prediction_dir: Path,
               scoring: Scoring = Scoring()) -> Scored:
    if scoring.official:
        return score_official(case_id, truth_file, prediction_dir, scoring)
    truth, truth_img = truth_masks(case_id, truth_file, scoring)
    spacing = tuple(float(v) for v in truth_img.header.get_zooms()[:3])
    convention = scoring.lesion_wise

    def penalised(problem: str) -> Scored:
        if convention:
            return Scored(case_id, lesionwise.penalty_scores(truth, spacing, convention), problem)
        return Scored(case_id, {f"{m}_{r}": penalty_scores()[m] for r in REGIONS for m in METRICS},
                      problem)

    found = read_prediction(case_id, prediction_dir)
    if isinstance(found, str):
        return penalised(found)
    path, prediction_img, labels = found
    try:
        prediction, note = prediction_masks(labels, scoring, case_id)
    except EditionError:
        raise
    except CodingError as error:
        raise unfit(path, labels, error) from None
    shape = truth["WT"].shape
    if labels.shape != shape or not np.allclose(prediction_img.affine, truth_img.affine, atol=1e-3):
        return penalised(f"{path.name} is misaligned with the ground truth "
                         f"(shape {labels.shape} vs {shape} or affine)")
    if convention:
        return Scored(case_id, lesionwise.case_scores(prediction, truth, spacing, convention), note=note)
    return Scored(case_id, case_scores(prediction, truth, spacing), note=note)


# ---- BraTS 2025: the official package -----------------------------------------------------------

def in_coding(path: Path, img, labels: np.ndarray, coding: str, native: str, temporary: Path) -> Path:
    """The file to hand the official package: `path` itself when its labels already mean the same
    in the task's coding, else the labels recoded into it, written to `temporary` with the same
    geometry. CodingError for a label the task's coding cannot express."""
    values = label_values(labels)
    mapping = recoding(coding, native)
    if all(mapping.get(v) == v for v in values):
        return path
    recoded = recode(labels, coding, native)
    header = img.header.copy()
    header.set_data_dtype(np.uint8)
    nib.save(nib.Nifti1Image(recoded, img.affine, header), str(temporary))
    return temporary


def official_truth(case_id: str, truth_file: tuple, scoring: Scoring, folder: Path) -> tuple:
    """(file in the task's coding, NIfTI image) of a ground truth."""
    path, layout = truth_file
    img, data = read_label_map(path, case_id)
    values = label_values(data)
    try:
        coding = scoring.gt_coding
        if coding == "auto":
            coding = "msd" if layout == "msd" else layout_coding_of(case_id, truth_file, values, scoring)
        check_fits(values, coding)
        return in_coding(path, img, data, coding, scoring.native, folder / "truth.nii.gz"), img
    except EditionError:
        raise
    except CodingError as error:
        raise CaseError(f"{case_id}: {path.name}: {error}") from None


def score_official(case_id: str, truth_file: tuple, prediction_dir: Path, scoring: Scoring) -> Scored:
    """One case scored by the BraTS 2025 package; a missing, unreadable or misaligned prediction
    gets the row its parser gives a missing subject."""
    convention = scoring.official

    def penalised(problem: str) -> Scored:
        return Scored(case_id, brats2025.penalty_row(convention), problem)

    with tempfile.TemporaryDirectory(prefix="brats2025-") as folder:
        truth, truth_img = official_truth(case_id, truth_file, scoring, Path(folder))
        found = read_prediction(case_id, prediction_dir)
        if isinstance(found, str):
            return penalised(found)
        path, prediction_img, labels = found
        try:
            coding, note = prediction_coding(label_values(labels), scoring, case_id)
            prediction = in_coding(path, prediction_img, labels, coding, scoring.native,
                                   Path(folder) / "prediction.nii.gz")
        except EditionError:
            raise
        except CodingError as error:
            raise unfit(path, labels, error) from None
        shape = truth_img.shape[:3]
        if labels.shape != shape or not np.allclose(prediction_img.affine, truth_img.affine, atol=1e-3):
            return penalised(f"{path.name} is misaligned with the ground truth "
                             f"(shape {labels.shape} vs {shape} or affine)")
        try:
            return Scored(case_id, brats2025.case_row(prediction, truth, case_id, convention), note=note)
        except brats2025.OfficialError as error:
            return penalised(str(error))


def statistics(rows: list, official: bool = False) -> dict:
    """The portal's summary rows over the cases; `official` (BraTS 2025): NaN left out and the
    sample standard deviation, as the package's parser (pandas) computes them."""
    columns = list(rows[0])
    values = np.array([[r[c] for c in columns] for r in rows], dtype=np.float64)
    if not official:
        summary = {"Mean": values.mean(0), "StdDev": values.std(0), "Median": np.median(values, 0),
                   "25quantile": np.percentile(values, 25, axis=0),
                   "75quantile": np.percentile(values, 75, axis=0)}
        return {name: dict(zip(columns, summary[name])) for name in STATISTICS}
    with warnings.catch_warnings(), np.errstate(invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # a column that is NaN for every case
        summary = {"Mean": np.nanmean(values, 0), "StdDev": np.nanstd(values, 0, ddof=1),
                   "Median": np.nanmedian(values, 0),
                   "25quantile": np.nanpercentile(values, 25, axis=0),
                   "75quantile": np.nanpercentile(values, 75, axis=0)}
    return {name: dict(zip(columns, summary[name])) for name in STATISTICS}


def write_csv(results: list, summary: dict, path: Path, scoring: Scoring = Scoring()) -> None:
    """Portal layout, written through a temporary file; a lesion-wise CSV first names its
    convention on a `# convention: ...` line (the brats2020 file stays the portal's, byte for
    byte comparable)."""
    columns = scoring.columns()
    with atomic(path) as temporary, open(temporary, "w", newline="") as handle:
        if scoring.lesion_wise or scoring.official:
            handle.write(f"# convention: {scoring.describe()}\n")
        writer = csv.writer(handle)
        writer.writerow(["Label", *columns])
        for result in results:
            writer.writerow([result.id, *(f"{result.row[c]:.6f}" for c in columns)])
        for name, row in summary.items():
            writer.writerow([name, *(f"{row[c]:.6f}" for c in columns)])


def _block(summary: dict, title: str, dice_column: str, hd95_column: str) -> list:
    """Mean, StdDev and Median of one Dice (%) and HD95 (mm) pair of columns, per region."""
    regions = ("ET", "WT", "TC")
    lines = [f"{title:8s}" + "".join(f"{'Dice ' + r:>10s}" for r in regions)
             + "".join(f"{'HD95 ' + r:>10s}" for r in regions)]
    for name in ("Mean", "StdDev", "Median"):
        row = summary[name]
        lines.append(f"{name:8s}" + "".join(f"{100 * row[f'{dice_column}_{r}']:10.2f}" for r in regions)
                     + "".join(f"{row[f'{hd95_column}_{r}']:10.2f}" for r in regions))
    return lines


OFFICIAL_TABLE = (("PQ", "pq_dsc", 1), ("SQ", "sq_dsc", 1), ("RQ (F1)", "all_instance_f1", 1),
                  ("lesion DSC", "lesionwise_dsc_mean", 1), ("lesion HD95", "lesionwise_hd95_mean", 0),
                  ("lesion NSD", "lesionwise_nsd_mean", 1), ("global DSC", "global_dsc", 1),
                  ("global HD95", "global_hd95", 0), ("global NSD", "global_nsd", 1))


def official_block(summary: dict, convention: brats2025.Convention, rows: list) -> list:
    """Mean, StdDev and Median of each BraTS 2025 metric per region of the task (DSC-like ones
    in %, HD95 in mm), then the lesion counts."""
    regions = brats2025.regions(convention)
    lines = [f"{'':20s}" + "".join(f"{r.upper():>9s}" for r in regions)]
    for title, column, percent in OFFICIAL_TABLE:
        for name in ("Mean", "StdDev", "Median"):
            values = [summary[name][f"{column}_{r}"] * (100 if percent else 1) for r in regions]
            lines.append(f"{title:12s}{name:8s}" + "".join(f"{v:9.2f}" for v in values))
    totals = {f"{kind}_{r}": np.nansum([row[f"all_instance_{kind}_{r}"] for row in rows])
              for kind in ("tp", "fp", "fn") for r in regions}
    lines.append("lesions  " + "; ".join(
        f"{r.upper()} {totals[f'tp_{r}']:.0f} TP, {totals[f'fp_{r}']:.0f} FP, {totals[f'fn_{r}']:.0f} FN"
        for r in regions))
    return lines


def table(summary: dict, scoring: Scoring = Scoring(), rows: list = ()) -> str:
    """The convention, then Mean, StdDev and Median of Dice (%) and Hausdorff95 (mm) as the
    paper's Table 2; for a lesion-wise convention also the legacy scores and lesion counts."""
    lines = [f"convention {scoring.describe()}"]
    if scoring.official:
        return "\n".join(lines + official_block(summary, scoring.official, rows))
    if not scoring.lesion_wise:
        return "\n".join(lines + _block(summary, "", "Dice", "Hausdorff95"))
    lines += _block(summary, "lesion", "LesionWise_Dice", "LesionWise_HD95")
    lines += _block(summary, "legacy", "Legacy_Dice", "Legacy_HD95")
    totals = {c: int(sum(r[c] for r in rows)) for c in lesionwise.columns() if c.startswith("Num_")}
    lines.append("lesions  " + "; ".join(
        f"{r} {totals[f'Num_TP_{r}']} TP, {totals[f'Num_FP_{r}']} FP, {totals[f'Num_FN_{r}']} FN"
        for r in ("ET", "WT", "TC")))
    return "\n".join(lines)


def check_official() -> None:
    """CaseError in one line when the BraTS 2025 package is not installed."""
    try:
        with brats2025.quiet():  # panoptica greets on import
            import brats_evaluation  # noqa: F401
            import panoptica  # noqa: F401
    except ImportError as error:
        raise CaseError(f"the BraTS 2025 conventions need the official package: {error} "
                        f"(pip install -r requirements.txt)") from None


def evaluate(prediction_dir: Path, truth_dir: Path, progress: bool = True,
             scoring: Scoring = Scoring()) -> list:
    """Score every ground-truth case; a case whose ground truth cannot be read is skipped. The
    codings that predict.py recorded beside the predictions are read here unless given."""
    if not scoring.stored:
        scoring = dataclasses.replace(scoring, stored=stored_codings(prediction_dir))
    truths = find_label_files(truth_dir)
    if not truths:
        raise CaseError(f"{truth_dir}: no ground-truth label maps found")
    from tqdm import tqdm

    results = []
    for case_id, truth_file in tqdm(sorted(truths.items()), desc="evaluate", unit="case",
                                    disable=not progress):
        try:
            results.append(score_case(case_id, truth_file, prediction_dir, scoring))
        except CaseError as error:
            print(f"error: ground truth {error}; case skipped", file=sys.stderr)
    return results


@exits_cleanly(CaseError, PredictionError, CodingError)
def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("predictions", type=Path, help="folder of <case id>.nii.gz label maps")
    parser.add_argument("ground_truth", type=Path, help="ground-truth folder, any BraTS layout")
    parser.add_argument("--out", type=Path, default=Path("results.csv"), help="CSV to write")
    parser.add_argument("--convention", choices=CONVENTIONS, default="brats2020",
                        help="scoring rules and edition (default brats2020, the 2020 portal)")
    codings = ["auto", *CODINGS]
    parser.add_argument("--pred-coding", choices=codings, default="auto",
                        help="label coding of the predictions (default: recognised per file)")
    parser.add_argument("--gt-coding", choices=codings, default="auto",
                        help="label coding of the ground truth (default: from its layout)")
    parser.add_argument("--ped-coding", choices=PED_CODINGS,
                        help="coding of BraTS-PED cases under --convention brats2020 (the ids "
                             "cannot say): brats2023 for BraTS 2023 PED, brats2024-ped for 2024+")
    args = parser.parse_args(argv)
    if not args.predictions.is_dir():
        parser.exit(2, f"error: {args.predictions}: not a folder\n")
    scoring = Scoring(args.convention, args.pred_coding, args.gt_coding, ped_coding=args.ped_coding)
    if scoring.official:
        check_official()
    check_file(args.out)
    results = evaluate(args.predictions, args.ground_truth, scoring=scoring)
    if not results:
        parser.exit(2, "error: no case could be scored\n")
    summary = statistics([r.row for r in results], official=bool(scoring.official))
    for result in results:
        if result.problem:
            print(f"penalised: {result.id}: {result.problem}")
        elif result.note:
            print(f"note: {result.id}: {result.note}")
    print(table(summary, scoring, [r.row for r in results]), flush=True)  # before the CSV
    write_csv(results, summary, args.out, scoring)
    print(f"{len(results)} cases scored, {sum(bool(r.problem) for r in results)} penalised; "
          f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
