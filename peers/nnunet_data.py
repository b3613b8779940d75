"""BraTS cases as an nnU-Net v2 raw dataset and nnU-Net's label maps back, on the 3 mm grid.

    write_raw_dataset(cases, raw / "Dataset500_SynBraTS")     # imagesTr, labelsTr, dataset.json
    write_images(case, folder)                                # <id>_0000..0003.nii.gz, 3 mm
    regions = nnunet_to_regions(labels)                       # (X, Y, Z) -> (X, Y, Z, 3) uint8

Labels follow nnU-Net's own BraTS conversion (nnunetv2/dataset_conversion/Dataset137_BraTS21.py):
BraTS 0, 2 (edema), 1 (necrosis), 4 (enhancing) become 0, 1, 2, 3, channels are T1, T1ce, T2,
FLAIR (_0000 to _0003), and dataset.json trains the regions whole tumour (1, 2, 3), tumour core
(2, 3) and enhancing tumour (3) with regions_class_order (1, 2, 3): nnU-Net's region-based
training, sigmoid outputs. The images are block-averaged by 3 (240x240x155 -> 80x80x52 at 3 mm,
datasets.volumes.block_mean) and the labels are the cache's 3 mm regions (a region where at least half
of a 3x3x3 block is in it), so nnU-Net sees the cases as configs/small.yaml's cache does, uncropped
(nnU-Net crops to the non-zero region itself).
"""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

from util.outputs import atomic

DATASET = "Dataset500_SynBraTS"
DATASET_ID = 500
FACTOR = 3  # 1 mm -> 3 mm, as configs/small.yaml
CHANNELS = ("t1", "t1ce", "t2", "flair")  # Dataset137's order: _0000 T1 ... _0003 FLAIR
BRATS_TO_NNUNET = {0: 0, 2: 1, 1: 2, 4: 3}
NNUNET_TO_BRATS = {v: k for k, v in BRATS_TO_NNUNET.items()}
REGIONS = {"whole tumor": (1, 2, 3), "tumor core": (2, 3), "enhancing tumor": (3,)}  # WT, TC, ET


def _lookup(mapping: dict, labels: np.ndarray, what: str) -> np.ndarray:
    table = np.full(256, 255, np.uint8)
    for source, target in mapping.items():
        table[source] = target
    out = table[np.asarray(labels).astype(np.uint8)]
    if np.any(out == 255) or np.any(np.asarray(labels) > 255):
        unknown = sorted(set(np.unique(labels).tolist()) - set(mapping))
        raise ValueError(f"{what}: label values {unknown} outside {sorted(mapping)}")
    return out


def brats_to_nnunet(labels: np.ndarray) -> np.ndarray:
    """BraTS 2020 labels 0, 1, 2, 4 -> nnU-Net's 0, 2, 1, 3 (uint8, same shape)."""
    return _lookup(BRATS_TO_NNUNET, labels, "BraTS labels")


def nnunet_to_brats(labels: np.ndarray) -> np.ndarray:
    """nnU-Net's labels 0..3 -> BraTS 2020 labels (Dataset137's convert_labels_back_to_BraTS)."""
    return _lookup(NNUNET_TO_BRATS, labels, "nnU-Net labels")


def regions_to_nnunet(regions: np.ndarray) -> np.ndarray:
    """Nested regions (..., 3) WT, TC, ET -> nnU-Net labels (...): 3 ET, 2 TC but not ET,
    1 WT but not TC (what nnU-Net writes with regions_class_order (1, 2, 3))."""
    regions = np.asarray(regions) > 0
    labels = np.zeros(regions.shape[:-1], np.uint8)
    for value, channel in ((1, 0), (2, 1), (3, 2)):
        labels[regions[..., channel]] = value
    return labels


def nnunet_to_regions(labels: np.ndarray) -> np.ndarray:
    """nnU-Net labels (...) -> uint8 regions (..., 3) WT, TC, ET, as dataset.json defines them."""
    return np.stack([np.isin(labels, members) for members in REGIONS.values()],
                    axis=-1).astype(np.uint8)


