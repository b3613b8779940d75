"""compare.py --quick end to end (Ben naceur with and without its post-processings, the 3D U-Net
whose rate a range test chooses, and under make test-full the EEN ensemble; the peers nnU-Net v2
and MONAI's SegResNet: tests/test_compare_peers.py, a worker group of their own), a rerun that
trains nothing again, the note column, one-line refusals, and train.py's --max-minutes time
budget (on the tiny configuration). make test checks the EEN row's training on the tiny
configuration, in this process
(test_the_een_row_trains_four_networks_on_a_quarter_of_the_budget_each)."""
import csv
import json

import pytest

import compare
import train
from tests.conftest import FULL, built_once

# the EEN's row (four networks, 155 s of the quick run's 420 on a 2-core AVX2 CPU) under make
# test-full; make test trains it on the tiny configuration below
SYSTEMS = ("een," if FULL else "") + "bennaceur2020,bennaceur2020_nopp,unet3d_patches_tuned"


def quick_argv(out, data) -> list:
    """compare.py --quick on the shared quick data (conftest's quick_comparison_data)."""
    return ["--out", str(out), "--quick", "--systems", SYSTEMS, "--data", str(data / "data"),
            "--cache", str(data / "cache")]


@pytest.fixture(scope="module")
def quick(tmp_path_factory, quick_comparison_data):
    """One quick comparison: 4 training and 2 validation cases, one epoch per network; made once
    per run (built_once), since the worker may interleave other files between this file's tests."""
    def build(folder):
        assert compare.main(quick_argv(folder / "out", quick_comparison_data)) == 0

    return built_once(tmp_path_factory, "compare_quick", build) / "out"


def table(out) -> dict:
    with open(out / "compare.csv", newline="") as handle:
        return {row["system"]: row for row in csv.DictReader(handle)}


