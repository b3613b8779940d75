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
import signal
import sys
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path

import numpy as np

from brats import MODALITIES, Case, CaseError, CaseFiles, find_cases, in_threads, load_case
from config import ConfigError, DataConfig, load_config
from outputs import OutputError, atomic, check_folder, exits_cleanly

REGIONS = ("WT", "TC", "ET")
REGION_LABELS = {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}
CACHE_SETTINGS = "cache.json"


# ---- geometry ---------------------------------------------------------------------------------

def crop_offsets(shape: tuple, size: tuple, mode: str = "center",
                 brain: np.ndarray | None = None) -> tuple:
    """Start index of the crop box per axis (negative where the box is larger than the volume).

    center: (shape - size) // 2, so 240x240x155 -> 192x160x108 starts at (24, 40, 23). brain: the box centred on the bounding box of `brain` (a boolean
    mask), moved inside the volume where it would leave it.
    """
    if mode == "center" or brain is None or not brain.any():
        return tuple(int((n - s) // 2) for n, s in zip(shape, size))
    if mode != "brain":
        raise ValueError(f"unknown crop mode {mode!r}")
    offsets = []
    for axis, (n, s) in enumerate(zip(shape, size)):
        other = tuple(a for a in range(brain.ndim) if a != axis)
        present = np.flatnonzero(brain.any(axis=other))
        centre = (present[0] + present[-1] + 1) / 2
        start = int(round(centre - s / 2))
        offsets.append(int((n - s) // 2) if s >= n else min(max(start, 0), n - s))
    return tuple(offsets)


def _box(offsets: tuple, size: tuple, shape: tuple) -> tuple:
    """(slices into the volume, slices into the crop) of the overlap of box and volume."""
    source = tuple(slice(max(o, 0), min(o + s, n)) for o, s, n in zip(offsets, size, shape))
    target = tuple(slice(sl.start - o, sl.stop - o) for sl, o in zip(source, offsets))
    return source, target


def crop(volume: np.ndarray, offsets: tuple, size: tuple) -> np.ndarray:
    """volume[(X, Y, Z, ...)] -> (size..., ...), zero-padded where the box leaves the volume."""
    source, target = _box(offsets, size, volume.shape[:3])
    if all(sl.stop - sl.start == s for sl, s in zip(source, size)):
        return volume[source]
    out = np.zeros(tuple(size) + volume.shape[3:], volume.dtype)
    out[target] = volume[source]
    return out


def uncrop(cropped: np.ndarray, offsets: tuple, shape: tuple) -> np.ndarray:
    """Inverse of crop: put (size..., ...) back into a zero volume of `shape` (X, Y, Z)."""
    size = cropped.shape[:3]
    source, target = _box(offsets, size, shape)
    out = np.zeros(tuple(shape) + cropped.shape[3:], cropped.dtype)
    out[source] = cropped[target]
    return out


def block_mean(volume: np.ndarray, factor: int) -> np.ndarray:
    """float32 mean over factor^3 blocks of (X, Y, Z, ...), zero-padding X, Y, Z up to a multiple."""
    pad = [(0, -n % factor) for n in volume.shape[:3]] + [(0, 0)] * (volume.ndim - 3)
    padded = np.pad(volume.astype(np.float32, copy=False), pad)
    x, y, z = (n // factor for n in padded.shape[:3])
    blocks = padded.reshape(x, factor, y, factor, z, factor, *padded.shape[3:])
    return blocks.mean(axis=(1, 3, 5), dtype=np.float32)


def downsampled_shape(shape: tuple, factor: int) -> tuple:
    return tuple(-(-n // factor) for n in shape[:3])


def upsample(volume: np.ndarray, factor: int, shape: tuple) -> np.ndarray:
    """Inverse of block_mean for probabilities: linear interpolation back to `shape` (X, Y, Z)."""
    if factor == 1:
        return volume
    from scipy import ndimage

    zoom = (factor,) * 3 + (1,) * (volume.ndim - 3)
    full = ndimage.zoom(volume, zoom, order=1, mode="nearest", grid_mode=True)
    return full[: shape[0], : shape[1], : shape[2]]


# ---- intensities and labels -------------------------------------------------------------------

def brain_stats(image: np.ndarray, what: str) -> tuple:
    """(mean, std) over the non-zero voxels of an image (Myronenko 2018, SPEC section 1).

    Zeros add nothing to the sums, so one pass of count, sum and sum of squares (in 64 bits) gives
    both without copying the brain voxels out.
    """
    flat = image.ravel(order="K")
    count = np.count_nonzero(flat)
    wide = np.int64 if flat.dtype.kind in "iu" else np.float64
    total = float(flat.sum(dtype=wide))
    squares = float(np.einsum("i,i->", flat, flat, dtype=wide))
    mean = total / max(count, 1)
    variance = squares / max(count, 1) - mean * mean
    if count < 2 or variance <= 1e-12 * max(mean * mean, 1.0):
        raise CaseError(f"{what}: image is constant over the brain, cannot normalise")
    return mean, float(np.sqrt(variance))


def normalise(image: np.ndarray, mean: float, std: float) -> np.ndarray:
    """float32 z-scores on the brain (non-zero voxels), 0 on the background, C-ordered."""
    image = np.ascontiguousarray(image)
    out = image.astype(np.float32)
    out -= np.float32(mean)
    out *= np.float32(1 / std)
    out[image == 0] = 0
    return out


def label_regions(seg: np.ndarray) -> np.ndarray:
    """BraTS labels (X, Y, Z) -> nested regions uint8 (X, Y, Z, 3) in the order WT, TC, ET."""
    regions = np.zeros(seg.shape + (len(REGIONS),), np.uint8)
    for channel, region in enumerate(REGIONS):
        for label in REGION_LABELS[region]:
            regions[..., channel] |= seg == label
    return regions


# ---- one case ---------------------------------------------------------------------------------

def preprocess_case(case: Case, size: tuple, mode: str = "center", factor: int = 1) -> tuple:
    """(arrays, meta): cropped z-scored images, regions when labelled, and what undoes the crop.

    With factor > 1 every image (and each region mask) is first block-averaged by that factor;
    regions are kept where at least half of a block is inside.
    """
    stored = case.stored if factor == 1 else {m: block_mean(a, factor) for m, a in case.stored.items()}
    grid = next(iter(stored.values())).shape
    brain = None
    if mode == "brain":
        brain = np.zeros(grid, bool)
        for image in stored.values():
            brain |= image != 0
    offsets = crop_offsets(grid, size, mode, brain)

    def prepare(modality: str) -> tuple:
        image = stored[modality]
        stats = brain_stats(image, f"{case.id}: {modality}")
        return stats, normalise(crop(image, offsets, size), *stats)

    prepared = dict(zip(MODALITIES, in_threads(prepare, list(MODALITIES))))
    arrays = {m: p[1] for m, p in prepared.items()}
    stats = {m: p[0] for m, p in prepared.items()}
    meta = {
        "id": case.id,
        "layout": case.layout,
        "source_files": {m: str(p) for m, p in case.files.images.items()} if case.files else {},
        "seg_file": str(case.files.seg) if case.files and case.files.seg else None,
        "original_shape": list(case.shape),
        "affine": np.asarray(case.affine).tolist(),
        "downsample": factor,
        "grid_shape": list(grid),
        "crop_size": list(size),
        "crop_mode": mode,
        "crop_offsets": list(offsets),
        "normalisation": {m: {"mean": s[0], "std": s[1]} for m, s in stats.items()},
        "has_labels": case.seg is not None,
    }
    if case.seg is not None and factor == 1:
        seg_crop = crop(case.seg, offsets, size)
        arrays["regions"] = label_regions(np.ascontiguousarray(seg_crop))
        total, kept = int(np.count_nonzero(case.seg)), int(np.count_nonzero(seg_crop))
    elif case.seg is not None:
        regions = (block_mean(label_regions(case.seg), factor) >= 0.5).astype(np.uint8)
        arrays["regions"] = np.ascontiguousarray(crop(regions, offsets, size))
        total = int(np.count_nonzero(regions[..., 0]))
        kept = int(np.count_nonzero(arrays["regions"][..., 0]))
    if case.seg is not None:
        meta.update(wt_voxels=total, wt_voxels_lost=total - kept,
                    label_counts={str(v): int(np.count_nonzero(case.seg == v)) for v in (1, 2, 4)})
    return arrays, meta


def write_entry(cache: Path, arrays: dict, meta: dict) -> Path:
    """Write one case folder atomically: into a temporary folder, then rename."""
    final = cache / meta["id"]
    with atomic(final) as temporary:
        temporary.mkdir()
        in_threads(lambda item: np.save(temporary / f"{item[0]}.npy", item[1]), list(arrays.items()))
        (temporary / "meta.json").write_text(json.dumps(meta, indent=1))
    return final


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


def _exit_on_sigterm() -> None:
    """In a pool worker: Pool.terminate (after a full disk) raises SystemExit instead of killing
    the worker outright, so that the case it was writing removes its temporary folder."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(1))


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
        parser.exit(2, f"error: {args.input}: no BraTS cases found (see SPEC layouts in README)\n")
    check_cache_settings(args.output, size, mode, factor)

    from tqdm import tqdm
    results = [Result(c.id, "skipped") for c in cases if is_cached(args.output, c.id)]
    todo = [(c, args.output, size, mode, factor) for c in cases if not is_cached(args.output, c.id)]
    print(f"{len(cases)} cases in {args.input}; {len(todo)} to preprocess into {args.output} "
          f"(crop {'x'.join(map(str, size))}, {mode}" + (f", downsampled x{factor})" if factor > 1 else ")"))
    pool = Pool(args.jobs, _exit_on_sigterm) if args.jobs > 1 and len(todo) > 1 else None
    run = pool.imap_unordered(_process, todo) if pool else map(_process, todo)
    try:
        with tqdm(total=len(todo), desc="preprocess", unit="case") as bar:
            for result in run:
                if result.status == "failed":
                    bar.write(f"error: {result.message}", file=sys.stderr)
                results.append(result)
                bar.update()
    finally:  # also when a full disk stops the batch
        if pool:
            pool.terminate()
    print(report(results))
    return 1 if any(r.status == "failed" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
