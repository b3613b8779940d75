"""Run by tests/test_remat.py under one Keras backend: one training step with and without remat.

    KERAS_BACKEND=jax python -m tests.remat_probe CONFIG OUT.npz

Builds CONFIG twice, with model.remat_levels as given and with none, with the same weights, and
takes one SGD step of each on the same batch. Writes OUT.npz: both losses and the largest weight
difference after the step.
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def weight_key(variable) -> str:
    """layer/weight: the same for a block's weights whether it is rematerialised (nested) or not."""
    return "/".join(variable.path.split("/")[-2:])


def main(argv: list) -> int:
    config_file, out_file = map(Path, argv)
    import keras
    import numpy as np

    from systems import een
    from util.config import load_config

    def build(levels):
        config = load_config(config_file)
        config.model.backbone_weights = None
        config.model.remat_levels = levels
        keras.backend.clear_session()  # the same automatic layer names in both builds
        keras.utils.set_random_seed(0)  # the same draws of the backbone's stochastic depth
        return een.build_model(config), config

    remat, config = build(load_config(config_file).model.remat_levels)
    plain, _ = build(())
    values = {weight_key(v): keras.ops.convert_to_numpy(v) for v in plain.weights}
    for variable in remat.weights:
        variable.assign(values[weight_key(variable)])
    rng = np.random.default_rng(0)
    shape = (1, *config.data.crop_size)
    x = rng.standard_normal((*shape, config.model.channels)).astype("float32")
    y = (rng.random((*shape, config.model.output_channels)) > 0.7).astype("float32")
    results = {}
    for name, network in (("remat", remat), ("plain", plain)):
        network.compile(optimizer=keras.optimizers.SGD(0.1), loss="binary_crossentropy")
        results[f"{name}_loss"] = float(network.train_on_batch(x, y))
    after = {weight_key(v): keras.ops.convert_to_numpy(v) for v in plain.weights}
    results["weight_difference"] = max(
        float(np.abs(keras.ops.convert_to_numpy(v) - after[weight_key(v)]).max())
        for v in remat.weights)
    results["remat_blocks"] = [layer.name for layer in remat.layers
                               if isinstance(layer, een.Rematerialised)]
    np.savez(out_file, backend=keras.backend.backend(), **results)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
