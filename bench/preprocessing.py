"""Benchmark preprocessing against the bare nibabel load of the same files, and the cache loader.

    python bench/preprocessing.py [--cases 6]

Prints per-case seconds for (a) loading the five NIfTI files with nibabel and nothing else and
(b) preprocess.process_case (load, checks, crop, z-score, regions, atomic cache write), measured
alternately in one run, and their ratio (target <= 1.3); then crops per second read from a warm
cache, by bare reads and by the training loader (train.make_dataset: pipeline.CaseBatches with
augmentation, two reader threads as in fit), target >= 50 on 2 cores.
"""
import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import preprocess  # noqa: E402
import synthetic  # noqa: E402
import train  # noqa: E402
from brats.cases import find_cases, in_threads  # noqa: E402
from datasets.cache import Cache  # noqa: E402


def bare_load(files) -> None:
    """nib.load and read the voxels of the five files, one after the other."""
    for path in [*files.images.values(), files.seg]:
        np.asanyarray(nib.load(str(path)).dataobj)


def bare_load_threaded(files) -> None:
    """The same reads spread over the threads preprocessing uses (zlib releases the GIL)."""
    in_threads(lambda path: np.asanyarray(nib.load(str(path)).dataobj),
               [*files.images.values(), files.seg])


def loader_rate(cache: Cache, reads: int) -> float:
    """Crops per second out of the training loader, batch 1, read by two threads as fit does."""
    batches = train.make_dataset(cache, cache.ids, ("flair",), 1, seed=0, shuffle=True, augment=True)
    indices = [i % len(batches) for i in range(reads)]
    start = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        for image, regions in pool.map(batches.__getitem__, indices):
            assert image.shape[1:4] == regions.shape[1:4]
    return reads / (time.perf_counter() - start)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=6)
    parser.add_argument("--reads", type=int, default=200, help="cache reads to time")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        raw, cache_dir = Path(tmp) / "raw", Path(tmp) / "cache"
        list(synthetic.write_dataset(raw, args.cases, seed=0, jobs=2))
        cases = find_cases(raw)
        preprocess.check_cache_settings(cache_dir, (192, 160, 108), "center")
        for files in cases:  # warm the page cache so both sides read from memory
            bare_load(files)
        load_times, threaded_times, prep_times = [], [], []
        for files in cases:
            start = time.perf_counter()
            bare_load(files)
            load_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            bare_load_threaded(files)
            threaded_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            result = preprocess.process_case(files, cache_dir, (192, 160, 108), "center")
            prep_times.append(time.perf_counter() - start)
            assert result.status == "written", result.message
        load, threaded, prep = (np.median(t) for t in (load_times, threaded_times, prep_times))
        print(f"{'':34s}{'s/case (median)':>16s}")
        print(f"{'bare nibabel load, serial':34s}{load:16.3f}")
        print(f"{'bare nibabel load, same threads':34s}{threaded:16.3f}")
        print(f"{'preprocess (load to cache)':34s}{prep:16.3f}")
        print(f"ratio preprocess / bare serial load: {prep / load:.2f}  (target <= 1.3)")
        print(f"ratio preprocess / bare threaded load: {prep / threaded:.2f}  "
              f"(the work added to reading)")

        cache = Cache(cache_dir)
        for case_id in cache.ids:  # warm
            np.array(cache.image(case_id, ("flair",))), cache.regions(case_id)
        start = time.perf_counter()
        for i in range(args.reads):
            case_id = cache.ids[i % len(cache.ids)]
            np.array(cache.image(case_id, ("flair",))), cache.regions(case_id)
        rate = args.reads / (time.perf_counter() - start)
        print(f"cache reads, warm: {rate:.0f} crops/s of 192x160x108 image + regions "
              f"(target >= 50)")
        print(f"training loader, warm: {loader_rate(cache, args.reads):.0f} crops/s of the same, "
              f"augmented, 2 threads (target >= 50)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
