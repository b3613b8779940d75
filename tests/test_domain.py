"""Domain randomisation (datasets/domain.py): each step changes the images within sane ranges,
labels stay consistent, everything is deterministic per seed. On a small toy anatomy (fast)."""
import dataclasses

import numpy as np
import pytest
from scipy import ndimage

import synthetic
from datasets import domain
from datasets.pipeline import CaseBatches
from util.config import load_config

SHAPE = (72, 72, 56)


@pytest.fixture(scope="module")
def maps():
    """A toy brain: white-matter ellipsoid, grey-matter shell, CSF ventricles and surface."""
    grid = np.indices(SHAPE, dtype=np.float32)
    centre = (np.array(SHAPE, np.float32) - 1)[:, None, None, None] / 2
    radius = np.sqrt((((grid - centre) / np.array([30, 33, 25])[:, None, None, None]) ** 2).sum(0))
    brain = (radius < 1).astype(np.float32)
    ventricles = np.sqrt((((grid - centre) / np.array([4, 11, 5])[:, None, None, None]) ** 2).sum(0)) < 1
    csf = np.clip(ventricles + (radius > 0.93), 0, 1) * brain
    gm = ((radius > 0.78) & (radius <= 0.93)).astype(np.float32) * brain
    gm = np.clip(ndimage.gaussian_filter(gm, 1.0) * brain - csf, 0, 1)
    wm = np.clip(brain - gm - csf, 0, 1)
    return {"brain": brain, "gm": gm, "wm": wm, "csf": csf}


def mean(image, mask):
    return float(image[mask].mean())


def test_deterministic_per_seed_and_seeds_differ(maps):
    a = domain.randomised_case(np.random.default_rng([3, 1]), maps)
    b = domain.randomised_case(np.random.default_rng([3, 1]), maps)
    c = domain.randomised_case(np.random.default_rng([3, 2]), maps)
    np.testing.assert_array_equal(a[1], b[1])
    for modality in a[0]:
        np.testing.assert_array_equal(a[0][modality], b[0][modality])
    assert not np.array_equal(a[0]["flair"], c[0]["flair"])


def test_each_case_has_its_own_anatomy_of_a_sane_size(maps):
    volumes, changed = [], []
    for seed in range(3):
        varied = domain.vary_anatomy(np.random.default_rng(seed), maps)
        volumes.append(varied["brain"].sum() / maps["brain"].sum())
        changed.append(np.mean(np.abs(varied["gm"] - maps["gm"])[maps["brain"] > 0]))
        total = varied["gm"] + varied["wm"] + varied["csf"]
        assert total.max() <= 1.01 and (total[varied["brain"] == 0] == 0).all()
    assert all(0.7 < v < 1.4 for v in volumes) and len(set(np.round(volumes, 4))) == 3
    assert min(changed) > 0.01


@pytest.mark.parametrize("kind", domain.KINDS)
def test_tumours_per_kind_nested_and_inside_the_brain(maps, kind):
    labels = domain.tumour(np.random.default_rng(4), maps, kind)
    assert set(np.unique(labels)) <= {0, 1, 2, 4} and (labels == 2).any()
    assert (labels[maps["brain"] < 0.5] == 0).all()
    if kind == "glioma-lgg":
        assert not (labels == 4).any() and (labels == 1).any()
    else:
        assert (labels == 4).any()
    if kind == "glioma-hgg":  # necrosis inside the enhancing rim
        core = ndimage.binary_erosion(labels == 1)
        assert core.any() and (ndimage.binary_dilation(labels == 1, iterations=3)
                               & (labels == 4)).any()


def test_tissue_contrast_per_modality_follows_real_scans(maps):
    """Whatever the draw, the tissue ordering real scans show survives the acquisition."""
    for seed in range(3):
        images, labels, kind = domain.randomised_case(np.random.default_rng([9, seed]), maps)
        healthy = labels == 0
        wm = (maps["wm"] > 0.95) & healthy & ndimage.binary_erosion(maps["wm"] > 0.5, iterations=3)
        edema = ndimage.binary_erosion(labels == 2) if (labels == 2).sum() > 200 else labels == 2
        assert mean(images["flair"], edema) > 1.1 * mean(images["flair"], wm), kind
        assert mean(images["t2"], edema) > 1.1 * mean(images["t2"], wm), kind
        if kind == "glioma-hgg":  # (a metastasis's thin rim may blur away in thick slices)
            assert mean(images["t1ce"], labels == 4) > 1.05 * mean(images["t1ce"], wm), kind
        for image in images.values():
            assert np.isfinite(image).all() and image.min() >= 0
            assert 0.1 < mean(image, wm) < 10


