"""Shared fixtures: synthetic cases are costly (about 2 s each), so they are made once per session.

`make test` runs the suite on two pytest-xdist workers, the longest groups first. Each test file
stays on one worker (its module fixtures are built once; each overfit family is a group of its
own), the files with full-size networks share one worker (two full-size passes at once could
exhaust a 24 GB machine; SHARED_WORKER), and the session fixtures
below are built once for both workers: the first to need one builds it under a file lock, the
other waits and reuses it.
"""
import contextlib
import fcntl
import os
import shutil
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# numpy asks the kernel for 2 MB pages (madvise) for arrays of 4 MB and more; on the CI and
# development VMs (transparent_hugepage defrag "madvise") each such page first costs a compaction
# stall, 1 GiB of new arrays 9-20 s of system time instead of 0.3 s (docs/test-durations.md,
# seventh round). Set before numpy is imported; the tests' child processes inherit it.
os.environ.setdefault("NUMPY_MADVISE_HUGEPAGE", "0")
# ANTs (prepare.py's registrations) on one thread: the other worker holds the second core, and
# ITK's two threads wait for each other at every iteration when one is descheduled (the real
# patient's co-registration 24 s alone, 79 s beside a busy core, 45 s on one thread; its CPU time
# 241 -> 165 s; docs/test-durations.md, twelfth round). ITK reads it once, at its first use.
os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")
# PyTorch's OpenMP threads (HD-BET, nnU-Net, SegResNet, the torch probes) sleep when idle instead of
# spinning for the core that the other worker holds: the peers' quick rows beside a busy core,
# 91.1 -> 72.5 s of their processes' CPU (docs/test-durations.md, fourteenth round).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402

import synthetic  # noqa: E402
from util.devices import XLA_CPU_QUICK_COMPILE  # noqa: E402
from util.tensorflow_start import onednn_kernels  # noqa: E402

# oneDNN's kernels on every x86 CPU, as the commands run them: set before a test file imports
# keras; the tests' child processes inherit it.
onednn_kernels()

SEED = 7
# make test-full (EEN_TEST_FULL=1): the checks that make test runs smaller, at their full size
# (README, docs/test-durations.md).
FULL = os.environ.get("EEN_TEST_FULL") == "1"
# Test files that must share a worker (pytest-xdist groups); any other file is a group of its own.
SHARED_WORKER = {
    **dict.fromkeys(("test_model.py", "test_baselines.py", "test_full_multimodal.py",
                     "test_backbones.py"), "full_size"),
    # analyze.py writes into the shared trained run, which test_ensemble copies
    **dict.fromkeys(("test_analyze.py", "test_ensemble.py"), "trained_run_writers"),
}


# Files whose parametrized tests are groups of their own (each overfit family on its own worker;
# the test of Kermi's overfit network through predict.py is parametrized to join Kermi's group).
SPLIT_BY_PARAMETER = {"test_overfit.py"}
# Seconds of each group (worker-seconds, the quiet 2-core machine, docs/test-durations.md), so that
# the longest start first: the scheduler hands out groups in collection order, and a long group
# started last leaves the other worker idle at the end. A group not listed counts 0.
GROUP_SECONDS = {
    "test_compare.py": 285, "test_train.py": 251, "test_backends.py": 234,
    "test_train_runs.py": 198, "full_size": 144,
    "test_bench_gpu.py": 143, "test_prepare.py": 126, "test_outputs.py": 120,
    "test_predict.py": 114, "test_compare_peers.py": 108, "test_baselines_pipeline.py": 92,
    "test_container.py": 76, "test_remat.py": 75, "trained_run_writers": 66,
    "test_fast_layers.py": 54, "test_bench_inference.py": 52, "test_brats.py": 47,
    "test_overfit.py[kermi2018]": 55, "test_notebooks.py": 42,
    "test_overfit.py[een]": 35, "test_synthetic.py": 32, "test_real_files.py": 29,
    "test_overfit.py[unet3d_patches]": 28,
    "test_overfit.py[bennaceur2020]": 27,
}


def group_of(nodeid: str) -> str:
    """A test's worker group: its file, SHARED_WORKER's shared name, or file[parameter]."""
    name = nodeid.split("::")[0].rsplit("/", 1)[-1]
    if name in SPLIT_BY_PARAMETER and nodeid.endswith("]"):
        return name + nodeid[nodeid.index("["):]
    return SHARED_WORKER.get(name, name)


