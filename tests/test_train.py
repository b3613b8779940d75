"""train.py: the learning check, the run folder, the data pipeline, schedules, bad input before
training. A run's life (resume, repair, NaN, replicas, locks): tests/test_train_runs.py."""
import csv
import json
import os
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest

import train
from datasets.pipeline import epoch_order
from util import callbacks, resume


def history(folder: Path) -> list:
    with open(folder / "history.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_learning_check_flair_reaches_wt_dice(trained_run):
    """Small config, FLAIR, 13 training cases, 8 epochs: held-out WT Dice >= 0.7."""
    rows = history(trained_run / "flair")
    assert len(rows) == 8
    best_wt = max(float(r["val_dice_wt"]) for r in rows)
    assert best_wt >= 0.7, [r["val_dice_wt"] for r in rows]
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"]) - 0.3
    state = json.loads((trained_run / "flair" / "state.json").read_text())
    assert state["epochs_done"] == 8 and 1 <= state["best_epoch"] <= 8


def test_run_folder_holds_what_predict_needs(trained_run, small_cache):
    folder = trained_run / "flair"
    for name in ("best.weights.h5", "last.keras", "state.json", "history.csv", "progress.png",
                 "network.json"):
        assert (folder / name).is_file(), name
    assert any((folder / "tensorboard").rglob("*tfevents*"))
    split = json.loads((trained_run / "split.json").read_text())
    assert len(split["train"]) == 13 and len(split["validation"]) == 3
    assert not set(split["train"]) & set(split["validation"])
    assert (trained_run / "config.yaml").read_text().startswith("name: small")
    assert not list(trained_run.rglob(".*tmp*"))


def run_train(*args, config="configs/small.yaml") -> int:
    return train.main(["--config", str(config), "--verbose", "0", *map(str, args)])


def test_same_seed_same_split_and_order():
    ids = [f"case{i}" for i in range(20)]
    assert resume.split_cases(ids, 0.2, 3) == resume.split_cases(ids, 0.2, 3)
    assert resume.split_cases(ids, 0.2, 3) != resume.split_cases(ids, 0.2, 4)
    assert len(resume.split_cases(ids, 0.2, 3)["validation"]) == 4
    np.testing.assert_array_equal(epoch_order(13, 5, 0), epoch_order(13, 5, 0))
    assert not np.array_equal(epoch_order(13, 5, 0), epoch_order(13, 6, 0))


def epoch_batches(batches, epoch: int) -> list:
    batches.set_epoch(epoch)
    return [batches[i] for i in range(len(batches))]


def test_augmentation_flips_image_and_regions_together(small_cache):
    from datasets.cache import Cache

    cache = Cache(small_cache)
    plain = train.make_dataset(cache, cache.ids[:1], ("flair",), 1, 0, shuffle=True)
    augmented = train.make_dataset(cache, cache.ids[:1], ("flair",), 1, 0, True, True)
    changed = 0
    for epoch in range(4):
        [(x0, y0)], [(x1, y1)] = epoch_batches(plain, epoch), epoch_batches(augmented, epoch)
        x0, y0, x1, y1 = (np.asarray(v)[0] for v in (x0, y0, x1, y1))
        assert y1.sum() == y0.sum()  # flips keep the tumour, only move it
        changed += not np.array_equal(y0, y1)
        flipped = [a for a in range(3) if not np.array_equal(y0, np.flip(y0, a))]
        assert flipped
        assert not np.array_equal(x0, x1)  # intensity scale and shift
    assert changed >= 1


def test_batches_are_a_function_of_epoch_and_index_and_shards_make_up_the_global_batch(small_cache):
    """What resume and several processes rely on: batch (epoch, i) is the same whenever and
    however it is read; the slices two processes read make up the one-process global batch."""
    from datasets.cache import Cache

    cache = Cache(small_cache)
    whole = train.make_dataset(cache, cache.ids, ("flair",), 4, 3, True, True)
    halves = [train.make_dataset(cache, cache.ids, ("flair",), 4, 3, True, True, (k, 2))
              for k in range(2)]
    assert len(whole) == len(cache.ids) // 4
    later = epoch_batches(whole, 2)
    first = epoch_batches(whole, 1)
    assert epoch_batches(whole, 2)[1][0].tobytes() == later[1][0].tobytes()
    assert not np.array_equal(first[0][0], later[0][0])  # another epoch, another order
    for index, (x, y) in enumerate(later):
        parts = [epoch_batches(h, 2)[index] for h in halves]
        assert [p[0].shape[0] for p in parts] == [2, 2]
        np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), x)
        np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), y)
    validation = train.make_dataset(cache, cache.ids[:5], ("flair",), 2)
    assert [len(validation[i][0]) for i in range(len(validation))] == [2, 2, 1]  # none dropped


