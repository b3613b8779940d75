"""scoring/diagnosis.py: the figures compare.py's note column gives are measured on the run's own
predictions; nnU-Net's labels keep their tumour core through the functions compare.py uses."""
import json
from types import SimpleNamespace

import nibabel as nib
import numpy as np

import synthetic
from peers.plumbing import write_case_labels
from peers.nnunet_data import FACTOR, own_voxels, on_case_grid, regions_to_nnunet
from scoring import diagnosis

SHAPE = (240, 240, 155)


def save(labels, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(labels.astype(np.uint8), synthetic.BRATS_AFFINE), str(path))


def test_tumour_free_tiles_are_the_tiles_without_a_tumour_voxel():
    truth = np.zeros((200, 100, 30), bool)
    truth[100, 10, 25] = True  # in tile (1, 0, 1) of 96x96x24 tiles
    free = diagnosis.tumour_free_tiles(truth)
    assert free.shape == truth.shape
    assert not free[96:192, 0:96, 24:].any() and free[96:192, 0:96, 24:].size == 96 * 96 * 6
    assert free.sum() == truth.size - 96 * 96 * 6


def test_measured_figures_come_from_the_predictions(tmp_path):
    """Two cases: a core predicted in one, none in the other; false positives in a far tile."""
    truth = np.zeros(SHAPE, np.uint8)
    truth[100:120, 100:120, 60:80] = 2
    truth[105:115, 105:115, 65:75] = 4
    for cid, core in (("BraTS20_Validation_001", True), ("BraTS20_Validation_002", False)):
        save(truth, tmp_path / "gt" / cid / f"{cid}_seg.nii.gz")
        prediction = np.where(truth > 0, 4 if core else 2, 0).astype(np.uint8)
        prediction[0:10, 0:10, 0:10] = 2  # 1,000 false-positive voxels in a tumour-free tile
        prediction[118:122, 100:120, 60:80] = 2  # 2 x 20 x 20 outside, in the tumour's tile
        save(prediction, tmp_path / "pred" / f"{cid}.nii.gz")
    (tmp_path / "pred" / "codings.json").write_text(json.dumps({"cases": {}}))
    figures = diagnosis.measure(tmp_path / "pred", tmp_path / "gt")
    assert figures["cases"] == 2
    assert figures["truth"] == {"WT": 8000, "TC": 1000, "ET": 1000}
    assert figures["predicted"] == {"WT": 9800, "TC": 3600, "ET": 3600}  # 800 core voxels -> 2
    assert figures["missing"] == {"WT": 0, "TC": 1, "ET": 1}
    assert figures["false_positive_share_in_free_tiles"] == 1000 / 1800
    assert figures["healthy_marked"] == 1800 / (np.prod(SHAPE) - 8000)
    text = diagnosis.describe(figures)
    assert "voxels per case WT 9,800 (truth 8,000), TC 3,600 (truth 1,000)" in text
    assert "56 % of those in tumour-free 96x96x24 tiles" in text
    assert "predicted in any case" not in text  # the first case has a core
    none = {**figures, "missing": {"WT": 0, "TC": 2, "ET": 2}}
    assert diagnosis.describe(none).endswith("; no TC or ET predicted in any case")


def test_nnunet_core_survives_compare_pys_conversion(tmp_path):
    """nnU-Net's 3 mm labels (3 ET, 2 core, 1 edema) through on_case_grid and write_case_labels,
    as the nnunet row runs them: each region keeps about 27 voxels per 3 mm voxel, a core one
    3 mm voxel thick included, and own_voxels counts the same in nnU-Net's own files."""
    coarse = np.zeros((80, 80, 52, 3), np.uint8)
    coarse[30:46, 30:46, 20:32, 0] = 1  # WT
    coarse[35:41, 35:41, 24:28, 1] = 1  # TC
    coarse[37:38, 35:41, 24:28, 2] = 1  # ET one 3 mm voxel thick
    labels = regions_to_nnunet(coarse)
    save(labels, tmp_path / "own" / "BraTS20_Validation_001.nii.gz")
    case = SimpleNamespace(id="BraTS20_Validation_001", affine=synthetic.BRATS_AFFINE,
                           header=nib.Nifti1Header(), file_affine=None,  # a file in BraTS order
                           to_file_grid=lambda labels: labels)
    written = write_case_labels(case, on_case_grid(labels, SHAPE), "brats2020", tmp_path)
    ours = {"WT": (written > 0).sum(), "TC": np.isin(written, (1, 4)).sum(),
            "ET": (written == 4).sum()}
    own = own_voxels(tmp_path / "own")
    for region, channel in (("WT", 0), ("TC", 1), ("ET", 2)):
        expected = coarse[..., channel].sum() * FACTOR ** 3
        assert own[region] == expected
        assert 0.7 * expected <= ours[region] <= 1.1 * expected, (region, ours[region], expected)
