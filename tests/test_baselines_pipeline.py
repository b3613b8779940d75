"""The baselines through train.py and predict.py: pooled example batches that a resume replays,
a short training of each family that lowers its loss and resumes at the right epoch, portal-ready
predictions that evaluate.py scores, Ben naceur's post-processing switch, and one-line refusals."""
import csv
import json
import shutil

import keras
import nibabel as nib
import numpy as np
import pytest
import yaml

import evaluate
from systems import families
import predict
import train
from systems import bennaceur2020
from brats.cases import MODALITIES, find_cases
from util.config import load_config, save_config
from datasets.examples import PooledExamples, fitted
from brats import codings

# Few examples, so that an epoch is seconds on 2 cores (13 training cases of the small cache).
FEW = {"kermi2018": {"patches_per_slice": 0.25},  # 12 patches a case: 39 steps of 4
       "unet3d_patches": {"patches_per_case": 4, "learning_rate": 3e-3},  # 5 steps of 8
       "bennaceur2020": {"stride": 24}}  # 4 windows a brain slice: about 250 steps of 8


def few_examples(tmp_path, name: str):
    """configs/<name>_small.yaml with FEW examples, written beside the run."""
    values = yaml.safe_load(open(f"configs/{name}_small.yaml"))
    values[name].update(FEW[name])
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def run_train(config, data, out, *extra) -> int:
    return train.main(["--config", str(config), "--data", str(data), "--out", str(out),
                       "--verbose", "0", *map(str, extra)])


def history(folder) -> list:
    with open(folder / "history.csv", newline="") as handle:
        return list(csv.DictReader(handle))


# ---- the pooled example stream ----------------------------------------------------------------

def numbered_draw(counts: list):
    """A fake family: case i gives counts[i] examples numbered 1000 i + k, one pixel each."""
    def draw(index, rng):
        values = 1000 * index + np.arange(counts[index], dtype=np.float32)
        return values[:, None], (values[:, None] % 2).astype(np.uint8)
    return draw


def epoch_values(batches, epoch: int) -> np.ndarray:
    batches.set_epoch(epoch)
    return np.concatenate([batches[i][0][:, 0] for i in range(len(batches))])


def test_pooled_stream_shuffles_across_cases_and_replays_an_epoch():
    counts = [5, 7, 3, 6, 4]
    make = lambda: PooledExamples(numbered_draw(counts), counts, batch=4, seed=3, shuffle=True,
                                  pool=2, workers=1)
    batches = make()
    assert len(batches) == sum(counts) // 4
    first = epoch_values(batches, 0)
    assert len(set(first)) == len(first) == 24  # each example once, the last 1 dropped
    cases = first // 1000
    assert any(len(set(cases[i:i + 4])) > 1 for i in range(0, 24, 4))  # batches mix cases
    np.testing.assert_array_equal(epoch_values(make(), 0), first)  # a resumed run: the same
    assert not np.array_equal(epoch_values(batches, 1), first)
    x, y = batches[2]
    assert x.dtype == y.dtype == np.float32 and x.shape == y.shape == (4, 1)
    np.testing.assert_array_equal(y, x % 2)  # each example keeps its own target


def test_validation_stream_is_fixed_and_in_case_order():
    counts = [5, 7, 3]
    batches = PooledExamples(numbered_draw(counts), counts, batch=4, pool=2, workers=1)
    values = epoch_values(batches, 0)
    np.testing.assert_array_equal(values, np.concatenate(
        [1000 * i + np.arange(c) for i, c in enumerate(counts)])[:12])
    np.testing.assert_array_equal(epoch_values(batches, 5), values)


def test_a_draw_of_another_size_is_cut_or_topped_up_to_its_census_count():
    x = np.arange(3, dtype=np.float32)[:, None]
    longer, _ = fitted(x, x, 2, np.random.default_rng(0))
    np.testing.assert_array_equal(longer, x[:2])
    topped, _ = fitted(x, x, 7, np.random.default_rng(0))
    assert len(topped) == 7 and set(topped[:, 0]) <= {0, 1, 2}
    np.testing.assert_array_equal(topped[:3], x)


