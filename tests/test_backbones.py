"""model.BACKBONES: every keras.applications family builds at the small size and trains end to end."""
import keras
import numpy as np
import pytest

import model
from systems import een
from util.config import load_config

NEW_FAMILIES = ["EfficientNetV2B0", "EfficientNetV2S", "ResNet50V2", "DenseNet121", "ConvNeXtTiny",
                "MobileNetV3Large"]


def small_config(**model):
    config = load_config("configs/small.yaml")
    for key, value in model.items():
        setattr(config.model, key, value)
    return config


def values(weights) -> list:
    return [keras.ops.convert_to_numpy(w).copy() for w in weights]


@pytest.mark.parametrize("name", NEW_FAMILIES)
def test_backbone_skips_are_at_half_to_one_32nd_and_gradients_reach_the_backbone(name):
    """64x64 input: maps at 32, 16, 8, 4, 2 (ConvNeXt: none at 32); one SGD step moves the
    backbone's weights from the stem to the bottleneck: the gradient reaches the whole network."""
    keras.utils.set_random_seed(0)
    model = een.build_model(small_config(backbone=name))
    encoder = model.get_layer(f"{name.lower()}_encoder")
    skips = een.BACKBONES[name].skips
    sizes = [tuple(o.shape[1:3]) for o in encoder.outputs]
    assert sizes == [(64 >> k, 64 >> k) for k, ref in enumerate(skips, start=1) if ref is not None]
    assert (None in skips) == (name == "ConvNeXtTiny")
    concatenated = [f"dec2d_up{i}_concat" for i in (1, 2, 3, 4)
                    if f"dec2d_up{i}_concat" in {layer.name for layer in model.layers}]
    assert len(concatenated) == len(encoder.outputs) - 1  # one concat per skip below H/32
    before = values(encoder.trainable_weights)
    model.compile(optimizer=keras.optimizers.SGD(1.0), loss="mse", run_eagerly=True)  # no tracing
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 64, 64, 48, 1)).astype("float32")
    loss = model.train_on_batch(x, rng.random((1, 64, 64, 48, 3)).astype("float32"))
    assert np.isfinite(loss)
    moved = [not np.array_equal(a, b) for a, b in zip(before, values(encoder.trainable_weights))]
    # the stem and the last layer before the bottleneck; stochastic depth (EfficientNet's
    # drop_connect) may skip a residual branch in one step, hence not every weight moves
    assert len(moved) > 20 and moved[0] and moved[-1] and np.mean(moved) > 0.85


@pytest.mark.parametrize("name, preprocess", [
    ("ResNet50V2", keras.applications.resnet_v2.preprocess_input),
    ("DenseNet121", keras.applications.densenet.preprocess_input),
])
def test_families_without_built_in_preprocessing_get_their_preprocess_input(name, preprocess):
    encoder = een.backbone(small_config(backbone=name, norm_2d="batch"))
    x = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    layer = encoder.get_layer(f"{name.lower()}_preprocess")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(x)), preprocess(x.copy()),
                               rtol=1e-5, atol=1e-5)
    assert layer.count_params() == 0


@pytest.mark.parametrize("name", ["EfficientNetV2B0", "ConvNeXtTiny", "MobileNetV3Large"])
def test_families_with_built_in_preprocessing_get_no_extra_layer(name):
    encoder = een.backbone(small_config(backbone=name, norm_2d="batch"))
    assert f"{name.lower()}_preprocess" not in {layer.name for layer in encoder.layers}


def test_new_family_loads_a_local_weights_file(tmp_path):
    """A weights file saved from the bare keras.applications network loads into the encoder,
    the preprocessing layer in front notwithstanding."""
    config = small_config(backbone="DenseNet121", norm_2d="batch")
    path = tmp_path / "densenet121_notop.weights.h5"
    source = keras.applications.DenseNet121(include_top=False, weights=None, input_shape=(64, 64, 3))
    source.save_weights(path)
    config.model.backbone_weights = str(path)
    loaded = een.backbone(config)
    by_name = {layer.name: layer for layer in loaded.layers}
    for layer in (layer for layer in source.layers if layer.weights):
        for a, b in zip(layer.weights, by_name[layer.name].weights):
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(a),
                                          keras.ops.convert_to_numpy(b))


def test_summary_cli_builds_each_new_family(tmp_path, capsys):
    for name in ("ConvNeXtTiny", "MobileNetV3Large"):
        path = tmp_path / f"{name}.yaml"
        path.write_text(f"data: {{crop_size: [64, 64, 48]}}\n"
                        f"model: {{depth_factors: [2, 2, 4], backbone: {name}}}\n")
        assert model.main(["--config", str(path), "--summary"]) == 0
        out = capsys.readouterr().out
        assert f"{name.lower()}_encoder" in out and "compressed_image" in out
