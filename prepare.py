"""Prepare a patient's raw MRI series into a BraTS case: SRI24 space, 1 mm, skull stripped.

    python prepare.py --t1 T1.nii.gz --t1c T1C.nii.gz --t2 T2.nii.gz --flair FLAIR.nii.gz \\
        --id TCGA-FG-6692 --out prepared
    python prepare.py --input patients --out prepared      # one sub-folder per patient

Through BrainLesion's brainles-preprocessing (the BraTS organisers' pipeline; docs/real-scans.md):
the series co-registered to the T1c, the T1c registered to the SRI24 atlas in BraTS space (ANTs,
rigid), HD-BET brain extraction, fully offline. Writes <out>/<id>/<id>-t1n|t1c|t2w|t2f.nii.gz
(240x240x155, BraTS 2023 names, which predict.py reads) and <out>/<id>/native/ (the input T1c and
the transforms: predict.py then also writes the labels on the patient's own T1c grid).

In folder mode each sub-folder of --input is a patient (its name the id) whose files end in
_t1, _t1c (or _t1ce, _t1gd), _t2 and _flair (or _fla, _t2f). On 2 CPU cores a patient takes
about 2 minutes with HD-BET's fast mode (one network, no mirroring; the default on the CPU), 1
without the atlas correction, and 10.5 with --hd-bet accurate (five networks, each mirrored eight
ways; the default with --device cuda). A patient already prepared is skipped; a bad one is
reported in one line and nothing of it is left in --out.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from preparing.series import PrepareError, check_all, find_series
from util.outputs import check_folder, exits_cleanly


def patients(args) -> list:
    """(case id, series name -> path) for each patient asked for; errors of a folder included."""
    if args.input is None:
        return [(args.id, {"t1": args.t1, "t1c": args.t1c, "t2": args.t2, "flair": args.flair})]
    if not args.input.is_dir():
        raise PrepareError(f"{args.input}: not a folder")
    found = []
    for folder in sorted(p for p in args.input.iterdir() if p.is_dir()):
        try:
            found.append((folder.name, find_series(folder)))
        except PrepareError as error:
            found.append((folder.name, error))
    if not found:
        raise PrepareError(f"{args.input}: no patient folders in it")
    return found


def prepare_one(case_id: str, series, args) -> str:
    """Check and prepare one patient; returns 'written' or 'skipped', PrepareError if bad."""
    if isinstance(series, PrepareError):
        raise series
    if (args.out / case_id).is_dir() and not args.overwrite:
        return "skipped"
    summaries = check_all(series)
    from preparing.brainles import prepare_patient

    final = args.out / case_id
    kept = final.with_name(f".old-{case_id}")
    if final.is_dir():  # --overwrite: the old case stays until the new one is complete
        final.rename(kept)
    try:
        prepare_patient(series, case_id, args.out, summaries, args.hd_bet, args.tta, args.device,
                        args.atlas_correction)
    except BaseException:
        if kept.is_dir():
            kept.rename(final)
        raise
    if kept.is_dir():
        import shutil
        shutil.rmtree(kept)
    return "written"


@exits_cleanly(PrepareError)
def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    for series, what in (("t1", "T1"), ("t1c", "T1 after contrast (the centre series)"),
                         ("t2", "T2"), ("flair", "FLAIR")):
        parser.add_argument(f"--{series}", type=Path, help=f"{what} series (NIfTI)")
    parser.add_argument("--id", help="case id: the folder and file names under --out")
    parser.add_argument("--input", type=Path, help="folder of patient folders (instead of --t1 ...)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the case folders")
    parser.add_argument("--hd-bet", default="auto", choices=("auto", "accurate", "fast"),
                        help="HD-BET: accurate (five networks, mirrored), fast (one, not "
                             "mirrored), or auto (default): accurate with --device cuda, fast on "
                             "the CPU (docs/real-scans.md: 124 s against 636 s a patient on 2 "
                             "cores, brain masks alike to Dice 0.992)")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                        help="HD-BET's mirroring (default: on in accurate mode, off in fast)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                        help="HD-BET on the CPU (default) or a CUDA GPU")
    parser.add_argument("--atlas-correction", action=argparse.BooleanOptionalAction, default=True,
                        help="brainles' atlas correction: T1, T2 and FLAIR registered to the T1c "
                             "once more in atlas space (default on, as brainles; off saves three of "
                             "seven registrations, docs/real-scans.md)")
    parser.add_argument("--overwrite", action="store_true", help="redo patients already prepared")
    args = parser.parse_args(argv)
    if args.input is None and not args.id:
        parser.error("give --id with --t1 --t1c --t2 --flair, or --input")
    if args.hd_bet == "auto":
        args.hd_bet = "accurate" if args.device == "cuda" else "fast"
    if args.tta is None:
        args.tta = args.hd_bet == "accurate"
    if args.device == "cuda":
        import torch
        if not torch.cuda.is_available():
            raise PrepareError("--device cuda: no CUDA GPU visible to torch")
    todo = patients(args)
    check_folder(args.out)
    print(f"{len(todo)} patient(s) into {args.out} (HD-BET {args.hd_bet}"
          f"{', mirrored' if args.tta else ''}, {args.device})", flush=True)
    failed = []
    for number, (case_id, series) in enumerate(todo, 1):
        print(f"[{number}/{len(todo)}] {case_id}", flush=True)
        start = time.perf_counter()
        try:
            status = prepare_one(case_id, series, args)
        except PrepareError as error:
            if args.input is None:  # one patient: its error ends the command
                raise
            print(f"error: {error}", file=sys.stderr, flush=True)
            failed.append(case_id)
            continue
        print(f"  {status} {args.out / case_id} ({time.perf_counter() - start:.0f} s)", flush=True)
    print(f"{len(todo) - len(failed)} prepared or already there, {len(failed)} failed"
          + (f": {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
