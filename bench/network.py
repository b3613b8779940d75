"""Benchmark the network at full size, batch 1: forward and training-step time and peak memory.

    python bench/network.py [--config configs/paper.yaml] [--repeats 2]
    python bench/network.py --config configs/paper.yaml --tasks train --rows f32,f32-remat
    python bench/network.py --config configs/full_multimodal.yaml --tasks forward --rows f32,bf16
    python bench/network.py --config configs/full_multimodal.yaml --tasks train --rows bf16-remat
    python bench/network.py --config configs/small.yaml --tasks train --rows f32-before,f32 \
        --backends tensorflow,jax     # every row under each backend, side by side

Each row runs in its own process so that its peak memory is its own: max RSS (model and data
included) on a CPU, the GPU's peak allocation when the Keras backend runs on one (run under
KERAS_BACKEND=jax on a GPU machine for the JAX figures; the eager baseline row is TensorFlow's).
The baseline is how the authors' code runs: the same network in float32 with the stock
keras.layers.GroupNormalization, no XLA, called eagerly (`model(x)`; training with a
GradientTape). The other rows are this project's paths: the fast GroupNorm and a compiled step
(`predict_on_batch` / `train_on_batch`), in float32 or mixed bfloat16 (mixed_float16 is for
GPUs: add it with --precisions), XLA off and on, and the training step with the 3D residual
blocks rematerialised (model.remat_levels, --remat-levels; the other rows run without);
"before": the compiled step of the network as built before fast_layers.Conv3D (Keras's
strided Conv3D in the depth encoder); "stockupdate": the compiled step with Keras's own
optimizer update, variable by variable, instead of systems/fast_updates.py's (a closing line
compares their first calls, the trace). --backends runs the rows under each Keras backend in turn
(the eager baseline is TensorFlow's only); --xla-flags adds XLA_FLAGS to the JAX rows. Ratios are
against the first row of the same run (the baseline unless --rows leaves it out); the closing
lines compare rematerialisation with the same precision without it, and each backend's float32
step with the first backend's.
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

from harness import device_name, peak_gb, run_row  # noqa: E402


def worker(args) -> dict:
    """Time one (variant, task) in this process and return its figures."""
    import keras
    import numpy as np

    keras.mixed_precision.set_global_policy(args.precision)
    import losses
    from util.config import load_config
    from model import FAST, STOCK, Kernels, build_model
    from systems.families import ready_to_train

    config = load_config(args.config)
    config.model.backbone_weights = None
    config.model.remat_levels = tuple(int(level) for level in args.remat.split(",") if level)
    baseline = args.variant == "baseline"
    kernels = {"baseline": STOCK, "before": Kernels(strided_conv=keras.layers.Conv3D)}
    model = build_model(config, kernels.get(args.variant, FAST))
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
        if args.variant == "stockupdate":
            model.optimizer.build(model.trainable_variables)  # Keras's update, variable by variable
        else:
            ready_to_train(model)
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
    "f32-before": ("float32, compiled, before", "before", "float32", False, False),
    "f32-stockupdate": ("float32, compiled, Keras's update", "stockupdate", "float32", False,
                        False),
    "f32": ("float32, compiled", "project", "float32", False, False),
    "f32-xla": ("float32, compiled, XLA", "project", "float32", True, False),
    "bf16-before": ("mixed_bfloat16, compiled, before", "before", "mixed_bfloat16", False, False),
    "bf16": ("mixed_bfloat16, compiled", "project", "mixed_bfloat16", False, False),
    "bf16-xla": ("mixed_bfloat16, compiled, XLA", "project", "mixed_bfloat16", True, False),
    "f32-remat": ("float32, compiled, remat", "project", "float32", False, True),
    "bf16-remat": ("mixed_bfloat16, compiled, remat", "project", "mixed_bfloat16", False, True),
}


def run_variant(config, task, variant, precision, xla, remat, repeats, backend, xla_flags) -> dict:
    arguments = ["--config", config, "--task", task, "--variant", variant, "--precision", precision,
                 "--repeats", repeats, "--remat", remat]
    env = {"KERAS_BACKEND": backend}
    if backend == "jax" and xla_flags:
        env["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {xla_flags}".strip()
    return run_row(__file__, arguments + (["--xla"] if xla else []), env)


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
    parser.add_argument("--backends", default=os.environ.get("KERAS_BACKEND", "tensorflow"),
                        help="comma list of Keras backends to run every row under (default: "
                             "KERAS_BACKEND, else tensorflow)")
    parser.add_argument("--xla-flags", default="", help="XLA_FLAGS added to the JAX rows")
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
    backends = args.backends.split(",")
    for task in args.tasks.split(","):
        base, results = None, {}
        for backend in backends:
            for name, variant, precision, xla, remat in rows:
                if ((remat or variant == "stockupdate") and task != "train"
                        or (variant == "baseline" and backend != "tensorflow")):
                    continue  # remat, the update: training only; the eager baseline is TF's
                levels = args.remat_levels if remat else ""
                result = run_variant(args.config, task, variant, precision, xla, levels,
                                     args.repeats, backend, args.xla_flags)
                if "error" in result:
                    print(f"{name:38s}{task:>8s}  failed: {result['error']}")
                    continue
                base = base or result["seconds"]
                results[(backend, variant, precision, xla, remat)] = result
                print(f"{name:38s}{task:>8s}{result['seconds']:9.2f}{result['seconds'] / base:8.2f}"
                      f"{result['peak_gb']:9.2f}{result['first_call']:11.1f}  {result['device']}",
                      flush=True)
        print("\n".join(closing_lines(results, backends, args, task)))
    return 0


def closing_lines(results: dict, backends: list, args, task: str) -> list:
    """Remat against none and the fast strided convolution against Keras's, per backend and
    precision; each backend's float32 step against the first backend's."""
    lines = []
    for backend in backends:
        for precision in args.precisions.split(","):
            plain = results.get((backend, "project", precision, False, False))
            remat = results.get((backend, "project", precision, False, True))
            before = results.get((backend, "before", precision, False, False))
            if plain and remat:
                lines.append(f"remat {args.remat_levels} vs none, {precision} {task} ({backend}): "
                             f"step x{remat['seconds'] / plain['seconds']:.2f}, peak "
                             f"{remat['peak_gb']:.2f} GB vs {plain['peak_gb']:.2f} GB")
            if plain and before:
                lines.append(f"fast_layers.Conv3D vs Keras's strided Conv3D, {precision} {task} "
                             f"({backend}): x{plain['seconds'] / before['seconds']:.2f}")
            stock = results.get((backend, "stockupdate", precision, False, False))
            if plain and stock:
                lines.append(f"fast_updates vs Keras's update, {precision} {task} ({backend}): "
                             f"first call x{plain['first_call'] / stock['first_call']:.2f}, step "
                             f"x{plain['seconds'] / stock['seconds']:.2f}")
    for variant in ("before", "project"):
        first = results.get((backends[0], variant, "float32", False, False))
        for backend in backends[1:]:
            other = results.get((backend, variant, "float32", False, False))
            if first and other:
                lines.append(f"{backend} vs {backends[0]}, float32 {task} ({variant}): "
                             f"x{other['seconds'] / first['seconds']:.2f}")
    return lines


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
