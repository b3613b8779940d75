"""preprocess.py: crop geometry, normalisation, regions, cache entries, skipping and bad input."""
import json

import nibabel as nib
import numpy as np
import pytest

import preprocess
import synthetic
from brats.cases import find_cases, load_case
from datasets.cache import Cache
from tests.conftest import SEED
from datasets import volumes


def test_centre_crop_offsets_of_the_paper():
    assert volumes.crop_offsets((240, 240, 155), (192, 160, 108)) == (24, 40, 23)


def test_brain_crop_centres_on_the_brain_and_stays_inside():
    brain = np.zeros((240, 240, 155), bool)
    brain[10:150, 30:200, 0:140] = True
    offsets = volumes.crop_offsets(brain.shape, (192, 160, 108), "brain", brain)
    assert offsets == (0, 35, 16)


def test_block_mean_is_numpys_mean_over_each_block():
    """Bit for bit for an int16 image and 0/1 regions (exact sums), to float32 rounding for
    floats; the grid padded with zeros up to a multiple of the factor."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 32767, (241, 239, 155), dtype=np.int16)
    regions = rng.random((50, 47, 31, 3)) > 0.7
    floats = rng.random((20, 19, 17), dtype=np.float32)
    for volume, factor, exact in ((image, 3, True), (regions, 2, True), (floats, 3, False)):
        pad = [(0, -n % factor) for n in volume.shape[:3]] + [(0, 0)] * (volume.ndim - 3)
        padded = np.pad(volume.astype(np.float32), pad)
        blocks = padded.reshape(padded.shape[0] // factor, factor, padded.shape[1] // factor,
                                factor, padded.shape[2] // factor, factor, *padded.shape[3:])
        expected = blocks.mean(axis=(1, 3, 5), dtype=np.float32)
        means = volumes.block_mean(volume, factor)
        assert means.dtype == np.float32 and means.shape == expected.shape
        if exact:
            np.testing.assert_array_equal(means, expected)
        else:
            np.testing.assert_allclose(means, expected, rtol=1e-6)


def test_crop_uncrop_round_trip_with_padding():
    volume = np.arange(10 * 8 * 6, dtype=np.float32).reshape(10, 8, 6)
    for size in ((6, 4, 4), (12, 8, 9)):
        offsets = volumes.crop_offsets(volume.shape, size)
        cropped = volumes.crop(volume, offsets, size)
        assert cropped.shape == size
        back = volumes.uncrop(cropped, offsets, volume.shape)
        inside = tuple(slice(max(o, 0), min(o + s, n)) for o, s, n in zip(offsets, size, volume.shape))
        np.testing.assert_array_equal(back[inside], volume[inside])
        assert back.sum() == volume[inside].sum()


def test_regions_are_nested_wt_tc_et():
    seg = np.array([0, 1, 2, 4], np.uint8).reshape(4, 1, 1)
    regions = volumes.label_regions(seg)[:, 0, 0]
    np.testing.assert_array_equal(regions, [[0, 0, 0], [1, 1, 0], [1, 0, 0], [1, 1, 1]])


def test_cache_entry_contents(cache_dir, brats2020_dir):
    cache = Cache(cache_dir)
    assert cache.ids == ["BraTS20_Training_001", "BraTS20_Training_002", "BraTS20_Training_003"]
    case = load_case(find_cases(brats2020_dir)[0])
    meta = cache.meta(cache.ids[0])
    assert meta["crop_offsets"] == [24, 40, 23] and meta["original_shape"] == [240, 240, 155]
    flair = np.load(cache_dir / cache.ids[0] / "flair.npy", mmap_mode="r")
    assert flair.dtype == np.float32 and flair.shape == (192, 160, 108)
    raw = volumes.crop(case.images["flair"], (24, 40, 23), (192, 160, 108))
    brain = raw != 0
    assert (flair[~brain] == 0).all()
    whole_brain = case.images["flair"][case.images["flair"] != 0]
    expected = (raw[brain] - whole_brain.mean()) / whole_brain.std()
    np.testing.assert_allclose(flair[brain], expected, rtol=1e-4, atol=1e-4)
    regions = cache.regions(cache.ids[0])
    seg_crop = volumes.crop(case.seg, (24, 40, 23), (192, 160, 108))
    np.testing.assert_array_equal(regions[..., 0], seg_crop > 0)
    np.testing.assert_array_equal(regions[..., 2], seg_crop == 4)
    assert meta["wt_voxels"] == int((case.seg > 0).sum())
    assert meta["wt_voxels_lost"] == meta["wt_voxels"] - int(regions[..., 0].sum())
    assert cache.image(cache.ids[0], ("flair", "t2")).shape == (192, 160, 108, 2)
    assert not list(cache_dir.glob(".*tmp*"))


def test_normalised_brain_has_zero_mean_unit_std():
    image = np.zeros((20, 20, 20), np.float32)
    image[5:15, 5:15, 5:15] = np.random.default_rng(0).uniform(100, 900, (10, 10, 10))
    z = volumes.normalise(image, *volumes.brain_stats(image, "x"))
    assert abs(z[image != 0].mean()) < 1e-5 and abs(z[image != 0].std() - 1) < 1e-5
    assert (z[image == 0] == 0).all()


def test_second_run_skips_cached_cases(cache_dir, brats2020_dir, capsys):
    before = (cache_dir / "BraTS20_Training_001" / "meta.json").stat().st_mtime_ns
    assert preprocess.main([str(brats2020_dir), str(cache_dir)]) == 0
    out = capsys.readouterr().out
    assert "0 cases written, 3 skipped" in out
    assert (cache_dir / "BraTS20_Training_001" / "meta.json").stat().st_mtime_ns == before


def test_a_cache_refuses_a_different_crop(cache_dir, brats2020_dir):
    with pytest.raises(SystemExit, match="was made with crop"):
        preprocess.main([str(brats2020_dir), str(cache_dir), "--crop-size", "64x64x48"])


def test_report_gives_wt_share_outside_the_crop(tmp_path, brats2020_dir, capsys):
    assert preprocess.main([str(brats2020_dir), str(tmp_path / "c"), "--crop-size", "96x96x48",
                            "--crop", "brain", "--jobs", "2"]) == 0
    out = capsys.readouterr().out
    assert "3 cases written" in out
    metas = [json.loads(p.read_text()) for p in (tmp_path / "c").glob("*/meta.json")]
    shares = [m["wt_voxels_lost"] / m["wt_voxels"] for m in metas]
    assert f"mean {100 * np.mean(shares):.2f}%" in out and max(shares) > 0
    assert all(m["crop_mode"] == "brain" for m in metas)
    assert not list((tmp_path / "c").glob(".tmp-*"))  # the workers ended after their last case


def test_a_stopped_pool_leaves_no_half_written_case_of_its_killed_workers(tmp_path):
    """After a full disk, Pool.terminate kills the workers mid-case: their temporary folders go,
    a running writer's stays."""
    import os
    import subprocess
    import sys

    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    for pid, case in ((ended.pid, "BraTS20_Training_001"), (os.getpid(), "BraTS20_Training_002")):
        (tmp_path / f".tmp-{pid}-{case}").mkdir()
        (tmp_path / f".tmp-{pid}-{case}" / "flair.npy").write_bytes(b"half")
    preprocess.removed_leftovers(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [f".tmp-{os.getpid()}-BraTS20_Training_002"]


# ---- bad input: one clear line, the rest processed, non-zero exit, nothing half-written --------

def _save_like(reference, data, path):
    img = nib.Nifti1Image(data, reference.affine, reference.header)
    nib.save(img, path)


def break_missing_modality(folder, cid):
    (folder / f"{cid}_t1ce.nii.gz").unlink()
    return "missing modality t1ce"


def break_truncated_file(folder, cid):
    path = folder / f"{cid}_t2.nii.gz"
    path.write_bytes(path.read_bytes()[:50_000])
    return f"cannot read {cid}_t2.nii.gz"


def break_not_nifti(folder, cid):
    (folder / f"{cid}_t1.nii.gz").write_bytes(b"this is not an image")
    return f"cannot read {cid}_t1.nii.gz"


def break_shape(folder, cid):
    ref = nib.load(folder / f"{cid}_t1.nii.gz")
    _save_like(ref, np.asanyarray(ref.dataobj)[:, :, :150], folder / f"{cid}_t1.nii.gz")
    return "has shape (240, 240, 150)"


def break_affine(folder, cid):
    ref = nib.load(folder / f"{cid}_t2.nii.gz")
    affine = ref.affine.copy()
    affine[0, 3] += 5
    nib.save(nib.Nifti1Image(np.asanyarray(ref.dataobj), affine), folder / f"{cid}_t2.nii.gz")
    return "different affine"


def break_nan(folder, cid):
    ref = nib.load(folder / f"{cid}_flair.nii.gz")
    data = np.asanyarray(ref.dataobj).astype(np.float32)
    data[100, 100, 70] = np.nan
    nib.save(nib.Nifti1Image(data, ref.affine), folder / f"{cid}_flair.nii.gz")
    return "flair has 1 NaN/inf voxels"


def break_labels(folder, cid):
    ref = nib.load(folder / f"{cid}_seg.nii.gz")
    data = np.asanyarray(ref.dataobj).copy()
    data[data == 4] = 3
    nib.save(nib.Nifti1Image(data, ref.affine), folder / f"{cid}_seg.nii.gz")
    return "label values 3 are not in the brats2020 set"


def break_all_zero(folder, cid):
    ref = nib.load(folder / f"{cid}_t1.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros(ref.shape, np.int16), ref.affine), folder / f"{cid}_t1.nii.gz")
    return "t1 image is all zero"


BREAKERS = [break_missing_modality, break_truncated_file, break_not_nifti, break_shape,
            break_affine, break_nan, break_labels, break_all_zero]


@pytest.fixture(scope="module")
def two_good_cases(tmp_path_factory):
    out = tmp_path_factory.mktemp("good")
    list(synthetic.write_dataset(out, 2, SEED, "brats2020"))
    return out


@pytest.mark.parametrize("breaker", BREAKERS, ids=lambda b: b.__name__[6:])
def test_bad_case_is_reported_in_one_line_and_others_processed(tmp_path, two_good_cases, breaker,
                                                               capsys):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(two_good_cases, data)
    bad = "BraTS20_Training_002"
    expected = breaker(data / bad, bad)
    assert preprocess.main([str(data), str(tmp_path / "cache"), "--crop-size", "64x64x48"]) == 1
    captured = capsys.readouterr()
    error_lines = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, captured.err
    assert error_lines[0].startswith(f"error: {bad}: ") and expected in error_lines[0]
    assert "Traceback" not in captured.out + captured.err
    assert "1 cases written, 0 skipped (already in the cache), 1 failed" in captured.out
    assert (tmp_path / "cache" / "BraTS20_Training_001" / "meta.json").is_file()
    assert not (tmp_path / "cache" / bad).exists()
    assert not list((tmp_path / "cache").glob(".*"))


def test_empty_input_folder_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        preprocess.main([str(tmp_path), str(tmp_path / "cache")])
    assert exit_info.value.code == 2
    assert "no BraTS cases found" in capsys.readouterr().err
