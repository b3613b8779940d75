"""Find and read BraTS cases in every layout researchers hold on disk (SPEC.md section 5b).

    cases = find_cases("MICCAI_BraTS2020_TrainingData")
    case = load_case(cases[0])        # .id, .images[modality], .seg, .affine, .header

Every reader returns images on the original grid as float32 and labels in the BraTS 2020 coding
(0 background, 1 necrosis / non-enhancing core, 2 edema, 4 enhancing tumour), whatever the layout
stored: the label conversion is explicit per layout, because a wrong mapping silently trains the
wrong regions. Problems with a case raise `CaseError`, a one-line message naming the case and file.

Real scans read right: scaled images (scl_slope) are read scaled; a constant non-zero background
(the value of all eight corners, such as -1000 or 100) becomes 0, the background every later step
expects; an image stored in another orientation than BraTS's (L, P, S voxel axes) is held in
BraTS's, and `Case.to_file_grid` turns labels back onto the file's grid.
"""
from __future__ import annotations

import functools
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

MODALITIES = ("flair", "t1", "t1ce", "t2")
BRATS_ORIENTATION = ("L", "P", "S")  # the voxel axes of every BraTS release (affine diag(-1, -1, 1))
BRATS_LABELS = (0, 1, 2, 4)
NII_SUFFIXES = (".nii.gz", ".nii")


@dataclass(frozen=True)
class Layout:
    """How one BraTS release names its files and codes its labels.

    suffixes: modality -> file-name suffix after the case id; label_map: stored label -> BraTS 2020
    label (every stored value must appear, anything else is an error).
    """

    name: str
    separator: str
    suffixes: dict
    seg_suffix: str
    label_map: dict


_BRATS_SUFFIXES = {m: m for m in MODALITIES}
LAYOUTS = {
    "brats2018": Layout("brats2018", "_", _BRATS_SUFFIXES, "seg", {0: 0, 1: 1, 2: 2, 4: 4}),
    "brats2020": Layout("brats2020", "_", _BRATS_SUFFIXES, "seg", {0: 0, 1: 1, 2: 2, 4: 4}),
    "brats2021": Layout("brats2021", "_", _BRATS_SUFFIXES, "seg", {0: 0, 1: 1, 2: 2, 4: 4}),
    "brats2023": Layout("brats2023", "-", {"flair": "t2f", "t1": "t1n", "t1ce": "t1c", "t2": "t2w"},
                        "seg", {0: 0, 1: 1, 2: 2, 3: 4}),
    # Medical Segmentation Decathlon Task01: one 4D image per case, channels FLAIR, T1w, T1gd, T2w.
    "msd": Layout("msd", "", {}, "", {0: 0, 1: 2, 2: 1, 3: 4}),
}
MSD_CHANNELS = ("flair", "t1", "t1ce", "t2")


class CaseError(Exception):
    """A case that cannot be used; str() is one line naming the case and the problem."""


@dataclass
class CaseFiles:
    """Where one case's files are. For MSD every modality points at the same 4D image."""

    id: str
    layout: str
    images: dict  # modality -> Path or None when missing
    seg: Path | None = None

    @property
    def has_labels(self) -> bool:
        return self.seg is not None


@dataclass
class Case:
    """One case loaded on its original grid (BraTS: 240x240x155) in BraTS orientation.

    `stored` keeps each image as the file holds it (often int16), so that preprocessing converts
    only the cropped part; `images` gives the float32 arrays (X, Y, Z), converted on first use.
    `affine` is the arrays' (the file's, reoriented when the file's axes are not L, P, S);
    `file_affine` and `header` the file's, which to_file_grid and write_labels return to.
    """

    id: str
    layout: str
    stored: dict  # modality -> array as stored in the file (X, Y, Z), in BraTS orientation
    seg: np.ndarray | None  # uint8 (X, Y, Z) in BraTS 2020 coding, or None
    affine: np.ndarray
    header: nib.Nifti1Header
    files: CaseFiles = field(repr=False, default=None)
    file_affine: np.ndarray | None = None  # None: the file is in BraTS orientation already

    def to_file_grid(self, array: np.ndarray) -> np.ndarray:
        """(X, Y, Z, ...) in BraTS orientation -> the file's own voxel order."""
        if self.file_affine is None:
            return array
        return nib.orientations.apply_orientation(array, _reorientation(self.affine,
                                                                        self.file_affine))

    @functools.cached_property
    def images(self) -> dict:
        """modality -> float32 array (X, Y, Z)."""
        return {m: np.asarray(a, dtype=np.float32) for m, a in self.stored.items()}

    @property
    def shape(self) -> tuple:
        return next(iter(self.stored.values())).shape


