"""What the peers share: the training split, the wall-clock budget, per-epoch timings and the
record compare.py reads, and writing a case's labels as predict.py does.

    split = split_cases(ids)                          # train.py's split, small.yaml's fraction, seed
    clock = Budget(minutes, epochs)                   # clock.spent(epochs_done): stop after it
    history.append(epoch_row(epoch, steps, train_s, epoch_s, loss=...)); write_history(...)
    write_record(run, parameters, history)            # run/peer.json: what compare.py reads
    write_case_labels(case, regions, coding, output)  # regions float (X, Y, Z, 3) WT, TC, ET
"""
from __future__ import annotations

import csv
import importlib.util
import json
import time
from pathlib import Path

import numpy as np

from util.outputs import atomic

SPLIT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "small.yaml"  # compare.py's EEN row
RECORD = "peer.json"  # in the run folder: parameters, epochs, seconds per epoch and per step


class PeerError(ValueError):
    """A peer that cannot run (bad input, a missing package); str() is one line."""


def without_tensorflow() -> None:
    """Keep TensorFlow out of a peer's process: MONAI imports torch.utils.tensorboard, whose
    tensorboard imports TensorFlow when it is installed (about 550 MB of resident memory that is
    no part of the system); tensorboard then uses its own stub."""
    import sys

    if "tensorflow" not in sys.modules:
        sys.modules["tensorflow"] = None  # `import tensorflow` raises ImportError


def require(package: str, pip_name: str) -> None:
    """PeerError in one line unless `package` can be imported."""
    if importlib.util.find_spec(package) is None:
        raise PeerError(f"the {pip_name} package is not installed (make setup, or pip install -r "
                        f"requirements.txt -r requirements-torch.txt -r requirements-dev.txt)")


def split_cases(ids: list, config_path: Path = SPLIT_CONFIG) -> dict:
    """train.py's split (util.resume.split_cases) with the validation fraction and seed of
    `config_path` (default: the comparison's EEN row, configs/small.yaml), so that every row holds
    out the same cases."""
    from util.config import load_config
    from util.resume import RunError, split_cases as run_split

    train = load_config(config_path).train
    try:
        return run_split(ids, train.validation_fraction, train.seed)
    except RunError as error:
        raise PeerError(str(error)) from None


class Budget:
    """Training stops after the epoch that ends past `minutes` (train.py --max-minutes), or after
    `epochs` epochs when given."""

    def __init__(self, minutes: float, epochs: int | None = None):
        self.seconds, self.epochs, self.start = minutes * 60.0, epochs, time.perf_counter()

    def spent(self, epochs_done: int) -> bool:
        over = time.perf_counter() - self.start >= self.seconds
        return over or (self.epochs is not None and epochs_done >= self.epochs)


def epoch_row(epoch: int, steps: int, train_seconds: float, epoch_seconds: float,
              **logs) -> dict:
    """One line of history.csv, with train.py's timing columns."""
    return {"epoch": epoch, **{k: float(v) for k, v in logs.items()}, "steps": steps,
            "train_seconds": train_seconds, "epoch_seconds": epoch_seconds}


def write_history(rows: list, path: Path) -> None:
    with atomic(path) as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def timings(rows: list) -> dict:
    """compare.network_timings' figures of one network: the first (tracing, warm-up) epoch is
    left out whenever a later one exists."""
    timed = rows[1:] or rows
    steps = sum(r["steps"] for r in timed)
    return {"epochs": [len(rows)],
            "seconds_per_epoch": float(np.mean([r["epoch_seconds"] for r in timed])),
            "seconds_per_step": float(sum(r["train_seconds"] for r in timed) / max(steps, 1))}


def write_record(run: Path, parameters: int, rows: list, **extra) -> None:
    """run/peer.json: what compare.py puts in the row besides its own measurements."""
    if not rows:
        raise PeerError(f"{run}: the training ran no epoch")
    with atomic(run / RECORD) as temporary:
        temporary.write_text(json.dumps({"parameters": int(parameters), **timings(rows),
                                         **extra}, indent=1))


# ---- writing predictions as predict.py does ----------------------------------------------------

def prediction_cases(input_folder: Path, output: Path) -> tuple:
    """(cases, codings): brats.find_cases of the input; each case's coding (its edition's, as
    predict.py --coding auto), recorded in output/codings.json for evaluate.py; PeerError for a
    BraTS-PED case, whose edition (and so coding) nothing states."""
    from brats.cases import find_cases
    from brats.codings import CodingError
    from util.portal import case_codings, record_codings

    cases = find_cases(input_folder)
    if not cases:
        raise PeerError(f"{input_folder}: no BraTS cases found")
    try:
        codings = case_codings(cases, "auto")
    except CodingError as error:
        raise PeerError(str(error)) from None
    output.mkdir(parents=True, exist_ok=True)
    record_codings(output, codings, set())
    return cases, codings


def write_case_labels(case, regions: np.ndarray, coding: str, output: Path) -> np.ndarray:
    """Region probabilities or 0/1 regions (X, Y, Z, 3) WT, TC, ET on the case's grid ->
    <output>/<case id>.nii.gz, uint8 labels in `coding` (nesting enforced, threshold 0.5)."""
    from brats.codings import recode
    from brats.codings import regions_to_labels
    from util.portal import write_labels

    labels = recode(regions_to_labels(regions), "brats2020", coding)
    write_labels(labels, case, output / f"{case.id}.nii.gz")
    return labels
