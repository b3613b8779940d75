"""A run's life under train.py: resume, repair, a NaN stop, two replicas, four modalities, and
two trainers of one network. The runs train conftest's tiny configuration on small3_cache's three
cases cut to 32x32x12 (two steps an epoch; the four-modality run the small configuration on
small3_cache, the two-replica run the tiny one on small_cache), eagerly in this process: what is
under test is how a run goes on, not what it learns or how fast (tests/test_train.py)."""
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

import losses  # noqa: F401  (the loss and metrics load_model reads, as train.py imports them)
import model  # noqa: F401  (the EEN's layers: the two-replica run's file is read before any build)
import train
from util import resume
from tests.conftest import FULL, cut, linked_copy, write_tiny_cache, write_tiny_config
from tests.test_train import expect_error, history, run_train

ROOT = Path(__file__).resolve().parents[1]
# The trainings skip TensorFlow's tracing (about 20 s a run of two steps): what is under test is
# how a run goes on. Those in subprocesses run train.main eagerly (EAGERLY); the two replicas'
# epoch runs traced in make test-full.
pytestmark = pytest.mark.usefixtures("eager")


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory, tiny3_cache):
    """(a run of one epoch, its configuration, its cache): conftest's tiny configuration with the
    paper's plateau schedule at patience 1, on tiny3_cache (two steps an epoch), to resume
    from."""
    root = tmp_path_factory.mktemp("resume")
    config = write_tiny_config(root / "patience1.yaml", schedule="plateau", learning_rate=3e-4,
                               plateau_patience=1)
    assert run_train("--data", tiny3_cache, "--out", root / "run", "--epochs", "1",
                     config=config) == 0
    return root / "run", config, tiny3_cache


def test_resume_continues_with_optimizer_state_and_plateau_counter(tmp_path, one_epoch_run):
    source, config, cache = one_epoch_run
    out = tmp_path / "run"
    shutil.copytree(source, out)
    state = json.loads((out / "flair" / "state.json").read_text())
    assert state["epochs_done"] == 1 and state["learning_rate"] == pytest.approx(3e-4)
    with pytest.raises(SystemExit, match="2"):  # a trained network is not overwritten silently
        run_train("--data", cache, "--out", out, "--epochs", "2", config=config)
    state.update(plateau_wait=1, plateau_best=-10.0)  # as if epoch 1 had not improved the loss
    (out / "flair" / "state.json").write_text(json.dumps(state))
    assert run_train("--data", cache, "--out", out, "--epochs", "2", "--resume",
                     config=config) == 0
    state = json.loads((out / "flair" / "state.json").read_text())
    assert state["epochs_done"] == 2
    assert state["learning_rate"] == pytest.approx(3e-5)  # patience 1 ran out: LR / 10
    assert [r["epoch"] for r in history(out / "flair")] == ["0", "1"]
    model = keras.saving.load_model(out / "flair" / "last.keras")
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 2 * 2


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, one_epoch_run, capsys):
    source, config, tiny_cache = one_epoch_run
    out, cache = tmp_path / "run", tmp_path / "cache"
    shutil.copytree(source, out)
    shutil.copytree(tiny_cache, cache)
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


# train.py's main with eager steps, for subprocesses (the two-replica epoch of the small config:
# about 50 s eagerly, 140 s traced, 110 s of it MirroredStrategy's tracing of the step for two
# replicas; make test runs it on the tiny config eagerly, make test-full on the small one traced).
EAGERLY = ["-c", "import sys, tensorflow, train; tensorflow.config.run_functions_eagerly(True); "
                 "sys.exit(train.main(sys.argv[1:]))"]


def test_replicas_validate_equal_shares_of_the_held_out_cases():
    assert train.validation_ids(["a", "b", "c"], 1) == ["a", "b", "c"]
    assert train.validation_ids(["a", "b", "c"], 2) == ["a", "b"]
    assert train.validation_ids(["a"], 2) == []


def test_multimodal_network_reads_four_channels(tmp_path, small3_cache):
    out = tmp_path / "run"
    assert run_train("--data", small3_cache, "--out", out, "--epochs", "1", "--multimodal") == 0
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


# ---- a damaged run folder: one line and what to do; two trainers of one network ----------------

