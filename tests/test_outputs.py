"""Output faults, for every tool: an output that cannot be created and a disk that fills up midway
each give one line `error: <path>: <reason>` and exit status 2, leave nothing half-written, and
a rerun (predict, preprocess, train) finishes with the outputs of an undisturbed run."""
import builtins
import contextlib
import errno
import io
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import keras
import numpy as np
import pytest

import demo
import evaluate
import predict
import preprocess
import synthetic
import train
from brats.cases import find_cases
from tests.conftest import SEED, write_tiny_config

ROOT = Path(__file__).resolve().parents[1]
NO_SPACE = "cannot write: No space left on device"
REAL_OPEN = builtins.open


# ---- a full disk, deterministically -----------------------------------------------------------

class FullDisk:
    """The disk under `root` with `free` bytes left, for files written through open().

    A deterministic stand-in for a small tmpfs: the write that passes `free` stores the bytes that
    still fit and raises OSError(ENOSPC), as does every later write under `root`. Files written by
    C libraries (h5py's best.weights.h5, TensorBoard) are not counted.
    """

    def __init__(self, root: Path, free: int):
        self.root, self.free = str(root) + os.sep, free
        self.lock = threading.Lock()  # preprocess writes a case's arrays in threads

    def open(self, file, mode="r", *args, **kwargs):
        handle = REAL_OPEN(file, mode, *args, **kwargs)
        writes = any(flag in mode for flag in "wax+")
        if writes and not isinstance(file, int) and os.path.abspath(file).startswith(self.root):
            return Metered(handle, self)
        return handle

    def take(self, size: int) -> int:
        """Reserve up to `size` bytes; returns how many fit."""
        with self.lock:
            granted = min(size, self.free)
            self.free -= granted
            return granted


class Metered:
    """A file opened on a FullDisk: writes draw on its free bytes, the rest is the real file's."""

    def __init__(self, handle, disk: FullDisk):
        self.handle, self.disk = handle, disk

    def write(self, data):
        data = data if isinstance(data, str) else memoryview(data).cast("B")
        granted = self.disk.take(len(data))
        if granted < len(data):
            self.handle.write(data[:granted])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.handle.write(data)

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exception):
        self.handle.close()


@contextlib.contextmanager
def full_disk(root: Path, free: int):
    """Inside the block the disk under `root` takes `free` more bytes (open and io.open are
    patched); after it, space is freed."""
    disk = FullDisk(root, free)
    builtins.open = io.open = disk.open
    try:
        yield disk
    finally:
        builtins.open = io.open = REAL_OPEN


# ---- helpers ----------------------------------------------------------------------------------

def fails(capsys, main, *args) -> tuple:
    """Run a tool's main that must stop with status 2: (its one error line, its stdout)."""
    with pytest.raises(SystemExit) as stop:
        main([str(a) for a in args])
    assert stop.value.code == 2
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in captured.err, captured.err
    return errors[0], captured.out


@pytest.fixture
def blocker(tmp_path) -> Path:
    """A regular file: a path under it can never be created, even by root."""
    path = tmp_path / "a_file"
    path.write_text("")
    return path


def under_a_file(blocker: Path, name: str) -> str:
    return f"error: {blocker / name}: cannot create folder: {blocker} is a file, not a folder"


def no_temporaries(root: Path) -> bool:
    return not list(root.rglob(".tmp-*"))


def assert_same_files(folder: Path, reference: Path) -> None:
    names = sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(reference) for p in reference.rglob("*") if p.is_file())
    for name in names:
        assert (folder / name).read_bytes() == (reference / name).read_bytes(), name


# ---- synthetic, evaluate, model, demo ---------------------------------------------------------