def test_acquisition_steps_change_images_visibly():
    rng = np.random.default_rng(0)
    image = np.ones(SHAPE, np.float32)
    image[::2] = 2  # fine stripes in x, constant along z
    thick = domain.thick_slices(image, 5.0, 0.3)
    np.testing.assert_allclose(thick, image, atol=1e-5)  # constant along z: nothing to blur
    layered = np.broadcast_to(np.arange(SHAPE[2], dtype=np.float32) % 2, SHAPE).copy()
    thick = domain.thick_slices(layered, 5.0, 0.3)
    assert np.abs(np.diff(thick, axis=2)).mean() < 0.1 * np.abs(np.diff(layered, axis=2)).mean()
    assert abs(thick.mean() - layered.mean()) < 0.05
    noisy = domain.acquire(rng, image * 1.0)
    assert 0.005 < np.abs(noisy - image).mean() < 0.5
    field = domain.smooth_field(rng, SHAPE, (4, 4, 3))
    assert abs(field.std() - 1) < 1e-3 and np.abs(np.diff(field, axis=0)).max() < 0.3


def test_filled_fills_the_holes_binary_fill_holes_fills():
    rng = np.random.default_rng(0)
    holes = 0
    for density in np.linspace(0.3, 0.7, 9):
        mask = ndimage.binary_dilation(rng.random((30, 31, 17)) < density)
        expected = ndimage.binary_fill_holes(mask)
        np.testing.assert_array_equal(domain.filled(mask), expected)
        holes += int((expected & ~mask).sum())
    assert holes > 20  # the masks had holes to fill, not only faces to keep


def test_skull_stripping_is_imperfect_but_close(maps):
    differs = 0
    for seed in range(6):
        mask, rim = domain.skull_strip(np.random.default_rng(seed), maps["brain"])
        brain = maps["brain"] > 0.5
        assert (mask <= ndimage.binary_dilation(brain, iterations=4)).all()
        assert (ndimage.binary_erosion(brain, iterations=3) <= mask).all()
        assert ((rim > 0) == (mask & ~brain)).all()
        differs += not np.array_equal(mask, brain)
    assert differs >= 3


def test_synthetic_writes_the_randomised_world_as_int16(maps, monkeypatch):
    monkeypatch.setattr(synthetic, "anatomy", lambda: maps)
    case = synthetic.make_case.__wrapped__(5, 1, "randomised")
    again = synthetic.make_case.__wrapped__(5, 1, "randomised")
    assert case.kind in domain.KINDS and case.grade in ("HGG", "LGG")
    np.testing.assert_array_equal(case.labels, again.labels)
    for image in case.images.values():
        assert image.dtype == np.int16 and image.shape == SHAPE and image.min() >= 0
        assert (case.labels[image == 0] == 0).mean() > 0.99  # tumours lie on the kept brain


def test_jitter_is_another_acquisition_of_the_same_case():
    rng = np.random.default_rng(1)
    image = np.zeros((32, 32, 24, 1), np.float32)
    inside = np.zeros(image.shape[:3], bool)
    inside[4:28, 4:28, 3:21] = True
    image[inside, 0] = rng.standard_normal(inside.sum())
    image[10:16, 10:16, 8:14, 0] += 3  # a bright lesion
    out = domain.jitter(image, np.random.default_rng(2))
    assert (out[~inside] == 0).all()
    values = out[inside, 0]
    assert abs(values.mean()) < 1e-4 and abs(values.std() - 1) < 1e-3
    assert not np.allclose(values, image[inside, 0], atol=1e-2)
    lesion = np.zeros_like(inside)
    lesion[10:16, 10:16, 8:14] = True
    assert out[lesion, 0].mean() > out[inside & ~lesion, 0].mean() + 1


def test_training_batches_randomise_per_epoch_and_position():
    image = np.zeros((32, 32, 24, 1), np.float32)
    image[4:28, 4:28, 3:21] = np.random.default_rng(0).standard_normal((24, 24, 18, 1))
    regions = np.zeros((32, 32, 24, 3), np.uint8)
    sample = lambda case_id: (image, regions)  # noqa: E731
    plain = CaseBatches(sample, ["a", "b"], 1, shuffle=True)
    randomised = CaseBatches(sample, ["a", "b"], 1, shuffle=True, randomise=True)
    np.testing.assert_array_equal(plain[0][0][0], image)
    first = randomised[0][0]
    assert not np.allclose(first[0], image)
    np.testing.assert_array_equal(first, randomised[0][0])
    randomised.set_epoch(1)
    assert not np.array_equal(first, randomised[0][0])


def test_synth2real_configs_randomise_and_the_defaults_stay_plain():
    for name in ("synth2real", "synth2real_gpu"):
        config = load_config(f"configs/{name}.yaml")
        assert config.synthetic.world == "randomised" and config.train.randomise
    gpu, cpu = load_config("configs/synth2real_gpu.yaml"), load_config("configs/synth2real.yaml")
    same_network = dataclasses.replace(gpu.model, skip_dropout_decay_epochs=6)
    assert gpu.data == cpu.data and same_network == cpu.model
    assert gpu.train.epochs > cpu.train.epochs and gpu.synthetic.train_cases > cpu.synthetic.train_cases
    for name in ("paper", "authors_code", "small"):
        config = load_config(f"configs/{name}.yaml")
        assert config.synthetic.world == "plain" and not config.train.randomise
