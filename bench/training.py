"""Benchmark training: steps per second for the small and paper configs, input- or compute-bound.

    python bench/training.py [--steps 3]

For each config, on synthetic cases preprocessed into a cache: (a) the input pipeline alone
(batches per second out of train.make_dataset), (b) the compiled training step alone on a batch
already in memory, (c) model.fit reading from the pipeline. The step is input-bound when (a) is
slower than (b); with prefetch, (c) should be close to the slower of the two. Each timing follows a
warm-up call, so tracing is not counted (the first step's time is printed apart).
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import preprocess  # noqa: E402
import synthetic  # noqa: E402
import train  # noqa: E402
from brats.cases import find_cases  # noqa: E402
from util.config import load_config  # noqa: E402
from datasets.cache import Cache  # noqa: E402


def make_cache(root: Path, config, cases: int) -> Cache:
    raw = root / "raw"
    if not raw.exists():
        list(synthetic.write_dataset(raw, cases, seed=0, jobs=2))
    out = root / f"cache_{config.name}"
    data = config.data
    preprocess.check_cache_settings(out, tuple(data.crop_size), data.crop_mode, data.downsample)
    for files in find_cases(raw):
        preprocess.process_case(files, out, tuple(data.crop_size), data.crop_mode, data.downsample)
    return Cache(out)


def measure(config_path: str, root: Path, steps: int, cases: int) -> dict:
    config = load_config(config_path)
    config.model.backbone_weights = None
    cache = make_cache(root, config, cases)
    data = train.make_dataset(cache, cache.ids, ("flair",), 1, 0, shuffle=True)
    x, y = data[0]
    start = time.perf_counter()
    for i in range(steps * 3):  # one reader thread (fit uses two)
        data.set_epoch(i // len(data))
        data[i % len(data)]
    input_s = (time.perf_counter() - start) / (steps * 3)
    model = train.compiled_model(config, False, None, None)
    start = time.perf_counter()
    model.train_on_batch(x, y)
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    compute_s = (time.perf_counter() - start) / steps
    model.fit(data, steps_per_epoch=1, epochs=1, verbose=0, shuffle=False)  # traces fit's step
    start = time.perf_counter()
    model.fit(data, steps_per_epoch=min(steps, len(data)), epochs=1, verbose=0, shuffle=False)
    fit_s = (time.perf_counter() - start) / steps
    return {"input": input_s, "compute": compute_s, "fit": fit_s, "compile": compile_s}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--cases", type=int, default=4)
    parser.add_argument("--configs", default="configs/small.yaml,configs/paper.yaml")
    args = parser.parse_args(argv)
    print(f"{'config':22s}{'input s/batch':>14s}{'step s':>9s}{'fit s/step':>11s}"
          f"{'steps/s':>9s}{'1st step s':>11s}  bound")
    with tempfile.TemporaryDirectory() as tmp:
        for config_path in args.configs.split(","):
            r = measure(config_path, Path(tmp), args.steps, args.cases)
            bound = "input" if r["input"] > r["compute"] else "compute"
            print(f"{Path(config_path).stem:22s}{r['input']:14.3f}{r['compute']:9.2f}{r['fit']:11.2f}"
                  f"{1 / r['fit']:9.3f}{r['compile']:11.1f}  {bound}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