def test_shards_of_one_global_batch_make_it_whole():
    counts = [5, 7, 3, 6]
    halves = [PooledExamples(numbered_draw(counts), counts, batch=4, seed=1, shuffle=True,
                             pool=3, shard=(k, 2), workers=1) for k in (0, 1)]
    whole = PooledExamples(numbered_draw(counts), counts, batch=4, seed=1, shuffle=True, pool=3,
                           workers=1)
    for index in range(len(whole)):
        joined = np.concatenate([half[index][0] for half in halves])
        np.testing.assert_array_equal(joined, whole[index][0])


# ---- each family through train.py and predict.py ----------------------------------------------

@pytest.fixture(scope="module")
def one_case(small_cache, tmp_path_factory):
    """One labelled raw case of the small cache, alone in a folder (predict.py's input)."""
    folder = tmp_path_factory.mktemp("input")
    case = find_cases(small_cache.parent / "raw")[0]
    source = case.images["flair"].parent
    shutil.copytree(source, folder / source.name)
    return folder


@pytest.mark.parametrize("name", list(FEW))
def test_family_trains_resumes_and_predicts_portal_ready_files(tmp_path, small_cache, one_case,
                                                               name):
    config, out = few_examples(tmp_path, name), tmp_path / "run"
    assert run_train(config, small_cache, out, "--epochs", "1") == 0
    folder = out / name
    for file in ("network.json", "best.weights.h5", "last.keras", "state.json", "history.csv"):
        assert (folder / file).is_file(), file
    assert json.loads((folder / "network.json").read_text())["modalities"] == [
        "flair", "t1", "t1ce", "t2"]
    assert (out / "config.yaml").read_text().startswith(f"name: {name}_small")
    steps = int(keras.ops.convert_to_numpy(
        keras.saving.load_model(folder / "last.keras").optimizer.iterations))

    assert run_train(config, small_cache, out, "--epochs", "2", "--resume") == 0
    rows = history(folder)
    assert [r["epoch"] for r in rows] == ["0", "1"]
    assert float(rows[1]["loss"]) < float(rows[0]["loss"]), [r["loss"] for r in rows]
    assert {"val_dice_wt", "val_dice_tc", "val_dice_et", "val_loss"} <= set(rows[0])
    assert json.loads((folder / "state.json").read_text())["epochs_done"] == 2
    resumed = keras.saving.load_model(folder / "last.keras")
    assert int(keras.ops.convert_to_numpy(resumed.optimizer.iterations)) == 2 * steps

    predictions = tmp_path / "pred"
    assert predict.main(["--run", str(out), "--input", str(one_case),
                         "--output", str(predictions)]) == 0
    case_id = find_cases(one_case)[0].id
    written = nib.load(predictions / f"{case_id}.nii.gz")
    source = nib.load(next((one_case / case_id).glob("*_flair.nii.gz")))
    assert written.shape == (240, 240, 155) and written.get_data_dtype() == np.uint8
    np.testing.assert_allclose(written.affine, source.affine)
    assert set(np.unique(np.asarray(written.dataobj))) <= {0, 1, 2, 4}
    assert evaluate.main([str(predictions), str(one_case), "--out", str(tmp_path / "x.csv")]) == 0


def untrained_run(folder, name: str):
    """A run folder holding a freshly initialised network of configs/<name>_small.yaml."""
    config = load_config(f"configs/{name}_small.yaml")
    keras.utils.set_random_seed(4)
    network = families.family_of(config).build(config)
    (folder / name).mkdir(parents=True)
    save_config(config, folder / "config.yaml")
    (folder / name / "network.json").write_text(json.dumps({"modalities": list(MODALITIES)}))
    network.save_weights(folder / name / "best.weights.h5")
    return config


