"""Run by tests/test_backends.py under one Keras backend: the numbers every backend must agree on.

    KERAS_BACKEND=jax python -m tests.backend_probe CONFIG MODEL.keras STEP.weights.h5 BATCH.npz OUT.npz

MODEL.keras is a compiled network saved under TensorFlow (optimizer state included), loaded as
train.py --resume loads it (JAX's steps jitted), and STEP.weights.h5 its weights after one
TensorFlow training step on BATCH (x, y). Writes OUT.npz:
the model's output on x, the loss of one training step here, the output after that step, and
predict.py's probabilities with STEP.weights.h5. The step runs without EfficientNet's stochastic
depth (without_dropout): its random draws are each backend's own.
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def without_dropout(network):
    """Set the rate of every Dropout layer (EfficientNet's stochastic depth) to 0; returns it."""
    import keras

    for layer in network._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.Dropout):
            layer.rate = 0.0
    return network


def main(argv: list) -> int:
    config_file, keras_file, weights_file, batch_file, out_file = map(Path, argv)
    import keras
    import numpy as np

    import losses  # noqa: F401  (registers the loss and metrics load_model needs)
    import model  # noqa: F401  (registers the custom layers)
    import predict
    import train
    from systems import networks
    from util.config import load_config

    batch = np.load(batch_file)
    x, y = batch["x"], batch["y"]
    network = without_dropout(train.compiled_model(load_config(config_file), False, keras_file, None))
    before = np.asarray(network.predict_on_batch(x))
    loss = float(network.train_on_batch(x, y, return_dict=True)["loss"])
    after = np.asarray(network.predict_on_batch(x))
    loaded = networks.load_network("flair", ("flair",), weights_file, load_config(config_file),
                                  "float32")
    probabilities = predict.region_probabilities(loaded, {"flair": x[0, ..., 0]}, False)
    np.savez(out_file, backend=keras.backend.backend(), jit=network.jit_compile, before=before,
             loss=loss, after=after, probabilities=probabilities)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
