"""The GPU benchmark of the paper's training step and of one case's inference: one table, every
row in one run (the training rows <= 8 minutes; the infer-* rows add a few).

    python bench/gpu.py --out bench/results            # on a GPU machine (JAX and PyTorch)
    python bench/gpu.py --dry --out /tmp/gpu-dry       # on a CPU: a tiny config, every row once

Rows, each in a process of its own (its backend, XLA flags and peak memory its own):
    step    the compiled training step (`train_on_batch`, Nadam, the project's loss), batch 1:
            JAX float32 with Keras's strided Conv3D (the network as built before
            fast_layers.Conv3D: the "before" row), JAX float32 and mixed bfloat16, JAX with each
            XLA flag of --xla-flags, PyTorch float32 and mixed bfloat16
    fit     `fit` steps/s on JAX bf16, fed by the project's PyDataset (train.make_dataset) from a
            synthetic full-size cache made first (its making not timed)
    layers  the ten costliest rows of bench/layers.py (JAX bf16, the backbone timed as one block)
    infer-* what one full-size case costs to segment (bench/inference.py's rows): the EEN `paper`
            ensemble of four networks (JAX float32 and bf16, bf16 with flip TTA), nnU-Net v2's
            predictor on one 3d_fullres fold without and with mirroring, MONAI's SegResNet
            bundle window (PyTorch); s/case, the first case's seconds and TFLOP per case
Rows compile side by side (--parallel processes, compilation is CPU work) and take turns for the
timed calls (a file lock), so no timing shares the GPU. A row past --row-timeout seconds is
reported as such. Results: a table on stdout, gpu.json and gpu.md under --out.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the project's packages and commands, for a script run as bench/NAME.py

from harness import compiled_for_training, device_name, peak_gb, run_row, training_batch  # noqa: E402
from util.devices import XLA_CPU_QUICK_COMPILE  # noqa: E402

NHWC = "--xla_gpu_force_conv_nhwc=true"
# key: (backend, precision, kernels, XLA flags, task)
ROWS = {
    "jax-f32-before": ("jax", "float32", "before", "", "step"),
    "jax-f32": ("jax", "float32", "fast", "", "step"),
    "jax-bf16": ("jax", "mixed_bfloat16", "fast", "", "step"),
    "jax-bf16-nhwc": ("jax", "mixed_bfloat16", "fast", NHWC, "step"),
    "torch-f32": ("torch", "float32", "fast", "", "step"),
    "torch-bf16": ("torch", "mixed_bfloat16", "fast", "", "step"),
    "jax-bf16-fit": ("jax", "mixed_bfloat16", "fast", "", "fit"),
    "jax-bf16-layers": ("jax", "mixed_bfloat16", "fast", "", "layers"),
    "een-infer-f32": ("jax", "float32", "fast", "", "infer-een"),
    "een-infer-bf16": ("jax", "mixed_bfloat16", "fast", "", "infer-een"),
    "een-infer-bf16-tta": ("jax", "mixed_bfloat16", "fast", "", "infer-een-tta"),
    "nnunet-infer": ("torch", "float32", "nnU-Net", "", "infer-nnunet"),
    "nnunet-infer-mirror": ("torch", "float32", "nnU-Net", "", "infer-nnunet-tta"),
    "segresnet-infer": ("torch", "float32", "MONAI", "", "infer-segresnet"),
}


def tiny_config(folder: Path) -> Path:
    """The dry run's configuration: the paper's network at 32x32x24, narrow 3D layers."""
    import yaml

    values = yaml.safe_load((ROOT / "configs" / "paper.yaml").read_text())
    values["name"] = "gpu_dry"
    values["data"]["crop_size"] = [32, 32, 24]
    values["model"].update(depth_factors=[2, 2, 2], encoder_filters=[8, 8, 8, 8],
                           decoder_filters=[16, 16, 8, 8], backbone_weights=None)
    path = folder / "gpu_dry.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


@contextlib.contextmanager
def timing_turn(lock_file: str):
    """Hold the GPU alone while timing: an exclusive lock shared by the rows of one run."""
    with open(lock_file, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def load(config_path: str, precision: str):
    import keras

    from util.config import load_config

    keras.mixed_precision.set_global_policy(precision)
    config = load_config(config_path)
    config.model.backbone_weights = None
    return config


def step_row(args) -> dict:
    """Compiled training-step seconds, first-call seconds and peak memory, batch 1."""
    import keras

    from model import FAST, Kernels, build_model

    config = load(args.config, args.precision)
    kernels = FAST if args.kernels == "fast" else Kernels(strided_conv=keras.layers.Conv3D)
    model = compiled_for_training(build_model(config, kernels), config)
    x, y = training_batch(config)
    start = time.perf_counter()
    float(model.train_on_batch(x, y))  # compiles; float() waits for the device
    first = time.perf_counter() - start
    times = []
    with timing_turn(args.lock):
        for _ in range(args.repeats):
            start = time.perf_counter()
            float(model.train_on_batch(x, y))
            times.append(time.perf_counter() - start)
    return {"seconds": min(times), "first_call": first, "peak_gb": peak_gb(),
            "device": device_name()}


def fit_row(args) -> dict:
    """`fit` steps/s from a synthetic full-size cache through the project's PyDataset."""
    import keras

    import preprocess
    import synthetic
    import train
    from datasets.cache import Cache

    config = load(args.config, args.precision)
    folder = Path(tempfile.mkdtemp(prefix="gpu_fit_"))
    cases = 4
    list(synthetic.write_dataset(folder / "raw", cases, 0, "brats2020", jobs=min(4, os.cpu_count())))
    size = "x".join(map(str, config.data.crop_size))
    assert preprocess.main([str(folder / "raw"), str(folder / "cache"), "--crop-size", size,
                            "--jobs", str(min(4, os.cpu_count()))]) == 0
    cache = Cache(folder / "cache")
    batches = train.make_dataset(cache, cache.ids, ("flair",), 1, shuffle=True, augment=True)
    model = train.compiled_model(config, True, None, None)
    ends = []

    class Clock(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            ends.append(time.perf_counter())

    start = time.perf_counter()
    model.fit(batches, epochs=1, verbose=0)  # compiles
    first = time.perf_counter() - start
    ends.clear()
    with timing_turn(args.lock):
        start = time.perf_counter()
        model.fit(batches, epochs=args.repeats, verbose=0, callbacks=[Clock()])
    seconds = (ends[-1] - start) / len(ends)
    return {"seconds": seconds, "steps_per_s": 1 / seconds, "first_call": first,
            "peak_gb": peak_gb(), "device": device_name()}


def layers_row(args) -> dict:
    """bench/layers.py's ten costliest rows, the backbone as one block."""
    import layers as layer_bench

    load(args.config, args.precision)  # the precision policy
    # dry: the stem and the first two encoder blocks (12 layers, each compiled on its own) fill
    # the ten-row table; the whole step still runs the whole network
    match = "^enc(_stem|1_|2_)" if args.dry else ""
    rows, step, flops = layer_bench.measure(args.config, 1, match=match, backbone_block=True,
                                            turn=lambda: timing_turn(args.lock))
    return {"table": layer_bench.table(rows, step, 10), "seconds": step, "tflop": flops / 1e12,
            "peak_gb": peak_gb(), "device": device_name(), "first_call": float("nan")}


def inference_row(args) -> dict:
    """One of bench/inference.py's rows on the whole machine: a full-size case from its files
    to its label file (--dry: the narrow networks of inference.py --dry)."""
    import inference

    system, tta = args.task.removeprefix("infer-").removesuffix("-tta"), args.task.endswith("-tta")
    root = Path(tempfile.mkdtemp(prefix="gpu_infer_"))
    sizes = inference.DRY if args.dry else inference.FULL
    inference.make_cases(root, sizes["grid"])
    options = argparse.Namespace(root=root, threads=os.cpu_count(), dry=args.dry)
    if system == "een":
        inference.make_run(root, sizes["een_config"])
    else:
        from peers.plumbing import without_tensorflow

        without_tensorflow()
    with timing_turn(args.lock):
        result = (inference.een_row(options, args.precision, tta) if system == "een" else
                  inference.nnunet_row(options, tta) if system == "nnunet" else
                  inference.segresnet_row(options))
    return {**result, "device": f"{result['device']} ({system})"}


def worker(args) -> dict:
    if args.task.startswith("infer-"):
        return inference_row(args)
    return {"step": step_row, "fit": fit_row, "layers": layers_row}[args.task](args)


def run(key: str, args, config: str, lock: str) -> dict:
    backend, precision, kernels, flags, task = ROWS[key]
    env = {"KERAS_BACKEND": backend, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    if args.dry:  # XLA on the CPU, compiling quickly
        flags = f"{flags} {XLA_CPU_QUICK_COMPILE}".strip()
        env["JAX_PLATFORMS"] = "cpu"
    if flags:
        env["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip()
    arguments = ["--config", config, "--task", task, "--precision", precision, "--kernels", kernels,
                 "--repeats", args.repeats, "--lock", lock] + (["--dry-worker"] if args.dry else [])
    started = time.perf_counter()
    result = run_row(__file__, arguments, env, args.row_timeout)
    return {**result, "row": key, "backend": backend, "precision": precision, "kernels": kernels,
            "flags": flags, "task": task, "wall": time.perf_counter() - started}


def report(results: list, header: str) -> list[str]:
    lines = [header, "", "| row | backend | precision | layers | XLA flags | s/step | x before "
             "| peak GB | 1st call s |", "|---|---|---|---|---|---|---|---|---|"]
    before = next((r["seconds"] for r in results if r["row"] == "jax-f32-before"
                   and "seconds" in r), None)
    for r in results:
        if "error" in r:
            lines.append(f"| {r['row']} | {r['backend']} | {r['precision']} | {r['kernels']} | "
                         f"{r['flags']} | failed: {r['error'][:80]} | | | |")
            continue
        ratio = f"{r['seconds'] / before:.2f}" if before else ""
        what = f"{r['seconds']:.4f}" + (f" ({r['steps_per_s']:.1f} steps/s, fit)" if r["task"] == "fit"
                                        else " (whole step, layers row)" if r["task"] == "layers"
                                        else f" (s/case, {r['tflop']:.2f} TFLOP)"
                                        if r["task"].startswith("infer-") else "")
        if r["task"].startswith("infer-"):
            ratio = ""  # a case, not a training step: bench/inference.py's ratios
        lines.append(f"| {r['row']} | {r['backend']} | {r['precision']} | {r['kernels']} | "
                     f"{r['flags']} | {what} | {ratio} | {r['peak_gb']:.2f} | {r['first_call']:.1f} |")
    for r in results:
        if r.get("table"):
            lines += ["", f"bench/layers.py, ten costliest ({r['precision']}, JAX; the whole step "
                      f"{r['seconds']:.4f} s, {r['tflop']:.3f} TFLOP):", "```", *r["table"], "```"]
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/paper.yaml")
    parser.add_argument("--dry", action="store_true",
                        help="a CPU check: a tiny config, one repeat, two rows at a time, the "
                             "layers row on the stem and first two encoder blocks")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma list of {', '.join(ROWS)}")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per row (default 5)")
    parser.add_argument("--parallel", type=int, default=3, help="rows compiling at once (default 3)")
    parser.add_argument("--row-timeout", type=float, default=420, help="seconds per row (default 420)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    for hidden in ("--task", "--precision", "--kernels", "--lock"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    parser.add_argument("--dry-worker", dest="dry", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    keys = args.rows.split(",")
    unknown = [key for key in keys if key not in ROWS]
    if unknown:
        parser.error(f"--rows: unknown {', '.join(unknown)}")
    args.out.mkdir(parents=True, exist_ok=True)
    config = str(tiny_config(args.out)) if args.dry else args.config
    if args.dry:
        args.repeats, args.parallel = 1, min(args.parallel, 2)
    lock = str(args.out / "gpu.lock")
    started = time.perf_counter()
    with ThreadPoolExecutor(args.parallel) as pool:
        results = list(pool.map(lambda key: run(key, args, config, lock), keys))
    header = (f"bench/gpu.py: {config}, batch 1, best of {args.repeats}; "
              f"{time.perf_counter() - started:.0f} s in all")
    lines = report(results, header)
    print("\n".join(lines))
    (args.out / "gpu.md").write_text("\n".join(lines) + "\n")
    (args.out / "gpu.json").write_text(json.dumps(results, indent=1))
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
