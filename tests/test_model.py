"""model.py: parameter counts of the authors' model, stage shapes, a full-size forward pass."""
import math

import keras
import numpy as np
import pytest

import model
from systems import een
from util.config import ConfigError, load_config


def count(weights) -> int:
    return int(sum(math.prod(w.shape) for w in weights))


def config_without_weights(name: str):
    config = load_config(f"configs/{name}.yaml")
    config.model.backbone_weights = None
    return config


@pytest.fixture(scope="module")
def paper_model():
    return een.build_model(config_without_weights("paper"))


# (total, trainable, non-trainable) measured on the authors' model, SPEC.md section 6.
PARAMETERS = {
    "paper": (14_420_730, 14_376_787, 43_943),
    "authors_code": (14_422_043, 14_378_100, 43_943),
}


def stage_shapes(model) -> dict:
    names = ["enc1_add", "enc2_add", "enc3_add", "enc4_add", een.COMPRESSED_IMAGE,
             een.DECODED_IMAGE, "dec3d_1_add", "dec3d_2_add", "dec3d_3_add", een.OUTPUT]
    shapes = {n: tuple(model.get_layer(n).output.shape[1:]) for n in names}
    encoder = model.get_layer("efficientnetb0_encoder")
    shapes["backbone"] = [tuple(o.shape[1:]) for o in encoder.outputs]
    shapes["dec2d"] = [tuple(model.get_layer(f"dec2d_up{i}_concat").output.shape[1:])
                       for i in (1, 2, 3, 4)]
    return shapes


BACKBONE_SHAPES = [(96, 80, 96), (48, 40, 144), (24, 20, 240), (12, 10, 672), (6, 5, 1280)]
DEC2D_SHAPES = [(12, 10, 512 + 672), (24, 20, 256 + 240), (48, 40, 128 + 144), (96, 80, 64 + 96)]


def test_paper_parameters_and_stages(paper_model):
    assert (paper_model.count_params(), count(paper_model.trainable_weights),
            count(paper_model.non_trainable_weights)) == PARAMETERS["paper"]
    shapes = stage_shapes(paper_model)
    assert [shapes[f"enc{i}_add"] for i in (1, 2, 3, 4)] == [
        (192, 160, 108, 16), (192, 160, 36, 32), (192, 160, 12, 64), (192, 160, 3, 64)]
    assert shapes[een.COMPRESSED_IMAGE] == (192, 160, 3)
    assert shapes["backbone"] == BACKBONE_SHAPES
    assert shapes["dec2d"] == DEC2D_SHAPES
    assert shapes[een.DECODED_IMAGE] == (192, 160, 3)
    assert [shapes[f"dec3d_{i}_add"] for i in (1, 2, 3)] == [
        (192, 160, 12, 64), (192, 160, 36, 32), (192, 160, 108, 16)]
    assert shapes[een.OUTPUT] == (192, 160, 108, 3)
    assert paper_model.get_layer(een.OUTPUT).activation.__name__ == "sigmoid"


def test_decoder_blocks_hold_the_authors_parameter_counts(paper_model):
    blocks = [count(paper_model.get_layer(f"dec2d_up{i}_tconv").weights)
              + count(paper_model.get_layer(f"dec2d_up{i}_bn").weights) for i in (1, 2, 3, 4)]
    assert blocks == [5_900_288, 2_728_960, 571_904, 156_928]
    encoder = paper_model.get_layer("efficientnetb0_encoder")
    assert (encoder.count_params(), count(encoder.trainable_weights)) == (4_049_571, 4_007_548)


def test_authors_code_parameters_and_stages():
    model = een.build_model(config_without_weights("authors_code"))
    assert (model.count_params(), count(model.trainable_weights),
            count(model.non_trainable_weights)) == PARAMETERS["authors_code"]
    shapes = stage_shapes(model)
    assert model.input_shape == (None, 192, 160, 144, 4)
    assert [shapes[f"enc{i}_add"] for i in (1, 2, 3, 4)] == [
        (192, 160, 144, 16), (192, 160, 48, 32), (192, 160, 12, 64), (192, 160, 3, 64)]
    assert shapes["backbone"] == BACKBONE_SHAPES and shapes["dec2d"] == DEC2D_SHAPES
    assert [shapes[f"dec3d_{i}_add"] for i in (1, 2, 3)] == [
        (192, 160, 12, 64), (192, 160, 48, 32), (192, 160, 144, 16)]
    assert shapes[een.OUTPUT] == (192, 160, 144, 4)
    assert model.get_layer(een.OUTPUT).activation.__name__ == "softmax"


def test_full_size_paper_forward_pass(paper_model):
    """One 192x160x108 volume through the compiled predict path (about 2 GB, 5-10 s on 2 cores)."""
    x = np.random.default_rng(0).standard_normal((1, 192, 160, 108, 1)).astype("float32")
    y = paper_model.predict_on_batch(x)
    assert y.shape == (1, 192, 160, 108, 3)
    assert np.isfinite(y).all() and 0 <= y.min() and y.max() <= 1
    assert y.std() > 0


