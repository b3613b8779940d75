"""container/: the challenge entry point run as a process on a read-only input without network,
the MLCube task from the staged build context, and the image's pins (Docker itself does not run
here: the Dockerfile is parsed instead)."""
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import predict
import synthetic
from brats.cases import MODALITIES, find_cases
from brats.codings import CODINGS
from tests.conftest import SEED

ROOT = Path(__file__).resolve().parents[1]
ENTRY = ROOT / "container" / "entrypoint.py"
NAMES = ("flair", "t1", "t1ce", "t2")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A run of four small-config networks at a 32x32x48 crop (random weights: the test is about
    files, not about segmenting) and fitted ensemble weights."""
    import keras

    from model import build_model
    from util.config import load_config, save_config

    run = tmp_path_factory.mktemp("container") / "run"
    run.mkdir()
    config = load_config(ROOT / "configs" / "small.yaml")
    config.data.crop_size = [32, 32, 48]
    save_config(config, run / "config.yaml")
    model = build_model(config)
    for index, modality in enumerate(MODALITIES):
        rng = np.random.default_rng(index)
        for weights in model.weights:
            if weights.path.endswith("kernel"):  # four different networks
                value = keras.ops.convert_to_numpy(weights)
                weights.assign(value * rng.uniform(0.8, 1.2, value.shape).astype(value.dtype))
        (run / modality).mkdir()
        (run / modality / "network.json").write_text(json.dumps({"modalities": [modality]}))
        model.save_weights(run / modality / "best.weights.h5")
    weights = {region: dict(zip(NAMES, (0.4, 0.2, 0.3, 0.1))) for region in ("WT", "TC", "ET")}
    (run / "ensemble_weights.json").write_text(json.dumps({"weights": weights}))
    keras.backend.clear_session()
    return run


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    """BraTS 2025 input: a GLI case and a PED case (its files renamed), one folder each."""
    root = tmp_path_factory.mktemp("input") / "input"
    list(synthetic.write_dataset(root, 2, SEED + 5, "brats2023", validation=True))
    last = sorted(root.iterdir())[-1]
    ped = root / "BraTS-PED-00042-000"
    last.rename(ped)
    for path in ped.iterdir():
        path.rename(ped / path.name.replace(last.name, ped.name))
    return root


def isolated(command: list, readonly: Path) -> list:
    """`command` without network and with `readonly` mounted read-only (unshare, as root or in a
    user namespace); the machine's own checks of both run first, in the same namespaces. Where
    the machine allows no namespace (no unshare, user namespaces off) the command runs as it is:
    the input's chmod a-w then keeps a non-root user from writing."""
    user = [] if os.geteuid() == 0 else ["-r"]
    allowed = shutil.which("unshare") and subprocess.run(
        ["unshare", *user, "-n", "-m", "true"], capture_output=True).returncode == 0
    if not allowed:
        assert os.geteuid() != 0, "root without unshare: the input could be written"
        return [str(c) for c in command]
    probe = (f"mount --bind {readonly} {readonly} && mount -o remount,bind,ro {readonly} || exit 97; "
             f"touch {readonly}/probe 2>/dev/null && exit 98; "
             f"{sys.executable} -c 'import socket; socket.create_connection((\"1.1.1.1\", 53), 2)' "
             f"2>/dev/null && exit 99; exec \"$@\"")
    return ["unshare", *user, "-n", "-m", "sh", "-c", probe, "isolated", *map(str, command)]


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*")}


