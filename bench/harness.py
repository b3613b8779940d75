"""What the benchmarks share: each row runs in its own process, so its peak memory is its own."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the project's packages, for a script run as bench/NAME.py

from util.measure import peak_resident_bytes  # noqa: E402
from util.tensorflow_start import onednn_kernels  # noqa: E402

onednn_kernels()  # as the commands run TensorFlow, in this process and the rows' (inherited)


def peak_gb() -> float:
    """Peak memory in GB where the work ran: the GPU's peak allocation when Keras's backend used
    one, else this process's peak resident memory (max RSS; model and data included)."""
    gpu = gpu_in_use()
    if gpu is not None:
        return gpu[1] / 1e9
    return peak_resident_bytes() / 1e9


def device_name() -> str:
    """What ran the work: the GPU's name, or the number of CPU cores."""
    import keras

    gpu = gpu_in_use()
    return gpu[0] if gpu is not None else f"{os.cpu_count()} CPU cores ({keras.backend.backend()})"


def gpu_in_use() -> tuple | None:
    """(name, peak allocated bytes) of the first GPU under the current Keras backend; None
    when the backend runs on the CPU."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        if device.platform != "gpu":
            return None
        return f"{device.device_kind} (JAX)", device.memory_stats()["peak_bytes_in_use"]
    if backend == "torch":
        import torch

        if not torch.cuda.is_available():
            return None
        return f"{torch.cuda.get_device_name()} (PyTorch)", torch.cuda.max_memory_allocated()
    import tensorflow as tf

    if not tf.config.list_logical_devices("GPU"):
        return None
    return "GPU:0 (TensorFlow)", tf.config.experimental.get_memory_info("GPU:0")["peak"]


def run_row(script: str, arguments: list, env: dict | None = None,
            timeout: float | None = None) -> dict:
    """Run `script --worker ARGUMENTS` in a fresh process (environment `env` added); its last
    stdout line, a JSON object, is the row. A failed row is {"error": its last line of stderr},
    one that ran past `timeout` seconds {"error": "timed out after N s"}."""
    command = [sys.executable, script, "--worker", *map(str, arguments)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})})
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def training_batch(config) -> tuple:
    """A random batch of one case for `config`'s network: x (1, H, W, D, C), y (1, H, W, D, K)
    with about a tenth of the voxels in each region."""
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, *config.data.crop_size, config.model.channels)).astype("float32")
    y = (rng.random((1, *config.data.crop_size, config.model.output_channels)) > 0.9).astype("float32")
    return x, y


def compiled_for_training(model, config):
    """`model` compiled as train.py trains the EEN: Nadam at the config's rate, the project's loss."""
    import keras

    import losses
    from systems.families import ready_to_train

    model.compile(optimizer=keras.optimizers.Nadam(config.train.learning_rate),
                  loss=losses.DiceCrossEntropy(config.model.output_activation))
    return ready_to_train(model)
