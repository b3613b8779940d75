"""Lesion-wise BraTS 2023/2024 scoring on hand-made 20x20x20 cases whose scores are worked out by
hand here, a full-volume transcription of the rules on random masks, and the command line."""
import csv
import math

import nibabel as nib
import numpy as np
import pytest
from medpy.metric import binary as medpy
from scipy import ndimage

import evaluate
from scoring import lesionwise
from brats.codings import CodingError, region_masks
from scoring import rules

GLI = lesionwise.CONVENTIONS["brats2023-gli"]  # dilation 3, minimum 50 mm3, penalty 374
MET = lesionwise.CONVENTIONS["brats2023-met"]  # dilation 1, minimum 2 mm3, penalty 374
SHAPE = (20, 20, 20)
MM = (1.0, 1.0, 1.0)


def box(*slices) -> np.ndarray:
    mask = np.zeros(SHAPE, bool)
    mask[slices] = True
    return mask


def cube(start: int, size: int = 4, z: int | None = None) -> np.ndarray:
    """A size^3 cube at (start, start, z or start)."""
    z = start if z is None else z
    return box(slice(start, start + size), slice(start, start + size), slice(z, z + size))


def scores(convention, prediction, truth, spacing=MM, region="ET"):
    return lesionwise.lesion_scores(prediction, truth, spacing, convention.dilation[region],
                                    convention.min_volume[region], convention.hd95_penalty(SHAPE))


def expect(result, dice, hd95, tp, fp, fn):
    assert result["LesionWise_Dice"] == pytest.approx(dice, abs=1e-9)
    assert result["LesionWise_HD95"] == pytest.approx(hd95, abs=1e-9)
    assert (result["Num_TP"], result["Num_FP"], result["Num_FN"]) == (tp, fp, fn)


# A [1:5]^3 and B [12:16]^3 stay apart even after 3 dilations (A reaches 7, B 9): two lesions.
A, B = cube(1), cube(12)


@pytest.mark.parametrize("convention", [GLI, MET])
def test_lesion_found_exactly(convention):
    expect(scores(convention, A, A), dice=1, hd95=0, tp=1, fp=0, fn=0)


@pytest.mark.parametrize("convention", [GLI, MET])
def test_missed_lesion_scores_zero_and_the_penalty(convention):
    # A found (Dice 1, HD95 0), B missed (Dice 0, HD95 374): the means over two lesions.
    expect(scores(convention, A, A | B), dice=(1 + 0) / 2, hd95=(0 + 374) / 2, tp=1, fp=0, fn=1)


@pytest.mark.parametrize("convention", [GLI, MET])
def test_false_positive_counts_whatever_its_size(convention):
    speck = box(15, 15, 15)  # one voxel, 14 voxels from A
    expect(scores(convention, A | speck, A), dice=1 / 2, hd95=374 / 2, tp=1, fp=1, fn=0)


def test_lesions_merged_by_dilation_for_gli_but_not_met():
    # Two 4^3 cubes 4 voxels apart along z (A z 2..5, C z 10..13): 3 dilations join them (A
    # reaches z 8, C z 7), one does not (6 and 9).
    a, c = cube(2), cube(2, z=10)
    # GLI, prediction A only: one lesion of 128 voxels, Dice 2*64 / (64 + 128).
    # HD95: the surface of the lesion is A's 56 surface voxels (distance 0 to A's surface) and
    # C's: its faces z = 10 and 13 (16 voxels each) and rings z = 11, 12 (12 each), at z - 5 from
    # A's top face z = 5. Pooled with A's 56 distances (0) to the lesion: 168 distances, of which
    # the 16 eights are 9.5% > 5%, so the 95th percentile is 8.
    distances = [0] * 112 + [5] * 16 + [6] * 12 + [7] * 12 + [8] * 16
    assert np.percentile(distances, 95) == 8
    expect(scores(GLI, a, a | c), dice=128 / 192, hd95=8, tp=1, fp=0, fn=0)
    # MET: two lesions, A found and C missed.
    expect(scores(MET, a, a | c), dice=1 / 2, hd95=374 / 2, tp=1, fp=0, fn=1)
    # Many-to-one: predicted A and C are two components serving GLI's one merged lesion.
    expect(scores(GLI, a | c, a | c), dice=1, hd95=0, tp=1, fp=0, fn=0)
    expect(scores(MET, a | c, a | c), dice=1, hd95=0, tp=2, fp=0, fn=0)


