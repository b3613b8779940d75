"""3D U-Net on random sub-volumes, MSD Task01 style (BASELINES.md section 2).

    model = build(config)                   # (B, 160, 160, 16, 4) -> sigmoids (B, ..., 3)
    volume, regions = prepare_case(cache, case_id, MODALITIES, config)
    x, y = examples(volume, regions, config, rng)     # 10 standardised, augmented sub-volumes
    regions = predict_case(model, case, MODALITIES, config)   # tiles, each sigmoid > 0.5

Network: conv blocks (3x3x3 conv, ReLU, twice; no normalisation) of 32, 64, 128 channels each
followed by 2x2x2 max-pooling, a 256 bottom block, then up-sampling, concatenation with the skip
and blocks of 128, 64, 32; a 1x1x1 convolution gives three independent sigmoids for the MSD
labels edema, non-enhancing / necrotic core (NCR/NET) and enhancing tumour (ET).
"""
from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

from systems.common import cached_intensities, case_intensities, on_case_grid
from losses import DICE_EPS, REGIONS, RegionDice, hard_dice_per_case

OUTPUTS = ("edema", "ncr_net", "et")


# ---- network ----------------------------------------------------------------------------------

def conv_block(x, filters: int, name: str):
    """3x3x3 conv -> ReLU, twice."""
    for i in (1, 2):
        x = layers.Conv3D(filters, 3, padding="same", activation="relu", name=f"{name}_conv{i}")(x)
    return x


def build(config) -> keras.Model:
    """(B, H, W, D, 4) -> (B, H, W, D, 3) sigmoids edema, NCR/NET, ET at unet3d_patches.patch_size.

    Widths f, 2f, 4f, 8f with f = unet3d_patches.filters (32: 5,838,691 parameters).
    """
    u = config.unet3d_patches
    widths = [u.filters * 2 ** level for level in range(4)]
    inputs = keras.Input((*u.patch_size, 4), name="subvolume")
    x, skips = inputs, []
    for level, filters in enumerate(widths[:3], start=1):
        skips.append(conv_block(x, filters, f"enc{level}"))
        x = layers.MaxPooling3D(2, name=f"enc{level}_pool")(skips[-1])
    x = conv_block(x, widths[3], "bottom")
    for level, (filters, skip) in reversed(list(enumerate(zip(widths[:3], skips), start=1))):
        x = layers.UpSampling3D(2, name=f"dec{level}_up")(x)
        x = layers.Concatenate(name=f"dec{level}_concat")([x, skip])
        x = conv_block(x, filters, f"dec{level}")
    outputs = layers.Conv3D(3, 1, activation="sigmoid", dtype="float32", name="msd_labels")(x)
    return keras.Model(inputs, outputs, name="unet3d_patches")


# ---- the MSD output coding --------------------------------------------------------------------

def msd_from_regions(regions):
    """Nested regions (..., 3) WT, TC, ET -> the three MSD labels (..., 3) edema, NCR/NET, ET."""
    wt, tc, et = regions[..., 0], regions[..., 1], regions[..., 2]
    return ops.stack([wt - tc, tc - et, et], axis=-1)


def regions_from_msd(outputs: np.ndarray, threshold: float) -> np.ndarray:
    """Sigmoids (..., 3) edema, NCR/NET, ET -> 0/1 regions (..., 3): each label is its own
    output above the threshold; ET -> ET, TC and WT; NCR/NET -> TC and WT; edema -> WT."""
    edema, core, enhancing = (outputs[..., i] > threshold for i in range(3))
    return np.stack([edema | core | enhancing, core | enhancing, enhancing],
                    axis=-1).astype(np.float32)


# ---- loss and metrics -------------------------------------------------------------------------

