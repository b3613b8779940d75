"""Keras's random initializers on JAX, drawn with a few compiled programs: the same numbers.

Under JAX, Keras draws each weight's initial values with `jax.random.truncated_normal` or
`jax.random.uniform`, which XLA compiles once per weight shape: a build of the tiny EEN
(EfficientNet-B0 and narrow 3D layers) compiled 174 programs and took 17.7 s of CPU at every
start of a JAX process (docs/test-durations.md, thirteenth round). With JAX's threefry generator
in its partitionable form (the default since JAX 0.5), element i of a draw depends only on the
key and on i, not on the shape: the first n values of a draw of N > n elements are the draw of
n. So here each draw is made at the next power of two of its size, cut to its size and
reshaped, and Keras's own `* stddev + mean` follows in float32. The same build then compiles 50
programs (12 truncated-normal and 10 uniform draws) in 10.1 s of CPU; tests/test_fast_layers.py
checks the draws against Keras's, bit for bit. Other generators, dtypes other than float32, and
the other backends keep Keras's functions.

    install()   on JAX, Keras's truncated_normal and uniform drawn this way; elsewhere nothing
"""
from __future__ import annotations

import math

import numpy as np

PATCHED = ("truncated_normal", "uniform")


def drawn_size(shape) -> int:
    """The size a draw of `shape` is made at: the next power of two of its element count."""
    return 1 << max(math.prod(shape) - 1, 0).bit_length()


def cut(sample, shape) -> np.ndarray:
    """The first prod(shape) values of a flat draw, reshaped (a host copy)."""
    return np.asarray(sample)[:math.prod(shape)].reshape(shape)


def applies(dtype) -> bool:
    """Whether a draw of `dtype` may be cut from a longer one: float32 under partitionable
    threefry (bits of other widths are packed differently)."""
    import jax

    return (str(dtype) == "float32" and jax.config.jax_threefry_partitionable
            and jax.config.jax_default_prng_impl == "threefry2x32")


def bucketed(keras_random):
    """truncated_normal and uniform for keras.src.backend.jax.random (`keras_random`), each
    falling back to Keras's own function where the cut does not apply."""
    import jax

    from keras.src.backend.config import floatx

    own = {name: getattr(keras_random, name) for name in PATCHED}

    def truncated_normal(shape, mean=0.0, stddev=1.0, dtype=None, seed=None):
        dtype = dtype or floatx()
        if not applies(dtype):
            return own["truncated_normal"](shape, mean, stddev, dtype, seed)
        key = keras_random.jax_draw_seed(seed)
        flat = jax.random.truncated_normal(key, shape=(drawn_size(shape),), lower=-2.0,
                                           upper=2.0, dtype=dtype)
        return jax.device_put(cut(flat, shape) * np.float32(stddev) + np.float32(mean))

    def uniform(shape, minval=0.0, maxval=1.0, dtype=None, seed=None):
        dtype = dtype or floatx()
        if not applies(dtype):
            return own["uniform"](shape, minval, maxval, dtype, seed)
        key = keras_random.jax_draw_seed(seed)
        flat = jax.random.uniform(key, shape=(drawn_size(shape),), dtype=dtype, minval=minval,
                                  maxval=maxval)
        return jax.device_put(cut(flat, shape))

    return {"truncated_normal": truncated_normal, "uniform": uniform}


def install() -> None:
    """Keras's JAX truncated_normal and uniform drawn as above, once; nothing on other backends."""
    import keras

    if keras.backend.backend() != "jax":
        return
    from keras.src.backend.jax import random as keras_random

    if getattr(keras_random, "_bucketed", False):
        return
    for name, function in bucketed(keras_random).items():
        setattr(keras_random, name, function)
    keras_random._bucketed = True