def test_feature_model_exposes_the_named_maps():
    config = config_without_weights("small")
    features = een.feature_model(een.build_model(config))
    out = features.predict_on_batch(np.ones((1, 64, 64, 48, 1), "float32"))
    assert out[een.COMPRESSED_IMAGE].shape == (1, 64, 64, 3)
    assert out[een.DECODED_IMAGE].shape == (1, 64, 64, 3)
    assert out[een.OUTPUT].shape == (1, 64, 64, 48, 3)
    assert (out[een.COMPRESSED_IMAGE] > 0).all()  # softplus of the 1x1x1 depth compression
    assert features.get_layer("enc_to_image").activation.__name__ == "softplus"


def test_impossible_depth_factors_are_a_clear_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("data: {crop_size: [64, 64, 48]}\nmodel: {depth_factors: [3, 3, 4]}\n")
    with pytest.raises(ConfigError, match=r"multiply to 36, but depth 48 needs .* 48/3 = 16"):
        load_config(path)


@pytest.mark.parametrize("factors", [(2, 2, 4), (4, 2, 2), (1, 4, 4), (16, 1, 1)])
def test_any_factors_with_the_right_product_build(factors):
    config = config_without_weights("small")
    config.model.depth_factors = factors
    model = een.build_model(config)
    assert model.output_shape == (None, 64, 64, 48, 3)


def test_maxpool_variant_and_efficientnet_b1_build():
    config = config_without_weights("small")
    strided = een.build_model(config).count_params()
    config.model.downsampling = "maxpool"
    model = een.build_model(config)
    assert "enc2_down_pool" in [layer.name for layer in model.layers]
    assert model.get_layer("enc2_add").output.shape[1:] == (64, 64, 24, 16)
    assert model.count_params() == strided  # pooling adds no weights
    config = config_without_weights("small")
    config.model.backbone = "EfficientNetB1"
    model = een.build_model(config)
    assert model.get_layer("efficientnetb1_encoder").outputs[-1].shape[1:] == (2, 2, 1280)
    assert model.predict_on_batch(np.zeros((1, 64, 64, 48, 1), "float32")).shape == (1, 64, 64, 48, 3)


def test_unknown_backbone_is_a_clear_error():
    config = config_without_weights("small")
    config.model.backbone = "ResNet9000"
    with pytest.raises(ConfigError, match="ResNet9000 is not one of EfficientNetB0"):
        een.build_model(config)


def test_backbone_weights_from_a_local_file(tmp_path):
    config = config_without_weights("small")
    config.model.norm_2d = "batch"  # the paper's backbone, BatchNorm statistics included
    reference = een.backbone(config)
    path = tmp_path / "efficientnetb0_notop.weights.h5"
    keras.applications.EfficientNetB0(include_top=False, weights=None,
                                      input_shape=(64, 64, 3)).save_weights(path)
    source = keras.applications.EfficientNetB0(include_top=False, weights=None, input_shape=(64, 64, 3))
    source.load_weights(path)
    config.model.backbone_weights = str(path)
    loaded = een.backbone(config)
    assert len(loaded.weights) == len(source.weights)
    for a, b in zip(loaded.weights, source.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
    differs = [not np.array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
               for a, b in zip(loaded.trainable_weights, reference.trainable_weights)]
    assert any(differs)  # a fresh random build is not what was loaded
    config.model.backbone_weights = str(tmp_path / "missing.h5")
    with pytest.raises(ConfigError, match="missing.h5 is not a file"):
        een.backbone(config)


def test_fast_group_norm_equals_keras_group_normalization():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((2, 12, 10, 9, 16)) * 3 + 1).astype("float32")
    stock, fast = keras.layers.GroupNormalization(8), een.GroupNorm(8)
    stock.build(x.shape)
    fast.build(x.shape)
    weights = [rng.standard_normal(16).astype("float32") for _ in range(2)]
    stock.set_weights(weights)
    fast.set_weights(weights)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(fast(x)),
                               keras.ops.convert_to_numpy(stock(x)), atol=1e-5)
    assert fast.count_params() == stock.count_params() == 32


def test_fast_group_norm_on_a_full_size_map_is_close_to_float64():
    x = (np.random.default_rng(1).standard_normal((1, 192, 160, 108, 16)) * 3 + 1).astype("float32")
    grouped = x.astype(np.float64).reshape(1, 192, 160, 108, 8, 2)
    mean = grouped.mean(axis=(1, 2, 3, 5), keepdims=True)
    reference = ((grouped - mean) / np.sqrt(grouped.var(axis=(1, 2, 3, 5), keepdims=True) + 1e-3))
    layer = een.GroupNorm(8)
    out = keras.ops.convert_to_numpy(layer(x))
    assert np.abs(out - reference.reshape(x.shape)).max() < 5e-3


