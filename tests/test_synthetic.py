"""The synthetic generator: deterministic, BraTS-like contrasts, geometry and tumour kinds."""
import numpy as np
from scipy import ndimage

import synthetic
from tests.conftest import SEED


def tissue_mean(image, mask):
    return float(image[mask].mean())


def test_same_seed_same_case_and_seeds_differ():
    a = synthetic.make_case.__wrapped__(SEED, 1)
    b = synthetic.make_case.__wrapped__(SEED, 1)
    c = synthetic.make_case.__wrapped__(SEED + 1, 1)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.images["t2"], b.images["t2"])
    assert not np.array_equal(a.labels, c.labels)


def test_the_templates_are_the_ones_nilearn_loads():
    from nilearn import datasets

    templates = synthetic.mni152_templates()
    loaded = {"gm": datasets.load_mni152_gm_template(resolution=1),
              "wm": datasets.load_mni152_wm_template(resolution=1),
              "brain": datasets.load_mni152_brain_mask(resolution=1)}
    for name, image in loaded.items():
        np.testing.assert_array_equal(templates[name], image.get_fdata().astype(np.float32))
    assert 1.2e6 < templates["brain"].sum() < 2.5e6  # a brain's 1.2-2.5 litres, at 1 mm


def test_contrasts_follow_tissue_ordering():
    case = synthetic.make_case(SEED, 1)
    maps = synthetic.anatomy()
    healthy = case.labels == 0
    wm, gm = (maps["wm"] > 0.9) & healthy, (maps["gm"] > 0.9) & healthy
    csf = (maps["csf"] > 0.9) & healthy
    t1, t2, flair, t1ce = (case.images[m].astype(np.float32) for m in ("t1", "t2", "flair", "t1ce"))
    assert tissue_mean(t1, wm) > tissue_mean(t1, gm) > tissue_mean(t1, csf)
    assert tissue_mean(t2, csf) > tissue_mean(t2, gm) > tissue_mean(t2, wm)
    assert tissue_mean(flair, csf) < tissue_mean(flair, wm)
    core = ndimage.binary_erosion(case.labels == 2, iterations=1)
    assert tissue_mean(flair, core) > 1.3 * tissue_mean(flair, wm)
    if (case.labels == 4).any():
        assert tissue_mean(t1ce, case.labels == 4) > 1.2 * tissue_mean(t1ce, wm)


def test_images_are_int16_skull_stripped_with_case_specific_scales():
    scales = []
    for index in (1, 2, 3):
        case = synthetic.make_case(SEED, index)
        for image in case.images.values():
            assert image.dtype == np.int16 and image.shape == synthetic.GRID
            assert image.min() >= 0
        outside = ~ndimage.binary_dilation(synthetic.anatomy()["brain"] > 0, iterations=5)
        assert all((image[outside] == 0).all() for image in case.images.values())
        scales.append(np.percentile(case.images["t1"][case.images["t1"] > 0], 90))
    assert max(scales) / min(scales) > 1.1


def test_tumours_have_nested_structure_inside_the_brain():
    case = synthetic.make_case(SEED, 1)
    brain = synthetic.anatomy()["brain"] > 0
    shifted_brain = ndimage.binary_dilation(brain, iterations=5)
    assert ((case.labels > 0) <= shifted_brain).all()
    assert set(np.unique(case.labels)) <= {0, 1, 2, 4}
    assert (case.labels == 2).sum() > 1000 and (case.labels == 1).sum() > 50


def test_tumour_kinds_lgg_and_multifocal():
    rng = np.random.default_rng(0)
    lgg = synthetic.place_tumours(rng, lgg=True, multifocal=True)
    assert not (lgg == 4).any() and (lgg == 1).any()
    hgg = synthetic.place_tumours(np.random.default_rng(1), lgg=False, multifocal=False)
    assert (hgg == 4).any()
    _, components = ndimage.label(lgg > 0)
    kinds = [synthetic.draw_kind(np.random.default_rng([s, 1])) for s in range(400)]
    lgg_share = np.mean([k[0] for k in kinds])
    multifocal_share = np.mean([k[1] for k in kinds])
    assert 0.18 < lgg_share < 0.32 and 0.13 < multifocal_share < 0.27
    assert components >= 1


def test_ten_cases_cli(tmp_path):
    assert synthetic.main([str(tmp_path / "out"), "--cases", "2", "--seed", "3", "--jobs", "2"]) == 0
    assert len(list((tmp_path / "out").glob("*/*_flair.nii.gz"))) == 2


def test_class_proportions_are_brats_like():
    """Over a data set, TC/WT and ET/WT (HGG-like cases) near BraTS's 0.34 and 0.23."""
    written = []
    for index in range(1, 25):
        rng = np.random.default_rng([SEED, index])
        lgg, multifocal = synthetic.draw_kind(rng)
        labels = synthetic.place_tumours(rng, lgg, multifocal)
        written.append(synthetic.Written(str(index), "LGG" if lgg else "HGG",
                                         synthetic.label_counts(labels)))
    found = synthetic.proportions(written)
    assert 0.28 <= found["TC/WT"] <= 0.42
    assert 0.18 <= found["ET/WT (HGG)"] <= 0.32
    volumes = [sum(w.counts[1:]) / 1000 for w in written]  # cm3 at 1 mm
    assert min(volumes) < 20 and max(volumes) > 50  # sizes vary


def test_cli_prints_the_proportions(tmp_path, capsys):
    assert synthetic.main([str(tmp_path / "out"), "--cases", "1", "--seed", "3"]) == 0
    assert "TC/WT" in capsys.readouterr().out
