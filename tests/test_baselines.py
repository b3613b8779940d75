"""baselines/ and families.py: exact parameter counts and forward passes at full size, the
samplers' invariants, each loss against values worked out by hand, Ben naceur's post-processings
on hand-made slices, and the family seam's configuration errors."""
import math

import numpy as np
import pytest
import yaml

from systems import families
import model
from systems import een
import preprocess
import synthetic
from systems import bennaceur2020, kermi2018, unet3d_patches
from systems.common import BACKGROUND_MARKER, cached_intensities, normalise_slices, predict_slices
from brats.cases import MODALITIES, find_cases, load_case
from util.config import FAMILIES, ConfigError, config_from_dict, load_config, save_config
from datasets.cache import Cache
from datasets import volumes

BASELINE_CONFIGS = ("kermi2018", "unet3d_patches", "bennaceur2020")


def config(name: str, **section):
    """A configs/<name>.yaml with fields of its family's section replaced."""
    loaded = load_config(f"configs/{name}.yaml")
    for key, value in section.items():
        setattr(getattr(loaded, loaded.model.family), key, value)
    return loaded


def trainable(model) -> int:
    return int(sum(math.prod(w.shape) for w in model.trainable_weights))


@pytest.fixture(scope="module")
def full_models():
    return {name: families.family_of(config(name)).build(config(name)) for name in BASELINE_CONFIGS}


@pytest.fixture(scope="module")
def one_case(tmp_path_factory):
    """One synthetic case, raw and preprocessed for configs/small.yaml (3 mm, 64x64x48)."""
    root = tmp_path_factory.mktemp("baselines")
    list(synthetic.write_dataset(root / "raw", 1, 11, "brats2020"))
    assert preprocess.main([str(root / "raw"), str(root / "cache"), "--config",
                            "configs/small.yaml"]) == 0
    return root


# ---- networks ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name, variant, total, weights", [
    ("kermi2018", None, 10_159_748, 10_153_092),  # 6,656 BN moving statistics
    ("unet3d_patches", None, 5_838_691, 5_838_691),
    ("bennaceur2020", "input_sparse", 130_180, 130_180),
    ("bennaceur2020", "sparse", 127_876, 127_876),
    ("bennaceur2020", "dense", 181_124, 181_124),
])
def test_parameter_counts_at_full_size(full_models, name, variant, total, weights):
    if variant in (None, "input_sparse"):
        network = full_models[name]
    else:
        network = bennaceur2020.build(config(name, variant=variant))
    assert (network.count_params(), trainable(network)) == (total, weights)


def test_summary_through_model_py(capsys):
    assert model.main(["--config", "configs/kermi2018.yaml", "--summary"]) == 0
    assert "Total params: 10,159,748" in capsys.readouterr().out


@pytest.mark.parametrize("name, shape", [
    ("kermi2018", (1, 240, 240, 4)),
    ("bennaceur2020", (1, 240, 240, 4)),
    ("unet3d_patches", (1, 160, 160, 16, 4)),
])
def test_forward_pass_at_full_input_size(full_models, name, shape):
    inputs = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    output = np.asarray(full_models[name].predict_on_batch(inputs))
    assert output.shape == shape[:-1] + ((3,) if name == "unet3d_patches" else (4,))
    assert np.isfinite(output).all() and (output >= 0).all() and (output <= 1).all()
    if name != "unet3d_patches":  # softmax over the classes of labels 0, 1, 2, 4
        np.testing.assert_allclose(output.sum(-1), 1, atol=1e-5)


def test_layer_names_are_readable(full_models):
    names = {layer.name for layer in full_models["kermi2018"].layers}
    assert {"stem", "enc1_add", "enc3_down", "bottom_add", "dec1_shortcut", "classes"} <= names
    names = {layer.name for layer in full_models["bennaceur2020"].layers}
    assert {"level1_conv2", "context1_up", "reinject1", "reinject2", "head_conv2"} <= names


# ---- normalisation ----------------------------------------------------------------------------

