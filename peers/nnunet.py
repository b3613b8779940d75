"""The real nnU-Net v2 as a row of compare.py, run in this process.

    python -m peers.nnunet prepare --train OUT/data/train --out RUN
    python -m peers.nnunet train --out RUN --max-minutes 10 [--epochs N]
    python -m peers.nnunet predict --run RUN --input VALIDATION --output PREDICTIONS

prepare: the labelled cases as the raw dataset RUN/nnUNet_raw/Dataset500_SynBraTS (3 mm,
region-based: peers/nnunet_data.py), what `nnUNetv2_plan_and_preprocess -d 500 -c 3d_fullres
--verify_dataset_integrity` runs (its intensity statistics from 10^6 voxels, not 10^8:
fingerprint_extractor), and splits_final.json holding fold 0 = train.py's 80/20 split.
train: what `nnUNetv2_train 500 3d_fullres 0 -tr nnUNetTrainerBudget -device cpu` runs, the default
trainer ended by the budget (peers/nnunet_trainer); history.csv and peer.json for compare.py.
predict: the cases at 3 mm through what `nnUNetv2_predict -d 500 -c 3d_fullres -f 0 -tr
nnUNetTrainerBudget -device cpu -npp 0 -nps 0` runs (Gaussian sliding window, mirroring TTA), its
labels as regions, put back on the 1 mm grid (linear, as predict.py does the other rows' 3 mm
probabilities), labels in each case's edition coding.
Training and prediction call nnU-Net's Python classes as its two command lines do, less their
trainer lookup (cpu_trainer). nnUNet_raw, nnUNet_preprocessed and nnUNet_results point into RUN;
nnUNet_n_proc_DA 0 keeps the augmentation in the training process (its memory is the system's;
2 cores leave no room for workers).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import traceback
from pathlib import Path

from util.outputs import exits_cleanly
from peers.plumbing import (PeerError, epoch_row, prediction_cases, require, split_cases,
                          without_tensorflow, write_case_labels, write_history, write_record)
from peers.nnunet_data import DATASET, DATASET_ID, FACTOR

HERE = Path(__file__).resolve().parent
TRAINER = "nnUNetTrainerBudget"
CONFIGURATION = "3d_fullres"
ITERATIONS, VAL_ITERATIONS = 25, 5  # per epoch (nnU-Net: 250, 50): a few epochs in a budget
QUICK = ["--iterations", 2, "--val-iterations", 1]  # compare.py --quick: a smoke run
INTENSITY_SAMPLES = 10**6  # foreground voxels of the fingerprint's statistics (fingerprint_extractor)


def environment(run: Path) -> None:
    """nnU-Net's paths into RUN, the budget trainer's folder, no compilation."""
    for name, folder in (("nnUNet_raw", "nnUNet_raw"), ("nnUNet_preprocessed", "preprocessed"),
                         ("nnUNet_results", "results")):
        os.environ[name] = str(run / folder)
    os.environ["nnUNet_extTrainer"] = str(HERE / "nnunet_trainer")
    os.environ["nnUNet_compile"] = "false"


def calling(name: str, function) -> None:
    """function() of nnU-Net's; a failure is one PeerError (the traceback goes to standard
    output, compare.py's log)."""
    try:
        function()
    except SystemExit as stop:
        if stop.code not in (None, 0):
            raise PeerError(f"{name} exited with status {stop.code}") from None
    except Exception as error:  # nnU-Net's asserts and RuntimeErrors
        traceback.print_exc(file=sys.stdout)
        raise PeerError(f"{name} failed: {type(error).__name__}: {error}".splitlines()[0]) from None


def fingerprint_extractor():
    """nnU-Net's DatasetFingerprintExtractor drawing INTENSITY_SAMPLES foreground voxels over all
    cases for its intensity statistics instead of 10^8: 4 synthetic cases drew 25 M each, 67 of
    prepare's 82 s on 2 cores. Those statistics feed CT normalisation only (MRI's z-score uses each
    case's own): the plans less them and the preprocessed files come out the same (measured,
    docs/comparison.md)."""
    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import (
        DatasetFingerprintExtractor)

    class SampledFingerprint(DatasetFingerprintExtractor):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.num_foreground_voxels_for_intensitystats = INTENSITY_SAMPLES

    return SampledFingerprint


