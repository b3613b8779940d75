"""Benchmark the network at full size, batch 1: forward and training-step time and peak memory.

    python bench/model.py [--config configs/paper.yaml] [--repeats 2]
    python bench/model.py --config configs/paper.yaml --tasks train --rows f32,f32-remat
    python bench/model.py --config configs/full_multimodal.yaml --tasks forward --rows f32,bf16
    python bench/model.py --config configs/full_multimodal.yaml --tasks train --rows bf16-remat

Each row runs in its own process so that its peak memory is its own: max RSS (model and data
included) on a CPU, the GPU's peak allocation when the Keras backend runs on one (run under
KERAS_BACKEND=jax on a GPU machine for the JAX figures; the eager baseline row is TensorFlow's).
The baseline is how the authors' code runs: the same network in float32 with the stock
keras.layers.GroupNormalization, no XLA, called eagerly (`model(x)`; training with a
GradientTape). The other rows are this project's paths: the fast GroupNorm and a compiled step
(`predict_on_batch` / `train_on_batch`), in float32 or mixed bfloat16 (mixed_float16 is for
GPUs: add it with --precisions), XLA off and on, and the training step with the 3D residual
blocks rematerialised (model.remat_levels, --remat-levels; the other rows run without). Ratios are
against the first row of the same run (the baseline unless --rows leaves it out); the closing
line compares rematerialisation with the same precision without it.
Targets on 2 CPU cores: inference <= 0.5x and <= 2.5 GB, training step <= 0.8x and <= 7.7 GB;
rematerialised float32 training step <= 6 GB at <= 1.3x the float32 compiled step.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rows import device_name, peak_gb, run_row  # noqa: E402


def worker(args) -> dict:
    """Time one (variant, task) in this process and return its figures."""
    import keras
    import numpy as np

    keras.mixed_precision.set_global_policy(args.precision)
    import losses
    from config import load_config
    from model import build_model

    config = load_config(args.config)
    config.model.backbone_weights = None
    config.model.remat_levels = tuple(int(level) for level in args.remat.split(",") if level)
    baseline = args.variant == "baseline"
    model = build_model(config, norm=keras.layers.GroupNormalization) if baseline else build_model(config)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, *config.data.crop_size, config.model.channels)).astype("float32")
    y = (rng.random((1, *config.data.crop_size, config.model.output_channels)) > 0.9).astype("float32")
    loss = losses.DiceCrossEntropy(config.model.output_activation)
    optimizer = keras.optimizers.Nadam(config.train.learning_rate)
    if args.task == "forward" and baseline:
        step = lambda: model(x, training=False)  # noqa: E731
    elif args.task == "forward":
        model.compile(jit_compile=args.xla)
        step = lambda: model.predict_on_batch(x)  # noqa: E731
    elif baseline:
        import tensorflow as tf

        def step():
            with tf.GradientTape() as tape:
                value = loss(y, model(x, training=True))
            grads = tape.gradient(value, model.trainable_weights)
            optimizer.apply(grads, model.trainable_weights)
    else:
        model.compile(optimizer=optimizer, loss=loss, jit_compile=args.xla)
        step = lambda: model.train_on_batch(x, y)  # noqa: E731
    start = time.perf_counter()
    step()  # first call traces / compiles
    first = time.perf_counter() - start
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {"seconds": min(times), "first_call": first, "peak_gb": peak_gb(),
            "device": device_name()}


VARIANTS = {  # key: (row name, variant, precision, xla, rematerialised)
    "eager": ("baseline: float32, eager, stock GN", "baseline", "float32", False, False),
    "f32": ("float32, compiled", "project", "float32", False, False),
    "f32-xla": ("float32, compiled, XLA", "project", "float32", True, False),
    "bf16": ("mixed_bfloat16, compiled", "project", "mixed_bfloat16", False, False),
    "bf16-xla": ("mixed_bfloat16, compiled, XLA", "project", "mixed_bfloat16", True, False),
    "f32-remat": ("float32, compiled, remat", "project", "float32", False, True),
    "bf16-remat": ("mixed_bfloat16, compiled, remat", "project", "mixed_bfloat16", False, True),
}


def run_variant(config, task, variant, precision, xla, remat, repeats) -> dict:
    arguments = ["--config", config, "--task", task, "--variant", variant, "--precision", precision,
                 "--repeats", repeats, "--remat", remat]
    return run_row(__file__, arguments + (["--xla"] if xla else []))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/paper.yaml")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--tasks", default="forward,train")
    parser.add_argument("--precisions", default="float32,mixed_bfloat16",
                        help="comma list of the precisions to run (add mixed_float16 on a GPU)")
    parser.add_argument("--no-xla", action="store_true", help="skip the XLA rows (slow on CPU)")
    parser.add_argument("--rows", default=",".join(VARIANTS),
                        help=f"comma list of the rows to run, of {', '.join(VARIANTS)} (default "
                             f"all; the full_multimodal config does not fit 23 GB without remat)")
    parser.add_argument("--remat-levels", default="1,2,3,4",
                        help="model.remat_levels of the remat rows (default 1,2,3,4: every 3D block)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--task", help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="float32", help=argparse.SUPPRESS)
    parser.add_argument("--xla", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--remat", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    rows = selected_rows(args)
    print(f"{args.config}, batch 1, {os.cpu_count()} CPU cores; best of {args.repeats} after a "
          f"warm-up call; remat: model.remat_levels {args.remat_levels}")
    header = f"{'':38s}{'task':>8s}{'seconds':>9s}{'x base':>8s}{'peak GB':>9s}{'1st call s':>11s}"
    print(header)
    for task in args.tasks.split(","):
        base, results = None, {}
        for name, variant, precision, xla, remat in rows:
            if remat and task != "train":
                continue  # rematerialisation only changes the backward pass
            levels = args.remat_levels if remat else ""
            result = run_variant(args.config, task, variant, precision, xla, levels, args.repeats)
            if "error" in result:
                print(f"{name:38s}{task:>8s}  failed: {result['error']}")
                continue
            base = base or result["seconds"]
            results[(variant, precision, xla, remat)] = result
            print(f"{name:38s}{task:>8s}{result['seconds']:9.2f}{result['seconds'] / base:8.2f}"
                  f"{result['peak_gb']:9.2f}{result['first_call']:11.1f}  {result['device']}",
                  flush=True)
        for precision in args.precisions.split(","):
            plain = results.get(("project", precision, False, False))
            remat = results.get(("project", precision, False, True))
            if plain and remat:
                print(f"remat {args.remat_levels} vs none, {precision} {task}: step "
                      f"x{remat['seconds'] / plain['seconds']:.2f}, peak {remat['peak_gb']:.2f} GB "
                      f"vs {plain['peak_gb']:.2f} GB")
    return 0


def selected_rows(args) -> list:
    """The VARIANTS rows --rows, --precisions and --no-xla ask for, plus an extra precision's."""
    keys = args.rows.split(",")
    unknown = [key for key in keys if key not in VARIANTS]
    if unknown:
        raise SystemExit(f"error: --rows: unknown {', '.join(unknown)} (known: {', '.join(VARIANTS)})")
    precisions = args.precisions.split(",")
    rows = [VARIANTS[key] for key in keys if VARIANTS[key][1] == "baseline"
            or (VARIANTS[key][2] in precisions and not (VARIANTS[key][3] and args.no_xla))]
    return rows + [(f"{p}, compiled", "project", p, False, False) for p in precisions
                   if p not in {v[2] for v in VARIANTS.values()}]


if __name__ == "__main__":
    sys.exit(main())
