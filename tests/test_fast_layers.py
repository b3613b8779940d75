"""fast_layers computes the stock layers' function with their weights, on every installed backend;
checkpoints saved with the stock layers load into the fast network and give the same outputs.
fast_updates' optimizer update gives Keras's numbers bit for bit, and fast_initializers' JAX
initial weights Keras's draws bit for bit (the same probe process)."""
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import yaml

from systems import een
from util.config import load_config
from systems import fast_layers
from systems.fast_layers import depth_folding
from tests.conftest import backend_env
from tests.layer_probe import CASES, UPDATED

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = [b for b in ("tensorflow", "jax", "torch")
            if importlib.util.find_spec({"tensorflow": "tensorflow"}.get(b, b))]


@pytest.fixture(scope="module", params=BACKENDS)
def probed(request, tmp_path_factory) -> tuple:
    """(backend, tests/layer_probe.py's results under it), from a process of its own."""
    backend, out = request.param, tmp_path_factory.mktemp("probe") / "results.npz"
    subprocess.run([sys.executable, "-m", "tests.layer_probe", str(out)], cwd=ROOT,
                   env=backend_env(backend), check=True, capture_output=True)
    return backend, dict(np.load(out))


def test_fast_layers_equal_stock_outputs_and_gradients(probed):
    _, results = probed
    for name, *_ in CASES:
        keys = sorted(k.split("/", 2)[2] for k in results if k.startswith(f"{name}/stock/"))
        assert {"output", "input_grad", "weight_grad_0"} <= set(keys), name
        for key in keys:
            stock, fast = results[f"{name}/stock/{key}"], results[f"{name}/fast/{key}"]
            assert stock.shape == fast.shape, (name, key)
            scale = max(1.0, float(np.abs(stock).max()))
            np.testing.assert_allclose(fast, stock, rtol=0, atol=2e-5 * scale, err_msg=f"{name} {key}")


def test_the_joined_update_gives_keras_numbers_bit_for_bit(probed):
    """Three compiled steps of Nadam and Adam leave every weight and optimizer variable equal to
    the last bit; the joined update ran on TensorFlow, JAX and PyTorch kept Keras's."""
    backend, results = probed
    for optimizer in UPDATED:
        stock = sorted(k for k in results if k.startswith(f"update/{optimizer}/stock/"))
        assert len(stock) >= 10, optimizer  # 6 weights, the step counter, the moments
        for key in stock:
            np.testing.assert_array_equal(results[key.replace("/stock/", "/fast/")], results[key],
                                          err_msg=f"{optimizer} {key}")
        assert not np.array_equal(results[f"update/{optimizer}/stock/0"],
                                  results["update/initial/0"])  # the steps moved the weights
        joined = int(results[f"update/{optimizer}/joined"])
        assert joined > 0 if backend == "tensorflow" else joined == 0, (optimizer, joined)


@pytest.mark.parametrize("stride", [2, 3, 4])
def test_depth_folding_reads_each_slice_a_strided_convolution_reads(stride):
    """Every (output, tap) pair reads the same input slice folded as unfolded, over many sizes."""
    for depth in range(stride, 40):
        for padding in ("same", "valid"):
            folding = depth_folding(depth, 3, stride, padding)
            assert folding is not None, (depth, padding)
            shift, blocks, kb = folding
            assert kb == (2 if stride == 2 else 1)
            out = -(-depth // stride) if padding == "same" else (depth - 3) // stride + 1
            assert blocks == (out if padding == "same" else out + kb - 1)


def test_fast_network_holds_the_stock_networks_weights_and_function(tmp_path):
    """The strided encoder convolutions are fast_layers.Conv3D; a checkpoint written by the
    network with Keras's Conv3D there (how the code saved it before) loads, by .weights.h5 and by
    .keras, into the same parameters and gives the same outputs."""
    values = yaml.safe_load((ROOT / "configs" / "small.yaml").read_text())
    values["data"]["crop_size"] = [32, 32, 72]
    values["model"].update(depth_factors=[2, 3, 4], encoder_filters=[8, 8, 8, 8],
                           decoder_filters=[16, 16, 8, 8], skip_dropout=0.0)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(values))
    config = load_config(path)
    stock = een.build_model(config, een.Kernels(strided_conv=keras.layers.Conv3D))
    fast = een.build_model(config)
    assert isinstance(fast.get_layer("enc2_down_conv"), fast_layers.Conv3D)
    assert type(stock.get_layer("enc2_down_conv")) is keras.layers.Conv3D
    assert fast.count_params() == stock.count_params()
    def paths(network):  # automatic names inside the backbone count up from build to build
        return [re.sub(r"_\d+/", "/", w.path) for w in network.weights]

    assert paths(fast) == paths(stock)
    assert [w.shape for w in fast.weights] == [w.shape for w in stock.weights]
    x = np.random.default_rng(1).standard_normal((1, 32, 32, 72, 1)).astype("float32")
    stock.save_weights(tmp_path / "stock.weights.h5")
    stock.save(tmp_path / "stock.keras")
    fast.load_weights(tmp_path / "stock.weights.h5")
    expected = np.asarray(stock.predict_on_batch(x))
    np.testing.assert_allclose(np.asarray(fast.predict_on_batch(x)), expected, atol=1e-4)
    reloaded = keras.saving.load_model(tmp_path / "stock.keras")
    np.testing.assert_allclose(np.asarray(reloaded.predict_on_batch(x)), expected, atol=1e-4)
    fast.save(tmp_path / "fast.keras")  # and the fast network's own .keras file round-trips
    again = keras.saving.load_model(tmp_path / "fast.keras")
    assert isinstance(again.get_layer("enc2_down_conv"), fast_layers.Conv3D)
    np.testing.assert_allclose(np.asarray(again.predict_on_batch(x)), expected, atol=1e-4)



