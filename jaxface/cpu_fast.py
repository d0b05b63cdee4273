"""Layers for XLA:CPU, injected into the networks of :mod:`jaxface.models` (``impl='cpu_fast'``).

XLA:CPU runs the stock Linen layers slowly in two places:

* a stride-2 transposed convolution, and the input gradient of a stride-2 convolution, are
  convolutions of a zero-dilated input, off XLA:CPU's fast convolution path. :class:`StridedConv`
  and :class:`StridedConvTranspose` compute both as sub-pixel stride-1 convolutions
  (:mod:`jaxface.ops`, a ``jax.custom_vjp``);
* XLA:CPU's convolutions lose cache locality on large activations. :func:`split_batch` makes the
  batch a list of chunks of at most :data:`CPU_BATCH_CHUNK` images that the layers here carry
  from layer to layer (unrolled at trace time), :func:`join_batch` makes it one array again, and
  :class:`ChunkedBatchNorm` pools the chunks' sums, so the statistics are those of the whole
  batch.

Each layer takes the arguments the networks give the stock layer it stands in for
(``nn.Conv``, ``nn.ConvTranspose``, ``nn.BatchNorm``) and makes the same parameters, so
checkpoints are interchangeable and the outputs and gradients agree to float rounding.
Reverse-mode only: the ``custom_vjp`` layers do not support ``jax.jvp`` (use ``impl='flax'``).
The speed-ups are measured by ``experiments/benchmark.py`` (section ``xla``); figures are in
experiments/results/.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from jaxface import ops

Array = jax.Array
Initializer = Any  # (key, shape, dtype) -> Array
CPU_BATCH_CHUNK = 32  # images per chunk of the batch


def split_batch(x: Array) -> list[Array]:
  """``x`` as consecutive batch chunks of :data:`CPU_BATCH_CHUNK` rows (the last may be shorter).

  Args:
    x: (B, ...).

  Returns:
    ``ceil(B / CPU_BATCH_CHUNK)`` arrays (b_i, ...); ``[x]`` for a batch of one chunk.
  """
  size = max(CPU_BATCH_CHUNK, 1)
  if x.shape[0] <= size:
    return [x]
  return [x[start:start + size] for start in range(0, x.shape[0], size)]


def join_batch(chunks: list[Array]) -> Array:
  """The inverse of :func:`split_batch`: the chunks concatenated along the batch."""
  return chunks[0] if len(chunks) == 1 else jnp.concatenate(chunks)


class StridedConv(nn.Module):
  """``nn.Conv(features, kernel_size, strides=2, padding='SAME')`` of every chunk, sub-pixel.

  Attributes:
    features: output channels.
    kernel_size: (k, k).
    strides: (2, 2), the only strides this layer computes.
    padding: ``'SAME'``, the only padding this layer computes.
    dtype: compute dtype (parameters stay float32).
    kernel_init: initializer of the (k, k, C_in, features) kernel.
    transpose: a stride-2 transposed convolution (``nn.ConvTranspose``) instead.
  """
  features: int
  kernel_size: Sequence[int]
  strides: Sequence[int] = (2, 2)
  padding: str = "SAME"
  dtype: Any = jnp.float32
  kernel_init: Initializer = nn.initializers.lecun_normal()
  transpose: bool = False

  @nn.compact
  def __call__(self, chunks: list[Array]) -> list[Array]:
    """Maps every (b_i, H, W, C_in) chunk to (b_i, H', W', features)."""
    k = self.kernel_size[0]
    if tuple(self.kernel_size) != (k, k) or tuple(self.strides) != (2, 2) or (
        self.padding != "SAME"):
      raise ValueError("StridedConv computes square kernels, strides (2, 2) and SAME padding "
                       f"only, got {self.kernel_size}, {self.strides}, {self.padding!r}")
    kernel = self.param("kernel", self.kernel_init,
                        (k, k, chunks[0].shape[-1], self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
    chunks, kernel = [c.astype(self.dtype) for c in chunks], kernel.astype(self.dtype)
    if self.transpose:
      ys = ops.conv_transpose_s2_chunks(chunks, kernel)  # one phase kernel for all chunks
    else:
      ys = [ops.conv_s2(c, kernel) for c in chunks]
    return [y + bias.astype(self.dtype) for y in ys]


class StridedConvTranspose(StridedConv):
  """``nn.ConvTranspose(features, kernel_size, strides=2, padding='SAME')`` of every chunk.

  The attributes of :class:`StridedConv`, with ``transpose`` set.
  """
  transpose: bool = True


class ChunkedBatchNorm(nn.Module):
  """``flax.linen.BatchNorm`` over the batch chunks of one activation, given as a list.

  Statistics are over all chunks together (the same as one ``nn.BatchNorm`` on their
  concatenation), as are the parameters (``scale``, ``bias``) and the running statistics
  (``batch_stats`` ``mean`` and ``var``). Each chunk is normalised on its own, so it can go on to
  the next layer while it is still in cache.

  Attributes:
    use_running_average: normalise with the running statistics (eval mode).
    momentum: running-statistics decay (``nn.BatchNorm``'s default).
    epsilon: added to the variance.
    dtype: output dtype; statistics are computed in float32.
    axis_name: statistics also over this mapped axis (``pmap`` / ``shard_map``).
  """
  use_running_average: bool
  momentum: float = 0.99
  epsilon: float = 1e-5
  dtype: Any = jnp.float32
  axis_name: str | None = None

  @nn.compact
  def __call__(self, chunks: list[Array]) -> list[Array]:
    """Normalises every (b_i, ..., C) chunk; returns the chunks in ``dtype``."""
    features = chunks[0].shape[-1]
    scale = self.param("scale", nn.initializers.ones_init(), (features,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros_init(), (features,), jnp.float32)
    ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
    ra_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
    if self.use_running_average:
      mean, var = ra_mean.value, ra_var.value
    else:
      count = sum(math.prod(c.shape[:-1]) for c in chunks)
      axes = tuple(range(chunks[0].ndim - 1))
      as_f32 = [c.astype(jnp.float32) for c in chunks]
      mean = sum(jnp.sum(c, axis=axes) for c in as_f32) / count
      mean_sq = sum(jnp.sum(jnp.square(c), axis=axes) for c in as_f32) / count
      if self.axis_name is not None and not self.is_initializing():
        mean, mean_sq = lax.pmean(jnp.stack([mean, mean_sq]), self.axis_name)
      var = jnp.maximum(mean_sq - jnp.square(mean), 0.0)
      if not self.is_initializing():
        ra_mean.value = self.momentum * ra_mean.value + (1.0 - self.momentum) * mean
        ra_var.value = self.momentum * ra_var.value + (1.0 - self.momentum) * var
    mul = scale * lax.rsqrt(var + self.epsilon)
    add = bias - mean * mul
    return [(c.astype(jnp.float32) * mul + add).astype(self.dtype) for c in chunks]
