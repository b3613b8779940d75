"""The baseline systems by family name (config.model.family), without the EEN: what een.py
needs to build any system without importing families.py, which builds the EEN from een.py."""
from __future__ import annotations

from types import ModuleType


def baseline_module(name: str) -> ModuleType:
    """The module of a baseline family (imported on first use: Keras loads with it). Each offers
    build, loss, metrics, optimizer, callbacks, prepare_case, examples, predict_case, postprocess."""
    from systems import bennaceur2020, kermi2018, unet3d_patches

    modules = {"kermi2018": kermi2018, "unet3d_patches": unet3d_patches,
               "bennaceur2020": bennaceur2020}
    return modules[name]
