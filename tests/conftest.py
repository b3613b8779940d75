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
