"""The model-family seam: what a system brings, so that training and prediction need not know it.

    family = family_of(config)                 # config.model.family: een, kermi2018, ...
    model = family.build(config)
    model.compile(optimizer=family.optimizer(config, steps_per_epoch), loss=family.loss(config),
                  metrics=family.metrics(config))
    inputs, regions = family.prepare_case(cache, case_id, modalities, config)   # once per case
    x, y = family.examples(inputs, regions, config, rng, augment=True)          # every epoch
    regions = family.predict_case(model, case, modalities, config)   # (X, Y, Z, 3), case grid
    labels = family.postprocess(regions_to_labels(regions), config)

train.py and predict.py run a baseline through compiled(config, steps_per_epoch, jit) and
predicted_labels(model, case, modalities, config) (its batches: examples.py); predict.py's
--postprocess is with_postprocessing.

Targets are always the cache's nested regions (..., 3) WT, TC, ET: each loss and metric turns
them into its system's coding, so that the Dice logs (dice_wt, dice_tc, dice_et) mean the same
for every family. The EEN entry wraps systems/een.py and losses.py unchanged; its per-modality
ensembles, flip TTA and plateau schedule stay in train.py and predict.py.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import numpy as np

from systems.baselines import baseline_module
from util.config import FAMILIES, Config, ConfigError


@dataclass(frozen=True)
class Family:
    """One system. Shapes: x (N, ...) float32 and y (N, ..., 3) uint8, N examples of one case."""

    name: str
    build: Callable  # (config) -> keras.Model
    loss: Callable  # (config) -> keras.losses.Loss on region targets
    metrics: Callable  # (config) -> [dice_wt, dice_tc, dice_et]
    optimizer: Callable  # (config, steps_per_epoch) -> keras optimizer with its schedule
    callbacks: Callable  # (config) -> the family's own keras callbacks (stopping, plateau)
    prepare_case: Callable  # (cache, case_id, modalities, config) -> (inputs, regions)
    examples: Callable  # (inputs, regions, config, rng, augment) -> (x, y); validation: no augment
    predict_case: Callable  # (model, brats.Case, modalities, config) -> regions (X, Y, Z, 3)
    postprocess: Callable  # (labels (X, Y, Z) uint8, config) -> labels


# ---- the EEN, as systems/een.py, losses.py, train.py and predict.py run it ----------------------

def _een_build(config: Config):
    from systems.een import build_model

    return build_model(config)


def _een_loss(config: Config):
    from losses import DiceCrossEntropy

    return DiceCrossEntropy(config.model.output_activation, config.train.dice_per_channel)


def _een_metrics(config: Config) -> list:
    from losses import region_metrics

    return region_metrics(config.model.output_activation)


def _een_optimizer(config: Config, steps_per_epoch: int):
    import keras

    optimizers = {"nadam": keras.optimizers.Nadam, "adam": keras.optimizers.Adam}
    return optimizers[config.train.optimizer](config.train.learning_rate)


def _een_prepare_case(cache, case_id: str, modalities: tuple, config: Config) -> tuple:
    """The whole cached crop: image (H, W, D, C) float32 of these modalities, regions uint8."""
    return np.array(cache.image(case_id, tuple(modalities))), np.asarray(cache.regions(case_id))


def _een_examples(inputs: np.ndarray, regions: np.ndarray, config: Config, rng,
                  augment: bool = True) -> tuple:
    """One example per case, the whole crop (the EEN's augmentation is train.py's)."""
    return inputs[None], regions[None]


def _een_predict_case(model, case, modalities: tuple, config: Config) -> np.ndarray:
    """One pass of one network over the case's crop (no TTA); probabilities on the case's grid."""
    from losses import classes_to_regions
    from datasets.volumes import full_grid
    from datasets.volumes import preprocess_case

    data = config.data
    arrays, meta = preprocess_case(case, tuple(data.crop_size), data.crop_mode, data.downsample)
    volume = np.stack([arrays[m] for m in modalities], axis=-1)
    output = np.asarray(model.predict_on_batch(volume[None]), np.float32)[0]
    if config.model.output_activation == "softmax":
        output = np.asarray(classes_to_regions(output), np.float32)
    return full_grid(output, meta)


def _unchanged(labels: np.ndarray, config: Config) -> np.ndarray:
    return labels


EEN = Family("een", _een_build, _een_loss, _een_metrics, _een_optimizer, lambda config: [],
             _een_prepare_case, _een_examples, _een_predict_case, _unchanged)


# ---- the registry -----------------------------------------------------------------------------

def _baseline(name: str) -> Family:
    """The Family of a baseline's module (systems/<name>.py)."""
    module = baseline_module(name)
    return Family(name, module.build, module.loss, module.metrics, module.optimizer,
                  module.callbacks, module.prepare_case, module.examples, module.predict_case,
                  module.postprocess)