def published_normalisation(image: np.ndarray) -> np.ndarray:
    """The authors' per-slice rule written slice by slice (float64)."""
    top, bottom = np.percentile(image, 99), np.percentile(image, 1)
    image = np.clip(image, bottom, top)
    brain = image[image != 0]
    if np.std(image) == 0 or np.std(brain) == 0:
        return image
    scored = (image - brain.mean()) / brain.std()
    scored[scored == scored.min()] = -9
    return scored


def test_per_slice_normalisation_follows_the_published_rule():
    rng = np.random.default_rng(1)
    volume = np.zeros((50, 40, 6, 2), np.float32)
    volume[8:42, 6:34] = rng.integers(1, 900, (34, 28, 6, 2))
    volume[..., 2, 0] = 0  # an empty slice
    volume[..., 3, 1] = 0
    volume[20, 20, 3, 1] = 5  # a slice with one non-zero pixel
    out = normalise_slices(volume)
    for z in range(6):
        for c in range(2):
            expected = published_normalisation(volume[..., z, c].astype(np.float64))
            np.testing.assert_allclose(out[..., z, c], expected, atol=1e-4)
    assert (out[0, 0, 0] == BACKGROUND_MARKER).all()


def test_cached_intensities_undo_the_cache_z_score(one_case):
    cache = Cache(one_case / "cache")
    case = load_case(find_cases(one_case / "raw")[0])
    meta = cache.meta(cache.ids[0])
    expected = np.stack([volumes.crop(volumes.block_mean(case.stored[m], 3),
                                         meta["crop_offsets"], cache.crop_size)
                         for m in MODALITIES], axis=-1)
    np.testing.assert_allclose(cached_intensities(cache, cache.ids[0]), expected, rtol=1e-4,
                               atol=1e-2)


# ---- samplers ---------------------------------------------------------------------------------

def coordinate_volume(shape: tuple, brain_y_from: int = 10) -> tuple:
    """Inputs whose channels 1-3 hold x, y, z and whose FLAIR marks a brain box (else -9), with
    regions WT, TC, ET = parities of x, y, z: any patch says where it came from and whether its
    labels moved with it. The brain spans x 4 .. X-7 and y brain_y_from .. Y-4."""
    x, y, z = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    brain = (x >= 4) & (x < shape[0] - 6) & (y >= brain_y_from) & (y < shape[1] - 3)
    flair = np.where(brain, 1.0 + x, BACKGROUND_MARKER)
    inputs = np.stack([flair, x, y, z], axis=-1).astype(np.float32)
    regions = np.stack([x % 2, y % 2, z % 2], axis=-1).astype(np.uint8)
    return inputs, regions


def labels_follow_image(x: np.ndarray, y: np.ndarray) -> bool:
    return all(np.array_equal(y[..., i], x[..., i + 1].astype(np.int64) % 2) for i in range(3))


def test_kermi_patches_are_inside_the_slice_centred_on_brain_and_flipped_with_labels():
    inputs, regions = coordinate_volume((40, 44, 6))
    chosen = config("kermi2018_small", patch_size=16)
    x, y = kermi2018.examples(inputs, regions, chosen, np.random.default_rng(0))
    assert x.shape == (18, 16, 16, 4) and y.shape == (18, 16, 16, 3)  # 3 per slice x 6 slices
    flipped = 0
    for patch, labels in zip(x, y):
        rows, columns = patch[:, 0, 1], patch[0, :, 2]
        assert len(np.unique(patch[..., 3])) == 1  # one axial slice
        np.testing.assert_array_equal(columns, columns[0] + np.arange(16))
        flipped += rows[0] > rows[-1]
        start = rows.min()
        np.testing.assert_array_equal(np.sort(rows), start + np.arange(16))
        assert 0 <= start and start + 16 <= 40 and columns[0] >= 0 and columns[-1] < 44
        centre = (int(start) + 8, int(columns[0]) + 8, int(patch[0, 0, 3]))
        assert inputs[centre][0] != BACKGROUND_MARKER  # a brain voxel
        assert labels_follow_image(patch, labels)
    assert 0 < flipped < len(x)
    for unflipped, augment in ((config("kermi2018_small", patch_size=16, flip=False), True),
                               (chosen, False)):
        x, _ = kermi2018.examples(inputs, regions, unflipped, np.random.default_rng(0), augment)
        assert (np.diff(x[..., 1], axis=1) == 1).all()