def strip_nii(name: str) -> str:
    for suffix in NII_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _nii_files(folder: Path) -> dict:
    """Map stem (name without .nii/.nii.gz) -> path for the NIfTI files directly in folder."""
    return {strip_nii(p.name): p for p in sorted(folder.iterdir())
            if p.is_file() and p.name.endswith(NII_SUFFIXES)}


def _release(case_id: str, separator: str) -> str:
    """Which release named a case folder: BraTS 2017-2021 share names but for the id prefix."""
    if separator == "-":
        return "brats2023"
    if case_id.startswith("BraTS20_"):
        return "brats2020"
    return "brats2021" if case_id.startswith("BraTS2021_") else "brats2018"


def _case_in_folder(folder: Path) -> CaseFiles | None:
    """The case stored in a BraTS case folder (files named <folder>_<modality>), if any."""
    files = _nii_files(folder)
    case_id = folder.name
    for layout in (LAYOUTS["brats2020"], LAYOUTS["brats2023"]):
        names = {m: f"{case_id}{layout.separator}{s}" for m, s in layout.suffixes.items()}
        if not any(n in files for n in names.values()):
            continue
        images = {m: files.get(n) for m, n in names.items()}
        seg = files.get(f"{case_id}{layout.separator}{layout.seg_suffix}")
        if seg is None:  # BraTS 2020 training case 355 ships W39_1998.09.19_Segm.nii
            seg = next((p for stem, p in files.items() if stem.endswith("Segm")), None)
        return CaseFiles(case_id, _release(case_id, layout.separator), images, seg)
    return None


def _msd_cases(folder: Path) -> list:
    """Cases of a Medical Segmentation Decathlon task folder (imagesTr/imagesTs, labelsTr)."""
    cases = []
    for images_dir, labels_dir in (("imagesTr", "labelsTr"), ("imagesTs", "labelsTs")):
        if not (folder / images_dir).is_dir():
            continue
        labels = _nii_files(folder / labels_dir) if (folder / labels_dir).is_dir() else {}
        for stem, path in _nii_files(folder / images_dir).items():
            if stem.startswith("._"):  # macOS resource forks ship inside the MSD archive
                continue
            cases.append(CaseFiles(stem, "msd", {m: path for m in MSD_CHANNELS}, labels.get(stem)))
    return cases


def find_cases(root: str | os.PathLike) -> list:
    """Every case under root, in any layout of SPEC section 5b, sorted by id.

    A case folder is a folder holding `<folder name>_<modality>.nii[.gz]` (BraTS 2017-2021) or
    `<folder name>-t2f.nii[.gz]` and friends (BraTS 2023+); HGG/LGG subfolders and any nesting are
    searched. A folder holding imagesTr/ or imagesTs/ is an MSD task. Cases missing a modality are
    still returned, so that loading them reports what is missing.
    """
    root = Path(root)
    if not root.is_dir():
        raise CaseError(f"{root}: not a folder")
    cases = []
    for dirpath, dirnames, _ in os.walk(root):
        folder = Path(dirpath)
        if "imagesTr" in dirnames or "imagesTs" in dirnames:
            cases.extend(_msd_cases(folder))
            dirnames.clear()
            continue
        case = _case_in_folder(folder)
        if case is not None:
            cases.append(case)
            dirnames.clear()
        dirnames.sort()
    return sorted(cases, key=lambda c: c.id)


