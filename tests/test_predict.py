"""predict.py: portal-ready files, exact geometry, skipping, bad cases, ensemble options, the label
coding and file names of every edition."""
import csv
import json
import shutil

import nibabel as nib
import numpy as np
import pytest

import evaluate
import predict
import synthetic
from brats.cases import find_cases, load_case
from brats.codings import CODINGS, recode
from util.config import load_config
from tests.conftest import SEED, cut, linked_copy, one_line_error
from datasets import volumes
from systems import inference, networks
from util import portal

# predict.py's steps skip TensorFlow's tracing (each run traces again): these tests read what it
# writes, not how fast it writes (trained_run is trained traced, whichever module builds it).
pytestmark = pytest.mark.usefixtures("eager")


@pytest.fixture(scope="module")
def validation_dir(tmp_path_factory):
    """Two validation cases in the BraTS 2021 layout (without labels); ground truth apart."""
    root = tmp_path_factory.mktemp("validation")
    list(synthetic.write_dataset(root / "val", 2, SEED + 2, "brats2021", validation=True))
    return root / "val"


def run_predict(run, input_dir, output, *extra) -> int:
    return predict.main(["--run", str(run), "--input", str(input_dir), "--output", str(output),
                         *map(str, extra)])


def test_prediction_files_keep_the_input_geometry(trained_run, validation_dir, tmp_path, capsys):
    out = tmp_path / "pred"
    assert run_predict(trained_run, validation_dir, out, "--save-probabilities") == 0
    cases = find_cases(validation_dir)
    assert sorted(p.name for p in out.glob("*.nii.gz")) == [f"{c.id}.nii.gz" for c in cases]
    for files in cases:
        source = nib.load(files.images["flair"])
        written = nib.load(out / f"{files.id}.nii.gz")
        labels = np.asanyarray(written.dataobj)
        assert labels.dtype == np.uint8 and labels.shape == (240, 240, 155)
        assert set(np.unique(labels)) <= {0, 1, 2, 4}
        np.testing.assert_array_equal(written.affine, source.affine)
        np.testing.assert_array_equal(written.header.get_qform(), source.header.get_qform())
        np.testing.assert_array_equal(written.header.get_sform(), source.header.get_sform())
        assert written.header.get_zooms() == source.header.get_zooms()
        assert int(written.header["qform_code"]) == int(source.header["qform_code"])
        saved = np.load(out / f"{files.id}_probabilities.npz")
        assert saved["probabilities"].shape == (64, 64, 48, 3)
        assert int(saved["downsample"]) == 3 and list(saved["original_shape"]) == [240, 240, 155]
        assert len(saved["crop_offsets"]) == 3  # what undoes the crop
    assert not list(out.glob(".*"))


def test_prediction_finds_the_tumour(trained_run, validation_dir, tmp_path):
    """The trained FLAIR network of the learning check segments the held-out whole tumour."""
    out = tmp_path / "pred"
    assert run_predict(trained_run, validation_dir, out) == 0
    import evaluate

    truth_dir = validation_dir.parent / "val_ground_truth"
    results = evaluate.evaluate(out, truth_dir, progress=False)
    wt = [r.row["Dice_WT"] for r in results]
    assert min(wt) > 0.6, wt


def test_existing_outputs_are_skipped_unless_overwrite(trained_run, validation_dir, tmp_path, capsys):
    out = tmp_path / "pred"
    assert run_predict(trained_run, validation_dir, out) == 0
    first = next(out.glob("*.nii.gz"))
    first.write_bytes(b"stale")
    capsys.readouterr()
    assert run_predict(trained_run, validation_dir, out) == 0
    assert "0 cases written" in capsys.readouterr().out and first.read_bytes() == b"stale"
    assert run_predict(trained_run, validation_dir, out, "--overwrite") == 0
    assert nib.load(first).shape == (240, 240, 155)


def test_a_bad_case_is_reported_and_the_others_written(trained_run, validation_dir, tmp_path, capsys):
    data = tmp_path / "val"
    shutil.copytree(validation_dir, data)
    bad = find_cases(data)[0]
    bad.images["t2"].write_bytes(b"truncated")
    out = tmp_path / "pred"
    assert run_predict(trained_run, data, out) == 1
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {bad.id}: cannot read")
    assert "Traceback" not in captured.err
    assert sorted(p.name for p in out.glob("*.nii.gz")) == [f"{find_cases(data)[1].id}.nii.gz"]


