"""Label codings of the BraTS editions: which stored labels form WT, TC and ET, and which coding a
label map is in (SPEC.md sections 5b and 7).

    coding, note = recognise(values, candidates=("brats2023", "brats2020"), preferred="brats2023")
    masks = region_masks(labels, coding)     # {"WT": bool (X, Y, Z), "TC": ..., "ET": ...}
    written = recode(labels, "brats2020", layout_coding("brats2023", "BraTS-GLI-00001-000"))
    layout_coding("brats2023", "BraTS-PED-00001-000", ped="brats2024-ped")  # PED: stated

A label map is read in one coding only: stated by the user, given by the layout it came in, or
recognised from the label values it holds. Values that fit no candidate coding are an error naming
them; values that fit two codings that read them differently are read in the preferred one, with a
note saying so. `recode` writes a map in another coding (each label becomes the target label that
lies in the same regions: itself if it does, else the smallest), `layout_coding` names the coding of
a case's edition (a BraTS-PED case's must be stated: 2023 and 2024+ code it differently).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REGIONS = ("ET", "WT", "TC")  # the portal's column order


class CodingError(Exception):
    """A label map whose values do not fit the coding; str() is one line naming the values."""


class EditionError(CodingError):
    """A BraTS-PED case whose coding nothing states: str() is one line saying what to state."""


@dataclass(frozen=True)
class Coding:
    """The label values a map may hold and the labels that make up each region."""

    name: str
    labels: tuple
    regions: dict  # region -> labels
    described: str
    names: dict  # label -> what it marks (the edition's abbreviations)


CODINGS = {c.name: c for c in (
    Coding("brats2020", (0, 1, 2, 4), {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)},
           "ET = 4: 1 necrosis, 2 edema, 4 enhancing (BraTS 2017-2021, this project's predictions)",
           {1: "NCR/NET", 2: "ED", 4: "ET"}),
    Coding("brats2023", (0, 1, 2, 3), {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)},
           "ET = 3: 1 NETC, 2 SNFH, 3 ET (BraTS 2023+)", {1: "NETC", 2: "SNFH", 3: "ET"}),
    Coding("brats2024-post", (0, 1, 2, 3, 4), {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)},
           "ET = 3 and 4 resection cavity (RC), outside WT/TC/ET (BraTS 2024/2025 post-treatment "
           "GLI, MET)", {1: "NETC", 2: "SNFH", 3: "ET", 4: "RC"}),
    Coding("brats2024-ped", (0, 1, 2, 3, 4), {"WT": (1, 2, 3, 4), "TC": (1, 2, 3), "ET": (1,)},
           "ET = 1: 2 non-enhancing, 3 cyst, 4 edema (BraTS 2024/2025 PED)",
           {1: "ET", 2: "NET", 3: "CC", 4: "ED"}),
    Coding("brats2024-men-rt", (0, 1), {"WT": (1,), "TC": (1,), "ET": ()},
           "1 GTV, gross tumour volume (BraTS 2024/2025 MEN-RT)", {1: "GTV"}),
    Coding("msd", (0, 1, 2, 3), {"WT": (1, 2, 3), "TC": (2, 3), "ET": (3,)},
           "ET = 3: 1 edema, 2 non-enhancing, 3 enhancing (Medical Segmentation Decathlon Task01)",
           {1: "edema", 2: "non-enhancing", 3: "enhancing"}),
)}
RESECTION_CAVITY = 4  # BraTS 2024/2025 post-treatment label outside every tumour region

# The coding a case's edition expects, from the layout brats.py recognised. BraTS-PED cases are the
# exception: BraTS 2023 PED used the adult coding (1 NETC, 2 SNFH, 3 ET), 2024+ its own (ET = 1),
# the ids are the same in both and values 0-3 fit both, so their coding must be stated (SPEC 7).
LAYOUT_CODINGS = {"brats2018": "brats2020", "brats2020": "brats2020", "brats2021": "brats2020",
                  "brats2023": "brats2023", "msd": "msd"}
PED_CODINGS = ("brats2023", "brats2024-ped")  # BraTS 2023 PED, BraTS 2024/2025 PED
STORED = "codings.json"  # beside predictions: {"cases": {case id: coding}}, written by predict.py


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
    CodingError when the preferred reading holds no ET but another one does (a BraTS 2020 map,
    4 = ET, under the post-treatment coding, 4 = resection cavity): that must be stated, never
    scored silently without its enhancing tumour.
    """
    fitting = [c for c in candidates if set(values) <= set(CODINGS[c].labels)]
    if not fitting:
        raise CodingError(f"label values {_shown(values)} fit none of the codings "
                          + ", ".join(f"{c} {_shown(CODINGS[c].labels)}" for c in candidates))
    chosen = preferred if preferred in fitting else fitting[0]
    others = [c for c in fitting if _reading(c, values) != _reading(chosen, values)]
    scored = [c for c in others if any(r[0] for r in _reading(c, values))]
    if scored and not any(r[0] for r in _reading(chosen, values)):
        raise CodingError(f"labels {_shown(values)} hold no ET in the {chosen} coding but hold one "
                          f"in the {scored[0]} coding: state their coding")
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


