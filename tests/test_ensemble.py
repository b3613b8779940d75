"""ensemble.py: per-region weights fitted on held-out cases, and predict.py --ensemble fitted."""
import json
import shutil
from math import comb

import nibabel as nib
import numpy as np
import pytest

import ensemble
import predict
import synthetic
from util.config import ConfigError
from tests.conftest import SEED

pytestmark = pytest.mark.usefixtures("eager")  # predict.py's files are under test, not its speed


def blob(shape=(8, 8, 8), low=2, high=6) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[low:high, low:high, low:high] = True
    return mask


def regions_of(wt, tc, et) -> np.ndarray:
    return np.stack([wt, tc, et], axis=-1).astype(np.uint8)


def test_the_grid_covers_the_simplex():
    grid = ensemble.simplex_grid(4, 0.1)
    assert len(grid) == comb(10 + 3, 3)  # 286 ways to share 10 tenths among 4 networks
    np.testing.assert_allclose(grid.sum(axis=1), 1)
    assert grid.min() == 0 and grid.max() == 1


def test_a_region_one_network_sees_is_given_to_it():
    """A sees ET at 0.9, B sees none: the plain mean (0.45) misses ET; the smallest weight of A
    that passes 0.5 is 0.6 (0.6 x 0.9 = 0.54). Both see WT alike: its weights stay equal."""
    tumour, core = blob(), blob(low=3, high=5)
    truth = regions_of(tumour, core, core)
    seen = np.stack([tumour * 0.9, core * 0.9, core * 0.9], axis=-1)
    blind = np.stack([tumour * 0.9, core * 0.9, np.zeros(tumour.shape)], axis=-1)
    probabilities = {"a": [seen], "b": [blind]}
    weights = ensemble.fit_weights(probabilities, [truth], step=0.1)
    assert weights["ET"] == {"a": 0.6, "b": 0.4}
    assert weights["WT"] == {"a": 0.5, "b": 0.5}
    plain = ensemble.mean_dice(probabilities, [truth], None)
    fitted = ensemble.mean_dice(probabilities, [truth], weights)
    assert plain[2] == 0 and fitted[2] == 1
    np.testing.assert_allclose(plain[:2], fitted[:2])


def test_combine_is_the_plain_mean_by_default_and_weighted_per_region():
    rng = np.random.default_rng(0)
    a, b = rng.random((4, 4, 4, 3)), rng.random((4, 4, 4, 3))
    np.testing.assert_allclose(ensemble.combine({"a": a, "b": b}), (a + b) / 2)
    weights = {"WT": {"a": 1, "b": 0}, "TC": {"a": 0, "b": 1}, "ET": {"a": 0.25, "b": 0.75}}
    merged = ensemble.combine({"a": a, "b": b}, weights)
    np.testing.assert_allclose(merged[..., 0], a[..., 0], rtol=1e-6)
    np.testing.assert_allclose(merged[..., 1], b[..., 1], rtol=1e-6)
    np.testing.assert_allclose(merged[..., 2], 0.25 * a[..., 2] + 0.75 * b[..., 2], rtol=1e-6)
    with pytest.raises(ConfigError, match="no weight for c"):
        ensemble.combine({"a": a, "c": b}, weights)


def test_fitted_weights_drive_predict(trained_run, small_cache, tmp_path, capsys):
    """Fit on the learning check's run; predict then applies the run's weights file: with the
    ET weight set to 0 no enhancing tumour is labelled, and nothing else is added.
    Without the file, predict names it in one line."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    assert ensemble.main(["--run", str(run), "--data", str(small_cache)]) == 0
    record = json.loads((run / ensemble.WEIGHTS_FILE).read_text())
    assert record["weights"] == {r: {"flair": 1.0} for r in ("WT", "TC", "ET")}  # one network
    assert "| WT | 1.0 |" in capsys.readouterr().out

    cases = tmp_path / "cases"
    list(synthetic.write_dataset(cases, 1, SEED + 5, "brats2021", validation=True))
    record["weights"]["ET"] = {"flair": 0.0}
    (run / ensemble.WEIGHTS_FILE).write_text(json.dumps(record))
    arguments = ["--run", str(run), "--input", str(cases)]
    assert predict.main([*arguments, "--output", str(tmp_path / "plain")]) == 0
    assert predict.main([*arguments, "--output", str(tmp_path / "fitted"), "--ensemble", "fitted"]) == 0
    (name,) = [p.name for p in (tmp_path / "plain").glob("*.nii.gz")]
    plain = np.asanyarray(nib.load(tmp_path / "plain" / name).dataobj)
    fitted = np.asanyarray(nib.load(tmp_path / "fitted" / name).dataobj)
    assert not (fitted == 4).any()
    assert (plain > 0).sum() > 0 and not ((fitted > 0) & (plain == 0)).any()  # ET gone, no new tumour
    np.testing.assert_array_equal(fitted[plain == 2], 2)  # edema-only voxels as with plain weights

    (run / ensemble.WEIGHTS_FILE).unlink()
    with pytest.raises(SystemExit) as stop:
        predict.main([*arguments, "--output", str(tmp_path / "again"), "--ensemble", "fitted"])
    assert stop.value.code == 2
    assert "ensemble_weights.json: no fitted ensemble weights" in capsys.readouterr().err


def test_damaged_run_files_are_one_line(trained_run, tmp_path, capsys):
    from tests.conftest import cut, linked_copy, one_line_error

    def refused(edit) -> str:
        run = linked_copy(trained_run, tmp_path / f"run{len(list(tmp_path.iterdir()))}")
        edit(run)
        error = one_line_error(capsys, ensemble.main, ["--run", run])
        assert not (run / ensemble.WEIGHTS_FILE).exists()
        return error

    assert "split.json: empty" in refused(lambda run: (run / "split.json").write_text(""))
    assert "config.yaml: incomplete (no train section" in refused(
        lambda run: (run / "config.yaml").write_text(
            (run / "config.yaml").read_text().split("\ntrain:")[0] + "\n"))
    assert "best.weights.h5: damaged" in refused(
        lambda run: cut(run / "flair" / "best.weights.h5"))
