"""The callbacks of one network's training, each named for what it does (train.py chains them).

At an epoch's end they must run in this order: NanGuard, MeanDice (val_dice_mean, which the
schedule and the checkpoints read), the schedule (Plateau or Cosine for the EEN, a baseline's
own), SkipDropoutDecay, TimeBudget, History (history.csv), Checkpoints (last.keras,
best.weights.h5, state.json), Progress (progress.png), TensorBoard.

`state` is the network's state.json as a dict, shared by Plateau (its counter and best loss
survive a resume) and Checkpoints (which writes it).
"""
from __future__ import annotations

import contextlib
import json
import math
import shutil
import time
import zipfile
from pathlib import Path

import keras
import numpy as np

from util.figures import read_history, save, training_curves
from util.outputs import PIECE, atomic, failure, in_pieces
from util.runfolder import BEST, LAST


class NanGuard(keras.callbacks.Callback):
    """Stop at the first non-finite loss; the checkpoints then keep the last good epoch.
    failed_at: (epoch, step), 0-based, or None."""

    failed_at = None

    def on_train_batch_end(self, batch, logs=None):
        if logs and not math.isfinite(float(logs.get("loss", 0.0))):
            self.failed_at = (self.epoch, batch)
            self.model.stop_training = True

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch


class TimeBudget(keras.callbacks.Callback):
    """--max-minutes: stop after the epoch that ends past the budget (counted from this network's
    start), and log each epoch's steps, train_seconds (its training steps) and epoch_seconds
    (validation included) into history.csv."""

    def __init__(self, name: str, max_minutes: float):
        super().__init__()
        self.name, self.max_minutes = name, max_minutes

    def on_train_begin(self, logs=None):
        self.start = time.perf_counter()

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_start = self.last_step = time.perf_counter()
        self.steps = 0

    def on_train_batch_end(self, batch, logs=None):
        self.last_step, self.steps = time.perf_counter(), batch + 1

    def on_epoch_end(self, epoch, logs=None):
        now = time.perf_counter()
        if logs is not None:
            logs.update(steps=self.steps, train_seconds=self.last_step - self.epoch_start,
                        epoch_seconds=now - self.epoch_start)
        if now - self.start >= 60 * self.max_minutes and not self.model.stop_training:
            self.model.stop_training = True
            print(f"{self.name}: time budget of {self.max_minutes:g} min spent after epoch "
                  f"{epoch + 1}; training stopped")


class MeanDice(keras.callbacks.Callback):
    """val_dice_mean: the mean of the validation Dice of WT, TC and ET."""

    def on_epoch_end(self, epoch, logs=None):
        keys = [f"val_dice_{r}" for r in ("wt", "tc", "et")]
        if logs is not None and all(k in logs for k in keys):
            logs["val_dice_mean"] = float(np.mean([logs[k] for k in keys]))


class Plateau(keras.callbacks.ReduceLROnPlateau):
    """The paper's schedule, ReduceLROnPlateau on the training loss, whose counter and best loss
    survive a resume (state's plateau_wait and plateau_best)."""

    def __init__(self, state: dict, **options):
        super().__init__(**options)
        self.state = state

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self.wait = self.state.get("plateau_wait", 0)
        self.best = self.state.get("plateau_best", self.best)


class Cosine(keras.callbacks.Callback):
    """train.schedule cosine: the learning rate of each epoch, a function of the epoch alone."""

    def __init__(self, train):
        super().__init__()
        self.train = train

    def on_epoch_begin(self, epoch, logs=None):
        self.model.optimizer.learning_rate.assign(cosine_rate(epoch, self.train))


class SkipDropoutDecay(keras.callbacks.Callback):
    """model.skip_dropout_decay_epochs: each epoch's skip-dropout rate (to skip_dropout_final)."""

    def __init__(self, model_config):
        super().__init__()
        self.model_config = model_config

    def on_epoch_begin(self, epoch, logs=None):
        self.model.get_layer("skip_dropout").current_rate.assign(
            skip_dropout_rate(epoch, self.model_config))


class History(keras.callbacks.CSVLogger):
    """history.csv, one row per epoch; a failed write (full disk) names the file."""

    def on_epoch_end(self, epoch, logs=None):
        try:
            super().on_epoch_end(epoch, logs)
        except OSError as error:
            with contextlib.suppress(OSError):  # closed now, not retried at exit
                self.csv_file.close()
            raise failure(self.filename, error) from None