def test_lesion_under_the_minimum_volume_is_left_out():
    small = cube(14, size=3)  # 27 voxels
    # GLI, 1 mm voxels: 27 mm3 <= 50, the missed small lesion counts nowhere.
    expect(scores(GLI, A, A | small), dice=1, hd95=0, tp=1, fp=0, fn=0)
    # ... and a component serving it is no false positive either.
    expect(scores(GLI, A | small, A | small), dice=1, hd95=0, tp=1, fp=0, fn=0)
    # Voxels of 1x1x2 mm: 54 mm3 > 50, now a missed lesion.
    expect(scores(GLI, A, A | small, spacing=(1.0, 1.0, 2.0)), dice=1 / 2, hd95=374 / 2,
           tp=1, fp=0, fn=1)
    # The minimum itself is left out: 5x5x2 = 50 voxels = 50 mm3.
    fifty = box(slice(13, 18), slice(13, 18), slice(13, 15))
    expect(scores(GLI, A, A | fifty), dice=1, hd95=0, tp=1, fp=0, fn=0)
    # MET's minimum is 2 mm3: two voxels are left out, three are a lesion.
    two, three = box(16, 16, slice(16, 18)), box(16, 16, slice(16, 19))
    expect(scores(MET, A, A | two), dice=1, hd95=0, tp=1, fp=0, fn=0)
    expect(scores(MET, A, A | three), dice=1 / 2, hd95=374 / 2, tp=1, fp=0, fn=1)


@pytest.mark.parametrize("convention", [GLI, MET])
def test_empty_regions(convention):
    empty = np.zeros(SHAPE, bool)
    expect(scores(convention, empty, empty), dice=1, hd95=0, tp=0, fp=0, fn=0)
    expect(scores(convention, A | B, empty), dice=0, hd95=374, tp=0, fp=2, fn=0)
    expect(scores(convention, empty, A), dice=0, hd95=374, tp=0, fp=0, fn=1)
    assert lesionwise.legacy_scores(empty, empty, MM, 374) == {
        "Legacy_Dice": 1.0, "Legacy_HD95": 0.0, "Sensitivity": 1.0, "Specificity": 1.0}
    invented = lesionwise.legacy_scores(A, empty, MM, 374)
    assert invented["Legacy_HD95"] == 374 and invented["Sensitivity"] == 0
    assert invented["Specificity"] == pytest.approx(1 - 64 / 8000)


@pytest.mark.parametrize("convention", [GLI, MET])
def test_one_voxel_shift(convention):
    # A 6^3 cube shifted one voxel along x, voxels 0.5 x 1 x 1 mm. Overlap 5*6*6 of 216 each.
    # The shifted surface is the surface shifted, so every surface voxel is within 0.5 mm of the
    # other surface, and no non-zero distance is shorter than 0.5 mm: distances are 0 or 0.5.
    # The 36 voxels of each face left uncovered (>= 72 of at most 2 * 152 distances, > 5%) are at
    # 0.5, so HD95 = 0.5. Volume 216 * 0.5 = 108 mm3 > both minima.
    truth = cube(4, size=6)
    shifted = np.roll(truth, 1, axis=0)
    result = scores(convention, shifted, truth, spacing=(0.5, 1.0, 1.0))
    expect(result, dice=2 * 180 / 432, hd95=0.5, tp=1, fp=0, fn=0)


def test_2024_parameters():
    met, gli = lesionwise.CONVENTIONS["brats2024-met"], lesionwise.CONVENTIONS["brats2024-gli"]
    assert met.hd95_penalty(SHAPE) == pytest.approx(math.sqrt(3 * 20**2))  # the image diagonal
    expect(scores(met, A, A | B), dice=1 / 2, hd95=math.sqrt(1200) / 2, tp=1, fp=0, fn=1)
    # GLI 2024: lesions up to 10 mm3 are left out in ET, up to 20 mm3 in WT and TC; penalty 337.
    fifteen = box(slice(14, 17), slice(14, 19), 16)  # 15 voxels
    expect(scores(gli, A, A | fifteen, region="ET"), dice=1 / 2, hd95=337 / 2, tp=1, fp=0, fn=1)
    expect(scores(gli, A, A | fifteen, region="WT"), dice=1, hd95=0, tp=1, fp=0, fn=0)


def test_case_scores_take_regions_from_the_edition_coding():
    labels = np.zeros(SHAPE, np.uint8)
    labels[A] = 3  # ET in the 2023 coding
    labels[B] = 2  # edema: WT only
    row = lesionwise.case_scores(region_masks(labels, "brats2023"), region_masks(labels, "brats2023"),
                                 MM, GLI)
    assert (row["Num_TP_ET"], row["Num_TP_TC"], row["Num_TP_WT"]) == (1, 1, 2)
    assert row["LesionWise_Dice_WT"] == 1 and row["Legacy_HD95_ET"] == 0
    missing = lesionwise.penalty_scores(region_masks(labels, "brats2023"), MM, GLI)
    assert missing["Num_FN_WT"] == 2 and missing["LesionWise_Dice_ET"] == 0
    assert missing["Legacy_HD95_TC"] == 374 and missing["Specificity_WT"] == 0


