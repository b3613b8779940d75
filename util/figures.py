"""Figures shared by the scripts and the notebooks: training curves, case overlays, feature maps.

Colours follow the paper's Fig. 2: enhancing tumour yellow, necrosis / non-enhancing core red,
edema green. Every function draws on a new figure and returns it; `save` writes it atomically.
"""
from __future__ import annotations

import csv
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from util.outputs import atomic

LABEL_COLOURS = {1: (0.9, 0.1, 0.1), 2: (0.1, 0.8, 0.2), 4: (1.0, 0.9, 0.0)}  # NCR red, ED green, ET yellow
LABEL_NAMES = {1: "necrosis / NET", 2: "edema", 4: "enhancing"}
REGION_COLOURS = {"wt": "tab:green", "tc": "tab:red", "et": "goldenrod"}


def save(figure, path: str | Path, dpi: int = 100) -> Path:
    """Write a figure to `path` through a temporary file, so a reader never sees half a PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic(path) as temporary:
            figure.savefig(temporary, dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(figure)
    return path


def read_history(path: str | Path) -> dict:
    """Columns of a Keras CSVLogger file as float arrays (NaN where a value is missing: CSVLogger
    writes NA in the val_ columns of a run without validation cases)."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {key: np.array([float(r[key]) if r[key] not in ("", "nan", "NA") else np.nan
                           for r in rows])
            for key in (rows[0] if rows else {})}


def training_curves(history: dict, title: str = ""):
    """Loss (train, validation) and per-region Dice (train dashed, validation solid) per epoch."""
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    epochs = history.get("epoch", np.arange(len(next(iter(history.values()), [])))) + 1
    for key, style in (("loss", "-"), ("val_loss", "--")):
        if key in history:
            left.plot(epochs, history[key], style, label=key)
    left.set(xlabel="epoch", ylabel="BCE - Dice", title="loss")
    left.legend()
    for region, colour in REGION_COLOURS.items():
        if f"dice_{region}" in history:
            right.plot(epochs, history[f"dice_{region}"], ":", color=colour, label=f"train {region.upper()}")
        if f"val_dice_{region}" in history:
            right.plot(epochs, history[f"val_dice_{region}"], "-", color=colour, label=f"val {region.upper()}")
    right.set(xlabel="epoch", ylabel="Dice", ylim=(0, 1), title="Dice per region")
    right.legend(fontsize=8, ncol=2)
    figure.suptitle(title)
    return figure


def label_overlay(labels: np.ndarray):
    """RGBA (H, W, 4) of BraTS labels in the paper's colours, transparent elsewhere."""
    rgba = np.zeros(labels.shape + (4,), np.float32)
    for label, colour in LABEL_COLOURS.items():
        rgba[labels == label] = (*colour, 0.55)
    return rgba


def _slice(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """A 2D view for display: radiological-ish orientation (anterior / superior up)."""
    return np.rot90(np.take(volume, index, axis=axis))


def tumour_centre(labels: np.ndarray) -> tuple:
    """Voxel at the centre of the tumour (or of the volume if there is none)."""
    points = np.argwhere(labels > 0)
    return tuple(int(v) for v in (points.mean(0) if len(points) else np.array(labels.shape) / 2))


def case_overlays(image: np.ndarray, prediction: np.ndarray, truth: np.ndarray | None = None,
                  title: str = ""):
    """Axial, coronal and sagittal slices through the tumour: prediction and ground truth."""
    rows = [("prediction", prediction)] + ([("ground truth", truth)] if truth is not None else [])
    centre = tumour_centre(truth if truth is not None else prediction)
    figure, axes = plt.subplots(len(rows), 3, figsize=(10, 3.4 * len(rows)), squeeze=False)
    low, high = np.percentile(image[image != 0], (1, 99)) if image.any() else (0, 1)
    for row, (name, labels) in enumerate(rows):
        for column, (axis, view) in enumerate(((2, "axial"), (1, "coronal"), (0, "sagittal"))):
            ax = axes[row, column]
            ax.imshow(_slice(image, axis, centre[axis]), cmap="gray", vmin=low, vmax=high)
            ax.imshow(_slice(label_overlay(labels), axis, centre[axis]))
            ax.set_title(f"{name}, {view}", fontsize=9)
            ax.axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in LABEL_COLOURS.values()]
    figure.legend(handles, LABEL_NAMES.values(), loc="lower center", ncol=3, fontsize=8)
    figure.suptitle(title)
    return figure