def test_unet3d_subvolumes_keep_the_background_rule_and_move_with_their_labels():
    rng = np.random.default_rng(2)
    shape = (48, 48, 20)
    regions = np.zeros(shape + (3,), np.uint8)
    regions[20:36, 12:30, 4:14, 0] = 1
    regions[24:30, 16:22, 6:10, 1:] = 1
    x, y, z = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij")
    volume = np.stack([100 + 50 * regions[..., 0] + rng.random(shape), 1 + x, 1 + y,
                       rng.random(shape)], axis=-1).astype(np.float32)
    chosen = config("unet3d_patches_small", patch_size=(16, 16, 8))
    xs, ys = unet3d_patches.examples(volume, regions, chosen, np.random.default_rng(3))
    assert xs.shape == (10, 16, 16, 8, 4) and ys.shape == (10, 16, 16, 8, 3)
    assert ((1 - ys[..., 0].mean(axis=(1, 2, 3))) < 0.95).all()
    turned = 0
    for patch, labels in zip(xs, ys):
        for k in range(8):  # channel 0 is higher inside the tumour, wherever the flips put it
            inside = labels[:, :, k, 0] > 0
            if inside.any() and (~inside).any():
                assert patch[:, :, k, 0][inside].min() > patch[:, :, k, 0][~inside].max()
        turned += not (np.diff(patch[..., 1], axis=0) > 0).all()
    assert turned > 0
    xs, _ = unet3d_patches.examples(volume, regions, chosen, np.random.default_rng(3),
                                    augment=False)
    assert (np.diff(xs[..., 1], axis=1) > 0).all()
    np.testing.assert_allclose(xs.mean(axis=(1, 2)), 0, atol=1e-4)  # each slice standardised
    np.testing.assert_allclose(xs.std(axis=(1, 2)), 1, atol=1e-3)
    no_tumour = np.zeros_like(regions)
    assert len(unet3d_patches.examples(volume, no_tumour, chosen, np.random.default_rng(0))[0]) == 0


def test_bennaceur_grid_patches_hold_brain_and_their_own_labels():
    inputs, regions = coordinate_volume((40, 40, 3), brain_y_from=18)
    chosen = config("bennaceur2020_small", patch_size=16, stride=8)
    x, y = bennaceur2020.examples(inputs, regions, chosen, np.random.default_rng(0))
    # windows start at 0, 8, 16, 24; the brain spans x 4..33 and y 18..36: every window but
    # those at y 0..15 touches it (4 x 3 per slice)
    assert x.shape == (3 * 12, 16, 16, 4)
    corners = {(int(p[0, 0, 1]), int(p[0, 0, 2]), int(p[0, 0, 3])) for p in x}
    assert corners == {(a, b, c) for a in (0, 8, 16, 24) for b in (8, 16, 24) for c in range(3)}
    assert all(labels_follow_image(p, labels) for p, labels in zip(x, y))
    assert all((p[..., 0] != BACKGROUND_MARKER).any() for p in x)


def test_prepared_cases_feed_the_samplers(one_case):
    cache = Cache(one_case / "cache")
    for name in BASELINE_CONFIGS:
        family = families.family_of(config(f"{name}_small"))
        small = config(f"{name}_small")
        inputs, regions = family.prepare_case(cache, cache.ids[0], MODALITIES, small)
        assert inputs.shape == (64, 64, 48, 4) and regions.shape == (64, 64, 48, 3)
        x, y = family.examples(inputs, regions, small, np.random.default_rng(0))
        assert len(x) == len(y) > 0 and x.dtype == np.float32 and y.dtype == np.uint8


# ---- losses and schedules ---------------------------------------------------------------------

def regions_of(classes: list) -> np.ndarray:
    """Class indices -> regions (1, n, 3) as the cache stores them (class 3 is label 4)."""
    table = {0: (0, 0, 0), 1: (1, 1, 0), 2: (1, 0, 0), 3: (1, 1, 1)}
    return np.array([[table[c] for c in classes]], np.float32)


