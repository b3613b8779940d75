"""Train every system on the same synthetic cases with the same time budget, score them alike.

    python compare.py --out compare                       # all systems, 10 minutes each
    python compare.py --out compare --budget-minutes 5 --systems een,kermi2018
    python compare.py --out compare --quick               # a few minutes in all (smoke run)
    python compare.py --out compare --data demo/data --cache demo/cache   # reuse the demo's

Folders in, folders out. OUT/data: synthetic train, validation and validation_ground_truth (as
demo.py writes them; --data reuses one); OUT/cache: the training cases preprocessed for
configs/small.yaml (--cache reuses one); OUT/runs/<run>: one train.py run per system, in its own
process (so that peak memory is the system's), until --budget-minutes is spent or the system's
own early stopping ends it (train.py --max-minutes; the EEN ensemble splits the budget over its
four networks);
OUT/predictions/<system>: predict.py on the held-out validation cases, also in its own process;
OUT/results/<system>.csv (evaluate.py's portal layout) and <system>.json (the row). Then
OUT/compare.csv, compare.md and compare.png: Dice and HD95 per region (mean and std over the
cases), parameters, epochs, training seconds per step and per epoch, inference seconds per case
and peak memory, next to each system's published figures.

A system whose result is there is not trained or scored again; a training that did not finish is
started afresh. Ben naceur is trained once and predicted with and without its post-processings.
The peers nnunet and segresnet (nnU-Net v2, MONAI's SegResNet) run their own tools (peers/compare_rows.py)
in the same measured processes, into the same predictions and rows.
unet3d_patches_tuned first runs lr_range.py on the training cases (OUT/runs/<run>.lr_range.json)
and trains with the chosen Adam rate (OUT/runs/<run>.yaml). The table's note column says what a
row departs from, the chosen rate, and, for a row whose Dice WT stays below 0.6, the cause found
in an earlier run (said to be one) and what this run's predictions hold: voxels per region
against the truth, the healthy voxels marked, the false positives' share in tumour-free tiles
(scoring/diagnosis.py); a row that predicts a region in no case says so too (nnU-Net: with the
voxels of its own output files, before our conversion).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
from pathlib import Path

from util.tensorflow_start import prepare_tensorflow  # noqa: E402

prepare_tensorflow()  # before anything imports TensorFlow: oneDNN on, its start-up lines off

import numpy as np  # noqa: E402

from scoring import diagnosis  # noqa: E402
from scoring.comparison import chart, markdown, write_csv  # noqa: E402
from util.measure import measured  # noqa: E402
from util.outputs import atomic, check_folder, exits_cleanly, write_json  # noqa: E402
from util.runfolder import (RunFileError, read_config, read_history, read_json,  # noqa: E402
                            read_network)

HERE = Path(__file__).resolve().parent
REGIONS = ("ET", "WT", "TC")
# Epochs given to train.py when --epochs is not: the budget (or a system's own early stopping)
# ends the training, not the short epoch counts of the _small configs.
UNTIL_BUDGET = 100_000
RANGE_STEPS = (100, 20)  # steps of a learning-rate range test: a run, a --quick run


LEARNS = 0.6  # mean held-out Dice WT from which a row counts as learning


@dataclasses.dataclass(frozen=True)
class System:
    """One row of the table: a config trained as `run` with train.py options, predicted with
    predict.py options; `published` the figures its authors report; `note` what the row is,
    `unlearned` the cause found when its Dice WT stays below LEARNS (the table says so); with
    `lr_range` the learning rate is chosen by lr_range.py on the training cases first."""

    config: str
    run: str
    train: tuple = ()
    predict: tuple = ()
    networks: int = 1
    published: str = ""
    peer: str = ""  # a peer system's tool (peers/compare_rows.py runs it), instead of train/predict.py
    note: str = ""
    unlearned: str = "cause not investigated"
    lr_range: bool = False


SYSTEMS = {
    "een": System("configs/small.yaml", "een", ("--modality", "all"), networks=4,
                  published="BraTS 2020 validation Dice ET 0.654, WT 0.841, TC 0.680 "
                            "(ensemble of four, full size)"),
    "een_multimodal": System("configs/small.yaml", "een_multimodal", ("--multimodal",),
                             published="none (not in the paper)"),
    "kermi2018": System("configs/kermi2018_small.yaml", "kermi2018",
                        published="BraTS 2018 validation Dice ET 0.783, WT 0.868, TC 0.805",
                        note="rate /10 every training epoch, as published (whose epoch was "
                             "4,380 steps)"),
    "unet3d_patches": System("configs/unet3d_patches_small.yaml", "unet3d_patches",
                             published="patch-level validation Dice 0.7273 (MSD Task01; "
                                       "no ET/WT/TC figures)",
                             note="published Adam 1e-5",
                             unlearned="the published Adam 1e-5 is too slow here: its "
                                       "outputs barely move from the start, tumour almost "
                                       "everywhere (docs/findings.md, \"Why the 3D U-Net learned "
                                       "nothing\"); see unet3d_patches_tuned"),
    "unet3d_patches_tuned": System("configs/unet3d_patches_small.yaml", "unet3d_patches_tuned",
                                   published="none (a departure: the rate is chosen here)",
                                   note="Adam rate from a range test", lr_range=True,
                                   unlearned="it finds the tumour but marks about a tenth of "
                                             "the healthy brain as tumour: the published sampler "
                                             "trains only on sub-volumes with >= 5 % tumour, and "
                                             "the tumour-free tiles hold most false positives "
                                             "(docs/findings.md, \"Why the 3D U-Net learned "
                                             "nothing\")"),
    "bennaceur2020": System("configs/bennaceur2020_small.yaml", "bennaceur2020",
                            predict=("--postprocess", "both"),
                            published="none available"),
    "bennaceur2020_nopp": System("configs/bennaceur2020_small.yaml", "bennaceur2020",
                                 predict=("--postprocess", "none"),
                                 published="none available"),
    # the field's standard, on PyTorch (peers/): the real nnU-Net v2 and MONAI's SegResNet
    "nnunet": System("", "nnunet", peer="peers.nnunet",
                     published="BraTS 2020 test Dice ET 0.820, WT 0.890, TC 0.851 (Isensee et al. "
                               "2020, winner: ensemble of 25 region-based nnU-Nets, full size)"),
    "segresnet": System("", "segresnet", peer="peers.segresnet",
                        published="MONAI bundle brats_mri_segmentation: Dice ET 0.791, WT 0.903, "
                                  "TC 0.856 (BraTS 2018, 42 held-out training cases, full size)"),
}


class CompareError(ValueError):
    """A comparison that cannot start; str() is one line."""


# ---- one system -------------------------------------------------------------------------------

def network_timings(run: Path) -> dict:
    """Epochs, steps and seconds of a finished run, from each network's history.csv.

    The first epoch traces the model: it is left out of the per-epoch and per-step figures
    whenever a later epoch exists.
    """
    epochs, train_seconds, epoch_seconds, steps = [], [], [], []
    again = f"delete {run} to train the system again"
    for folder in sorted(p.parent for p in run.glob("*/network.json")):
        rows = read_history(folder / "history.csv", ("train_seconds", "epoch_seconds", "steps"),
                            again)
        epochs.append(len(rows))
        timed = rows[1:] or rows
        train_seconds += [float(r["train_seconds"]) for r in timed]
        epoch_seconds += [float(r["epoch_seconds"]) for r in timed]
        steps += [int(float(r["steps"])) for r in timed]
    return {"epochs": epochs,
            "seconds_per_epoch": float(np.mean(epoch_seconds)),
            "seconds_per_step": float(np.sum(train_seconds) / max(np.sum(steps), 1))}


def trained(name: str, system: System, paths: dict, args) -> dict | None:
    """Train the system's run unless OUT/runs/<run>/training.json says it was; its record."""
    run = paths["runs"] / system.run
    done = run / "training.json"
    if done.is_file():
        print(f"{name}: {run} already trained, kept")
        return read_json(done, {"train_seconds": (int, float), "epochs": list},
                         f"delete {run} to train the system again")
    if run.exists():  # a training that did not finish: start afresh, with the whole budget
        shutil.rmtree(run)
    run.parent.mkdir(parents=True, exist_ok=True)
    config, chosen = HERE / system.config, {}
    if system.lr_range:
        config, chosen = tuned(name, system, paths, args)
        if config is None:
            return None
    argv = ["--config", str(config), "--data", str(paths["cache"]), "--out", str(run),
            "--max-minutes", f"{args.budget_minutes / system.networks:.6g}", "--verbose", "2",
            *system.train, "--epochs", str(args.epochs or UNTIL_BUDGET)]
    print(f"{name}: training ({args.budget_minutes:g} min budget) ...", flush=True)
    result = measured("train", argv, paths["runs"] / f"{system.run}.train.log")
    if result["status"] != 0:
        print(f"error: {name}: train.py failed (status {result['status']}), see "
              f"{paths['runs'] / f'{system.run}.train.log'}; system skipped", file=sys.stderr)
        return None
    record = {"train_seconds": result["seconds"], "train_peak_bytes": result["peak_bytes"],
              "budget_minutes": args.budget_minutes, **network_timings(run),
              "parameters": parameters(run), **chosen}
    write_json(done, record)
    return record


