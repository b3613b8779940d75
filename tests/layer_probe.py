"""Run by tests/test_fast_layers.py under one Keras backend: each fast layer beside its stock twin,
and fast_updates' optimizer update beside Keras's.

    KERAS_BACKEND=jax python -m tests.layer_probe OUT.npz

For every case in CASES, the stock Keras layer and the fast_layers one are built with the same
weights and called on the same input; OUT.npz holds both outputs and both gradients of
sum(output * cotangent) with respect to the input and to every weight, named
"<case>/<stock|fast>/<output|input_grad|weight_grad_i>". For each of UPDATED, a small network
from the same weights takes three compiled training steps with Keras's update and with
fast_updates.at_once's: "update/<optimizer>/<stock|fast>/<i>" every variable of network and
optimizer after them, "update/<optimizer>/joined" the calls of fast_updates.joined (3 a trace),
"update/initial/<i>" the network's weights before them. For each draw of `drawn`,
"initializers/<draw>/<keras|fast>" Keras's own draw and the one fast_initializers.install() left
in its place, with the same seed, and "initializers/installed" whether install() replaced any.
"""
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# (name, layer kind, input shape without batch, settings): the configs' depth factors 2, 3, 4 at
# even and odd depths, 'same' and 'valid' padding, a bias-free layer, and the GroupNorm.
CASES = [
    *[(f"conv_s{s}_d{d}_{pad}", "strided_conv", (6, 5, d, 3),
       {"filters": 4, "kernel_size": 3, "strides": (1, 1, s), "padding": pad})
      for s in (2, 3, 4) for d in (12, 13, 7) for pad in ("same", "valid")],
    ("conv_s3_d108_nobias", "strided_conv", (4, 3, 108, 2),
     {"filters": 3, "kernel_size": 3, "strides": (1, 1, 3), "padding": "same", "use_bias": False}),
    ("groupnorm_3d", "norm", (6, 5, 7, 8), {"groups": 4}),
]


def layer_pair(kind: str, settings: dict):
    """(stock layer, fast layer) for one case, unbuilt."""
    import keras

    from systems import fast_layers

    if kind == "norm":
        return (keras.layers.GroupNormalization(**settings), fast_layers.GroupNorm(**settings))
    return keras.layers.Conv3D(**settings), fast_layers.Conv3D(**settings)


def output_and_gradients(layer, x: np.ndarray, cotangent: np.ndarray) -> list:
    """[output, d/dx, d/dw for each weight] of sum(layer(x) * cotangent), under this backend."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        x = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
            value = tf.reduce_sum(y * cotangent)
        grads = tape.gradient(value, [x, *[w.value for w in layer.trainable_weights]])
        return [np.asarray(t) for t in [y, *grads]]
    if backend == "jax":
        import jax

        trainable = [w.value for w in layer.trainable_weights]
        others = [w.value for w in layer.non_trainable_weights]

        def value(x, trainable):
            y, _ = layer.stateless_call(trainable, others, x)
            return (y * cotangent).sum(), y

        (_, y), grads = jax.value_and_grad(value, argnums=(0, 1), has_aux=True)(x, trainable)
        return [np.asarray(t) for t in [y, grads[0], *grads[1]]]
    import torch

    x = torch.tensor(x, requires_grad=True)
    y = layer(x)
    (y * torch.tensor(cotangent)).sum().backward()
    return [t.detach().numpy() for t in [y, x.grad, *[w.value.grad for w in layer.trainable_weights]]]


UPDATED = ("Nadam", "Adam")


def small_network(x_shape: tuple, outputs: int):
    """Conv3D, GroupNorm and Dense: weights of several shapes for an optimizer to update."""
    import keras

    from systems import fast_layers

    return keras.Sequential([keras.Input(x_shape), keras.layers.Conv3D(4, 3, padding="same"),
                             fast_layers.GroupNorm(groups=2),
                             keras.layers.Dense(outputs, activation="sigmoid")])


def update_batch(rng) -> tuple:
    """(x, y) for small_network: two 6x5x4 volumes of 2 channels, 3 sigmoid regions."""
    x = rng.standard_normal((2, 6, 5, 4, 2)).astype("float32")
    return x, (rng.random((2, 6, 5, 4, 3)) > 0.7).astype("float32")


def trained_variables(optimizer: str, fast: bool, weights: list, x, y) -> list:
    """Every variable of small_network and its optimizer after three compiled training steps from
    `weights`, with fast_updates' update or Keras's."""
    import keras

    from systems import fast_updates
    from systems.families import jit_setting

    network = small_network(x.shape[1:], y.shape[-1])
    network.set_weights(weights)
    network.compile(optimizer=getattr(keras.optimizers, optimizer)(1e-2),
                    loss="binary_crossentropy", jit_compile=jit_setting(False))
    network.optimizer.build(network.trainable_variables)
    if fast:
        fast_updates.at_once(network.optimizer)
    for _ in range(3):
        network.train_on_batch(x, y)
    return [keras.ops.convert_to_numpy(v) for v in network.variables + network.optimizer.variables]


def update_results(rng) -> dict:
    """UPDATED's "update/..." entries (the module docstring)."""
    from systems import fast_updates

    calls = []
    joined = fast_updates.joined
    fast_updates.joined = lambda tensors: calls.append(1) or joined(tensors)
    x, y = update_batch(rng)
    weights = [rng.standard_normal(w.shape).astype("float32")
               for w in small_network(x.shape[1:], y.shape[-1]).get_weights()]
    results = {f"update/initial/{i}": w for i, w in enumerate(weights)}
    for optimizer in UPDATED:
        calls.clear()
        for label, fast in (("stock", False), ("fast", True)):
            values = trained_variables(optimizer, fast, weights, x, y)
            results.update({f"update/{optimizer}/{label}/{i}": v for i, v in enumerate(values)})
        results[f"update/{optimizer}/joined"] = np.array(len(calls))
    return results


