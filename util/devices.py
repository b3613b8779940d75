"""Where training runs, per Keras backend: one device, the GPUs of one host, or several hosts.

    placement = place(gpus=2, cpu_replicas=1, cluster=Cluster())
    with placement.scope():
        model = ...           # built and compiled where the replicas need it

- TensorFlow: tf.distribute.MirroredStrategy over the GPUs of one host (Keras 3 `fit` does not
  support MultiWorkerMirroredStrategy, keras#20585, so TensorFlow is one host only).
- JAX: keras.distribution.DataParallel over the local devices; with several processes
  keras.distribution.initialize (jax.distributed) first, then DataParallel over every device of
  every process, with auto_shard_dataset=False: each process reads its own slice of every global
  batch (pipeline.CaseBatches shard).
- PyTorch: one device; keras.distribution has no PyTorch implementation in Keras 3.15.1.

--cpu-replicas N splits the CPU into N devices (TensorFlow logical CPUs, JAX host-platform
devices) so that the multi-device paths are tested without a GPU; it must be applied before the
backend starts (cpu_replica_environment).
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Callable

BACKENDS = ("tensorflow", "jax", "torch")
# XLA on the CPU for short runs whose speed is not measured (the tests' JAX processes, the GPU
# bench's dry run): unoptimised code (a small program compiles in 0.26 s against 2.5 s) from the
# legacy loop emitters (the tiny EEN's training step: 15 -> 11 s of compiling, 47 -> 39 s of CPU
# for a whole train.py run; docs/test-durations.md, fourteenth round). Same operations, same
# weights; only the rounding of fused loops may differ.
XLA_CPU_QUICK_COMPILE = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"


class PlacementError(ValueError):
    """Devices or processes that cannot be used as asked; str() is one line."""


@dataclasses.dataclass
class Cluster:
    """Several processes (JAX only): the coordinator's host:port, the count and this one's id.

    Unset fields come from KERAS_DISTRIBUTION_JOB_ADDRESSES, KERAS_DISTRIBUTION_NUM_PROCESSES and
    KERAS_DISTRIBUTION_PROCESS_ID, the variables keras.distribution.initialize reads.
    """

    coordinator: str | None = None
    processes: int | None = None
    process_id: int | None = None

    def resolved(self) -> "Cluster":
        env = os.environ
        return Cluster(
            self.coordinator or env.get("KERAS_DISTRIBUTION_JOB_ADDRESSES"),
            self.processes or int(env.get("KERAS_DISTRIBUTION_NUM_PROCESSES", 1)),
            self.process_id if self.process_id is not None
            else int(env.get("KERAS_DISTRIBUTION_PROCESS_ID", 0)))


@dataclasses.dataclass
class Placement:
    """The devices of a run: the global batch is train.batch_size x replicas."""

    replicas: int  # devices over all processes
    local_replicas: int  # devices of this process
    process: int
    processes: int
    scope: Callable = contextlib.nullcontext  # enter while building and compiling the model
    description: str = "1 device"

    @property
    def shard(self) -> tuple:
        """(this process, processes): which slice of every global batch this process reads."""
        return self.process, self.processes


def backend() -> str:
    """The Keras backend this process runs (KERAS_BACKEND, default tensorflow)."""
    import keras

    return keras.backend.backend()


def cpu_replica_environment(cpu_replicas: int) -> None:
    """Before the backend starts: make it see `cpu_replicas` CPU devices (tests the multi-GPU path)."""
    if cpu_replicas <= 1:
        return
    # TF 2.21's oneDNN fused convolutions fail on logical CPU devices under MirroredStrategy
    # ("input and filter must have the same depth"); the plain kernels work.
    os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"
    flag = f"--xla_force_host_platform_device_count={cpu_replicas}"
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()


def place(gpus: int, cpu_replicas: int, cluster: Cluster) -> Placement:
    """The placement for this backend; raises PlacementError when it cannot do what is asked."""
    name = backend()
    cluster = cluster.resolved()
    if cluster.processes > 1 and name != "jax":
        raise PlacementError(f"several processes need KERAS_BACKEND=jax (this is {name}: "
                             f"Keras 3 fit has no multi-host path for it)")
    if name == "tensorflow":
        return tensorflow_placement(gpus, cpu_replicas)
    if name == "jax":
        return jax_placement(gpus, cpu_replicas, cluster)
    if max(gpus, cpu_replicas) > 1:
        raise PlacementError(f"KERAS_BACKEND={name} trains on one device (keras.distribution has "
                             f"no {name} implementation in Keras 3.15.1); use jax for several")
    return Placement(1, 1, 0, 1, description="1 device")


def tensorflow_placement(gpus: int, cpu_replicas: int) -> Placement:
    """MirroredStrategy over N GPUs (or N logical CPUs), else the default strategy."""
    import tensorflow as tf

    if cpu_replicas > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * cpu_replicas)
        strategy = tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(cpu_replicas)])
    elif gpus > 1:
        found = tf.config.list_physical_devices("GPU")
        if len(found) < gpus:
            raise PlacementError(f"--gpus {gpus} asked, but TensorFlow sees {len(found)} GPU(s)")
        strategy = tf.distribute.MirroredStrategy([f"/gpu:{i}" for i in range(gpus)])
    else:
        strategy = tf.distribute.get_strategy()
    count = strategy.num_replicas_in_sync
    return Placement(count, count, 0, 1, strategy.scope,
                     f"{count} replica(s)" + (" (MirroredStrategy)" if count > 1 else ""))


def jax_placement(gpus: int, cpu_replicas: int, cluster: Cluster) -> Placement:
    """DataParallel over `gpus` local devices, or over every device of every process."""
    import jax
    import keras

    if cluster.processes > 1:
        if not cluster.coordinator:
            raise PlacementError("several processes need --coordinator HOST:PORT "
                                 "(or KERAS_DISTRIBUTION_JOB_ADDRESSES)")
        keras.distribution.initialize(cluster.coordinator, cluster.processes, cluster.process_id)
        devices = jax.devices()
    else:
        wanted = max(gpus, cpu_replicas)
        devices = jax.devices()
        if len(devices) < wanted:
            raise PlacementError(f"--gpus {wanted} asked, but JAX sees {len(devices)} "
                                 f"{devices[0].platform} device(s)")
        devices = devices[:wanted]
    process, processes = jax.process_index(), jax.process_count()
    local = sum(d.process_index == process for d in devices)
    if len(devices) > 1:
        keras.distribution.set_distribution(
            keras.distribution.DataParallel(devices=devices, auto_shard_dataset=False))
    where = f" in {processes} processes" if processes > 1 else ""
    return Placement(len(devices), local, process, processes,
                     description=f"{len(devices)} {devices[0].platform} device(s){where}"
                     + (" (DataParallel)" if len(devices) > 1 else ""))
