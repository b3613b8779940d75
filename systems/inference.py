"""One case through a run's networks: what predict.py and the challenge container share.

    labels = predict_case(files, networks, config, options)   # writes <output>/<case id>.nii.gz
    probabilities = region_probabilities(network, arrays, tta=True)   # (H, W, D, 3) WT, TC, ET
    merged = combine({"flair": p1, "t1ce": p2}, read_weights(run, ["flair", "t1ce"]))

`options` carries what predict.py's command line sets: output (folder), codings (case id ->
coding), tta, threshold, et_min_voxels, weights (None: the plain average), save_probabilities.
"""
from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path
from typing import Callable

import numpy as np

from brats.cases import load_case
from brats.codings import recode, regions_to_labels
from datasets.volumes import full_grid, preprocess_case
from systems import families
from systems.networks import Network
from util.config import Config, ConfigError
from util.outputs import atomic
from util.portal import write_labels
from util.runfolder import read_json, refusal

REGIONS = ("WT", "TC", "ET")
WEIGHTS_FILE = "ensemble_weights.json"  # in the run folder, written by ensemble.py


# ---- the ensemble ------------------------------------------------------------------------------

def combine(probabilities: dict, weights: dict | None = None) -> np.ndarray:
    """(H, W, D, 3) ensemble of network name -> (H, W, D, 3) probabilities.

    weights None: the plain average (the paper). Otherwise weights[region][name] per region; a
    network the weights do not name is an error (the run and its weights file disagree).
    """
    names = list(probabilities)
    if weights is None:
        return np.mean([probabilities[n] for n in names], axis=0)
    missing = [n for n in names if any(n not in weights[r] for r in REGIONS)]
    if missing:
        raise ConfigError(f"ensemble weights name no weight for {', '.join(missing)} "
                          f"(refit with ensemble.py)")
    channels = [sum(weights[region][n] * probabilities[n][..., r] for n in names)
                for r, region in enumerate(REGIONS)]
    return np.stack(channels, axis=-1).astype(np.float32)


def read_weights(run: Path, names: list | None = None) -> dict:
    """The fitted weights of a run: per region a weight for each network of `names` (when
    given: the networks predicting); one clear error otherwise."""
    path = run / WEIGHTS_FILE
    refit = f"fit them again: python ensemble.py --run {run}"
    if not path.is_file():
        raise ConfigError(f"{path}: no fitted ensemble weights (run: python ensemble.py --run {run})")
    weights = read_json(path, {"weights": dict}, refit)["weights"]
    for region in REGIONS:
        given = weights.get(region)
        if not isinstance(given, dict) or not given or not all(
                isinstance(w, (int, float)) and not isinstance(w, bool) for w in given.values()):
            raise refusal(path, f"damaged (no weights for {region})", refit)
        if names is not None and sorted(given) != sorted(names):
            raise refusal(path, f"fitted for {', '.join(given)}, this prediction uses "
                                f"{', '.join(names)}", f"{refit}, or use --ensemble plain")
    return weights


# ---- one case ---------------------------------------------------------------------------------

def flips(tta: bool) -> list:
    """Axis tuples to mirror over: none, or all 8 combinations of H, W, D."""
    if not tta:
        return [()]
    return [axes for n in range(4) for axes in itertools.combinations((0, 1, 2), n)]


def region_probabilities(network: Network, arrays: dict, tta: bool) -> np.ndarray:
    """(H, W, D, 3) region probabilities of one network on one preprocessed case."""
    from losses import classes_to_regions

    volume = np.stack([arrays[m] for m in network.modalities], axis=-1)[None]
    total = np.zeros(volume.shape[1:4] + (3,), np.float32)
    model = network.activate()
    for axes in flips(tta):
        flipped = np.flip(volume, [a + 1 for a in axes]) if axes else volume
        output = np.asarray(model.predict_on_batch(np.ascontiguousarray(flipped)), np.float32)[0]
        if network.activation == "softmax":
            output = np.asarray(classes_to_regions(output), np.float32)
        total += np.flip(output, axes) if axes else output
    return total / len(flips(tta))


def predict_case(files, networks: list, config: Config, args,
                 more_outputs: Callable | None = None) -> np.ndarray:
    """Segment one case, write its file(s) and return its label map.

    more_outputs(case, labels, coding, output folder), when given, writes whatever else the caller
    wants from the (H, W, D) labels in the BraTS 2020 coding (predict.py: the native-space labels
    of a prepared case). The label map is written last: its presence marks the case finished for a rerun.
    """
    case = load_case(dataclasses.replace(files, seg=None))  # labels unread: any edition's will do
    coding = getattr(args, "codings", {}).get(case.id, "brats2020")  # default: the 2020 coding
    if config.model.family != "een":  # a baseline: its own whole-grid inference, no TTA
        network = networks[0]
        labels = families.predicted_labels(network.activate(), case, network.modalities, config,
                                           args.et_min_voxels)
        if more_outputs:
            more_outputs(case, labels, coding, args.output)
        labels = recode(labels, "brats2020", coding)
        write_labels(labels, case, args.output / f"{case.id}.nii.gz")
        return labels
    data = config.data
    arrays, meta = preprocess_case(case, tuple(data.crop_size), data.crop_mode, data.downsample)
    cropped = combine({n.name: region_probabilities(n, arrays, args.tta) for n in networks},
                      getattr(args, "weights", None))
    probabilities = full_grid(cropped, meta)
    labels = regions_to_labels(probabilities, args.threshold, args.et_min_voxels)
    if more_outputs:
        more_outputs(case, labels, coding, args.output)
    labels = recode(labels, "brats2020", coding)
    if getattr(args, "save_probabilities", False):
        with atomic(args.output / f"{case.id}_probabilities.npz") as temporary:
            np.savez_compressed(temporary, probabilities=cropped.astype(np.float16),
                                crop_offsets=meta["crop_offsets"], downsample=meta["downsample"],
                                original_shape=meta["original_shape"],
                                regions=np.array(["WT", "TC", "ET"]))
    write_labels(labels, case, args.output / f"{case.id}.nii.gz")
    return labels