def test_quick_writes_the_table_with_a_row_per_system(quick):
    rows = table(quick)
    assert list(rows) == SYSTEMS.split(",")
    for name, row in rows.items():
        for region in ("ET", "WT", "TC"):
            assert 0 <= float(row[f"Dice_{region}_mean"]) <= 1
            assert 0 <= float(row[f"HD95_{region}_mean"]) <= 373.13
        assert int(row["scored_cases"]) == 2
        assert float(row["seconds_per_step"]) > 0 and float(row["seconds_per_case"]) > 0
        assert int(row["peak_bytes"]) > 100 * 2**20  # a process that ran Keras
        assert (quick / "results" / f"{name}.csv").is_file()
        assert len(list((quick / "predictions" / name).glob("*.nii.gz"))) == 2
    if FULL:
        assert rows["een"]["epochs"] == "1+1+1+1"  # four networks, one epoch each (--quick)
        assert int(rows["een"]["parameters"]) % 4 == 0
    assert int(rows["bennaceur2020"]["parameters"]) == 130_180  # the published network
    # Ben naceur is trained once and predicted twice
    assert rows["bennaceur2020"]["train_seconds"] == rows["bennaceur2020_nopp"]["train_seconds"]
    markdown = (quick / "compare.md").read_text()
    assert "--quick" in markdown and "| bennaceur2020_nopp |" in markdown
    assert "none available" in markdown
    assert (quick / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_tuned_row_trains_with_the_rate_its_range_test_chose(quick):
    import yaml

    sweep = json.loads((quick / "runs" / "unet3d_patches_tuned.lr_range.json").read_text())
    assert sweep["steps"] == compare.RANGE_STEPS[1] == len(sweep["losses"])
    assert 0 < sweep["chosen"] < sweep["rates"][-1]
    trained = yaml.safe_load((quick / "runs" / "unet3d_patches_tuned" / "config.yaml").read_text())
    assert trained["unet3d_patches"]["learning_rate"] == pytest.approx(sweep["chosen"])
    row = table(quick)["unet3d_patches_tuned"]
    assert f"rate {sweep['chosen']:.2g} chosen in {sweep['steps']} steps" in row["note"]


def test_range_test_picks_a_tenth_of_the_rate_at_the_smoothed_minimum(tmp_path, capsys):
    import numpy as np

    import lr_range
    from tests.conftest import one_line_error

    rates = lr_range.rates(1e-6, 1e-1, 51)
    assert rates[0] == pytest.approx(1e-6) and rates[-1] == pytest.approx(1e-1)
    assert np.allclose(rates[1:] / rates[:-1], 10 ** 0.1)
    falling_then_diverging = [1.0] * 20 + [1.0 - 0.04 * k for k in range(20)] + [2.0] * 11
    assert lr_range.chosen_rate(rates, np.array(falling_then_diverging)) == pytest.approx(
        rates[39] / 10, rel=0.3)  # the smoothed minimum lags the raw one by a step or two
    assert lr_range.chosen_rate(rates, np.array([1.0, 0.5, np.nan, 0.1])) == pytest.approx(
        rates[1] / 10)  # a non-finite loss ends the sweep
    error = one_line_error(capsys, lr_range.main, ["--config", "configs/kermi2018_small.yaml",
                                                   "--data", tmp_path, "--out", tmp_path / "x"])
    assert "kermi2018 is not trained with Adam" in error


def test_a_row_below_the_learning_bar_says_why():
    row = {"system": "unet3d_patches", "Dice_WT_mean": 0.009}
    assert "does not learn (Dice WT < 0.6): the published Adam 1e-5 is" in compare.note(row)
    assert "does not learn" not in compare.note({**row, "Dice_WT_mean": 0.8})
    assert compare.note({"system": "een_multimodal", "Dice_WT_mean": 0.1}) == (
        "does not learn (Dice WT < 0.6): cause not investigated")


def test_a_rerun_trains_and_predicts_nothing_again(quick, quick_comparison_data, capsys):
    kept = {p: p.stat().st_mtime_ns for p in [*quick.glob("runs/*/training.json"),
                                              *quick.glob("runs/*.log"),
                                              *quick.glob("predictions/*/*.nii.gz")]}
    before = table(quick)
    assert compare.main(quick_argv(quick, quick_comparison_data)) == 0
    assert f"{SYSTEMS.split(',')[0]}: result kept" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in kept} == kept
    assert table(quick) == before


def test_an_unfinished_training_is_started_afresh(tmp_path, quick, quick_comparison_data,
                                                   monkeypatch):
    """A run folder without training.json (a killed compare) is removed, then trained again.
    compare.trained with train.py run in this process rather than in compare's measured child
    (which every row of `quick` runs), and no prediction: the restart is what is under test."""
    import argparse
    import shutil

    monkeypatch.setattr(compare, "measured", in_process)
    paths = {"runs": tmp_path / "runs", "cache": quick_comparison_data / "cache"}
    run = paths["runs"] / "bennaceur2020"
    shutil.copytree(quick / "runs" / "bennaceur2020", run)
    (run / "training.json").unlink()  # killed before compare recorded the training
    (run / "stale.txt").write_text("from a killed run")
    args = argparse.Namespace(budget_minutes=0.5, epochs=1, quick=True)
    record = compare.trained("bennaceur2020", compare.SYSTEMS["bennaceur2020"], paths, args)
    assert not (run / "stale.txt").exists()
    assert record["epochs"] == [1] and record["parameters"] == 130_180
    assert json.loads((run / "training.json").read_text())["epochs"] == [1]
    assert len((run / "bennaceur2020" / "history.csv").read_text().splitlines()) == 2


def in_process(tool, argv, log):
    """compare.measured's stand-in: the tool's main() in this process."""
    import importlib

    status = importlib.import_module(tool).main([str(a) for a in argv])
    return {"status": status, "seconds": 1.0, "peak_bytes": 1, "argv": [str(a) for a in argv]}


