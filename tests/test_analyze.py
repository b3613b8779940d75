"""analyze.py: the ablation of the 2D branch and the 3D skips, and the tumour contrast."""
import csv

import numpy as np
import pytest

import analyze
from systems import een
from util.config import load_config

pytestmark = pytest.mark.usefixtures("eager")  # analyze.py's numbers are under test, not its speed


def test_dice_counts_both_empty_as_one():
    empty = np.zeros((4, 4), bool)
    full = np.ones((4, 4), bool)
    assert analyze.dice(empty, empty) == 1.0
    assert analyze.dice(full, empty) == 0.0
    half = full.copy()
    half[:2] = False
    assert analyze.dice(full, half) == 2 * 8 / (16 + 8)


def test_tumour_contrast_sees_a_bright_tumour_and_not_a_flat_image():
    volume = np.zeros((16, 16, 6, 1), np.float32)
    volume[2:14, 2:14] = 1.0  # the brain
    regions = np.zeros((16, 16, 6, 3), np.uint8)
    regions[6:10, 6:10, :, 0] = 1  # the tumour, in every depth slab
    rng = np.random.default_rng(0)
    image = rng.normal(0, 1, (16, 16, 3)).astype(np.float32)
    assert analyze.tumour_contrast(image, volume, regions) < 1.0
    image[6:10, 6:10] += 10
    assert analyze.tumour_contrast(image, volume, regions) > 5.0
    assert analyze.tumour_contrast(np.ones((16, 16, 3)), volume, regions) == 0.0
    assert np.isnan(analyze.tumour_contrast(image, volume, np.zeros_like(regions)))


def test_ablation_models_zero_the_2d_branch_and_remove_the_skips(tmp_path):
    config = load_config("configs/small.yaml")
    trained = een.build_model(config)
    trained.save_weights(tmp_path / "w.weights.h5")
    models = analyze.ablation_models(config, tmp_path / "w.weights.h5")
    decoded = models["no_2d"].get_layer(een.DECODED_IMAGE).get_weights()
    assert all(not w.any() for w in decoded)
    x = np.random.default_rng(1).normal(size=(1, 64, 64, 48, 1)).astype(np.float32)
    outputs = {m: np.asarray(model.predict_on_batch(x)) for m, model in models.items()}
    np.testing.assert_allclose(outputs["full"], np.asarray(trained.predict_on_batch(x)), atol=1e-5)
    assert not np.allclose(outputs["full"], outputs["no_2d"], atol=1e-4)
    assert not np.allclose(outputs["full"], outputs["no_3d_skips"], atol=1e-4)


def test_analyze_a_trained_run(trained_run, capsys):
    """The learning check's FLAIR run: table printed, CSV written, the 2D branch carries the tumour.

    With the small config's skip dropout the branch alone segments and its decoded image shows the
    tumour (docs/findings.md, "Making the 2D branch matter": 0.35 and contrast 5-7, against 0.00 and below 1
    for the paper's settings).
    """
    assert analyze.main(["--run", str(trained_run)]) == 0
    printed = capsys.readouterr().out
    assert "| flair | no_2d |" in printed and "| flair | no_3d_skips |" in printed
    with open(trained_run / "ablation.csv") as handle:
        rows = {row["mode"]: row for row in csv.DictReader(handle)}
    assert set(rows) == {"full", "no_2d", "no_3d_skips"}
    assert float(rows["full"]["drop"]) == 0.0
    assert float(rows["full"]["WT"]) > 0.5
    assert float(rows["no_3d_skips"]["WT"]) > 0.2  # the 2D branch alone finds the tumour
    assert float(rows["full"]["compressed_contrast"]) > 1.0  # the backbone sees the tumour
    assert float(rows["full"]["decoded_contrast"]) > 1.5  # and hands it back