def test_generalised_dice_plus_weighted_ce_by_hand():
    truth = regions_of([0, 3])  # classes 1 and 2 absent: their GDL weight is 1 / 1e-7
    predicted = np.array([[[0.7, 0.1, 0.1, 0.1], [0.1, 0.1, 0.2, 0.6]]], np.float32)
    present = 1 / (1 + 1e-7)  # w = 1 / (r^2 + 1e-7) with r = 1
    gds = 2 * (0.7 + 0.6) * present / (present * (1.8 + 1.7) + 1e7 * (0.2 + 0.3))
    wce = (-1 * math.log(0.7) - 4 * math.log(0.6)) / 2
    value = float(kermi2018.GeneralisedDiceWeightedCE()(truth, predicted))
    assert value == pytest.approx(1 - gds + wce, rel=1e-6)
    assert 1 - gds > 0.999999  # the absent classes swamp the Dice term, as published
    capped = float(kermi2018.GeneralisedDiceWeightedCE(weight_cap=10.0)(truth, predicted))
    assert capped == pytest.approx(1 - 2 * 1.3 * present / (3.5 * present + 10 * 0.5) + wce,
                                   rel=1e-6)


def test_soft_dice_loss_by_hand():
    truth = regions_of([2, 3]).reshape(1, 1, 1, 2, 3)  # edema, then enhancing
    predicted = np.array([[0.8, 0.1, 0.3], [0.2, 0.4, 0.9]], np.float32).reshape(1, 1, 1, 2, 3)
    eps = 1e-5
    edema = (2 * 0.8 + eps) / (0.64 + 0.04 + 1 + eps)
    core = eps / (0.01 + 0.16 + eps)
    enhancing = (2 * 0.9 + eps) / (0.09 + 0.81 + 1 + eps)
    value = float(unet3d_patches.SoftDiceLoss()(truth, predicted))
    assert value == pytest.approx(1 - (edema + core + enhancing) / 3, rel=1e-6)


def test_weighted_cross_entropy_by_hand():
    truth = regions_of([0, 1, 2, 3])
    predicted = np.array([[[0.5, 0.2, 0.2, 0.1], [0.1, 0.8, 0.05, 0.05],
                           [0.25, 0.25, 0.5, 0.0], [0.25, 0.25, 0.25, 0.25]]], np.float32)
    expected = (0.28 * math.log(2) + 0.08 * -math.log(0.8) + 0.43 * math.log(2)
                + 0.21 * math.log(4)) / 4
    assert float(bennaceur2020.WeightedCrossEntropy()(truth, predicted)) == pytest.approx(
        expected, rel=1e-6)


def test_learning_rate_schedules():
    sgd = kermi2018.optimizer(config("kermi2018"), steps_per_epoch=100)
    expected = {0: 0.008, 50: 0.008 / (1 + 5e-5 * 50), 100: 0.0008 / (1 + 5e-4 * 100),
                230: 0.00008 / (1 + 5e-3 * 230)}
    for step, rate in expected.items():
        sgd.iterations.assign(step)
        assert float(sgd.learning_rate) == pytest.approx(rate, rel=1e-5)
    assert (sgd.momentum, sgd.nesterov) == (0.9, False)
    published = kermi2018.optimizer(config("kermi2018", schedule_epoch_steps=4380), 100)
    for step, rate in {4379: 0.008 / (1 + 5e-5 * 4379), 4380: 0.0008 / (1 + 5e-4 * 4380)}.items():
        published.iterations.assign(step)  # the published epoch, whatever the training epoch
        assert float(published.learning_rate) == pytest.approx(rate, rel=1e-5)
    nesterov = bennaceur2020.optimizer(config("bennaceur2020"), steps_per_epoch=100)
    nesterov.iterations.assign(250)
    assert float(nesterov.learning_rate) == pytest.approx(1e-3 * 0.99 ** 2, rel=1e-5)
    assert (nesterov.momentum, nesterov.nesterov) == (0.9, True)