# Shapes of every kind: one element, a power of two, odd sizes, EfficientNet-B0's largest kernel.
SHAPES = [(1,), (1, 1, 32, 8), (3, 3, 3, 1, 8), (3, 3, 16, 1), (7, 11, 13), (1280, 320)]


def drawn(random, initializers) -> dict:
    """name -> array: each backend random function and Keras initializer (VarianceScaling with
    a truncated normal, GlorotUniform) on SHAPES, the same integer seed every time."""
    import keras

    draws = {}
    for shape in SHAPES:
        label = "x".join(map(str, shape))
        draws[f"truncated_normal/{label}"] = random.truncated_normal(shape, 0.5, 0.02, seed=3)
        draws[f"uniform/{label}"] = random.uniform(shape, -0.3, 0.7, seed=3)
        draws[f"variance_scaling/{label}"] = initializers.VarianceScaling(
            2.0, "fan_out", "truncated_normal", seed=5)(shape)
        draws[f"glorot_uniform/{label}"] = initializers.GlorotUniform(seed=5)(shape)
    return {k: keras.ops.convert_to_numpy(v) for k, v in draws.items()}


def initializer_results() -> dict:
    """`drawn`'s "initializers/..." entries (the module docstring)."""
    import keras
    from keras.src.backend import random

    from systems import fast_initializers

    own = {name: getattr(random, name) for name in fast_initializers.PATCHED}
    results = {f"initializers/{k}/keras": v for k, v in drawn(random, keras.initializers).items()}
    fast_initializers.install()
    results.update({f"initializers/{k}/fast": v
                    for k, v in drawn(random, keras.initializers).items()})
    replaced = [getattr(random, name) is not own[name] for name in fast_initializers.PATCHED]
    results["initializers/installed"] = np.array(any(replaced))
    return results


def main(argv: list) -> int:
    rng = np.random.default_rng(0)
    results = {}
    for name, kind, shape, settings in CASES:
        x = rng.standard_normal((2, *shape)).astype("float32")
        stock, fast = layer_pair(kind, settings)
        y = stock(x)
        fast.build(x.shape)
        weights = [rng.standard_normal(w.shape).astype("float32") for w in stock.get_weights()]
        stock.set_weights(weights)
        fast.set_weights(weights)
        cotangent = rng.standard_normal(tuple(y.shape)).astype("float32")
        for label, layer in (("stock", stock), ("fast", fast)):
            output, input_grad, *weight_grads = output_and_gradients(layer, x, cotangent)
            results[f"{name}/{label}/output"] = output
            results[f"{name}/{label}/input_grad"] = input_grad
            for i, grad in enumerate(weight_grads):
                results[f"{name}/{label}/weight_grad_{i}"] = grad
    results.update(update_results(rng))
    results.update(initializer_results())
    np.savez(argv[0], **results)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
