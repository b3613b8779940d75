"""Benchmark evaluate.py's conventions side by side: seconds per 240x240x155 case.

    python bench/evaluation.py [--cases 4] [--repeats 2]

Writes synthetic cases in the BraTS 2023 layout (ground truth `-seg`, ET = 3) and predictions
that a network might give (the truth moved 2 voxels, ET partly lost, 40 stray specks of 1-60
voxels as false positives), then times evaluate.score_case (read both files, recognise codings,
score three regions) for brats2020 and for lesion-wise conventions, alternating in one run.
Target: <= 2 s per case for a lesion-wise convention on 2 cores.
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import evaluate  # noqa: E402
import synthetic  # noqa: E402
from brats.cases import find_label_files  # noqa: E402

CONVENTIONS = ("brats2020", "brats2023-gli", "brats2023-met", "brats2024-ped")


def network_like(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """BraTS 2020 labels moved, with part of the ET turned necrotic and stray specks added."""
    prediction = np.roll(labels, 2, axis=0)
    et = prediction == 4
    prediction[et & (rng.random(labels.shape) < 0.2)] = 1
    for _ in range(40):
        corner = rng.integers(0, np.array(labels.shape) - 4)
        size = rng.integers(1, 5, size=3)
        prediction[tuple(slice(c, c + s) for c, s in zip(corner, size))] = rng.choice([1, 2, 4])
    return prediction


def write_cases(root: Path, count: int) -> tuple:
    truth_dir, prediction_dir = root / "gt", root / "pred"
    prediction_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for index in range(1, count + 1):
        labels = synthetic.make_case(0, index).labels
        cid = synthetic.case_id("brats2023", index, True)
        (truth_dir / cid).mkdir(parents=True)
        truth = synthetic.to_layout_coding(labels, "brats2023")
        nib.save(nib.Nifti1Image(truth, synthetic.BRATS_AFFINE),
                 str(truth_dir / cid / f"{cid}-seg.nii.gz"))
        nib.save(nib.Nifti1Image(network_like(labels, rng), synthetic.BRATS_AFFINE),
                 str(prediction_dir / f"{cid}.nii.gz"))
    return truth_dir, prediction_dir


def lesion_counts(rows: list, region: str) -> str:
    """'lesions,false positives' of one region summed over the cases."""
    lesions = sum(r[f"Num_TP_{region}"] + r[f"Num_FN_{region}"] for r in rows)
    return f"{lesions},{sum(r[f'Num_FP_{region}'] for r in rows)}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2, help="timed passes over the cases")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        truth_dir, prediction_dir = write_cases(Path(tmp), args.cases)
        truths = sorted(find_label_files(truth_dir).items())
        seconds, cpu = {c: [] for c in CONVENTIONS}, {c: [] for c in CONVENTIONS}
        lesions = {}
        for _ in range(args.repeats):
            for case_id, truth_file in truths:
                for convention in CONVENTIONS:
                    start, start_cpu = time.perf_counter(), time.process_time()
                    scored = evaluate.score_case(case_id, truth_file, prediction_dir,
                                                 evaluate.Scoring(convention))
                    seconds[convention].append(time.perf_counter() - start)
                    cpu[convention].append(time.process_time() - start_cpu)
                    lesions[convention, case_id] = scored.row
    print(f"{args.cases} cases of 240x240x155, {args.repeats} passes, {os.cpu_count()} cores, load "
          f"{os.getloadavg()[0]:.1f}; seconds per case (read both files + score), wall and CPU")
    base = np.median(seconds["brats2020"])
    print(f"{'convention':16s}{'median s':>10s}{'max s':>8s}{'cpu s':>8s}{'x brats2020':>13s}"
          "  lesions ET/WT/TC (TP+FN, FP)")
    for convention in CONVENTIONS:
        times = seconds[convention]
        median = np.median(times)
        line = (f"{convention:16s}{median:10.2f}{max(times):8.2f}{np.median(cpu[convention]):8.2f}"
                f"{median / base:13.2f}")
        if convention != "brats2020":
            rows = [lesions[convention, cid] for cid, _ in truths]
            line += "  " + " ".join(lesion_counts(rows, region) for region in ("ET", "WT", "TC"))
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