def test_model_summary_cli(capsys):
    assert model.main(["--config", "configs/paper.yaml", "--summary"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert any("Total params: 14,420,730" in line for line in lines[-6:])
    assert any("compressed_image" in line for line in lines)


def small_config(**model):
    config = load_config("configs/small.yaml")
    for key, value in model.items():
        setattr(config.model, key, value)
    return config


def test_embedding_options_keep_the_shapes_and_transposed_resize_parameter_parity():
    """norm_2d group, resize decoder, input scale, skip dropout: same stages, no BatchNorm."""
    paper_like = een.build_model(small_config(norm_2d="batch", decoder_upsampling="transpose"))
    varied = een.build_model(small_config(norm_2d="group", decoder_upsampling="resize",
                                          backbone_input_scale=255.0, skip_dropout=0.5))
    encoder = varied.get_layer("efficientnetb0_encoder")
    assert not any(isinstance(l, keras.layers.BatchNormalization)
                   for l in encoder.layers + varied.layers)
    assert varied.get_layer("backbone_input_scale").scale == 255.0
    assert varied.get_layer(een.DECODED_IMAGE).output.shape == (None, 64, 64, 3)
    # resize + 3x3 conv holds exactly the transposed convolution's parameters
    for name in ("dec2d_up1_tconv", "dec2d_up4_tconv", een.DECODED_IMAGE):
        assert varied.get_layer(name).count_params() == paper_like.get_layer(name).count_params()
    # GroupNorm drops BatchNorm's moving statistics only
    bn_stats = sum(count(l.non_trainable_weights) for l in paper_like.layers
                   if isinstance(l, keras.layers.BatchNormalization))
    encoder_bn_stats = sum(count(l.non_trainable_weights)
                           for l in paper_like.get_layer("efficientnetb0_encoder").layers
                           if isinstance(l, keras.layers.BatchNormalization))
    assert count(paper_like.trainable_weights) == count(varied.trainable_weights)
    assert paper_like.count_params() - varied.count_params() == bn_stats + encoder_bn_stats


def test_group_norm_backbone_keeps_the_batchnorm_scale_and_shift():
    config = small_config(norm_2d="batch")
    original = een.backbone(config)
    bn = original.get_layer("stem_bn")
    bn.set_weights([np.full_like(w, v) for w, v in zip(bn.get_weights(), (2.0, 0.5, 0.0, 1.0))])
    converted = een.with_group_norm(original, 8)
    gamma, beta = converted.get_layer("stem_bn").get_weights()
    assert isinstance(converted.get_layer("stem_bn"), een.GroupNorm)
    assert np.allclose(gamma, 2.0) and np.allclose(beta, 0.5)


def test_skip_dropout_drops_all_skips_of_a_case_together_only_in_training():
    layer = een.SkipDropout(0.5, seed=1)
    skips = [np.ones((64, 4, 4, 6, 2), np.float32), np.ones((64, 4, 4, 3, 4), np.float32)]
    dropped = [keras.ops.convert_to_numpy(s) for s in layer(skips, training=True)]
    kept = [d.reshape(64, -1).max(axis=1) for d in dropped]
    np.testing.assert_array_equal(kept[0], kept[1])  # the same cases lose every skip
    assert set(np.unique(kept[0])) == {0.0, 1.0} and 16 < kept[0].sum() < 48
    unchanged = layer(skips, training=False)
    assert all(np.array_equal(keras.ops.convert_to_numpy(u), s) for u, s in zip(unchanged, skips))


def test_decaying_skip_dropout_uses_the_rate_training_sets():
    layer = een.SkipDropout(0.5, seed=1, decays=True)
    skips = [np.ones((64, 2, 2, 2, 1), np.float32)]
    layer.current_rate.assign(0.0)
    kept = keras.ops.convert_to_numpy(layer(skips, training=True)[0])
    assert kept.min() == 1  # rate 0: nothing dropped
    layer.current_rate.assign(0.999)
    assert keras.ops.convert_to_numpy(layer(skips, training=True)[0]).sum() <= 2 * 8
    assert een.SkipDropout(0.5).weights == []  # constant rate: no variable, checkpoints unchanged


def test_model_without_3d_skips_has_the_same_weights():
    config = small_config()
    full, no_skips = een.build_model(config), een.build_model(config, skips_3d=False)
    rate = 1 if config.model.skip_dropout_decay_epochs else 0  # the decaying skip-dropout rate
    assert full.count_params() == no_skips.count_params() + rate
    assert "dec3d_1_skip" in [l.name for l in full.layers]
    assert not any(l.name.endswith("_skip") for l in no_skips.layers)


def test_skip_dropout_levels_choose_which_skips_can_be_dropped():
    network = een.build_model(small_config(skip_dropout=0.5, skip_dropout_levels=(2, 3)))
    dropout = network.get_layer("skip_dropout")
    assert [tuple(t.shape[1:]) for t in dropout.input] == [(64, 64, 24, 16), (64, 64, 12, 32)]
    full_depth_skip = network.get_layer("dec3d_3_skip").input[1]
    assert full_depth_skip._keras_history.operation.name == "enc1_add"  # never dropped
    with pytest.raises(ConfigError, match="skip_dropout_levels"):
        een.build_model(load_config_with(skip_dropout_levels=[4]))


def load_config_with(**model):
    from util.config import config_from_dict

    return config_from_dict({"data": {"crop_size": [64, 64, 48]},
                             "model": {"depth_factors": [2, 2, 4], **model}})
