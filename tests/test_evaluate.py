"""evaluate.py against MedPy, the BraTS empty-region rules, the CSV layout and penalties."""
import csv

import nibabel as nib
import numpy as np
import pytest
from medpy.metric import binary as medpy

import evaluate
import synthetic
from brats.cases import find_label_files
from brats.codings import regions_to_labels
from datasets.volumes import label_regions
from tests.conftest import SEED
from scoring import metrics, rules


def random_blob(rng, shape, fill):
    from scipy import ndimage

    noise = ndimage.gaussian_filter(rng.standard_normal(shape), 2)
    return noise > np.quantile(noise, 1 - fill)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.5, 1.2, 3.0), (1.0, 0.9375, 0.9375)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_equal_medpy(spacing, seed):
    rng = np.random.default_rng(seed)
    shape = (40, 36, 30)
    prediction, truth = random_blob(rng, shape, 0.1), random_blob(rng, shape, 0.15)
    assert metrics.dice(prediction, truth) == pytest.approx(medpy.dc(prediction, truth), abs=1e-6)
    assert metrics.hausdorff95(prediction, truth, spacing) == pytest.approx(
        medpy.hd95(prediction, truth, voxelspacing=spacing), abs=1e-6)
    assert metrics.sensitivity(prediction, truth) == pytest.approx(
        medpy.sensitivity(prediction, truth), abs=1e-6)
    assert metrics.specificity(prediction, truth) == pytest.approx(
        medpy.specificity(prediction, truth), abs=1e-6)


def test_hausdorff95_of_masks_touching_the_volume_edge_equals_medpy():
    rng = np.random.default_rng(5)
    prediction, truth = random_blob(rng, (30, 30, 20), 0.3), random_blob(rng, (30, 30, 20), 0.3)
    prediction[0, :, :] = True
    assert metrics.hausdorff95(prediction, truth, (1, 1, 2)) == pytest.approx(
        medpy.hd95(prediction, truth, voxelspacing=(1, 1, 2)), abs=1e-6)


def test_empty_region_rules():
    empty, blob = np.zeros((10, 10, 10), bool), np.zeros((10, 10, 10), bool)
    blob[2:5, 2:5, 2:5] = True
    assert rules.region_scores(empty, empty, (1, 1, 1)) == {
        "Dice": 1.0, "Hausdorff95": 0.0, "Sensitivity": 1.0, "Specificity": 1.0}
    missed = rules.region_scores(empty, blob, (1, 1, 1))
    assert missed["Dice"] == 0 and missed["Hausdorff95"] == pytest.approx(373.1287, abs=1e-4)
    assert missed["Sensitivity"] == 0 and missed["Specificity"] == 1
    invented = rules.region_scores(blob, empty, (1, 1, 1))
    assert invented["Dice"] == 0 and invented["Hausdorff95"] == pytest.approx(373.1287, abs=1e-4)
    assert invented["Sensitivity"] == 1 and invented["Specificity"] == pytest.approx(1 - 27 / 1000)


def test_labels_regions_labels_round_trip():
    truth = synthetic.make_case(SEED, 1).labels
    regions = label_regions(truth).astype(np.float32)
    np.testing.assert_array_equal(regions_to_labels(regions), truth)


def test_regions_to_labels_enforces_nesting_and_et_postprocessing():
    probabilities = np.zeros((4, 1, 1, 3), np.float32)
    probabilities[0] = (0.0, 0.0, 0.9)  # ET alone -> still ET (and thus TC, WT)
    probabilities[1] = (0.2, 0.8, 0.1)  # TC without WT -> necrosis
    probabilities[2] = (0.8, 0.1, 0.1)  # WT only -> edema
    np.testing.assert_array_equal(regions_to_labels(probabilities)[:, 0, 0], [4, 1, 2, 0])
    np.testing.assert_array_equal(regions_to_labels(probabilities, et_min_voxels=2)[:, 0, 0],
                                  [1, 1, 2, 0])


def save_labels(labels, path, affine=synthetic.BRATS_AFFINE):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(labels.astype(np.uint8), affine), str(path))


@pytest.fixture
def folders(tmp_path):
    """Ground truth in the BraTS 2023 layout (label 3 = ET) for three cases; two predictions."""
    truth_dir, prediction_dir = tmp_path / "gt", tmp_path / "pred"
    truths = {}
    for index in (1, 2, 3):
        labels = synthetic.make_case(SEED, index).labels
        cid = synthetic.case_id("brats2023", index, True)
        truths[cid] = labels
        save_labels(synthetic.to_layout_coding(labels, "brats2023"), truth_dir / cid / f"{cid}-seg.nii.gz")
    ids = sorted(truths)
    save_labels(truths[ids[0]], prediction_dir / f"{ids[0]}.nii.gz")  # perfect
    shifted = np.roll(truths[ids[1]], 2, axis=0)
    save_labels(shifted, prediction_dir / f"{ids[1]}.nii.gz")
    return truth_dir, prediction_dir, ids, truths


def test_cli_writes_portal_csv_and_penalises_missing_cases(folders, tmp_path, capsys):
    truth_dir, prediction_dir, ids, truths = folders
    assert set(find_label_files(truth_dir)) == set(ids)
    out = tmp_path / "results.csv"
    assert evaluate.main([str(prediction_dir), str(truth_dir), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"penalised: {ids[2]}: no prediction" in printed and "Median" in printed
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["Label", "Dice_ET", "Dice_WT", "Dice_TC", "Sensitivity_ET", "Sensitivity_WT",
                       "Sensitivity_TC", "Specificity_ET", "Specificity_WT", "Specificity_TC",
                       "Hausdorff95_ET", "Hausdorff95_WT", "Hausdorff95_TC"]
    assert [r[0] for r in rows[1:]] == ids + ["Mean", "StdDev", "Median", "25quantile", "75quantile"]
    table = {r[0]: dict(zip(rows[0][1:], map(float, r[1:]))) for r in rows[1:]}
    assert table[ids[0]]["Dice_WT"] == 1.0 and table[ids[0]]["Hausdorff95_ET"] == 0.0
    assert table[ids[2]]["Dice_WT"] == 0.0 and table[ids[2]]["Hausdorff95_TC"] == pytest.approx(373.1287, abs=1e-4)
    shifted = np.roll(truths[ids[1]], 2, axis=0)
    expected = medpy.dc(shifted > 0, truths[ids[1]] > 0)
    assert table[ids[1]]["Dice_WT"] == pytest.approx(expected, abs=1e-6)
    dices = [table[i]["Dice_WT"] for i in ids]
    assert table["Mean"]["Dice_WT"] == pytest.approx(np.mean(dices), abs=1e-6)
    assert table["StdDev"]["Dice_WT"] == pytest.approx(np.std(dices), abs=1e-6)
    assert table["Median"]["Dice_WT"] == pytest.approx(np.median(dices), abs=1e-6)


def test_misaligned_prediction_gets_the_penalty(folders, tmp_path, capsys):
    truth_dir, prediction_dir, ids, truths = folders
    save_labels(truths[ids[2]], prediction_dir / f"{ids[2]}.nii.gz", affine=np.eye(4))
    results = {r.id: r for r in evaluate.evaluate(prediction_dir, truth_dir, progress=False)}
    assert "misaligned" in results[ids[2]].problem
    assert results[ids[2]].row["Dice_WT"] == 0.0
    assert results[ids[0]].problem == ""