@pytest.mark.parametrize("name", BASELINE_CONFIGS)
def test_compiled_small_networks_resume_from_a_saved_file(tmp_path, name):
    """A run resumes from last.keras: loss, schedule and weights must come back. The network is
    compiled as train.py compiles it, and its first training step is traced once: with the
    optimizer's variables made inside that step, TensorFlow traced it twice."""
    import keras

    chosen = config(f"{name}_small")
    network = families.compiled(chosen, 7, jit=False)
    traced, step = [], network.train_step
    network.train_step = lambda data: traced.append(data) or step(data)
    shape = (2, 32, 32, 8) if name == "unet3d_patches" else (2, 32, 32)
    rng = np.random.default_rng(6)
    x = rng.normal(size=shape + (4,)).astype(np.float32)
    y = (rng.random(shape + (3,)) > 0.5).astype(np.float32)
    network.fit(x, y, epochs=1, verbose=0)
    assert len(traced) == 1
    network.save(tmp_path / "last.keras")
    loaded = keras.saving.load_model(tmp_path / "last.keras")
    assert type(loaded.loss) is type(network.loss)
    assert float(loaded.optimizer.learning_rate) == pytest.approx(
        float(network.optimizer.learning_rate))
    np.testing.assert_allclose(loaded.predict_on_batch(x), network.predict_on_batch(x), atol=1e-5)


# ---- inference and post-processing ------------------------------------------------------------

def test_whole_slices_are_padded_to_the_network_and_cropped_back():
    network = bennaceur2020.build(config("bennaceur2020"))
    volume = np.random.default_rng(4).normal(size=(30, 26, 3, 4)).astype(np.float32)
    out = predict_slices(network, volume, bennaceur2020.DOWNSAMPLING, batch=2)
    padded = np.pad(volume, ((0, 2), (0, 2), (0, 0), (0, 0)), constant_values=BACKGROUND_MARKER)
    direct = np.asarray(network.predict_on_batch(np.moveaxis(padded, 2, 0)))
    np.testing.assert_allclose(out, np.moveaxis(direct, 0, 2)[:30, :26], atol=1e-6)


def test_tiles_cover_the_volume_each_standardised():
    network = unet3d_patches.build(config("unet3d_patches_small"))
    volume = np.random.default_rng(5).random((40, 36, 10, 4)).astype(np.float32)
    out = unet3d_patches.predict_tiles(network, volume, (32, 32, 8))
    assert out.shape == (40, 36, 10, 3)
    last = np.zeros((32, 32, 8, 4), np.float32)
    last[:8, :4, :2] = volume[32:, 32:, 8:]
    tile = np.asarray(network.predict_on_batch(unet3d_patches.standardise(last)[None]))[0]
    np.testing.assert_allclose(out[32:, 32:, 8:], tile[:8, :4, :2], atol=1e-6)


def test_predict_case_gives_nested_regions_on_the_case_grid(one_case):
    case = load_case(find_cases(one_case / "raw")[0])
    chosen = config("bennaceur2020_small")
    family = families.family_of(chosen)
    regions = family.predict_case(family.build(chosen), case, MODALITIES, chosen)
    assert regions.shape == case.shape + (3,)
    assert (regions[..., 0] >= regions[..., 1] - 1e-6).all()
    assert (regions[..., 1] >= regions[..., 2] - 1e-6).all()


def test_small_components_go_per_slice_and_kept_pixels_keep_their_labels():
    labels = np.zeros((40, 40, 2), np.uint8)
    labels[2:12, 2:13, 0] = 2  # 110 pixels: kept
    labels[5:7, 5:7, 0] = 4  # inside it: keeps label 4
    labels[20:30, 2:12, 0] = 1
    labels[20, 2, 0] = 0  # 99 pixels: removed
    labels[20:28, 20:28, 0] = 1
    labels[28:36, 28:36, 0] = 4  # two 64-pixel squares meeting at a corner: one component of 128
    labels[2:12, 2:8, 1] = 2  # 60 pixels below the kept component: removed (slices apart)
    expected = labels.copy()
    expected[20:30, 2:12, 0] = 0
    expected[:, :, 1] = 0
    np.testing.assert_array_equal(bennaceur2020.remove_small_components(labels, 110), expected)


