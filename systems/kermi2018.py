"""Kermi et al. 2018: a 2D residual U-Net on 128x128 axial patches (BASELINES.md section 1).

    model = build(config)                       # (B, H, W, 4) -> (B, H, W, 4) softmax, 10,159,748
    inputs, regions = prepare_case(cache, case_id, MODALITIES, config)
    x, y = examples(inputs, regions, config, rng)     # (N, 128, 128, 4), (N, 128, 128, 3)
    regions = predict_case(model, case, MODALITIES, config)       # whole 240x240 slices, argmax

Network: a 2x2 stem convolution, four encoder levels of pre-activation residual units (BN, PReLU,
3x3 conv, twice, plus the identity) joined by stride-2 2x2 convolutions, three decoder levels
(nearest up-sampling, 2x2 conv, concatenation with the skip, a residual unit whose shortcut is a
bias-free 1x1 conv), then BN, PReLU and a 1x1 softmax over the classes of labels 0, 1, 2, 4.
Fully convolutional: it trains on patches and segments whole slices.
"""
from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

from systems.common import (argmax_regions, brain_pixels, cached_intensities, case_intensities,
                            normalise_slices, on_case_grid, predict_slices)
from losses import PROB_EPS, per_example, region_metrics, regions_to_classes

DOWNSAMPLING = 8  # three stride-2 convolutions


# ---- network ----------------------------------------------------------------------------------

def residual_unit(x, filters: int, name: str, projection: bool = False):
    """BN -> PReLU -> conv 3x3, twice, plus the input (or its bias-free 1x1 projection)."""
    y = x
    for i in (1, 2):
        y = layers.BatchNormalization(name=f"{name}_bn{i}")(y)
        y = layers.PReLU(shared_axes=[1, 2], name=f"{name}_prelu{i}")(y)
        y = layers.Conv2D(filters, 3, padding="same", name=f"{name}_conv{i}")(y)
    shortcut = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_shortcut")(x) \
        if projection else x
    return layers.Add(name=f"{name}_add")([shortcut, y])


def build(config) -> keras.Model:
    """The residual U-Net: (B, H, W, 4) -> (B, H, W, 4) class probabilities, H and W multiples of 8.

    Widths f, 2f, 4f, 8f with f = kermi2018.filters (64: 10,159,748 parameters).
    """
    k = config.kermi2018
    widths = [k.filters * 2 ** level for level in range(4)]
    inputs = keras.Input((None, None, 4), name="slices")
    x = layers.GaussianNoise(k.noise_stddev, name="input_noise")(inputs)
    x = layers.Conv2D(widths[0], 2, padding="same", name="stem")(x)
    skips = []
    for level, filters in enumerate(widths[:3], start=1):
        skips.append(residual_unit(x, filters, f"enc{level}"))
        x = layers.Conv2D(widths[level], 2, strides=2, padding="same", name=f"enc{level}_down")(
            skips[-1])
    x = residual_unit(x, widths[3], "bottom")
    for level, (filters, skip) in reversed(list(enumerate(zip(widths[:3], skips), start=1))):
        x = layers.UpSampling2D(2, name=f"dec{level}_up")(x)
        x = layers.Conv2D(filters, 2, padding="same", name=f"dec{level}_upconv")(x)
        x = layers.Concatenate(name=f"dec{level}_concat")([skip, x])
        x = residual_unit(x, filters, f"dec{level}", projection=True)
    x = layers.BatchNormalization(name="head_bn")(x)
    x = layers.PReLU(shared_axes=[1, 2], name="head_prelu")(x)
    x = layers.Conv2D(4, 1, name="head_conv")(x)
    outputs = layers.Activation("softmax", dtype="float32", name="classes")(x)
    return keras.Model(inputs, outputs, name="kermi2018")


# ---- loss and optimisation --------------------------------------------------------------------

@keras.saving.register_keras_serializable("baselines")
class GeneralisedDiceWeightedCE(keras.losses.Loss):
    """Generalised Dice loss (Sudre 2017) + weighted cross-entropy, over the batch and 4 classes.

    Targets are regions (..., 3), turned into one-hot classes here. With r_c = sum_i y_ic,
    p_c = sum_i p_ic and w_c = 1 / (r_c^2 + 1e-7) (capped at weight_cap when it is > 0):
    GDL = 1 - 2 sum_c w_c sum_i y_ic p_ic / sum_c w_c (r_c + p_c);
    WCE = mean_i -sum_c weight_c y_ic log p_ic on probabilities renormalised and clipped to
    [1e-7, 1 - 1e-7]. An absent class gets w = 1e7, as published.
    """

    def __init__(self, class_weights=(1.0, 5.0, 2.0, 4.0), weight_cap: float = 0.0,
                 name: str = "gdl_wce", **kwargs):
        super().__init__(name=name, **kwargs)
        self.class_weights, self.weight_cap = tuple(class_weights), weight_cap

    def call(self, y_true, y_pred):
        truth = ops.reshape(regions_to_classes(ops.cast(y_true, "float32")), (-1, 4))
        predicted = ops.reshape(ops.cast(y_pred, "float32"), (-1, 4))
        r, p = ops.sum(truth, axis=0), ops.sum(predicted, axis=0)
        weights = 1.0 / (r * r + PROB_EPS)
        if self.weight_cap > 0:
            weights = ops.minimum(weights, self.weight_cap)
        overlap = ops.sum(truth * predicted, axis=0)
        gdl = 1 - 2 * ops.sum(weights * overlap) / ops.sum(weights * (r + p))
        probabilities = predicted / ops.sum(predicted, axis=-1, keepdims=True)
        probabilities = ops.clip(probabilities, PROB_EPS, 1 - PROB_EPS)
        class_weights = ops.convert_to_tensor(self.class_weights, "float32")
        wce = ops.mean(-ops.sum(truth * ops.log(probabilities) * class_weights, axis=-1))
        return per_example(gdl + wce, y_pred)

    def get_config(self) -> dict:
        return {**super().get_config(), "class_weights": list(self.class_weights),
                "weight_cap": self.weight_cap}


