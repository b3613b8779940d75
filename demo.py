"""The whole pipeline end to end on synthetic BraTS-like cases: `make demo` runs this.

    python demo.py --out demo
    python demo.py --config configs/synth2real.yaml --out demo_synth2real   # for real scans

1. write 24 training and 6 validation cases (validation ground truth kept apart; the config's
   `synthetic` section says how many, and from which world: plain, or randomised for real scans)
2. preprocess the training cases for the config (configs/small.yaml unless told)
3. train the four modality networks (FLAIR, T1, T1ce, T2)
4. predict the validation cases with the four-network ensemble
5. score them the BraTS way
6. ablate each network's 2D branch and 3D skips (analyze.py): does the embedding matter?
7. draw the figures: overlays (Fig. 2), feature maps (Figs. 3/4), training curves

Every step skips what an earlier run of the demo already wrote, so an interrupted demo resumes.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from util.tensorflow_start import prepare_tensorflow  # noqa: E402

prepare_tensorflow()  # before anything imports TensorFlow: oneDNN on, its start-up lines off

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402

from util.config import ConfigError, load_config  # noqa: E402
from util.outputs import check_folder, exits_cleanly  # noqa: E402

CONFIG = Path("configs/small.yaml")  # the default; --config picks another (its name names the run)
MODALITIES = ("flair", "t1", "t1ce", "t2")


def step(title: str):
    print(f"\n== {title}", flush=True)
    return time.perf_counter()


def done(start: float) -> None:
    print(f"   ({time.perf_counter() - start:.0f} s)", flush=True)


def make_data(out: Path, train_cases: int, validation_cases: int, seed: int,
              world: str = "plain") -> None:
    """Training and validation cases of synthetic.py's `world`; each set is written as
    `<name>.partial` and renamed when complete, so a set that a full disk interrupted is written
    again by the next demo."""
    import synthetic
    from tqdm import tqdm

    for folder, cases, validation in ((out / "train", train_cases, False),
                                      (out / "validation", validation_cases, True)):
        if folder.exists():
            print(f"   {folder} exists, kept")
            continue
        partial = folder.with_name(f"{folder.name}.partial")
        written = synthetic.write_dataset(partial, cases, seed + validation, "brats2020", validation,
                                          out / "validation_ground_truth", jobs=2, world=world)
        list(tqdm(written, total=cases, desc=folder.name, unit="case"))
        partial.rename(folder)


def draw_figures(out: Path, run: Path, predictions: Path, data: Path, cache: Path) -> list:
    """Overlays of the validation cases, the feature maps of FLAIR and T1ce, training curves."""
    import keras

    from util import figures
    from brats.cases import find_cases, find_label_files, load_case, read_labels
    from util.config import load_config
    from datasets.cache import Cache
    from model import COMPRESSED_IMAGE, DECODED_IMAGE, build_model, feature_model

    written = []
    truths = find_label_files(data / "validation_ground_truth")
    for files in find_cases(data / "validation"):
        case = load_case(files)
        prediction = np.asanyarray(nib.load(predictions / f"{files.id}.nii.gz").dataobj)
        truth = read_labels(*truths[files.id], files.id)[0]
        figure = figures.case_overlays(case.images["flair"], prediction, truth, f"{files.id} (FLAIR)")
        written.append(figures.save(figure, out / f"overlay_{files.id}.png"))
    config = load_config(run / "config.yaml")
    config.model.backbone_weights = None
    cache_data = Cache(cache)
    case_id = cache_data.labelled_ids()[0]
    for modality in ("flair", "t1ce"):
        model = build_model(config)
        model.load_weights(run / modality / "best.weights.h5")
        volume = cache_data.image(case_id, (modality,))
        maps = feature_model(model).predict_on_batch(volume[None])
        figure = figures.feature_maps(volume[..., 0], maps[COMPRESSED_IMAGE][0], maps[DECODED_IMAGE][0],
                                      cache_data.regions(case_id), f"{case_id}, {modality} network")
        written.append(figures.save(figure, out / f"feature_maps_{modality}.png"))
        keras.backend.clear_session()
    for modality in MODALITIES:
        history = figures.read_history(run / modality / "history.csv")
        written.append(figures.save(figures.training_curves(history, f"{modality} network"),
                                    out / f"training_{modality}.png"))
    return written


@exits_cleanly(ConfigError)
def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--out", type=Path, default=Path("demo"))
    parser.add_argument("--config", type=Path, default=CONFIG,
                        help=f"network, training and synthetic cases (default {CONFIG}); "
                             "configs/synth2real.yaml trains for real scans")
    parser.add_argument("--train-cases", type=int,
                        help="override synthetic.train_cases (small.yaml: 24)")
    parser.add_argument("--validation-cases", type=int,
                        help="override synthetic.validation_cases (small.yaml: 6)")
    parser.add_argument("--epochs", type=int,
                        help="epochs per network (small.yaml: 12, the demo's 15-minute CPU budget)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    config = load_config(args.config)
    synthetic_cases = config.synthetic
    epochs = args.epochs or config.train.epochs
    out = check_folder(args.out)
    data, cache, run = out / "data", out / "cache", out / "runs" / config.name
    predictions, results = out / "predictions", out / "results.csv"
    begin = time.perf_counter()

    start = step("1/7 synthetic BraTS-like cases")
    make_data(data, args.train_cases or synthetic_cases.train_cases,
              args.validation_cases or synthetic_cases.validation_cases, args.seed,
              synthetic_cases.world)
    done(start)

    import preprocess

    start = step("2/7 preprocess")
    status = preprocess.main([str(data / "train"), str(cache), "--config", str(args.config),
                              "--jobs", "2"])
    done(start)
    if status:
        return status

    import train

    start = step("3/7 train the four modality networks (one process, one traced model)")
    resume = ["--resume"] if list(run.glob("*/state.json")) else []
    status = train.main(["--config", str(args.config), "--data", str(cache), "--out", str(run),
                         "--modality", "all", "--epochs", str(epochs), "--verbose", "2",
                         *resume])
    done(start)
    if status:
        return status

    import predict

    start = step("4/7 predict the validation cases (ensemble of four)")
    status = predict.main(["--run", str(run), "--input", str(data / "validation"),
                           "--output", str(predictions)])
    done(start)
    if status:
        return status

    import evaluate

    start = step("5/7 evaluate")
    evaluate.main([str(predictions), str(data / "validation_ground_truth"), "--out", str(results)])
    done(start)

    import analyze

    start = step("6/7 does the 2D branch matter? (ablation on the held-out training cases)")
    status = analyze.main(["--run", str(run)])
    done(start)
    if status:
        return status

    start = step("7/7 figures")
    written = draw_figures(out / "figures", run, predictions, data, cache)
    done(start)

    print(f"\nDemo finished in {(time.perf_counter() - begin) / 60:.1f} min. Written:")
    for path, what in ((data, "synthetic cases (train, validation, validation_ground_truth)"),
                       (cache, "preprocess cache"), (run, "run: config, split, four networks"),
                       (predictions, "label maps <case id>.nii.gz"), (results, "BraTS scores"),
                       (run / "ablation.csv", "ablation and tumour contrasts"),
                       (out / "figures", f"{len(written)} figures")):
        print(f"  {str(path):32s} {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
