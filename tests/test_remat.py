"""model.remat_levels: rematerialised 3D residual blocks compute the same step, on TF and JAX.

The memory it saves is measured by bench/network.py (full size); here a tiny configuration checks
that the option changes neither the function nor the gradient, nor the weights' count.
"""
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from systems import een
from tests.conftest import backend_env, write_tiny_config
from util.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory) -> Path:
    """The tiny config (conftest) with batch norm in 2D and every 3D level rematerialised."""
    return write_tiny_config(tmp_path_factory.mktemp("remat") / "tiny.yaml",
                             model={"norm_2d": "batch", "remat_levels": [1, 2, 3, 4]})


def probe(backend: str, config: Path, out: Path) -> dict:
    done = subprocess.run([sys.executable, "-m", "tests.remat_probe", str(config), str(out)],
                          cwd=ROOT, env=backend_env(backend), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return dict(np.load(out))


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_remat_blocks_take_the_same_training_step(backend, tiny_config, tmp_path):
    """One SGD step of the compiled model: the same loss and weights with and without
    rematerialisation (each backend in its own process: the probe clears Keras's session)."""
    result = probe(backend, tiny_config, tmp_path / "out.npz")
    assert str(result["backend"]) == backend
    assert list(result["remat_blocks"]) == ["enc1", "enc2", "enc3", "enc4", "dec3d_1", "dec3d_2",
                                            "dec3d_3"]
    assert abs(float(result["remat_loss"]) - float(result["plain_loss"])) < 1e-5
    assert float(result["weight_difference"]) < 1e-5


def test_remat_levels_choose_the_segments_and_keep_names_and_parameters(tiny_config, tmp_path):
    config = load_config(tiny_config)
    config.model.backbone_weights = None
    config.model.remat_levels = ()
    plain = een.build_model(config)
    config.model.remat_levels = (1, 2)
    remat = een.build_model(config)
    segments = {l.name: l.segment for l in remat.layers if isinstance(l, een.Rematerialised)}
    assert list(segments) == ["enc1", "enc2", "dec3d_2", "dec3d_3"]  # encoder and decoder, D, D/f1
    assert {l.name for l in segments["enc2"].layers} >= {"enc2_down_conv", "enc2_gn1", "enc2_add"}
    assert {l.name for l in segments["dec3d_3"].layers} >= {"dec3d_3_proj", "dec3d_3_up",
                                                            "dec3d_3_skip", "dec3d_3_add"}
    assert "enc3_add" in {l.name for l in remat.layers}  # level 3 stays as it was
    assert remat.count_params() == plain.count_params()
    assert remat.get_layer("enc2").output.shape == plain.get_layer("enc2_add").output.shape
    path = tmp_path / "remat.keras"
    remat.save(path)
    loaded = keras.saving.load_model(path)
    x = np.random.default_rng(0).standard_normal((1, 32, 32, 12, 1)).astype("float32")
    np.testing.assert_allclose(loaded.predict_on_batch(x), remat.predict_on_batch(x), atol=1e-6)


def test_remat_levels_outside_1_to_4_are_a_clear_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("data: {crop_size: [64, 64, 48]}\n"
                    "model: {depth_factors: [2, 2, 4], remat_levels: [1, 5]}\n")
    with pytest.raises(ConfigError, match="remat_levels must be some of 1, 2, 3, 4"):
        load_config(path)
