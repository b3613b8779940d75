"""Ben naceur et al. 2020: selective attention by multi-level re-injection (BASELINES.md section 3).

    model = build(config)                       # (B, H, W, 4) -> (B, H, W, 4) softmax, 130,180
    inputs, regions = prepare_case(cache, case_id, MODALITIES, config)
    x, y = examples(inputs, regions, config, rng)     # every 64x64 grid patch holding brain
    regions = predict_case(model, case, MODALITIES, config)       # whole 240x240 slices, argmax
    labels = postprocess(labels, config)              # small components out, then an opening

Network InputSparseMultiOCM (the one the authors train): 3x3 ReLU convolutions with bias, no
normalisation. Two 42-channel convs give c1; a pooled branch (max-pool, two 32 convs, nearest
up-sampling) is concatenated with the input and c1; two 32 convs give c2; a second pooled branch
is concatenated with the input, c1 and c2; two 32 convs and a 1x1 softmax. The "selective
attention" is this re-injection of earlier levels. Variants: `sparse` (no input in the
concatenations, 127,876 parameters) and `dense` (DenseMultiOCM, 181,124).
"""
from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops
from scipy import ndimage

from systems.common import (argmax_regions, brain_pixels, cached_intensities, case_intensities,
                            normalise_slices, on_case_grid, predict_slices)
from losses import PROB_EPS, region_metrics, regions_to_classes

DOWNSAMPLING = 4  # two 2x2 max-poolings
CROSS = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], bool)  # cv2 3x3 ellipse: the opening's element


# ---- network ----------------------------------------------------------------------------------

def conv_pair(x, filters: int, name: str):
    """3x3 conv -> ReLU, twice."""
    for i in (1, 2):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"{name}_conv{i}")(x)
    return x


def pooled_branch(x, name: str):
    """Max-pool 2x2 -> two 32-channel convs -> nearest up-sampling x2: context at half size."""
    x = layers.MaxPooling2D(2, name=f"{name}_pool")(x)
    x = conv_pair(x, 32, name)
    return layers.UpSampling2D(2, name=f"{name}_up")(x)


def sparse_levels(inputs, with_input: bool):
    """InputSparseMultiOCM (with_input) or SparseMultiOCM: the two re-injection levels."""
    given = [inputs] if with_input else []
    c1 = conv_pair(inputs, 42, "level1")
    x = layers.Concatenate(name="reinject1")([*given, c1, pooled_branch(c1, "context1")])
    c2 = conv_pair(x, 32, "level2")
    return layers.Concatenate(name="reinject2")([*given, c1, c2, pooled_branch(c2, "context2")])


def dense_stage(x, name: str):
    """DenseMultiOCM stage: a 1x1 conv, two conv pairs in a row and a pooled branch, joined."""
    point = layers.Conv2D(32, 1, activation="relu", name=f"{name}_point")(x)
    first = conv_pair(x, 32, f"{name}_a")
    second = conv_pair(first, 32, f"{name}_b")
    context = pooled_branch(second, f"{name}_context")
    return layers.Concatenate(name=f"{name}_join")([point, first, second, context])


def build(config) -> keras.Model:
    """(B, H, W, 4) -> (B, H, W, 4) class probabilities, H and W multiples of 4."""
    variant = config.bennaceur2020.variant
    inputs = keras.Input((None, None, 4), name="slices")
    if variant == "dense":
        x = dense_stage(dense_stage(inputs, "dense1"), "dense2")
    else:
        x = sparse_levels(inputs, with_input=variant == "input_sparse")
    x = conv_pair(x, 32, "head")
    outputs = layers.Conv2D(4, 1, activation="softmax", dtype="float32", name="classes")(x)
    return keras.Model(inputs, outputs, name=f"bennaceur2020_{variant}")


# ---- loss and optimisation --------------------------------------------------------------------

@keras.saving.register_keras_serializable("baselines")
class WeightedCrossEntropy(keras.losses.Loss):
    """mean over pixels of -sum_c weight_c y_c log p_c, p clipped to [1e-7, 1 - 1e-7]; one value
    per example (B,), which Keras averages.

    The class weights the authors passed as Keras `class_weight` (which cannot weight per-pixel
    outputs) put inside the loss. Targets are regions (..., 3), turned into one-hot classes here.
    """

    def __init__(self, class_weights=(0.28, 0.08, 0.43, 0.21), name: str = "weighted_ce",
                 **kwargs):
        super().__init__(name=name, **kwargs)
        self.class_weights = tuple(class_weights)

    def call(self, y_true, y_pred):
        truth = regions_to_classes(ops.cast(y_true, "float32"))
        probabilities = ops.clip(ops.cast(y_pred, "float32"), PROB_EPS, 1 - PROB_EPS)
        weights = ops.convert_to_tensor(self.class_weights, "float32")
        pixels = -ops.sum(truth * ops.log(probabilities) * weights, axis=-1)
        return ops.mean(pixels, axis=tuple(range(1, len(pixels.shape))))  # (B,): per example

    def get_config(self) -> dict:
        return {**super().get_config(), "class_weights": list(self.class_weights)}