def tuned(name: str, system: System, paths: dict, args) -> tuple:
    """lr_range.py on the training cases: (OUT/runs/<run>.yaml, which is the config with the
    chosen rate; the row's record of the choice), or (None, {}) when the range test failed."""
    runs = paths["runs"]
    config, record = runs / f"{system.run}.yaml", runs / f"{system.run}.lr_range.json"
    argv = ["--config", str(HERE / system.config), "--data", str(paths["cache"]),
            "--out", str(record), "--write-config", str(config),
            "--steps", str(RANGE_STEPS[bool(args.quick)])]
    print(f"{name}: learning-rate range test ...", flush=True)
    log = runs / f"{system.run}.lr_range.log"
    result = measured("lr_range", argv, log)
    if result["status"] != 0:
        print(f"error: {name}: lr_range.py failed (status {result['status']}), see {log}; "
              f"system skipped", file=sys.stderr)
        return None, {}
    sweep = read_json(record, {"chosen": float, "steps": int}, f"delete {record} and run again")
    return config, {"learning_rate": sweep["chosen"], "lr_range_steps": sweep["steps"],
                    "lr_range_seconds": result["seconds"]}


def parameters(run: Path) -> int:
    """Parameters of all the run's networks, each built from the run's config."""
    import keras

    from systems import families

    again = f"delete {run} to train the system again"
    config = read_config(run, again)
    channels = [len(read_network(d.parent, again)) for d in sorted(run.glob("*/network.json"))]
    counts = {}  # channels -> parameters of one network (the EEN's four share a shape)
    for number in set(channels):
        network = dataclasses.replace(config, model=dataclasses.replace(
            config.model, channels=number, backbone_weights=None))
        counts[number] = families.family_of(network).build(network).count_params()
        keras.backend.clear_session()
    return sum(counts[number] for number in channels)


