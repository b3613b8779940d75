"""losses.py against hand-computed numpy values; finite gradients through the whole network."""
import keras
import numpy as np
import pytest
from keras import ops

import losses
from systems import een
from util.config import load_config

EPS = losses.DICE_EPS


def numpy_dice(t, p, per_channel=True, eps=EPS):
    if per_channel:
        axes = tuple(range(t.ndim - 1))
        return np.mean(2 * (t * p).sum(axes) / ((t * t).sum(axes) + (p * p).sum(axes) + eps))
    return 2 * (t * p).sum() / ((t * t).sum() + (p * p).sum() + eps)


def numpy_bce(t, p):
    p = np.clip(p, losses.PROB_EPS, 1 - losses.PROB_EPS)
    return -np.mean(t * np.log(p) + (1 - t) * np.log(1 - p))


def as_numpy(x):
    return float(ops.convert_to_numpy(x))


@pytest.fixture
def masks():
    rng = np.random.default_rng(0)
    t = (rng.random((1, 6, 5, 4, 3)) > 0.6).astype("float32")
    p = rng.random((1, 6, 5, 4, 3)).astype("float32")
    return t, p


@pytest.mark.parametrize("per_channel", [True, False])
def test_soft_dice_matches_numpy(masks, per_channel):
    t, p = masks
    assert as_numpy(losses.soft_dice(t, p, per_channel)) == pytest.approx(
        numpy_dice(t, p, per_channel), rel=1e-5)


def test_per_channel_differs_from_pooled_dice(masks):
    t, p = masks
    t[..., 2] = 0
    assert abs(numpy_dice(t, p, True) - numpy_dice(t, p, False)) > 0.05
    assert as_numpy(losses.soft_dice(t, p, True)) == pytest.approx(numpy_dice(t, p, True), rel=1e-5)


def test_dice_edge_cases_empty_all_ones_and_eps():
    zeros, ones = np.zeros((1, 4, 4, 4, 3), "float32"), np.ones((1, 4, 4, 4, 3), "float32")
    assert as_numpy(losses.soft_dice(zeros, zeros)) == 0.0  # 0 / eps: Eq. 1 as written
    assert as_numpy(losses.soft_dice(ones, ones)) == pytest.approx(128 / (128 + EPS), rel=1e-6)
    assert as_numpy(losses.soft_dice(ones, zeros)) == 0.0
    half = np.full_like(ones, 0.5)
    assert as_numpy(losses.soft_dice(ones, half, eps=1.0)) == pytest.approx(64 / (64 + 16 + 1))


def test_combined_loss_is_bce_minus_dice(masks):
    t, p = masks
    loss = losses.DiceCrossEntropy("sigmoid")
    assert as_numpy(loss(t, p)) == pytest.approx(numpy_bce(t, p) - numpy_dice(t, p), rel=1e-5)
    perfect = as_numpy(loss(t, t))
    assert perfect == pytest.approx(numpy_bce(t, t) - numpy_dice(t, t), abs=1e-5)
    assert perfect < as_numpy(loss(t, p))


def test_softmax_loss_uses_classes_from_regions():
    regions = np.array([[0, 0, 0], [1, 1, 0], [1, 0, 0], [1, 1, 1]], "float32").reshape(1, 4, 1, 1, 3)
    classes = ops.convert_to_numpy(losses.regions_to_classes(regions))
    np.testing.assert_array_equal(classes.reshape(4, 4), np.eye(4))
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((1, 4, 1, 1, 4))
    p = (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)).astype("float32")
    cce = -np.mean(np.sum(classes * np.log(p), axis=-1))
    expected = cce - numpy_dice(classes, p)
    assert as_numpy(losses.DiceCrossEntropy("softmax")(regions, p)) == pytest.approx(expected, rel=1e-5)
    back = ops.convert_to_numpy(losses.classes_to_regions(classes))
    np.testing.assert_array_equal(back, regions)


def test_region_dice_metric_and_brats_empty_rule():
    truth = np.zeros((2, 4, 4, 4, 3), "float32")
    pred = np.zeros_like(truth)
    truth[0, :2, ..., 0] = 1  # case 0: WT in half the volume, predicted in a quarter
    pred[0, :1, ..., 0] = 0.9
    metric = losses.RegionDice("WT")
    metric.update_state(truth, pred)  # case 1: both empty -> Dice 1
    expected = (2 * 16 / (32 + 16) + 1.0) / 2
    assert as_numpy(metric.result()) == pytest.approx(expected)
    assert metric.name == "dice_wt"
    assert [m.name for m in losses.region_metrics()] == ["dice_wt", "dice_tc", "dice_et"]
    softmax = losses.RegionDice("ET", "softmax")
    classes = np.zeros((1, 2, 1, 1, 4), "float32")
    classes[0, 0, 0, 0, 3] = 1
    classes[0, 1, 0, 0, 0] = 1
    regions = np.array([[1, 1, 1], [0, 0, 0]], "float32").reshape(1, 2, 1, 1, 3)
    softmax.update_state(regions, classes)
    assert as_numpy(softmax.result()) == 1.0


def test_gradients_through_the_network_are_finite():
    keras.utils.set_random_seed(0)
    config = load_config("configs/small.yaml")
    network = een.build_model(config)
    network.compile(optimizer=keras.optimizers.Nadam(1e-4), loss=losses.DiceCrossEntropy(),
                    metrics=losses.region_metrics(), run_eagerly=True)  # a step's numbers only
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 64, 64, 48, 1)).astype("float32")
    y = (rng.random((1, 64, 64, 48, 3)) > 0.9).astype("float32")
    before = [ops.convert_to_numpy(w).copy() for w in network.trainable_weights]
    logs = network.train_on_batch(x, y, return_dict=True)
    assert np.isfinite(logs["loss"]) and set(logs) >= {"dice_wt", "dice_tc", "dice_et"}
    after = [ops.convert_to_numpy(w) for w in network.trainable_weights]
    assert all(np.isfinite(a).all() for a in after)
    moved = [not np.array_equal(a, b) for a, b in zip(after, before)]
    assert sum(moved) > 0.9 * len(moved)
