"""Benchmark prediction and evaluation on CPU: the four-network `paper` ensemble per case.

    python bench/prediction.py [--cases 2]

Builds a run folder with four `paper` networks (random weights; speed does not depend on them),
then in separate processes, so that each peak memory is its own: (a) the baseline, four float32
eager forward passes (`model(x)`, stock GroupNormalization: how the authors' code runs) on one
preprocessed case; (b) predict.py's path for whole cases (read, preprocess, four networks,
average, back to 240x240x155, write NIfTI) in float32 and in mixed bfloat16. Then evaluation
seconds per case (four metrics x three regions against a shifted ground truth).
Targets: inference <= 0.5x the baseline and <= 2.5 GB; evaluation <= 1 s per case.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness import peak_gb  # noqa: E402

MODALITIES = ("flair", "t1", "t1ce", "t2")


def make_run(root: Path) -> Path:
    import keras

    from util.config import load_config, save_config
    from model import build_model

    config = load_config(ROOT / "configs" / "paper.yaml")
    config.model.backbone_weights = None
    run = root / "run"
    run.mkdir()
    save_config(config, run / "config.yaml")
    model = build_model(config)
    for modality in MODALITIES:
        (run / modality).mkdir()
        (run / modality / "network.json").write_text(json.dumps({"modalities": [modality]}))
        model.save_weights(run / modality / "best.weights.h5")
        keras.utils.set_random_seed(len(modality))
    return run


def baseline(root: Path) -> dict:
    """Four eager float32 forward passes with the stock GroupNormalization on one case."""
    import numpy as np

    from brats.cases import find_cases, load_case
    from util.config import load_config
    from model import STOCK, build_model
    from datasets.volumes import preprocess_case

    config = load_config(root / "run" / "config.yaml")
    model = build_model(config, STOCK)  # random weights: same speed
    arrays, _ = preprocess_case(load_case(find_cases(root / "cases")[0]), (192, 160, 108))
    model(arrays["flair"][None, ..., None], training=False)  # warm-up
    start = time.perf_counter()
    for modality in MODALITIES:
        model(np.ascontiguousarray(arrays[modality][None, ..., None]), training=False)
    return {"seconds": time.perf_counter() - start, "peak_gb": peak_gb()}


def project(root: Path, precision: str) -> dict:
    """predict.py's per-case path; the first case warms up the compiled functions."""
    import argparse as ap
    import statistics

    import predict
    from systems.networks import load_network, network_files
    from util.config import load_config
    from brats.cases import find_cases

    run = root / "run"
    config = load_config(run / "config.yaml")
    models = {}
    networks = [load_network(*spec, config, precision, models)
                for spec in network_files(run, None, None)]
    options = ap.Namespace(tta=False, threshold=0.5, et_min_voxels=0, save_probabilities=False,
                           output=root / f"pred_{precision}")
    options.output.mkdir()
    times = []
    for files in find_cases(root / "cases"):
        start = time.perf_counter()
        predict.predict_case(files, networks, config, options)
        times.append(time.perf_counter() - start)
    return {"first": times[0], "seconds": statistics.median(times[1:] or times), "peak_gb": peak_gb()}


def run_worker(root: Path, what: str) -> dict:
    done = subprocess.run([sys.executable, __file__, "--worker", what, "--root", str(root)],
                          capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if done.returncode != 0:
        raise SystemExit(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def evaluation_seconds(root: Path) -> float:
    import nibabel as nib
    import numpy as np

    import evaluate
    import synthetic

    truth_dir, pred_dir = root / "gt", root / "shifted"
    pred_dir.mkdir()
    ids = []
    for path in sorted(truth_dir.glob("*/*_seg.nii.gz")):
        img = nib.load(path)
        shifted = np.roll(np.asanyarray(img.dataobj), 3, axis=0).astype(np.uint8)
        case_id = path.parent.name
        nib.save(nib.Nifti1Image(shifted, synthetic.BRATS_AFFINE), pred_dir / f"{case_id}.nii.gz")
        ids.append(case_id)
    start = time.perf_counter()
    results = evaluate.evaluate(pred_dir, truth_dir, progress=False)
    assert len(results) == len(ids) and not any(r.problem for r in results)
    return (time.perf_counter() - start) / len(ids)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=3, help="the first one is a warm-up")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        result = baseline(args.root) if args.worker == "baseline" else project(args.root, args.worker)
        print(json.dumps(result))
        return 0
    import synthetic

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        list(synthetic.write_dataset(root / "cases", args.cases, seed=0, validation=True,
                                     gt_dir=root / "gt", jobs=2))
        make_run(root)
        base = run_worker(root, "baseline")
        print(f"{'':46s}{'s/case':>8s}{'x base':>8s}{'peak GB':>9s}")
        print(f"{'baseline: 4 eager float32 forward passes':46s}{base['seconds']:8.2f}{1:8.2f}"
              f"{base['peak_gb']:9.2f}")
        for precision in ("float32", "mixed_bfloat16"):
            result = run_worker(root, precision)
            print(f"{'predict.py per case, ' + precision:46s}{result['seconds']:8.2f}"
                  f"{result['seconds'] / base['seconds']:8.2f}{result['peak_gb']:9.2f}"
                  f"   (first case, with warm-up: {result['first']:.1f} s)", flush=True)
        print(f"evaluation: {evaluation_seconds(root):.2f} s per case (target <= 1)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