# ---- bad input: a clear error before any training starts ---------------------------------------

def expect_error(capsys, *args) -> str:
    with pytest.raises(SystemExit) as stop:
        train.main(["--verbose", "0", *map(str, args)])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "Traceback" not in err and len(err.splitlines()) == 1
    return err


def test_bad_input_is_refused_before_training(tmp_path, small_cache, capsys):
    small = ["--config", "configs/small.yaml"]
    (tmp_path / "empty").mkdir()
    assert "not a preprocess cache" in expect_error(capsys, *small, "--data", tmp_path / "empty",
                                                    "--out", tmp_path / "r")
    assert "differs from the config's 192x160x108" in expect_error(
        capsys, "--config", "configs/paper.yaml", "--data", small_cache, "--out", tmp_path / "r")
    (tmp_path / "unknown.yaml").write_text("model: {depth_factor: [2, 2, 4]}\n")
    assert "unknown key depth_factor" in expect_error(
        capsys, "--config", tmp_path / "unknown.yaml", "--data", small_cache, "--out", tmp_path / "r")
    (tmp_path / "factors.yaml").write_text(
        "data: {crop_size: [64, 64, 48], downsample: 3}\nmodel: {depth_factors: [3, 3, 4]}\n")
    assert "depth 48 needs three factors" in expect_error(
        capsys, "--config", tmp_path / "factors.yaml", "--data", small_cache, "--out", tmp_path / "r")
    cache = tmp_path / "cache"
    shutil.copytree(small_cache, cache)
    os.remove(next(cache.glob("*/t2.npy")))
    assert "has no t2.npy" in expect_error(capsys, *small, "--data", cache, "--modality", "t2",
                                           "--out", tmp_path / "r")
    (tmp_path / "other").mkdir()
    from util.config import load_config, save_config

    save_config(load_config("configs/paper.yaml"), tmp_path / "other" / "config.yaml")
    assert "holds a different run" in expect_error(capsys, *small, "--data", small_cache,
                                                   "--out", tmp_path / "other")
    assert not (tmp_path / "r").exists()


def test_cosine_schedule_warms_up_then_decays_to_nearly_zero():
    from util.config import TrainConfig

    settings = TrainConfig(epochs=10, learning_rate=1e-3, schedule="cosine", warmup_epochs=1)
    rates = [callbacks.cosine_rate(epoch, settings) for epoch in range(10)]
    assert rates[0] == pytest.approx(5e-4)
    assert max(rates) <= 1e-3 and rates[1] > 0.95e-3
    assert all(a > b for a, b in zip(rates[1:], rates[2:]))
    assert 0 < rates[-1] < 1e-5


def test_skip_dropout_decays_linearly_to_zero_and_the_callback_sets_it():
    from util.config import ModelConfig

    settings = ModelConfig(skip_dropout=0.5, skip_dropout_decay_epochs=4)
    rates = [callbacks.skip_dropout_rate(epoch, settings) for epoch in range(6)]
    assert rates == pytest.approx([0.5, 0.375, 0.25, 0.125, 0.0, 0.0])
    assert callbacks.skip_dropout_rate(9, ModelConfig(skip_dropout=0.5)) == 0.5  # no decay: constant
    floor = ModelConfig(skip_dropout=0.5, skip_dropout_decay_epochs=2, skip_dropout_final=0.2)
    assert [callbacks.skip_dropout_rate(e, floor) for e in range(4)] == pytest.approx([0.5, 0.35, 0.2, 0.2])

    from util.config import load_config

    config = load_config("configs/small.yaml")
    config.model.skip_dropout, config.model.skip_dropout_decay_epochs = 0.5, 2
    model = train.compiled_model(config, False, None, None, {})
    chain, _ = train.callbacks(Path("unused"), {}, config, False, False)
    (decay,) = [c for c in chain if type(c).__name__ == "SkipDropoutDecay"]
    decay.set_model(model)
    seen = []
    for epoch in range(3):
        decay.on_epoch_begin(epoch)
        seen.append(float(keras.ops.convert_to_numpy(model.get_layer("skip_dropout").current_rate)))
    assert seen == pytest.approx([0.5, 0.25, 0.0])


