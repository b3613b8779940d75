"""Does the embedded 2D branch matter? An ablation and embedding report for a trained run.

    python analyze.py --run runs/small                  # every network, held-out cases of the run
    python analyze.py --run runs/small --networks flair,t1ce --data cache/other

Each network of the run segments its held-out cases (split.json's validation ids, read from the
preprocess cache) three ways:

    full        the network as trained
    no_2d       the 2D branch zeroed: the `decoded_image` layer's weights set to 0, so the 3D
                decoder receives nothing from the embedded 2D classifier
    no_3d_skips the 3D decoder adds nothing from the 3D encoder (only the 2D branch feeds it)

and prints hard Dice of WT, TC and ET in the cropped grid (both empty: 1), their mean, and the
drop against `full`. It also measures whether the images of the paper's Figs. 3/4 show the
tumour: the tumour contrast of the compressed image (what the backbone sees) and of the decoded
image (what the 2D decoder hands back): |mean inside the tumour's depth projection - mean over the
rest of the brain| / standard deviation over the rest of the brain, averaged over the 3 channels
(each a depth slab). The table is also written to RUN/ablation.csv.

Cases without labels (a real scan in BraTS space; docs/synthetic-to-real.md):

    python analyze.py --run runs/synth2real --unlabelled real_cases --out report/

segments each case with every network of the run and with their plain average, and writes
report/unlabelled.csv (voxels per region, voxels inside the lesion a FLAIR threshold shows, Dice
against it: scoring/unlabelled.py), report/<case>_overlays.png (each label map on each modality)
and report/intensity_histograms.png (z-scored brain intensities of the cases next to the run's
training cache and any --compare cache: does the synthetic world cover what real scans show?).
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import sys
from pathlib import Path

from util.tensorflow_start import prepare_tensorflow  # noqa: E402

prepare_tensorflow()  # before anything imports TensorFlow: oneDNN on, its start-up lines off

import numpy as np  # noqa: E402

from util.config import Config, ConfigError  # noqa: E402
from brats.cases import CaseError  # noqa: E402
from datasets.cache import Cache, CacheError  # noqa: E402
from util.outputs import atomic, check_file, check_folder, exits_cleanly  # noqa: E402
from util.runfolder import (loading, network_weights, read_config, read_network,  # noqa: E402
                            read_split)

MODES = ("full", "no_2d", "no_3d_skips")
REGIONS = ("WT", "TC", "ET")


def dice(truth: np.ndarray, prediction: np.ndarray) -> float:
    """Hard Dice of two boolean masks; both empty counts as 1 (BraTS)."""
    total = truth.sum() + prediction.sum()
    return 1.0 if total == 0 else float(2 * np.logical_and(truth, prediction).sum() / total)


def region_dice(probabilities: np.ndarray, regions: np.ndarray) -> np.ndarray:
    """Dice of WT, TC, ET: probabilities (H, W, D, 3) thresholded at 0.5 against regions."""
    return np.array([dice(regions[..., i] > 0, probabilities[..., i] > 0.5) for i in range(3)])


def tumour_contrast(image: np.ndarray, volume: np.ndarray, regions: np.ndarray) -> float:
    """How visible the tumour is in a (H, W, 3) image whose channels are 3 depth slabs.

    Per channel c: the tumour mask is WT projected over slab c of the depth, the brain mask the
    non-zero voxels projected likewise; contrast = |mean(tumour) - mean(brain \\ tumour)| /
    std(brain \\ tumour). Mean over the channels that hold tumour; NaN when none does.
    """
    slabs = np.array_split(np.arange(volume.shape[2]), 3)
    values = []
    for channel, depths in enumerate(slabs):
        tumour = regions[:, :, depths, 0].any(axis=2)
        rest = (volume[:, :, depths, :] != 0).any(axis=(2, 3)) & ~tumour
        if tumour.sum() < 4 or rest.sum() < 4:
            continue
        plane = image[..., channel].astype(np.float64)
        spread = plane[rest].std()
        gap = abs(plane[tumour].mean() - plane[rest].mean())
        values.append(gap / spread if spread > 1e-12 else (0.0 if gap < 1e-12 else np.inf))
    return float(np.mean(values)) if values else float("nan")


@dataclasses.dataclass
class NetworkReport:
    """Mean Dice (WT, TC, ET) per mode and mean tumour contrasts of one network."""

    name: str
    dice: dict  # mode -> np.ndarray (3,)
    compressed_contrast: float
    decoded_contrast: float

    def rows(self) -> list:
        full = self.dice["full"].mean()
        return [{"network": self.name, "mode": mode, **dict(zip(REGIONS, values.round(4))),
                 "mean": round(float(values.mean()), 4),
                 "drop": round(float(full - values.mean()), 4),
                 "compressed_contrast": round(self.compressed_contrast, 3),
                 "decoded_contrast": round(self.decoded_contrast, 3)}
                for mode, values in self.dice.items()]


def ablation_models(config: Config, weights: Path) -> dict:
    """mode -> keras.Model with the network's weights: full, 2D branch zeroed, 3D skips removed."""
    from model import DECODED_IMAGE, build_model

    full = build_model(config)
    with loading(weights):
        full.load_weights(weights)
    no_2d = build_model(config)
    no_2d.set_weights(full.get_weights())
    decoded = no_2d.get_layer(DECODED_IMAGE)
    decoded.set_weights([np.zeros_like(w) for w in decoded.get_weights()])
    no_skips = build_model(config, skips_3d=False)
    for layer in no_skips.layers:
        if layer.weights:
            layer.set_weights(full.get_layer(layer.name).get_weights())
    return {"full": full, "no_2d": no_2d, "no_3d_skips": no_skips}