def test_bennaceur_postprocessing_switch(tmp_path, one_case, monkeypatch):
    """--postprocess none writes the network's labels; pp1, pp2 and both apply the published
    post-processings to exactly those labels (here: hand-made regions of a 144-pixel and a
    36-pixel tumour in place of the network's)."""
    untrained_run(tmp_path / "run", "bennaceur2020")
    regions = np.zeros((240, 240, 155, 3), np.float32)
    regions[20:32, 20:32, 70, 0] = 1  # 144 pixels of edema: kept by post-processing 1
    regions[24:28, 24:28, 70] = 1  # inside it, enhancing tumour
    regions[100:106, 100:106, 70, :2] = 1  # 36 pixels of necrosis: removed
    monkeypatch.setattr(bennaceur2020, "predict_case", lambda *args: regions)
    case_id = find_cases(one_case)[0].id
    labels = {}
    for choice in families.POSTPROCESSING:
        assert predict.main(["--run", str(tmp_path / "run"), "--input", str(one_case),
                             "--output", str(tmp_path / choice), "--postprocess", choice]) == 0
        labels[choice] = np.asarray(nib.load(tmp_path / choice / f"{case_id}.nii.gz").dataobj)
    raw = codings.regions_to_labels(regions)
    np.testing.assert_array_equal(labels["none"], raw)
    first = bennaceur2020.remove_small_components(raw, 110)
    assert first[100:106, 100:106].max() == 0 and first[20:32, 20:32, 70].min() == 2
    np.testing.assert_array_equal(labels["pp1"], first)
    np.testing.assert_array_equal(labels["pp2"], bennaceur2020.open_slices(raw))
    np.testing.assert_array_equal(labels["both"], bennaceur2020.open_slices(first))
    assert labels["both"][20, 20, 70] == 0 and labels["pp2"][100, 100, 70] == 0  # corners opened


def test_postprocess_switch_is_refused_where_it_cannot_apply(tmp_path, one_case, capsys):
    untrained_run(tmp_path / "run", "kermi2018")
    for extra, message in ((["--postprocess", "pp1"], "applies to bennaceur2020 runs only"),
                           (["--tta"], "--tta applies to EEN runs only")):
        with pytest.raises(SystemExit) as stop:
            predict.main(["--run", str(tmp_path / "run"), "--input", str(one_case),
                          "--output", str(tmp_path / "pred"), *extra])
        assert stop.value.code == 2
        error = capsys.readouterr().err.strip()
        assert error.count("\n") == 0 and message in error, error
    assert not (tmp_path / "pred").exists()


# ---- refusals ---------------------------------------------------------------------------------

@pytest.mark.parametrize("extra, message", [
    (["--modality", "t1"], "--modality applies to the EEN only; kermi2018"),
    (["--multimodal"], "--multimodal applies to the EEN only; kermi2018"),
    (["--augment"], "--augment applies to the EEN only; kermi2018"),
])
def test_een_options_with_a_baseline_are_one_line_errors(tmp_path, small_cache, capsys, extra,
                                                         message):
    with pytest.raises(SystemExit) as stop:
        run_train("configs/kermi2018_small.yaml", small_cache, tmp_path / "run", *extra)
    assert stop.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and error.count("\n") == 0 and message in error
    assert not (tmp_path / "run").exists()


def test_unknown_family_and_a_foreign_cache_are_one_line_errors(tmp_path, small_cache, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"model": {"family": "unet2d"}}))
    for config, message in ((bad, "model.family: unknown family 'unet2d'"),
                            ("configs/kermi2018.yaml", "differs from the config's 152x192x146")):
        with pytest.raises(SystemExit) as stop:
            run_train(config, small_cache, tmp_path / "run")
        assert stop.value.code == 2
        error = capsys.readouterr().err.strip()
        assert error.startswith("error: ") and error.count("\n") == 0 and message in error, error