def planned_and_preprocessed(configuration: str) -> None:
    """What `nnUNetv2_plan_and_preprocess -d 500 -c CONFIGURATION -np 2 -npfp 2
    --verify_dataset_integrity` runs, through nnU-Net's API, with fingerprint_extractor()."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprint_dataset, plan_experiments, preprocess)

    print(f"nnU-Net planning and preprocessing: dataset {DATASET_ID}, {configuration}, "
          f"{INTENSITY_SAMPLES:,} intensity samples", flush=True)
    extract_fingerprint_dataset(DATASET_ID, fingerprint_extractor(), 2,
                                check_dataset_integrity=True, clean=True)
    plans = plan_experiments([DATASET_ID])
    preprocess([DATASET_ID], plans, [configuration], [2])


def prepare(args) -> int:
    from brats.cases import find_cases

    from peers.nnunet_data import write_raw_dataset

    cases = [c for c in find_cases(args.train) if c.has_labels]
    if len(cases) < 2:
        raise PeerError(f"{args.train}: nnU-Net needs at least 2 labelled cases, found "
                        f"{len(cases)}")
    environment(args.out)
    count = write_raw_dataset(cases, args.out / "nnUNet_raw" / DATASET)
    print(f"{count} cases written to {args.out / 'nnUNet_raw' / DATASET} ({FACTOR} mm)", flush=True)
    calling("nnU-Net planning", lambda: planned_and_preprocessed(args.configuration))
    split = split_cases([c.id for c in cases])
    (args.out / "preprocessed" / DATASET / "splits_final.json").write_text(
        json.dumps([{"train": split["train"], "val": split["validation"]}], indent=1))
    (args.out / "settings.json").write_text(json.dumps({"configuration": args.configuration}))
    return 0


def configuration(run: Path) -> str:
    settings = run / "settings.json"
    if not settings.is_file():
        raise PeerError(f"{run}: not prepared for nnU-Net (no settings.json; run prepare first)")
    return json.loads(settings.read_text())["configuration"]


def cpu_trainer(run: Path, chosen: str):
    """What `nnUNetv2_train 500 CONFIGURATION 0 -tr nnUNetTrainerBudget -device cpu` builds
    (run_training.get_trainer_from_args, less its class lookup, which imports every trainer
    module: Primus's need timm and torchvision, and this index's torchvision is a CUDA build that
    does not import on the CPU torch)."""
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json

    from peers.nnunet_trainer.nnUNetTrainerBudget import nnUNetTrainerBudget

    torch.set_num_threads(os.cpu_count() or 1)  # nnUNetv2_train -device cpu does the same
    folder = run / "preprocessed" / DATASET
    plans = {**load_json(folder / "nnUNetPlans.json"), "continue_training": False}
    return nnUNetTrainerBudget(plans=plans, configuration=chosen,
                               fold=0, dataset_json=load_json(folder / "dataset.json"),
                               device=torch.device("cpu"))


def train(args) -> int:
    environment(args.out)
    chosen = configuration(args.out)
    os.environ["nnUNet_n_proc_DA"] = "0"  # augmentation in this process (planning needs > 0)
    os.environ["EEN_NNUNET_BUDGET_MINUTES"] = f"{args.max_minutes:.6g}"
    os.environ["EEN_NNUNET_ITERATIONS"] = str(args.iterations)
    os.environ["EEN_NNUNET_VAL_ITERATIONS"] = str(args.val_iterations)
    if args.epochs:
        os.environ["EEN_NNUNET_MAX_EPOCHS"] = str(args.epochs)
    print(f"nnUNetTrainerBudget, dataset {DATASET_ID}, {chosen}, fold 0, device cpu", flush=True)
    calling("nnU-Net training", lambda: cpu_trainer(args.out, chosen).run_training())
    folder = args.out / "results" / DATASET / f"{TRAINER}__nnUNetPlans__{chosen}" / "fold_0"
    record = json.loads((folder / "budget_history.json").read_text())
    rows = [epoch_row(r["epoch"], r["steps"], r["train_seconds"], r["epoch_seconds"],
                      loss=r["loss"], val_loss=r["val_loss"]) for r in record["rows"]]
    write_history(rows, args.out / "history.csv")
    write_record(args.out, record["parameters"], rows, configuration=chosen,
                 patch_size=record["patch_size"], batch_size=record["batch_size"])
    return 0


def cpu_predictor(run: Path, chosen: str):
    """What `nnUNetv2_predict -d 500 -c CONFIGURATION -f 0 -tr nnUNetTrainerBudget -device cpu`
    builds (nnUNetPredictor with its defaults: Gaussian sliding window, step 0.5, mirroring TTA;
    initialize_from_trained_model_folder less its class lookup, as cpu_trainer)."""
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from peers.nnunet_trainer.nnUNetTrainerBudget import nnUNetTrainerBudget

    torch.set_num_threads(os.cpu_count() or 1)
    folder = run / "results" / DATASET / f"{TRAINER}__nnUNetPlans__{chosen}"
    checkpoint = torch.load(folder / "fold_0" / "checkpoint_final.pth", map_location="cpu",
                            weights_only=False)
    plans = PlansManager(load_json(folder / "plans.json"))
    dataset_json = load_json(folder / "dataset.json")
    manager = plans.get_configuration(chosen)
    network = nnUNetTrainerBudget.build_network_architecture(
        plans, manager, determine_num_input_channels(plans, manager, dataset_json),
        plans.get_label_manager(dataset_json).num_segmentation_heads,
        enable_deep_supervision=False)
    network.load_state_dict(checkpoint["network_weights"])
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                perform_everything_on_device=True, device=torch.device("cpu"),
                                allow_tqdm=False)
    predictor.manual_initialization(network, plans, manager, [checkpoint["network_weights"]],
                                    dataset_json, TRAINER,
                                    checkpoint["inference_allowed_mirroring_axes"])
    return predictor


def predict(args) -> int:
    import nibabel as nib
    import numpy as np

    from brats.cases import CaseError, load_case
    from peers.nnunet_data import on_case_grid, write_images

    environment(args.run)
    chosen = configuration(args.run)
    cases, codings = prediction_cases(args.input, args.output)
    scratch = args.output.with_name(args.output.name + ".nnunet")  # nnU-Net's 3 mm files
    shutil.rmtree(scratch, ignore_errors=True)
    loaded, failed = {}, []
    for files in cases:
        try:
            case = load_case(dataclasses.replace(files, seg=None))
            write_images(case, scratch / "input")
        except CaseError as error:
            print(f"error: {error}", file=sys.stderr)
            failed.append(files.id)
            continue
        loaded[case.id] = (dataclasses.replace(case, stored={}), case.shape)  # images freed
    if not loaded:
        raise PeerError(f"{args.input}: no case could be read")
    print(f"nnUNetPredictor, dataset {DATASET_ID}, {chosen}, fold 0, device cpu", flush=True)
    (scratch / "output").mkdir(parents=True, exist_ok=True)  # as nnUNetv2_predict makes it
    calling("nnU-Net prediction", lambda: cpu_predictor(args.run, chosen)
            .predict_from_files_sequential(str(scratch / "input"), str(scratch / "output"),
                                           save_probabilities=False, overwrite=True))
    for case_id, (case, shape) in loaded.items():
        labels = np.asarray(nib.load(scratch / "output" / f"{case_id}.nii.gz").dataobj)
        write_case_labels(case, on_case_grid(labels, shape), codings[case_id], args.output)
    print(f"{len(loaded)} cases written to {args.output}, {len(failed)} failed")
    return 1 if failed else 0


@exits_cleanly(PeerError)
def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    steps = parser.add_subparsers(dest="step", required=True)
    preparing = steps.add_parser("prepare", help="raw dataset, plan and preprocess")
    preparing.add_argument("--train", type=Path, required=True, help="labelled BraTS cases")
    preparing.add_argument("--out", type=Path, required=True)
    preparing.add_argument("--configuration", default=CONFIGURATION, choices=("2d", "3d_fullres"))
    training = steps.add_parser("train", help="nnUNetv2_train under a budget")
    training.add_argument("--out", type=Path, required=True)
    training.add_argument("--max-minutes", type=float, required=True)
    training.add_argument("--epochs", type=int)
    training.add_argument("--iterations", type=int, default=ITERATIONS)
    training.add_argument("--val-iterations", type=int, default=VAL_ITERATIONS)
    predicting = steps.add_parser("predict", help="nnUNetv2_predict, labels back")
    predicting.add_argument("--run", type=Path, required=True)
    predicting.add_argument("--input", type=Path, required=True)
    predicting.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    without_tensorflow()
    require("nnunetv2", "nnunetv2")
    return {"prepare": prepare, "train": train, "predict": predict}[args.step](args)


if __name__ == "__main__":
    sys.exit(main())
