"""Preprocess BraTS cases into a cache the training loader reads fast.

    python preprocess.py MICCAI_BraTS2020_TrainingData cache/brats2020 --jobs 2

Per case (SPEC.md section 1): crop to 192x160x108 (centred on the volume, or on the brain's
bounding box with --crop brain), z-score each modality over its brain (non-zero) voxels with the
background left at 0, and turn the labels into the nested regions WT, TC, ET. Along an axis where
the crop size exceeds the volume the box pads with zeros instead (negative offsets):
configs/full_multimodal.yaml's 256x256x162 keeps the whole 240x240x155 volume.

The cache holds one folder per case with uncompressed .npy files (memory-mappable):
`<modality>.npy` float32 (H, W, D), `regions.npy` uint8 (H, W, D, 3) when the case has labels, and
`meta.json` (id, source files, original shape, affine, crop offsets, normalisation, tumour voxels
lost outside the crop). A case is written under a temporary name and renamed when complete, so an
interrupted run leaves no half-written case; cases already cached are skipped, so a rerun
continues. A bad case is reported in one line and the batch goes on; a cache that cannot be
written (full disk) stops the batch with one line.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from dataclasses import dataclass
import multiprocessing
from pathlib import Path

import numpy as np

from brats.cases import CaseError, CaseFiles, find_cases, in_threads, load_case
from util.config import ConfigError, DataConfig, load_config
from datasets.cache import CACHE_SETTINGS
from datasets.volumes import preprocess_case
from util.outputs import OutputError, atomic, check_folder, exits_cleanly, in_pieces


def write_entry(cache: Path, arrays: dict, meta: dict) -> Path:
    """Write one case folder atomically: into a temporary folder, then rename."""
    final = cache / meta["id"]
    with atomic(final) as temporary:
        temporary.mkdir()
        in_threads(lambda item: save_array(temporary / f"{item[0]}.npy", item[1]), list(arrays.items()))
        (temporary / "meta.json").write_text(json.dumps(meta, indent=1))
    return final


def save_array(path: Path, array: np.ndarray) -> None:
    """np.save in small write() calls (util.outputs.in_pieces: a full-size volume is 13 MB)."""
    with in_pieces(path) as handle:
        np.save(handle, array)


def is_cached(cache: Path, case_id: str) -> bool:
    return (cache / case_id / "meta.json").is_file()


@dataclass
class Result:
    id: str
    status: str  # "written", "skipped" or "failed"
    message: str = ""
    wt_lost_share: float | None = None


def process_case(files: CaseFiles, cache: Path, size: tuple, mode: str, factor: int = 1) -> Result:
    """Preprocess and cache one case; the Result says what happened.

    A bad case is a failed Result and the batch goes on; a cache that cannot be written (full
    disk, I/O error) raises OutputError and stops the batch, as every later case would fail too.
    """
    try:
        arrays, meta = preprocess_case(load_case(files), size, mode, factor)
        write_entry(cache, arrays, meta)
    except CaseError as error:
        return Result(files.id, "failed", str(error))
    except OutputError:
        raise
    except Exception as error:  # a bug: report it, keep the other cases going
        return Result(files.id, "failed", f"{files.id}: unexpected {type(error).__name__}: {error}")
    lost = meta["wt_voxels_lost"] / meta["wt_voxels"] if meta.get("wt_voxels") else None
    return Result(files.id, "written", wt_lost_share=lost)


def _process(job: tuple) -> Result:
    return process_case(*job)


def removed_leftovers(cache: Path) -> None:
    """Remove the temporary case folders (util.outputs.atomic: .tmp-PID-ID) of writers that are
    gone: the pool's workers, killed mid-case when a full disk stopped the batch."""
    for temporary in cache.glob(".tmp-*"):
        pid = int(temporary.name.split("-")[1])
        try:
            os.kill(pid, 0)  # a writer still running (another process): its folder is its own
        except ProcessLookupError:
            shutil.rmtree(temporary, ignore_errors=True)
        except PermissionError:  # another user's process, running
            pass


