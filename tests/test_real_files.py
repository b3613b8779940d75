"""Real files read right: scaled int16, a non-zero background, negative values, another orientation.

Each variant stores the same synthetic case another way a scanner or converter might; reading,
preprocessing, predicting and scoring it must give what the plain file gives.
"""
import nibabel as nib
import numpy as np
import pytest

import evaluate
import predict
import synthetic
from brats.cases import find_cases, load_case
from datasets.volumes import preprocess_case
from tests.conftest import SEED

pytestmark = pytest.mark.usefixtures("eager")  # predict.py's files are under test, not its speed
VARIANTS = ("plain", "scaled", "background", "negative", "orientation")
# The orientation variant: voxel axes (A, R, I) instead of BraTS's (L, P, S).
TO_ODD = np.array([[0, -1], [1, 1], [2, -1]])  # nibabel ornt: new axis 0 = old 1, ...


def store(data: np.ndarray, affine: np.ndarray, variant: str, path, brain: np.ndarray) -> None:
    """Write one image (or label map, brain=None) of the case as `variant` stores it."""
    if variant == "scaled" and brain is not None:  # int16 halves, scl_slope 2: the same values
        image = nib.Nifti1Image((data // 2).astype(np.int16), affine)
        image.header.set_slope_inter(2.0, 0.0)
        data = (data // 2) * 2
    elif variant == "background" and brain is not None:
        image = nib.Nifti1Image(np.where(brain, data, -1000).astype(np.int16), affine)
    elif variant == "negative" and brain is not None:  # the brain shifted below zero
        image = nib.Nifti1Image(np.where(brain, data.astype(np.int32) - 5000, 0).astype(np.int16),
                                affine)
    elif variant == "orientation":
        moved = nib.orientations.apply_orientation(data, TO_ODD)
        image = nib.Nifti1Image(moved, affine @ nib.orientations.inv_ornt_aff(TO_ODD, data.shape))
    else:
        image = nib.Nifti1Image(data, affine)
    nib.save(image, str(path))


@pytest.fixture(scope="module")
def variants(tmp_path_factory):
    """variant -> folder holding case V_<variant> (BraTS 2020 layout) and its ground truth."""
    root = tmp_path_factory.mktemp("variants")
    case = synthetic.make_case(SEED + 5, 0)
    brain = case.images["t1"] != 0
    for variant in VARIANTS:
        folder = root / variant / f"V_{variant}"
        folder.mkdir(parents=True)
        for modality, data in case.images.items():
            store(data, synthetic.BRATS_AFFINE, variant, folder / f"V_{variant}_{modality}.nii.gz",
                  brain)
        (root / f"truth_{variant}").mkdir()
        store(case.labels, synthetic.BRATS_AFFINE, variant if variant == "orientation" else "plain",
              root / f"truth_{variant}" / f"V_{variant}.nii.gz", None)
    return root


@pytest.mark.parametrize("variant", VARIANTS[1:])
def test_every_variant_preprocesses_as_the_plain_file(variants, variant):
    plain = preprocess_case(load_case(find_cases(variants / "plain")[0]), (192, 160, 108))[0]
    case = load_case(find_cases(variants / variant)[0])
    assert case.shape == (240, 240, 155)
    arrays = preprocess_case(case, (192, 160, 108))[0]
    for modality in plain:
        tolerance = 0.02 if variant == "scaled" else 1e-5  # scaled: the halved intensities
        np.testing.assert_allclose(arrays[modality], plain[modality], atol=tolerance,
                                   err_msg=modality)


def test_another_orientation_is_predicted_and_scored_on_its_own_grid(variants, trained_run,
                                                                      tmp_path):
    scores = {}
    for variant in ("plain", "orientation"):
        out = tmp_path / variant
        assert predict.main(["--run", str(trained_run), "--input", str(variants / variant),
                             "--output", str(out)]) == 0
        written = nib.load(out / f"V_{variant}.nii.gz")
        source = nib.load(variants / variant / f"V_{variant}" / f"V_{variant}_t1.nii.gz")
        assert written.shape == source.shape
        np.testing.assert_allclose(written.affine, source.affine)
        scores[variant] = np.asanyarray(written.dataobj)
        results = evaluate.evaluate(out, variants / f"truth_{variant}", progress=False)
        scores[f"{variant} row"] = results[0].row
    plain_in_odd = nib.orientations.apply_orientation(scores["plain"], TO_ODD)
    assert np.array_equal(plain_in_odd, scores["orientation"])
    assert scores["plain row"] == pytest.approx(scores["orientation row"])