def on_case_grid(labels: np.ndarray, shape: tuple) -> np.ndarray:
    """nnU-Net's 3 mm labels -> region probabilities (X, Y, Z, 3) WT, TC, ET on the case's 1 mm
    grid (linear, as predict.py brings back the other rows' 3 mm probabilities); compare.py's
    nnunet row writes them with peers.plumbing.write_case_labels (threshold 0.5)."""
    from datasets.volumes import upsample

    return upsample(nnunet_to_regions(labels).astype(np.float32), FACTOR, shape)


def own_voxels(folder: Path) -> dict:
    """Voxels per region (mean per case, x27 for the 1 mm grid) in nnU-Net's own output files:
    what it predicted before any conversion of ours."""
    counts = [nnunet_to_regions(np.asarray(nib.load(path).dataobj)).sum(axis=(0, 1, 2))
              for path in sorted(Path(folder).glob("*.nii.gz"))]
    if not counts:
        return {}
    mean = np.mean(counts, axis=0) * FACTOR ** 3
    return {"cases": len(counts), **{r: float(v) for r, v in zip(("WT", "TC", "ET"), mean)}}


# ---- files --------------------------------------------------------------------------------------

def coarse_affine(affine: np.ndarray, factor: int = FACTOR) -> np.ndarray:
    """The affine of a grid block-averaged by `factor`: voxel i is the centre of 1 mm voxels
    factor*i .. factor*i + factor - 1."""
    scale = np.diag([factor, factor, factor, 1.0])
    scale[:3, 3] = (factor - 1) / 2
    return np.asarray(affine, np.float64) @ scale


def save(data: np.ndarray, affine: np.ndarray, path: Path) -> None:
    image = nib.Nifti1Image(data, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    with atomic(path) as temporary:
        nib.save(image, str(temporary))


def write_images(case, folder: Path) -> list:
    """The case's four images at 3 mm as <id>_0000..0003.nii.gz (float32) in `folder`."""
    from datasets.volumes import block_mean

    folder.mkdir(parents=True, exist_ok=True)
    affine = coarse_affine(case.affine)
    paths = []
    for channel, modality in enumerate(CHANNELS):
        path = folder / f"{case.id}_{channel:04d}.nii.gz"
        save(block_mean(case.stored[modality], FACTOR), affine, path)
        paths.append(path)
    return paths


def coarse_regions(seg: np.ndarray) -> np.ndarray:
    """BraTS labels (X, Y, Z) -> uint8 regions on the 3 mm grid, as preprocess.py caches them."""
    from datasets.volumes import block_mean, label_regions

    return (block_mean(label_regions(seg), FACTOR) >= 0.5).astype(np.uint8)


def write_raw_dataset(cases: list, folder: Path) -> int:
    """brats.CaseFiles with labels -> nnU-Net raw dataset `folder` (imagesTr, labelsTr,
    dataset.json); the number of cases written."""
    from brats.cases import load_case

    for files in cases:
        case = load_case(files)
        write_images(case, folder / "imagesTr")
        (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
        save(regions_to_nnunet(coarse_regions(case.seg)), coarse_affine(case.affine),
             folder / "labelsTr" / f"{case.id}.nii.gz")
    dataset = {
        "channel_names": {str(i): name for i, name in enumerate(("T1", "T1ce", "T2", "Flair"))},
        "labels": {"background": 0, **{k: list(v) for k, v in REGIONS.items()}},
        "regions_class_order": [1, 2, 3],
        "numTraining": len(cases),
        "file_ending": ".nii.gz",
        "name": DATASET,
        "description": "synthetic BraTS-like cases (synthetic.py) at 3 mm, labels as "
                       "nnunetv2/dataset_conversion/Dataset137_BraTS21.py converts BraTS",
    }
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=1))
    return len(cases)
