"""runfolder.py: each run file damaged, empty, missing or foreign is one RunFileError naming it
and what to do; the training lock refuses a second holder and takes over one nobody holds."""
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from util import runfolder
from util.runfolder import RunFileError, TrainingLock


def cut(path):
    """Keep the first half of a file, as an interrupted copy or sync does."""
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def refusal(call, *args) -> str:
    with pytest.raises(RunFileError) as error:
        call(*args)
    text = str(error.value)
    assert "\n" not in text and "; " in text  # the file, the problem; what to do
    return text


def test_state_json_damaged_empty_missing_or_foreign(tmp_path):
    state = tmp_path / "state.json"
    assert "state.json: missing; restore it" in refusal(runfolder.read_state, tmp_path)
    state.write_text("")
    assert "state.json: empty" in refusal(runfolder.read_state, tmp_path)
    state.write_text(json.dumps({"epochs_done": 3, "learning_rate": 1e-4, "best_epoch": 2}))
    assert runfolder.read_state(tmp_path)["epochs_done"] == 3
    cut(state)
    assert "state.json: damaged (not JSON" in refusal(runfolder.read_state, tmp_path)
    state.write_text(json.dumps({"modalities": ["flair"]}))  # another run file in its place
    assert "no valid epochs_done" in refusal(runfolder.read_state, tmp_path)


def test_network_json_must_name_its_folder(tmp_path):
    folder = tmp_path / "flair"
    folder.mkdir()
    (folder / "network.json").write_text(json.dumps({"modalities": ["flair"]}))
    assert runfolder.read_network(folder) == ("flair",)
    (folder / "network.json").write_text(json.dumps({"modalities": ["t1"]}))
    assert "names modalities t1 in the folder of flair" in refusal(runfolder.read_network, folder)
    cut(folder / "network.json")
    assert "network.json: damaged" in refusal(runfolder.read_network, folder)


def test_config_yaml_cut_short_is_not_filled_with_defaults(tmp_path):
    from util.config import load_config, save_config

    save_config(load_config("configs/small.yaml"), tmp_path / "config.yaml")
    assert runfolder.read_config(tmp_path).name == "small"
    text = (tmp_path / "config.yaml").read_text()
    (tmp_path / "config.yaml").write_text(text[:text.index("\nmodel:")])  # cut at a line end
    assert "config.yaml: incomplete (no model section" in refusal(runfolder.read_config, tmp_path)
    (tmp_path / "config.yaml").write_text("data: [1, 2\n")
    assert "not valid YAML" in refusal(runfolder.read_config, tmp_path)
    assert "no such run folder" in str(pytest.raises(RunFileError, runfolder.read_config,
                                                     tmp_path / "nothing").value)


def test_history_keeps_complete_rows_only(tmp_path):
    history = tmp_path / "history.csv"
    history.write_text("epoch,loss,steps\n0,0.5,3\n1,0.4,3\n2,0.3")
    assert [r["epoch"] for r in runfolder.history_rows(history)] == ["0", "1"]
    history.write_text("epo")
    assert runfolder.history_rows(history) == []
    assert "empty or damaged" in refusal(runfolder.read_history, history)
    history.write_text("epoch,loss\n0,x\n")
    assert "no number in column" in refusal(runfolder.read_history, history, ("loss",))


def test_checkpoints_cut_in_half_are_seen_without_building_a_model(tmp_path):
    import h5py
    import numpy as np

    weights = tmp_path / "best.weights.h5"
    with h5py.File(weights, "w") as handle:
        handle["layer/kernel"] = np.ones((64, 64), np.float32)
    assert runfolder.checkpoint_problem(weights) is None
    cut(weights)
    assert runfolder.checkpoint_problem(weights).startswith("damaged")
    import zipfile

    model = tmp_path / "last.keras"
    with zipfile.ZipFile(model, "w") as archive:
        archive.writestr("model.weights.h5", np.random.default_rng(0).bytes(50_000))
    assert runfolder.checkpoint_problem(model) is None
    cut(model)
    assert runfolder.checkpoint_problem(model).startswith("damaged")
    model.write_bytes(b"")
    assert runfolder.checkpoint_problem(model) == "empty"
    assert runfolder.checkpoint_problem(tmp_path / "none.keras") == "missing"


