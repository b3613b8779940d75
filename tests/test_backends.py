"""Every Keras backend: the same numbers, portable checkpoints, JAX over two processes.

A backend is chosen per process (KERAS_BACKEND before keras is imported): this process is
TensorFlow (conftest), JAX and PyTorch run in subprocesses. The configuration is tiny (32x32x12
crops, narrow layers, the same EfficientNet-B0 backbone) because JAX compiles slowly on a CPU;
XLA's CPU backend at optimisation level 0 compiles these programs several times faster.
"""
import socket
import subprocess
import sys
from pathlib import Path

import keras
import nibabel as nib
import numpy as np
import pytest

import predict
import synthetic
import train
from util.config import load_config
from datasets.cache import Cache
from tests.backend_probe import without_dropout
from tests.conftest import backend_env, write_tiny_cache, write_tiny_config
from systems import families, networks

ROOT = Path(__file__).resolve().parents[1]
OTHER_BACKENDS = ("jax", "torch")
# This process's TensorFlow reference step and predictions skip tracing (about 20 s): the numbers
# are under test, and JAX and PyTorch are compared with TensorFlow's own ops.
pytestmark = pytest.mark.usefixtures("eager")


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory) -> Path:
    return write_tiny_config(tmp_path_factory.mktemp("tiny") / "tiny.yaml", epochs=1,
                             validation_fraction=0.0)


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory, small_cache) -> Path:
    """Four cases of the small cache cut to 32x32x12 around their centre (FLAIR and regions)."""
    return write_tiny_cache(small_cache, tmp_path_factory.mktemp("tiny_cache") / "cache", 4)


def test_same_outputs_loss_and_checkpoints_on_every_backend(tmp_path, tiny_config, tiny_cache):
    """Weights and a compiled model saved under TensorFlow give, under JAX and PyTorch, the same
    output (1e-4), the same loss of a training step (stochastic depth off: its draws are each
    backend's own), the same step to 10%, and predict.py's probabilities from the .weights.h5
    file; train.py's resume jits the JAX step (the file's TensorFlow setting ran it op by op)."""
    config = load_config(tiny_config)
    cache = Cache(tiny_cache)
    x, y = (np.stack(a).astype(np.float32) for a in zip(
        *[(cache.image(i, ("flair",)), cache.regions(i)) for i in cache.ids[:2]]))
    np.savez(tmp_path / "batch.npz", x=x, y=y)
    network = without_dropout(train.compiled_model(config, False, None, None))
    network.save(tmp_path / "model.keras")
    files = [tiny_config, tmp_path / "model.keras", tmp_path / "step.weights.h5",
             tmp_path / "batch.npz"]
    reference = {"before": np.asarray(network.predict_on_batch(x))}
    reference["loss"] = float(network.train_on_batch(x, y, return_dict=True)["loss"])
    reference["after"] = np.asarray(network.predict_on_batch(x))
    network.save_weights(files[2])
    probes = {b: subprocess.Popen([sys.executable, "-m", "tests.backend_probe", *map(str, files),
                                   str(tmp_path / f"{b}.npz")], cwd=ROOT, env=backend_env(b),
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
              for b in OTHER_BACKENDS}
    loaded = networks.load_network("flair", ("flair",), files[2], config, "float32")
    reference["probabilities"] = predict.region_probabilities(loaded, {"flair": x[0, ..., 0]}, False)
    assert reference["loss"] > 0 and reference["before"].std() > 1e-3
    for backend, probe in probes.items():
        output = probe.communicate(timeout=600)[0]
        assert probe.returncode == 0, output[-3000:]
        result = np.load(tmp_path / f"{backend}.npz")
        assert str(result["backend"]) == backend
        # resumed as this backend trains, not as the file's backend compiled it (TensorFlow: no XLA)
        assert bool(result["jit"]) == (backend == "jax")
        np.testing.assert_allclose(result["before"], reference["before"], atol=1e-4)
        assert float(result["loss"]) == pytest.approx(reference["loss"], abs=1e-4)
        # Nadam's first step is about lr x sign(gradient), so weights whose gradient is near
        # zero may step either way: the step is compared as a whole, and all but a few voxels
        # within 1e-2 (2 of 73,728 outputs were 0.011 off in one run, the rest within 1e-5).
        step = np.abs(reference["after"] - reference["before"]).mean()
        moved = np.abs(result["after"] - reference["after"])
        assert moved.mean() < 0.1 * step and np.quantile(moved, 0.999) < 1e-2
        np.testing.assert_allclose(result["probabilities"], reference["probabilities"], atol=1e-4)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_jax_processes_train_like_one_and_the_run_predicts_under_tensorflow(
        tmp_path, tiny_config, tiny_cache):
    """Two JAX processes on 127.0.0.1 (one CPU device each, each reading its half of every global
    batch) end an epoch with identical weights, equal to one process with two devices and the
    same global batch; TensorFlow reads their .keras and predict.py segments with the run."""
    command = [sys.executable, "train.py", "--config", str(tiny_config), "--data",
               str(tiny_cache), "--verbose", "2"]
    address = f"127.0.0.1:{free_port()}"
    runs = {f"process{k}": command + ["--out", str(tmp_path / "run"), "--coordinator", address,
                                      "--num-processes", "2", "--process-id", str(k)]
            for k in range(2)}
    runs["one"] = command + ["--out", str(tmp_path / "one"), "--cpu-replicas", "2"]
    started = {name: subprocess.Popen(c, cwd=ROOT, env=backend_env("jax"), stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True)
               for name, c in runs.items()}
    for name, process in started.items():
        output = process.communicate(timeout=600)[0]
        assert process.returncode == 0, f"{name}: {output[-3000:]}"
        where = "in 2 processes" if name.startswith("process") else "(DataParallel)"
        assert "global batch 2 on 2 cpu device(s) " + where in output, output[-2000:]
    folders = [tmp_path / "run" / "flair", tmp_path / "run" / "process1" / "flair",
               tmp_path / "one" / "flair"]
    models = [keras.saving.load_model(f / "last.keras") for f in folders]
    assert models[0].jit_compile  # JAX's setting, kept in the file; a resume here drops XLA
    assert families.loaded_for_training(folders[0] / "last.keras", False).jit_compile is False
    assert [int(keras.ops.convert_to_numpy(m.optimizer.iterations)) for m in models] == [2, 2, 2]
    moments = [v for v in models[0].optimizer.variables if "momentum" in v.path]
    assert moments and all(np.any(keras.ops.convert_to_numpy(v)) for v in moments)  # it stepped
    weights = [m.get_weights() for m in models]
    for a, b, c in zip(*weights):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a, c, atol=1e-5)

    list(synthetic.write_dataset(tmp_path / "val", 1, 21, "brats2020", validation=True))
    assert predict.main(["--run", str(tmp_path / "run"), "--input", str(tmp_path / "val"),
                         "--output", str(tmp_path / "pred")]) == 0
    written = nib.load(tmp_path / "pred" / "BraTS20_Validation_001.nii.gz")
    assert written.shape == (240, 240, 155) and written.get_data_dtype() == np.uint8
