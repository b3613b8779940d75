"""Readers for every layout: case discovery and labels checked voxel for voxel against the generator."""
import shutil

import nibabel as nib
import numpy as np
import pytest

import synthetic
from brats.cases import MODALITIES, CaseError, find_cases, load_case
from tests.conftest import SEED

LAYOUT_IDS = {
    "brats2018": ["Brats18_SYN_1_1", "Brats18_SYN_2_1"],
    "brats2020": ["BraTS20_Training_001", "BraTS20_Training_002"],
    "brats2021": ["BraTS2021_00001", "BraTS2021_00002"],
    "brats2023": ["BraTS-GLI-00001-000", "BraTS-GLI-00002-000"],
    "msd": ["BRATS_001", "BRATS_002"],
}


@pytest.mark.parametrize("layout", sorted(LAYOUT_IDS))
def test_each_layout_is_found_and_labels_match_the_generator(tmp_path, layout):
    list(synthetic.write_dataset(tmp_path, 2, SEED, layout))
    cases = find_cases(tmp_path)
    assert [c.id for c in cases] == LAYOUT_IDS[layout]
    assert {c.layout for c in cases} == {layout}
    for index, files in enumerate(cases, start=1):
        truth = synthetic.make_case(SEED, index)
        case = load_case(files)
        assert case.seg.dtype == np.uint8
        np.testing.assert_array_equal(case.seg, truth.labels)
        assert set(np.unique(case.seg)) <= {0, 1, 2, 4}
        for modality in MODALITIES:
            assert case.images[modality].dtype == np.float32
            np.testing.assert_array_equal(case.images[modality], truth.images[modality])
        assert case.shape == (240, 240, 155)
        np.testing.assert_array_equal(case.affine, synthetic.BRATS_AFFINE)


def test_layouts_store_their_own_label_coding(tmp_path):
    """The files on disk hold the release's coding; only the reader turns it into BraTS 2020's."""
    truth = synthetic.make_case(SEED, 1).labels
    for layout, path, expected in (
        ("brats2023", "BraTS-GLI-00001-000/BraTS-GLI-00001-000-seg.nii.gz", {4: 3, 1: 1, 2: 2}),
        ("msd", "labelsTr/BRATS_001.nii.gz", {4: 3, 1: 2, 2: 1}),
    ):
        list(synthetic.write_dataset(tmp_path / layout, 1, SEED, layout))
        stored = np.asanyarray(nib.load(tmp_path / layout / path).dataobj)
        for brats_label, stored_label in expected.items():
            assert (stored[truth == brats_label] == stored_label).all()


def test_brats2018_cases_sit_in_grade_folders(tmp_path):
    list(synthetic.write_dataset(tmp_path, 2, SEED, "brats2018"))
    grades = {p.parent.name for p in tmp_path.glob("*/Brats18_*")}
    assert grades <= {"HGG", "LGG"} and grades
    assert len(find_cases(tmp_path)) == 2


def test_msd_image_is_4d_and_split_in_channel_order(tmp_path):
    list(synthetic.write_dataset(tmp_path, 1, SEED, "msd"))
    assert nib.load(tmp_path / "imagesTr" / "BRATS_001.nii.gz").shape == (240, 240, 155, 4)
    case = load_case(find_cases(tmp_path)[0])
    truth = synthetic.make_case(SEED, 1)
    for modality in ("flair", "t1", "t1ce", "t2"):
        np.testing.assert_array_equal(case.images[modality], truth.images[modality])
    assert len(case.header.get_data_shape()) == 3


def test_uncompressed_nii_and_case_355_segmentation_name(tmp_path):
    list(synthetic.write_dataset(tmp_path, 1, SEED, "brats2020"))
    folder = tmp_path / "BraTS20_Training_001"
    for path in list(folder.glob("*.nii.gz")):
        img = nib.load(path)
        target = folder / path.name.replace(".nii.gz", ".nii")
        if path.name.endswith("_seg.nii.gz"):
            target = folder / "W39_1998.09.19_Segm.nii"
        nib.save(img, target)
        path.unlink()
    files = find_cases(tmp_path)[0]
    assert files.seg.name == "W39_1998.09.19_Segm.nii"
    np.testing.assert_array_equal(load_case(files).seg, synthetic.make_case(SEED, 1).labels)


def test_validation_cases_have_no_labels_and_ground_truth_is_apart(tmp_path):
    list(synthetic.write_dataset(tmp_path / "val", 2, SEED, "brats2020", validation=True))
    cases = find_cases(tmp_path / "val")
    assert [c.id for c in cases] == ["BraTS20_Validation_001", "BraTS20_Validation_002"]
    assert all(c.seg is None for c in cases)
    assert load_case(cases[0]).seg is None
    gt = tmp_path / "val_ground_truth" / "BraTS20_Validation_001" / "BraTS20_Validation_001_seg.nii.gz"
    assert gt.is_file()
    assert not list((tmp_path / "val").rglob("*_seg.nii*"))


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(CaseError, match="not a folder"):
        find_cases(tmp_path / "nope")


def test_case_missing_a_modality_is_found_and_reported(tmp_path):
    list(synthetic.write_dataset(tmp_path, 1, SEED, "brats2020"))
    (tmp_path / "BraTS20_Training_001" / "BraTS20_Training_001_t1ce.nii.gz").unlink()
    files = find_cases(tmp_path)[0]
    with pytest.raises(CaseError, match=r"^BraTS20_Training_001: missing modality t1ce$"):
        load_case(files)


def test_copy_of_tree_with_nesting_is_found(tmp_path):
    list(synthetic.write_dataset(tmp_path / "a", 1, SEED, "brats2021"))
    shutil.copytree(tmp_path / "a", tmp_path / "MICCAI" / "nested" / "deeper")
    assert [c.id for c in find_cases(tmp_path / "MICCAI")] == ["BraTS2021_00001"]