# ---- the rules transcribed on the full volume, against the cropped implementation --------------

def reference(prediction, truth, spacing, dilation, min_volume, penalty):
    """The challenge scripts' steps on the whole volume: merge, match, score (no cropping)."""
    structure = ndimage.generate_binary_structure(3, 2)
    truth_cc, _ = ndimage.label(truth, np.ones((3, 3, 3)))
    dilated_cc, count = ndimage.label(ndimage.binary_dilation(truth, structure, iterations=dilation),
                                      np.ones((3, 3, 3)))
    merged = np.zeros_like(truth_cc)
    for k in range(1, count + 1):
        merged[(dilated_cc == k) & (truth_cc > 0)] = k
    pred_cc, _ = ndimage.label(prediction, np.ones((3, 3, 3)))
    tp_ids, kept = [], []
    for k in range(1, merged.max() + 1):
        lesion = merged == k
        reach = ndimage.binary_dilation(lesion, structure, iterations=dilation)
        ids = np.setdiff1d(np.unique(pred_cc[reach]), [0])
        tp_ids += ids.tolist()
        if lesion.sum() * np.prod(spacing) <= min_volume:
            continue
        serving = np.isin(pred_cc, ids) & (pred_cc > 0)
        kept.append((medpy.dc(serving, lesion), medpy.hd95(serving, lesion, spacing)) if ids.size
                    else (0.0, penalty))
    fp = len(np.setdiff1d(np.unique(pred_cc), [0] + tp_ids))
    if not kept and not fp:
        return 1.0, 0.0
    return (sum(d for d, _ in kept) / (len(kept) + fp),
            (sum(h for _, h in kept) + penalty * fp) / (len(kept) + fp))


def lumps(rng, shape, count):
    """count irregular lumps of radius 1-5 voxels at random places (some at the volume's edge)."""
    grid = np.indices(shape).transpose(1, 2, 3, 0)
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), 2) * 4
    mask = np.zeros(shape, bool)
    for _ in range(count):
        centre, radius = rng.uniform(0, shape), rng.uniform(1, 5)
        mask |= np.linalg.norm(grid - centre, axis=-1) + noise < radius
    return mask


@pytest.mark.parametrize("convention", [GLI, MET])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cropped_scores_equal_the_full_volume_rules(convention, seed):
    rng = np.random.default_rng(seed)
    shape = (40, 36, 30)
    truth = lumps(rng, shape, 8)
    components, _ = ndimage.label(truth, np.ones((3, 3, 3)))
    shifted = np.roll(truth & (components > 2), 1, axis=0)  # two lumps missed, the rest moved
    prediction = (shifted & ~lumps(rng, shape, 3)) | lumps(rng, shape, 3)
    spacing = (1.0, 0.8, 1.5)
    dilation, minimum = convention.dilation["ET"], convention.min_volume["ET"]
    result = lesionwise.lesion_scores(prediction, truth, spacing, dilation, minimum, 374)
    assert result["Num_TP"] >= 2 and result["Num_FP"] >= 1
    dice, hd95 = reference(prediction, truth, spacing, dilation, minimum, 374)
    assert result["LesionWise_Dice"] == pytest.approx(dice, abs=1e-9)
    assert result["LesionWise_HD95"] == pytest.approx(hd95, abs=1e-6)


# ---- command line ------------------------------------------------------------------------------

def save(labels, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(labels.astype(np.uint8), np.eye(4)), str(path))


