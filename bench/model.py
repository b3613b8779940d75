"""Benchmark the network at full size, batch 1: forward and training-step time and peak memory.

    python bench/model.py [--config configs/paper.yaml] [--repeats 2]

Each row runs in its own process so that its peak memory (max RSS, model and data included) is
its own. The baseline is how the authors' code runs: the same network in float32 with the stock
keras.layers.GroupNormalization, no XLA, called eagerly (`model(x)`; training with a
GradientTape). The other rows are this project's paths: the fast GroupNorm and a compiled step
(`predict_on_batch` / `train_on_batch`), in float32 or mixed bfloat16 (mixed_float16 is for
GPUs: add it with --precisions), XLA off and on. Ratios are against the baseline of the same run.
Targets on 2 CPU cores: inference <= 0.5x and <= 2.5 GB, training step <= 0.8x and <= 7.7 GB.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


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
    return {"seconds": min(times), "first_call": first, "peak_gb": peak_gb()}


VARIANTS = [  # (row name, variant, precision, xla)
    ("baseline: float32, eager, stock GN", "baseline", "float32", False),
    ("float32, compiled", "project", "float32", False),
    ("float32, compiled, XLA", "project", "float32", True),
    ("mixed_bfloat16, compiled", "project", "mixed_bfloat16", False),
    ("mixed_bfloat16, compiled, XLA", "project", "mixed_bfloat16", True),
]


def run_row(config, task, variant, precision, xla, repeats) -> dict:
    command = [sys.executable, __file__, "--worker", "--config", str(config), "--task", task,
               "--variant", variant, "--precision", precision, "--repeats", str(repeats)]
    command += ["--xla"] if xla else []
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/paper.yaml")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--tasks", default="forward,train")
    parser.add_argument("--precisions", default="float32,mixed_bfloat16",
                        help="comma list of the precisions to run (add mixed_float16 on a GPU)")
    parser.add_argument("--no-xla", action="store_true", help="skip the XLA rows (slow on CPU)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--task", help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="float32", help=argparse.SUPPRESS)
    parser.add_argument("--xla", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    precisions = args.precisions.split(",")
    rows = [v for v in VARIANTS if v[1] == "baseline" or (v[2] in precisions and not (v[3] and args.no_xla))]
    rows += [(f"{p}, compiled", "project", p, False) for p in precisions
             if p not in {v[2] for v in VARIANTS}]
    print(f"{args.config}, batch 1, {os.cpu_count()} CPU cores; best of {args.repeats} after a "
          f"warm-up call")
    header = f"{'':38s}{'task':>8s}{'seconds':>9s}{'x base':>8s}{'peak GB':>9s}{'1st call s':>11s}"
    print(header)
    for task in args.tasks.split(","):
        base = None
        for name, variant, precision, xla in rows:
            result = run_row(args.config, task, variant, precision, xla, args.repeats)
            if "error" in result:
                print(f"{name:38s}{task:>8s}  failed: {result['error']}")
                continue
            base = base or result["seconds"]
            print(f"{name:38s}{task:>8s}{result['seconds']:9.2f}{result['seconds'] / base:8.2f}"
                  f"{result['peak_gb']:9.2f}{result['first_call']:11.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