def strided_reference(x: np.ndarray, w: np.ndarray, stride: int, padding: str) -> np.ndarray:
    """A convolution along depth straight from its definition, in NumPy: x (D, C), w (k, C, F) ->
    (out, F), output o summing w[j] * x[stride*o - before + j] over the taps inside the input;
    'same' pads as TensorFlow defines it (out = ceil(D/stride), the odd padding slice after)."""
    depth, kernel = len(x), len(w)
    if padding == "same":
        out = -(-depth // stride)
        before = max((out - 1) * stride + kernel - depth, 0) // 2
    else:
        out, before = (depth - kernel) // stride + 1, 0
    index = stride * np.arange(out)[:, None] - before + np.arange(kernel)[None, :]  # (out, k)
    inside = (index >= 0) & (index < depth)
    taps = np.where(inside[..., None], x[np.clip(index, 0, depth - 1)], 0.0)  # (out, k, C)
    return np.einsum("okc,kcf->of", taps, w)


def test_depth_folding_values_equal_a_numpy_strided_convolution():
    """fast_layers.Conv3D against the definition: depth 1-40, kernel 1-6, stride 2-4, 'same' and
    'valid' (1x1 spatial, two channels, three filters). The folding computes every 'valid' case
    and every 'same' one with kernel <= 3 (the networks' 3); it declines 89 'same' cases of
    kernel 4-6 (a tap would read a padding block), which Keras's own computation serves."""
    rng = np.random.default_rng(0)
    checked, declined = 0, set()
    for kernel in range(1, 7):
        for stride in (2, 3, 4):
            for padding in ("same", "valid"):
                layer = fast_layers.Conv3D(3, (1, 1, kernel), strides=(1, 1, stride),
                                           padding=padding, use_bias=False)
                layer.build((1, 1, 1, None, 2))
                w = rng.standard_normal((kernel, 2, 3)).astype("float32")
                layer.kernel.assign(w[None, None])
                for depth in range(1, 41):
                    if padding == "valid" and depth < kernel:
                        continue
                    x = rng.standard_normal((depth, 2)).astype("float32")
                    got = keras.ops.convert_to_numpy(layer(x[None, None, None]))[0, 0, 0]
                    expected = strided_reference(x.astype("float64"), w.astype("float64"), stride,
                                                 padding)
                    assert got.shape == expected.shape, (depth, kernel, stride, padding)
                    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5,
                                               err_msg=f"{depth} {kernel} {stride} {padding}")
                    checked += 1
                    if depth_folding(depth, kernel, stride, padding) is None:
                        declined.add((depth, kernel, stride, padding))
    assert checked == 1395 and len(declined) == 89, (checked, len(declined))
    assert {(k, p) for _, k, _, p in declined} <= {(4, "same"), (5, "same"), (6, "same")}


def test_grouped_strided_convolution_falls_back_to_keras():
    """groups != 1 cannot be folded (the kernel holds C/groups input channels): Keras's layer."""
    x = np.random.default_rng(2).standard_normal((1, 4, 4, 9, 4)).astype("float32")
    fast = fast_layers.Conv3D(6, 3, strides=(1, 1, 2), padding="same", groups=2)
    stock = keras.layers.Conv3D(6, 3, strides=(1, 1, 2), padding="same", groups=2)
    stock.build(x.shape)
    fast.build(x.shape)
    fast.set_weights(stock.get_weights())
    np.testing.assert_allclose(keras.ops.convert_to_numpy(fast(x)),
                               keras.ops.convert_to_numpy(stock(x)), rtol=1e-5, atol=1e-5)


def test_under_a_distribution_strategy_keras_updates_each_mirrored_variable(monkeypatch):
    """MirroredStrategy: Keras's own update (all-reduce, then each mirrored variable), not the
    joined one, and the step trains."""
    import tensorflow as tf

    from systems import fast_updates
    from systems.families import ready_to_train
    from tests.layer_probe import small_network, update_batch

    calls = []
    joined = fast_updates.joined
    monkeypatch.setattr(fast_updates, "joined", lambda tensors: calls.append(1) or joined(tensors))
    x, y = update_batch(np.random.default_rng(0))

    def trained_calls(strategy) -> int:
        with strategy.scope():
            network = small_network(x.shape[1:], y.shape[-1])
            network.compile(optimizer=keras.optimizers.Nadam(1e-2), loss="binary_crossentropy")
            ready_to_train(network)
        before = network.get_weights()[0]
        calls.clear()
        network.train_on_batch(x, y)
        assert not np.array_equal(network.get_weights()[0], before)
        return len(calls)

    assert trained_calls(tf.distribute.MirroredStrategy(["/cpu:0"])) == 0
    assert trained_calls(tf.distribute.get_strategy()) == 3  # the default strategy: joined


def test_initial_weights_on_jax_are_keras_own_draws_bit_for_bit(probed):
    """fast_initializers' draws (cut from a longer draw) equal Keras's own for every shape, seed
    and initializer kind probed; only JAX's functions are replaced."""
    backend, results = probed
    assert bool(results["initializers/installed"]) == (backend == "jax")
    keras_draws = sorted(k for k in results if k.startswith("initializers/") and k.endswith("/keras"))
    assert len(keras_draws) == 4 * 6
    for key in keras_draws:
        fast = results[key.replace("/keras", "/fast")]
        assert fast.dtype == results[key].dtype == np.float32, key
        np.testing.assert_array_equal(fast, results[key], err_msg=key)
    assert results["initializers/uniform/1280x320/keras"].std() > 0.1
