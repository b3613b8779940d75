"""Learning-rate range test (Smith 2017) of a baseline trained with Adam: which rate to use.

    python lr_range.py --config configs/unet3d_patches_small.yaml --data cache/small --out lr.json
    python lr_range.py ... --write-config tuned.yaml    # the config with the chosen rate

From a fresh network, `--steps` Adam steps on the family's shuffled training batches (train.py's
split: the validation cases are never read), the rate growing geometrically from --low to --high.
The per-step loss is smoothed (exponential average 0.9, bias-corrected); the chosen rate is a tenth
of the rate at the smoothed minimum (the usual rule: an order of magnitude below where the loss
stops falling). --out gets rates, losses, smoothed losses and the chosen rate (JSON).
Only the 3D U-Net is trained with Adam among the baselines (unet3d_patches.learning_rate).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from util.tensorflow_start import prepare_tensorflow  # noqa: E402

prepare_tensorflow()  # before anything imports TensorFlow: oneDNN on, its start-up lines off

import numpy as np  # noqa: E402

from util.config import ConfigError, load_config, save_config  # noqa: E402
from datasets.cache import Cache, CacheError  # noqa: E402
from util.outputs import atomic, exits_cleanly  # noqa: E402
from util.resume import RunError, split_cases  # noqa: E402

ADAM_FAMILIES = ("unet3d_patches",)  # families whose section's learning_rate is an Adam rate


class RangeError(ValueError):
    """A range test that cannot run or gives no rate; str() is one line."""


def rates(low: float, high: float, steps: int) -> np.ndarray:
    """The geometric sweep: steps rates from low to high."""
    return low * (high / low) ** (np.arange(steps) / max(steps - 1, 1))


def smoothed(losses: list, beta: float = 0.9) -> np.ndarray:
    """Bias-corrected exponential moving average of the per-step losses."""
    average, out = 0.0, []
    for step, loss in enumerate(losses, start=1):
        average = beta * average + (1 - beta) * loss
        out.append(average / (1 - beta ** step))
    return np.array(out)


def chosen_rate(swept: np.ndarray, losses: list) -> float:
    """A tenth of the rate at the smoothed loss's minimum (non-finite losses end the sweep)."""
    finite = np.isfinite(losses)
    last = int(np.argmin(finite)) if not finite.all() else len(losses)
    if last == 0:
        raise RangeError("the range test's first loss is not finite")
    curve = smoothed(list(losses[:last]))
    return float(swept[int(np.argmin(curve))] / 10)


def range_test(config, cache: Cache, steps: int, low: float, high: float) -> dict:
    """Sweep Adam's rate over `steps` batches of the family's training examples; the record."""
    import keras

    from systems import families
    from brats.cases import MODALITIES
    from datasets.examples import family_batches

    train = config.train
    ids = split_cases(cache.labelled_ids(), train.validation_fraction, train.seed)["train"]
    keras.utils.set_random_seed(train.seed)
    family = families.family_of(config)
    batches = family_batches(family, cache, ids, MODALITIES, train.batch_size, config, True)
    swept = rates(low, high, steps)
    optimizer = keras.optimizers.Adam(float(swept[0]))
    network = family.build(config)
    network.compile(optimizer=optimizer, loss=family.loss(config))
    families.ready_to_train(network)
    losses = []
    while len(losses) < steps:
        batches.set_epoch(len(losses) // max(len(batches), 1))
        for index in range(len(batches)):
            if len(losses) == steps:
                break
            optimizer.learning_rate = float(swept[len(losses)])
            x, y = batches[index]
            losses.append(float(network.train_on_batch(x, y)))
            if not np.isfinite(losses[-1]):
                break
        if losses and not np.isfinite(losses[-1]):
            break
    swept = swept[:len(losses)]
    return {"family": family.name, "steps": len(losses), "batch_size": train.batch_size,
            "rates": swept.tolist(), "losses": losses,
            "smoothed": smoothed([v for v in losses if np.isfinite(v)]).tolist(),
            "chosen": chosen_rate(swept, np.array(losses))}


@exits_cleanly(ConfigError, CacheError, RangeError, RunError)
def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="cache written by preprocess.py")
    parser.add_argument("--out", type=Path, required=True, help="JSON record of the sweep")
    parser.add_argument("--write-config", type=Path, help="the config with the chosen rate")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--low", type=float, default=1e-6)
    parser.add_argument("--high", type=float, default=1e-1)
    args = parser.parse_args(argv)
    if args.steps < 2 or not 0 < args.low < args.high:
        raise RangeError(f"need --steps >= 2 and 0 < --low < --high (got {args.steps}, "
                         f"{args.low:g}, {args.high:g})")
    config = load_config(args.config)
    family = config.model.family
    if family not in ADAM_FAMILIES:
        raise ConfigError(f"{args.config}: the range test sweeps an Adam rate; {family} is not "
                          f"trained with Adam (these are: {', '.join(ADAM_FAMILIES)})")
    cache = Cache(args.data)
    cache.check(tuple(config.data.modalities), tuple(config.data.crop_size))
    record = range_test(config, cache, args.steps, args.low, args.high)
    with atomic(args.out) as temporary:
        temporary.write_text(json.dumps(record, indent=1))
    print(f"{family}: range test over {record['steps']} steps, rate {args.low:g} -> "
          f"{args.high:g}: chosen learning rate {record['chosen']:.3g}")
    if args.write_config:
        section = dataclasses.replace(getattr(config, family), learning_rate=record["chosen"])
        tuned = dataclasses.replace(config, name=f"{config.name}_tuned", **{family: section})
        with atomic(args.write_config) as temporary:
            save_config(tuned, temporary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