def feature_maps(volume: np.ndarray, compressed: np.ndarray, decoded: np.ndarray,
                 regions: np.ndarray | None = None, title: str = ""):
    """The paper's Figs. 3/4: input slices, the depth-compressed image and the decoded image.

    volume (H, W, D) one modality; compressed and decoded (H, W, 3); regions (H, W, D, 3).
    Row 1: three axial slices of the input at 1/6, 1/2 and 5/6 of the depth. Row 2: the three
    channels the backbone sees. Row 3: the three channels the 2D decoder returns. Row 4: labels.
    """
    depth = volume.shape[2]
    picks = [depth // 6, depth // 2, 5 * depth // 6]
    rows = [("input, slice", [volume[:, :, z] for z in picks], [f"z={z}" for z in picks]),
            ("compressed image", [compressed[..., c] for c in range(3)], ["ch 0", "ch 1", "ch 2"]),
            ("decoded image", [decoded[..., c] for c in range(3)], ["ch 0", "ch 1", "ch 2"])]
    if regions is not None:
        projections = [regions[..., c].max(axis=2) for c in range(3)]
        rows.append(("labels (depth max)", projections, ["WT", "TC", "ET"]))
    figure, axes = plt.subplots(len(rows), 3, figsize=(9, 3 * len(rows)), squeeze=False)
    for r, (name, images, captions) in enumerate(rows):
        for c, (image, caption) in enumerate(zip(images, captions)):
            axes[r, c].imshow(np.rot90(image), cmap="magma" if r in (1, 2) else "gray")
            axes[r, c].set_title(f"{name} {caption}", fontsize=8)
            axes[r, c].axis("off")
    figure.suptitle(title)
    return figure


def modality_overlays(images: dict, rows: dict, centre: tuple, title: str = ""):
    """One axial slice through `centre` of every modality (columns), each row one label map
    overlaid (rows: name -> BraTS labels (X, Y, Z); a bool mask is drawn as edema green)."""
    figure, axes = plt.subplots(len(rows), len(images), figsize=(2.6 * len(images), 2.7 * len(rows)),
                                squeeze=False)
    for column, (modality, image) in enumerate(images.items()):
        low, high = np.percentile(image[image != 0], (1, 99)) if image.any() else (0, 1)
        for row, (name, labels) in enumerate(rows.items()):
            labels = labels.astype(np.uint8) * 2 if labels.dtype == bool else labels
            ax = axes[row, column]
            ax.imshow(_slice(image, 2, centre[2]), cmap="gray", vmin=low, vmax=high)
            ax.imshow(_slice(label_overlay(labels), 2, centre[2]))
            ax.set_title(f"{name} on {modality}", fontsize=8)
            ax.axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in LABEL_COLOURS.values()]
    figure.legend(handles, LABEL_NAMES.values(), loc="lower center", ncol=3, fontsize=8)
    figure.suptitle(title)
    return figure


def intensity_histograms(groups: dict, title: str = ""):
    """Density of z-scored brain intensities per modality (one panel each), one line per group:
    groups name -> {modality: 1D values} (e.g. real scans, plain and randomised synthetic)."""
    modalities = list(next(iter(groups.values())))
    figure, axes = plt.subplots(1, len(modalities), figsize=(3.4 * len(modalities), 3), squeeze=False)
    bins = np.linspace(-4, 6, 81)
    for ax, modality in zip(axes[0], modalities):
        for name, values in groups.items():
            ax.hist(values[modality], bins=bins, density=True, histtype="step", label=name)
        ax.set(title=modality, xlabel="z-score over the brain")
    axes[0, 0].legend(fontsize=7)
    figure.suptitle(title, y=1.04)
    return figure