def test_unknown_network_and_missing_run_are_one_line(trained_run, tmp_path, capsys):
    import pytest

    with pytest.raises(SystemExit) as exit_info:
        analyze.main(["--run", str(trained_run), "--networks", "t2"])
    assert exit_info.value.code == 2
    assert "no network t2" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        analyze.main(["--run", str(tmp_path)])
    assert "not a run folder" in capsys.readouterr().err


def test_an_unwritable_csv_is_refused_before_scoring(trained_run, tmp_path, capsys):
    import pytest

    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(SystemExit) as exit_info:
        analyze.main(["--run", str(trained_run), "--out", str(blocker / "ablation.csv")])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert "a_file" in captured.err and "| flair |" not in captured.out


def test_damaged_run_files_are_one_line_before_scoring(trained_run, tmp_path, capsys):
    """config.yaml, split.json, network.json and best.weights.h5 cut in half or foreign."""
    from tests.conftest import cut, linked_copy, one_line_error

    def refused(edit) -> str:
        run = linked_copy(trained_run, tmp_path / f"run{len(list(tmp_path.iterdir()))}")
        edit(run)
        return one_line_error(capsys, analyze.main, ["--run", run])

    assert "config.yaml: " in refused(lambda run: cut(run / "config.yaml"))
    assert "split.json: damaged" in refused(lambda run: cut(run / "split.json"))
    assert "split.json: damaged or not this kind of file (no valid validation)" in refused(
        lambda run: (run / "split.json").write_text('{"train": []}'))
    assert "network.json: names modalities t2" in refused(
        lambda run: (run / "flair" / "network.json").write_text('{"modalities": ["t2"]}'))
    assert "best.weights.h5: damaged" in refused(lambda run: cut(run / "flair" / "best.weights.h5"))


def test_flair_yardstick_and_region_report():
    from scoring.unlabelled import flair_lesion, region_report

    rng = np.random.default_rng(0)
    flair = np.zeros((40, 40, 30), np.float32)
    flair[5:35, 5:35, 5:25] = rng.normal(100, 5, (30, 30, 20))
    flair[10:18, 10:18, 10:16] += 60  # the lesion
    flair[30, 30, 20] += 80  # a single bright voxel: not a lesion
    lesion = flair_lesion(flair, 2.0)
    assert lesion.sum() > 0.75 * 8 * 8 * 6 and not lesion[30, 30, 20]
    labels = np.zeros(flair.shape, np.uint8)
    labels[10:18, 10:18, 10:16] = 2
    labels[12:16, 12:16, 12:14] = 4
    report = region_report(labels, lesion)
    assert report["WT"] == 8 * 8 * 6 and report["ET"] == report["TC"] == 4 * 4 * 2
    assert report["WT in lesion"] == lesion.sum() and report["Dice WT vs lesion"] > 0.85
    assert region_report(np.zeros_like(labels), lesion)["Dice WT vs lesion"] == 0.0


def test_a_case_without_labels_is_reported_with_overlays(trained_run, tmp_path, capsys):
    """analyze.py --unlabelled: per network and their average, voxels per region and overlap
    with the FLAIR yardstick, overlays and intensity histograms written."""
    import synthetic

    cases = tmp_path / "cases"
    list(synthetic.write_dataset(cases, 1, 23, "brats2020", validation=True))
    out = tmp_path / "report"
    assert analyze.main(["--run", str(trained_run), "--unlabelled", str(cases), "--out",
                         str(out)]) == 0
    with open(out / "unlabelled.csv") as handle:
        rows = {row["network"]: row for row in csv.DictReader(handle)}
    assert set(rows) == {"flair", "average"}
    assert int(rows["flair"]["WT in lesion"]) > 0 and float(rows["flair"]["Dice WT vs lesion"]) > 0.2
    case_id = synthetic.case_id("brats2020", 1, True)
    assert (out / f"{case_id}_overlays.png").stat().st_size > 10_000
    assert (out / "intensity_histograms.png").is_file()
    assert "| flair |" in capsys.readouterr().out