def test_missing_run_is_a_clear_error(tmp_path, validation_dir, capsys):
    with pytest.raises(SystemExit) as stop:
        run_predict(tmp_path / "nothing", validation_dir, tmp_path / "out")
    assert stop.value.code == 2 and "cannot read" in capsys.readouterr().err


def test_flip_tta_and_bfloat16_give_close_probabilities(trained_run, validation_dir):
    config = load_config(trained_run / "config.yaml")
    [spec] = networks.network_files(trained_run, ["flair"], None)
    case = load_case(find_cases(validation_dir)[0])
    from datasets.volumes import preprocess_case

    arrays, _ = preprocess_case(case, (64, 64, 48), "brain", 3)
    plain = predict.region_probabilities(networks.load_network(*spec, config, "float32"), arrays, False)
    tta = predict.region_probabilities(networks.load_network(*spec, config, "float32"), arrays, True)
    bf16 = predict.region_probabilities(networks.load_network(*spec, config, "mixed_bfloat16"),
                                        arrays, False)
    assert len(predict.flips(True)) == 8
    assert np.abs(tta - plain).mean() < 0.05 and not np.array_equal(tta, plain)
    assert np.abs(bf16 - plain).mean() < 0.02
    assert ((bf16 > 0.5) == (plain > 0.5)).mean() > 0.99


def test_full_grid_puts_probabilities_back_where_they_came_from():
    meta = {"downsample": 3, "original_shape": [240, 240, 155], "crop_offsets": [8, 4, 2]}
    cropped = np.zeros((64, 64, 48, 3), np.float32)
    cropped[10:20, 10:20, 10:20] = 1
    full = volumes.full_grid(cropped, meta)
    assert full.shape == (240, 240, 155, 3)
    inside = full[..., 0] > 0.5
    points = np.argwhere(inside)
    assert points.min(0).tolist() == [54, 42, 36] and points.max(0).tolist() == [83, 71, 65]


@pytest.mark.parametrize("factor, small, shape", [(3, (80, 80, 52, 3), (240, 240, 155)),
                                                  (2, (7, 5, 4), (13, 10, 7)),
                                                  (4, (9, 6, 5, 2), (33, 24, 20))])
def test_upsampling_is_scipys_linear_zoom(factor, small, shape):
    """volumes.upsample, axis by axis, is the function of ndimage.zoom (order 1, grid mode,
    edges repeated) cut to the case's grid, to float32 rounding; a 0/1 volume included."""
    from scipy import ndimage

    rng = np.random.default_rng(factor)
    for volume in (rng.random(small, dtype=np.float32), rng.random(small) > 0.5):
        zoom = (factor,) * 3 + (1,) * (len(small) - 3)
        expected = ndimage.zoom(volume.astype(np.float32), zoom, order=1, mode="nearest",
                                grid_mode=True)[:shape[0], :shape[1], :shape[2]]
        upsampled = volumes.upsample(volume, factor, shape)
        assert upsampled.shape == expected.shape and upsampled.dtype == np.float32
        np.testing.assert_allclose(upsampled, expected, rtol=0, atol=1e-6)


# ---- the label coding of each edition ----------------------------------------------------------

EDITIONS = {  # case id -> the coding its portal expects
    "Brats18_SYN_1_1": "brats2020", "BraTS20_Validation_001": "brats2020",
    "BraTS2021_10001": "brats2020", "BraTS-GLI-10001-000": "brats2023",
    "BraTS-PED-10001-000": "brats2024-ped", "BRATS_001": "msd",
}