REGISTRY = {"een": lambda: EEN, **{name: (lambda n=name: _baseline(n))
                                   for name in FAMILIES if name != "een"}}


def family_of(config: Config) -> Family:
    """The Family named by config.model.family; an unknown name is a one-line ConfigError."""
    name = config.model.family
    if name not in REGISTRY:
        raise ConfigError(f"{config.name}: model.family: unknown family {name!r} "
                          f"(known: {', '.join(REGISTRY)})")
    return REGISTRY[name]()


# ---- training and prediction of a baseline ----------------------------------------------------

def compiled(config: Config, steps_per_epoch: int, jit: bool, resume_from=None):
    """A baseline's network compiled with its loss, metrics and optimizer, or its last.keras.

    steps_per_epoch feeds the schedules that count epochs in steps (Kermi, Ben naceur); a resumed
    network brings its own schedule and step counter. family_of registers the family's losses and
    schedules, which load_model needs.
    """
    family = family_of(config)
    if resume_from is not None:
        return loaded_for_training(resume_from, jit)
    model = family.build(config)
    model.compile(optimizer=family.optimizer(config, steps_per_epoch), loss=family.loss(config),
                  metrics=family.metrics(config), jit_compile=jit_setting(jit))
    return ready_to_train(model)


def ready_to_train(model):
    """`model` (compiled) with its optimizer's variables made now and its update computed for all
    variables at once (fast_updates.at_once: Keras's numbers, bit for bit). Keras otherwise makes
    the variables inside the first training step, and TensorFlow traces a step that creates
    variables twice: the small EEN's first fit on one crop took 40.0 s instead of 22.9
    (docs/test-durations.md, eighth round)."""
    from systems import fast_updates

    model.optimizer.build(model.trainable_variables)
    fast_updates.at_once(model.optimizer)
    return model


def jit_setting(jit: bool) -> bool:
    """compile()'s jit_compile on this Keras backend: TensorFlow's XLA only with --jit (slow to
    compile on a CPU), JAX's steps jitted, PyTorch's eager (what Keras's "auto" chooses)."""
    import keras

    backend = keras.backend.backend()
    return jit if backend == "tensorflow" else backend == "jax"


def loaded_for_training(path, jit: bool):
    """A compiled last.keras, its steps compiled as this backend trains. The file keeps the
    jit_compile of the backend that saved it: a TensorFlow checkpoint's False left JAX's steps
    running op by op (tests/backend_probe.py's process: 106 s instead of 39), a JAX checkpoint's
    True put TensorFlow on XLA."""
    import keras

    from systems import fast_updates

    model = keras.saving.load_model(path)
    model.jit_compile = jit_setting(jit)
    fast_updates.at_once(model.optimizer)
    return model


def predicted_labels(model, case, modalities: tuple, config: Config,
                     et_min_voxels: int = 0) -> np.ndarray:
    """uint8 BraTS labels (X, Y, Z) of a loaded case: predict_case, labels, postprocess."""
    from brats.codings import regions_to_labels

    family = family_of(config)
    regions = family.predict_case(model, case, modalities, config)
    return family.postprocess(regions_to_labels(regions, 0.5, et_min_voxels), config)


POSTPROCESSING = ("none", "pp1", "pp2", "both")  # Ben naceur's: 1 small components, 2 opening


def with_postprocessing(config: Config, choice: str | None) -> Config:
    """The config with Ben naceur's post-processings switched: none, pp1 (small components),
    pp2 (opening) or both; None keeps the config's. Other families have none to switch."""
    if choice is None:
        return config
    if config.model.family != "bennaceur2020":
        raise ConfigError(f"{config.name}: --postprocess applies to bennaceur2020 runs only "
                          f"(this run is {config.model.family})")
    section = config.bennaceur2020
    first = choice in ("pp1", "both")
    if first and section.min_component <= 0:
        raise ConfigError(f"{config.name}: bennaceur2020.min_component is 0, so post-processing "
                          f"1 has no component size")
    switched = dataclasses.replace(section, opening=choice in ("pp2", "both"),
                                   min_component=section.min_component if first else 0)
    return dataclasses.replace(config, bennaceur2020=switched)
