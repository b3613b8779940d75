"""Where a training step goes: every distinct layer of a config's network timed at its real shape.

    python bench/layers.py --config configs/paper.yaml
    KERAS_BACKEND=jax python bench/layers.py --config configs/small.yaml --top 15
    python bench/layers.py --config configs/small.yaml --stock   # stock Keras layers, for contrast

Each distinct layer (same class, settings and input shapes; `count` says how often the network
holds it) is rebuilt alone at batch 1 and timed compiled under the current Keras backend:
forward (`predict_on_batch`) and forward + backward (`train_on_batch`, SGD, the gradient with
respect to its input included, as inside the network). FLOPs are counted, not measured: exactly
for convolutions and dense layers (2 per multiply-add; the backward pass is two more
convolutions, the input's gradient and the kernel's), and as a few per element for the rest.
`share` is count x (forward + backward time) over the whole compiled training step, timed first
(Nadam, the project's loss); the rows need not add up to 100 % (fusion, the optimizer, launch
overheads). Runs unchanged on a CPU or a GPU.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ELEMENTWISE_FLOPS = {  # per output element, forward
    "GroupNorm": 8, "GroupNormalization": 8, "BatchNormalization": 4, "Activation": 4, "ReLU": 1,
    "Add": 1, "Multiply": 1, "Rescaling": 2, "Normalization": 2, "SpatialDropout3D": 1,
    "SpatialDropout2D": 1, "Dropout": 1, "SkipDropout": 1, "UpSampling2D": 4,
}


@dataclass
class Row:
    """One distinct layer: where it first occurs, how often, its shapes and its figures."""

    name: str
    kind: str
    count: int
    shapes: str
    forward_flops: float
    train_flops: float
    forward_s: float = math.nan
    train_s: float = math.nan

    def gflops_per_s(self) -> float:
        return self.train_flops / self.train_s / 1e9


def leaf_layers(model, backbone_block: bool = False) -> list:
    """The network's layers, nested models and rematerialised segments opened, in order;
    backbone_block: the 2D backbone stays one layer (fewer rows to compile on a GPU)."""
    import keras

    out = []
    for layer in model.layers:
        inner = getattr(layer, "segment", layer)
        if isinstance(inner, keras.Model) and not (backbone_block and inner is layer):
            out += leaf_layers(inner, backbone_block)
        elif not isinstance(layer, keras.layers.InputLayer):
            out.append(layer)
    return out


def as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def signature(layer) -> tuple:
    """What makes two layers cost the same: class, settings (name aside) and input shapes."""
    config = {k: v for k, v in layer.get_config().items()
              if k not in ("name", "trainable", "layers", "input_layers", "output_layers")}
    shapes = tuple(tuple(t.shape[1:]) for t in as_list(layer.input))
    return type(layer).__name__, repr(sorted(config.items())), shapes


def conv_flops(layer) -> tuple[float, float] | None:
    """(forward, backward) FLOPs of a convolution or dense layer; None for other layers."""
    from keras import layers

    if not isinstance(layer, (layers.Conv1D, layers.Conv2D, layers.Conv3D, layers.Dense,
                              layers.DepthwiseConv2D, layers.Conv2DTranspose,
                              layers.Conv3DTranspose)):
        return None
    kernel = layer.kernel.shape  # (*window, in, out); depthwise (*window, in, multiplier)
    inputs, outputs = layer.input.shape[1:], layer.output.shape[1:]
    # transposed: every input voxel meets the whole kernel; else every output voxel does
    voxels = math.prod(inputs[:-1] if "Transpose" in type(layer).__name__ else outputs[:-1])
    forward = 2.0 * voxels * math.prod(kernel)  # grouped: the kernel holds in / groups
    return forward, 2 * forward  # input gradient + kernel gradient


def layer_flops(layer) -> tuple[float, float]:
    """(forward, forward + backward) FLOPs of one call of `layer` at batch 1 (a nested model:
    the sum of its layers')."""
    import keras

    if isinstance(layer, keras.Model):
        counts = [layer_flops(inner) for inner in leaf_layers(layer)]
        return sum(c[0] for c in counts), sum(c[1] for c in counts)
    counted = conv_flops(layer)
    if counted is not None:
        return counted[0], counted[0] + counted[1]
    elements = sum(math.prod(t.shape[1:]) for t in as_list(layer.output))
    forward = ELEMENTWISE_FLOPS.get(type(layer).__name__, 0) * elements
    return forward, 3.0 * forward


def distinct_rows(model, backbone_block: bool = False) -> tuple[list, dict]:
    """The distinct layers of `model` as Rows (untimed) and a representative layer for each."""
    rows, examples = {}, {}
    for layer in leaf_layers(model, backbone_block):
        key = signature(layer)
        if key in rows:
            rows[key].count += 1
            continue
        inputs = " + ".join("x".join(map(str, t.shape[1:])) for t in as_list(layer.input))
        outputs = " + ".join("x".join(map(str, t.shape[1:])) for t in as_list(layer.output))
        forward, train = layer_flops(layer)
        rows[key] = Row(layer.name, type(layer).__name__, 1, f"{inputs} -> {outputs}", forward, train)
        examples[key] = layer
    return list(rows.values()), examples


def time_call(call, repeats: int) -> float:
    """Best of `repeats` calls in seconds, after a first call that compiles; each call's result
    is brought to the host, so that asynchronous devices are timed to the end of the work."""
    import numpy as np

    np.asarray(call())
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        np.asarray(call())
        best = min(best, time.perf_counter() - start)
    return best


def standalone(layer):
    """A model of one fresh copy of `layer` whose inputs pass through a trainable scale, so that
    training computes the gradient with respect to the layer's input as in the network."""
    import keras
    from keras import layers, ops

    class InputScale(layers.Layer):
        def build(self, shape):
            self.scale = self.add_weight(shape=(), initializer="ones", name="scale")

        def call(self, x):
            return x * ops.cast(self.scale, x.dtype)

    entries = [keras.Input(t.shape[1:], dtype=t.dtype) for t in as_list(layer.input)]
    scaled = [InputScale()(e) if "float" in str(e.dtype) else e for e in entries]
    copy = (keras.models.clone_model(layer) if isinstance(layer, keras.Model)
            else type(layer).from_config(layer.get_config()))
    outputs = copy(scaled if len(scaled) > 1 else scaled[0])
    if isinstance(outputs, (list, tuple)):  # one tensor for the loss: the outputs side by side
        outputs = layers.Concatenate(axis=1)([layers.Flatten()(t) for t in outputs])
    return keras.Model(entries, outputs)


def time_layer(layer, repeats: int, turn=contextlib.nullcontext) -> tuple[float, float]:
    """(forward, forward + backward) seconds of `layer` alone at batch 1; the timed calls run
    inside turn() (bench/gpu.py: the GPU to this process alone)."""
    import keras
    import numpy as np

    model = standalone(layer)
    rng = np.random.default_rng(0)
    x = [rng.standard_normal((1, *t.shape[1:])).astype(t.dtype) for t in model.inputs]
    y = rng.standard_normal((1, *model.output.shape[1:])).astype("float32")
    model.compile(optimizer=keras.optimizers.SGD(1e-6), loss=lambda t, p: keras.ops.mean(t * p))
    model.predict_on_batch(x)
    model.train_on_batch(x, y)  # both compiled before the turn
    with turn():
        forward = time_call(lambda: model.predict_on_batch(x), repeats)
        train = time_call(lambda: model.train_on_batch(x, y), repeats)
    return forward, train


def whole_step(model, config, repeats: int, turn=contextlib.nullcontext) -> float:
    """Seconds of the network's compiled training step (Nadam, the project's loss), batch 1."""
    from harness import compiled_for_training, training_batch

    x, y = training_batch(config)
    compiled_for_training(model, config).train_on_batch(x, y)
    with turn():
        return time_call(lambda: model.train_on_batch(x, y), repeats)


def measure(config_path, repeats: int = 2, stock: bool = False, match: str = "",
            progress=None, backbone_block: bool = False,
            turn=contextlib.nullcontext) -> tuple[list, float, float]:
    """(rows sorted by share, whole step seconds, step FLOPs) for the config's network."""
    import re

    import keras

    from util.config import load_config
    from model import FAST, STOCK, build_model

    config = load_config(config_path)
    config.model.backbone_weights = None
    model = build_model(config, STOCK if stock else FAST)
    rows, examples = distinct_rows(model, backbone_block)
    total_flops = sum(r.train_flops * r.count for r in rows)
    step = whole_step(model, config, repeats, turn)
    chosen = [(row, key) for key, row in zip(examples, rows) if re.search(match, row.name)]
    for i, (row, key) in enumerate(chosen):
        if progress:
            progress(f"[{i + 1}/{len(chosen)}] {row.name} {row.shapes}")
        try:
            row.forward_s, row.train_s = time_layer(examples[key], repeats, turn)
        except Exception as error:  # noqa: BLE001 (a layer that cannot stand alone: say so)
            row.kind = f"{row.kind} (failed: {type(error).__name__})"
    keras.backend.clear_session()
    timed = [row for row, _ in chosen]
    return sorted(timed, key=lambda r: -(r.train_s * r.count if r.train_s == r.train_s else 0)), step, total_flops


def table(rows: list, step: float, top: int | None = None) -> list[str]:
    """The rows as aligned text lines, most costly first."""
    lines = [f"{'layer (first of its kind)':34s}{'kind':20s}{'n':>3s}  {'input -> output':40s}"
             f"{'fwd ms':>9s}{'f+b ms':>9s}{'GFLOP':>9s}{'GFLOP/s':>9s}{'share':>7s}"]
    for r in rows[:top]:
        lines.append(f"{r.name[:33]:34s}{r.kind[:19]:20s}{r.count:3d}  {r.shapes[:39]:40s}"
                     f"{r.forward_s * 1e3:9.1f}{r.train_s * 1e3:9.1f}{r.train_flops / 1e9:9.2f}"
                     f"{r.gflops_per_s():9.1f}{100 * r.count * r.train_s / step:6.1f}%")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/paper.yaml")
    parser.add_argument("--repeats", type=int, default=2, help="timed calls after the first")
    parser.add_argument("--top", type=int, default=None, help="print only the N costliest rows")
    parser.add_argument("--match", default="", help="time only layers whose name matches (regex)")
    parser.add_argument("--backbone-block", action="store_true",
                        help="time the 2D backbone as one block instead of layer by layer")
    parser.add_argument("--stock", action="store_true",
                        help="the network with stock Keras layers (GroupNormalization, strided Conv3D)")
    args = parser.parse_args(argv)
    import keras

    from harness import device_name

    print(f"{args.config}, batch 1, {device_name()}, Keras {keras.__version__}"
          f"{', stock layers' if args.stock else ''}; best of {args.repeats} after a first call",
          flush=True)
    rows, step, flops = measure(args.config, args.repeats, args.stock, args.match,
                                lambda line: print(line, file=sys.stderr, flush=True),
                                args.backbone_block)
    print("\n".join(table(rows, step, args.top)))
    covered = sum(r.count * r.train_s for r in rows)
    print(f"training step: {step:.3f} s, {flops / 1e12:.3f} TFLOP ({flops / step / 1e9:.1f} "
          f"GFLOP/s); the rows above sum to {covered:.3f} s ({100 * covered / step:.0f} % of it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