@pytest.fixture(scope="module")
def every_layout(tmp_path_factory):
    """One validation case in each layout brats.py reads, plus a BraTS 2024 paediatric one: the
    same synthetic case each time (the first of validation_dir), ground truth apart under gt/."""
    root = tmp_path_factory.mktemp("layouts")
    for layout in ("brats2018", "brats2020", "brats2021", "brats2023", "msd"):
        list(synthetic.write_dataset(root / "val" / layout, 1, SEED + 2, layout, validation=True,
                                     gt_dir=root / "gt" / layout))
    gli, ped = "BraTS-GLI-10001-000", "BraTS-PED-10001-000"
    (root / "val" / "ped" / ped).mkdir(parents=True)
    for path in (root / "val" / "brats2023" / gli).iterdir():
        shutil.copy(path, root / "val" / "ped" / ped / path.name.replace(gli, ped))
    truth = nib.load(root / "gt" / "brats2023" / gli / f"{gli}-seg.nii.gz")
    coded = recode(np.asanyarray(truth.dataobj), "brats2023", "brats2024-ped")
    (root / "gt" / "ped" / ped).mkdir(parents=True)
    nib.save(nib.Nifti1Image(coded, truth.affine, truth.header), root / "gt" / "ped" / ped / f"{ped}-seg.nii.gz")
    return root


def once(monkeypatch, name: str, inputs) -> dict:
    """Replace systems.inference.<name> (what predict.py runs) by a memo of it, keyed by the bytes
    of inputs(*arguments)."""
    real, computed = getattr(inference, name), {}

    def memo(*arguments):
        key = b"|".join(np.ascontiguousarray(a).tobytes() for a in inputs(*arguments))
        if key not in computed:
            computed[key] = real(*arguments)
        return computed[key]

    monkeypatch.setattr(inference, name, memo)
    return computed


def test_each_edition_gets_its_coding_and_file_name(trained_run, every_layout, tmp_path, capsys,
                                                     monkeypatch):
    """Every layout: `<case id>.nii.gz` in the edition's coding, recorded in codings.json; all hold
    the same segmentation; evaluate.py --pred-coding auto reads each right (a round trip)."""
    # The six cases hold the same images: the network and the upsampling run once (~10 s a case).
    networks = once(monkeypatch, "region_probabilities",
                    lambda network, arrays, tta: [arrays[m] for m in network.modalities])
    grids = once(monkeypatch, "full_grid", lambda probabilities, meta: [
        probabilities, meta["crop_offsets"], meta["downsample"], meta["original_shape"]])
    out = tmp_path / "pred"
    assert run_predict(trained_run, every_layout / "val", out, "--ped-coding", "brats2024-ped") == 0
    assert len(networks) == len(grids) == 1
    printed = capsys.readouterr().out
    for coding in set(EDITIONS.values()):
        assert f"labels in the {coding} coding ({CODINGS[coding].described})" in printed
    assert sorted(p.name for p in out.glob("*.nii.gz")) == sorted(f"{c}.nii.gz" for c in EDITIONS)
    assert json.loads((out / "codings.json").read_text())["cases"] == EDITIONS
    decoded = {}
    for cid, coding in EDITIONS.items():
        labels = np.asanyarray(nib.load(out / f"{cid}.nii.gz").dataobj)
        assert set(np.unique(labels)) <= set(CODINGS[coding].labels)
        decoded[cid] = recode(labels, coding, "brats2020")
    assert set(np.unique(decoded["BraTS20_Validation_001"])) > {0, 2}
    for cid in EDITIONS:
        np.testing.assert_array_equal(decoded[cid], decoded["BraTS20_Validation_001"])
    written = np.asanyarray(nib.load(out / "BraTS-GLI-10001-000.nii.gz").dataobj)
    assert set(np.unique(written)) <= {0, 1, 2, 3}
    np.testing.assert_array_equal(written == 3, decoded["BraTS-GLI-10001-000"] == 4)

    results = tmp_path / "results.csv"
    assert evaluate.main([str(out), str(every_layout / "gt"), "--pred-coding", "auto",
                          "--ped-coding", "brats2024-ped", "--out", str(results)]) == 0
    printed = capsys.readouterr().out
    assert "penalised:" not in printed and "note:" not in printed
    rows = {r["Label"]: r for r in csv.DictReader(results.open())}
    scores = {cid: {k: v for k, v in rows[cid].items() if k != "Label"} for cid in EDITIONS}
    assert all(s == scores["BraTS20_Validation_001"] for s in scores.values()), scores
    assert float(scores["BRATS_001"]["Dice_WT"]) > 0.6