def test_resume_refuses_each_damaged_or_foreign_file_in_one_line(tmp_path, one_epoch_run, capsys):
    source, config, cache = one_epoch_run

    def damage(edit) -> Path:
        out = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
        linked_copy(source, out)
        edit(out)
        return out

    def resumed(out, *extra) -> str:
        return expect_error(capsys, "--config", config, "--data", cache, "--out", out,
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
    assert "state.json: says 2 epoch(s) done (4 steps), last.keras holds 2 steps" in resumed(
        damage(other_training), "--epochs", "3")
    assert "--resume --repair" in resumed(damage(cut_file("flair/last.keras")))


def test_repair_continues_from_best_weights_and_a_new_history(tmp_path, one_epoch_run, capsys):
    """last.keras and history.csv cut in half: --repair continues from best.weights.h5 (epoch 1)
    with the optimizer at its step, and keeps the damaged history aside for a new one.
    (Without training an epoch: the steps of train_network that --repair changes.)"""
    from util.config import load_config

    source, config_file, _ = one_epoch_run
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
    resume.continue_from_best(model, folder, state, 2, config)
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 2
    assert float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)) == pytest.approx(
        state["learning_rate"])
    whole = keras.saving.load_model(source / "flair" / "last.keras")  # epoch 1, the best epoch
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), whole.get_weights()))
    # best.weights.h5 cut as well: nothing to continue from, and no --repair offered
    cut(folder / "best.weights.h5")
    with pytest.raises(resume.RunFileError, match="last.keras: damaged .*delete .* afresh"):
        resume.resumed_state(folder, ("flair",), resume=True, repair=True)


def test_a_second_trainer_of_the_network_refuses_while_the_first_finishes_as_alone(
        tmp_path, one_epoch_run):
    """The first trainer takes over a stale lock (a process that has ended), the second refuses
    in one line naming the first, which ends with the result of one_epoch_run's training alone."""
    source, config, cache = one_epoch_run
    out = tmp_path / "run"
    (out / "flair").mkdir(parents=True)
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True).stdout.strip()
    (out / "flair" / "train.lock").write_text(json.dumps(
        {"host": __import__("socket").gethostname(), "pid": int(ended), "started": "earlier"}))
    command = [sys.executable, *EAGERLY, "--config", str(config), "--data", str(cache),
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


def test_a_refused_trainer_writes_nothing_in_the_run(tmp_path, one_epoch_run, capsys):
    """The lock comes before any write: a second trainer with another --epochs (config.yaml) and
    --repair (split.json) is refused and leaves the running run's files byte for byte."""
    source, config, cache = one_epoch_run
    out = linked_copy(source, tmp_path / "run")
    (out / "split.json").write_text("{")  # damaged: --repair would write it again
    before = {name: (out / name).read_bytes() for name in ("config.yaml", "split.json")}
    with train.TrainingLock(out / "flair"):  # the running trainer
        with pytest.raises(SystemExit) as stop:
            run_train("--data", cache, "--out", out, "--epochs", "7", "--resume", "--repair",
                      config=config)
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert stop.value.code == 2 and len(errors) == 1 and "being trained by process" in errors[0]
    assert {name: (out / name).read_bytes() for name in before} == before


# ---- two replicas: last, when small_cache is built (test_train.py's worker builds it) ----------

def test_an_epoch_under_mirrored_strategy_on_two_logical_cpus(tmp_path, small_cache):
    """Steps of global batch 2, one case on each replica; of 3 validation cases 2 are validated,
    one on each replica (an odd case out had left a replica an empty share, and the step failed).
    make test: 4 training cases (2 steps) of the tiny configuration (32x32x12, conftest), eagerly;
    make test-full: 13 (6 steps) of the small configuration, traced."""
    if FULL:
        config, cache, training = "configs/small.yaml", small_cache, 13
    else:
        config = write_tiny_config(tmp_path / "tiny.yaml", validation_fraction=0.4)
        cache, training = write_tiny_cache(small_cache, tmp_path / "cache", 7), 4
    command = [sys.executable, *(["train.py"] if FULL else EAGERLY), "--config", str(config),
               "--data", str(cache), "--out", str(tmp_path / "run"), "--epochs", "1",
               "--cpu-replicas", "2", "--verbose", "0"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{training} training / 2 validation cases (1 left out" in done.stdout
    assert "global batch 2 on 2 replica(s)" in done.stdout
    state = json.loads((tmp_path / "run" / "flair" / "state.json").read_text())
    assert state["epochs_done"] == 1 and 0 <= state["best_score"] <= 1  # a validation Dice
    model = keras.saving.load_model(tmp_path / "run" / "flair" / "last.keras")
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == training // 2
