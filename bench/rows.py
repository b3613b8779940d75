"""What the benchmarks share: each row runs in its own process, so its peak memory is its own."""
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def peak_gb() -> float:
    """Peak memory in GB where the work ran: the GPU's peak allocation when Keras's backend used
    one, else this process's peak resident memory (max RSS; model and data included)."""
    gpu = gpu_peak_bytes()
    return (gpu if gpu is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1e3) / 1e9


def gpu_peak_bytes() -> int | None:
    """The first GPU's peak allocated bytes under the current Keras backend; None without a GPU."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        return device.memory_stats()["peak_bytes_in_use"] if device.platform == "gpu" else None
    if backend == "torch":
        import torch

        return torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
    import tensorflow as tf

    return (tf.config.experimental.get_memory_info("GPU:0")["peak"]
            if tf.config.list_logical_devices("GPU") else None)


def device_name() -> str:
    """What ran the work: the GPU's name, or the CPU count."""
    import keras

    if keras.backend.backend() == "jax":
        import jax

        device = jax.devices()[0]
        if device.platform == "gpu":
            return f"{device.device_kind} (JAX)"
    return f"{os.cpu_count()} CPU cores ({keras.backend.backend()})" if gpu_peak_bytes() is None else "GPU"


def run_row(script: str, arguments: list) -> dict:
    """Run `script --worker ARGUMENTS` in a fresh process; its last stdout line, a JSON object,
    is the row. A failed row is {"error": its last line of stderr}."""
    command = [sys.executable, script, "--worker", *map(str, arguments)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])
