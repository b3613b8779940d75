"""compare.py's side of a peer (System.peer names its tool, e.g. peers.nnunet): the same training
and prediction records as train.py's and predict.py's systems, each step in its own measured
process (util.measure), so that the row's peak memory is the system's.

    record = trained(name, system, paths, args)    # OUT/runs/<run>/training.json, or None
    record = predicted(name, system, paths)        # OUT/predictions/<name>/*.nii.gz, or None

A tool with a `prepare` step (nnU-Net's plan and preprocess) runs it first, in a process of its
own whose seconds are recorded as prepare_seconds, outside the training budget and the row's
figures (the other systems' preprocessing, the shared cache, is outside them too).
"""
from __future__ import annotations

import importlib
import importlib.util
import shutil
import sys
from pathlib import Path

from util.measure import measured
from util.outputs import write_json
from util.runfolder import read_json

PACKAGES = {"peers.nnunet": ("nnunetv2", "torch"), "peers.segresnet": ("monai", "torch")}


def missing(tool: str) -> str:
    """'' or which package the tool lacks, in words."""
    absent = [p for p in PACKAGES.get(tool, ()) if importlib.util.find_spec(p) is None]
    return (f"the {', '.join(absent)} package{'s' * (len(absent) > 1)} not installed (make setup: "
            f"requirements-dev.txt pins them)") if absent else ""


def last_error(log: Path) -> str:
    """The tool's own `error: ...` line in its log, for compare.py's one line."""
    try:
        lines = [line for line in log.read_text(errors="replace").splitlines()
                 if line.startswith("error: ")]
    except OSError:
        return ""
    return f" ({lines[-1][len('error: '):]})" if lines else ""


def step(name: str, tool: str, argv: list, log: Path) -> dict | None:
    """util.measure.measured(tool, argv); None after one error line when it failed."""
    result = measured(tool, [str(a) for a in argv], log)
    if result["status"] != 0:
        print(f"error: {name}: {tool} {argv[0]} failed (status {result['status']})"
              f"{last_error(log)}, see {log}; system skipped", file=sys.stderr)
        return None
    return result


def trained(name: str, system, paths: dict, args) -> dict | None:
    """Prepare (if the tool has that step) and train the peer's run unless training.json says it
    was; its record, with compare.trained's keys."""
    run = paths["runs"] / system.run
    done = run / "training.json"
    again = f"delete {run} to train the system again"
    if done.is_file():
        print(f"{name}: {run} already trained, kept")
        return read_json(done, {"train_seconds": (int, float), "epochs": list}, again)
    problem = missing(system.peer)
    if problem:
        print(f"error: {name}: {problem}; system skipped", file=sys.stderr)
        return None
    if run.exists():  # a training that did not finish: start afresh, with the whole budget
        shutil.rmtree(run)
    run.mkdir(parents=True)
    tool = importlib.import_module(system.peer)
    extra = {}
    if hasattr(tool, "prepare"):
        print(f"{name}: preparing ...", flush=True)
        prepared = step(name, system.peer, ["prepare", "--train", paths["train"], "--out", run],
                        paths["runs"] / f"{system.run}.prepare.log")
        if prepared is None:
            return None
        extra["prepare_seconds"] = prepared["seconds"]
    argv = ["train", "--out", run, "--max-minutes", f"{args.budget_minutes:.6g}"]
    if getattr(tool, "USES_CACHE", False):
        argv += ["--cache", paths["cache"]]
    if args.epochs:
        argv += ["--epochs", args.epochs]
    if args.quick:  # a smoke run: the tool's shorter epochs, if it has any
        argv += getattr(tool, "QUICK", [])
    print(f"{name}: training ({args.budget_minutes:g} min budget) ...", flush=True)
    result = step(name, system.peer, argv, paths["runs"] / f"{system.run}.train.log")
    if result is None:
        return None
    peer = read_json(run / "peer.json", {"parameters": int, "epochs": list}, again)
    record = {"train_seconds": result["seconds"], "train_peak_bytes": result["peak_bytes"],
              "budget_minutes": args.budget_minutes, **peer, **extra}
    write_json(done, record)
    return record


def predicted(name: str, system, paths: dict) -> dict | None:
    """The peer's predict step on the validation cases into OUT/predictions/<name> (afresh)."""
    output = paths["predictions"] / name
    if output.exists():
        shutil.rmtree(output)
    log = paths["predictions"] / f"{name}.predict.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    result = step(name, system.peer, ["predict", "--run", paths["runs"] / system.run,
                                      "--input", paths["validation"], "--output", output], log)
    if result is None:
        return None
    cases = len(list(output.glob("*.nii.gz")))
    return {"cases": cases, "predict_seconds": result["seconds"],
            "seconds_per_case": result["seconds"] / max(cases, 1),
            "predict_peak_bytes": result["peak_bytes"]}