class Checkpoints(keras.callbacks.Callback):
    """last.keras every epoch, best.weights.h5 on a better validation mean Dice (the training
    loss without validation), then state.json.

    The three are written under temporary names and renamed only when all are complete,
    state.json last, so state.json never names an epoch whose checkpoint is not fully written.
    Nothing is written once `guard` has seen a NaN loss.
    """

    def __init__(self, folder: Path, state: dict, guard: NanGuard, plateau: Plateau | None):
        super().__init__()
        self.folder, self.state, self.guard, self.plateau = folder, state, guard, plateau

    def on_epoch_end(self, epoch, logs=None):
        if self.guard.failed_at is not None:
            return
        logs, state = logs or {}, self.state
        score = logs.get("val_dice_mean", -logs.get("loss", np.inf))
        better = score > state.get("best_score", -np.inf)
        if better:
            state.update(best_score=float(score), best_epoch=epoch + 1)
        if self.plateau is not None:
            state.update(plateau_wait=int(self.plateau.wait),
                         plateau_best=float(self.plateau.best))
        state.update(epochs_done=epoch + 1, learning_rate=float(keras.ops.convert_to_numpy(
            self.model.optimizer.learning_rate)))
        with atomic(self.folder / "state.json") as state_file:  # written first, renamed last
            state_file.write_text(json.dumps(state, indent=1))
            with atomic(self.folder / LAST) as last:
                save_model(self.model, last)
                if better:
                    with atomic(self.folder / BEST) as best:
                        copy_weights(last, best)


def save_model(model, path: Path) -> None:
    """`model.save(path)`, the same .keras file, written in small pieces (util.outputs.PIECE):
    Keras writes the weights into the zip in one write() call, 2.5 s of system time for the small
    config's 164 MB on the test VMs instead of 0.9 s in all. Through saving_lib, since Keras's
    public save takes a file name, not a file (Keras is pinned in requirements.txt)."""
    from keras.src.saving import saving_lib

    with in_pieces(path) as handle:
        saving_lib.save_model(model, handle)


def copy_weights(keras_file: Path, path: Path) -> None:
    """best.weights.h5 from a .keras file: its model.weights.h5, the file `save_weights` would
    write (the same variables and optimizer slots, Keras 3), copied out rather than serialised a
    second time (0.1 s instead of 2 s)."""
    with zipfile.ZipFile(keras_file) as archive, archive.open("model.weights.h5") as weights, \
            open(path, "wb") as handle:
        shutil.copyfileobj(weights, handle, PIECE)


class Progress(keras.callbacks.Callback):
    """progress.png: the training curves so far, redrawn at each epoch's end."""

    def __init__(self, folder: Path):
        super().__init__()
        self.folder = folder

    def on_epoch_end(self, epoch, logs=None):
        history = read_history(self.folder / "history.csv")
        save(training_curves(history, f"{self.folder.parent.name} / {self.folder.name}"),
             self.folder / "progress.png")


def tensorboard(folder: Path):
    """TensorBoard logs, when TensorFlow is installed (Keras writes them with tf.summary; the
    JAX and PyTorch GPU machines may have no TensorFlow: then history.csv and progress.png only)."""
    import importlib.util

    if importlib.util.find_spec("tensorflow") is None:
        return None
    return keras.callbacks.TensorBoard(str(folder / "tensorboard"), write_graph=False)


def skip_dropout_rate(epoch: int, model) -> float:
    """The skip-dropout rate of a (0-based) epoch: model.skip_dropout, falling linearly to
    skip_dropout_final at epoch skip_dropout_decay_epochs (constant when that is 0)."""
    if not model.skip_dropout_decay_epochs:
        return model.skip_dropout
    left = max(0.0, 1 - epoch / model.skip_dropout_decay_epochs)
    return model.skip_dropout_final + (model.skip_dropout - model.skip_dropout_final) * left


def cosine_rate(epoch: int, train) -> float:
    """Linear warm-up over train.warmup_epochs, then cosine decay to 0 at train.epochs.

    For short budgets (the CPU demo): a high rate early, a small one at the end, so that the last
    epochs settle instead of jumping around (epoch counts from 0).
    """
    if epoch < train.warmup_epochs:
        return train.learning_rate * (epoch + 1) / (train.warmup_epochs + 1)
    span = max(train.epochs - train.warmup_epochs, 1)
    progress = (epoch - train.warmup_epochs + 0.5) / span
    return float(train.learning_rate * 0.5 * (1 + math.cos(math.pi * progress)))
