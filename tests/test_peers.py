"""The peers' conversions (BraTS labels and regions to nnU-Net's and back, exact; the 3 mm raw
dataset) and their one-line refusals. Both peers end to end: tests/test_compare.py's quick run."""
import json

import nibabel as nib
import numpy as np
import pytest

from peers import compare_rows, nnunet_data
from peers.nnunet_data import (brats_to_nnunet, coarse_affine, coarse_regions, nnunet_to_brats,
                               nnunet_to_regions, regions_to_nnunet)
from datasets.volumes import label_regions


def nested_regions(rng, shape=(9, 7, 5)) -> np.ndarray:
    """Random nested regions (..., 3) WT ⊇ TC ⊇ ET."""
    labels = rng.choice([0, 1, 2, 4], size=shape)
    return label_regions(labels.astype(np.uint8))


def test_labels_round_trip_exactly_as_nnunets_brats_conversion():
    from nnunetv2.dataset_conversion.Dataset137_BraTS21 import convert_labels_back_to_BraTS

    labels = np.random.default_rng(0).choice([0, 1, 2, 4], size=(11, 9, 7)).astype(np.uint8)
    converted = brats_to_nnunet(labels)
    assert set(np.unique(converted)) == {0, 1, 2, 3}
    assert np.array_equal(nnunet_to_brats(converted), labels)
    assert np.array_equal(convert_labels_back_to_BraTS(converted), labels)  # nnU-Net's own
    with pytest.raises(ValueError, match=r"label values \[3\]"):
        brats_to_nnunet(np.array([0, 3]))


def test_regions_round_trip_exactly_and_match_the_dataset_json_regions():
    regions = nested_regions(np.random.default_rng(1))
    labels = regions_to_nnunet(regions)
    assert np.array_equal(nnunet_to_regions(labels), regions)
    # the nnU-Net labels of regions are the nnU-Net labels of the BraTS labels
    brats = np.where(regions[..., 2], 4,
                     np.where(regions[..., 1], 1, np.where(regions[..., 0], 2, 0)))
    assert np.array_equal(labels, brats_to_nnunet(brats))
    assert nnunet_data.REGIONS == {"whole tumor": (1, 2, 3), "tumor core": (2, 3),
                                   "enhancing tumor": (3,)}  # Dataset137_BraTS21.py's


def test_the_coarse_grid_voxel_is_the_centre_of_its_block():
    affine = np.array([[-1.0, 0, 0, 0], [0, -1.0, 0, 239.0], [0, 0, 1.0, 0], [0, 0, 0, 1]])
    coarse = coarse_affine(affine)
    for voxel in ((0, 0, 0), (5, 7, 11)):
        fine = [3 * v + 1 for v in voxel]
        assert np.allclose(coarse @ [*voxel, 1], affine @ [*fine, 1])
    assert np.allclose(np.abs(np.diag(coarse)[:3]), 3)


def test_raw_dataset_holds_3mm_images_and_the_caches_regions(tmp_path, brats2020_dir):
    from brats.cases import find_cases, load_case

    cases = find_cases(brats2020_dir)[:2]
    folder = tmp_path / nnunet_data.DATASET
    assert nnunet_data.write_raw_dataset(cases, folder) == 2
    dataset = json.loads((folder / "dataset.json").read_text())
    assert dataset["labels"]["tumor core"] == [2, 3] and dataset["regions_class_order"] == [1, 2, 3]
    assert dataset["channel_names"] == {"0": "T1", "1": "T1ce", "2": "T2", "3": "Flair"}
    case = load_case(cases[0])
    images = sorted((folder / "imagesTr").glob(f"{case.id}_*.nii.gz"))
    assert [p.name[-11:] for p in images] == [f"{i:04d}.nii.gz" for i in range(4)]
    t1 = nib.load(images[0])
    assert t1.shape == (80, 80, 52) and np.allclose(t1.header.get_zooms(), 3)
    label_image = nib.load(folder / "labelsTr" / f"{case.id}.nii.gz")
    labels = np.asarray(label_image.dataobj)
    assert np.allclose(label_image.affine, t1.affine)
    assert set(np.unique(labels)) <= {0, 1, 2, 3} and labels.max() > 0
    assert np.array_equal(nnunet_to_regions(labels), coarse_regions(case.seg))


def test_a_missing_package_and_an_untrained_run_are_one_line(tmp_path, capsys, monkeypatch):
    import importlib.util

    from peers import segresnet
    from tests.conftest import one_line_error

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "nnunetv2" else real(name, *a))
    assert compare_rows.missing("peers.nnunet") == ("the nnunetv2 package not installed (make setup: "
                                            "requirements-dev.txt pins them)")
    assert compare_rows.missing("peers.segresnet") == ""
    monkeypatch.undo()
    monkeypatch.setattr(segresnet, "without_tensorflow", lambda: None)  # not in this process
    error = one_line_error(capsys, segresnet.main, ["predict", "--run", tmp_path, "--input",
                                                    tmp_path, "--output", tmp_path / "out"])
    assert "not a trained SegResNet run" in error