def test_opening_with_the_cross_per_slice():
    labels = np.zeros((12, 12, 2), np.uint8)
    labels[1:8, 1:8, 0] = 2
    labels[4, 4, 0] = 4  # a single pixel: opened away, back to the surrounding 2
    labels[10, 2:9, 0] = 1  # a one-pixel-wide line: removed
    labels[4:7, 5, 1] = 1
    labels[5, 4:7, 1] = 1  # the cross itself survives its own opening
    expected = np.zeros_like(labels)
    expected[1:8, 1:8, 0] = 2
    expected[1, 1, 0] = expected[1, 7, 0] = expected[7, 1, 0] = expected[7, 7, 0] = 0  # corners
    expected[:, :, 1] = labels[:, :, 1]
    np.testing.assert_array_equal(bennaceur2020.open_slices(labels), expected)


def test_postprocess_applies_one_then_two():
    labels = np.zeros((30, 30, 1), np.uint8)
    labels[2:14, 2:14, 0] = 2  # 144 pixels: kept, then its corners opened away
    labels[20:26, 20:26, 0] = 1  # 36 pixels: removed by post-processing 1
    out = bennaceur2020.postprocess(labels, config("bennaceur2020"))
    expected = bennaceur2020.open_slices(bennaceur2020.remove_small_components(labels, 110))
    np.testing.assert_array_equal(out, expected)
    assert out[20:26, 20:26].max() == 0 and out[2, 2, 0] == 0 and out[3, 3, 0] == 2
    unchanged = config("bennaceur2020", min_component=0, opening=False)
    np.testing.assert_array_equal(bennaceur2020.postprocess(labels, unchanged), labels)


# ---- the family seam --------------------------------------------------------------------------

def test_registry_names_every_family():
    assert tuple(families.REGISTRY) == FAMILIES
    for name in BASELINE_CONFIGS:
        assert families.family_of(config(name)).name == name
    assert families.family_of(load_config("configs/paper.yaml")) is families.EEN


@pytest.mark.parametrize("values, message", [
    ({"model": {"family": "unet2d"}}, r"x.yaml: model.family: unknown family 'unet2d'"),
    ({"model": {"family": "kermi2018", "depth_factors": [3, 3, 4]}},
     r"x.yaml: model.depth_factors is an EEN setting; model.family kermi2018"),
    ({"model": {"family": "bennaceur2020"}, "train": {"optimizer": "adam"}},
     r"x.yaml: train.optimizer is an EEN setting"),
    ({"model": {"family": "kermi2018"}, "bennaceur2020": {"stride": 16}},
     r"x.yaml: section bennaceur2020 belongs to model.family bennaceur2020, but model.family is "
     r"kermi2018"),
    ({"unet3d_patches": {"threshold": 0.9}}, r"section unet3d_patches .* model.family is een"),
    ({"model": {"family": "unet3d_patches"}, "data": {"crop_size": [64, 64, 48]}},
     r"x.yaml: unet3d_patches.patch_size \[160, 160, 16\] exceeds data.crop_size"),
    ({"model": {"family": "bennaceur2020"}, "bennaceur2020": {"variant": "attention"}},
     r"bennaceur2020.variant must be input_sparse, sparse or dense"),
    ({"model": {"family": "kermi2018"}, "kermi2018": {"patch_size": 100}},
     r"kermi2018.patch_size 100 must be a multiple of 8"),
    ({"model": {"family": "kermi2018"}, "kermi2018": {"schedule_epoch_steps": -1}},
     r"kermi2018.schedule_epoch_steps must be 0"),
    ({"model": {"family": "kermi2018"}, "data": {"modalities": ["flair"]}},
     r"data.modalities: kermi2018 reads all four modalities"),
])
def test_family_mismatches_are_one_line_errors(values, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(values, "x.yaml")


def test_unknown_family_on_the_command_line(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"model": {"family": "resnet"}}))
    with pytest.raises(SystemExit) as stop:
        model.main(["--config", str(path)])
    assert stop.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "model.family: unknown family 'resnet'" in error


@pytest.mark.parametrize("name", [*BASELINE_CONFIGS, *(f"{n}_small" for n in BASELINE_CONFIGS)])
def test_saved_baseline_config_loads_back_the_same(tmp_path, name):
    original = load_config(f"configs/{name}.yaml")
    save_config(original, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml").to_dict() == original.to_dict()
