"""Shared fixtures: synthetic cases are costly (about 2 s each), so they are made once per session."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import pytest  # noqa: E402

import synthetic  # noqa: E402

SEED = 7


@pytest.fixture(scope="session")
def brats2020_dir(tmp_path_factory):
    """Three labelled synthetic BraTS 2020 training cases."""
    out = tmp_path_factory.mktemp("brats2020")
    list(synthetic.write_dataset(out, 3, SEED, "brats2020"))
    return out


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory, brats2020_dir):
    """The three cases preprocessed at the default crop."""
    import preprocess

    out = tmp_path_factory.mktemp("cache") / "cache"
    assert preprocess.main([str(brats2020_dir), str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def small_cache(tmp_path_factory):
    """16 synthetic cases preprocessed for configs/small.yaml (3 mm, 64x64x48 around the brain)."""
    import preprocess

    root = tmp_path_factory.mktemp("small")
    list(synthetic.write_dataset(root / "raw", 16, SEED + 1, "brats2020", jobs=2))
    assert preprocess.main([str(root / "raw"), str(root / "cache"), "--config",
                            "configs/small.yaml", "--jobs", "2"]) == 0
    return root / "cache"


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, small_cache):
    """The learning check's run: the FLAIR network of the small config, 13 cases, 10 epochs."""
    import train

    out = tmp_path_factory.mktemp("runs") / "small"
    status = train.main(["--config", "configs/small.yaml", "--data", str(small_cache),
                         "--modality", "flair", "--out", str(out), "--epochs", "10",
                         "--verbose", "2"])
    assert status == 0
    return out