def test_ped_cases_stop_before_anything_is_written_unless_the_edition_is_stated(
        trained_run, every_layout, tmp_path, capsys):
    """BraTS 2023 PED (ET = 3) and 2024+ PED (ET = 1) share their ids: --coding auto asks for
    --ped-coding in one line, before the output folder exists."""
    out = tmp_path / "pred"
    with pytest.raises(SystemExit) as stop:
        run_predict(trained_run, every_layout / "val", out)
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert stop.value.code == 2 and error.startswith("error: BraTS-PED-10001-000: BraTS-PED cases")
    assert "--ped-coding brats2023 or brats2024-ped" in error and not out.exists()
    assert portal.case_codings(find_cases(every_layout / "val"), "auto", "brats2023")[
        "BraTS-PED-10001-000"] == "brats2023"


def test_coding_option_overrides_the_edition_and_reruns_keep_the_record(every_layout, tmp_path):
    """--coding brats2020 for every case; a rerun that skips a case keeps the coding recorded for
    it (a case written by an older predict.py keeps none: evaluate.py recognises its labels)."""
    cases = find_cases(every_layout / "val")
    assert portal.case_codings(cases, "auto", "brats2024-ped") == EDITIONS
    assert set(portal.case_codings(cases, "brats2020").values()) == {"brats2020"}
    portal.record_codings(tmp_path, {"BraTS-GLI-10001-000": "brats2020", "BRATS_001": "msd"}, set())
    portal.record_codings(tmp_path, portal.case_codings(cases, "auto", "brats2024-ped"),
                           kept={"BraTS-GLI-10001-000", "BraTS20_Validation_001"})
    recorded = json.loads((tmp_path / "codings.json").read_text())
    assert recorded["cases"] == {**{c: v for c, v in EDITIONS.items() if c != "BraTS20_Validation_001"},
                                 "BraTS-GLI-10001-000": "brats2020"}
    assert recorded["codings"]["msd"] == CODINGS["msd"].described
    (tmp_path / "codings.json").write_text("{")
    with pytest.raises(predict.ConfigError, match=r"codings.json: unreadable .*; remove it"):
        portal.record_codings(tmp_path, {}, set())


def test_damaged_run_files_are_one_line_with_what_to_do(trained_run, validation_dir, tmp_path,
                                                        capsys):
    """Each file predict.py reads, cut in half, emptied, missing or from another network."""
    import json

    copies = []

    def refused(edit, *extra) -> str:
        run = linked_copy(trained_run, tmp_path / f"run{len(copies)}")
        copies.append(run)
        edit(run)
        return one_line_error(capsys, predict.main, ["--run", run, "--input", validation_dir,
                                                     "--output", tmp_path / "out", *extra])

    assert "config.yaml: " in refused(lambda run: cut(run / "config.yaml"))
    assert "config.yaml: empty; restore it" in refused(
        lambda run: (run / "config.yaml").write_text(""))
    assert "network.json: damaged" in refused(lambda run: cut(run / "flair" / "network.json"))
    assert "network.json: names modalities t1 in the folder of flair" in refused(
        lambda run: (run / "flair" / "network.json").write_text('{"modalities": ["t1"]}'))
    error = refused(lambda run: (run / "flair" / "best.weights.h5").unlink())
    assert "best.weights.h5: missing" in error and "--models" in error and "last.keras" in error

    def untrained(run):
        (run / "t1").mkdir()
        (run / "t1" / "network.json").write_text('{"modalities": ["t1"]}')

    assert "t1: not trained" in refused(untrained)

    def weights(value):
        return lambda run: (run / "ensemble_weights.json").write_text(json.dumps(value))

    assert "ensemble_weights.json: damaged" in refused(weights({"weights": {"WT": {}}}),
                                                       "--ensemble", "fitted")
    other = {r: {"flair": 0.5, "t1ce": 0.5} for r in ("WT", "TC", "ET")}
    assert "fitted for flair, t1ce, this prediction uses flair" in refused(
        weights({"weights": other}), "--ensemble", "fitted")
    error = refused(lambda run: cut(run / "flair" / "best.weights.h5"))
    assert "best.weights.h5: damaged" in error and "--models" in error
    # as the line says, the network's last.keras still predicts
    run = copies[-1]  # its best.weights.h5 cut
    assert run_predict(run, validation_dir, tmp_path / "pred", "--models",
                       run / "flair" / "last.keras") == 0
    assert len(list((tmp_path / "pred").glob("*.nii.gz"))) == 2