def test_the_2025_interface_on_a_read_only_input_without_network(tiny_run, cases, tmp_path):
    data = tmp_path / "input"
    shutil.copytree(cases, data)
    bad, source = data / "BraTS-GLI-00077-000", sorted(data.iterdir())[0]
    shutil.copytree(source, bad)
    for path in bad.iterdir():
        path.rename(bad / path.name.replace(source.name, bad.name))
    (bad / "BraTS-GLI-00077-000-t2w.nii.gz").write_bytes(b"truncated")
    for path in (data, *data.rglob("*")):
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    before, out = snapshot(data), tmp_path / "output"
    done = subprocess.run(isolated([sys.executable, ENTRY, "--run", tiny_run, "--input", data,
                                    "--output", out, "--no-tta"], data),
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr  # the bad case
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: BraTS-GLI-00077-000: cannot read")
    assert "Traceback" not in done.stderr and "fitted ensemble" in done.stdout
    good = [c for c in find_cases(cases)]
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{c.id}.nii.gz" for c in good)
    assert snapshot(data) == before
    reference = tmp_path / "predict"  # predict.py on the same cases: the same labels
    assert predict.main(["--run", str(tiny_run), "--input", str(cases), "--output",
                         str(reference), "--ensemble", "fitted",
                         "--ped-coding", "brats2024-ped"]) == 0
    for files in good:
        source, written = nib.load(files.images["t1"]), nib.load(out / f"{files.id}.nii.gz")
        labels = np.asanyarray(written.dataobj)
        assert labels.dtype == np.uint8 and labels.shape == source.shape == (240, 240, 155)
        np.testing.assert_array_equal(written.affine, source.affine)
        coding = "brats2024-ped" if "-PED-" in files.id else "brats2023"
        assert set(np.unique(labels)) <= set(CODINGS[coding].labels)
        np.testing.assert_array_equal(
            labels, np.asanyarray(nib.load(reference / f"{files.id}.nii.gz").dataobj))


def test_the_mlcube_task_runs_from_the_staged_build_context(tiny_run, cases, tmp_path):
    context = tmp_path / "context"
    done = subprocess.run([sys.executable, ENTRY, "stage", "--run", tiny_run, "--out", context],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    baked = sorted(str(p.relative_to(context / "run")) for p in (context / "run").rglob("*.*"))
    assert baked == sorted(["config.yaml", "ensemble_weights.json"]
                           + [f"{m}/{f}" for m in MODALITIES
                              for f in ("best.weights.h5", "network.json")])
    parameters = tmp_path / "parameters.yaml"
    parameters.write_text("tta: false\nensemble: plain\n")  # PED data, no ped_coding: refused
    data, out = tmp_path / "data", tmp_path / "predictions"
    shutil.copytree(cases / "BraTS-PED-00042-000", data / "BraTS-PED-00042-000")
    done = subprocess.run([sys.executable, ENTRY, "infer", "--run", tiny_run, "--data_path", data,
                           "--parameters_file", parameters, "--output_path", out],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and not out.exists(), done.stdout + done.stderr
    assert "--ped-coding" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    parameters.write_text("tta: false\nensemble: plain\nped_coding: brats2024-ped\n")
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, context / "container" / "entrypoint.py", "infer",
                           "--data_path", data, "--parameters_file", parameters,
                           "--output_path", out], capture_output=True, text=True, cwd=tmp_path,
                          timeout=300, env={**environment, "EEN_RUN": str(context / "run")})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "plain ensemble)" in done.stdout and str(context / "run") in done.stdout
    assert [p.name for p in out.iterdir()] == ["BraTS-PED-00042-000.nii.gz"]
    assert "brats2024-ped coding" in done.stdout
    parameters.write_text("tta: yes please\n")
    done = subprocess.run([sys.executable, ENTRY, "infer", "--run", tiny_run, "--data_path", data,
                           "--parameters_file", parameters, "--output_path", out],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert done.stderr.startswith(f"error: {parameters}: unknown parameter tta")


def test_the_image_installs_the_projects_pins_and_holds_what_stage_copies():
    dockerfile = (ROOT / "container" / "Dockerfile").read_text()
    base = re.search(r"^FROM python:(\d+\.\d+)", dockerfile, re.M).group(1)
    assert base == f"{sys.version_info.major}.{sys.version_info.minor}"
    installs = re.findall(r"pip install ([^\n\\]+)", dockerfile)
    assert installs == ["-r requirements.txt"]  # nothing installed beside the project's pins
    swap = re.search(r"sed -i '(s/\^tensorflow-cpu==/tensorflow\[and-cuda\]==/)'", dockerfile)
    assert swap, "the GPU build swaps only the TensorFlow package, at the same version"
    copied = set()
    for line in re.findall(r"^COPY (.+)$", dockerfile, re.M):
        copied |= set(line.split()[:-1])
    import importlib.util

    spec = importlib.util.spec_from_file_location("entrypoint", ENTRY)
    entry = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(entry)
    assert copied == set(entry.PROJECT) | {"run"}
    assert 'ENTRYPOINT ["python", "/opt/een/container/entrypoint.py"]' in dockerfile
    assert "EEN_RUN=/opt/een/run" in dockerfile
    make = subprocess.run(["make", "-n", "container", "RUN=runs/paper"], cwd=ROOT,
                          capture_output=True, text=True)
    assert "entrypoint.py stage --run runs/paper --out build/container" in make.stdout
    assert "docker build" in make.stdout