def loss(config) -> keras.losses.Loss:
    return WeightedCrossEntropy(config.bennaceur2020.class_weights)


def metrics(config) -> list:
    return region_metrics("softmax")


def optimizer(config, steps_per_epoch: int):
    """SGD, Nesterov momentum 0.9, lr x lr_decay at every epoch (staircase over the steps)."""
    b = config.bennaceur2020
    schedule = keras.optimizers.schedules.ExponentialDecay(
        b.learning_rate, decay_steps=max(int(steps_per_epoch), 1), decay_rate=b.lr_decay,
        staircase=True)
    return keras.optimizers.SGD(schedule, momentum=0.9, nesterov=True)


def callbacks(config) -> list:
    return [keras.callbacks.EarlyStopping("val_loss",
                                          patience=config.bennaceur2020.early_stopping_patience)]


# ---- data -------------------------------------------------------------------------------------

def prepare_case(cache, case_id: str, modalities: tuple, config) -> tuple:
    """(per-slice normalised inputs (H, W, D, 4) float32, regions (H, W, D, 3) uint8) of a case."""
    inputs = normalise_slices(cached_intensities(cache, case_id), config.bennaceur2020.percentiles)
    return inputs, np.asarray(cache.regions(case_id))


def grid_windows(inputs: np.ndarray, size: int, stride: int) -> list:
    """(x, y, z) corners of the size x size windows at `stride` over every axial slice that hold
    at least one brain pixel."""
    brain = brain_pixels(inputs)
    starts = [range(0, n - size + 1, stride) for n in brain.shape[:2]]
    return [(x, y, z) for x in starts[0] for y in starts[1]
            for z in np.flatnonzero(brain[x:x + size, y:y + size].any(axis=(0, 1)))]


def examples(inputs: np.ndarray, regions: np.ndarray, config, rng: np.random.Generator,
             augment: bool = True) -> tuple:
    """Every grid patch with brain, in random order: (N, P, P, 4) float32, (N, P, P, 3) uint8.
    No augmentation was published (`augment` is accepted for the common signature)."""
    b = config.bennaceur2020
    windows = grid_windows(inputs, b.patch_size, b.stride)
    order = rng.permutation(len(windows))
    x = np.empty((len(windows), b.patch_size, b.patch_size, inputs.shape[-1]), np.float32)
    y = np.empty((len(windows), b.patch_size, b.patch_size, regions.shape[-1]), np.uint8)
    for i, index in enumerate(order):
        cx, cy, cz = windows[index]
        window = (slice(cx, cx + b.patch_size), slice(cy, cy + b.patch_size), cz)
        x[i], y[i] = inputs[window], regions[window]
    return x, y


# ---- inference and post-processing ------------------------------------------------------------

def predict_case(model, case, modalities: tuple, config) -> np.ndarray:
    """0/1 regions (X, Y, Z, 3) of a loaded case: every normalised axial slice of the whole grid
    through the network, argmax (class 3 is label 4). Post-processing is `postprocess`."""
    factor = config.data.downsample
    inputs = normalise_slices(case_intensities(case, factor), config.bennaceur2020.percentiles)
    regions = argmax_regions(predict_slices(model, inputs, DOWNSAMPLING))
    return on_case_grid(regions, factor, case.shape)


def remove_small_components(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Post-processing 1: per axial slice, 8-connected components of all tumour labels together
    smaller than min_size pixels become background; kept pixels keep their label. (X, Y, Z)."""
    in_plane = np.zeros((3, 3, 3), bool)
    in_plane[:, :, 1] = True  # 8-connected within a slice, never across slices
    components, _ = ndimage.label(labels > 0, structure=in_plane)
    sizes = np.bincount(components.ravel())
    keep = sizes >= min_size
    keep[0] = False
    return np.where(keep[components], labels, 0).astype(labels.dtype)


def open_slices(labels: np.ndarray) -> np.ndarray:
    """Post-processing 2: per axial slice, grey-level opening of the label image with the 3x3
    cross (outside the slice ignored, as OpenCV does). (X, Y, Z) -> (X, Y, Z)."""
    return ndimage.grey_opening(labels, footprint=CROSS[:, :, None], mode="nearest")


def postprocess(labels: np.ndarray, config) -> np.ndarray:
    """Post-processing 1 (when min_component > 0), then 2 (when opening)."""
    b = config.bennaceur2020
    if b.min_component > 0:
        labels = remove_small_components(labels, b.min_component)
    return open_slices(labels) if b.opening else labels
