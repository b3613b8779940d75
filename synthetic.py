"""Realistic BraTS-like synthetic cases, for the demo and the tests (no BraTS on these machines).

    python synthetic.py data/synthetic --cases 24 --seed 0 --layout brats2020
    python synthetic.py data/validation --cases 6 --seed 1 --validation   # ground truth kept apart
    python synthetic.py data/synth2real --cases 48 --world randomised     # domain randomisation

Anatomy is real: the MNI152 2009 template that nilearn ships (grey matter, white matter and brain
masks at 1 mm), placed in the BraTS 240x240x155 1 mm grid with the BraTS orientation. Four contrasts
follow the usual tissue ordering (T1: WM > GM > CSF; T2: CSF bright; FLAIR: CSF dark, edema
bright; T1ce: enhancing rim bright), with a smooth bias field, noise and a per-case intensity
scale, stored as int16. Tumours are irregular blobs inside the brain with a necrotic core (1), an
enhancing rim (4) and edema (2); about a quarter have no enhancing tumour (LGG-like) and a fifth
are multifocal. Files are named and coded as the chosen release stores them (SPEC.md 5b).

`--world randomised` draws every case from a world of its own instead (datasets/domain.py,
docs/synthetic-to-real.md): the anatomy deformed, per-tissue intensities, bias, slice thickness,
noise and skull stripping randomised per modality, gliomas and metastases.
"""
from __future__ import annotations

import argparse
import functools
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from brats.cases import LAYOUTS, MODALITIES, MSD_CHANNELS
from datasets import domain
from util.outputs import atomic, check_folder, exits_cleanly

GRID = (240, 240, 155)
# BraTS volumes are stored with x and y reversed with respect to RAS (origin 0, 239, 0).
BRATS_AFFINE = np.array([[-1.0, 0, 0, 0], [0, -1.0, 0, 239.0], [0, 0, 1.0, 0], [0, 0, 0, 1]])

# Mean intensity of each tissue per contrast, relative to white matter in T1.
TISSUES = ("csf", "gm", "wm", "edema", "necrosis", "enhancing")
CONTRAST = {
    "t1":    {"csf": 0.30, "gm": 0.72, "wm": 1.00, "edema": 0.58, "necrosis": 0.32, "enhancing": 0.70},
    "t1ce":  {"csf": 0.30, "gm": 0.72, "wm": 0.95, "edema": 0.58, "necrosis": 0.30, "enhancing": 1.45},
    "t2":    {"csf": 1.00, "gm": 0.62, "wm": 0.45, "edema": 0.88, "necrosis": 1.05, "enhancing": 0.70},
    "flair": {"csf": 0.12, "gm": 0.66, "wm": 0.52, "edema": 1.05, "necrosis": 0.55, "enhancing": 0.85},
}
LGG_SHARE, MULTIFOCAL_SHARE = 0.25, 0.2
WORLDS = ("plain", "randomised")  # this module's one template world, or datasets/domain.py's


@dataclass
class SyntheticCase:
    """images: modality -> int16 (240, 240, 155); labels: uint8 in BraTS 2020 coding."""

    images: dict
    labels: np.ndarray
    grade: str  # "HGG" or "LGG" (LGG-like cases have no enhancing tumour)
    kind: str = "glioma"  # randomised world: glioma-hgg, glioma-lgg or metastases


def mni152_templates() -> dict:
    """nilearn's MNI152 2009 templates at 1 mm, as nilearn.datasets.load_mni152_gm_template,
    _wm_template and _brain_mask give them: grey and white matter scaled to a maximum of 1, the
    brain where the T1 template so scaled exceeds 0.2. float32 (197, 233, 189) each.

    Read from nilearn's package folder instead: importing nilearn.datasets (and scikit-learn)
    cost each process that makes cases 1.2 s of CPU (tests/test_synthetic.py checks the sameness).
    """
    import importlib.util

    nilearn = Path(importlib.util.find_spec("nilearn").submodule_search_locations[0])
    data_folder = nilearn / "datasets" / "data"

    def scaled(tissue: str) -> np.ndarray:
        path = data_folder / f"mni_icbm152_{tissue}_tal_nlin_sym_09a_converted.nii.gz"
        data = np.asanyarray(nib.load(path).dataobj).astype(np.float32)
        data /= data.max()
        return data

    brain = (scaled("t1") > 0.2).astype(np.float32)
    return {"gm": scaled("gm"), "wm": scaled("wm"), "brain": brain}