@keras.saving.register_keras_serializable("baselines")
class SoftDiceLoss(keras.losses.Loss):
    """1 - mean over samples and MSD labels of (2 sum y p + eps) / (sum p^2 + sum y^2 + eps),
    sums over the spatial axes. Targets are regions (..., 3), turned into MSD labels here."""

    def __init__(self, eps: float = DICE_EPS, name: str = "soft_dice", **kwargs):
        super().__init__(name=name, **kwargs)
        self.eps = eps

    def call(self, y_true, y_pred):
        truth = msd_from_regions(ops.cast(y_true, "float32"))
        predicted = ops.cast(y_pred, "float32")
        spatial = tuple(range(1, len(predicted.shape) - 1))
        numerator = 2 * ops.sum(truth * predicted, axis=spatial) + self.eps
        denominator = (ops.sum(predicted * predicted, axis=spatial)
                       + ops.sum(truth * truth, axis=spatial) + self.eps)
        return 1 - ops.mean(numerator / denominator, axis=-1)  # (B,): Keras averages them

    def get_config(self) -> dict:
        return {**super().get_config(), "eps": self.eps}


@keras.saving.register_keras_serializable("baselines")
class MsdRegionDice(RegionDice):
    """RegionDice (dice_wt, dice_tc, dice_et) of the MSD sigmoids, thresholded then nested."""

    def update_state(self, y_true, y_pred, sample_weight=None):
        above = ops.cast(ops.cast(y_pred, "float32") > self.threshold, "float32")
        edema, core, enhancing = above[..., 0], above[..., 1], above[..., 2]
        predicted = [ops.maximum(ops.maximum(edema, core), enhancing),
                     ops.maximum(core, enhancing), enhancing][self.channel]
        truth = ops.cast(y_true[..., self.channel], "float32")
        dice = hard_dice_per_case(truth, predicted)
        self.total.assign_add(ops.sum(dice))
        self.count.assign_add(ops.cast(ops.shape(dice)[0], "float32"))


def loss(config) -> keras.losses.Loss:
    return SoftDiceLoss()


def metrics(config) -> list:
    return [MsdRegionDice(region, threshold=config.unet3d_patches.threshold) for region in REGIONS]


def optimizer(config, steps_per_epoch: int):
    return keras.optimizers.Adam(config.unet3d_patches.learning_rate)


def callbacks(config) -> list:
    """ReduceLROnPlateau(val_loss, 0.2, 10, min 1e-6) and EarlyStopping(val_loss, 20, best)."""
    u = config.unet3d_patches
    return [keras.callbacks.ReduceLROnPlateau("val_loss", factor=u.plateau_factor,
                                              patience=u.plateau_patience,
                                              min_lr=u.min_learning_rate),
            keras.callbacks.EarlyStopping("val_loss", patience=u.early_stopping_patience,
                                          restore_best_weights=True)]


# ---- data -------------------------------------------------------------------------------------

def prepare_case(cache, case_id: str, modalities: tuple, config) -> tuple:
    """(raw intensities (H, W, D, 4) float32, regions (H, W, D, 3) uint8): each sub-volume is
    standardised on its own when drawn."""
    return cached_intensities(cache, case_id), np.asarray(cache.regions(case_id))


def standardise(patch: np.ndarray) -> np.ndarray:
    """Each channel of each z-slice z-scored over the whole slice, zeros included; a constant
    slice becomes zeros. (H, W, D, C) -> float32 (H, W, D, C)."""
    mean = patch.mean(axis=(0, 1), dtype=np.float64)
    std = patch.std(axis=(0, 1), dtype=np.float64)
    scaled = (patch - mean) / np.where(std > 0, std, 1.0)
    return np.where(std > 0, scaled, 0.0).astype(np.float32)


def box_sums(mask: np.ndarray, size: tuple) -> np.ndarray:
    """Number of True voxels in every size-box of `mask`, indexed by the box's corner."""
    table = np.pad(mask.astype(np.int64).cumsum(0).cumsum(1).cumsum(2), ((1, 0),) * 3)
    a, b, c = size
    return (table[a:, b:, c:] - table[:-a, b:, c:] - table[a:, :-b, c:] - table[a:, b:, :-c]
            + table[:-a, :-b, c:] + table[:-a, b:, :-c] + table[a:, :-b, :-c]
            - table[:-a, :-b, :-c])