def test_synthetic_unwritable_folder_and_full_disk(tmp_path, blocker, brats2020_dir, capsys):
    line, _ = fails(capsys, synthetic.main, blocker / "out", "--cases", "1")
    assert line == under_a_file(blocker, "out")
    case = "BraTS20_Training_001"
    reference, out = brats2020_dir / case, tmp_path / "out"  # the same case, undisturbed
    flair, t1 = (reference / f"{case}_{m}.nii.gz" for m in ("flair", "t1"))
    with full_disk(out, free=flair.stat().st_size + t1.stat().st_size // 2):  # fills up in t1
        line, _ = fails(capsys, synthetic.main, out, "--cases", "1", "--seed", SEED)
    assert line == f"error: {out / case / t1.name}: {NO_SPACE}"
    assert no_temporaries(out) and os.listdir(out / case) == [flair.name]
    assert (out / case / flair.name).read_bytes() == flair.read_bytes()


def test_evaluate_checks_out_before_scoring_and_prints_the_table_on_a_full_disk(
        tmp_path, blocker, brats2020_dir, capsys, monkeypatch):
    predictions = tmp_path / "predictions"
    predictions.mkdir()
    for seg in brats2020_dir.glob("*/*_seg.nii.gz"):
        shutil.copy(seg, predictions / seg.name.replace("_seg", ""))
    with monkeypatch.context() as patch:
        patch.setattr(evaluate, "evaluate", lambda *a, **k: pytest.fail("scored before the check"))
        line, _ = fails(capsys, evaluate.main, predictions, brats2020_dir,
                        "--out", blocker / "r.csv")
    assert line == f"error: {blocker}: cannot create folder: {blocker} is a file, not a folder"
    out = tmp_path / "results" / "r.csv"
    with full_disk(out.parent, free=200):
        line, printed = fails(capsys, evaluate.main, predictions, brats2020_dir, "--out", out)
    assert line == f"error: {out}: {NO_SPACE}"
    assert "Median" in printed and "Dice WT" in printed  # the table is printed all the same
    assert not out.exists() and no_temporaries(out.parent)


def test_model_into_a_full_stdout():
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "model.py", "--config", "configs/small.yaml"],
                              cwd=ROOT, stdout=full, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=300)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: standard output: {NO_SPACE}"], done.stderr
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr


def test_demo_unwritable_folder_and_full_disk_in_its_first_step(tmp_path, blocker, capsys):
    line, _ = fails(capsys, demo.main, "--out", blocker / "demo")
    assert line == under_a_file(blocker, "demo")
    out = tmp_path / "demo"
    with full_disk(out, free=4_000_000):
        line, _ = fails(capsys, demo.main, "--out", out, "--train-cases", "1",
                        "--validation-cases", "1")
    assert line.startswith(f"error: {out / 'data' / 'train.partial'}/") and line.endswith(NO_SPACE)
    assert no_temporaries(out) and not (out / "data" / "train").exists()  # not taken as complete
    demo.make_data(out / "data", 1, 1, seed=0)  # what the next demo does first
    for folder in ("train", "validation"):
        assert len(find_cases(out / "data" / folder)) == 1
    assert len(list((out / "data").rglob("*.nii.gz"))) == 10


# ---- preprocess, train, predict: the rerun finishes as an undisturbed run ---------------------

def test_preprocess_full_disk_then_the_rerun_equals_an_undisturbed_run(tmp_path, blocker,
                                                                       brats2020_dir, cache_dir,
                                                                       capsys):
    line, _ = fails(capsys, preprocess.main, brats2020_dir, blocker / "cache")
    assert line == under_a_file(blocker, "cache")
    first, second, _ = sorted(p for p in cache_dir.iterdir() if p.is_dir())  # undisturbed run
    case_bytes = sum(f.stat().st_size for f in first.iterdir())
    out = tmp_path / "cache"
    with full_disk(out, free=case_bytes + case_bytes // 2):
        line, _ = fails(capsys, preprocess.main, brats2020_dir, out)
    assert line == f"error: {out / second.name}: {NO_SPACE}"
    assert no_temporaries(out) and [p.name for p in out.iterdir() if p.is_dir()] == [first.name]
    assert_same_files(out / first.name, first)
    assert preprocess.main([str(brats2020_dir), str(out)]) == 0
    assert "2 cases written, 1 skipped" in capsys.readouterr().out
    assert_same_files(out, cache_dir)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny3_cache) -> tuple:
    """(conftest's tiny configuration, its three cases): the files under test are the same at any
    size, and an eager step of the tiny network is a quarter of the small one's."""
    return write_tiny_config(tmp_path_factory.mktemp("tiny_config") / "tiny.yaml"), tiny3_cache


def train_args(config: Path, cache: Path, out: Path, *extra) -> list:
    return ["--config", config, "--data", cache, "--out", out, "--verbose", "0", *extra]


def run_train(*args) -> int:
    return train.main([str(a) for a in train_args(*args)])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny, eager):
    """The FLAIR network of the tiny configuration after one epoch (2 steps) on its 3 cases."""
    out = tmp_path_factory.mktemp("tiny") / "run"
    assert run_train(*tiny, out, "--epochs", "1") == 0
    return out