def test_networks_of_one_process_share_a_model_and_restart_from_its_initial_state(eager):
    """The second network reuses the compiled model (its train function made once; eager here,
    to skip a 20 s tracing) with the first's initial state: weights, optimizer and random
    generators."""
    from util.config import load_config

    config = load_config("configs/small.yaml")
    shared = {}
    first = train.compiled_model(config, False, None, None, shared)
    initial = [w.copy() for w in first.get_weights()]
    start = {v.path: keras.ops.convert_to_numpy(v).copy() for v in first.variables}
    x = np.random.default_rng(0).normal(size=(1, 64, 64, 48, 1)).astype(np.float32)
    y = (x > 1).astype(np.float32).repeat(3, axis=-1)
    first.fit(x, y, epochs=1, verbose=0)
    assert int(keras.ops.convert_to_numpy(first.optimizer.iterations)) == 1
    second = train.compiled_model(config, False, None, None, shared)
    assert second is first and second.train_function is not None  # made once
    assert int(keras.ops.convert_to_numpy(second.optimizer.iterations)) == 0
    assert all(np.array_equal(a, b) for a, b in zip(second.get_weights(), initial))
    # the dropout masks too: the random generators restart where the first network's did
    seeds = [v for v in second.variables if "seed_generator_state" in v.path]
    assert seeds and all(np.array_equal(keras.ops.convert_to_numpy(v), start[v.path])
                         for v in seeds)
    assert all(not np.any(keras.ops.convert_to_numpy(v)) for v in second.optimizer.variables
               if "momentum" in v.path or "velocity" in v.path)


def h5_contents(path: Path) -> dict:
    """Every dataset of an HDF5 file by name, as bytes."""
    import h5py

    contents = {}
    with h5py.File(path) as handle:
        handle.visititems(lambda name, item: contents.__setitem__(name, item[()].tobytes())
                          if isinstance(item, h5py.Dataset) else None)
    return contents


def test_checkpoints_are_the_files_keras_save_and_save_weights_write(tmp_path, monkeypatch):
    """Checkpoints writes last.keras through callbacks.save_model (model.save in small write()
    calls) and best.weights.h5 through copy_weights (copied out of last.keras): the same
    variables and optimizer slots as Keras's own model.save and save_weights; also when Keras,
    short of memory, writes the weights to a temporary file beside the checkpoint first."""
    from keras.src.saving import saving_lib

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="dense")])
    model.compile(optimizer=keras.optimizers.Nadam(), loss="mse")
    model.train_on_batch(np.ones((2, 4)), np.zeros((2, 3)))
    callbacks.save_model(model, tmp_path / "last.keras")
    callbacks.copy_weights(tmp_path / "last.keras", tmp_path / "best.weights.h5")
    model.save(tmp_path / "keras.keras")
    model.save_weights(tmp_path / "keras.weights.h5")

    ours, theirs = (keras.saving.load_model(tmp_path / f"{n}.keras") for n in ("last", "keras"))
    assert int(ours.optimizer.iterations) == 1
    for a, b in zip(ours.weights + ours.optimizer.variables,
                    theirs.weights + theirs.optimizer.variables):
        np.testing.assert_array_equal(a, b)
    best = h5_contents(tmp_path / "best.weights.h5")
    assert best == h5_contents(tmp_path / "keras.weights.h5")
    assert any(name.startswith("optimizer/") for name in best)  # the slots, for --repair

    monkeypatch.setattr(saving_lib, "is_memory_sufficient", lambda model: False)
    (tmp_path / "short").mkdir()
    callbacks.save_model(model, tmp_path / "short" / "last.keras")
    assert [p.name for p in (tmp_path / "short").iterdir()] == ["last.keras"]  # no temporary left
    callbacks.copy_weights(tmp_path / "short" / "last.keras", tmp_path / "short.weights.h5")
    assert h5_contents(tmp_path / "short.weights.h5") == best
