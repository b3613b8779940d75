"""train.py: the learning check, resume, NaN stop, multi-replica, bad input before training."""
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import keras
import nibabel as nib
import numpy as np
import pytest

import train
from datasets.pipeline import epoch_order
from util import callbacks, resume
from tests.conftest import cut, linked_copy

ROOT = Path(__file__).resolve().parents[1]


def history(folder: Path) -> list:
    with open(folder / "history.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_learning_check_flair_reaches_wt_dice(trained_run):
    """Small config, FLAIR, 13 training cases, 10 epochs: held-out WT Dice >= 0.7."""
    rows = history(trained_run / "flair")
    assert len(rows) == 10
    best_wt = max(float(r["val_dice_wt"]) for r in rows)
    assert best_wt >= 0.7, [r["val_dice_wt"] for r in rows]
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"]) - 0.3
    state = json.loads((trained_run / "flair" / "state.json").read_text())
    assert state["epochs_done"] == 10 and 1 <= state["best_epoch"] <= 10


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


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory, small_cache):
    """A run of one epoch with the paper's plateau schedule at patience 1, to resume from."""
    import yaml

    root = tmp_path_factory.mktemp("resume")
    config = root / "patience1.yaml"
    values = yaml.safe_load((ROOT / "configs" / "small.yaml").read_text())
    values["train"].update(schedule="plateau", learning_rate=3e-4, plateau_patience=1)
    config.write_text(yaml.safe_dump(values))
    assert run_train("--data", small_cache, "--out", root / "run", "--epochs", "1", config=config) == 0
    return root / "run", config


def test_resume_continues_with_optimizer_state_and_plateau_counter(tmp_path, small_cache,
                                                                   one_epoch_run):
    source, config = one_epoch_run
    out = tmp_path / "run"
    shutil.copytree(source, out)
    state = json.loads((out / "flair" / "state.json").read_text())
    assert state["epochs_done"] == 1 and state["learning_rate"] == pytest.approx(3e-4)
    with pytest.raises(SystemExit, match="2"):  # a trained network is not overwritten silently
        run_train("--data", small_cache, "--out", out, "--epochs", "2", config=config)
    state.update(plateau_wait=1, plateau_best=-10.0)  # as if epoch 1 had not improved the loss
    (out / "flair" / "state.json").write_text(json.dumps(state))
    assert run_train("--data", small_cache, "--out", out, "--epochs", "2", "--resume",
                     config=config) == 0
    state = json.loads((out / "flair" / "state.json").read_text())
    assert state["epochs_done"] == 2
    assert state["learning_rate"] == pytest.approx(3e-5)  # patience 1 ran out: LR / 10
    assert [r["epoch"] for r in history(out / "flair")] == ["0", "1"]
    model = keras.saving.load_model(out / "flair" / "last.keras")
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 2 * 13


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, small_cache, one_epoch_run,
                                                          capsys):
    source, config = one_epoch_run
    out, cache = tmp_path / "run", tmp_path / "cache"
    shutil.copytree(source, out)
    shutil.copytree(small_cache, cache)
    good = (out / "flair" / "last.keras").read_bytes()
    for case_id in json.loads((out / "split.json").read_text())["train"]:
        flair = np.load(cache / case_id / "flair.npy")
        flair[10, 10, 10] = np.nan
        np.save(cache / case_id / "flair.npy", flair)
    assert run_train("--data", cache, "--out", out, "--epochs", "2", "--resume", config=config) == 1
    err = capsys.readouterr().err
    assert "loss became NaN at epoch 2" in err and "last.keras (epoch 1)" in err
    assert (out / "flair" / "last.keras").read_bytes() == good
    assert json.loads((out / "flair" / "state.json").read_text())["epochs_done"] == 1


