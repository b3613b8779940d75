"""figures.py draws what the scripts and notebooks show, and writes PNGs atomically."""
import numpy as np

from util import figures


def test_figures_are_written(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.random((40, 40, 30)).astype(np.float32)
    labels = np.zeros((40, 40, 30), np.uint8)
    labels[15:25, 15:25, 10:20] = 2
    labels[18:22, 18:22, 13:17] = 4
    overlay = figures.label_overlay(labels)
    assert overlay.shape == (40, 40, 30, 4)
    assert tuple(overlay[20, 20, 15, :3]) == figures.LABEL_COLOURS[4]  # enhancing is yellow
    assert tuple(overlay[16, 16, 11, :3]) == figures.LABEL_COLOURS[2]  # edema is green
    assert figures.tumour_centre(labels) == (19, 19, 14)
    paths = [figures.save(figures.case_overlays(image, labels, labels, "case"), tmp_path / "o.png"),
             figures.save(figures.feature_maps(image, image[..., :3], image[..., 3:6],
                                               np.stack([labels > 0] * 3, -1), "f"), tmp_path / "f.png")]
    (tmp_path / "h.csv").write_text("epoch,loss,val_loss,dice_wt,val_dice_wt\n0,0.5,0.6,0.3,0.2\n1,0.1,0.2,0.7,0.6\n")
    history = figures.read_history(tmp_path / "h.csv")
    np.testing.assert_array_equal(history["val_dice_wt"], [0.2, 0.6])
    paths.append(figures.save(figures.training_curves(history, "t"), tmp_path / "t.png"))
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*"))
