"""Label codings that must be stated, never guessed: BraTS-PED cases (2023 and 2024+ code them
differently under the same ids) and 2020-coded predictions under the post-treatment conventions
(4 = ET there, 4 = resection cavity here)."""
import json

import nibabel as nib
import numpy as np
import pytest

import evaluate
from brats.codings import STORED, EditionError, layout_coding, recode
from scoring import rules

SHAPE = (32, 32, 24)
PED = "BraTS-PED-00001-000"


def save(labels, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(labels.astype(np.uint8), np.eye(4)), str(path))


def tumour_2020() -> np.ndarray:
    """BraTS 2020 coding: edema around a core of necrosis and enhancing tumour."""
    labels = np.zeros(SHAPE, np.uint8)
    labels[6:22, 6:22, 4:18] = 2
    labels[9:19, 9:19, 7:15] = 4
    labels[12:16, 12:16, 9:13] = 1
    return labels


def refused(capsys, argv) -> str:
    """The one error line of an evaluate.py run that must stop with status 2 and no CSV."""
    with pytest.raises(SystemExit) as stop:
        evaluate.main(argv)
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert stop.value.code == 2 and len(errors) == 1, errors
    return errors[0]


def test_ped_coding_is_never_taken_from_the_id():
    with pytest.raises(EditionError, match=r"BraTS-PED-00001-000: .*2023.*2024.*--ped-coding"):
        layout_coding("brats2023", PED)
    assert layout_coding("brats2023", PED, "brats2023") == "brats2023"
    assert layout_coding("brats2023", PED, "brats2024-ped") == "brats2024-ped"
    assert layout_coding("brats2023", "BraTS-GLI-00001-000") == "brats2023"


@pytest.mark.parametrize("edition", ["brats2023", "brats2024-ped"])
def test_evaluate_asks_for_the_ped_edition_unless_stated(tmp_path, capsys, edition):
    """A PED ground truth and a perfect prediction, coded as either edition: refused without
    --ped-coding (values 0-3 fit both), scored with it or with a PED convention."""
    labels = recode(tumour_2020(), "brats2020", edition)
    save(labels, tmp_path / "gt" / PED / f"{PED}-seg.nii.gz")
    save(labels, tmp_path / "pred" / f"{PED}.nii.gz")
    out = tmp_path / "results.csv"
    argv = [str(tmp_path / "pred"), str(tmp_path / "gt"), "--out", str(out)]
    error = refused(capsys, argv)
    assert error.startswith(f"error: {PED}: BraTS-PED") and "--ped-coding" in error, error
    assert not out.exists()

    assert evaluate.main([*argv, "--ped-coding", edition]) == 0
    row = next(r for r in out.read_text().splitlines() if r.startswith(PED)).split(",")
    header = out.read_text().splitlines()[0].split(",")
    scores = dict(zip(header[1:], map(float, row[1:])))
    assert scores["Dice_ET"] == scores["Dice_TC"] == scores["Dice_WT"] == 1.0
    # A convention of a PED edition states the coding itself.
    convention = "brats2023-ped" if edition == "brats2023" else "brats2024-ped"
    assert evaluate.main([*argv, "--convention", convention]) == 0


def test_evaluate_reads_recorded_ped_predictions_but_still_asks_for_the_truth(tmp_path, capsys):
    labels = recode(tumour_2020(), "brats2020", "brats2024-ped")
    save(labels, tmp_path / "gt" / PED / f"{PED}-seg.nii.gz")
    save(labels, tmp_path / "pred" / f"{PED}.nii.gz")
    (tmp_path / "pred" / STORED).write_text(json.dumps({"cases": {PED: "brats2024-ped"}}))
    out = tmp_path / "results.csv"
    argv = [str(tmp_path / "pred"), str(tmp_path / "gt"), "--out", str(out)]
    assert "--ped-coding" in refused(capsys, argv)
    assert evaluate.main([*argv, "--gt-coding", "brats2024-ped"]) == 0


@pytest.mark.parametrize("convention", ["brats2025-gli", "brats2025-met", "brats2024-gli"])
def test_2020_coded_predictions_are_not_scored_without_their_et(tmp_path, capsys, convention):
    """{0, 1, 2, 4} without codings.json: as post-treatment labels 4 is the resection cavity and
    no ET is left, as 2020 labels 4 is ET: refused in one line naming the file, no CSV."""
    truth = recode(tumour_2020(), "brats2020", "brats2024-post")
    cid = "BraTS-GLI-00001-000"
    save(truth, tmp_path / "gt" / cid / f"{cid}-seg.nii.gz")
    save(tumour_2020(), tmp_path / "pred" / f"{cid}.nii.gz")
    out = tmp_path / "results.csv"
    argv = [str(tmp_path / "pred"), str(tmp_path / "gt"), "--convention", convention,
            "--out", str(out)]
    error = refused(capsys, argv)
    assert error.startswith(f"error: {tmp_path / 'pred' / cid}.nii.gz: holds labels {{0, 1, 2, 4}}")
    assert "no ET in the brats2024-post coding" in error and "--pred-coding" in error, error
    assert not out.exists()
    assert evaluate.main([*argv, "--pred-coding", "brats2020"]) == 0
    (tmp_path / "pred" / STORED).write_text(json.dumps({"cases": {cid: "brats2020"}}))
    assert evaluate.main(argv) == 0


def test_unambiguous_readings_still_need_nothing_stated():
    """Only a reading that would drop the ET is refused: a post-treatment map with ET and RC, and
    a 2020 map under the 2020 rules, are read as before."""
    post = recode(tumour_2020(), "brats2020", "brats2024-post")
    post[0:3, 0:3, 0:3] = 4
    masks, note = rules.prediction_masks(post, rules.Scoring("brats2025-gli"))
    assert masks["ET"].any() and note == ""
    masks, note = rules.prediction_masks(tumour_2020(), rules.Scoring("brats2020"))
    assert masks["ET"].any() and note == ""