def test_an_epoch_under_mirrored_strategy_on_two_logical_cpus(tmp_path, small_cache):
    command = [sys.executable, "train.py", "--config", "configs/small.yaml", "--data", str(small_cache),
               "--out", str(tmp_path / "run"), "--epochs", "1", "--cpu-replicas", "2", "--verbose", "0"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "global batch 2 on 2 replica(s)" in done.stdout
    state = json.loads((tmp_path / "run" / "flair" / "state.json").read_text())
    assert state["epochs_done"] == 1
    model = keras.saving.load_model(tmp_path / "run" / "flair" / "last.keras")
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 13 // 2


def test_multimodal_network_reads_four_channels(tmp_path, small_cache):
    out = tmp_path / "run"
    assert run_train("--data", small_cache, "--out", out, "--epochs", "1", "--multimodal") == 0
    assert json.loads((out / "multimodal" / "network.json").read_text())["modalities"] == [
        "flair", "t1", "t1ce", "t2"]
    model = keras.saving.load_model(out / "multimodal" / "last.keras")
    assert model.input_shape == (None, 64, 64, 48, 4)
    import predict
    import synthetic

    list(synthetic.write_dataset(tmp_path / "val", 1, 11, "brats2020", validation=True))
    assert predict.main(["--run", str(out), "--input", str(tmp_path / "val"),
                         "--output", str(tmp_path / "pred")]) == 0
    written = nib.load(tmp_path / "pred" / "BraTS20_Validation_001.nii.gz")
    assert written.shape == (240, 240, 155) and written.get_data_dtype() == np.uint8


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


def test_networks_of_one_process_share_a_model_and_restart_from_its_initial_state():
    """The second network reuses the traced model with the first's initial state: weights,
    optimizer and random generators."""
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
    assert second is first and second.train_function is not None  # traced once
    assert int(keras.ops.convert_to_numpy(second.optimizer.iterations)) == 0
    assert all(np.array_equal(a, b) for a, b in zip(second.get_weights(), initial))
    # the dropout masks too: the random generators restart where the first network's did
    seeds = [v for v in second.variables if "seed_generator_state" in v.path]
    assert seeds and all(np.array_equal(keras.ops.convert_to_numpy(v), start[v.path])
                         for v in seeds)
    assert all(not np.any(keras.ops.convert_to_numpy(v)) for v in second.optimizer.variables
               if "momentum" in v.path or "velocity" in v.path)


# ---- a damaged run folder: one line and what to do; two trainers of one network ----------------

def test_resume_refuses_each_damaged_or_foreign_file_in_one_line(tmp_path, small_cache,
                                                                 one_epoch_run, capsys):
    source, config = one_epoch_run

    def damage(edit) -> Path:
        out = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
        linked_copy(source, out)
        edit(out)
        return out

    def resumed(out, *extra) -> str:
        return expect_error(capsys, "--config", config, "--data", small_cache, "--out", out,
                            "--epochs", "2", "--resume", *extra)

    def other_training(out):  # state.json and history.csv of a longer training than last.keras
        state = json.loads((out / "flair" / "state.json").read_text())
        (out / "flair" / "state.json").write_text(json.dumps({**state, "epochs_done": 2}))
        lines = (out / "flair" / "history.csv").read_text().splitlines(keepends=True)
        (out / "flair" / "history.csv").write_text("".join(lines + lines[1:]))

    def cut_file(name):
        return lambda out: cut(out / name)

    def write(name, text):
        return lambda out: (out / name).write_text(text)

    def remove(name):
        return lambda out: (out / name).unlink()

    expected = {
        "state.json: damaged (not JSON": cut_file("flair/state.json"),
        "state.json: empty": write("flair/state.json", ""),
        "state.json: missing beside the checkpoints": remove("flair/state.json"),
        "last.keras: damaged": cut_file("flair/last.keras"),
        "best.weights.h5: damaged": cut_file("flair/best.weights.h5"),
        "history.csv: damaged (": cut_file("flair/history.csv"),
        "history.csv: missing": remove("flair/history.csv"),
        "network.json: names modalities t1 in the folder of flair": write(
            "flair/network.json", '{"modalities": ["t1"]}'),
        "split.json: damaged": cut_file("split.json"),
        "config.yaml: ": cut_file("config.yaml"),
    }
    for problem, edit in expected.items():
        error = resumed(damage(edit))
        assert problem in error, (problem, error)
        assert "restore" in error, error  # and what to do
    assert "state.json: says 2 epoch(s) done (26 steps), last.keras holds 13 steps" in resumed(
        damage(other_training), "--epochs", "3")
    assert "--resume --repair" in resumed(damage(cut_file("flair/last.keras")))


def test_repair_continues_from_best_weights_and_a_new_history(tmp_path, one_epoch_run, capsys):
    """last.keras and history.csv cut in half: --repair continues from best.weights.h5 (epoch 1)
    with the optimizer at its step, and keeps the damaged history aside for a new one.
    (Without training an epoch: the steps of train_network that --repair changes.)"""
    from util.config import load_config

    source, config_file = one_epoch_run
    folder = linked_copy(source, tmp_path / "run") / "flair"
    cut(folder / "last.keras")
    cut(folder / "history.csv")
    state, from_best = resume.resumed_state(folder, ("flair",), resume=True, repair=True)
    assert from_best and state["epochs_done"] == 1 and state["best_epoch"] == 1
    printed = capsys.readouterr().out
    assert "last.keras: damaged" in printed
    assert "--repair: continue from best.weights.h5 (epoch 1)" in printed
    assert "history.csv: damaged" in printed and "keeping it as history.csv.damaged" in printed
    assert (folder / "history.csv.damaged").is_file() and not (folder / "history.csv").exists()
    config = load_config(config_file)
    model = train.compiled_model(config, False, None, None, {})
    resume.continue_from_best(model, folder, state, 13, config)
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 13
    assert float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)) == pytest.approx(
        state["learning_rate"])
    whole = keras.saving.load_model(source / "flair" / "last.keras")  # epoch 1, the best epoch
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), whole.get_weights()))
    # best.weights.h5 cut as well: nothing to continue from, and no --repair offered
    cut(folder / "best.weights.h5")
    with pytest.raises(resume.RunFileError, match="last.keras: damaged .*delete .* afresh"):
        resume.resumed_state(folder, ("flair",), resume=True, repair=True)