def test_the_een_row_trains_four_networks_on_a_quarter_of_the_budget_each(
        tmp_path, small_cache, monkeypatch, eager):
    """compare.trained for the EEN's row: train.py --modality all in one run, each network with a
    quarter of the budget, the row's epochs one per network and its parameters four networks'.
    The tiny configuration (conftest), train.py in this process with eager steps; the quick
    comparison's EEN row end to end: make test-full."""
    import argparse
    import dataclasses

    from brats.cases import MODALITIES
    from tests.conftest import write_tiny_cache, write_tiny_config

    calls = []

    def recorded(tool, argv, log):
        calls.append(in_process(tool, argv, log))
        return calls[-1]

    monkeypatch.setattr(compare, "measured", recorded)
    config = write_tiny_config(tmp_path / "tiny.yaml", validation_fraction=0.0)
    paths = {"runs": tmp_path / "runs",
             "cache": write_tiny_cache(small_cache, tmp_path / "cache", 2, MODALITIES)}
    system = dataclasses.replace(compare.SYSTEMS["een"], config=str(config))
    args = argparse.Namespace(budget_minutes=2.0, epochs=1, quick=True)
    record = compare.trained("een", system, paths, args)
    [call] = calls
    assert call["argv"][call["argv"].index("--max-minutes") + 1] == "0.5"
    assert call["argv"][call["argv"].index("--modality") + 1] == "all"
    assert record["epochs"] == [1, 1, 1, 1]
    assert record["parameters"] % 4 == 0 and record["parameters"] > 4 * 100_000
    assert sorted(p.parent.name for p in (paths["runs"] / "een").glob("*/best.weights.h5")) == [
        "flair", "t1", "t1ce", "t2"]


def test_bad_output_and_unknown_system_are_one_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SystemExit) as stop:
        compare.main(["--out", str(blocker / "out"), "--quick"])
    assert stop.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error:") and str(blocker) in error and "\n" not in error
    with pytest.raises(SystemExit):
        compare.main(["--out", str(tmp_path / "x"), "--systems", "een,nosuch"])
    error = capsys.readouterr().err.strip()
    assert error == ("error: --systems: unknown system nosuch (known: "
                     + ", ".join(compare.SYSTEMS) + ")")


def test_train_max_minutes_stops_after_the_epoch_past_the_budget(tmp_path, small_cache):
    """train.py's --max-minutes, which every row's training gets: the budget is checked after
    each epoch. The tiny configuration, eager steps (the budget is under test, not the steps)."""
    from tests.conftest import steps_run_eagerly, write_tiny_cache, write_tiny_config

    config = write_tiny_config(tmp_path / "tiny.yaml", validation_fraction=0.0)
    cache, out = write_tiny_cache(small_cache, tmp_path / "cache", 2), tmp_path / "run"
    with steps_run_eagerly(True):
        assert train.main(["--config", str(config), "--data", str(cache), "--out", str(out),
                           "--epochs", "3", "--max-minutes", "0.0001", "--verbose", "0"]) == 0
    assert json.loads((out / "flair" / "state.json").read_text())["epochs_done"] == 1
    with open(out / "flair" / "history.csv", newline="") as handle:
        (row,) = list(csv.DictReader(handle))
    assert int(float(row["steps"])) == 2
    assert 0 < float(row["train_seconds"]) <= float(row["epoch_seconds"])


