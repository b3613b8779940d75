"""Every family's loss under TensorFlow's MirroredStrategy: one SGD step on two replicas must report
the loss and move the weights as the mean of the two half-batches trained alone.

Keras divides a per-example loss (B,) by the number of replicas before the replicas' gradients are
summed, and multiplies the reported loss back; a loss that returns one value for the whole batch
() skips the division, so with two replicas both the reported loss and the step were doubled (a
real double count, not only a reporting artefact). The check runs in a child process, which must
set up its two logical CPUs before TensorFlow starts.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"een": "configs/small.yaml", "kermi2018": "configs/kermi2018_small.yaml",
           "unet3d_patches": "configs/unet3d_patches_small.yaml",
           "bennaceur2020": "configs/bennaceur2020_small.yaml"}

CHILD = r"""
import contextlib, json, sys
from util import devices
devices.cpu_replica_environment(2)
placement = devices.tensorflow_placement(0, 2)
import keras, numpy as np
from systems import families
from util.config import load_config

def one_step(config, x, y, scope, start):
    with scope():
        keras.utils.set_random_seed(0)
        family = families.family_of(config)
        inputs = keras.Input(x.shape[1:])
        three = config.model.family == "unet3d_patches" or (
            config.model.family == "een" and config.model.output_activation == "sigmoid")
        layer = (keras.layers.Conv3D if x.ndim == 5 else keras.layers.Conv2D)(
            3 if three else 4, 1, activation="sigmoid" if three else "softmax")
        model = keras.Model(inputs, layer(inputs))
        model.compile(optimizer=keras.optimizers.SGD(0.5), loss=family.loss(config))
    if start:
        model.set_weights(start)
    start[:] = model.get_weights()
    before = model.get_weights()[0].copy()
    loss = model.fit(x, y, batch_size=len(x), epochs=1, verbose=0, shuffle=False).history["loss"][0]
    return float(loss), (model.get_weights()[0] - before).tolist()

results = {}
for name, path in json.loads(sys.argv[1]).items():
    config = load_config(path)
    rng = np.random.default_rng(1)
    shape = (4, 8, 8, 8) if name in ("een", "unet3d_patches") else (4, 8, 8)
    channels = 1 if name == "een" else 4
    x = rng.normal(size=shape + (channels,)).astype(np.float32)
    classes = rng.integers(0, 4, shape)
    y = np.stack([classes > 0, (classes == 1) | (classes == 3), classes == 3], -1).astype("float32")
    start = []  # the first network's initial weights, given to the other two
    halves = [one_step(config, x[k:k + 2], y[k:k + 2], contextlib.nullcontext, start)
              for k in (0, 2)]
    results[name] = {"halves": halves, "mirrored": one_step(config, x, y, placement.scope, start)}
print("RESULT " + json.dumps(results))
"""


@pytest.fixture(scope="module")
def steps():
    """{family: {"halves": [(loss, step)] x 2 on one device, "mirrored": (loss, step)}}."""
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(CONFIGS)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
                               "KERAS_BACKEND": "tensorflow"})
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(l for l in done.stdout.splitlines() if l.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


@pytest.mark.parametrize("name", list(CONFIGS))
def test_two_replicas_report_and_step_as_the_mean_of_their_halves(steps, name):
    import numpy as np

    halves, (loss, step) = steps[name]["halves"], steps[name]["mirrored"]
    assert loss == pytest.approx(np.mean([h[0] for h in halves]), rel=1e-4)
    expected = np.mean([np.array(h[1]) for h in halves], axis=0)
    assert np.abs(expected).max() > 0
    np.testing.assert_allclose(np.array(step), expected, rtol=1e-3, atol=1e-6)