def test_a_second_trainer_of_the_network_refuses_while_the_first_finishes_as_alone(
        tmp_path, small_cache, one_epoch_run):
    """The first trainer takes over a stale lock (a process that has ended), the second refuses
    in one line naming the first, which ends with the result of one_epoch_run's training alone."""
    source, config = one_epoch_run
    out = tmp_path / "run"
    (out / "flair").mkdir(parents=True)
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True).stdout.strip()
    (out / "flair" / "train.lock").write_text(json.dumps(
        {"host": __import__("socket").gethostname(), "pid": int(ended), "started": "earlier"}))
    command = [sys.executable, "train.py", "--config", str(config), "--data", str(small_cache),
               "--out", str(out), "--epochs", "1", "--verbose", "0"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    first = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        lock = out / "flair" / "train.lock"
        for _ in range(600):
            if lock.exists() and f'"pid": {first.pid}' in lock.read_text():
                break
            assert first.poll() is None, first.communicate()
            time.sleep(0.2)
        second = subprocess.run([*command, "--resume"], cwd=ROOT, env=env, capture_output=True,
                                text=True, timeout=300)
        assert first.poll() is None  # the first goes on
        errors = [line for line in second.stderr.splitlines() if line.startswith("error:")]
        assert second.returncode == 2 and "Traceback" not in second.stderr, second.stderr[-2000:]
        assert len(errors) == 1 and f"being trained by process {first.pid} on" in errors[0]
        output, err = first.communicate(timeout=900)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, err[-2000:]
    assert f"taken over from process {ended}" in output
    assert not lock.exists()
    alone = history(source / "flair")
    raced = history(out / "flair")
    assert len(raced) == 1
    for column in ("loss", "val_dice_mean"):
        assert float(raced[0][column]) == pytest.approx(float(alone[0][column]), rel=1e-3, abs=1e-4)
    assert json.loads((out / "flair" / "state.json").read_text())["epochs_done"] == 1


def test_a_refused_trainer_writes_nothing_in_the_run(tmp_path, small_cache, one_epoch_run, capsys):
    """The lock comes before any write: a second trainer with another --epochs (config.yaml) and
    --repair (split.json) is refused and leaves the running run's files byte for byte."""
    source, config = one_epoch_run
    out = linked_copy(source, tmp_path / "run")
    (out / "split.json").write_text("{")  # damaged: --repair would write it again
    before = {name: (out / name).read_bytes() for name in ("config.yaml", "split.json")}
    with train.TrainingLock(out / "flair"):  # the running trainer
        with pytest.raises(SystemExit) as stop:
            run_train("--data", small_cache, "--out", out, "--epochs", "7", "--resume", "--repair",
                      config=config)
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert stop.value.code == 2 and len(errors) == 1 and "being trained by process" in errors[0]
    assert {name: (out / name).read_bytes() for name in before} == before
