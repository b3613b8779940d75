"""Label codings of the BraTS editions: which stored labels form WT, TC and ET, and which coding a
label map is in (SPEC.md sections 5b and 7).

    coding, note = recognise(values, candidates=("brats2023", "brats2020"), preferred="brats2023")
    masks = region_masks(labels, coding)     # {"WT": bool (X, Y, Z), "TC": ..., "ET": ...}

A label map is read in one coding only: stated by the user, given by the layout it came in, or
recognised from the label values it holds. Values that fit no candidate coding are an error naming
them; values that fit two codings that read them differently are read in the preferred one, with a
note saying so.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

REGIONS = ("ET", "WT", "TC")  # the portal's column order


class CodingError(Exception):
    """A label map whose values do not fit the coding; str() is one line naming the values."""


@dataclass(frozen=True)
class Coding:
    """The label values a map may hold and the labels that make up each region."""

    name: str
    labels: tuple
    regions: dict  # region -> labels
    described: str


CODINGS = {c.name: c for c in (
    Coding("brats2020", (0, 1, 2, 4), {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)},
           "ET = 4: 1 necrosis, 2 edema, 4 enhancing (BraTS 2017-2021, this project's predictions)"),
    Coding("brats2023", (0, 1, 2, 3), {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)},
           "ET = 3: 1 NETC, 2 SNFH, 3 ET (BraTS 2023+)"),
    Coding("brats2024-post", (0, 1, 2, 3, 4), {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)},
           "ET = 3 and 4 resection cavity, outside WT/TC/ET (BraTS 2024 post-treatment GLI, MET)"),
    Coding("brats2024-ped", (0, 1, 2, 3, 4), {"WT": (1, 2, 3, 4), "TC": (1, 2, 3), "ET": (1,)},
           "ET = 1: 2 non-enhancing, 3 cyst, 4 edema (BraTS 2024 PED)"),
)}


def label_values(labels: np.ndarray) -> tuple:
    """The distinct values of an integer label map, in increasing order (bincount when they fit
    in a byte: a 240x240x155 map in ~20 ms instead of np.unique's sort)."""
    if labels.size and labels.min() >= 0 and labels.max() < 256:
        return tuple(np.flatnonzero(np.bincount(labels.astype(np.uint8, copy=False).ravel())).tolist())
    return tuple(np.unique(labels).tolist())


def _reading(coding: str, values: tuple) -> tuple:
    """Which regions each value belongs to in a coding: equal readings score alike."""
    regions = CODINGS[coding].regions
    return tuple(tuple(v in regions[r] for r in REGIONS) for v in values)


def _shown(values) -> str:
    return "{" + ", ".join(f"{v:g}" for v in values) + "}"


def check_fits(values: tuple, coding: str) -> None:
    """CodingError naming the values that a stated coding does not hold."""
    extra = [v for v in values if v not in CODINGS[coding].labels]
    if extra:
        raise CodingError(f"label values {_shown(extra)} are not in the {coding} coding "
                          f"{_shown(CODINGS[coding].labels)}")


def recognise(values: tuple, candidates: tuple, preferred: str) -> tuple:
    """(coding, note): the candidate coding that holds every value, preferring `preferred`.

    note is "" unless another fitting candidate reads the values differently (then it names it).
    """
    fitting = [c for c in candidates if set(values) <= set(CODINGS[c].labels)]
    if not fitting:
        raise CodingError(f"label values {_shown(values)} fit none of the codings "
                          + ", ".join(f"{c} {_shown(CODINGS[c].labels)}" for c in candidates))
    chosen = preferred if preferred in fitting else fitting[0]
    others = [c for c in fitting if _reading(c, values) != _reading(chosen, values)]
    note = (f"labels {_shown(values)} also fit the {others[0]} coding; read as {chosen} "
            f"(state the coding to choose)") if others else ""
    return chosen, note


def region_masks(labels: np.ndarray, coding: str) -> dict:
    """{"ET", "WT", "TC"} -> bool masks of an integer label map whose values fit the coding."""
    bits = np.zeros(256, np.uint8)
    for bit, region in enumerate(REGIONS):
        bits[list(CODINGS[coding].regions[region])] |= 1 << bit
    codes = bits[labels.astype(np.uint8, copy=False)]
    return {region: (codes & (1 << bit)) != 0 for bit, region in enumerate(REGIONS)}