def probabilities(model, volume: np.ndarray, activation: str) -> np.ndarray:
    """(H, W, D, 3) region probabilities of one case (volume (H, W, D, C))."""
    from losses import classes_to_regions

    output = np.asarray(model.predict_on_batch(volume[None]), np.float32)[0]
    return np.asarray(classes_to_regions(output), np.float32) if activation == "softmax" else output


def analyze_network(name: str, folder: Path, config: Config, cache: Cache, ids: list) -> NetworkReport:
    """Score one network of a run on `ids` in every mode, and measure the tumour contrasts."""
    import keras

    from model import COMPRESSED_IMAGE, DECODED_IMAGE, feature_model

    modalities = read_network(folder)
    weights = network_weights(folder)
    network_config = dataclasses.replace(config, model=dataclasses.replace(
        config.model, channels=len(modalities), backbone_weights=None))
    models = ablation_models(network_config, weights)
    features = feature_model(models["full"])
    activation = config.model.output_activation
    scores = {mode: [] for mode in MODES}
    compressed, decoded = [], []
    for case_id in ids:
        volume = np.asarray(cache.image(case_id, modalities), np.float32)
        regions = cache.regions(case_id)
        for mode, model in models.items():
            scores[mode].append(region_dice(probabilities(model, volume, activation), regions))
        maps = features.predict_on_batch(volume[None])
        compressed.append(tumour_contrast(np.asarray(maps[COMPRESSED_IMAGE][0]), volume, regions))
        decoded.append(tumour_contrast(np.asarray(maps[DECODED_IMAGE][0]), volume, regions))
    keras.backend.clear_session()
    return NetworkReport(name, {m: np.mean(s, axis=0) for m, s in scores.items()},
                         float(np.nanmean(compressed)), float(np.nanmean(decoded)))


def network_folders(run: Path, names: list | None) -> dict:
    """name -> folder of each trained network of a run (optionally only `names`)."""
    folders = {p.parent.name: p.parent for p in sorted(run.glob("*/network.json"))}
    if names:
        missing = [n for n in names if n not in folders]
        if missing:
            raise ConfigError(f"{run}: no network {', '.join(missing)} (has {', '.join(folders)})")
        folders = {n: folders[n] for n in names}
    if not folders:
        raise ConfigError(f"{run}: no trained network (no */network.json)")
    return folders


def analyze_run(run: Path, data: Path | None = None, names: list | None = None) -> list:
    """The reports of every (or the named) network of `run` on its held-out cases."""
    config = read_config(run)
    split = read_split(run)
    if not split["validation"]:
        raise ConfigError(f"{run}: the run has no held-out cases (train.validation_fraction 0)")
    cache = Cache(data or split["cache"])
    folders = network_folders(run, names)
    for folder in folders.values():  # every network's files before the first is scored
        read_network(folder)
        network_weights(folder)
    return [analyze_network(name, folder, config, cache, split["validation"])
            for name, folder in folders.items()]


def format_table(reports: list) -> str:
    """A Markdown table: one row per network and mode."""
    header = ("network", "mode", "WT", "TC", "ET", "mean", "drop", "compressed_contrast",
              "decoded_contrast")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for report in reports:
        for row in report.rows():
            lines.append("| " + " | ".join(str(row[k]) for k in header) + " |")
    return "\n".join(lines)


def write_csv(reports: list, path: Path) -> None:
    """All rows to `path` through a temporary name."""
    write_rows([row for report in reports for row in report.rows()], path)