def check_cache_settings(cache: Path, size: tuple, mode: str, factor: int = 1) -> None:
    """Check that the cache folder can be written (OutputError if not), and that it holds one
    crop only: refuse to mix crop sizes or modes in one folder."""
    settings_file = check_folder(cache) / CACHE_SETTINGS
    wanted = {"crop_size": list(size), "crop_mode": mode, "downsample": factor}
    if settings_file.is_file():
        found = json.loads(settings_file.read_text())
        if found != wanted:
            raise SystemExit(f"error: {cache} was made with crop {found}; this run asks for "
                             f"{wanted}: use another output folder")
    else:
        with atomic(settings_file) as temporary:
            temporary.write_text(json.dumps(wanted))


def report(results: list) -> str:
    """The closing report: cases written, skipped and failed, WT share lost outside the crop."""
    by_status = {s: [r for r in results if r.status == s] for s in ("written", "skipped", "failed")}
    lines = [f"{len(by_status['written'])} cases written, {len(by_status['skipped'])} skipped "
             f"(already in the cache), {len(by_status['failed'])} failed"]
    lines += [f"  failed: {r.message}" for r in by_status["failed"]]
    shares = [r.wt_lost_share for r in by_status["written"] if r.wt_lost_share is not None]
    if shares:
        worst = max(by_status["written"], key=lambda r: r.wt_lost_share or 0)
        lines.append(f"WT voxels outside the crop: mean {100 * np.mean(shares):.2f}%, "
                     f"worst {100 * max(shares):.2f}% ({worst.id})")
    return "\n".join(lines)


def parse_size(text: str) -> tuple:
    try:
        size = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        size = ()
    if len(size) != 3 or min(size) < 1:
        raise argparse.ArgumentTypeError(f"expected HxWxD such as 192x160x108, got {text!r}")
    return size


@exits_cleanly(ConfigError, CaseError)
def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("input", type=Path, help="folder of BraTS cases (any layout)")
    parser.add_argument("output", type=Path, help="cache folder to write")
    parser.add_argument("--config", type=Path, help="take crop size and mode from this config")
    parser.add_argument("--crop-size", type=parse_size, help="HxWxD (default 192x160x108)")
    parser.add_argument("--crop", choices=("center", "brain"), help="crop placement (default center)")
    parser.add_argument("--downsample", type=int, help="block-average by this factor first (default 1)")
    parser.add_argument("--jobs", type=int, default=1, help="parallel processes (default 1)")
    args = parser.parse_args(argv)

    data = load_config(args.config).data if args.config else DataConfig()
    size = args.crop_size or tuple(data.crop_size)
    mode = args.crop or data.crop_mode
    factor = args.downsample or data.downsample
    cases = find_cases(args.input)
    if not cases:
        parser.exit(2, f"error: {args.input}: no BraTS cases found "
                       "(the layouts read: docs/editions-and-scoring.md)\n")
    check_cache_settings(args.output, size, mode, factor)

    from tqdm import tqdm
    results = [Result(c.id, "skipped") for c in cases if is_cached(args.output, c.id)]
    todo = [(c, args.output, size, mode, factor) for c in cases if not is_cached(args.output, c.id)]
    print(f"{len(cases)} cases in {args.input}; {len(todo)} to preprocess into {args.output} "
          f"(crop {'x'.join(map(str, size))}, {mode}" + (f", downsampled x{factor})" if factor > 1 else ")"))
    # forkserver: a fork of a process that runs threads (TensorFlow's, when a script that imported
    # it calls main) can deadlock in the child
    pool = (multiprocessing.get_context("forkserver").Pool(args.jobs)
            if args.jobs > 1 and len(todo) > 1 else None)
    run = pool.imap_unordered(_process, todo) if pool else map(_process, todo)
    try:
        with tqdm(total=len(todo), desc="preprocess", unit="case") as bar:
            for result in run:
                if result.status == "failed":
                    bar.write(f"error: {result.message}", file=sys.stderr)
                results.append(result)
                bar.update()
    except BaseException:  # a full disk stopped the batch: the workers killed, their halves removed
        if pool:
            pool.terminate()
            removed_leftovers(args.output)
        raise
    if pool:  # every case done: the idle workers end on their own
        pool.close()
        pool.join()
    print(report(results))
    return 1 if any(r.status == "failed" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