def test_cli_scores_a_brats_gli_folder_in_either_coding(tmp_path, capsys):
    truth_dir, prediction_dir = tmp_path / "gt", tmp_path / "pred"
    truth = np.zeros(SHAPE, np.uint8)
    truth[A], truth[B] = 3, 1  # ET lesion A, necrosis B
    ids = [f"BraTS-GLI-0000{i}-000" for i in range(3)]
    for cid in ids:
        save(truth, truth_dir / cid / f"{cid}-seg.nii.gz")
    save(truth, prediction_dir / f"{ids[0]}.nii.gz")  # 2023 coding, exact
    save(np.where(truth == 3, 4, truth), prediction_dir / f"{ids[1]}.nii.gz")  # 2020 coding, exact
    out = tmp_path / "gli.csv"
    assert evaluate.main([str(prediction_dir), str(truth_dir), "--convention", "brats2023-gli",
                          "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "BraTS 2023 adult glioma (GLI)" in printed and "lesion" in printed
    assert f"penalised: {ids[2]}: no prediction" in printed
    lines = out.read_text().splitlines()
    assert lines[0].startswith("# convention: brats2023-gli: BraTS 2023 adult glioma (GLI), lesion-wise")
    rows = list(csv.reader(lines[1:]))
    assert rows[0] == ["Label", *lesionwise.columns()]
    assert [r[0] for r in rows[1:]] == ids + ["Mean", "StdDev", "Median", "25quantile", "75quantile"]
    table = {r[0]: dict(zip(rows[0][1:], map(float, r[1:]))) for r in rows[1:]}
    for cid in ids[:2]:
        assert table[cid]["LesionWise_Dice_ET"] == 1 and table[cid]["Num_TP_WT"] == 2
    assert table[ids[2]]["LesionWise_Dice_TC"] == 0 and table[ids[2]]["Num_FN_TC"] == 2
    assert table[ids[2]]["LesionWise_HD95_ET"] == 374
    assert table["Mean"]["LesionWise_Dice_ET"] == pytest.approx(2 / 3)
    assert table["75quantile"]["LesionWise_Dice_ET"] == pytest.approx(1.0)


@pytest.mark.parametrize("labels, stated, message", [
    ({3: 5}, "auto", "holds labels {0, 1, 5}: label values {0, 1, 5} fit none of the codings"),
    ({}, "brats2020", "holds labels {0, 1, 3}: label values {3} are not in the brats2020 coding "
                      "{0, 1, 2, 4}"),
    ({1: 4}, "brats2023", "holds labels {0, 3, 4}: label values {4} are not in the brats2023 coding "
                          "{0, 1, 2, 3}"),
])
def test_labels_that_do_not_fit_stop_the_run_naming_the_file(tmp_path, capsys, labels, stated,
                                                             message):
    """Label 5 anywhere, label 3 stated as BraTS 2020, label 4 stated as BraTS 2023: one line, exit
    2, no CSV."""
    truth = np.zeros(SHAPE, np.uint8)
    truth[A], truth[B] = 3, 1
    cid = "BraTS-GLI-00000-000"
    save(truth, tmp_path / "gt" / cid / f"{cid}-seg.nii.gz")
    prediction = truth.copy()
    for old, new in labels.items():
        prediction[truth == old] = new
    save(prediction, tmp_path / "pred" / f"{cid}.nii.gz")
    out = tmp_path / "gli.csv"
    with pytest.raises(SystemExit) as stop:
        evaluate.main([str(tmp_path / "pred"), str(tmp_path / "gt"), "--convention", "brats2023-gli",
                       "--pred-coding", stated, "--out", str(out)])
    errors = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and errors[-1].startswith(
        f"error: {tmp_path / 'pred' / f'{cid}.nii.gz'}: {message}"), errors[-1]
    assert not out.exists() and not list(tmp_path.glob(".tmp-*"))


def test_codings_recognised_and_ambiguity_named():
    labels = np.zeros(SHAPE, np.uint8)
    labels[A], labels[B] = 4, 2  # ET = 4 of BraTS 2020
    for convention in ("brats2020", "brats2023-gli", "brats2023-met"):
        masks, note = rules.prediction_masks(labels, rules.Scoring(convention))
        assert note == "" and masks["ET"].sum() == 64 and masks["WT"].sum() == 128
    # Under BraTS 2024 GLI label 4 is the resection cavity: read so, the ET would be lost: refused.
    with pytest.raises(CodingError, match=r"no ET in the brats2024-post coding .* brats2020"):
        rules.prediction_masks(labels, rules.Scoring("brats2024-gli"))
    masks, note = rules.prediction_masks(labels, rules.Scoring("brats2024-gli", "brats2024-post"))
    assert masks["ET"].sum() == 0 and note == ""
    masks, note = rules.prediction_masks(labels, rules.Scoring("brats2024-gli", "brats2020"))
    assert masks["ET"].sum() == 64 and note == ""
    # BraTS 2024 PED codes ET as 1 and edema as 4.
    ped = np.where(labels == 4, 1, np.where(labels == 2, 4, 0)).astype(np.uint8)
    masks, _ = rules.prediction_masks(ped, rules.Scoring("brats2024-ped"))
    assert masks["ET"].sum() == 64 and masks["TC"].sum() == 64 and masks["WT"].sum() == 128