@functools.lru_cache(maxsize=1)
def anatomy() -> dict:
    """Tissue probability maps csf/gm/wm/brain on the BraTS grid, float32 (240, 240, 155)."""
    placed = {}
    for name, data in mni152_templates().items():
        data = data[::-1, ::-1, : GRID[2]]
        grid = np.zeros(GRID, np.float32)
        ox, oy = (GRID[0] - data.shape[0]) // 2, (GRID[1] - data.shape[1]) // 2
        grid[ox: ox + data.shape[0], max(oy, 0): oy + data.shape[1]] = data[:, max(-oy, 0):]
        placed[name] = grid
    brain = domain.filled(placed["brain"] > 0.5)
    placed["brain"] = brain.astype(np.float32)
    placed["gm"] *= brain
    placed["wm"] *= brain
    placed["csf"] = np.clip(brain - placed["gm"] - placed["wm"], 0, 1)
    return placed


def tumour_labels(rng: np.random.Generator, brain: np.ndarray, tissue: np.ndarray, lgg: bool,
                  centre: np.ndarray, radius: float) -> tuple:
    """(labels in a box, the box's slices): an irregular tumour whose core has radius `radius`.

    Normalised distance d = |x - c| / radius, perturbed by smooth noise: necrosis d < a, enhancing
    rim a <= d < 1 (for LGG-like tumours the whole core is non-enhancing), edema up to d < e, kept
    inside the brain and out of CSF. a ~ U(0.45, 0.75) and e ~ U(1.2, 1.55) give BraTS's class
    proportions over a data set (TC/WT about 0.35, ET/WT about 0.25; `proportions` measures them).
    """
    edema_reach = rng.uniform(1.2, 1.55)
    half = int(np.ceil(radius * (1.3 * edema_reach + 0.6)))
    box = tuple(slice(max(int(c) - half, 0), min(int(c) + half + 1, s))
                for c, s in zip(centre, brain.shape))
    grids = np.meshgrid(*[np.arange(b.start, b.stop, dtype=np.float32) for b in box], indexing="ij")
    shape = grids[0].shape
    # An ellipsoid with random axes, so that shapes vary beyond the noise.
    stretch = rng.uniform(0.75, 1.3, size=3)
    distance = np.sqrt(sum(((g - c) / s) ** 2 for g, c, s in zip(grids, centre, stretch))) / radius
    core = distance * (1 + 0.3 * domain.smooth_noise(rng, shape, coarse=max(3, int(radius // 2))))
    outer = distance * (1 + 0.35 * domain.smooth_noise(rng, shape, coarse=max(3, int(radius // 2))))
    labels = np.zeros(shape, np.uint8)
    labels[(outer < edema_reach) & (tissue[box] > 0.35)] = 2
    if lgg:
        labels[core < 1] = 1
    else:
        labels[core < 1] = 4
        labels[core < rng.uniform(0.45, 0.75)] = 1
    labels[brain[box] < 0.5] = 0
    return labels, box


@functools.lru_cache(maxsize=1)
def tumour_centres() -> np.ndarray:
    """Where a glioma may be centred, int64 (N, 3) voxel indices: gliomas sit in the hemispheres,
    so deep white matter away from the poles."""
    candidates = np.argwhere(ndimage.binary_erosion(anatomy()["wm"] > 0.8, iterations=6))
    return candidates[(candidates[:, 2] > 50) & (np.abs(candidates[:, 1] - 120) < 45)]


def place_tumours(rng: np.random.Generator, lgg: bool, multifocal: bool) -> np.ndarray:
    """A uint8 (240, 240, 155) BraTS label map with one or two tumours inside the brain."""
    tissue_maps = anatomy()
    brain, tissue = tissue_maps["brain"], tissue_maps["gm"] + tissue_maps["wm"]
    candidates = tumour_centres()
    labels = np.zeros(GRID, np.uint8)
    for number in range(2 if multifocal else 1):
        centre = candidates[rng.integers(len(candidates))].astype(np.float32)
        radius = rng.uniform(8, 17) if number == 0 else rng.uniform(5, 9)
        tumour, box = tumour_labels(rng, brain, tissue, lgg, centre, radius)
        region = labels[box]
        # Where tumours meet, the more severe label wins: ET > necrosis > edema.
        severity = np.array([0, 2, 1, 0, 3], np.uint8)
        labels[box] = np.where(severity[tumour] > severity[region], tumour, region)
    return labels


def bias_field(rng: np.random.Generator) -> np.ndarray:
    """A smooth multiplicative field (about 0.8 to 1.2): exp of a random quadratic in x, y, z.

    Summed in place, term by term in the quadratic's order (the same float32 sums, without a new
    240x240x155 array per term).
    """
    axes = [np.linspace(-1, 1, n, dtype=np.float32) for n in GRID]
    x, y, z = axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]
    a = rng.normal(0, 0.08, size=7).astype(np.float32)
    exponent = a[0] * x + a[1] * y + a[2] * z
    for term in (a[3] * x * y, a[4] * y * z, a[5] * x * x, a[6] * z * z):
        exponent += term
    return np.exp(exponent, out=exponent)


@functools.lru_cache(maxsize=len(CONTRAST))
def healthy_image(modality: str) -> np.ndarray:
    """The tissue mixture of one contrast, float32 (240, 240, 155): the same for every case."""
    tissue_maps = anatomy()
    image = sum(CONTRAST[modality][t] * tissue_maps[t] for t in ("csf", "gm", "wm"))
    image.flags.writeable = False
    return image


def render(rng: np.random.Generator, labels: np.ndarray, modality: str) -> np.ndarray:
    """One int16 contrast: tissue mixture, tumour tissues, bias field, noise and a case scale."""
    contrast = CONTRAST[modality]
    image = healthy_image(modality).copy()
    tumour = labels > 0
    if tumour.any():
        box = ndimage.find_objects(tumour.astype(np.uint8))[0]
        box = tuple(slice(max(b.start - 3, 0), b.stop + 3) for b in box)
        texture = 1 + 0.08 * domain.smooth_noise(rng, labels[box].shape, coarse=4)
        inside = np.zeros(labels[box].shape, np.float32)
        mixed = np.zeros(labels[box].shape, np.float32)
        for label, name in ((2, "edema"), (1, "necrosis"), (4, "enhancing")):
            share = ndimage.gaussian_filter((labels[box] == label).astype(np.float32), 0.8)
            mixed += share * contrast[name] * texture
            inside += share
        image[box] = (1 - np.minimum(inside, 1)) * image[box] + mixed
    # In place from here on: the same float32 operations as image * bias + noise ..., without a
    # new array for each.
    image *= bias_field(rng)
    noise = rng.standard_normal(GRID, dtype=np.float32)
    noise *= 0.025
    image += noise
    image *= anatomy()["brain"]
    scale = rng.uniform(150, 2500)
    np.maximum(image, 0, out=image)
    image *= scale
    return np.clip(np.rint(image, out=image), 0, 32767, out=image).astype(np.int16)


def draw_kind(rng: np.random.Generator) -> tuple:
    """(lgg, multifocal): the first two draws of a case decide what kind of tumour it has."""
    return bool(rng.random() < LGG_SHARE), bool(rng.random() < MULTIFOCAL_SHARE)


@functools.lru_cache(maxsize=4)
def make_case(seed: int, index: int, world: str = "plain") -> SyntheticCase:
    """The synthetic case number `index` of data set `seed` (deterministic for the three)."""
    rng = np.random.default_rng([seed, index])
    if world == "randomised":
        return randomised_case(rng)
    lgg, multifocal = draw_kind(rng)
    labels = place_tumours(rng, lgg, multifocal)
    shift = rng.integers(-4, 5, size=2)
    labels = np.roll(labels, shift, axis=(0, 1))
    images = {m: np.roll(render(rng, np.roll(labels, -shift, axis=(0, 1)), m), shift, axis=(0, 1))
              for m in MODALITIES}
    return SyntheticCase(images, labels, "LGG" if lgg else "HGG")


def randomised_case(rng: np.random.Generator) -> SyntheticCase:
    """A case of the randomised world (datasets/domain.py), scaled and stored as int16."""
    images, labels, kind = domain.randomised_case(rng, anatomy())
    stored = {}
    for modality in MODALITIES:
        image = images[modality]
        scale = rng.uniform(150, 2500) / max(float(np.percentile(image[image > 0], 50)), 1e-3)
        stored[modality] = np.clip(np.rint(image * scale), 0, 32767).astype(np.int16)
    return SyntheticCase(stored, labels, "LGG" if kind == "glioma-lgg" else "HGG", kind)


def case_id(layout: str, index: int, validation: bool) -> str:
    """The file-name id a release would give case number `index` (1-based)."""
    kind = "Validation" if validation else "Training"
    return {
        "brats2018": f"Brats18_SYN_{index}_1",
        "brats2020": f"BraTS20_{kind}_{index:03d}",
        "brats2021": f"BraTS2021_{index + (10000 if validation else 0):05d}",
        "brats2023": f"BraTS-GLI-{index + (10000 if validation else 0):05d}-000",
        "msd": f"BRATS_{index:03d}",
    }[layout]


def to_layout_coding(labels: np.ndarray, layout: str) -> np.ndarray:
    """BraTS 2020 labels -> the labels the layout stores (inverse of its label map)."""
    lookup = np.zeros(5, np.uint8)
    for stored, brats in LAYOUTS[layout].label_map.items():
        lookup[brats] = stored
    return lookup[labels]


def save_nifti(data: np.ndarray, path: Path) -> None:
    """Write with the BraTS geometry (1 mm, BraTS affine, qform and sform set), atomically.

    Handed to nibabel in Fortran order, the file's: the same bytes, written 30 % faster (nibabel
    gathers a C-ordered array's strided slices one by one).
    """
    img = nib.Nifti1Image(np.asfortranarray(data), BRATS_AFFINE)
    img.set_qform(BRATS_AFFINE, code=1)
    img.set_sform(BRATS_AFFINE, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic(path) as temporary:
        nib.save(img, str(temporary))


def case_files(out: Path, layout: str, cid: str, grade: str, validation: bool) -> tuple:
    """(modality -> image path, segmentation path) of a case written in `layout` under `out`.

    For MSD there is one 4D image, returned under the key "4d".
    """
    if layout == "msd":
        split = "Ts" if validation else "Tr"
        return {"4d": out / f"images{split}" / f"{cid}.nii.gz"}, out / f"labels{split}" / f"{cid}.nii.gz"
    folder = out / (grade if layout == "brats2018" and not validation else "") / cid
    sep, suffixes = LAYOUTS[layout].separator, LAYOUTS[layout].suffixes
    images = {m: folder / f"{cid}{sep}{suffixes[m]}.nii.gz" for m in MODALITIES}
    return images, folder / f"{cid}{sep}{LAYOUTS[layout].seg_suffix}.nii.gz"


class Written(NamedTuple):
    """A case as written: its id, grade and voxel counts of BraTS labels 0, 1, 2, 4."""

    id: str
    grade: str
    counts: tuple


def label_counts(labels: np.ndarray) -> tuple:
    """Voxel counts of BraTS 2020 labels (0, 1, 2, 4)."""
    counts = np.bincount(labels.ravel(), minlength=5)
    return tuple(int(counts[label]) for label in (0, 1, 2, 4))


def proportions(written: list) -> dict:
    """Data-set class proportions, as voxel-count ratios summed over the cases.

    TC/WT over every case; ET/WT over the HGG-like cases (LGG-like ones have no ET by design).
    Real BraTS (Kermi et al. 2018): TC/WT about 0.34, ET/WT about 0.23.
    """
    every = np.sum([w.counts for w in written], axis=0)
    hgg = np.sum([w.counts for w in written if w.grade == "HGG"] or [(0, 0, 0, 0)], axis=0)
    ratio = lambda part, whole: float(part / whole) if whole else float("nan")  # noqa: E731
    return {"TC/WT": ratio(every[1] + every[3], every[1:].sum()),
            "ET/WT (HGG)": ratio(hgg[3], hgg[1:].sum()),
            "LGG share": sum(w.grade == "LGG" for w in written) / len(written)}


def write_case(out: Path, seed: int, index: int, layout: str, validation: bool,
               gt_dir: Path | None, world: str = "plain") -> Written:
    """Generate and write case `index`; its labels go to gt_dir instead when validating."""
    case = make_case(seed, index, world)
    cid = case_id(layout, index, validation)
    images, seg_path = case_files(out, layout, cid, case.grade, validation)
    if layout == "msd":
        stack = np.stack([case.images[m] for m in MSD_CHANNELS], axis=-1)
        save_nifti(stack, images["4d"])
    else:
        for modality, path in images.items():
            save_nifti(case.images[modality], path)
    if validation:
        seg_path = case_files(gt_dir, layout, cid, case.grade, True)[1]
    save_nifti(to_layout_coding(case.labels, layout), seg_path)
    return Written(cid, case.grade, label_counts(case.labels))


def default_gt_dir(out: Path) -> Path:
    """Where --validation puts the labels unless told: a sibling folder `<out>_ground_truth`."""
    return out.parent / f"{out.name}_ground_truth"


def write_dataset(out: Path, cases: int, seed: int, layout: str = "brats2020",
                  validation: bool = False, gt_dir: Path | None = None, jobs: int = 1,
                  world: str = "plain"):
    """Write `cases` synthetic cases of `world` under `out`, yielding each as a `Written`."""
    out = Path(out)
    task = functools.partial(write_case, out, seed, layout=layout, validation=validation,
                             gt_dir=Path(gt_dir) if gt_dir else default_gt_dir(out), world=world)
    indices = range(1, cases + 1)
    if jobs == 1 or cases == 1:  # no pool for one case: starting it costs more than the case
        yield from map(task, indices)
        return
    # forkserver: a fork of a process that runs threads (TensorFlow's, in the tests) can deadlock
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("forkserver")) as pool:
        yield from pool.map(task, indices)


@exits_cleanly()
def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="folder to write the cases into")
    parser.add_argument("--cases", type=int, default=10, help="number of cases (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="data set seed (default 0)")
    parser.add_argument("--layout", choices=sorted(LAYOUTS), default="brats2020",
                        help="file names and label coding of this release (default brats2020)")
    parser.add_argument("--validation", action="store_true",
                        help="write cases without labels; labels go to --gt-dir")
    parser.add_argument("--gt-dir", type=Path,
                        help="ground-truth folder for --validation (default OUT_ground_truth)")
    parser.add_argument("--jobs", type=int, default=1, help="parallel processes (default 1)")
    parser.add_argument("--world", choices=WORLDS, default="plain",
                        help="plain: the template world; randomised: domain randomisation per "
                             "case for training that transfers to real scans (default plain)")
    args = parser.parse_args(argv)
    if args.cases < 1:
        parser.error("--cases must be at least 1")
    from tqdm import tqdm

    gt_dir = args.gt_dir or default_gt_dir(args.out)
    check_folder(args.out)
    if args.validation:
        check_folder(gt_dir)
    cases = write_dataset(args.out, args.cases, args.seed, args.layout, args.validation, gt_dir,
                          args.jobs, args.world)
    written = list(tqdm(cases, total=args.cases, desc="synthetic cases", unit="case"))
    print(f"wrote {len(written)} {args.layout} cases to {args.out}"
          + (f" (labels in {gt_dir})" if args.validation else ""))
    print("class proportions (voxels): " + ", ".join(
        f"{name} {value:.2f}" for name, value in proportions(written).items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
