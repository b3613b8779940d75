"""evaluate.py --convention brats2025-*: on multi-lesion cases, every number equals what the official
package (brats-evaluation on panoptica) gives when run directly, its command and its parser."""
import csv
import json
import math
import shutil
import sys

import nibabel as nib
import numpy as np
import pytest

from scoring import brats2025
import evaluate
from brats.codings import STORED, recode

SHAPE = (48, 48, 40)
AFFINE = np.diag([1.0, 0.9, 1.5, 1.0])  # anisotropic voxels: distances and volumes in mm
IDS = ["BraTS-GLI-00001-000", "BraTS-GLI-00002-000", "BraTS-GLI-00003-000"]


def put(labels, value, x, y, z, size=5):
    labels[x:x + size, y:y + size, z:z + size] = value


def truth_labels() -> np.ndarray:
    """Post-treatment coding: three ET lesions with necrosis, edema around two, a resection cavity."""
    labels = np.zeros(SHAPE, np.uint8)
    for x, y, z in ((4, 4, 4), (20, 24, 10), (34, 8, 28)):
        put(labels, 2, x - 2, y - 2, z - 2, size=9)
        put(labels, 3, x, y, z)
        put(labels, 1, x + 1, y + 1, z + 1, size=2)
    labels[34:39, 36:41, 4:8] = 4  # RC
    labels[20:30, 2:4, 30:36] = 2  # an edema-only lesion
    return labels


def prediction_labels() -> np.ndarray:
    """Lesions shifted by a voxel, the third ET lesion missed, a false-positive ET speck, part of
    the cavity."""
    labels = np.roll(truth_labels(), 1, axis=0)
    labels[labels == 3] = np.where(np.indices(SHAPE)[0][labels == 3] > 30, 2, 3)
    labels[44:46, 44:46, 36:38] = 3
    labels[34:37, 36:41, 4:8] = 4
    return labels


def save(labels, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(labels.astype(np.uint8), AFFINE), str(path))


def official_run(config: str, parser: str, truth_dir, prediction_dir, tmp_path, monkeypatch) -> dict:
    """The package's own command (brats-evaluate) and parser (brats-parse-metrics), as its README
    runs them: subject -> {column: float}, summary rows included."""
    from brats_evaluation import evaluation, metrics_parser

    summary, parsed = tmp_path / "official.json", tmp_path / "official.csv"
    monkeypatch.setattr(sys, "argv", ["brats-evaluate", "--config", config, "--ref_path",
                                      str(truth_dir), "--pred_path", str(prediction_dir),
                                      "--summary_json", str(summary)])
    with brats2025.quiet():
        evaluation.main()
        if parser == "mets":
            metrics_parser.parse_mets_results(str(summary), 20.0, 0.1, str(parsed))
        else:
            metrics_parser.parse_seg_results(str(summary), str(parsed))
    rows = {r["subject_id"]: {k: float(v) if v else math.nan for k, v in r.items() if k != "subject_id"}
            for r in csv.DictReader(parsed.open())}
    for result in json.loads(summary.read_text())["metrics"]:  # PQ and SQ: panoptica's own results
        row = rows[result["subject_name"]]
        for region, values in result.items():
            if isinstance(values, dict):
                row.update({f"{key}_{region}": values[key] for key in brats2025.ADDED})
    return rows


@pytest.mark.parametrize("convention, config, parser", [("brats2025-gli", "gli", "seg"),
                                                         ("brats2025-met", "mets", "mets")])
def test_numbers_equal_the_official_package_run_directly(tmp_path, monkeypatch, capsys, convention,
                                                         config, parser):
    truth, prediction = truth_labels(), prediction_labels()
    # Ours: ground truth in case folders; the first prediction in the task's coding, the second in
    # BraTS 2020's as codings.json records (recoded for the package), the third missing.
    for cid in IDS:
        save(truth, tmp_path / "gt" / cid / f"{cid}-seg.nii.gz")
    save(prediction, tmp_path / "pred" / f"{IDS[0]}.nii.gz")
    perfect_2020 = recode(np.where(truth == 4, 0, truth), "brats2024-post", "brats2020")
    save(perfect_2020, tmp_path / "pred" / f"{IDS[1]}.nii.gz")
    (tmp_path / "pred" / STORED).write_text(json.dumps({"cases": {IDS[1]: "brats2020"}}))
    out = tmp_path / "ours.csv"
    assert evaluate.main([str(tmp_path / "pred"), str(tmp_path / "gt"), "--convention", convention,
                          "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"penalised: {IDS[2]}: no prediction" in printed and "PQ" in printed
    # The package run directly: flat folders, every map in the task's coding.
    (tmp_path / "ref").mkdir()
    for cid in IDS:
        shutil.copy(tmp_path / "gt" / cid / f"{cid}-seg.nii.gz", tmp_path / "ref")
    save(prediction, tmp_path / "native" / f"{IDS[0]}.nii.gz")
    save(np.where(truth == 4, 0, truth), tmp_path / "native" / f"{IDS[1]}.nii.gz")
    official = official_run(config, parser, tmp_path / "ref", tmp_path / "native", tmp_path,
                            monkeypatch)

    lines = out.read_text().splitlines()
    assert lines[0].startswith(f"# convention: {convention}: BraTS 2025") and "official" in lines[0]
    rows = list(csv.reader(lines[1:]))
    assert [r[0] for r in rows[1:]] == IDS + list(evaluate.STATISTICS)
    ours = {r[0]: dict(zip(rows[0][1:], map(float, r[1:]))) for r in rows[1:]}
    names = {IDS[0]: f"{IDS[0]}-seg.nii.gz", IDS[1]: f"{IDS[1]}-seg.nii.gz",
             IDS[2]: f"{IDS[2]}-seg.nii.gz", "Mean": "mean", "StdDev": "std", "Median": "median"}
    compared = 0
    for row, subject in names.items():
        reference = official[subject]
        columns = [c for c in reference if not c.startswith(brats2025.ADDED) or subject in IDS[:2]]
        assert set(columns) <= set(ours[row]), set(columns) - set(ours[row])
        for column in columns:
            assert ours[row][column] == pytest.approx(reference[column], abs=1e-6, nan_ok=True), \
                (row, column)
            compared += 1
    assert compared > 200
    assert ours[IDS[1]]["global_dsc_et"] == 1 and ours[IDS[0]]["all_instance_fp_et"] >= 1
    assert ours[IDS[0]]["all_instance_fn_et"] >= 1 and 0 < ours[IDS[0]]["pq_dsc_et"] < 1
    assert ours[IDS[2]]["global_hd95_wt"] == 373 and ours[IDS[2]]["global_dsc_wt"] == 0
