"""Segment BraTS cases with a trained run and write label maps the evaluation portal accepts.

    python predict.py --run runs/paper --input MICCAI_BraTS2020_ValidationData --output predictions

Each case is preprocessed exactly as in training (from the run's config.yaml), every network of
the run (or those named by --modalities / --models) predicts the three regions, their sigmoid
outputs are averaged (SPEC.md section 3; `--ensemble fitted`: per-region weights, ensemble.py),
thresholded, put back into the original grid and turned into labels (nesting enforced) in the
coding of the input's edition (codings.py): BraTS 2017-2021 ET 4, TC but not ET 1, WT but not TC
2; BraTS 2023+ (GLI, SSA, MET, MEN) ET 3, 1, 2; MSD Task01 3, 2, 1. BraTS-PED ids are the same in
BraTS 2023 (ET 3, 1, 2) and 2024+ (ET 1, 2 non-enhancing, 4 edema): --ped-coding states which, and
an input holding PED cases without it stops with one line. --coding states another; the coding of
each case is printed and recorded in <output>/codings.json, which evaluate.py reads. Files are
`<case id>.nii.gz` as each portal expects (BraTS20_Validation_001.nii.gz,
BraTS-GLI-00001-000.nii.gz), uint8, with the input's affine and header. One case is in memory at a time; each file is written under a
temporary name and renamed; cases already predicted are skipped unless --overwrite; a bad case is
reported in one line and skipped. An output that cannot be written (full disk) stops the run
with one line; a rerun continues with the unfinished cases.

A case made by prepare.py from a patient's raw series (its folder holds native/) also gets its
labels on the patient's own T1c grid, `<case id>_native.nii.gz` (the input T1c's shape and affine,
the same coding), and `<case id>_native.png`, the native T1c with the labels through the largest
tumour component (docs/real-scans.md).

A baseline run (model.family kermi2018, unet3d_patches, bennaceur2020) predicts with its one
network through families.py: whole-grid inference of the system, 0/1 regions, the same labels
and files; --postprocess switches Ben naceur's post-processings (default: the run's config):

    python predict.py --run runs/bennaceur2020 --input VALIDATION --output pred --postprocess pp1
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from util.tensorflow_start import prepare_tensorflow

prepare_tensorflow()  # before anything imports TensorFlow: oneDNN on, its start-up lines off

from brats.cases import CaseError, find_cases  # noqa: E402
from brats.codings import CODINGS, PED_CODINGS, CodingError  # noqa: E402
from preparing.native import write_native  # noqa: E402
from systems import families  # noqa: E402
from systems.inference import flips, predict_case, read_weights, region_probabilities  # noqa: E402,F401
from systems.networks import load_network, network_files  # noqa: E402
from util.config import Config, ConfigError  # noqa: E402
from util.outputs import check_folder, exits_cleanly  # noqa: E402
from util.portal import case_codings, describe_codings, record_codings  # noqa: E402
from util.runfolder import read_config  # noqa: E402

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
WRITABLE_CODINGS = tuple(c for c in CODINGS if c != "brats2024-men-rt")  # GTV is no glioma region


# ---- command line -----------------------------------------------------------------------------

def family_config(config: Config, args, run: Path, networks: int) -> Config:
    """The run's config with --postprocess applied (Ben naceur runs only); a baseline run
    refuses the EEN's ensemble options (one network, no TTA: none was published)."""
    family = config.model.family
    if family != "een":
        refused = [option for option, given in (
            ("--tta", args.tta), ("--ensemble fitted", args.ensemble == "fitted"),
            ("--save-probabilities", args.save_probabilities)) if given]
        if refused:
            raise ConfigError(f"{run}: {refused[0]} applies to EEN runs only ({family} is a "
                              f"baseline: one network, no TTA)")
        if networks != 1:
            raise ConfigError(f"{run}: a {family} run predicts with one network, {networks} given")
    return families.with_postprocessing(config, args.postprocess)


