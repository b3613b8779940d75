"""compare.py --quick with the peers nnU-Net v2 and MONAI's SegResNet (peers/compare_rows.py in compare's
measured processes): their rows, nnU-Net's own files under OUT, predictions as predict.py's.
A worker group of its own (conftest.py), beside test_compare.py's rows of the project's systems."""
import csv
import json

import pytest

import compare
from tests.conftest import built_once

SYSTEMS = "nnunet,segresnet"
SEGRESNET_PARAMETERS = 4_702_227  # MONAI's tutorial network


@pytest.fixture(scope="module")
def peers_quick(tmp_path_factory, quick_comparison_data):
    """One quick comparison of the two peers: 4 training and 2 validation cases (the data of
    test_compare's run), one epoch each."""
    def build(folder):
        assert compare.main(["--out", str(folder / "out"), "--quick", "--systems", SYSTEMS,
                             "--data", str(quick_comparison_data / "data"),
                             "--cache", str(quick_comparison_data / "cache")]) == 0

    return built_once(tmp_path_factory, "compare_peers_quick", build) / "out"


def test_quick_writes_a_row_per_peer_with_its_own_files(peers_quick):
    with open(peers_quick / "compare.csv", newline="") as handle:
        rows = {row["system"]: row for row in csv.DictReader(handle)}
    assert list(rows) == SYSTEMS.split(",")
    for name, row in rows.items():
        for region in ("ET", "WT", "TC"):
            assert 0 <= float(row[f"Dice_{region}_mean"]) <= 1
            assert 0 <= float(row[f"HD95_{region}_mean"]) <= 373.13
        assert int(row["scored_cases"]) == 2 and row["epochs"] == "1"
        assert float(row["seconds_per_step"]) > 0 and float(row["seconds_per_case"]) > 0
        assert int(row["peak_bytes"]) > 100 * 2**20
        assert (peers_quick / "results" / f"{name}.csv").is_file()
        assert len(list((peers_quick / "predictions" / name).glob("*.nii.gz"))) == 2
        assert (peers_quick / "predictions" / name / "codings.json").is_file()
    assert int(rows["segresnet"]["parameters"]) == SEGRESNET_PARAMETERS
    markdown = (peers_quick / "compare.md").read_text()
    assert "Isensee" in markdown and "brats_mri_segmentation" in markdown
    nnunet = peers_quick / "runs" / "nnunet"
    assert (nnunet / "nnUNet_raw" / "Dataset500_SynBraTS" / "dataset.json").is_file()
    assert len(list(nnunet.glob("results/Dataset500_SynBraTS/nnUNetTrainerBudget__nnUNetPlans__"
                                "3d_fullres/fold_0/checkpoint_final.pth"))) == 1


def test_each_peer_records_what_its_predictions_hold(peers_quick):
    """The note column's figures come from this run: voxels predicted per region, and for nnU-Net
    its own output files counted beside our conversion of them (issue 31, point 5)."""
    for name in SYSTEMS.split(","):
        figures = json.loads((peers_quick / "results" / f"{name}.json").read_text())["measured"]
        assert figures["cases"] == 2 and set(figures["predicted"]) == {"WT", "TC", "ET"}
    own = json.loads((peers_quick / "results" / "nnunet.json").read_text())["measured"]["own_output"]
    assert own["cases"] == 2 and set(own) == {"cases", "WT", "TC", "ET"}
