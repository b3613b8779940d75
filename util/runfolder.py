"""The files of a run folder, read so that a damaged, empty, missing or foreign one ends a tool
with one line naming it and what to do; and the lock that keeps one trainer per network folder.

    config = read_config(run)                 # config.yaml, whole
    split = read_split(run)                   # split.json
    modalities = read_network(run / "flair")  # network.json
    with TrainingLock(run / "flair"):         # a second trainer of flair refuses at once
        ...

Every refusal is a RunFileError (a ConfigError, so the tools' `exits_cleanly` prints it as
`error: <file>: <what is wrong>; <what to do>` with exit status 2).
"""
from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import json
import os
import socket
import time
import zipfile
from pathlib import Path

import yaml

from brats.cases import MODALITIES
from util.config import Config, ConfigError, config_from_dict

RESTORE = "restore it from a copy of the run"
BEST, LAST = "best.weights.h5", "last.keras"  # a network's best weights, its last checkpoint
LOCK = "train.lock"


class RunFileError(ConfigError):
    """A run file that cannot be used; str() is one line: the file, the problem, what to do."""


def refusal(path, problem: str, advice: str = RESTORE) -> RunFileError:
    return RunFileError(f"{path}: {problem}; {advice}")


def read_text(path: Path, advice: str = RESTORE) -> str:
    """The text of a run file; missing, unreadable or empty is a RunFileError."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise refusal(path, "missing", advice) from None
    except (OSError, UnicodeDecodeError) as error:
        raise refusal(path, f"cannot read ({getattr(error, 'strerror', None) or error})",
                      advice) from None
    if not text.strip():
        raise refusal(path, "empty", advice)
    return text


def read_json(path: Path, keys: dict, advice: str = RESTORE) -> dict:
    """A JSON object holding `keys` (name -> type or tuple of types); else a RunFileError."""
    text = read_text(path, advice)
    try:
        value = json.loads(text)
    except ValueError as error:
        raise refusal(path, f"damaged (not JSON: {error})", advice) from None
    wrong = [k for k, kind in keys.items()
             if not isinstance(value, dict) or not isinstance(value.get(k), kind)
             or isinstance(value.get(k), bool)]
    if wrong:
        raise refusal(path, f"damaged or not this kind of file (no valid {wrong[0]})", advice)
    return value


# ---- the run's files --------------------------------------------------------------------------

def read_config(run: Path, advice: str = RESTORE) -> Config:
    """RUN/config.yaml: valid YAML holding every section its configuration writes (a file cut
    short loses the later sections, which defaults must not fill in silently)."""
    path = Path(run) / "config.yaml"
    if not Path(run).is_dir():
        raise RunFileError(f"{run}: cannot read: no such run folder")
    text = read_text(path, advice)
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise refusal(path, f"damaged (not valid YAML: {str(error).splitlines()[0]})",
                      advice) from None
    if not isinstance(values, dict):
        raise refusal(path, "damaged (not a configuration)", advice)
    model = values.get("model")
    family = model.get("family", "een") if isinstance(model, dict) else "een"
    missing = [k for k in ("name", "data", "model", "train", family)
               if k not in values and k != "een"]
    if missing:
        raise refusal(path, f"incomplete (no {missing[0]} section: cut short?)", advice)
    try:
        return config_from_dict(values, str(path))
    except ConfigError as error:
        raise RunFileError(f"{error}; {advice}") from None


def read_split(run: Path, advice: str = RESTORE) -> dict:
    """RUN/split.json: the training and validation case ids and the cache."""
    return read_json(Path(run) / "split.json", {"train": list, "validation": list, "cache": str},
                     advice)


def read_network(folder: Path, advice: str = RESTORE) -> tuple:
    """FOLDER/network.json: the modalities the network reads. A folder named after a modality
    must read that modality alone (else network.json comes from another network)."""
    path = Path(folder) / "network.json"
    modalities = tuple(read_json(path, {"modalities": list}, advice)["modalities"])
    name = Path(folder).name
    if not modalities or (name in MODALITIES and modalities != (name,)):
        raise refusal(path, f"names modalities {', '.join(map(str, modalities)) or 'none'} in "
                            f"the folder of {name} (from another network?)", advice)
    return modalities


def read_state(folder: Path, advice: str = RESTORE) -> dict:
    """FOLDER/state.json: epochs done, learning rate, best epoch and score, plateau counter."""
    state = read_json(Path(folder) / "state.json", {"epochs_done": int,
                                                    "learning_rate": (int, float)}, advice)
    if state["epochs_done"] < 1:
        raise refusal(Path(folder) / "state.json", "damaged (epochs_done below 1)", advice)
    return state


def history_rows(path: Path) -> list:
    """The complete rows of a history.csv (dicts); a row cut short or a missing header ends it."""
    lines = Path(path).read_text().splitlines(keepends=True) if Path(path).is_file() else []
    if not lines or not lines[0].endswith("\n"):
        return []
    header = next(csv.reader([lines[0]]))
    rows = []
    for line in lines[1:]:
        fields = next(csv.reader([line]), [])
        if not line.endswith("\n") or len(fields) != len(header):
            break
        rows.append(dict(zip(header, fields)))
    return rows


def read_history(path: Path, columns: tuple = (), advice: str = RESTORE) -> list:
    """history.csv's rows, at least one, each with `columns` as numbers."""
    if not Path(path).is_file():
        raise refusal(path, "missing", advice)
    rows = history_rows(path)
    if not rows:
        raise refusal(path, "empty or damaged (no complete row)", advice)
    for row in rows:
        try:
            [float(row[c]) for c in columns]
        except (KeyError, ValueError):
            raise refusal(path, f"damaged (no number in column {columns})", advice) from None
    return rows


