"""Domain-randomised synthetic cases (SynthSeg, Billot et al. 2023): a new world for every case.

    images, labels, kind = randomised_case(np.random.default_rng([seed, index]), maps)

`maps` are a template's tissue probability maps on the BraTS grid (synthetic.anatomy(): csf, gm,
wm, brain, float32 (X, Y, Z)); `images` maps each modality to float32 (X, Y, Z) in arbitrary units,
0 outside the (imperfect) brain mask; `labels` is uint8 (X, Y, Z) in BraTS 2020 coding; `kind` is
"glioma-hgg", "glioma-lgg" or "metastases". Every case draws, in this order:

1. its anatomy: ventricles grown 0-4 mm, cortical atrophy (grey matter given to CSF), then an
   affine (scale 0.9-1.1 per axis, rotation up to 8 degrees) and a smooth elastic deformation;
2. its tumour: a glioma with an enhancing rim and necrosis (HGG), a glioma whose whole core is
   non-enhancing and FLAIR-bright (LGG), or 1-5 small enhancing metastases with large edema;
3. per modality, one mean per tissue drawn from the range real scans show relative to white
   matter (CONTRAST_RANGES; the lesion's defining signal above the parenchyma: ABOVE_PARENCHYMA),
   a tissue texture, partial volumes at the tumour border;
4. per modality, the acquisition: gamma, a smooth bias field, thick axial slices (p 0.6, 3-7 mm,
   clinical series are 5 mm) resampled back to 1 mm, in-plane blur, Rician noise;
5. once per case: bright vessels and choroid plexus on T1ce (enhancing but not tumour), and a
   skull-stripping mask that keeps a rim of extra-cerebral tissue or cuts into the cortex.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from brats.cases import MODALITIES

# Mean intensity per tissue relative to white matter of the same modality: (low, high) of the
# uniform draw. Healthy tissue from the usual ordering (T1: WM > GM > CSF; T2: CSF > GM > WM;
# FLAIR: GM > WM > CSF), tumour tissues as radiology describes them; "nonenhancing" is an LGG's
# solid core (T2/FLAIR bright), "extra" what a loose brain mask keeps (dura, scalp, fat).
CONTRAST_RANGES = {
    "t1":    {"csf": (0.15, 0.45), "gm": (0.6, 0.85), "edema": (0.55, 0.85),
              "necrosis": (0.2, 0.5), "nonenhancing": (0.5, 0.8), "enhancing": (0.55, 0.95),
              "vessel": (0.6, 1.1), "extra": (0.3, 1.6)},
    "t1ce":  {"csf": (0.15, 0.45), "gm": (0.6, 0.85), "edema": (0.55, 0.85),
              "necrosis": (0.2, 0.55), "nonenhancing": (0.5, 0.85),
              "vessel": (1.3, 2.4), "extra": (0.3, 1.8)},
    "t2":    {"csf": (2.0, 4.0), "gm": (1.15, 1.6),
              "necrosis": (2.0, 3.6), "enhancing": (1.2, 2.0),
              "vessel": (0.3, 0.8), "extra": (0.5, 2.5)},
    "flair": {"csf": (0.15, 0.6), "gm": (1.05, 1.4),
              "necrosis": (0.4, 1.5), "enhancing": (1.1, 1.9),
              "vessel": (0.3, 0.8), "extra": (0.4, 2.0)},
}
# What defines a lesion on each modality is brighter than the brain around it: these tissues are
# drawn relative to the brighter of grey and white matter (edema and an LGG's core on T2 and
# FLAIR, enhancing tumour on T1ce), so that no case hides its lesion in the parenchyma.
ABOVE_PARENCHYMA = {"t1ce": {"enhancing": (1.3, 2.2)},
                    "t2": {"edema": (1.2, 2.0), "nonenhancing": (1.25, 2.1)},
                    "flair": {"edema": (1.25, 2.0), "nonenhancing": (1.2, 1.9)}}
KINDS = ("glioma-hgg", "glioma-lgg", "metastases")
KIND_SHARES = (0.45, 0.25, 0.30)
THICK_SLICES = 0.6  # share of series acquired as thick axial slices


# ---- smooth random fields -----------------------------------------------------------------------

def _interpolation(n: int, nodes: int) -> np.ndarray:
    """(n, nodes) Gaussian weights that spread `nodes` control values smoothly over n voxels."""
    where = np.linspace(0, nodes - 1, n, dtype=np.float32)[:, None]
    weights = np.exp(-0.5 * ((where - np.arange(nodes, dtype=np.float32)) / 0.7) ** 2)
    return weights / weights.sum(axis=1, keepdims=True)


def smooth_field(rng: np.random.Generator, shape: tuple, nodes: tuple) -> np.ndarray:
    """float32 `shape`, smooth, about zero mean and unit spread: `nodes` random control values
    per axis interpolated separably (fast at full resolution: three small matrix products)."""
    field = rng.standard_normal(nodes).astype(np.float32)
    for axis, (n, k) in enumerate(zip(shape, nodes)):
        field = np.moveaxis(np.tensordot(_interpolation(n, k), field, axes=(1, axis)), 0, axis)
    return field / max(float(field.std()), 1e-6)


def filled(mask: np.ndarray) -> np.ndarray:
    """ndimage.binary_fill_holes(mask), twice as fast on the BraTS-grid brain (0.13 s, not 0.24):
    the background that no path (6-connected) joins to the array's faces is a hole. One labelling
    instead of iterated dilations."""
    background, _ = ndimage.label(~mask)
    faces = np.concatenate([np.take(background, end, axis).ravel()
                            for axis in range(mask.ndim) for end in (0, -1)])
    holes = (background > 0) & ~np.isin(background, faces)
    return mask | holes


def smooth_noise(rng: np.random.Generator, shape: tuple, coarse: int = 6) -> np.ndarray:
    """A smooth random field in about [-1, 1]: coarse Gaussian noise upsampled to `shape`."""
    small = rng.standard_normal([max(2, s // coarse) for s in shape]).astype(np.float32)
    field = ndimage.zoom(small, [s / c for s, c in zip(shape, small.shape)], order=3)
    return field[tuple(slice(0, s) for s in shape)] / 1.5


def _brain_box(brain: np.ndarray, margin: int = 6) -> tuple:
    box = ndimage.find_objects(brain.astype(np.uint8))[0]
    return tuple(slice(max(b.start - margin, 0), min(b.stop + margin, n))
                 for b, n in zip(box, brain.shape))


# ---- 1. anatomy -----------------------------------------------------------------------------------

def vary_anatomy(rng: np.random.Generator, maps: dict) -> dict:
    """A new anatomy from the template: ventricles, atrophy, affine and elastic deformation."""
    brain = maps["brain"] > 0.5
    box = _brain_box(brain)
    gm, wm, csf = (maps[t][box].copy() for t in ("gm", "wm", "csf"))
    deep = ndimage.binary_erosion(brain[box], iterations=14)
    ventricles = (csf > 0.5) & deep
    grow = int(rng.integers(0, 5))
    if grow:
        larger = ndimage.binary_dilation(ventricles, iterations=grow) & deep
        gm[larger], wm[larger], csf[larger] = 0, 0, 1
    atrophy = rng.uniform(0, 0.5)
    near_csf = np.clip(2 * ndimage.gaussian_filter(csf, 1.5), 0, 1)
    moved = atrophy * gm * near_csf
    gm -= moved
    csf += moved
    coords = _deformation(rng, gm.shape)
    warped = {name: ndimage.map_coordinates(m, coords, order=1, mode="constant", prefilter=False)
              for name, m in (("gm", gm), ("wm", wm), ("csf", csf))}
    out = {name: np.zeros(brain.shape, np.float32) for name in ("gm", "wm", "csf")}
    for name, m in warped.items():
        out[name][box] = m
    tissue = out["gm"] + out["wm"] + out["csf"]
    out["brain"] = filled(tissue > 0.5).astype(np.float32)
    for name in ("gm", "wm", "csf"):
        out[name] *= out["brain"]
    return out


def _deformation(rng: np.random.Generator, shape: tuple) -> np.ndarray:
    """(3, *shape) sampling coordinates: a random affine about the centre plus a smooth warp."""
    centre = (np.array(shape, np.float32) - 1) / 2
    angles = np.deg2rad(rng.uniform(-8, 8, size=3))
    rotation = np.eye(3)
    for axis, angle in enumerate(angles):
        i, j = [a for a in range(3) if a != axis]
        turn = np.eye(3)
        turn[i, i] = turn[j, j] = np.cos(angle)
        turn[i, j], turn[j, i] = -np.sin(angle), np.sin(angle)
        rotation = rotation @ turn
    matrix = (rotation / rng.uniform(0.9, 1.1, size=3)[None, :]).astype(np.float32)
    grid = np.indices(shape, dtype=np.float32).reshape(3, -1) - centre[:, None]
    coords = (matrix @ grid + centre[:, None]).reshape(3, *shape)
    amplitude = rng.uniform(0, 3.0)
    for axis in range(3):
        coords[axis] += amplitude * smooth_field(rng, shape, (6, 6, 5))
    return coords


# ---- 2. tumours -------------------------------------------------------------------------------------

def lesion(rng: np.random.Generator, maps: dict, centre: np.ndarray, radius: float,
           edema_reach: float, core: str, necrosis: float) -> tuple:
    """(labels in a box, the box): one lesion of core radius `radius` voxels around `centre`.

    core "rim": enhancing rim (4) around necrosis (1) out to `necrosis` of the radius; "solid":
    all enhancing; "nonenhancing": all label 1. Edema (2) out to `edema_reach` radii, in
    grey or white matter only; nothing outside the brain.
    """
    half = int(np.ceil(radius * (1.4 * edema_reach + 0.6))) + 2
    box = tuple(slice(max(int(c) - half, 0), min(int(c) + half + 1, s))
                for c, s in zip(centre, maps["brain"].shape))
    grids = np.meshgrid(*[np.arange(b.start, b.stop, dtype=np.float32) for b in box], indexing="ij")
    shape = grids[0].shape
    stretch = rng.uniform(0.7, 1.35, size=3)
    distance = np.sqrt(sum(((g - c) / s) ** 2 for g, c, s in zip(grids, centre, stretch))) / radius
    coarse = max(3, int(radius // 2))
    inner = distance * (1 + 0.3 * smooth_noise(rng, shape, coarse))
    outer = distance * (1 + 0.4 * smooth_noise(rng, shape, coarse + 1))
    tissue = maps["gm"][box] + maps["wm"][box]
    labels = np.zeros(shape, np.uint8)
    labels[(outer < edema_reach) & (tissue > 0.35)] = 2
    labels[inner < 1] = {"rim": 4, "solid": 4, "nonenhancing": 1}[core]
    if core == "rim":
        labels[inner < necrosis] = 1
    labels[maps["brain"][box] < 0.5] = 0
    return labels, box


def _merge(labels: np.ndarray, tumour: np.ndarray, box: tuple) -> None:
    """Paste a lesion into `labels`; where lesions meet the more severe label wins."""
    severity = np.array([0, 2, 1, 0, 3], np.uint8)  # ET > necrosis > edema
    region = labels[box]
    labels[box] = np.where(severity[tumour] > severity[region], tumour, region)


def tumour(rng: np.random.Generator, maps: dict, kind: str) -> np.ndarray:
    """uint8 BraTS 2020 labels of one tumour `kind` placed in this anatomy."""
    labels = np.zeros(maps["brain"].shape, np.uint8)
    brain = maps["brain"] > 0.5
    if kind == "metastases":  # at the grey-white junction, anywhere in the brain
        junction = (maps["gm"] > 0.3) & (maps["wm"] > 0.3) & ndimage.binary_erosion(brain, iterations=8)
        sites = np.argwhere(junction[::2, ::2, ::2]) * 2
        for _ in range(int(rng.integers(1, 6))):
            radius = rng.uniform(2.5, 8)
            core = "solid" if radius < 4 else "rim"
            found = lesion(rng, maps, sites[rng.integers(len(sites))].astype(np.float32), radius,
                           rng.uniform(1.8, 4.0), core, rng.uniform(0.3, 0.7))
            _merge(labels, *found)
        return labels
    # Gliomas grow in the white matter, deep or just under the cortex (many LGGs are
    # cortical-subcortical): centres in white matter at least 5 mm inside the brain.
    hemispheres = (maps["wm"] > 0.5) & ndimage.binary_erosion(brain, iterations=5)
    sites = np.argwhere(hemispheres[::2, ::2, ::2]) * 2
    sites = sites[sites[:, 2] > maps["brain"].shape[2] // 4]  # above the skull base
    for number in range(2 if rng.random() < 0.15 else 1):
        radius = rng.uniform(8, 20) if number == 0 else rng.uniform(5, 9)
        core = "nonenhancing" if kind == "glioma-lgg" else "rim"
        found = lesion(rng, maps, sites[rng.integers(len(sites))].astype(np.float32), radius,
                       rng.uniform(1.15, 1.7), core, rng.uniform(0.4, 0.8))
        _merge(labels, *found)
    return labels


# ---- 3-5. appearance and acquisition ------------------------------------------------------------

def render(rng: np.random.Generator, maps: dict, labels: np.ndarray, kind: str, modality: str,
           vessels: np.ndarray, rim: np.ndarray) -> np.ndarray:
    """float32 (X, Y, Z): one modality with its own tissue means, texture and acquisition."""
    means = {t: rng.uniform(*r) for t, r in CONTRAST_RANGES[modality].items()}
    means["wm"] = 1.0
    parenchyma = max(means["gm"], means["wm"])
    means.update({t: parenchyma * rng.uniform(*r)
                  for t, r in ABOVE_PARENCHYMA.get(modality, {}).items()})
    box = _brain_box(maps["brain"] + rim > 0, margin=2)
    sub = lambda a: a[box]  # noqa: E731
    labels = sub(labels)
    texture = 1 + rng.uniform(0, 0.08) * smooth_field(rng, labels.shape, (24, 24, 16))
    image = sum(means[t] * sub(maps[t]) for t in ("csf", "gm", "wm")) * texture
    image = np.where(sub(vessels), means["vessel"] * texture, image)
    if labels.any():
        lesion_box = _brain_box(labels > 0, margin=4)
        image[lesion_box] = tumour_tissue(rng, labels[lesion_box], kind, means, image[lesion_box],
                                          texture[lesion_box])
    image += sub(rim) * means["extra"] * texture
    image = np.maximum(image, 0) ** np.exp(rng.normal(0, 0.2))
    image *= np.exp(rng.uniform(0, 0.25) * smooth_field(rng, image.shape, (4, 4, 3)))
    image = acquire(rng, image)
    out = np.zeros(maps["brain"].shape, np.float32)
    out[box] = image
    return out


def tumour_tissue(rng: np.random.Generator, labels: np.ndarray, kind: str, means: dict,
                  image: np.ndarray, texture: np.ndarray) -> np.ndarray:
    """`image` with the tumour's tissues mixed in, each label's share blurred at its border
    (partial volume, sigma 0.5-1.3 voxels). Label 1 is necrosis, or an LGG's solid core."""
    core = "nonenhancing" if kind == "glioma-lgg" else "necrosis"
    sigma = rng.uniform(0.5, 1.3)
    covered, mixed = np.zeros_like(image), np.zeros_like(image)
    for label, name in ((2, "edema"), (1, core), (4, "enhancing")):
        share = ndimage.gaussian_filter((labels == label).astype(np.float32), sigma)
        mixed += share * means[name] * texture
        covered += share
    return (1 - np.minimum(covered, 1)) * image + mixed


