"""What predict.py leaves for a portal: label maps on the input's grid, and codings.json beside them.

    write_labels(labels, case, folder / f"{case.id}.nii.gz")   # uint8, the input's affine and header
    codings = case_codings(cases, "auto", ped=None)            # case id -> its edition's coding
    record_codings(folder, codings, kept=set())                # folder/codings.json, for evaluate.py

Used by predict.py and by the peers of compare.py, so that every system's files are alike.
"""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

from brats.codings import CODINGS, STORED, CodingError, layout_coding, stored_codings
from util.config import ConfigError
from util.outputs import atomic


def write_labels(labels: np.ndarray, case, path: Path) -> None:
    """uint8 NIfTI on the input file's grid (its voxel order, affine and header), atomically."""
    header = case.header.copy()
    header.set_data_dtype(np.uint8)
    affine = case.affine if case.file_affine is None else case.file_affine
    image = nib.Nifti1Image(np.ascontiguousarray(case.to_file_grid(labels)), affine, header)
    image.header.set_slope_inter(1, 0)
    with atomic(path) as temporary:
        nib.save(image, str(temporary))


def case_codings(cases: list, stated: str, ped: str | None = None) -> dict:
    """case id -> the coding its file is written in: stated, else its edition's (codings.py; a
    BraTS-PED case's is `ped`, EditionError naming the case when that is None)."""
    return {files.id: stated if stated != "auto" else layout_coding(files.layout, files.id, ped)
            for files in cases}


def record_codings(output: Path, codings: dict, kept: set) -> None:
    """Write <output>/codings.json; a case kept from an earlier run keeps its recorded coding (and
    gets none if that run recorded none: evaluate.py then recognises its labels)."""
    try:
        previous = stored_codings(output)
    except CodingError as error:
        raise ConfigError(f"{error}; remove it or predict into another folder") from None
    cases = {cid: coding for cid, coding in previous.items() if cid in kept}
    cases.update({cid: coding for cid, coding in codings.items() if cid not in kept})
    cases.update({cid: coding for cid, coding in previous.items() if cid not in codings})
    with atomic(output / STORED) as temporary:
        temporary.write_text(json.dumps({"cases": dict(sorted(cases.items())),
                                         "codings": {c: CODINGS[c].described
                                                     for c in sorted(set(cases.values()))}},
                                        indent=1) + "\n")


def describe_codings(codings: dict, output: Path) -> str:
    """One line per coding used: how many cases, what the labels mean, an example file name."""
    lines = []
    for coding in dict.fromkeys(codings.values()):
        ids = [cid for cid, c in codings.items() if c == coding]
        lines.append(f"labels in the {coding} coding ({CODINGS[coding].described}) for "
                     f"{len(ids)} case{'s' * (len(ids) != 1)}, e.g. {ids[0]}.nii.gz")
    return "\n".join(lines + [f"codings recorded in {output / STORED}"])
