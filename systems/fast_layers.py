"""Stock Keras layers computed faster: the same function, the same weights (names and shapes).

Each class here subclasses the Keras layer it replaces and changes only how the result is
computed, so a checkpoint saved with the stock layer loads into it and gives the same outputs
(tests/test_fast_layers.py checks outputs and gradients against the stock layer on every
installed backend). `bench/layers.py` shows what each one saves.

    GroupNorm           keras.layers.GroupNormalization: statistics from per-channel sums
    Conv3D              keras.layers.Conv3D; with strides (1, 1, s), depth folded into channels

A class keeps the name of the layer it replaces where the network already held that layer:
Keras keys a layer's weights in `.weights.h5` and `.keras` files by its class name and position
(saving_lib: "conv3d", "conv3d_1", ...), so another name would not load checkpoints saved before.
"""
from __future__ import annotations

import math

import keras
from keras import layers, ops


@keras.saving.register_keras_serializable("een")
class GroupNorm(layers.GroupNormalization):
    """keras.layers.GroupNormalization with the same weights and results, computed faster.

    Keras reshapes (B, H, W, D, C) into groups and reduces over non-contiguous axes, which on CPU
    costs more than the 3x3x3 convolution it follows. Here per-channel sums of x and x^2 (a
    reduction that keeps the contiguous channel axis) give the group mean and variance, and one
    fused multiply-add normalises: the same function in three passes over x, 5-8x faster on CPU.
    Statistics are computed in float32 whatever the compute dtype; on a 3.3M-voxel map the result
    is closer to a float64 reference than Keras's own layer (tests/test_model.py).
    """

    def call(self, inputs, mask=None):  # mask: accepted when it replaces a BatchNormalization
        channels = inputs.shape[-1]
        per_group = channels // self.groups
        spatial = tuple(range(1, len(inputs.shape) - 1))
        x = ops.cast(inputs, "float32")
        count = ops.cast(ops.prod(ops.shape(inputs)[1:-1]) * per_group, "float32")
        sums = ops.reshape(ops.sum(x, axis=spatial), (-1, self.groups, per_group))
        squares = ops.reshape(ops.sum(ops.square(x), axis=spatial), (-1, self.groups, per_group))
        mean = ops.sum(sums, axis=-1, keepdims=True) / count
        variance = ops.maximum(ops.sum(squares, axis=-1, keepdims=True) / count - mean * mean, 0)
        inverse = ops.rsqrt(variance + self.epsilon)  # (B, groups, 1)
        scale = ops.reshape(ops.broadcast_to(inverse, ops.shape(sums)), (-1, channels))
        mean = ops.reshape(ops.broadcast_to(mean, ops.shape(sums)), (-1, channels))
        if self.scale:
            scale = scale * ops.cast(self.gamma, "float32")
        shift = -mean * scale
        if self.center:
            shift = shift + ops.cast(self.beta, "float32")
        broadcast = (-1,) + (1,) * len(spatial) + (channels,)
        scale = ops.cast(ops.reshape(scale, broadcast), self.compute_dtype)
        shift = ops.cast(ops.reshape(shift, broadcast), self.compute_dtype)
        return ops.cast(inputs, self.compute_dtype) * scale + shift


def depth_folding(depth: int, kernel: int, stride: int, padding: str) -> tuple | None:
    """How a depth-strided convolution becomes a stride-1 one on depth folded into channels.

    Output slice o of a convolution with kernel k and stride s along depth reads input slices
    s*o - before + j, j < k. Cut the (shifted) depth into blocks of s slices and lay each block's
    slices side by side in the channels: tap j then sits in block o + j//s - pad, at slot j % s,
    so a stride-1 convolution of depth kb = ceil(k / s) over the blocks, padded as Keras pads
    (pad = (kb - 1)//2 blocks before for "same"), computes the same sums.
    Returns (shift, blocks, kb): pad `shift` slices in front (crop when negative) and keep
    `blocks` * s slices. None when some tap would read a padding block where the original reads a
    real slice (no configuration here; the caller then uses the plain convolution).
    """
    if padding == "same":
        out = math.ceil(depth / stride)
        before = max((out - 1) * stride + kernel - depth, 0) // 2
    else:
        out = (depth - kernel) // stride + 1
        before = 0
    kb = (kernel - 1) // stride + 1
    pad = (kb - 1) // 2 if padding == "same" else 0
    blocks = out if padding == "same" else out + kb - 1
    shift = before - stride * pad
    for o in range(out):
        for j in range(kernel):
            block, original = o - pad + j // stride, stride * o - before + j
            if not 0 <= block < blocks and 0 <= original < depth:
                return None
    return shift, blocks, kb


@keras.saving.register_keras_serializable("een")
class Conv3D(layers.Conv3D):
    """keras.layers.Conv3D; with strides (1, 1, s), the same function computed without a stride.

    (B, H, W, D, C) -> (B, H, W, ceil(D/s), F). The depth is cut into blocks of s slices that are
    laid side by side in the channels, (B, H, W, D/s, s*C), and the (kh, kw, k) kernel is
    rearranged into a (kh, kw, ceil(k/s)) one over s*C channels carrying the same taps (zeros
    where a block slot has no tap). Forward results are equal; the gradient is that of a
    stride-1 convolution, which XLA maps to the fast kernels where a strided one falls back to a
    slow path (jax#31662; SPEC.md section 8): 11x on this CPU for stride 3. Weights: the layer's
    own `kernel` (kh, kw, k, C, F) and `bias`, as keras.layers.Conv3D: checkpoints load either way.
    Other strides, dilations, grouped convolutions (groups != 1) or channels-first data: Keras's
    own computation.
    """

    def convolution_op(self, inputs, kernel):
        stride = self.strides[2]
        folding = None
        if (stride > 1 and tuple(self.strides[:2]) == (1, 1) and self.data_format == "channels_last"
                and tuple(self.dilation_rate) == (1, 1, 1) and self.groups == 1
                and inputs.shape[3] is not None):
            folding = depth_folding(inputs.shape[3], self.kernel_size[2], stride, self.padding)
        if folding is None:
            return super().convolution_op(inputs, kernel)
        shift, blocks, kb = folding
        x = inputs[:, :, :, -shift:] if shift < 0 else inputs
        keep = stride * blocks
        tail = keep - (x.shape[3] + max(shift, 0))
        x = ops.pad(x, [(0, 0)] * 3 + [(max(shift, 0), max(tail, 0)), (0, 0)])
        x = x[:, :, :, :keep] if tail < 0 else x
        channels = inputs.shape[-1]
        x = ops.reshape(x, (-1, *inputs.shape[1:3], blocks, stride * channels))
        kh, kw, k, _, filters = kernel.shape
        taps = ops.pad(kernel, [(0, 0), (0, 0), (0, kb * stride - k), (0, 0), (0, 0)])
        taps = ops.reshape(taps, (kh, kw, kb, stride * channels, filters))
        return ops.conv(x, taps, strides=1, padding=self.padding, data_format="channels_last")