def pytest_collection_modifyitems(items):
    """The longest groups first (GROUP_SECONDS); the file order is kept within a group."""
    items.sort(key=lambda item: -GROUP_SECONDS.get(group_of(item.nodeid), 0))


def pytest_xdist_make_scheduler(config, log):
    """With --dist loadgroup, a group (group_of) is one unit of work, given whole to one worker in
    collection order. The group is read from the test's id here, in the controller: xdist 3.8's
    own loadgroup reads xdist_group marks into a suffix of the test's id, which pytest 9's ids
    no longer take, so every test became a group of its own (tests/test_scheduling.py)."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return group_of(nodeid)

    return GroupScheduling(config, log)


def backend_env(backend: str) -> dict:
    """The environment of a child process on another Keras backend, on the CPU, XLA compiling
    quickly (devices.XLA_CPU_QUICK_COMPILE)."""
    return {**os.environ, "KERAS_BACKEND": backend, "JAX_PLATFORMS": "cpu",
            "XLA_FLAGS": XLA_CPU_QUICK_COMPILE, "TF_CPP_MIN_LOG_LEVEL": "3"}


def built_once(tmp_path_factory, name: str, build) -> Path:
    """The folder `name`, filled by build(folder) once for the whole run, every worker included."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's folder, above each worker's own
    folder, complete = root / name, root / f"{name}.complete"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not complete.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            complete.touch()
    return folder


@pytest.fixture(scope="session")
def brats2020_dir(tmp_path_factory):
    """Three labelled synthetic BraTS 2020 training cases."""
    return built_once(tmp_path_factory, "brats2020",
                      lambda out: list(synthetic.write_dataset(out, 3, SEED, "brats2020")))


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory, brats2020_dir):
    """The three cases preprocessed at the default crop."""
    import preprocess

    def build(out):
        assert preprocess.main([str(brats2020_dir), str(out / "cache")]) == 0

    return built_once(tmp_path_factory, "cache", build) / "cache"


@pytest.fixture(scope="session")
def small_cache(tmp_path_factory):
    """16 synthetic cases preprocessed for configs/small.yaml (3 mm, 64x64x48 around the brain)."""
    import preprocess

    def build(root):
        list(synthetic.write_dataset(root / "raw", 16, SEED + 1, "brats2020", jobs=2))
        assert preprocess.main([str(root / "raw"), str(root / "cache"), "--config",
                                "configs/small.yaml", "--jobs", "2"]) == 0

    return built_once(tmp_path_factory, "small", build) / "cache"


@pytest.fixture(scope="session")
def small3_cache(tmp_path_factory, brats2020_dir):
    """The three conftest cases preprocessed for configs/small.yaml: a training epoch is 2 steps
    (one case validates), for tests of how train.py runs rather than of what it learns."""
    import preprocess

    def build(out):
        assert preprocess.main([str(brats2020_dir), str(out / "cache"), "--config",
                                "configs/small.yaml"]) == 0

    return built_once(tmp_path_factory, "small3", build) / "cache"


@pytest.fixture(scope="session")
def quick_comparison_data(tmp_path_factory) -> Path:
    """compare.py --quick's data, made by compare's own prepared_data (4 training and 2 validation
    cases, their small-config cache): data/ and cache/, shared by test_compare's and
    test_compare_peers' runs (--data, --cache) instead of each making its own."""
    import argparse

    import compare

    def build(folder):
        compare.prepared_data(argparse.Namespace(out=folder, data=None, cache=None, quick=True,
                                                 seed=0))

    return built_once(tmp_path_factory, "compare_data", build)


# ---- the tiny configuration: tests of how things run, not of what they learn -----------------

TINY_CROP_SIZE = (32, 32, 12)
TINY_CROP = (slice(16, 48), slice(16, 48), slice(18, 30))  # of small_cache's 64x64x48
# The tiny configuration's network: configs/small.yaml's EEN with narrow 3D layers, no dropout; its
# depth factors compress 12 slices to the backbone's 3 channels.
TINY_MODEL = dict(depth_factors=[2, 2, 1], encoder_filters=[8, 8, 8, 8],
                  decoder_filters=[32, 16, 16, 8], encoder_dropout=0.0, decoder_dropout=0.0,
                  skip_dropout=0.0)


