"""A run's trained networks, found and loaded for prediction (predict.py, ensemble.py).

    found = network_files(run, modalities=None, models=None)   # [(name, modalities, weights)]
    network = load_network(*found[0], config, "float32", models={})
    model = network.activate()                                  # its weights in the shared model

The networks of an ensemble share one built model per channel count and swap weights, so memory
holds one model (and each network's weights as arrays) whatever the number of networks.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from systems import families
from util.config import Config, ConfigError
from util.runfolder import loading, network_weights, read_network


@dataclasses.dataclass
class Network:
    """One trained network: its modalities and weights file, run on a model shared by the ensemble."""

    name: str
    modalities: tuple
    model: object  # keras.Model, shared by every network with the same number of channels
    weights: Path
    activation: str
    arrays: list  # the file's weights, read once: model.get_weights() order

    def activate(self):
        """Set this network's weights in the shared model; returns the model. From arrays, not the
        file: 0.05 s instead of 0.5-0.9 s a swap for the small config's 13.6 M parameters."""
        self.model.set_weights(self.arrays)
        return self.model


# ---- loading the networks ---------------------------------------------------------------------

def network_files(run: Path, modalities: list | None, models: list | None) -> list:
    """(name, modalities, weights file) of each network: best.weights.h5 (--models: the files
    named). A network without it is refused in one line that names --models and last.keras."""
    if models:
        chosen = [Path(m) for m in models]
    else:
        folders = sorted(p.parent for p in run.glob("*/network.json"))
        chosen = [network_weights(f, f"or predict with --models {f / 'last.keras'}")
                  for f in folders if modalities is None or f.name in modalities]
    found = []
    for path in chosen:
        if not path.is_file():
            raise ConfigError(f"{path}: no such model file")
        description = path.parent / "network.json"
        if not description.is_file():
            raise ConfigError(f"{path}: no network.json beside it (is it in a run folder?)")
        names = read_network(path.parent)
        if modalities is None or path.parent.name in modalities:
            found.append((path.parent.name, names, path))
    if not found:
        raise ConfigError(f"{run}: no trained network found"
                          + (f" for {', '.join(modalities)}" if modalities else ""))
    return found


def load_network(name: str, modalities: tuple, path: Path, config: Config, precision: str,
                 models: dict | None = None) -> Network:
    """Read a network's weights into a model built from the run's config in `precision`.

    `models` (channels -> model) lets the networks of an ensemble share one compiled model and
    swap weights, so that memory holds one model and one set of activations however many networks
    there are (the file is read here once, which also checks it).
    """
    import keras

    models = {} if models is None else models
    if len(modalities) not in models:
        network_config = dataclasses.replace(config, model=dataclasses.replace(
            config.model, channels=len(modalities), backbone_weights=None))
        keras.mixed_precision.set_global_policy(precision)
        try:
            models[len(modalities)] = families.family_of(network_config).build(network_config)
        finally:
            keras.mixed_precision.set_global_policy("float32")
    model = models[len(modalities)]
    other = path.with_name("last.keras" if path.suffix == ".h5" else "best.weights.h5")
    with loading(path, f"restore it from a copy of the run, or use predict.py --models {other}"):
        model.load_weights(path)  # h5py / zip / shape mismatch: one line naming the file
    return Network(name, modalities, model, path, config.model.output_activation,
                   model.get_weights())
