"""A patient's four raw series: which file is which, and whether each one can be used.

The four series of a clinical study (T1, T1 after contrast, T2, FLAIR) are separate 3D images on
grids of their own (any orientation, thick slices, int16 or scaled). Before hours of registration
each is read once and checked; a problem is one `PrepareError` line naming the file.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from brats.cases import CaseError, NII_SUFFIXES, read_nifti, strip_nii

# Command-line name -> BraTS 2023 file suffix (<id>-t1n.nii.gz ...); T1c is the centre modality.
SERIES = {"t1": "t1n", "t1c": "t1c", "t2": "t2w", "flair": "t2f"}
CENTRE = "t1c"
# How a series file's name ends in a patient folder (after _, - or .), per series.
NAME_ENDINGS = {
    "t1": ("t1", "t1n", "t1w"),
    "t1c": ("t1c", "t1ce", "t1gd", "t1post"),
    "t2": ("t2", "t2w"),
    "flair": ("flair", "fla", "t2f"),
}


class PrepareError(Exception):
    """A patient that cannot be prepared; str() is one line naming the file and the problem."""


def check_series(path: Path) -> dict:
    """Read one series and check it: a readable 3D image with finite, not constant voxels.

    Returns a summary (shape, voxel sizes, orientation, dtype) for the record.
    """
    path = Path(path)
    if not path.is_file():
        raise PrepareError(f"{path}: no such file")
    try:
        image, data = read_nifti(path, str(path.parent))
    except CaseError as error:
        raise PrepareError(f"{path}: cannot read: {str(error).split(': cannot read ', 1)[-1]}") from None
    shape = data.shape
    if len(shape) == 4 and shape[3] == 1:  # a singleton fourth axis is a 3D image
        data = data[..., 0]
    if data.ndim != 3 or min(data.shape) < 2:
        raise PrepareError(f"{path}: is a {data.ndim}D image of shape {shape}, expected one 3D "
                           f"volume")
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        raise PrepareError(f"{path}: has {int((~np.isfinite(data)).sum())} NaN/inf voxels")
    if data.min() == data.max():
        raise PrepareError(f"{path}: every voxel has the value {data.min():g}: no image")
    import nibabel as nib

    return {"file": str(path), "shape": list(data.shape), "dtype": str(image.get_data_dtype()),
            "voxel_mm": [round(float(z), 3) for z in image.header.get_zooms()[:3]],
            "orientation": "".join(nib.aff2axcodes(image.affine))}


def check_all(series: dict) -> dict:
    """series name -> path for all four, each checked; name -> summary. Missing: PrepareError."""
    missing = [name for name in SERIES if not series.get(name)]
    if missing:
        raise PrepareError(f"missing series: {', '.join('--' + m for m in missing)}")
    return {name: check_series(Path(series[name])) for name in SERIES}


def _series_of(name: str) -> str | None:
    """Which series a file name denotes by its ending (`..._t1c.nii.gz` -> t1c), or None."""
    stem = strip_nii(name).lower()
    for series, endings in NAME_ENDINGS.items():
        if any(re.search(rf"(^|[_\-.]){re.escape(e)}$", stem) for e in endings):
            return series
    return None


def find_series(folder: Path) -> dict:
    """series name -> path of the NIfTI files in one patient folder, named by their endings.

    Files with other endings (a brain mask, notes) are ignored; two files for one series or a
    series not found is a PrepareError naming the folder.
    """
    found: dict = {}
    for path in sorted(Path(folder).iterdir()):
        if not (path.is_file() and path.name.endswith(NII_SUFFIXES)):
            continue
        series = _series_of(path.name)
        if series is None:
            continue
        if series in found:
            raise PrepareError(f"{folder}: two files for {series}: {found[series].name} and "
                               f"{path.name}")
        found[series] = path
    missing = [s for s in SERIES if s not in found]
    if missing:
        raise PrepareError(f"{folder}: no file for {', '.join(missing)} (names must end in "
                           + "; ".join(f"{s}: {'/'.join(e)}" for s, e in NAME_ENDINGS.items()
                                       if s in missing) + ")")
    return found
