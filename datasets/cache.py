"""Read the preprocess cache: case ids, metadata, images and region masks, memory-mapped.

    cache = Cache("cache/brats2020")
    image = cache.image(cache.ids[0], ("flair",))   # float32 (H, W, D, 1)
    regions = cache.regions(cache.ids[0])           # uint8 (H, W, D, 3): WT, TC, ET
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

CACHE_SETTINGS = "cache.json"  # the crop a cache folder holds (preprocess.check_cache_settings)


class CacheError(ValueError):
    """A cache that cannot be used for the requested run; str() is one line."""


class Cache:
    """A folder written by preprocess.py: one sub-folder per case."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        settings = self.root / CACHE_SETTINGS
        if not settings.is_file():
            raise CacheError(f"{self.root}: not a preprocess cache (no {CACHE_SETTINGS}); "
                             f"run preprocess.py first")
        self.settings = json.loads(settings.read_text())
        self.crop_size = tuple(self.settings["crop_size"])
        self.ids = sorted(p.parent.name for p in self.root.glob("*/meta.json")
                          if not p.parent.name.startswith("."))
        if not self.ids:
            raise CacheError(f"{self.root}: the cache holds no cases")

    def meta(self, case_id: str) -> dict:
        return json.loads((self.root / case_id / "meta.json").read_text())

    def labelled_ids(self) -> list:
        return [i for i in self.ids if (self.root / i / "regions.npy").is_file()]

    def _array(self, case_id: str, name: str) -> np.ndarray:
        path = self.root / case_id / f"{name}.npy"
        if not path.is_file():
            raise CacheError(f"{self.root}: case {case_id} has no {name}.npy")
        return np.load(path, mmap_mode="r")

    def image(self, case_id: str, modalities: tuple) -> np.ndarray:
        """float32 (H, W, D, len(modalities)), read from the memory-mapped files."""
        return np.stack([self._array(case_id, m) for m in modalities], axis=-1)

    def regions(self, case_id: str) -> np.ndarray:
        """uint8 (H, W, D, 3): WT, TC, ET."""
        return np.asarray(self._array(case_id, "regions"))

    def check(self, modalities: tuple, crop_size: tuple) -> None:
        """Raise CacheError unless every case has these modalities at this crop size."""
        if tuple(crop_size) != self.crop_size:
            raise CacheError(f"{self.root}: cache crop {'x'.join(map(str, self.crop_size))} "
                             f"differs from the config's {'x'.join(map(str, crop_size))}")
        for case_id in self.ids:
            for name in modalities:
                shape = self._array(case_id, name).shape
                if shape != self.crop_size:
                    raise CacheError(f"{self.root}: {case_id}/{name}.npy has shape {shape}, "
                                     f"expected {self.crop_size}")
