"""Per-region ensemble weights: how much each network of a run is trusted for WT, TC and ET.

    python ensemble.py --run runs/small                 # fit on the run's held-out cases
    python predict.py --run runs/small --ensemble fitted --input ... --output ...

The paper averages the four networks' sigmoid outputs with equal weights (`predict.py`'s default,
`--ensemble plain`). A single-modality network does not see every region equally well (enhancing
tumour is a T1ce finding), so this fits, per region, non-negative weights summing to 1 on a grid
of the simplex (step 0.1 by default) that maximise the mean hard Dice at threshold 0.5 on the
run's held-out cases (split.json's validation ids, read from the preprocess cache). Among equal
scores the weights closest to the plain average win, so without evidence nothing moves. The
weights are written to RUN/ensemble_weights.json; `predict.py --ensemble fitted` reads them.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

from util.tensorflow_start import prepare_tensorflow  # noqa: E402

prepare_tensorflow()  # before anything imports TensorFlow: oneDNN on, its start-up lines off

import numpy as np  # noqa: E402

from util.config import ConfigError  # noqa: E402
from datasets.cache import Cache, CacheError  # noqa: E402
from util.outputs import atomic, check_file, exits_cleanly  # noqa: E402
from systems.inference import REGIONS, WEIGHTS_FILE, combine, read_weights  # noqa: E402,F401
from util.runfolder import read_config, read_split  # noqa: E402



def simplex_grid(count: int, step: float) -> np.ndarray:
    """(N, count) every weight vector with entries multiple of `step`, summing to 1."""
    parts = round(1 / step)
    points = [c for c in itertools.product(range(parts + 1), repeat=count) if sum(c) == parts]
    return np.array(points, np.float64) / parts


def dice_per_case(probabilities: np.ndarray, truth: np.ndarray) -> float:
    """Hard Dice at 0.5 of one region: probabilities and truth (H, W, D); both empty -> 1."""
    predicted = probabilities > 0.5
    total = predicted.sum() + truth.sum()
    return 1.0 if total == 0 else float(2 * np.logical_and(predicted, truth).sum() / total)


def fit_weights(probabilities: dict, regions: list, step: float = 0.1) -> dict:
    """Per region, the weights of the networks maximising mean held-out Dice.

    probabilities: network name -> list over cases of (H, W, D, 3) region probabilities;
    regions: list over the same cases of (H, W, D, 3) true regions.
    Returns {"WT": {name: weight, ...}, "TC": ..., "ET": ...}.
    """
    names = list(probabilities)
    grid = simplex_grid(len(names), step)
    plain = np.full(len(names), 1 / len(names))
    fitted = {}
    for r, region in enumerate(REGIONS):
        stacks = [np.stack([probabilities[n][c][..., r] for n in names], axis=-1)
                  for c in range(len(regions))]
        truths = [regions[c][..., r] > 0 for c in range(len(regions))]
        scores = np.array([np.mean([dice_per_case(s @ w, t) for s, t in zip(stacks, truths)])
                           for w in grid])
        best = np.flatnonzero(scores >= scores.max() - 1e-9)
        chosen = grid[best[np.argmin(np.abs(grid[best] - plain).sum(axis=1))]]
        fitted[region] = {n: round(float(w), 6) for n, w in zip(names, chosen)}
    return fitted


def held_out_probabilities(run: Path, data: Path | None) -> tuple:
    """(network name -> list of (H, W, D, 3) probabilities, list of true regions) on the run's
    held-out cases, every network at its best weights."""
    import keras

    from systems.networks import load_network, network_files

    config = read_config(run)
    split = read_split(run)
    if not split["validation"]:
        raise ConfigError(f"{run}: the run has no held-out cases (train.validation_fraction 0)")
    cache = Cache(data or split["cache"])
    regions = [cache.regions(c) for c in split["validation"]]
    probabilities, models = {}, {}
    for spec in network_files(run, None, None):
        network = load_network(*spec, config, "float32", models)
        model = network.activate()
        outputs = []
        for case_id in split["validation"]:
            volume = np.asarray(cache.image(case_id, network.modalities), np.float32)[None]
            outputs.append(np.asarray(model.predict_on_batch(volume), np.float32)[0])
        probabilities[network.name] = outputs
    keras.backend.clear_session()
    if config.model.output_activation != "sigmoid":
        raise ConfigError(f"{run}: per-region weights need sigmoid region outputs")
    return probabilities, regions


def mean_dice(probabilities: dict, regions: list, weights: dict | None) -> np.ndarray:
    """(3,) mean Dice over the cases of the ensemble with `weights` (None: plain)."""
    cases = range(len(regions))
    merged = [combine({n: p[c] for n, p in probabilities.items()}, weights) for c in cases]
    return np.array([[dice_per_case(merged[c][..., r], regions[c][..., r] > 0) for r in range(3)]
                     for c in cases]).mean(axis=0)


def format_report(weights: dict, plain: np.ndarray, fitted: np.ndarray) -> str:
    """A Markdown table of the weights, then held-out Dice of the plain and fitted ensembles."""
    names = list(weights["WT"])
    lines = ["| region | " + " | ".join(names) + " | plain Dice | fitted Dice |",
             "|" + "---|" * (len(names) + 3)]
    for r, region in enumerate(REGIONS):
        lines.append(f"| {region} | " + " | ".join(f"{weights[region][n]:.1f}" for n in names)
                     + f" | {plain[r]:.4f} | {fitted[r]:.4f} |")
    return "\n".join(lines)


@exits_cleanly(ConfigError, CacheError)
def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--run", type=Path, required=True, help="run folder written by train.py")
    parser.add_argument("--data", type=Path, help="preprocess cache (default: the run's own)")
    parser.add_argument("--step", type=float, default=0.1, help="grid step of the weights")
    args = parser.parse_args(argv)
    if not (args.run / "config.yaml").is_file() or not (args.run / "split.json").is_file():
        raise ConfigError(f"{args.run}: not a run folder (no config.yaml and split.json)")
    if not 0 < args.step <= 0.5 or abs(1 / args.step - round(1 / args.step)) > 1e-9:
        parser.error("--step must divide 1 (0.05, 0.1, 0.25, ...)")
    out = check_file(args.run / WEIGHTS_FILE)
    probabilities, regions = held_out_probabilities(args.run, args.data)
    weights = fit_weights(probabilities, regions, args.step)
    plain, fitted = mean_dice(probabilities, regions, None), mean_dice(probabilities, regions, weights)
    print(format_report(weights, plain, fitted))
    print(f"(fitted and scored on the same {len(regions)} held-out cases: an optimistic estimate)")
    record = {"weights": weights, "step": args.step, "cases": len(regions),
              "held_out_dice": {"plain": dict(zip(REGIONS, plain.round(4).tolist())),
                                "fitted": dict(zip(REGIONS, fitted.round(4).tolist()))}}
    with atomic(out) as temporary:
        temporary.write_text(json.dumps(record, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