def acquire(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Resolution and noise: thick axial slices (p THICK_SLICES) back on 1 mm, blur, Rician noise."""
    if rng.random() < THICK_SLICES:
        image = thick_slices(image, rng.uniform(3, 7), rng.uniform(0, 1))
    blur = rng.uniform(0, 0.8)
    if blur > 0.1:
        image = ndimage.gaussian_filter(image, (blur, blur, 0))
    sigma = rng.uniform(0.005, 0.06)
    real = image + sigma * rng.standard_normal(image.shape, dtype=np.float32)
    imaginary = sigma * rng.standard_normal(image.shape, dtype=np.float32)
    return np.sqrt(real * real + imaginary * imaginary)


def thick_slices(image: np.ndarray, thickness: float, phase: float) -> np.ndarray:
    """Slices `thickness` mm thick (Gaussian profile, FWHM = thickness) every `thickness` mm
    along z from `phase` x thickness on, linearly interpolated back to every 1 mm plane."""
    blurred = ndimage.gaussian_filter1d(image, thickness / 2.355, axis=2)
    depth = image.shape[2]
    centres = np.arange(phase * thickness, depth - 1, thickness)
    slices = _linear(blurred, centres)
    return _linear(slices, np.clip((np.arange(depth) - centres[0]) / thickness, 0,
                                   len(centres) - 1))


def _linear(volume: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """volume (X, Y, Z) sampled at fractional z `positions` (within [0, Z - 1]), linearly."""
    below = np.minimum(np.floor(positions).astype(int), volume.shape[2] - 1)
    above = np.minimum(below + 1, volume.shape[2] - 1)
    weight = (positions - below).astype(np.float32)
    return volume[..., below] * (1 - weight) + volume[..., above] * weight


def vessels(rng: np.random.Generator, maps: dict) -> np.ndarray:
    """bool (X, Y, Z): tubes near the brain surface and choroid plexus in the ventricles
    (present in about 70% of cases): where two smooth random fields both cross zero."""
    brain = maps["brain"] > 0.5
    found = np.zeros(brain.shape, bool)
    if rng.random() > 0.7:
        return found
    box = _brain_box(brain, margin=0)
    shape = brain[box].shape
    first, second = (smooth_field(rng, shape, (18, 18, 12)) for _ in range(2))
    tubes = (np.abs(first) < 0.12) & (np.abs(second) < 0.12)
    inside = brain[box]
    shell = inside & ~ndimage.binary_erosion(inside, iterations=4)
    plexus = (maps["csf"][box] > 0.6) & ndimage.binary_erosion(inside, iterations=16)
    found[box] = tubes & (shell | (plexus & (rng.random() < 0.6)))
    return found


def skull_strip(rng: np.random.Generator, brain: np.ndarray) -> tuple:
    """(mask kept, extra-cerebral rim inside it): a loose mask leaves a rim of dura and scalp in
    random places (p 0.5), a tight one cuts 1-3 mm of cortex in others (p 0.3)."""
    brain = brain > 0.5
    box = _brain_box(brain, margin=6)
    inside = brain[box]
    mask = inside.copy()
    if rng.random() < 0.5:
        grown = ndimage.binary_dilation(inside, iterations=int(rng.integers(1, 5)))
        mask |= grown & (smooth_field(rng, inside.shape, (6, 6, 5)) > rng.uniform(-0.5, 1.0))
    if rng.random() < 0.3:
        shrunk = ndimage.binary_erosion(inside, iterations=int(rng.integers(1, 4)))
        mask &= shrunk | (smooth_field(rng, inside.shape, (6, 6, 5)) < 0.8)
    full, rim = np.zeros(brain.shape, bool), np.zeros(brain.shape, np.float32)
    full[box] = mask
    rim[box] = (mask & ~inside).astype(np.float32)
    return full, rim


def randomised_case(rng: np.random.Generator, maps: dict) -> tuple:
    """(images: modality -> float32 (X, Y, Z), labels uint8 (X, Y, Z), kind): steps 1-5 above."""
    kind = KINDS[rng.choice(len(KINDS), p=KIND_SHARES)]
    anatomy = vary_anatomy(rng, maps)
    labels = tumour(rng, anatomy, kind)
    mask, rim = skull_strip(rng, anatomy["brain"])
    bright = vessels(rng, anatomy) & (labels == 0)
    labels[~mask] = 0
    images = {}
    for modality in MODALITIES:
        image = render(rng, anatomy, labels, kind, modality, bright, rim)
        image[~mask] = 0
        images[modality] = image
    return images, labels, kind


# ---- on the fly, on cached volumes -----------------------------------------------------------------

def jitter(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A z-scored cached crop (H, W, D, C), 0 off the brain, seen through another acquisition:
    per channel a gamma, a smooth bias field, thicker slices (blur along D, p 0.5) and noise,
    then z-scored over the brain again. Cheap enough for every training step (train.randomise)."""
    brain = np.any(image != 0, axis=-1)
    if brain.sum() < 2:
        return image
    out = np.zeros_like(image, dtype=np.float32)
    for channel in range(image.shape[-1]):
        values = image[..., channel]
        low, high = np.percentile(values[brain], (0.5, 99.5))
        scaled = np.clip((values - low) / max(high - low, 1e-6), 0, 1) ** np.exp(rng.normal(0, 0.25))
        scaled = scaled * np.exp(rng.uniform(0, 0.2) * smooth_field(rng, values.shape, (3, 3, 3)))
        if rng.random() < 0.5:
            scaled = ndimage.gaussian_filter1d(scaled, rng.uniform(0.3, 1.2), axis=2)
        scaled = scaled + rng.uniform(0, 0.03) * rng.standard_normal(scaled.shape, dtype=np.float32)
        inside = scaled[brain]
        out[..., channel][brain] = (inside - inside.mean()) / max(float(inside.std()), 1e-6)
    return out