def predicted(name: str, system: System, paths: dict) -> dict | None:
    """predict.py on the validation cases into OUT/predictions/<name> (afresh); its record."""
    output = paths["predictions"] / name
    if output.exists():
        shutil.rmtree(output)
    argv = ["--run", str(paths["runs"] / system.run), "--input", str(paths["validation"]),
            "--output", str(output), *system.predict]
    log = paths["predictions"] / f"{name}.predict.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    result = measured("predict", argv, log)
    if result["status"] != 0:
        print(f"error: {name}: predict.py failed (status {result['status']}), see {log}; "
              f"system skipped", file=sys.stderr)
        return None
    cases = len(list(output.glob("*.nii.gz")))
    return {"cases": cases, "predict_seconds": result["seconds"],
            "seconds_per_case": result["seconds"] / max(cases, 1),
            "predict_peak_bytes": result["peak_bytes"]}


def scores(name: str, paths: dict) -> dict:
    """evaluate.py's scores of the system's predictions: mean and std of Dice and HD95 per region;
    the portal CSV is written to OUT/results/<name>.csv."""
    import evaluate

    results = evaluate.evaluate(paths["predictions"] / name, paths["truth"], progress=False)
    summary = evaluate.statistics([r.row for r in results])
    evaluate.write_csv(results, summary, paths["results"] / f"{name}.csv")
    row = {"scored_cases": len(results)}
    for metric, column in (("Dice", "Dice"), ("HD95", "Hausdorff95")):
        for region in REGIONS:
            row[f"{metric}_{region}_mean"] = float(summary["Mean"][f"{column}_{region}"])
            row[f"{metric}_{region}_std"] = float(summary["StdDev"][f"{column}_{region}"])
    return row


