"""Keras's Nadam and Adam updates for all variables at once on TensorFlow: same numbers, fewer ops.

Keras applies an optimizer variable by variable: for each of the small EEN's 315 weights it
recomputes the step's scalars (powers of beta, casts) and emits some thirty ops, about 12,000 in
all, which TensorFlow traces, optimises and instantiates at the first training step. Here the
scalars are computed once, the gradients, moments and velocities of all variables are joined
into one vector each, Keras's own formulas run once on those vectors, and the results are split
back and assigned. Every element goes through the same float32 operations in the same order, so
weights and optimizer state come out bit for bit as Keras's (tests/test_fast_layers.py). On 2
CPU cores the small EEN's first training call (trace and first execution) took x0.42 and x0.58
of Keras's in two side-by-side runs, its steps as long (`bench/network.py --config
configs/small.yaml --tasks train --rows f32-stockupdate,f32`), and train.py's first epoch 35 s
instead of 44 (docs/test-durations.md, ninth round).

The optimizer stays Keras's class (its instance gets the update, `at_once`), so checkpoints are
the files they were: a `.keras` saved before or after loads with plain Keras either way.
Under a TensorFlow distribution strategy (MirroredStrategy) the stock update runs: it all-reduces
the replicas' gradients and updates each mirrored variable. JAX and PyTorch keep Keras's update:
XLA compiles the per-variable update as fast (the tiny EEN's first JAX step 52.5 s with Keras's
update, 51.8 s joined), and PyTorch's Keras optimizers already update all variables at once
(torch._foreach).

    at_once(optimizer)   the optimizer, its update computed at once where that applies
"""
from __future__ import annotations

import itertools
import math
import types

import keras
from keras import ops


def joined(tensors: list):
    """One vector (N,) of the tensors' elements, each flattened, in order."""
    return ops.concatenate([ops.reshape(t, (-1,)) for t in tensors])


def split_like(vector, variables: list) -> list:
    """The vector cut back into tensors of the variables' shapes (the inverse of joined)."""
    cuts = list(itertools.accumulate(math.prod(v.shape) for v in variables))[:-1]
    return [ops.reshape(piece, v.shape) for piece, v in zip(ops.split(vector, cuts), variables)]


def _moments(optimizer, variables: list) -> tuple:
    """The momentum and velocity variables of `variables`, in their order."""
    index = [optimizer._get_variable_index(v) for v in variables]
    return [optimizer._momentums[i] for i in index], [optimizer._velocities[i] for i in index]


def _assign_all(optimizer, variables, momentums, velocities, m, v, step) -> None:
    for var, old_m, old_v, new_m, new_v, s in zip(variables, momentums, velocities,
                                                  split_like(m, variables),
                                                  split_like(v, variables),
                                                  split_like(step, variables)):
        optimizer.assign(old_m, new_m)
        optimizer.assign(old_v, new_v)
        optimizer.assign_sub(var, s)


def nadam_update(self, grads, variables, learning_rate):
    """keras.optimizers.Nadam's _backend_update_step and update_step, on joined vectors."""
    dtype = self._u_product.dtype
    self.assign(self._u_product, self._u_product * self.beta_1 * (
        1.0 - 0.5 * ops.power(0.96, ops.cast(self.iterations + 1, dtype))))
    var_dtype = variables[0].dtype
    lr = ops.cast(learning_rate, var_dtype)
    local_step = ops.cast(self.iterations + 1, var_dtype)
    next_step = ops.cast(self.iterations + 2, var_dtype)
    decay = ops.cast(0.96, var_dtype)
    beta_1 = ops.cast(self.beta_1, var_dtype)
    beta_2 = ops.cast(self.beta_2, var_dtype)
    u_t = beta_1 * (1.0 - 0.5 * (ops.power(decay, local_step)))
    u_t_1 = beta_1 * (1.0 - 0.5 * (ops.power(decay, next_step)))
    u_product_t = ops.cast(self._u_product, var_dtype)
    u_product_t_1 = u_product_t * u_t_1
    beta_2_power = ops.power(beta_2, local_step)

    momentums, velocities = _moments(self, variables)
    gradient = joined([ops.cast(g, var_dtype) for g in grads])
    m, v = joined(momentums), joined(velocities)
    m = ops.add(m, ops.multiply(ops.subtract(gradient, m), (1 - beta_1)))
    v = ops.add(v, ops.multiply(ops.subtract(ops.square(gradient), v), (1 - beta_2)))
    m_hat = ops.add(ops.divide(ops.multiply(u_t_1, m), 1 - u_product_t_1),
                    ops.divide(ops.multiply(1 - u_t, gradient), 1 - u_product_t))
    v_hat = ops.divide(v, (1 - beta_2_power))
    step = ops.divide(ops.multiply(m_hat, lr), ops.add(ops.sqrt(v_hat), self.epsilon))
    _assign_all(self, variables, momentums, velocities, m, v, step)


def adam_update(self, grads, variables, learning_rate):
    """keras.optimizers.Adam's update_step (amsgrad off), on joined vectors."""
    var_dtype = variables[0].dtype
    lr = ops.cast(learning_rate, var_dtype)
    local_step = ops.cast(self.iterations + 1, var_dtype)
    beta_1_power = ops.power(ops.cast(self.beta_1, var_dtype), local_step)
    beta_2_power = ops.power(ops.cast(self.beta_2, var_dtype), local_step)
    alpha = lr * ops.sqrt(1 - beta_2_power) / (1 - beta_1_power)

    momentums, velocities = _moments(self, variables)
    gradient = joined([ops.cast(g, var_dtype) for g in grads])
    m, v = joined(momentums), joined(velocities)
    m = ops.add(m, ops.multiply(ops.subtract(gradient, m), 1 - self.beta_1))
    v = ops.add(v, ops.multiply(ops.subtract(ops.square(gradient), v), 1 - self.beta_2))
    step = ops.divide(ops.multiply(m, alpha), ops.add(ops.sqrt(v), self.epsilon))
    _assign_all(self, variables, momentums, velocities, m, v, step)


UPDATES = {"Nadam": nadam_update, "Adam": adam_update}


def _applies(optimizer) -> bool:
    """Whether the joined update replaces Keras's: Nadam or Adam (amsgrad off) on TensorFlow."""
    return (type(optimizer).__name__ in UPDATES and keras.backend.backend() == "tensorflow"
            and not getattr(optimizer, "amsgrad", False))


def at_once(optimizer):
    """`optimizer` with its update computed for all variables at once where that is the same
    function (Keras's Nadam or Adam without amsgrad, on TensorFlow, one dtype of variables, no
    distribution strategy); otherwise it updates as Keras does. A LossScaleOptimizer's inner
    optimizer gets it. Returns the optimizer."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    if not _applies(inner):
        return optimizer
    import tensorflow as tf

    stock, joined_update = inner._backend_update_step, UPDATES[type(inner).__name__]

    def update(self, grads, variables, learning_rate):
        if tf.distribute.has_strategy() or len({v.dtype for v in variables}) != 1:
            return stock(grads, variables, learning_rate)
        return joined_update(self, grads, variables, learning_rate)

    inner._backend_update_step = types.MethodType(update, inner)
    return optimizer
