"""Benchmark each embedded 2D backbone of model.BACKBONES: parameters, training step, memory.

    python bench/backbones.py [--config configs/small.yaml] [--backbones EfficientNetB0,ResNet50V2]

Each backbone runs in its own process (so that its peak memory, max RSS, is its own): the config
with model.backbone replaced, built without pretrained weights, one compiled training step
(`train_on_batch`, float32) on a random batch; best of --repeats after a warm-up call. Ratios
are against the first backbone of the run (EfficientNetB0, the paper's, by default).
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness import compiled_for_training, peak_gb, run_row, training_batch  # noqa: E402

DEFAULT = ("EfficientNetB0,EfficientNetV2B0,EfficientNetV2S,ResNet50V2,DenseNet121,ConvNeXtTiny,"
           "MobileNetV3Large")


def worker(args) -> dict:
    """Build the config with one backbone, time its training step, return its figures."""
    from util.config import load_config
    from model import build_model

    config = load_config(args.config)
    config.model.backbone = args.backbone
    config.model.backbone_weights = None
    model = build_model(config)
    encoder = model.get_layer(f"{args.backbone.lower()}_encoder")
    x, y = training_batch(config)
    compiled_for_training(model, config)
    start = time.perf_counter()
    model.train_on_batch(x, y)
    first = time.perf_counter() - start
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        model.train_on_batch(x, y)
        times.append(time.perf_counter() - start)
    return {"parameters": model.count_params(), "backbone_parameters": encoder.count_params(),
            "seconds": min(times), "first_call": first,
            "peak_gb": peak_gb()}


def run_backbone(config: str, backbone: str, repeats: int) -> dict:
    return run_row(__file__, ["--config", config, "--backbone", backbone, "--repeats", repeats])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/small.yaml")
    parser.add_argument("--backbones", default=DEFAULT, help="comma list of model.BACKBONES keys")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--backbone", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from model import BACKBONES

    names = args.backbones.split(",")
    unknown = [name for name in names if name not in BACKBONES]
    if unknown:
        raise SystemExit(f"error: --backbones: unknown {', '.join(unknown)} "
                         f"(known: {', '.join(BACKBONES)})")
    print(f"{args.config}, batch 1, float32, {os.cpu_count()} CPU cores; training step best of "
          f"{args.repeats} after a warm-up call")
    print(f"{'backbone':18s}{'parameters':>12s}{'backbone':>11s}{'step s':>8s}{'x first':>8s}"
          f"{'peak GB':>9s}{'1st call s':>11s}")
    base = None
    for name in names:
        result = run_backbone(args.config, name, args.repeats)
        if "error" in result:
            print(f"{name:18s}  failed: {result['error']}")
            continue
        base = base or result["seconds"]
        print(f"{name:18s}{result['parameters']:12,d}{result['backbone_parameters']:11,d}"
              f"{result['seconds']:8.2f}{result['seconds'] / base:8.2f}{result['peak_gb']:9.2f}"
              f"{result['first_call']:11.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