def compared(name: str, paths: dict, args) -> dict | None:
    """The system's row: kept from OUT/results/<name>.json, else trained, predicted and scored."""
    done = paths["results"] / f"{name}.json"
    if done.is_file():
        print(f"{name}: result kept from {done}")
        return read_json(done, {"system": str, "scored_cases": int},
                         f"delete it to train and score {name} again")
    system = SYSTEMS[name]
    if system.peer:
        from peers import compare_rows as peer_rows
    training = (peer_rows.trained if system.peer else trained)(name, system, paths, args)
    if training is None:
        return None
    print(f"{name}: predicting {paths['validation']} ...", flush=True)
    prediction = (peer_rows.predicted if system.peer else predicted)(name, system, paths)
    if prediction is None:
        return None
    row = {"system": name, **training, **prediction, **scores(name, paths),
           "peak_bytes": max(training["train_peak_bytes"], prediction["predict_peak_bytes"]),
           "published": system.published, "measured": measured_figures(name, paths)}
    write_json(done, row)
    return row


def measured_figures(name: str, paths: dict) -> dict:
    """What the system's predictions hold (scoring/diagnosis.py); for nnU-Net also its own 3 mm
    output files' voxels per region, before our conversion (OUT/predictions/<name>.nnunet)."""
    from peers.nnunet_data import own_voxels

    own = paths["predictions"] / f"{name}.nnunet" / "output"
    return {**diagnosis.measure(paths["predictions"] / name, paths["truth"]),
            **({"own_output": own_voxels(own)} if own.is_dir() else {})}


# ---- data -------------------------------------------------------------------------------------

def prepared_data(args) -> dict:
    """The folders every system shares: synthetic cases (made or given) and their cache."""
    import demo
    import preprocess

    data = args.data or args.out / "data"
    if args.data is None:
        make = (4, 2) if args.quick else (args.train_cases, args.validation_cases)
        demo.make_data(data, *make, args.seed)
    paths = {"train": data / "train", "validation": data / "validation",
             "truth": data / "validation_ground_truth", "runs": args.out / "runs",
             "predictions": args.out / "predictions", "results": args.out / "results",
             "cache": args.cache or args.out / "cache"}
    for key in ("train", "validation", "truth"):
        if not paths[key].is_dir():
            raise CompareError(f"{paths[key]}: no such folder (--data needs train, validation "
                               f"and validation_ground_truth, as demo.py writes them)")
    if args.cache is None:
        status = preprocess.main([str(paths["train"]), str(paths["cache"]), "--config",
                                  str(HERE / "configs/small.yaml"), "--jobs", "2"])
        if status:
            raise CompareError(f"{paths['cache']}: preprocessing failed (status {status})")
    elif not paths["cache"].is_dir():
        raise CompareError(f"{paths['cache']}: no such cache folder")
    for key in ("runs", "predictions", "results"):
        check_folder(paths[key])
    return paths


# ---- the note column ------------------------------------------------------------------------