def test_train_full_disk_keeps_the_last_checkpoint_and_resume_equals_undisturbed(
        tmp_path, blocker, tiny, tiny_run, capsys):
    line, _ = fails(capsys, train.main, *train_args(*tiny, blocker / "run"))
    assert line == under_a_file(blocker, "run")
    reference, out = tmp_path / "reference", tmp_path / "run"
    shutil.copytree(tiny_run, reference)
    shutil.copytree(tiny_run, out)
    assert run_train(*tiny, reference, "--epochs", "2", "--resume") == 0  # undisturbed
    checkpoint = ("state.json", "last.keras", "best.weights.h5")
    epoch_1 = {name: (out / "flair" / name).read_bytes() for name in checkpoint}
    with full_disk(out, free=len(epoch_1["last.keras"]) // 2):  # fills up in epoch 2's last.keras
        line, _ = fails(capsys, train.main, *train_args(*tiny, out, "--epochs", "2", "--resume"))
    assert line == f"error: {out / 'flair' / 'last.keras'}: {NO_SPACE}"
    assert {name: (out / "flair" / name).read_bytes() for name in checkpoint} == epoch_1
    assert no_temporaries(out)
    assert run_train(*tiny, out, "--epochs", "2", "--resume") == 0
    for name in ("state.json", "history.csv"):
        assert (out / "flair" / name).read_text() == (reference / "flair" / name).read_text()
    resumed, undisturbed = (keras.saving.load_model(run / "flair" / "last.keras")
                            for run in (out, reference))
    for a, b in zip(resumed.weights + resumed.optimizer.variables,
                    undisturbed.weights + undisturbed.optimizer.variables):
        np.testing.assert_array_equal(a, b)


def test_predict_full_disk_then_the_rerun_equals_an_undisturbed_run(tmp_path, blocker, tiny_run,
                                                                    brats2020_dir, capsys):
    def predict_args(output):
        return ["--run", tiny_run, "--input", brats2020_dir, "--output", output]

    line, _ = fails(capsys, predict.main, *predict_args(blocker / "predictions"))
    assert line == under_a_file(blocker, "predictions")
    reference, out = tmp_path / "reference", tmp_path / "predictions"
    assert predict.main([str(a) for a in predict_args(reference)]) == 0  # undisturbed
    first, second, _ = (reference / f"{c.id}.nii.gz" for c in find_cases(brats2020_dir))
    with full_disk(out, free=first.stat().st_size + second.stat().st_size // 2):
        line, _ = fails(capsys, predict.main, *predict_args(out))
    assert line == f"error: {out / second.name}: {NO_SPACE}"
    assert no_temporaries(out) and sorted(os.listdir(out)) == sorted([first.name, "codings.json"])
    assert (out / first.name).read_bytes() == first.read_bytes()
    assert predict.main([str(a) for a in predict_args(out)]) == 0
    assert "2 cases written" in capsys.readouterr().out
    assert_same_files(out, reference)


def test_in_pieces_writes_the_same_bytes_in_calls_of_at_most_a_piece(tmp_path, monkeypatch):
    """util.outputs.in_pieces: the file that one large write() would give, handed to the kernel
    PIECE bytes at a time (a write of 1 MB or more is slow on the test VMs); np.save and zipfile
    write through it as through a file."""
    import zipfile

    from util import outputs

    sizes = []

    class Recorded(io.FileIO):
        def write(self, data):
            sizes.append(len(memoryview(data).cast("B")))
            return super().write(data)

    monkeypatch.setattr(outputs, "open", lambda path, *a, **k: Recorded(path, "w"), raising=False)
    data = np.random.default_rng(0).random(3 * 2**17 + 7)  # 3 MB and a bit
    with outputs.in_pieces(tmp_path / "a.npy") as handle:
        np.save(handle, data)
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), data)
    with outputs.in_pieces(tmp_path / "a.zip") as handle, zipfile.ZipFile(handle, "w") as archive:
        archive.writestr("data", data.tobytes())  # zipfile seeks back to finish its headers
    with zipfile.ZipFile(tmp_path / "a.zip") as archive:
        assert archive.read("data") == data.tobytes()
    assert sum(sizes) > 2 * data.nbytes and max(sizes) == outputs.PIECE
