"""Labels from BraTS space back onto the patient's own T1c grid, and a figure of them there.

A case made by prepare.py keeps, in <case>/native/, the input T1c and brainles-preprocessing's
transforms. The T1c's chain is one ANTs rigid transform (T1c -> SRI24); inverting it with
brainles' own `Transform` and ANTs' genericLabel interpolation puts a label map (240x240x155)
on the T1c's grid: the same shape and affine as the input file.

    if has_native(case_dir):
        labels_native, image = to_native(labels, case_dir)     # (X, Y, Z) uint8, NIfTI
        save(native_overlay(t1c, labels_native, zooms), png)
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

from brats.cases import CaseError, read_nifti
from brats.codings import recode
from util.figures import save
from util.outputs import atomic

CENTRE = "t1c"


def native_folder(case_dir: Path) -> Path:
    return Path(case_dir) / "native"


def has_native(case_dir: Path) -> bool:
    """Whether a case folder holds what the way back needs (made by prepare.py)."""
    native = native_folder(case_dir)
    return (native / "t1c.nii.gz").is_file() and (native / "transforms" / CENTRE).is_dir()


def to_native(labels: np.ndarray, case_dir: Path, atlas_affine: np.ndarray) -> tuple:
    """(labels on the native T1c grid (X, Y, Z) uint8, their NIfTI image) from BraTS-space labels.

    labels: (240, 240, 155) integer labels on the prepared case's grid, whose affine is
    atlas_affine. Nearest-label resampling (genericLabel) keeps every value a label.
    """
    from preparing.brainles import quiet_brainles

    quiet_brainles()
    from brainles_preprocessing.registration import ANTsRegistrator
    from brainles_preprocessing.transform import Transform
    from loguru import logger

    native = native_folder(case_dir)
    reference, _ = read_nifti(native / "t1c.nii.gz", Path(case_dir).name)
    logger.disable("brainles_preprocessing")
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        moving = work / "labels.nii.gz"
        nib.save(nib.Nifti1Image(labels.astype(np.float32), atlas_affine), str(moving))
        try:
            Transform(native / "transforms", ANTsRegistrator()).apply(
                CENTRE, native / "t1c.nii.gz", moving, work / "native.nii.gz", work / "log.txt",
                interpolator="genericLabel", inverse=True)
        except (AssertionError, RuntimeError, ValueError) as error:
            raise CaseError(f"{Path(case_dir).name}: cannot map the labels back to the T1c: "
                            f"{str(error).splitlines()[0] if str(error) else type(error).__name__}"
                            ) from None
        finally:
            logger.enable("brainles_preprocessing")
        mapped = np.rint(np.asanyarray(nib.load(work / "native.nii.gz").dataobj)).astype(np.uint8)
    mapped = mapped.reshape(reference.shape[:3])
    header = reference.header.copy()
    header.set_data_dtype(np.uint8)
    header.set_data_shape(mapped.shape)
    image = nib.Nifti1Image(mapped, reference.affine, header)
    image.header.set_slope_inter(1, 0)
    return mapped, image


def largest_component_centre(labels: np.ndarray) -> tuple | None:
    """Voxel at the centre of mass of the largest connected tumour component, or None."""
    from scipy import ndimage

    components, count = ndimage.label(labels > 0)
    if count == 0:
        return None
    sizes = np.bincount(components.ravel())[1:]
    largest = components == (int(np.argmax(sizes)) + 1)
    return tuple(int(round(v)) for v in ndimage.center_of_mass(largest))


def native_overlay(image: nib.Nifti1Image, labels: np.ndarray, title: str = ""):
    """Axial, coronal and sagittal slices of the native T1c through the largest tumour component,
    labels in the paper's colours, shown in RAS orientation at the true voxel aspect."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from util.figures import LABEL_COLOURS, LABEL_NAMES, label_overlay

    canonical = nib.as_closest_canonical(image)
    order = nib.orientations.io_orientation(image.affine)
    volume = np.asanyarray(canonical.dataobj, dtype=np.float32).reshape(canonical.shape[:3])
    oriented = nib.orientations.apply_orientation(labels, order)
    zooms = canonical.header.get_zooms()[:3]
    centre = largest_component_centre(oriented)
    found = centre is not None
    centre = centre if found else tuple(n // 2 for n in volume.shape)
    low, high = np.percentile(volume[volume > volume.min()], (1, 99.5)) if volume.any() else (0, 1)
    figure, axes = plt.subplots(1, 3, figsize=(12, 4.4))
    views = ((2, "axial", (zooms[1], zooms[0])), (1, "coronal", (zooms[2], zooms[0])),
             (0, "sagittal", (zooms[2], zooms[1])))
    for ax, (axis, view, (row_mm, column_mm)) in zip(axes, views):
        index = centre[axis]
        ax.imshow(np.rot90(np.take(volume, index, axis=axis)), cmap="gray", vmin=low, vmax=high,
                  aspect=row_mm / column_mm)
        ax.imshow(np.rot90(label_overlay(np.take(oriented, index, axis=axis))),
                  aspect=row_mm / column_mm)
        ax.set_title(f"{view}, slice {index}", fontsize=9)
        ax.axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in LABEL_COLOURS.values()]
    figure.legend(handles, LABEL_NAMES.values(), loc="lower center", ncol=3, fontsize=8)
    figure.suptitle(title + ("" if found else " (no tumour found: slices through the centre)"))
    return figure


def write_native(case, labels: np.ndarray, coding: str, output: Path) -> None:
    """For a case made by prepare.py (its folder holds native/): the labels (H, W, D, BraTS 2020
    coding, BraTS space) on the patient's own T1c grid as `<id>_native.nii.gz` in the case's
    coding, and `<id>_native.png`, their overlay on the native T1c. Other cases: nothing."""
    case_dir = case.files.images["t1ce"].parent
    if not has_native(case_dir):
        return
    native, image = to_native(labels, case_dir, case.affine)
    coded = nib.Nifti1Image(recode(native, "brats2020", coding), image.affine, image.header)
    with atomic(output / f"{case.id}_native.nii.gz") as temporary:
        nib.save(coded, str(temporary))
    t1c = nib.load(native_folder(case_dir) / "t1c.nii.gz")
    save(native_overlay(t1c, native, f"{case.id}: labels on the native T1c"),
         output / f"{case.id}_native.png")