def note(row: dict) -> str:
    """What the row is (a range test's chosen rate too); below LEARNS, why it does not learn: the
    cause written from an earlier run, said to be one, and what this run's predictions hold
    (scoring/diagnosis.py), which is also given for a row that predicts a region in no case."""
    system = SYSTEMS.get(row["system"], System("", ""))
    parts = [system.note] if system.note else []
    if "learning_rate" in row:
        parts.append(f"rate {row['learning_rate']:.2g} chosen in {row['lr_range_steps']} steps "
                     f"({row['lr_range_seconds']:.0f} s, outside the budget)")
    unlearned = row["Dice_WT_mean"] < LEARNS
    if unlearned:
        cause = system.unlearned
        if cause != System.unlearned:
            cause += " (an earlier diagnosis, from another run)"
        parts.append(f"does not learn (Dice WT < {LEARNS:g}): {cause}")
    return "; ".join(parts + diagnosis.clauses(row.get("measured"), unlearned))


# ---- command line -----------------------------------------------------------------------------

def processor() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else the machine type."""
    import platform

    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.machine()


def chosen_systems(text: str) -> list:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in SYSTEMS]
    if unknown or not names:
        raise CompareError(f"--systems: unknown system {', '.join(unknown) or '(none)'} "
                           f"(known: {', '.join(SYSTEMS)})")
    return names


@exits_cleanly(CompareError, RunFileError)
def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--out", type=Path, default=Path("compare"),
                        help="folder for data, cache, runs, predictions, results and the table")
    parser.add_argument("--systems", default=",".join(SYSTEMS),
                        help=f"comma list (default all: {', '.join(SYSTEMS)})")
    parser.add_argument("--budget-minutes", type=float, default=10.0,
                        help="training time per system (default 10); each stops after the epoch "
                             "that ends past it, or earlier by its own early stopping")
    parser.add_argument("--epochs", type=int,
                        help="stop every system after this many epochs too (default: the budget "
                             "alone decides)")
    parser.add_argument("--quick", action="store_true",
                        help="4 training and 2 validation cases, 1 epoch, 0.5 min budget")
    parser.add_argument("--data", type=Path,
                        help="existing folder with train, validation, validation_ground_truth")
    parser.add_argument("--cache", type=Path, help="existing configs/small.yaml cache of --data")
    parser.add_argument("--train-cases", type=int, default=24)
    parser.add_argument("--validation-cases", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    names = chosen_systems(args.systems)
    if args.quick:
        args.epochs, args.budget_minutes = args.epochs or 1, min(args.budget_minutes, 0.5)
    if args.budget_minutes <= 0:
        raise CompareError(f"--budget-minutes must be positive, not {args.budget_minutes:g}")
    check_folder(args.out)
    # absolute: the tools run in this folder (its configs/), whatever the caller's
    args.out, args.data, args.cache = (p if p is None else p.resolve()
                                       for p in (args.out, args.data, args.cache))
    paths = prepared_data(args)
    rows = [row for row in (compared(name, paths, args) for name in names) if row is not None]
    rows = [{**row, "note": note(row)} for row in rows]
    if not rows:
        print("error: no system could be compared", file=sys.stderr)
        return 1
    caption = (f"`python compare.py {' '.join(argv if argv is not None else sys.argv[1:])}`: "
               f"{len(list(paths['train'].iterdir()))} training cases, {rows[0]['scored_cases']} "
               f"held-out cases; budget {rows[0]['budget_minutes']:g} min per system; "
               f"{os.cpu_count()} CPU cores ({processor()}). Dice and HD95 (mm): mean ± std "
               f"over the cases; s/step and s/epoch without the first (tracing) epoch when there "
               f"are more; s/case: the whole predict.py run over the cases; peak: the larger of "
               f"training's and prediction's processes.")
    write_csv(rows, args.out / "compare.csv")
    text = markdown(rows, caption)
    with atomic(args.out / "compare.md") as temporary:
        temporary.write_text(text)
    chart(rows, args.out / "compare.png", f"{len(rows)} systems, {rows[0]['scored_cases']} "
                                          f"held-out synthetic cases")
    print("\n" + text)
    print(f"wrote {args.out / 'compare.csv'}, compare.md, compare.png")
    return 0 if len(rows) == len(names) else 1


if __name__ == "__main__":
    sys.exit(main())