def checkpoint_problem(path: Path) -> str | None:
    """Why a last.keras or .weights.h5 file is not whole (None when it is): missing, empty, or
    not a complete zip / HDF5 file. Cheap: no model is built."""
    path = Path(path)
    if not path.is_file():
        return "missing"
    if path.stat().st_size == 0:
        return "empty"
    try:
        if path.suffix == ".keras":
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
            return None if bad is None else f"damaged ({bad} fails its checksum)"
        import h5py

        with h5py.File(path, "r") as handle:
            handle.visit(lambda name: None)
        return None
    except (OSError, zipfile.BadZipFile, EOFError, ValueError, RuntimeError) as error:
        return f"damaged ({str(error).splitlines()[0] if str(error) else type(error).__name__})"


def check_checkpoint(path: Path, advice: str = RESTORE) -> Path:
    problem = checkpoint_problem(path)
    if problem:
        raise refusal(path, problem, advice)
    return Path(path)


@contextlib.contextmanager
def loading(path: Path, advice: str = RESTORE):
    """Around the code that loads `path` (weights or a model): any failure is one line naming it
    (a file from another configuration does not fit the network)."""
    try:
        yield
    except Exception as error:  # h5py, zip, Keras' shape mismatches: one line naming the file
        text = str(error).splitlines()[0] if str(error).strip() else type(error).__name__
        raise refusal(path, f"cannot load ({text})", advice) from None


def network_weights(folder: Path, instead: str = "") -> Path:
    """FOLDER/best.weights.h5, the network's weights for prediction, checked whole; a network
    without it is refused (`instead`: what else the tool can do)."""
    folder = Path(folder)
    best = folder / "best.weights.h5"
    if not best.exists() and not (folder / "state.json").exists() \
            and not (folder / "last.keras").exists():
        raise refusal(folder, "not trained (no checkpoint: stopped in its first epoch?)",
                      "finish its training (train.py --resume) or leave it out")
    return check_checkpoint(best, RESTORE + (f", {instead}" if instead else ""))


# ---- one trainer per network folder -----------------------------------------------------------

class LockHeld(RunFileError):
    """Another process trains this network; str() names it."""


def holder(path: Path) -> dict:
    """What a lock file says: host, pid, started (empty while its holder is still writing it)."""
    with contextlib.suppress(OSError, ValueError):
        value = json.loads(Path(path).read_text())
        if isinstance(value, dict):
            return value
    return {}


def describe(lock: dict) -> str:
    if not lock:
        return "another process (starting)"
    return (f"process {lock.get('pid')} on {lock.get('host')} (started "
            f"{lock.get('started')})")


_HELD = set()  # descriptors of the train.lock files this process holds


def _forget_held_locks() -> None:
    """In a forked child (a data-loader worker): close the inherited lock descriptors without
    unlocking, so that the flock ends with the trainer and not with its last worker."""
    for descriptor in list(_HELD):
        with contextlib.suppress(OSError):
            os.close(descriptor)
    _HELD.clear()


os.register_at_fork(after_in_child=_forget_held_locks)


class TrainingLock:
    """FOLDER/train.lock while this process trains the network in FOLDER.

    It holds the host, process id and start time, and an exclusive flock that the system drops
    when the process ends however it ends. A second trainer refuses with LockHeld naming the
    holder. A lock file whose flock is free is held by nobody: it is taken over with a note on
    stdout whatever host and process it names (a container restarted after an OOM kill has
    another host name and may reuse the pid). The descriptor is not inherited: exec closes it
    (O_CLOEXEC) and forked children (data-loader workers) close their copy at once, so the flock
    never outlives the trainer.
    """

    def __init__(self, folder: Path):
        self.path = Path(folder) / LOCK
        self.descriptor = None

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while self.descriptor is None:
            descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                os.close(descriptor)
                if error.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                raise LockHeld(f"{self.path.parent}: being trained by {describe(holder(self.path))}"
                               f"; wait for it to end or stop it (lock: {self.path})") from None
            if self._same_file(descriptor):
                self.descriptor = descriptor
                _HELD.add(descriptor)
            else:  # the holder removed it between our open and flock: try again
                os.close(descriptor)
        self._take_over(holder(self.path))
        self._write({"host": socket.gethostname(), "pid": os.getpid(),
                     "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")})
        return self

    def _same_file(self, descriptor: int) -> bool:
        try:
            return os.fstat(descriptor).st_ino == os.stat(self.path).st_ino
        except FileNotFoundError:
            return False

    def _take_over(self, previous: dict) -> None:
        """A lock file nobody holds (its flock was free): its process ended without removing it."""
        if previous:
            print(f"note: {self.path}: taken over from {describe(previous)}, which no longer "
                  f"holds it")

    def _write(self, value: dict) -> None:
        os.ftruncate(self.descriptor, 0)
        os.pwrite(self.descriptor, json.dumps(value).encode(), 0)
        os.fsync(self.descriptor)

    def _release(self) -> None:
        """Remove the lock file, then let go of it (a waiting open sees another file)."""
        if self.descriptor is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()
            self._leave()

    def _leave(self) -> None:
        """Let go of the lock file as it is (its holder's record stays)."""
        _HELD.discard(self.descriptor)
        os.close(self.descriptor)
        self.descriptor = None

    def __exit__(self, *exc):
        self._release()
        return False