def cache_intensities(cache: Cache, modalities: tuple, cases: int = 8) -> dict:
    """modality -> z-scored brain values of the first `cases` cases of a preprocess cache."""
    ids = cache.ids[:cases]
    return {m: np.concatenate([v[v != 0] for v in (np.asarray(cache.image(i, (m,)))[..., 0]
                                                   for i in ids)]) for m in modalities}


def unlabelled_report(run: Path, cases: Path, out: Path, lesion_z: float, compare: list) -> list:
    """Rows of every network of `run` and their average on every case under `cases`; writes the
    overlays and the intensity histograms under `out`."""
    from brats.cases import find_cases, load_case
    from brats.codings import regions_to_labels
    from datasets.volumes import full_grid, preprocess_case
    from ensemble import combine
    from predict import region_probabilities
    from scoring.unlabelled import flair_lesion, region_report
    from systems.networks import load_network, network_files
    from util import figures

    config = read_config(run)
    found = find_cases(cases)
    if not found:
        raise CaseError(f"{cases}: no BraTS cases found")
    models = {}
    networks = [load_network(*spec, config, "float32", models)
                for spec in network_files(run, None, None)]
    data, rows = config.data, []
    real = {m: [] for m in config.data.modalities}
    for files in found:
        case = load_case(dataclasses.replace(files, seg=None))
        arrays, meta = preprocess_case(case, tuple(data.crop_size), data.crop_mode, data.downsample)
        for modality in real:
            real[modality].append(arrays[modality][arrays[modality] != 0])
        per_network = {n.name: region_probabilities(n, arrays, False) for n in networks}
        per_network["average"] = combine(per_network)
        labels = {name: regions_to_labels(full_grid(p, meta)) for name, p in per_network.items()}
        lesion = flair_lesion(case.images["flair"], lesion_z)
        rows += [{"case": case.id, "network": name, **region_report(label_map, lesion)}
                 for name, label_map in labels.items()]
        centre = figures.tumour_centre(lesion.astype(np.uint8))
        shown = {f"FLAIR > {lesion_z:g} sd": lesion, **labels}
        figures.save(figures.modality_overlays(case.images, shown, centre,
                                               f"{case.id}: {run.name} networks, axial z={centre[2]}"),
                     out / f"{case.id}_overlays.png")
    groups = {f"{cases.name} (real)": {m: np.concatenate(v) for m, v in real.items()},
              f"{run.name} training cache": cache_intensities(Cache(read_split(run)["cache"]),
                                                              tuple(real))}
    for other in compare:
        groups[f"{other.name}"] = cache_intensities(Cache(other), tuple(real))
    figures.save(figures.intensity_histograms(groups, "z-scored brain intensities"),
                 out / "intensity_histograms.png")
    return rows


def write_rows(rows: list, path: Path) -> None:
    """Dicts with the same keys to a CSV at `path`, through a temporary name."""
    with atomic(path) as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


@exits_cleanly(ConfigError, CacheError, CaseError)
def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--run", type=Path, required=True, help="run folder written by train.py")
    parser.add_argument("--data", type=Path, help="preprocess cache (default: the run's own)")
    parser.add_argument("--networks", help="comma list of networks (default: all of the run)")
    parser.add_argument("--out", type=Path,
                        help="CSV to write (default RUN/ablation.csv); with --unlabelled the "
                             "report's folder (default RUN/unlabelled)")
    parser.add_argument("--unlabelled", type=Path,
                        help="BraTS cases without labels (real scans): segment and report them")
    parser.add_argument("--lesion-z", type=float, default=2.0,
                        help="--unlabelled: the FLAIR yardstick's threshold in brain standard "
                             "deviations (default 2)")
    parser.add_argument("--compare", type=Path, action="append", default=[],
                        help="--unlabelled: another preprocess cache for the histograms")
    args = parser.parse_args(argv)
    if not (args.run / "config.yaml").is_file() or not (args.run / "split.json").is_file():
        raise ConfigError(f"{args.run}: not a run folder (no config.yaml and split.json)")
    if args.unlabelled:
        out = check_folder(args.out or args.run / "unlabelled")
        rows = unlabelled_report(args.run, args.unlabelled, out, args.lesion_z, args.compare)
        print("| " + " | ".join(rows[0]) + " |\n|" + "---|" * len(rows[0]))
        print("\n".join("| " + " | ".join(str(v) for v in row.values()) + " |" for row in rows))
        write_rows(rows, out / "unlabelled.csv")
        print(f"written: {out / 'unlabelled.csv'}, overlays and intensity_histograms.png")
        return 0
    out = check_file(args.out or args.run / "ablation.csv")
    reports = analyze_run(args.run, args.data, args.networks.split(",") if args.networks else None)
    print(format_table(reports))
    write_csv(reports, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