def read_nifti(path: Path, what: str) -> tuple:
    """(NIfTI image, voxels as stored), turning any reader failure into a one-line CaseError."""
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as error:  # nibabel, gzip and zlib raise many unrelated types
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CaseError(f"{what}: cannot read {path.name}: {message}") from None
    return img, data


def _reorientation(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """nibabel orientation transform from the voxel axes of affine `source` to those of `target`."""
    return nib.orientations.ornt_transform(nib.orientations.io_orientation(source),
                                           nib.orientations.io_orientation(target))


def to_brats_orientation(affine: np.ndarray, shape: tuple) -> tuple:
    """(orientation transform or None, reoriented affine) taking a file's axes to L, P, S."""
    target = nib.orientations.axcodes2ornt(BRATS_ORIENTATION)
    ornt = nib.orientations.ornt_transform(nib.orientations.io_orientation(affine), target)
    if (ornt == [[0, 1], [1, 1], [2, 1]]).all():
        return None, affine
    return ornt, affine @ nib.orientations.inv_ornt_aff(ornt, shape[:3])


def zero_background(data: np.ndarray) -> np.ndarray:
    """A constant non-zero background (all eight corners one value) set to 0; else unchanged."""
    corners = data[np.ix_(*[(0, n - 1) for n in data.shape[:3]])]
    value = corners.flat[0]
    if value == 0 or not (corners == value).all():
        return data
    return np.where(data == value, np.zeros((), data.dtype), data)


def _check_finite(case_id: str, name: str, data: np.ndarray) -> None:
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        raise CaseError(f"{case_id}: {name} has {bad} NaN/inf voxels")


def in_threads(function, items: list) -> list:
    """map() over a few threads: zlib and numpy release the GIL, so file reads overlap."""
    with ThreadPoolExecutor(max_workers=min(len(items), os.cpu_count() or 1, 4) or 1) as pool:
        return list(pool.map(function, items))


def _load_images(files: CaseFiles) -> tuple:
    """(images as stored, reference NIfTI) of a case; checks presence, shape, affine, NaN, zeros."""
    missing = [m for m in MODALITIES if files.images.get(m) is None]
    if missing:
        raise CaseError(f"{files.id}: missing modality {', '.join(missing)}")
    images, reference = {}, None
    if files.layout == "msd":
        reference, data = read_nifti(files.images["flair"], files.id)
        if data.ndim != 4 or data.shape[3] != len(MSD_CHANNELS):
            raise CaseError(f"{files.id}: {files.images['flair'].name} has shape {data.shape}, "
                            f"expected a 4D image with {len(MSD_CHANNELS)} channels")
        images = {m: data[..., i] for i, m in enumerate(MSD_CHANNELS)}
    else:
        paths = [files.images[m] for m in MODALITIES]
        loaded = in_threads(lambda path: read_nifti(path, files.id), paths)
        for modality, path, (img, data) in zip(MODALITIES, paths, loaded):
            if data.ndim != 3:
                raise CaseError(f"{files.id}: {path.name} is {data.ndim}D, expected 3D")
            if reference is None:
                reference = img
            elif data.shape != reference.shape:
                raise CaseError(f"{files.id}: {path.name} has shape {data.shape}, "
                                f"{files.images[MODALITIES[0]].name} has {reference.shape}")
            elif not np.allclose(img.affine, reference.affine, atol=1e-3):
                raise CaseError(f"{files.id}: {path.name} has a different affine from "
                                f"{files.images[MODALITIES[0]].name}")
            images[modality] = data
    for modality, data in images.items():
        _check_finite(files.id, modality, data)
        images[modality] = data = zero_background(data)
        if not data.any():
            raise CaseError(f"{files.id}: {modality} image is all zero")
    return images, reference


def convert_labels(stored: np.ndarray, layout: str, what: str) -> np.ndarray:
    """Labels of a layout's coding -> BraTS 2020 coding (uint8); unknown values are an error."""
    label_map = LAYOUTS[layout].label_map
    unknown_mark = 255
    lookup = np.full(256, unknown_mark, dtype=np.uint8)
    for source, target in label_map.items():
        lookup[source] = target
    low, high = stored.min(), stored.max()
    if low >= 0 and high < len(lookup):
        converted = lookup[stored.astype(np.uint8, copy=False)]
        if not (converted == unknown_mark).any():
            return converted
    unknown = [v for v in np.unique(stored).tolist() if v not in label_map]
    shown = ", ".join(f"{v:g}" for v in unknown[:5])
    raise CaseError(f"{what}: label values {shown} are not in the {layout} set {sorted(label_map)}")


def read_labels(path: Path, layout: str, what: str) -> tuple:
    """(labels in BraTS 2020 coding, NIfTI image) of one segmentation file."""
    img, data = read_nifti(path, what)
    if data.dtype.kind == "f":
        _check_finite(what, path.name, data)
        if not np.array_equal(data, np.round(data)):
            raise CaseError(f"{what}: {path.name} holds non-integer labels")
    return convert_labels(data, layout, f"{what}: {path.name}"), img


def load_case(files: CaseFiles) -> Case:
    """Read a case: four float32 images, labels in BraTS 2020 coding (or None), geometry."""
    images, reference = _load_images(files)
    seg = None
    if files.seg is not None:
        seg, seg_img = read_labels(files.seg, files.layout, files.id)
        shape = reference.shape[:3]
        if seg.shape != shape:
            raise CaseError(f"{files.id}: {files.seg.name} has shape {seg.shape}, images have {shape}")
        if not np.allclose(seg_img.affine, reference.affine, atol=1e-3):
            raise CaseError(f"{files.id}: {files.seg.name} has a different affine from the images")
    header = reference.header.copy()
    if files.layout == "msd":
        header.set_data_shape(header.get_data_shape()[:3])
    ornt, affine = to_brats_orientation(reference.affine, reference.shape)
    if ornt is None:
        return Case(files.id, files.layout, images, seg, reference.affine.copy(), header, files)
    images = {m: nib.orientations.apply_orientation(a, ornt) for m, a in images.items()}
    seg = None if seg is None else nib.orientations.apply_orientation(seg, ornt)
    return Case(files.id, files.layout, images, seg, affine, header, files,
                file_affine=reference.affine.copy())


def case_id_from_filename(name: str) -> str:
    """`BraTS20_Validation_001.nii.gz` -> `BraTS20_Validation_001`; strips a `_seg` tail too."""
    return re.sub(r"[_-]seg$", "", strip_nii(name))


def find_label_files(root: str | os.PathLike) -> dict:
    """case id -> (segmentation path, layout) for every label map under root.

    Recognises case folders of any release (the `_seg` / `-seg` file, or case 355's `*Segm.nii`),
    MSD `labelsTr/` and `labelsTs/` folders, and flat folders of `<case id>.nii.gz` files in the
    BraTS 2020 coding (such as predict.py writes).
    """
    root = Path(root)
    if not root.is_dir():
        raise CaseError(f"{root}: not a folder")
    found = {}
    for dirpath, dirnames, _ in os.walk(root):
        folder = Path(dirpath)
        dirnames.sort()
        files = _nii_files(folder)
        if folder.name in ("labelsTr", "labelsTs"):
            found.update({stem: (path, "msd") for stem, path in files.items()
                          if not stem.startswith("._")})
            continue
        case_id = folder.name
        for separator in ("_", "-"):
            seg = files.get(f"{case_id}{separator}seg")
            if seg is not None:
                found[case_id] = (seg, _release(case_id, separator))
                break
        else:
            segm = [p for stem, p in files.items() if stem.endswith("Segm")]
            if segm and folder != root:
                found[case_id] = (segm[0], "brats2020")
            elif folder == root:
                found.update({case_id_from_filename(p.name): (p, "brats2020")
                              for p in files.values()})
    return found