@exits_cleanly(ConfigError, CaseError, CodingError)
def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--run", type=Path, help="run folder written by train.py")
    parser.add_argument("--models", nargs="+",
                        help="weight files (best.weights.h5 or last.keras inside run folders)")
    parser.add_argument("--modalities", help="comma list: use only these networks of the run")
    parser.add_argument("--input", type=Path, required=True, help="BraTS cases, any layout")
    parser.add_argument("--output", type=Path, required=True, help="folder for <case id>.nii.gz")
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--tta", action="store_true", help="average over the 8 mirrorings")
    parser.add_argument("--ensemble", default="plain", choices=("plain", "fitted"),
                        help="plain: equal weights (the paper); fitted: per-region weights of "
                             "RUN/ensemble_weights.json (python ensemble.py --run RUN)")
    parser.add_argument("--et-min-voxels", type=int, default=0,
                        help="an ET smaller than this becomes necrosis (default 0: off)")
    parser.add_argument("--save-probabilities", action="store_true",
                        help="also write <case id>_probabilities.npz (cropped grid, float16)")
    parser.add_argument("--precision", default="float32", choices=PRECISIONS,
                        help="mixed_bfloat16 is about 1.7x faster on recent CPUs")
    parser.add_argument("--postprocess", choices=families.POSTPROCESSING,
                        help="bennaceur2020 runs: none, pp1 (small components), pp2 (opening) "
                             "or both (default: the run's config)")
    parser.add_argument("--coding", default="auto", choices=("auto", *WRITABLE_CODINGS),
                        help="label coding of the files (default auto: the input edition's, "
                             "brats2020 ET = 4, brats2023 ET = 3, brats2024-ped ET = 1, msd)")
    parser.add_argument("--ped-coding", choices=PED_CODINGS,
                        help="coding of BraTS-PED cases under --coding auto, needed when the input "
                             "holds any (the ids cannot say): brats2023 for BraTS 2023 PED "
                             "(ET = 3), brats2024-ped for 2024 and later (ET = 1)")
    parser.add_argument("--overwrite", action="store_true", help="redo cases already written")
    args = parser.parse_args(argv)
    if not args.run and not args.models:
        parser.error("give --run or --models")
    run = args.run or Path(args.models[0]).resolve().parent.parent
    config = read_config(run)
    chosen = args.modalities.split(",") if args.modalities else None
    specs = network_files(run, chosen, args.models)
    config = family_config(config, args, run, len(specs))
    args.weights = read_weights(run, [s[0] for s in specs]) if args.ensemble == "fitted" else None
    cases = find_cases(args.input)
    if not cases:
        parser.exit(2, f"error: {args.input}: no BraTS cases found\n")
    args.codings = case_codings(cases, args.coding, args.ped_coding)
    check_folder(args.output)
    kept = {files.id for files in cases
            if (args.output / f"{files.id}.nii.gz").exists() and not args.overwrite}
    record_codings(args.output, args.codings, kept)
    models = {}
    networks = [load_network(*spec, config, args.precision, models) for spec in specs]
    print(f"{len(cases)} cases; ensemble of {', '.join(n.name for n in networks)} "
          f"({args.precision}{', flip TTA' if args.tta else ''})")
    print(describe_codings(args.codings, args.output))

    from tqdm import tqdm

    failed, skipped = [], 0
    with tqdm(cases, desc="predict", unit="case") as bar:
        for files in bar:
            if (args.output / f"{files.id}.nii.gz").exists() and not args.overwrite:
                skipped += 1
                continue
            start = time.perf_counter()
            try:
                predict_case(files, networks, config, args, write_native)
            except CaseError as error:
                bar.write(f"error: {error}", file=sys.stderr)
                failed.append(files.id)
                continue
            bar.set_postfix(last=files.id, seconds=f"{time.perf_counter() - start:.1f}")
    written = len(cases) - skipped - len(failed)
    print(f"{written} cases written to {args.output}, {skipped} skipped (already there), "
          f"{len(failed)} failed" + (f": {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
