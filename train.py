"""Train the embedding network on a preprocess cache: one network per modality, as in the paper.

    python train.py --config configs/paper.yaml --data cache/brats2020 --modality flair --out runs/paper
    python train.py ... --modality all          # flair, t1, t1ce, t2 in turn
    python train.py ... --multimodal            # one network on the four modalities as channels
    python train.py ... --resume                # continue a run that was killed or ran out of disk

A run folder holds everything predict.py needs: config.yaml (the resolved configuration),
split.json (training and validation case ids), and one folder per network with network.json (its
modalities), best.weights.h5 (best validation mean Dice), last.keras (with optimizer state),
state.json (epoch, learning rate, plateau counter), history.csv, progress.png and TensorBoard logs.

One GPU per modality: start one process per modality on the same --out, each with its own
CUDA_VISIBLE_DEVICES (README, "Training on a GPU workstation"); networks live in separate folders.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from brats import MODALITIES  # noqa: E402
from config import Config, ConfigError, load_config, save_config  # noqa: E402
from data import Cache, CacheError  # noqa: E402
from outputs import atomic, check_folder, exits_cleanly, failure  # noqa: E402

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
MULTIMODAL = "multimodal"
BEST, LAST = "best.weights.h5", "last.keras"


class RunError(ValueError):
    """A run that cannot start; str() is one line."""


# ---- the run folder ---------------------------------------------------------------------------

def split_cases(ids: list, fraction: float, seed: int) -> dict:
    """Shuffle labelled case ids with `seed` and hold out `fraction` of them (at least one)."""
    if len(ids) < 2:
        raise RunError(f"need at least 2 labelled cases to train and validate, the cache has {len(ids)}")
    order = np.random.default_rng(seed).permutation(sorted(ids)).tolist()
    held_out = max(1, round(len(ids) * fraction)) if fraction > 0 else 0
    return {"train": sorted(order[held_out:]), "validation": sorted(order[:held_out])}


def write_json(path: Path, value) -> None:
    """Atomic JSON write (temporary name, then rename)."""
    with atomic(path) as temporary:
        temporary.write_text(json.dumps(value, indent=1))


def prepare_run(out: Path, config: Config, cache: Cache, networks: dict, resume: bool) -> dict:
    """Create or check the run folder; returns the split. Refuses a folder holding another run."""
    config_file, split_file = out / "config.yaml", out / "split.json"
    split = split_cases(cache.labelled_ids(), config.train.validation_fraction, config.train.seed)
    split["cache"] = str(cache.root.resolve())
    if config_file.exists():
        saved = load_config(config_file)
        saved.train.epochs = config.train.epochs  # a run may be extended by more epochs
        if saved.to_dict() != config.to_dict():
            changed = [k for k in ("data", "model", "train")
                       if getattr(saved, k) != getattr(config, k)]
            raise RunError(f"{out} holds a different run (its config.yaml differs in "
                           f"{', '.join(changed) or 'name'}); choose another --out")
        saved_split = json.loads(split_file.read_text()) if split_file.exists() else {}
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


# ---- input pipeline ---------------------------------------------------------------------------

def epoch_order(count: int, epoch: int, seed: int) -> np.ndarray:
    """The order of the training cases in `epoch`: a permutation fixed by (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(count)


def make_dataset(cache: Cache, ids: list, modalities: tuple, batch: int, seed: int = 0,
                 epochs: range | None = None, augment: bool = False):
    """tf.data of (image (B, H, W, D, C) float32, regions (B, H, W, D, 3) float32).

    Training (epochs given): the cases of every epoch in epoch_order, so a resumed run sees the
    same sequence as an uninterrupted one; parallel reads from the memory-mapped cache; prefetch.
    Validation (epochs None): the cases once, in order.
    """
    import tensorflow as tf

    if epochs is None:
        order = np.arange(len(ids))
    else:
        order = np.concatenate([epoch_order(len(ids), e, seed) for e in epochs])
    shape = cache.crop_size

    def read(index):
        case_id = ids[int(index)]
        return np.array(cache.image(case_id, modalities)), cache.regions(case_id)

    def load(index):
        image, regions = tf.numpy_function(read, [index], (tf.float32, tf.uint8))
        image.set_shape((*shape, len(modalities)))
        regions.set_shape((*shape, 3))
        return image, tf.cast(regions, tf.float32)

    positions = tf.data.Dataset.from_tensor_slices(order.astype(np.int64))
    data = positions.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if augment:
        data = data.enumerate().map(lambda step, pair: augment_pair(pair, [seed, step]),
                                    num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return data.batch(batch, drop_remainder=epochs is not None).prefetch(tf.data.AUTOTUNE)


def augment_pair(pair, seed):
    """Random flips along each axis and intensity scale (0.9-1.1) and shift (+-0.1 std)."""
    import tensorflow as tf

    image, regions = pair
    draws = tf.random.stateless_uniform([5], seed=tf.cast(seed, tf.int64))
    for axis in range(3):
        flip = draws[axis] < 0.5
        image = tf.cond(flip, lambda: tf.reverse(image, [axis]), lambda: image)
        regions = tf.cond(flip, lambda: tf.reverse(regions, [axis]), lambda: regions)
    image = image * (0.9 + 0.2 * draws[3]) + (draws[4] - 0.5) * 0.2
    return image, regions


# ---- callbacks --------------------------------------------------------------------------------

def callbacks(folder: Path, state: dict, config: Config, has_validation: bool, resume: bool):
    """The callbacks of one network's training, in the order they must run at an epoch's end."""
    import keras

    from figures import read_history, save, training_curves

    class NanGuard(keras.callbacks.Callback):
        """Stop at the first non-finite loss; the checkpoints then keep the last good epoch."""

        failed_at = None

        def on_train_batch_end(self, batch, logs=None):
            if logs and not math.isfinite(float(logs.get("loss", 0.0))):
                self.failed_at = (self.epoch, batch)
                self.model.stop_training = True

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

    class MeanDice(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            keys = [f"val_dice_{r}" for r in ("wt", "tc", "et")]
            if logs is not None and all(k in logs for k in keys):
                logs["val_dice_mean"] = float(np.mean([logs[k] for k in keys]))

    class Plateau(keras.callbacks.ReduceLROnPlateau):
        """ReduceLROnPlateau whose counter and best loss survive a resume."""

        def on_train_begin(self, logs=None):
            super().on_train_begin(logs)
            self.wait = state.get("plateau_wait", 0)
            self.best = state.get("plateau_best", self.best)

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
        """last.keras every epoch, best.weights.h5 on a better validation mean Dice, then state.json.

        The three are written under temporary names and renamed only when all are complete,
        state.json last, so state.json never names an epoch whose checkpoint is not fully written.
        """

        def on_epoch_end(self, epoch, logs=None):
            if guard.failed_at is not None:
                return
            logs = logs or {}
            score = logs.get("val_dice_mean", -logs.get("loss", np.inf))
            better = score > state.get("best_score", -np.inf)
            if better:
                state.update(best_score=float(score), best_epoch=epoch + 1)
            if scheduler is plateau:
                state.update(plateau_wait=int(plateau.wait), plateau_best=float(plateau.best))
            state.update(epochs_done=epoch + 1,
                         learning_rate=float(keras.ops.convert_to_numpy(
                             self.model.optimizer.learning_rate)))
            with atomic(folder / "state.json") as state_file:  # written first, renamed last
                state_file.write_text(json.dumps(state, indent=1))
                with atomic(folder / LAST) as last:
                    self.model.save(last)
                    if better:
                        with atomic(folder / BEST) as best:
                            self.model.save_weights(best)  # a third of last.keras: no optimizer

    class Progress(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            history = read_history(folder / "history.csv")
            save(training_curves(history, f"{folder.parent.name} / {folder.name}"),
                 folder / "progress.png")

    class Cosine(keras.callbacks.Callback):
        """train.schedule cosine: the learning rate of each epoch, a function of the epoch alone."""

        def on_epoch_begin(self, epoch, logs=None):
            self.model.optimizer.learning_rate.assign(cosine_rate(epoch, config.train))

    guard = NanGuard()
    plateau = Plateau(monitor="loss", factor=config.train.plateau_factor,
                      patience=config.train.plateau_patience, verbose=1)
    scheduler = plateau if config.train.schedule == "plateau" else Cosine()
    chain = [guard, MeanDice() if has_validation else None, scheduler,
             History(str(folder / "history.csv"), append=resume),
             Checkpoints(), Progress(),
             keras.callbacks.TensorBoard(str(folder / "tensorboard"), write_graph=False)]
    return [c for c in chain if c is not None], guard


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


def trim_history(path: Path, epochs: int) -> None:
    """Keep the header and the first `epochs` rows of history.csv.

    Rows past the last complete checkpoint (written before a full disk stopped the checkpoint of
    their epoch) are dropped: the resumed run trains those epochs again.
    """
    lines = path.read_text().splitlines(keepends=True) if path.is_file() else []
    if len(lines) > epochs + 1:
        with atomic(path) as temporary:
            temporary.write_text("".join(lines[:epochs + 1]))


# ---- one network ------------------------------------------------------------------------------

def distribution(gpus: int, cpu_replicas: int):
    """MirroredStrategy over N GPUs (or N logical CPUs, to test the path without a GPU)."""
    import tensorflow as tf

    if cpu_replicas > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * cpu_replicas)
        return tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(cpu_replicas)])
    if gpus > 1:
        found = tf.config.list_physical_devices("GPU")
        if len(found) < gpus:
            raise RunError(f"--gpus {gpus} asked, but TensorFlow sees {len(found)} GPU(s)")
        return tf.distribute.MirroredStrategy([f"/gpu:{i}" for i in range(gpus)])
    return tf.distribute.get_strategy()


def compiled_model(config: Config, jit: bool, resume_from: Path | None, learning_rate: float | None,
                   shared: dict | None = None):
    """A fresh compiled network, or the checkpoint to resume with its optimizer state.

    config.model.channels is the number of modalities this network reads. `shared` (channels ->
    (model, initial state)) lets the same-shaped networks of one process train on one compiled
    model: the next network restores the initial weights and optimizer state instead of building
    and tracing again (about 40 s per network with the small config on 2 cores). Every network
    therefore starts from the same initial weights.
    """
    import keras

    import losses
    from model import build_model

    if resume_from is not None:
        model = keras.saving.load_model(resume_from)
        if learning_rate is not None:
            model.optimizer.learning_rate.assign(learning_rate)
        return model
    shared = {} if shared is None else shared
    if config.model.channels in shared:
        model, (weights, optimizer_state) = shared[config.model.channels]
        model.set_weights(weights)
        for variable, value in zip(model.optimizer.variables, optimizer_state):
            variable.assign(value)
        return model
    optimizer = {"nadam": keras.optimizers.Nadam, "adam": keras.optimizers.Adam}[config.train.optimizer]
    model = build_model(config)
    model.compile(optimizer=optimizer(config.train.learning_rate),
                  loss=losses.DiceCrossEntropy(config.model.output_activation,
                                               config.train.dice_per_channel),
                  metrics=losses.region_metrics(config.model.output_activation),
                  jit_compile=jit)
    model.optimizer.build(model.trainable_variables)
    shared[config.model.channels] = (model, (model.get_weights(),
                                             [v.numpy() for v in model.optimizer.variables]))
    return model


def train_network(out: Path, name: str, modalities: tuple, config: Config, cache: Cache,
                  split: dict, args, strategy, shared: dict) -> int:
    """Train (or resume) one network; returns 0, or 1 when the loss became NaN."""
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "network.json", {"modalities": list(modalities)})
    state_file = folder / "state.json"
    state = json.loads(state_file.read_text()) if args.resume and state_file.exists() else {}
    start = state.get("epochs_done", 0)
    if start:
        trim_history(folder / "history.csv", start)
    if start >= config.train.epochs:
        print(f"{name}: already trained for {start} epochs of {config.train.epochs}")
        return 0
    batch = config.train.batch_size * strategy.num_replicas_in_sync
    network_config = dataclasses.replace(
        config, model=dataclasses.replace(config.model, channels=len(modalities)))
    with strategy.scope():
        model = compiled_model(network_config, args.jit, folder / "last.keras" if state else None,
                               state.get("learning_rate"), shared)
    train_ids, val_ids = split["train"], split["validation"]
    steps = max(1, len(train_ids) // batch)
    train_data = make_dataset(cache, train_ids, modalities, batch, config.train.seed,
                              range(start, config.train.epochs), config.train.augment)
    val_data = make_dataset(cache, val_ids, modalities, batch) if val_ids else None
    chain, guard = callbacks(folder, state, config, bool(val_ids), args.resume and start > 0)
    print(f"{name}: {len(train_ids)} training / {len(val_ids)} validation cases, "
          f"epochs {start + 1}-{config.train.epochs}, global batch {batch} "
          f"on {strategy.num_replicas_in_sync} replica(s), {args.precision}"
          + (", XLA" if args.jit else ""))
    model.fit(train_data, epochs=config.train.epochs, initial_epoch=start, steps_per_epoch=steps,
              validation_data=val_data, callbacks=chain, verbose=args.verbose, shuffle=False)
    if guard.failed_at is not None:
        epoch, step = guard.failed_at
        kept = f"{folder / 'last.keras'} (epoch {state['epochs_done']})" if state.get(
            "epochs_done") else "none (no epoch finished)"
        print(f"error: {name}: the loss became NaN at epoch {epoch + 1}, step {step + 1}; "
              f"training stopped. Last good checkpoint: {kept}", file=sys.stderr)
        return 1
    print(f"{name}: done; best epoch {state.get('best_epoch')} "
          f"(score {state.get('best_score', float('nan')):.4f}), checkpoints in {folder}")
    return 0


# ---- command line -----------------------------------------------------------------------------

def resolve_config(args) -> Config:
    config = load_config(args.config)
    if args.epochs is not None:
        config.train.epochs = args.epochs
    if args.seed is not None:
        config.train.seed = args.seed
    if args.augment:
        config.train.augment = True
    if args.weights is not None:
        config.model.backbone_weights = None if args.weights == "none" else args.weights
    return config


def networks_to_train(args, config: Config) -> dict:
    """name -> modalities: one per modality (--modality), or one on all four (--multimodal)."""
    if args.multimodal:
        return {MULTIMODAL: tuple(config.data.modalities)}
    names = config.data.modalities if args.modality == "all" else (args.modality,)
    return {m: (m,) for m in names}


@exits_cleanly(ConfigError, CacheError, RunError)
def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--config", type=Path, default=Path("configs/paper.yaml"))
    parser.add_argument("--data", type=Path, required=True, help="cache written by preprocess.py")
    parser.add_argument("--out", type=Path, required=True, help="run folder")
    parser.add_argument("--modality", default="flair", choices=(*MODALITIES, "all"))
    parser.add_argument("--multimodal", action="store_true",
                        help="one network on the four modalities stacked as channels")
    parser.add_argument("--resume", action="store_true", help="continue from last.keras")
    parser.add_argument("--epochs", type=int, help="override train.epochs")
    parser.add_argument("--seed", type=int, help="override train.seed (split, order, augmentation)")
    parser.add_argument("--augment", action="store_true", help="random flips and intensity changes")
    parser.add_argument("--weights", help="override model.backbone_weights: imagenet, none, a file")
    parser.add_argument("--precision", default="float32", choices=PRECISIONS)
    parser.add_argument("--jit", action="store_true", help="compile the training step with XLA")
    parser.add_argument("--gpus", type=int, default=1, help="MirroredStrategy over N GPUs")
    parser.add_argument("--cpu-replicas", type=int, default=1,
                        help="MirroredStrategy over N logical CPUs (tests the multi-GPU path)")
    parser.add_argument("--verbose", type=int, default=1, choices=(0, 1, 2),
                        help="Keras progress: 1 a bar per epoch (default), 2 a line, 0 none")
    args = parser.parse_args(argv)
    config = resolve_config(args)
    networks = networks_to_train(args, config)
    cache = Cache(args.data)
    needed = sorted({m for ms in networks.values() for m in ms})
    cache.check(tuple(needed), tuple(config.data.crop_size))
    if cache.settings.get("downsample", 1) != config.data.downsample:
        raise RunError(f"{args.data} was preprocessed with downsample "
                       f"{cache.settings.get('downsample', 1)}, the config asks for "
                       f"{config.data.downsample}")
    split = prepare_run(args.out, config, cache, networks, args.resume)
    if args.cpu_replicas > 1:
        # TF 2.21's oneDNN fused convolutions fail on logical CPU devices under MirroredStrategy
        # ("input and filter must have the same depth"); the plain kernels work.
        os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"
    import keras

    keras.mixed_precision.set_global_policy(args.precision)
    keras.utils.set_random_seed(config.train.seed)
    status, shared = 0, {}  # shared: one compiled model for the same-shaped networks
    strategy = distribution(args.gpus, args.cpu_replicas)
    for name, modalities in networks.items():
        status |= train_network(args.out, name, modalities, config, cache, split, args,
                                strategy, shared)
    return status


if __name__ == "__main__":
    sys.exit(main())