def write_tiny_config(path: Path, model: dict | None = None, **train) -> Path:
    """configs/small.yaml at 32x32x12 with narrow 3D layers and no dropout (the same
    EfficientNet-B0 backbone); `model` and `train` override entries of those sections."""
    import yaml

    values = yaml.safe_load((Path(__file__).parents[1] / "configs" / "small.yaml").read_text())
    values["name"] = "tiny"
    values["data"]["crop_size"] = list(TINY_CROP_SIZE)
    values["model"].update({**TINY_MODEL, **(model or {})})
    values["train"].update(train)
    path.write_text(yaml.safe_dump(values))
    return path


def write_tiny_cache(small_cache: Path, out: Path, count: int,
                     modalities: tuple = ("flair",)) -> Path:
    """The first `count` cases of small_cache cut to TINY_CROP around their centre (the
    modalities and the regions), a cache for write_tiny_config's configuration."""
    import json

    import numpy as np

    from datasets.cache import CACHE_SETTINGS, Cache

    out.mkdir(parents=True)
    settings = json.loads((small_cache / CACHE_SETTINGS).read_text())
    settings["crop_size"] = list(TINY_CROP_SIZE)
    (out / CACHE_SETTINGS).write_text(json.dumps(settings))
    for case_id in Cache(small_cache).ids[:count]:
        (out / case_id).mkdir()
        shutil.copy(small_cache / case_id / "meta.json", out / case_id)
        for name in (*modalities, "regions"):
            array = np.load(small_cache / case_id / f"{name}.npy")[TINY_CROP]
            np.save(out / case_id / f"{name}.npy", np.ascontiguousarray(array))
    return out


@contextlib.contextmanager
def steps_run_eagerly(flag: bool):
    """Keras steps (TensorFlow's functions) eager or traced inside the block, as before after."""
    import tensorflow as tf

    before = tf.config.functions_run_eagerly()
    tf.config.run_functions_eagerly(flag)
    try:
        yield
    finally:
        tf.config.run_functions_eagerly(before)


@pytest.fixture(scope="module")
def eager():
    """Keras steps run eagerly: for tests that need a run's files or a step's numbers, not its
    speed (tracing a small-config training step takes about 20 s, its prediction 2.5 s)."""
    with steps_run_eagerly(True):
        yield


@pytest.fixture(scope="session")
def tiny3_cache(tmp_path_factory, small3_cache):
    """small3_cache's three cases cut to the tiny configuration's 32x32x12 (write_tiny_cache): two
    steps an epoch, for the tests of how a run's files are written, refused and resumed."""
    return built_once(tmp_path_factory, "tiny3",
                      lambda out: write_tiny_cache(small3_cache, out / "cache", 3)) / "cache"


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, small_cache):
    """The learning check's run: the FLAIR network of the small config, 13 cases, 8 epochs;
    traced, as users train, whichever module first asks for it."""
    import train

    def build(root):
        with steps_run_eagerly(False):
            assert train.main(["--config", "configs/small.yaml", "--data", str(small_cache),
                               "--modality", "flair", "--out", str(root / "small"), "--epochs",
                               "8", "--verbose", "2"]) == 0

    return built_once(tmp_path_factory, "runs", build) / "small"


# ---- damaged run folders (tests of runfolder.py's refusals in every tool) ----------------------

def linked_copy(source: Path, target: Path) -> Path:
    """A copy of a run, its large checkpoints hard links (the tests replace, never edit them)."""
    def place(src, dst):
        return os.link(src, dst) if os.path.getsize(src) > 2**20 else shutil.copy2(src, dst)

    shutil.copytree(source, target, copy_function=place)
    return target


def cut(path: Path) -> None:
    """Keep the first half of a file (a new file: a hard-linked original stays whole)."""
    data = path.read_bytes()
    path.unlink()
    path.write_bytes(data[:len(data) // 2])


def one_line_error(capsys, main, argv: list) -> str:
    """main(argv) ends with exit status 2 and one line `error: ...` on stderr, no traceback."""
    with pytest.raises(SystemExit) as stop:
        main([str(a) for a in argv])
    error = capsys.readouterr().err.strip()
    assert stop.value.code == 2, error
    assert error.startswith("error: ") and "\n" not in error and "Traceback" not in error, error
    return error