def test_a_network_without_weights_is_refused_with_what_to_do(tmp_path):
    folder = tmp_path / "flair"
    folder.mkdir()
    assert "not trained" in refusal(runfolder.network_weights, folder)
    (folder / "state.json").write_text("{}")
    assert "best.weights.h5: missing; restore it from a copy of the run, or use X" in refusal(
        runfolder.network_weights, folder, "or use X")


# ---- the lock ---------------------------------------------------------------------------------

def test_a_second_holder_is_refused_naming_the_first(tmp_path):
    folder = tmp_path / "flair"
    with TrainingLock(folder) as first:
        record = json.loads(first.path.read_text())
        assert record["host"] == socket.gethostname() and record["started"]
        with pytest.raises(runfolder.LockHeld) as refused:
            TrainingLock(folder).__enter__()
        assert f"being trained by process {record['pid']} on {record['host']}" in str(refused.value)
        with TrainingLock(tmp_path / "t1"):  # another network of the run: side by side
            pass
    assert not first.path.exists()  # released at the end
    with TrainingLock(folder):  # and free again
        pass


def test_a_lock_whose_flock_is_free_is_taken_over_whatever_host_and_pid_it_names(tmp_path, capsys):
    """An ended process on this host, another host (a container restarted after an OOM kill),
    a pid that runs (reused): the flock is free, so nobody holds the lock."""
    folder = tmp_path / "flair"
    folder.mkdir()
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True).stdout.strip()
    stale = {"host": socket.gethostname(), "pid": int(ended), "started": "2026-01-01 00:00:00 UTC"}
    running = os.getppid()  # a process that runs, but does not hold the flock
    for record in (stale, {**stale, "host": "another-host"}, {**stale, "pid": running},
                   {**stale, "host": "another-host", "pid": running}):
        (folder / runfolder.LOCK).write_text(json.dumps(record))
        with TrainingLock(folder) as lock:
            assert json.loads(lock.path.read_text())["pid"] == os.getpid()
        printed = capsys.readouterr().out
        assert f"taken over from process {record['pid']} on {record['host']}" in printed, printed
        assert not (folder / runfolder.LOCK).exists()


# The worker says it has started (so fork's after-child handlers have run) before its pid is given.
TRAINER = """
import multiprocessing, sys, time
from util.runfolder import TrainingLock


def work(started):
    started.set()
    time.sleep(120)


lock = TrainingLock(sys.argv[1]).__enter__()
fork = multiprocessing.get_context("fork")
started = fork.Event()
worker = fork.Process(target=work, args=(started,))
worker.start()
assert started.wait(60)
print(worker.pid, flush=True)
time.sleep(120)
"""


def test_a_forked_worker_does_not_keep_the_lock_after_the_trainer_dies(tmp_path, capsys):
    """A trainer holding the lock forks a data-loader-like worker, then is killed (SIGKILL, as the
    OOM killer does): the worker lives on, the lock is free at once and taken over."""
    folder = tmp_path / "flair"
    root = Path(__file__).resolve().parents[1]
    trainer = subprocess.Popen([sys.executable, "-c", TRAINER, str(folder)], cwd=root,
                               stdout=subprocess.PIPE, text=True)
    worker = None
    try:
        worker = int(trainer.stdout.readline())
        with pytest.raises(runfolder.LockHeld, match=f"being trained by process {trainer.pid}"):
            TrainingLock(folder).__enter__()
        trainer.kill()
        trainer.wait(timeout=30)
        os.kill(worker, 0)  # the forked worker still runs
        with TrainingLock(folder):
            pass
        assert f"taken over from process {trainer.pid}" in capsys.readouterr().out
    finally:
        if trainer.poll() is None:
            trainer.kill()
        if worker is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker, signal.SIGKILL)
