"""Benchmark prepare.py on a real patient: seconds per patient, per HD-BET mode, against 5 minutes.

    flock /tmp/een-heavy.lock python bench/preparation.py --patient ../shared/real/TCGA-FG-6692
    python bench/preparation.py --patient P --modes fast          # only the fast mode

Runs prepare.py once per mode (fast: one HD-BET network, no mirroring; accurate: five, mirrored)
in one run, on the cores the machine has, and prints per mode the whole time, the time of each
stage (co-registration, atlas registration, brain extraction) from prepare.json, and the ratio
to the target of 300 s per patient on 2 cores.
"""
import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import prepare  # noqa: E402

TARGET_S = 300


def stage_seconds(stages: dict) -> dict:
    """Seconds spent in each stage, from the elapsed times prepare.json records at its starts."""
    marks = sorted(stages.items(), key=lambda item: item[1])
    starts = [(name, t) for name, t in marks if "Starting" in name] + [("end", marks[-1][1])]
    return {name.replace("Starting ", ""): round(t_next - t, 1)
            for (name, t), (_, t_next) in zip(starts, starts[1:])}


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patient", type=Path, required=True, help="folder of one patient's series")
    parser.add_argument("--modes", default="fast,accurate", help="HD-BET modes to time")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as root:
        patients = Path(root) / "patients"
        patients.mkdir()
        (patients / args.patient.name).symlink_to(args.patient.resolve())
        for mode in args.modes.split(","):
            out = Path(root) / mode
            start = time.perf_counter()
            status = prepare.main(["--input", str(patients), "--out", str(out), "--hd-bet", mode])
            seconds = time.perf_counter() - start
            if status != 0:
                print(f"error: prepare.py failed in {mode} mode", file=sys.stderr)
                return 1
            record = json.loads((out / args.patient.name / "native" / "prepare.json").read_text())
            rows.append((mode, seconds, stage_seconds(record["stages_s"]), record["brain_ml"]))
    print(f"\nprepare.py on {args.patient.name}, {os.cpu_count()} cores (target {TARGET_S} s "
          f"per patient on 2)")
    for mode, seconds, stages, brain in rows:
        parts = ", ".join(f"{name} {s:.0f} s" for name, s in stages.items())
        print(f"  {mode:9s} {seconds:6.0f} s  ratio to target {seconds / TARGET_S:4.2f}  "
              f"brain {brain:.0f} ml  ({parts})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
