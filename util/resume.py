"""A run folder made or checked for training, and a network continued in it (train.py).

    split = prepare_run(out, config, cache, networks, resume, repair)   # config.yaml, split.json
    state, from_best = resumed_state(out / "flair", ("flair",), resume, repair)

Every damaged or foreign file is refused in one line that says what to do; with --repair a
network continues past it where that is safe (from best.weights.h5, without a damaged
best.weights.h5, with a new history.csv, with split.json written again), each time saying so.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np

from util.config import Config, save_config
from util.outputs import atomic, check_folder, write_json
from util.runfolder import (BEST, LAST, RESTORE, RunFileError, checkpoint_problem, history_rows,
                            loading, read_config, read_network, read_split, read_state,
                            refusal)


class RunError(ValueError):
    """A run that cannot start; str() is one line."""


def split_cases(ids: list, fraction: float, seed: int) -> dict:
    """Shuffle labelled case ids with `seed` and hold out `fraction` of them (at least one)."""
    if len(ids) < 2:
        raise RunError(f"need at least 2 labelled cases to train and validate, the cache has {len(ids)}")
    order = np.random.default_rng(seed).permutation(sorted(ids)).tolist()
    held_out = max(1, round(len(ids) * fraction)) if fraction > 0 else 0
    return {"train": sorted(order[held_out:]), "validation": sorted(order[:held_out])}


def prepare_run(out: Path, config: Config, cache, networks: dict, resume: bool,
                repair: bool = False) -> dict:
    """Create or check the run folder for `cache` (a datasets.cache.Cache); returns the split.
    Refuses a folder holding another run, or a damaged config.yaml or split.json (--repair writes
    split.json again from the cache)."""
    config_file, split_file = out / "config.yaml", out / "split.json"
    split = split_cases(cache.labelled_ids(), config.train.validation_fraction, config.train.seed)
    split["cache"] = str(cache.root.resolve())
    if resume and not config_file.exists() and any((out / n / "state.json").exists()
                                                   for n in networks):
        raise refusal(config_file, "missing beside trained networks")
    if config_file.exists():
        saved = read_config(out)
        saved.train.epochs = config.train.epochs  # a run may be extended by more epochs
        if saved.to_dict() != config.to_dict():
            changed = [k for k in ("data", "model", "train")
                       if getattr(saved, k) != getattr(config, k)]
            raise RunError(f"{out} holds a different run (its config.yaml differs in "
                           f"{', '.join(changed) or 'name'}); choose another --out")
        saved_split = saved_or_repaired_split(out, split, repair)
        if {k: saved_split.get(k) for k in ("train", "validation")} != \
                {k: split[k] for k in ("train", "validation")}:
            raise RunError(f"{out} holds a run with another train/validation split "
                           f"(different cache or seed); choose another --out")
        split = saved_split
    for name in networks:  # with --resume, a network without state.json starts at epoch 1
        if (out / name / "state.json").exists() and not resume:
            raise RunError(f"{out / name} already holds a trained network; use --resume to "
                           f"continue it or another --out")
    check_folder(out)
    with atomic(config_file) as temporary:
        save_config(config, temporary)
    if not split_file.exists():
        write_json(split_file, split)
    return split


def saved_or_repaired_split(out: Path, split: dict, repair: bool) -> dict:
    """The run's split.json; a damaged or missing one is refused, or with --repair replaced by
    `split` (the split of --data and the seed: right for the cache the run was trained on)."""
    try:
        return read_split(out, f"{RESTORE}, or write it again from --data and the seed with "
                               f"--resume --repair (only if --data is the run's cache)")
    except RunFileError:
        if not repair:
            raise
    print(f"note: {out / 'split.json'}: written again from {split['cache']} and the seed")
    write_json(out / "split.json", split)
    return split


def trim_history(path: Path, epochs: int) -> None:
    """Keep the header and the first `epochs` rows of history.csv.

    Rows past the last complete checkpoint (written before a full disk stopped the checkpoint of
    their epoch) are dropped: the resumed run trains those epochs again.
    """
    lines = path.read_text().splitlines(keepends=True) if path.is_file() else []
    if len(lines) > epochs + 1:
        with atomic(path) as temporary:
            temporary.write_text("".join(lines[:epochs + 1]))


def loading_checkpoint(path: Path | None):
    """Around loading last.keras (nothing when `path` is None): a failure is one line."""
    if path is None:
        return contextlib.nullcontext()
    return loading(path, f"{RESTORE}, or delete {path.parent} to train this network afresh")


def resumed_state(folder: Path, modalities: tuple, resume: bool, repair: bool) -> tuple:
    """(state, from_best): the state a network continues from ({} for a fresh start) and whether
    its weights come from best.weights.h5 instead of last.keras.

    network.json must name `modalities`. With --resume, state.json, last.keras, best.weights.h5
    and history.csv must be whole (a network stopped in its first epoch has none and starts
    again); --repair continues past a damaged checkpoint or history as the refusal says.
    """
    if (folder / "network.json").exists() and read_network(folder) != tuple(modalities):
        raise refusal(folder / "network.json", f"names {', '.join(read_network(folder))}, this "
                      f"training reads {', '.join(modalities)}", f"{RESTORE}, or another --out")
    if not resume:
        return {}, False
    afresh = f"delete {folder} to train this network afresh"
    if not (folder / "state.json").exists():
        if (folder / LAST).exists() or (folder / BEST).exists():
            raise refusal(folder / "state.json", "missing beside the checkpoints",
                          f"{RESTORE}, or {afresh}")
        return {}, False
    state = read_state(folder, f"{RESTORE}, or {afresh}")
    last, best = checkpoint_problem(folder / LAST), checkpoint_problem(folder / BEST)
    from_best = bool(last)
    if last:
        if best or not state.get("best_epoch"):
            raise refusal(folder / LAST, last, f"{RESTORE}, or {afresh}")
        repaired(repair, folder / LAST, last, f"continue from best.weights.h5 (epoch "
                 f"{state['best_epoch']}) with --resume --repair: the later epochs are trained "
                 f"again, the optimizer's moments restart")
        state = {**state, "epochs_done": state["best_epoch"]}
    elif best and state.get("best_epoch"):
        repaired(repair, folder / BEST, best, "continue without it with --resume --repair: the "
                 "best of the epochs still to come becomes best.weights.h5")
        state = {k: v for k, v in state.items() if k not in ("best_epoch", "best_score")}
    history = folder / "history.csv"
    rows = len(history_rows(history))
    if rows < state["epochs_done"]:
        problem = (f"damaged ({rows} complete rows for {state['epochs_done']} epochs)"
                   if history.exists() else "missing")
        repaired(repair, history, problem, f"continue with --resume --repair, keeping it as "
                 f"history.csv.damaged and starting a new one at epoch {state['epochs_done'] + 1}")
        if history.exists():
            os.replace(history, history.with_name("history.csv.damaged"))
    return state, from_best


def repaired(repair: bool, path: Path, problem: str, how: str) -> None:
    """Refuse a damaged file with what to do, or (--repair) say that it is repaired as `how`."""
    if not repair:
        raise refusal(path, problem, f"{RESTORE}, or {how}")
    print(f"note: {path}: {problem}; --repair: {how.replace(' with --resume --repair', '')}")


def check_checkpoint_agrees(model, state: dict, steps: int, folder: Path, config: Config,
                            channels: int, precision: str) -> None:
    """last.keras must fit the run (input shape) and state.json (optimizer steps = epochs done x
    steps per epoch): else they come from another run or training."""
    import keras

    afresh = f"restore both from one copy of the run, or delete {folder} to train it afresh"
    expected = (*config.data.crop_size, channels)
    if config.model.family == "een" and tuple(model.input_shape[1:]) != expected:
        raise refusal(folder / LAST, f"reads {model.input_shape[1:]}, the run's config "
                      f"{expected} (from another run?)", afresh)
    done = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
    if precision != "mixed_float16" and done != state["epochs_done"] * steps:  # fp16 skips steps
        raise refusal(folder / "state.json", f"says {state['epochs_done']} epoch(s) done "
                      f"({state['epochs_done'] * steps} steps), last.keras holds {done} steps "
                      f"(from another training?)", afresh)


def continue_from_best(model, folder: Path, state: dict, steps: int, config: Config) -> None:
    """--repair of a damaged last.keras: best.weights.h5 into the fresh model, the optimizer at
    the best epoch's step, with the learning rate state.json holds."""
    with loading(folder / BEST):
        model.load_weights(folder / BEST)
    model.optimizer.iterations.assign(state["epochs_done"] * steps)
    if config.model.family == "een":
        model.optimizer.learning_rate.assign(state["learning_rate"])
