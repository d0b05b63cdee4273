"""The XLA:CPU fast path of the networks of :mod:`jaxface.models` (``impl='cpu_fast'``).

It exists because XLA:CPU runs the stock Linen networks slowly in two places:

* a stride-2 transposed convolution, and the input gradient of a stride-2 convolution, are
  convolutions of a zero-dilated input, off XLA:CPU's fast convolution path. :class:`StridedConv`
  computes both as sub-pixel stride-1 convolutions (:mod:`jaxface.ops`, a ``jax.custom_vjp``);
* XLA:CPU's convolutions lose cache locality on large activations. The networks here carry
  the batch as a list of chunks of at most :data:`CPU_BATCH_CHUNK` images from layer to layer
  (unrolled at trace time), and :class:`ChunkedBatchNorm` pools the chunks' sums, so the
  statistics are those of the whole batch.

:class:`Encoder` and :class:`Decoder` take the attributes of ``models.Encoder`` /
``models.Decoder`` and are built from the same layer table (``models.encoder_convs``,
``models.decoder_convs``), with the same parameter names and shapes: checkpoints are
interchangeable and the outputs and gradients agree to float rounding. Reverse-mode only: the
``custom_vjp`` layers do not support ``jax.jvp`` (use ``impl='flax'``). The speed-ups are
measured by ``experiments/benchmark.py`` (section ``xla``); figures are in experiments/results/.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from jaxface import models, ops

Array = jax.Array
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
  """``nn.Conv(features, (k, k), strides=2, padding='SAME')`` of every chunk, sub-pixel.

  Attributes:
    features: output channels.
    kernel_size: k.
    transpose: a stride-2 transposed convolution (``nn.ConvTranspose``) instead.
    dtype: compute dtype (parameters stay float32).
  """
  features: int
  kernel_size: int
  transpose: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, chunks: list[Array]) -> list[Array]:
    """Maps every (b_i, H, W, C_in) chunk to (b_i, H', W', features)."""
    k = self.kernel_size
    kernel = self.param("kernel", models.lecun_normal,
                        (k, k, chunks[0].shape[-1], self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
    chunks, kernel = [c.astype(self.dtype) for c in chunks], kernel.astype(self.dtype)
    if self.transpose:
      ys = ops.conv_transpose_s2_chunks(chunks, kernel)  # one phase kernel for all chunks
    else:
      ys = [ops.conv_s2(c, kernel) for c in chunks]
    return [y + bias.astype(self.dtype) for y in ys]


class ChunkedBatchNorm(nn.Module):
  """``flax.linen.BatchNorm`` over the batch chunks of one activation, given as a list.

  Statistics are over all chunks together (the same as one ``nn.BatchNorm`` on their
  concatenation), as are the parameters (``scale``, ``bias``) and the running statistics
  (``batch_stats`` ``mean`` and ``var``). Each chunk is normalised on its own, so it can go on to
  the next layer while it is still in cache.

  Attributes:
    use_running_average: normalise with the running statistics (eval mode).
    momentum: running-statistics decay.
    epsilon: added to the variance.
    dtype: output dtype; statistics are computed in float32.
  """
  use_running_average: bool
  momentum: float = models.BN_MOMENTUM
  epsilon: float = models.BN_EPSILON
  dtype: Any = jnp.float32

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
      var = jnp.maximum(mean_sq - jnp.square(mean), 0.0)
      if not self.is_initializing():
        ra_mean.value = self.momentum * ra_mean.value + (1.0 - self.momentum) * mean
        ra_var.value = self.momentum * ra_var.value + (1.0 - self.momentum) * var
    mul = scale * lax.rsqrt(var + self.epsilon)
    add = bias - mean * mul
    return [(c.astype(jnp.float32) * mul + add).astype(self.dtype) for c in chunks]


class Encoder(nn.Module):
  """``models.Encoder`` with sub-pixel stride-2 layers, on batch chunks.

  Attributes:
    n_outputs: width of the last Dense layer (1 for the standard CNN, 2k+1 for a VAE).
    n_filters: base number of filters (12 in the labs).
    dtype: compute dtype (parameters stay float32).
  """
  n_outputs: int
  n_filters: int = 12
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    """Maps images (B, H, W, 3) to raw outputs (B, n_outputs), in float32."""
    chunks = split_batch(x.astype(self.dtype))
    for i, (features, k) in enumerate(models.encoder_convs(self.n_filters)):
      conv = StridedConv(features, k, dtype=self.dtype, name=f"Conv_{i}")
      chunks = [nn.relu(c) for c in conv(chunks)]
      chunks = ChunkedBatchNorm(use_running_average=not train, dtype=self.dtype,
                                name=f"BatchNorm_{i}")(chunks)
    x = join_batch([c.reshape((c.shape[0], -1)) for c in chunks])
    x = nn.relu(nn.Dense(models.DENSE_FEATURES, dtype=self.dtype)(x))
    return nn.Dense(self.n_outputs, dtype=self.dtype)(x).astype(jnp.float32)


class Decoder(nn.Module):
  """``models.Decoder`` with sub-pixel stride-2 layers, on batch chunks from first to last.

  Attributes:
    n_filters: base number of filters (mirrors the encoder).
    image_size: output height and width; a multiple of 16.
    dtype: compute dtype.
  """
  n_filters: int = 12
  image_size: int = 64
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z: Array) -> Array:
    """Maps latent codes (B, k) to images (B, S, S, 3), linear output, float32."""
    side, channels = models.decoder_grid(self.n_filters, self.image_size)
    dense = nn.Dense(side * side * channels, dtype=self.dtype)
    chunks = [nn.relu(dense(c)).reshape((c.shape[0], side, side, channels))
              for c in split_batch(z.astype(self.dtype))]
    layers = models.decoder_convs(self.n_filters)
    for i, (features, k) in enumerate(layers):
      chunks = StridedConv(features, k, transpose=True, dtype=self.dtype,
                           name=f"ConvTranspose_{i}")(chunks)
      chunks = [nn.relu(c) for c in chunks] if i < len(layers) - 1 else chunks
    return join_batch(chunks).astype(jnp.float32)