def test_damaged_files_of_its_runs_and_results_are_one_line(tmp_path, capsys):
    """A result or training record cut in half is refused in one line (delete it to redo the
    system); so are a run's history.csv, network.json and config.yaml when they are read."""
    from util.runfolder import RunFileError
    from tests.conftest import cut, one_line_error

    data, cache, out = tmp_path / "data", tmp_path / "cache", tmp_path / "out"
    for folder in ("train", "validation", "validation_ground_truth"):
        (data / folder).mkdir(parents=True)
    cache.mkdir()
    argv = ["--out", out, "--systems", "bennaceur2020", "--data", data, "--cache", cache]
    (out / "results").mkdir(parents=True)
    (out / "results" / "bennaceur2020.json").write_text('{"system": "bennaceur2020", "scor')
    error = one_line_error(capsys, compare.main, argv)
    assert "bennaceur2020.json: damaged" in error and "delete it to train and score" in error
    (out / "results" / "bennaceur2020.json").unlink()
    run = out / "runs" / "bennaceur2020"
    (run / "bennaceur2020").mkdir(parents=True)
    (run / "training.json").write_text("")
    assert "training.json: empty; delete" in one_line_error(capsys, compare.main, argv)

    (run / "bennaceur2020" / "network.json").write_text(
        json.dumps({"modalities": ["flair", "t1", "t1ce", "t2"]}))
    history = run / "bennaceur2020" / "history.csv"
    history.write_text("epoch,loss,steps,train_seconds,epoch_seconds\n0,0.5,4,2.0,3.0\n")
    assert compare.network_timings(run)["epochs"] == [1]
    cut(history)
    with pytest.raises(RunFileError, match="history.csv: empty or damaged .*; delete"):
        compare.network_timings(run)
    with pytest.raises(RunFileError, match="config.yaml: missing; delete"):
        compare.parameters(run)


def test_the_note_gives_this_runs_figures_and_calls_a_written_cause_an_earlier_one():
    """issue 31: a cause shown for a row comes from that run's predictions or says it is an
    earlier diagnosis; a region predicted in no case is named, for nnU-Net with its own files'."""
    figures = {"cases": 6, "predicted": {"WT": 250_000.0, "TC": 90_000.0, "ET": 8_000.0},
               "truth": {"WT": 60_000.0, "TC": 20_000.0, "ET": 9_000.0},
               "missing": {"WT": 0, "TC": 0, "ET": 1}, "healthy_marked": 0.1,
               "false_positive_share_in_free_tiles": 0.7}
    tuned = compare.note({"system": "unet3d_patches_tuned", "Dice_WT_mean": 0.22,
                          "measured": figures})
    assert "(an earlier diagnosis, from another run)" in tuned
    assert ("this run's 6 predictions: voxels per case WT 250,000 (truth 60,000)" in tuned
            and "10.0 % of the healthy voxels marked WT, 70 % of those in tumour-free" in tuned)
    assert "earlier diagnosis" in compare.note({"system": "unet3d_patches_tuned",
                                                "Dice_WT_mean": 0.22})  # a row kept from before
    no_core = {**figures, "predicted": {**figures["predicted"], "TC": 0.0, "ET": 0.0},
               "missing": {"WT": 0, "TC": 6, "ET": 6},
               "own_output": {"cases": 6, "WT": 59_000.0, "TC": 0.0, "ET": 0.0}}
    nnunet = compare.note({"system": "nnunet", "Dice_WT_mean": 0.8, "measured": no_core})
    assert "no TC or ET predicted in any case" in nnunet
    assert "nnU-Net's own output files: voxels per case WT 59,000, TC 0, ET 0" in nnunet
    assert compare.note({"system": "nnunet", "Dice_WT_mean": 0.8, "measured": figures}) == ""


def test_each_row_records_what_its_predictions_hold(quick):
    for name in SYSTEMS.split(","):
        figures = json.loads((quick / "results" / f"{name}.json").read_text())["measured"]
        assert figures["cases"] == 2 and set(figures["predicted"]) == {"WT", "TC", "ET"}


def test_a_measured_process_reports_its_own_peak_memory(tmp_path):
    """A row's peak memory is its own process's: with ru_maxrss, a child that subprocess starts
    (vfork) reported this 1 GB test process's peak as its own."""
    import numpy as np

    from util.measure import measured

    held = np.ones(2**27)  # 1 GiB, touched
    result = measured("synthetic", ["--help"], tmp_path / "help.log")
    assert result["status"] == 0
    assert 10 * 2**20 < result["peak_bytes"] < held.nbytes // 2, result