@keras.saving.register_keras_serializable("baselines")
class EpochDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Keras-2 SGD decay whose rate and decay change by `factor` at every epoch start.

    Published: lr 0.08, decay 5e-6 per iteration, and a callback that at the start of every epoch
    divides lr by 10 and multiplies decay by 10. With t the global step and e = t // steps:
    lr(t) = lr0 factor^-(e+1) / (1 + decay factor^(e+1) t)  (epoch 1: 0.008, decay 5e-5).
    """

    def __init__(self, initial: float, decay: float, steps_per_epoch: int, factor: float = 10.0):
        self.initial, self.decay = initial, decay
        self.steps_per_epoch, self.factor = max(int(steps_per_epoch), 1), factor

    def __call__(self, step):
        step = ops.cast(step, "float32")
        scale = ops.power(self.factor, ops.floor(step / self.steps_per_epoch) + 1)
        return self.initial / scale / (1 + self.decay * scale * step)

    def get_config(self) -> dict:
        return {"initial": self.initial, "decay": self.decay,
                "steps_per_epoch": self.steps_per_epoch, "factor": self.factor}


def loss(config) -> keras.losses.Loss:
    k = config.kermi2018
    return GeneralisedDiceWeightedCE(k.class_weights, k.gdl_weight_cap)


def metrics(config) -> list:
    return region_metrics("softmax")


def optimizer(config, steps_per_epoch: int):
    """SGD, momentum 0.9 without Nesterov, on the per-epoch schedule; its epoch is the training
    epoch, or kermi2018.schedule_epoch_steps steps when set (the published run: 4,380)."""
    k = config.kermi2018
    steps = k.schedule_epoch_steps or steps_per_epoch
    return keras.optimizers.SGD(EpochDecay(k.learning_rate, k.decay, steps), momentum=0.9)


def callbacks(config) -> list:
    return []  # the schedule lives in the optimizer


# ---- data -------------------------------------------------------------------------------------

def prepare_case(cache, case_id: str, modalities: tuple, config) -> tuple:
    """(per-slice normalised inputs (H, W, D, 4) float32, regions (H, W, D, 3) uint8) of a case."""
    inputs = normalise_slices(cached_intensities(cache, case_id), config.kermi2018.percentiles)
    return inputs, np.asarray(cache.regions(case_id))


def patch_centres(inputs: np.ndarray, size: int) -> np.ndarray:
    """(n, 3) voxels (x, y, z) on the brain whose size x size patch lies inside the slice."""
    brain = brain_pixels(inputs)
    half = size // 2
    inside = np.zeros(brain.shape[:2], bool)
    inside[half:brain.shape[0] - half + 1, half:brain.shape[1] - half + 1] = True
    return np.argwhere(brain & inside[..., None])


def examples(inputs: np.ndarray, regions: np.ndarray, config, rng: np.random.Generator,
             augment: bool = True) -> tuple:
    """Axial patches centred on random brain voxels: (N, P, P, 4) float32, (N, P, P, 3) uint8.

    N = kermi2018.patches_per_slice x slices (fewer when the case has fewer usable centres),
    drawn without replacement, no class balancing; with augment and kermi2018.flip each patch is
    mirrored left-right (X) together with its labels with probability 0.5.
    """
    k = config.kermi2018
    size, half = k.patch_size, k.patch_size // 2
    centres = patch_centres(inputs, size)
    wanted = min(int(round(k.patches_per_slice * inputs.shape[2])), len(centres))
    chosen = centres[rng.choice(len(centres), wanted, replace=False)]
    x = np.empty((wanted, size, size, inputs.shape[-1]), np.float32)
    y = np.empty((wanted, size, size, regions.shape[-1]), np.uint8)
    flips = rng.random(wanted) < 0.5 if augment and k.flip else np.zeros(wanted, bool)
    for i, ((cx, cy, cz), flip) in enumerate(zip(chosen, flips)):
        window = (slice(cx - half, cx + half), slice(cy - half, cy + half), cz)
        step = -1 if flip else 1  # X reversed in image and labels alike
        x[i], y[i] = inputs[window][::step], regions[window][::step]
    return x, y


# ---- inference --------------------------------------------------------------------------------

def predict_case(model, case, modalities: tuple, config) -> np.ndarray:
    """0/1 regions (X, Y, Z, 3) of a loaded case: every normalised axial slice of the whole grid
    through the network, argmax (class 3 is label 4); no post-processing."""
    factor = config.data.downsample
    inputs = normalise_slices(case_intensities(case, factor), config.kermi2018.percentiles)
    regions = argmax_regions(predict_slices(model, inputs, DOWNSAMPLING))
    return on_case_grid(regions, factor, case.shape)


def postprocess(labels: np.ndarray, config) -> np.ndarray:
    return labels