def is_ped(case_id: str) -> bool:
    """Whether a case id is a BraTS 2023+ paediatric one (BraTS-PED-...)."""
    parts = case_id.split("-")
    return len(parts) > 2 and parts[0].lower() == "brats" and parts[1].upper() == "PED"


def ped_question(case_id: str, how: str) -> EditionError:
    """The one-line error of a BraTS-PED case whose edition nothing states (`how`: the options)."""
    return EditionError(
        f"{case_id}: BraTS-PED cases are coded 1 NETC, 2 SNFH, 3 ET in BraTS 2023 (brats2023) but "
        f"1 ET, 2 NET, 3 CC, 4 ED in BraTS 2024+ (brats2024-ped), the ids are the same and the "
        f"labels cannot tell them apart: state the edition's coding with {how}")


def layout_coding(layout: str, case_id: str, ped: str | None = None) -> str:
    """The label coding a case's edition expects: brats.py's layout; for a BraTS-PED case `ped`
    (one of PED_CODINGS), EditionError when it is None."""
    if layout == "brats2023" and is_ped(case_id):
        if ped is None:
            raise ped_question(case_id, "--ped-coding brats2023 or brats2024-ped")
        return ped
    return LAYOUT_CODINGS[layout]


def recoding(source: str, target: str) -> dict:
    """source label -> target label lying in the same regions (the label itself if it does, else
    the smallest such); labels the target cannot express are left out."""
    targets = CODINGS[target].labels
    mapping = {}
    for label in CODINGS[source].labels:
        reading = _reading(source, (label,))
        same = sorted((t != label, t) for t in targets if _reading(target, (t,)) == reading)
        same = [t for _, t in same]  # the label itself first: RC stays RC, not background
        if same:
            mapping[label] = same[0]
    return mapping


def recode(labels: np.ndarray, source: str, target: str) -> np.ndarray:
    """A label map of coding `source` written in coding `target` (uint8); CodingError when it holds
    a label the target cannot express (a BraTS 2020 edema in the MEN-RT coding)."""
    mapping = recoding(source, target)
    values = label_values(labels)
    check_fits(values, source)
    lost = [v for v in values if v not in mapping]
    if lost:
        raise CodingError(f"label values {_shown(lost)} of the {source} coding have no "
                          f"counterpart in the {target} coding {_shown(CODINGS[target].labels)}")
    lookup = np.zeros(256, np.uint8)
    for label, written in mapping.items():
        lookup[label] = written
    return lookup[labels.astype(np.uint8, copy=False)]


def stored_codings(folder) -> dict:
    """case id -> coding that predict.py recorded in `folder`/codings.json ({} when there is none);
    CodingError naming the file when it is unreadable or names an unknown coding."""
    path = Path(folder) / STORED
    if not path.is_file():
        return {}
    try:
        cases = json.loads(path.read_text())["cases"]
        unknown = sorted({c for c in cases.values() if c not in CODINGS})
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise CodingError(f"{path}: unreadable ({type(error).__name__}: {error})") from None
    if unknown:
        raise CodingError(f"{path}: unknown coding {unknown[0]} (known: {', '.join(CODINGS)})")
    return dict(cases)


def regions_to_labels(probabilities: np.ndarray, threshold: float = 0.5,
                      et_min_voxels: int = 0) -> np.ndarray:
    """Region probabilities (..., 3) WT, TC, ET -> uint8 BraTS labels, nesting enforced.

    With et_min_voxels > 0, an enhancing tumour smaller than that becomes necrosis (label 1),
    the post-processing top BraTS teams use against false-positive ET in LGG cases.
    """
    et = probabilities[..., 2] > threshold
    tc = (probabilities[..., 1] > threshold) | et
    wt = (probabilities[..., 0] > threshold) | tc
    labels = np.zeros(probabilities.shape[:-1], np.uint8)
    labels[wt] = 2
    labels[tc] = 1
    labels[et] = 4
    if et_min_voxels and 0 < np.count_nonzero(et) < et_min_voxels:
        labels[et] = 1
    return labels