def augmented(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> tuple:
    """With probability 0.5 flip one spatial axis, rot90 in H-W k = 0..3 times (image and labels
    together), and scale the intensities by U(0.9, 1.1). (The published code flipped the channel
    axis; a spatial one is meant.)"""
    if rng.random() < 0.5:
        axis = int(rng.integers(3))
        x, y = np.flip(x, axis), np.flip(y, axis)
    turns = int(rng.integers(4))
    x, y = np.rot90(x, turns, axes=(0, 1)), np.rot90(y, turns, axes=(0, 1))
    return np.ascontiguousarray(x * np.float32(rng.uniform(0.9, 1.1))), np.ascontiguousarray(y)


def examples(volume: np.ndarray, regions: np.ndarray, config, rng: np.random.Generator,
             augment: bool = True) -> tuple:
    """unet3d_patches.patches_per_case sub-volumes: (N, h, w, d, 4) float32, (N, h, w, d, 3) uint8.

    Each corner is uniform over the positions inside the volume and is accepted when less than
    background_limit of the sub-volume is background (label 0); after max_tries refusals the case
    gives no more sub-volumes. Each is standardised, then augmented when both `augment` and
    unet3d_patches.augment are set.
    """
    u = config.unet3d_patches
    size = tuple(u.patch_size)
    tumour = box_sums(regions[..., 0] > 0, size)
    limit = u.background_limit * np.prod(size)
    xs, ys = [], []
    for _ in range(u.patches_per_case):
        corners = np.stack([rng.integers(n, size=u.max_tries) for n in tumour.shape], axis=-1)
        accepted = np.prod(size) - tumour[tuple(corners.T)] < limit
        if not accepted.any():
            break
        window = tuple(slice(c, c + s) for c, s in zip(corners[np.argmax(accepted)], size))
        x, y = standardise(volume[window]), np.asarray(regions[window])
        if augment and u.augment:
            x, y = augmented(x, y, rng)
        xs.append(x)
        ys.append(y)
    empty = (0, *size)
    return (np.stack(xs) if xs else np.zeros((*empty, 4), np.float32),
            np.stack(ys) if ys else np.zeros((*empty, 3), np.uint8))


# ---- inference --------------------------------------------------------------------------------

def tile_corners(shape: tuple, size: tuple) -> list:
    """Corners of the non-overlapping tiles covering `shape` (the last ones reach past it)."""
    ranges = [range(0, n, s) for n, s in zip(shape, size)]
    return [(a, b, c) for a in ranges[0] for b in ranges[1] for c in ranges[2]]


def predict_tiles(model, volume: np.ndarray, size: tuple, batch: int = 2) -> np.ndarray:
    """Sigmoids (X, Y, Z, 3) of the whole volume: a zero-padded canvas cut into non-overlapping
    tiles, each standardised as in training (the published path forgot this), then cropped back."""
    shape = volume.shape[:3]
    pad = [(0, -n % s) for n, s in zip(shape, size)] + [(0, 0)]
    canvas = np.pad(volume, pad)
    corners = tile_corners(shape, size)
    out = np.zeros(canvas.shape[:3] + (3,), np.float32)
    for start in range(0, len(corners), batch):
        chosen = corners[start:start + batch]
        windows = [tuple(slice(c, c + s) for c, s in zip(corner, size)) for corner in chosen]
        tiles = np.stack([standardise(canvas[w]) for w in windows])
        for window, output in zip(windows, np.asarray(model.predict_on_batch(tiles))):
            out[window] = output
    return out[: shape[0], : shape[1], : shape[2]]


def predict_case(model, case, modalities: tuple, config) -> np.ndarray:
    """0/1 regions (X, Y, Z, 3) of a loaded case from the thresholded MSD sigmoids."""
    u, factor = config.unet3d_patches, config.data.downsample
    outputs = predict_tiles(model, case_intensities(case, factor), tuple(u.patch_size))
    return on_case_grid(regions_from_msd(outputs, u.threshold), factor, case.shape)


def postprocess(labels: np.ndarray, config) -> np.ndarray:
    return labels
