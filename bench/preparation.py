"""Benchmark prepare.py on a real patient: seconds per patient and per setting, against 5 minutes.

    python bench/preparation.py --patient ../shared/real/TCGA-FG-6692
    python bench/preparation.py --patient P --settings fast,fast+nocorrection

Runs prepare.py once per setting in one run, on the cores the machine has. A setting is an HD-BET
mode (fast: one network, no mirroring; accurate: five, mirrored), with +nocorrection for
--no-atlas-correction. Prints per setting the whole time, the seconds of each stage (from
prepare.json), the ratio to the target of 300 s per patient on 2 cores, and, where the atlas
correction ran, how far it moved each series: the displacement its rigid transform gives the
brain-mask voxels (mean and largest, mm), i.e. what --no-atlas-correction leaves out.
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
    starts = [(name, t) for name, t in marks if name.startswith(("Starting", "Checking"))]
    starts.append(("end", marks[-1][1]))
    return {name.replace("Starting ", "").replace("Checking optional ", ""): round(t_next - t, 1)
            for (name, t), (_, t_next) in zip(starts, starts[1:])}


def correction_mm(case: Path) -> dict:
    """Series -> (mean, largest) displacement in mm of the brain-mask voxels under brainles'
    atlas-correction transform of that series (identity: 0)."""
    import ants
    import nibabel as nib
    import numpy as np
    import pandas as pd

    mask = nib.load(case / "native" / "brain_mask.nii.gz")
    voxels = np.argwhere(np.asanyarray(mask.dataobj).reshape(mask.shape[:3]) > 0)[::50]
    world = nib.affines.apply_affine(mask.affine, voxels) * [-1, -1, 1]  # RAS -> ANTs' LPS
    points = pd.DataFrame(world, columns=["x", "y", "z"])
    moved = {}
    for matrix in sorted((case / "native" / "transforms").glob("*/*correct*.mat")):
        shifted = ants.apply_transforms_to_points(3, points, [str(matrix)]).to_numpy()
        distance = np.linalg.norm(shifted - world, axis=1)
        moved[matrix.parent.name] = (float(distance.mean()), float(distance.max()))
    return moved


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patient", type=Path, required=True, help="folder of one patient's series")
    parser.add_argument("--settings", default="fast,fast+nocorrection,accurate+nocorrection",
                        help="comma list of HD-BET mode (fast, accurate), +nocorrection for "
                             "--no-atlas-correction")
    parser.add_argument("--keep", type=Path, help="keep the prepared cases in this folder")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as temporary:
        root = args.keep or Path(temporary)
        patients = root / "patients"
        patients.mkdir(parents=True, exist_ok=True)
        if not (patients / args.patient.name).exists():
            (patients / args.patient.name).symlink_to(args.patient.resolve())
        for setting in args.settings.split(","):
            mode, _, correction = setting.partition("+")
            out = root / setting
            start = time.perf_counter()
            status = prepare.main(["--input", str(patients), "--out", str(out), "--hd-bet", mode,
                                   "--overwrite"] + (["--no-atlas-correction"] if correction
                                                     else []))
            seconds = time.perf_counter() - start
            if status != 0:
                print(f"error: prepare.py failed with {setting}", file=sys.stderr)
                return 1
            case = out / args.patient.name
            record = json.loads((case / "native" / "prepare.json").read_text())
            rows.append((setting, seconds, stage_seconds(record["stages_s"]), record["brain_ml"],
                         correction_mm(case)))
    print(f"\nprepare.py on {args.patient.name}, {os.cpu_count()} cores (target {TARGET_S} s "
          f"per patient on 2)")
    for setting, seconds, stages, brain, moved in rows:
        parts = ", ".join(f"{name} {s:.0f} s" for name, s in stages.items())
        print(f"  {setting:22s} {seconds:6.0f} s  ratio to target {seconds / TARGET_S:4.2f}  "
              f"brain {brain:.0f} ml  ({parts})")
        for series, (mean, largest) in moved.items():
            print(f"      atlas correction moved {series}: mean {mean:.2f} mm, largest "
                  f"{largest:.2f} mm")
    return 0

if __name__ == "__main__":
    sys.exit(main())
