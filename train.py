"""Train the embedding network on a preprocess cache: one network per modality, as in the paper.

    python train.py --config configs/paper.yaml --data cache/brats2020 --modality flair --out runs/paper
    python train.py ... --modality all          # flair, t1, t1ce, t2 in turn
    python train.py ... --multimodal            # one network on the four modalities as channels
    python train.py ... --resume                # continue a run that was killed or ran out of disk
    python train.py ... --resume --repair       # ... past a damaged file, as its error line says

A baseline family (model.family kermi2018, unet3d_patches, bennaceur2020: configs/<name>.yaml,
families.py) trains one network, named after the family, on the four modalities; its examples are
drawn per case and shuffled over pools of cases (examples.py); --modality and --multimodal are
the EEN's:

    python train.py --config configs/kermi2018_small.yaml --data cache/small --out runs/kermi2018

A run folder holds everything predict.py needs: config.yaml (the resolved configuration),
split.json (training and validation case ids), and one folder per network with network.json (its
modalities), best.weights.h5 (best validation mean Dice), last.keras (with optimizer state),
state.json (epoch, learning rate, plateau counter), history.csv, progress.png and TensorBoard logs.

Any Keras backend (KERAS_BACKEND=tensorflow, the CPU default; jax, the GPU path; torch):

    python train.py ... --gpus 2                               # TF MirroredStrategy / JAX DataParallel
    KERAS_BACKEND=jax python train.py ... --coordinator host0:1234 --num-processes 2 --process-id 0

One GPU per modality: start one process per modality on the same --out, each with its own
CUDA_VISIBLE_DEVICES (docs/running.md, "Training on a GPU workstation"); networks live in separate
folders.
Each network folder holds train.lock while a process trains it, taken before config.yaml or
split.json is written: a second trainer refuses without touching the run's files.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import signal
import sys
from pathlib import Path

from util.tensorflow_start import prepare_tensorflow  # noqa: E402

prepare_tensorflow()  # before anything imports TensorFlow: oneDNN on, its start-up lines off

from brats.cases import MODALITIES  # noqa: E402
from datasets.cache import Cache, CacheError  # noqa: E402
from systems import families  # noqa: E402
from util.config import Config, ConfigError, load_config  # noqa: E402
from util.devices import Cluster, PlacementError, cpu_replica_environment, place  # noqa: E402
from util.outputs import check_folder, exits_cleanly, write_json  # noqa: E402
from util.resume import (RunError, check_checkpoint_agrees, continue_from_best,  # noqa: E402
                         loading_checkpoint, prepare_run, resumed_state, trim_history)
from util.runfolder import LAST, TrainingLock  # noqa: E402

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
MULTIMODAL = "multimodal"


# ---- input pipeline ---------------------------------------------------------------------------

def cache_sampler(cache: Cache, modalities: tuple):
    """case id -> (image float32 (H, W, D, C), regions uint8 (H, W, D, 3)) from the memory-mapped
    cache: the sampler of pipeline.CaseBatches."""
    def sample(case_id: str) -> tuple:
        return cache.image(case_id, modalities), cache.regions(case_id)
    return sample


def make_dataset(cache: Cache, ids: list, modalities: tuple, batch: int, seed: int = 0,
                 shuffle: bool = False, augment: bool = False, shard: tuple = (0, 1),
                 randomise: bool = False):
    """pipeline.CaseBatches of (image (b, H, W, D, C), regions (b, H, W, D, 3)) float32.

    batch is the global batch, b this process's share of it (shard). randomise: every training
    image seen through another acquisition (datasets.domain.jitter). Training (shuffle): each
    epoch's cases in pipeline.epoch_order, the epoch set by the callback epoch_callback() gives
    to fit, so a resumed run sees the same sequence as an uninterrupted one; the last incomplete
    batch is dropped. Validation: the cases once, in order.
    """
    from datasets.pipeline import CaseBatches

    return CaseBatches(cache_sampler(cache, modalities), ids, batch, seed, shuffle, augment, shard,
                       randomise=randomise)


def validation_ids(ids: list, replicas: int) -> list:
    """The held-out cases validated on: all of them on one replica; over several, a multiple of
    the replica count, since every replica needs a share of each batch (JAX splits the batch
    evenly; TensorFlow's MirroredStrategy handed a replica an empty share, and the step failed)."""
    return ids[:len(ids) // replicas * replicas]


# ---- one network -----------------------------------------------------------------------------

def callbacks(folder: Path, state: dict, config: Config, has_validation: bool, resume: bool,
              max_minutes: float | None = None) -> tuple:
    """(the callbacks of one network's training in the order they must run, its NanGuard).

    The EEN's schedule is Plateau (the paper's) or Cosine; a baseline's schedule is in its
    optimizer, its stopping and plateau rules are its family's callbacks.
    """
    from util import callbacks as cb

    guard = cb.NanGuard()
    plateau = None
    if config.model.family != "een":
        schedulers = families.family_of(config).callbacks(config)
    elif config.train.schedule == "plateau":
        plateau = cb.Plateau(state, monitor="loss", factor=config.train.plateau_factor,
                             patience=config.train.plateau_patience, verbose=1)
        schedulers = [plateau]
    else:
        schedulers = [cb.Cosine(config.train)]
    model = config.model
    decays = model.skip_dropout > 0 and model.skip_dropout_decay_epochs > 0
    chain = [guard, cb.MeanDice() if has_validation else None, *schedulers,
             cb.SkipDropoutDecay(model) if decays else None,
             cb.TimeBudget(folder.name, max_minutes) if max_minutes else None,
             cb.History(str(folder / "history.csv"), append=resume),
             cb.Checkpoints(folder, state, guard, plateau), cb.Progress(folder),
             cb.tensorboard(folder)]
    return [c for c in chain if c is not None], guard


def compiled_model(config: Config, jit: bool, resume_from: Path | None, learning_rate: float | None,
                   shared: dict | None = None):
    """A fresh compiled network, or the checkpoint to resume with its optimizer state.

    config.model.channels is the number of modalities this network reads. `shared` (channels ->
    (model, initial state)) lets the same-shaped networks of one process train on one compiled
    model: the next network restores the initial state instead of building and tracing again
    (about 40 s per network with the small config on 2 cores). The state is every variable of
    model and optimizer, the random generators' seeds included, so that each network trains
    exactly as it would alone in its own process (`--modality X`).
    """
    import keras

    import losses
    from model import build_model

    if resume_from is not None:
        with loading_checkpoint(resume_from):
            model = families.loaded_for_training(resume_from, jit)
        if learning_rate is not None:
            model.optimizer.learning_rate.assign(learning_rate)
        return model
    shared = {} if shared is None else shared
    if config.model.channels in shared:
        model, initial = shared[config.model.channels]
        for variable, value in zip(model.variables + model.optimizer.variables, initial):
            variable.assign(value)
        return model
    optimizer = {"nadam": keras.optimizers.Nadam, "adam": keras.optimizers.Adam}[config.train.optimizer]
    model = build_model(config)
    model.compile(optimizer=optimizer(config.train.learning_rate),
                  loss=losses.DiceCrossEntropy(config.model.output_activation,
                                               config.train.dice_per_channel),
                  metrics=losses.region_metrics(config.model.output_activation),
                  jit_compile=families.jit_setting(jit))
    families.ready_to_train(model)
    initial = [keras.ops.convert_to_numpy(v) for v in model.variables + model.optimizer.variables]
    shared[config.model.channels] = (model, initial)
    return model


def family_training(config: Config, cache: Cache, train_ids: list, val_ids: list,
                    modalities: tuple, batch: int, placement, jit: bool, resume_from: Path | None):
    """A baseline's (compiled model, training batches, validation batches or None).

    The batches come first: the optimizer's schedule needs the number of steps per epoch.
    """
    from datasets.examples import family_batches

    family = families.family_of(config)
    train_data = family_batches(family, cache, train_ids, modalities, batch, config, True,
                                placement.shard)
    val_data = family_batches(family, cache, val_ids, modalities, batch, config, False,
                              placement.shard) if val_ids else None
    for part, data in (("training", train_data), ("validation", val_data)):
        if data is not None and not len(data):
            raise RunError(f"the {part} cases give {sum(data.counts)} {family.name} examples, "
                           f"fewer than one global batch of {batch}")
    print(f"{family.name}: {sum(train_data.counts)} training examples ({len(train_data)} steps "
          f"an epoch), {sum(val_data.counts) if val_data else 0} validation examples")
    with placement.scope(), loading_checkpoint(resume_from):
        model = families.compiled(config, len(train_data), jit, resume_from)
    return model, train_data, val_data


def train_network(out: Path, name: str, modalities: tuple, config: Config, cache: Cache,
                  split: dict, args, placement, shared: dict) -> int:
    """Train (or resume) one network; returns 0, or 1 when the loss became NaN."""
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    state, from_best = resumed_state(folder, modalities, args.resume, args.repair)
    write_json(folder / "network.json", {"modalities": list(modalities)})
    resume_from = folder / LAST if state and not from_best else None
    start = state.get("epochs_done", 0)
    if start:
        trim_history(folder / "history.csv", start)
    if start >= config.train.epochs:
        print(f"{name}: already trained for {start} epochs of {config.train.epochs}")
        return 0
    batch = config.train.batch_size * placement.replicas
    network_config = dataclasses.replace(
        config, model=dataclasses.replace(config.model, channels=len(modalities)))
    train_ids = split["train"]
    val_ids = (split["validation"] if config.model.family != "een"  # whole batches of examples
               else validation_ids(split["validation"], placement.replicas))
    if config.model.family != "een":
        model, train_data, val_data = family_training(
            network_config, cache, train_ids, val_ids, modalities, batch, placement, args.jit,
            resume_from)
    else:
        if len(train_ids) < batch:
            raise RunError(f"{len(train_ids)} training cases cannot fill one global batch "
                           f"of {batch}")
        with placement.scope():
            model = compiled_model(network_config, args.jit, resume_from,
                                   state.get("learning_rate"), shared)
        train_data = make_dataset(cache, train_ids, modalities, batch, config.train.seed, True,
                                  config.train.augment, placement.shard, config.train.randomise)
        val_data = make_dataset(cache, val_ids, modalities, batch,
                                shard=placement.shard) if val_ids else None
    if from_best:
        with placement.scope():
            continue_from_best(model, folder, state, len(train_data), config)
    elif resume_from is not None:
        check_checkpoint_agrees(model, state, len(train_data), folder, config, len(modalities),
                                args.precision)
    chain, guard = callbacks(folder, state, config, bool(val_ids), args.resume and start > 0,
                             args.max_minutes)
    left_out = len(split["validation"]) - len(val_ids)
    validated = f"{len(val_ids)} validation cases" + (
        f" ({left_out} left out: each replica validates an equal share)" if left_out else "")
    print(f"{name}: {len(train_ids)} training / {validated}, "
          f"epochs {start + 1}-{config.train.epochs}, global batch {batch} "
          f"on {placement.description}, {args.backend}, {args.precision}"
          + (", XLA" if args.jit and args.backend == "tensorflow" else ""))
    model.fit(train_data, epochs=config.train.epochs, initial_epoch=start,
              validation_data=val_data, callbacks=[train_data.epoch_callback(), *chain],
              verbose=args.verbose, shuffle=False)
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
    """name -> modalities: one per modality (--modality, default flair), or one on all four
    (--multimodal); a baseline family: one network named after it on all four."""
    family = config.model.family
    if family != "een":
        given = [option for option, value in (
            ("--modality", args.modality), ("--multimodal", args.multimodal),
            ("--augment", args.augment), ("--weights", args.weights)) if value]
        if given:
            raise RunError(f"{given[0]} applies to the EEN only; {family} ({args.config}) trains "
                           f"one network on the four modalities with its own sampler")
        return {family: tuple(config.data.modalities)}
    if args.multimodal:
        return {MULTIMODAL: tuple(config.data.modalities)}
    modality = args.modality or "flair"
    names = config.data.modalities if modality == "all" else (modality,)
    return {m: (m,) for m in names}


@exits_cleanly(ConfigError, CacheError, RunError, PlacementError)
def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--config", type=Path, default=Path("configs/paper.yaml"))
    parser.add_argument("--data", type=Path, required=True, help="cache written by preprocess.py")
    parser.add_argument("--out", type=Path, required=True, help="run folder")
    parser.add_argument("--modality", choices=(*MODALITIES, "all"),
                        help="the EEN network(s) to train (default flair)")
    parser.add_argument("--multimodal", action="store_true",
                        help="one network on the four modalities stacked as channels")
    parser.add_argument("--resume", action="store_true", help="continue from last.keras")
    parser.add_argument("--repair", action="store_true",
                        help="with --resume: continue past a damaged last.keras, best.weights.h5, "
                             "history.csv or split.json as its error line says")
    parser.add_argument("--epochs", type=int, help="override train.epochs")
    parser.add_argument("--seed", type=int, help="override train.seed (split, order, augmentation)")
    parser.add_argument("--max-minutes", type=float,
                        help="time budget per network: stop after the epoch that ends past it "
                             "(history.csv then also logs each epoch's steps and seconds)")
    parser.add_argument("--augment", action="store_true", help="random flips and intensity changes")
    parser.add_argument("--weights", help="override model.backbone_weights: imagenet, none, a file")
    parser.add_argument("--precision", default="float32", choices=PRECISIONS)
    parser.add_argument("--jit", action="store_true",
                        help="TensorFlow: compile the training step with XLA (JAX always does)")
    parser.add_argument("--gpus", type=int, default=1,
                        help="data-parallel over N GPUs of this host (TensorFlow MirroredStrategy, "
                             "JAX DataParallel)")
    parser.add_argument("--cpu-replicas", type=int, default=1,
                        help="the same over N CPU devices (tests the multi-GPU path)")
    cluster = parser.add_argument_group(
        "several processes (JAX only)", "one process per host, each with its own --process-id; "
        "unset options come from KERAS_DISTRIBUTION_JOB_ADDRESSES, KERAS_DISTRIBUTION_NUM_PROCESSES "
        "and KERAS_DISTRIBUTION_PROCESS_ID. Process 0 writes --out, process K writes OUT/processK")
    cluster.add_argument("--coordinator", help="HOST:PORT of process 0")
    cluster.add_argument("--num-processes", type=int, help="how many processes in all")
    cluster.add_argument("--process-id", type=int, help="this process, 0 ... N-1")
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
    cpu_replica_environment(args.cpu_replicas)
    import keras

    args.backend = keras.backend.backend()
    keras.mixed_precision.set_global_policy(args.precision)
    keras.utils.set_random_seed(config.train.seed)
    placement = place(args.gpus, args.cpu_replicas,
                      Cluster(args.coordinator, args.num_processes, args.process_id))
    out = args.out / f"process{placement.process}" if placement.process else args.out
    status, shared = 0, {}  # shared: one compiled model for the same-shaped networks
    check_folder(out)  # a file in the way or no permission: one line naming --out
    with contextlib.ExitStack() as held, terminated_as_exit():
        for name in networks:  # one trainer per network folder, from now until this one ends,
            held.enter_context(TrainingLock(out / name))  # taken before anything is written
        held.callback(release_datasets, shared)
        split = prepare_run(out, config, cache, networks, args.resume, args.repair)
        for name, modalities in networks.items():
            status |= train_network(out, name, modalities, config, cache, split, args,
                                    placement, shared)
    return status


def release_datasets(shared: dict) -> None:
    """Free the models and the dataset iterators Keras keeps on them while Python still runs,
    after training or an error: under MirroredStrategy a multi-device iterator left to the
    interpreter's exit waits for its Python generator, which no longer runs, and a run that had
    failed hung at exit (seen for 10 minutes, until killed)."""
    import gc

    shared.clear()
    gc.collect()


@contextlib.contextmanager
def terminated_as_exit():
    """SIGTERM (kill, a scheduler's stop) ends the process as an exit, so that the locks are
    released like at any other end; the previous handler comes back afterwards."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda number, frame: sys.exit(128 + number))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
