"""Loss and metrics of the paper (SPEC.md section 3), in keras.ops only (any Keras backend).

Targets are always the nested regions (..., 3) = WT, TC, ET as the cache stores them. The network
outputs either the same three sigmoid regions (paper) or four softmax classes for labels 0, 1, 2,
4 (authors' code); for the latter the targets are turned into one-hot classes for the loss and the
predictions back into regions for the metrics.

    soft Dice (Eq. 1)   D = 2 sum(t p) / (sum(t^2) + sum(p^2) + eps)
    loss (Eq. 2)        L = cross-entropy - D

By default D is computed per channel (sums over the batch and all voxels of one channel) and the
channel values are averaged; `per_channel=False` computes one D over all channels together.
"""
from __future__ import annotations

import keras
from keras import ops

REGIONS = ("WT", "TC", "ET")
DICE_EPS = 1e-5
PROB_EPS = 1e-7


def regions_to_classes(regions):
    """Nested regions (..., 3) -> one-hot classes (..., 4) for labels 0, 1, 2, 4."""
    wt, tc, et = regions[..., 0], regions[..., 1], regions[..., 2]
    return ops.stack([1 - wt, tc - et, wt - tc, et], axis=-1)


def classes_to_regions(probabilities):
    """Class probabilities (..., 4) for labels 0, 1, 2, 4 -> region probabilities (..., 3)."""
    p1, p2, p4 = probabilities[..., 1], probabilities[..., 2], probabilities[..., 3]
    return ops.stack([p1 + p2 + p4, p1 + p4, p4], axis=-1)


def regions_to_classes_hard(labels):
    """Class indices (0..3 for labels 0, 1, 2, 4) -> binary regions (..., 3) WT, TC, ET."""
    wt = labels > 0
    tc = ops.logical_or(ops.equal(labels, 1), ops.equal(labels, 3))
    et = ops.equal(labels, 3)
    return ops.cast(ops.stack([wt, tc, et], axis=-1), "float32")


def soft_dice(y_true, y_pred, per_channel: bool = True, eps: float = DICE_EPS):
    """Eq. 1. per_channel: one D per channel (summed over batch and voxels), then their mean."""
    y_true = ops.cast(y_true, y_pred.dtype)
    axes = tuple(range(len(y_pred.shape) - 1)) if per_channel else None
    numerator = 2 * ops.sum(y_true * y_pred, axis=axes)
    denominator = ops.sum(y_true * y_true, axis=axes) + ops.sum(y_pred * y_pred, axis=axes) + eps
    return ops.mean(numerator / denominator)


def per_example(value, y_pred):
    """A loss computed over the whole batch, () -> (B,): the same value for each example.

    Keras averages a (B,) loss and, under tf.distribute (MirroredStrategy), divides it by the
    replicas before their gradients are summed; a () loss skips that division, so with R replicas
    the reported loss and the gradient were R times too large (tests/test_replica_losses.py).
    """
    return value + ops.mean(ops.zeros_like(y_pred), axis=tuple(range(1, len(y_pred.shape))))


def binary_cross_entropy(y_true, y_pred):
    """Mean over voxels and channels of the per-channel binary cross-entropy of sigmoid outputs."""
    y_true = ops.cast(y_true, y_pred.dtype)
    p = ops.clip(y_pred, PROB_EPS, 1 - PROB_EPS)
    return -ops.mean(y_true * ops.log(p) + (1 - y_true) * ops.log(1 - p))


def categorical_cross_entropy(y_true, y_pred):
    """Mean over voxels of the cross-entropy of softmax outputs against one-hot targets."""
    y_true = ops.cast(y_true, y_pred.dtype)
    p = ops.clip(y_pred, PROB_EPS, 1.0)
    return -ops.mean(ops.sum(y_true * ops.log(p), axis=-1))


@keras.saving.register_keras_serializable("een")
class DiceCrossEntropy(keras.losses.Loss):
    """Eq. 2, L = CE - D, for "sigmoid" (regions) or "softmax" (classes) outputs."""

    def __init__(self, activation: str = "sigmoid", per_channel: bool = True,
                 eps: float = DICE_EPS, name: str = "dice_ce", **kwargs):
        super().__init__(name=name, **kwargs)
        if activation not in ("sigmoid", "softmax"):
            raise ValueError(f"activation must be sigmoid or softmax, got {activation!r}")
        self.activation, self.per_channel, self.eps = activation, per_channel, eps

    def call(self, y_true, y_pred):
        y_pred = ops.cast(y_pred, "float32")
        if self.activation == "softmax":
            y_true = regions_to_classes(ops.cast(y_true, "float32"))
            cross_entropy = categorical_cross_entropy(y_true, y_pred)
        else:
            cross_entropy = binary_cross_entropy(y_true, y_pred)
        return per_example(cross_entropy - soft_dice(y_true, y_pred, self.per_channel, self.eps),
                           y_pred)

    def get_config(self) -> dict:
        return {**super().get_config(), "activation": self.activation,
                "per_channel": self.per_channel, "eps": self.eps}


def hard_dice_per_case(truth, prediction):
    """Dice of binary masks per case (batch,), with the BraTS rule: both empty -> 1."""
    axes = tuple(range(1, len(truth.shape)))
    intersection = ops.sum(truth * prediction, axis=axes)
    total = ops.sum(truth, axis=axes) + ops.sum(prediction, axis=axes)
    return ops.where(total > 0, 2 * intersection / ops.maximum(total, 1), 1.0)


@keras.saving.register_keras_serializable("een")
class RegionDice(keras.metrics.Metric):
    """Mean over cases of the thresholded Dice of one region (WT, TC or ET); logged as dice_wt..."""

    def __init__(self, region: str = "WT", activation: str = "sigmoid", threshold: float = 0.5,
                 name: str | None = None, **kwargs):
        super().__init__(name=name or f"dice_{region.lower()}", **kwargs)
        self.region, self.activation, self.threshold = region, activation, threshold
        self.channel = REGIONS.index(region)
        self.total = self.add_variable((), initializer="zeros", name="total")
        self.count = self.add_variable((), initializer="zeros", name="count")

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_pred = ops.cast(y_pred, "float32")
        if self.activation == "softmax":
            labels = ops.argmax(y_pred, axis=-1)
            y_pred = regions_to_classes_hard(labels)
        else:
            y_pred = ops.cast(y_pred > self.threshold, "float32")
        truth = ops.cast(y_true[..., self.channel], "float32")
        dice = hard_dice_per_case(truth, y_pred[..., self.channel])
        self.total.assign_add(ops.sum(dice))
        self.count.assign_add(ops.cast(ops.shape(dice)[0], "float32"))

    def result(self):
        return self.total / ops.maximum(self.count, 1.0)

    def reset_state(self):
        self.total.assign(0.0)
        self.count.assign(0.0)

    def get_config(self) -> dict:
        return {**super().get_config(), "region": self.region, "activation": self.activation,
                "threshold": self.threshold}


def region_metrics(activation: str = "sigmoid") -> list:
    """Dice of WT, TC and ET, named dice_wt, dice_tc, dice_et in logs."""
    return [RegionDice(region, activation) for region in REGIONS]
