"""Face-detection networks: the standard CNN and the (SS-/DB-)VAE, as pure functions.

The standard classifier of the MIT 6.S191 debiasing lab doubles as the VAE encoder: four
stride-2 convolutions (12, 24, 48, 72 filters; kernels 5, 5, 3, 3; SAME padding), each followed
by ReLU and batch norm, then Dense 512 + ReLU and a Dense output layer. Batch-norm running
statistics use momentum 0.9 (PyTorch's default), so they settle within a few dozen steps. The
standard CNN has one output (the face logit). The SS-VAE / DB-VAE encoder has ``2 * latent_dim + 1`` outputs, split
into ``y_logit (B,)``, ``z_mean (B, k)`` and ``z_logvar (B, k)``. The decoder mirrors the
encoder with transposed convolutions back to the input size.

All images are channels-last ``(B, H, W, 3)`` floats in [0, 1].

Every stride-2 layer is computed by :mod:`jaxface.ops` (sub-pixel convolutions: same parameters
and outputs as ``flax.linen.Conv`` / ``ConvTranspose``, several times faster gradients on CPU);
``Encoder(plain_layers=True)`` / ``Decoder(plain_layers=True)`` use the Flax layers instead. On
the CPU backend both networks carry the batch as a list of chunks of
``ops.CPU_BATCH_CHUNK`` images between layers (:class:`ChunkedBatchNorm` pools the chunks'
statistics, so the results are those of the whole batch); elsewhere the list has one entry.

The Linen modules are thin; the entry points other code should use are the pure functions
:func:`init_variables`, :func:`encode`, :func:`decode`, :func:`reparameterize` and
:func:`forward`. They read the architecture (filters, latent size, image size) from the shapes
of the parameters, so a ``variables`` pytree is all they need.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from jaxface import ops

Array = jax.Array
PyTree = Any

BN_MOMENTUM = 0.9  # running-statistics momentum of the encoder's batch norms (PyTorch's 0.1)

# (filter multiplier, kernel size) of the four encoder convolutions.
_ENCODER_LAYERS = ((1, 5), (2, 5), (4, 3), (6, 3))
# (filter multiplier, kernel size) of the decoder's transposed convolutions, before the RGB one.
_DECODER_LAYERS = ((4, 3), (2, 3), (1, 5))


class StridedConv(nn.Module):
  """``nn.Conv(features, (k, k), strides=2, padding='SAME')`` through :func:`jaxface.ops.conv_s2`.

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
  def __call__(self, x: Array | list[Array]) -> Array | list[Array]:
    """Maps (B, H, W, C_in) to (B, H', W', features), or each chunk of a list of them."""
    chunks = x if isinstance(x, list) else ops.split_batch(x)
    k = self.kernel_size
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (k, k, chunks[0].shape[-1], self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
    chunks, kernel = [c.astype(self.dtype) for c in chunks], kernel.astype(self.dtype)
    if self.transpose:
      ys = ops.conv_transpose_s2_chunks(chunks, kernel)  # one phase kernel for all chunks
    else:
      ys = [ops.conv_s2(c, kernel) for c in chunks]
    ys = [y + bias.astype(self.dtype) for y in ys]
    return ys if isinstance(x, list) else ops.join_batch(ys)


def _stride2(features: int, k: int, index: int, *, transpose: bool, plain: bool,
             dtype: Any) -> nn.Module:
  """Layer ``index`` of a stack of stride-2 (transposed) convolutions, named as Flax names it."""
  if plain:
    layer = nn.ConvTranspose if transpose else nn.Conv
    return layer(features, (k, k), strides=(2, 2), padding="SAME", dtype=dtype,
                 name=f"{layer.__name__}_{index}")
  return StridedConv(features, k, transpose=transpose, dtype=dtype,
                     name=f"{'ConvTranspose' if transpose else 'Conv'}_{index}")


class ChunkedBatchNorm(nn.Module):
  """``flax.linen.BatchNorm`` over the batch chunks of one activation, given as a list.

  Statistics are over all chunks together (the same as one ``nn.BatchNorm`` on their
  concatenation, which the tests check), as are the parameters (``scale``, ``bias``) and the
  running statistics (``batch_stats`` ``mean`` and ``var``), so checkpoints are
  interchangeable. Each chunk is normalised on its own, so a chunk can go on to the next layer
  while it is still in cache (:func:`jaxface.ops.split_batch`).

  Attributes:
    use_running_average: normalise with the running statistics (eval mode).
    momentum: running-statistics decay.
    epsilon: added to the variance.
    dtype: output dtype; statistics are computed in float32.
  """
  use_running_average: bool
  momentum: float = BN_MOMENTUM
  epsilon: float = 1e-5
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


def _on_chunks(layer: nn.Module, chunks: list[Array]) -> list[Array]:
  """A layer applied to every batch chunk (a :class:`StridedConv` takes the list at once)."""
  return layer(chunks) if isinstance(layer, StridedConv) else [layer(c) for c in chunks]


class Encoder(nn.Module):
  """Convolutional face classifier / VAE encoder.

  Attributes:
    n_outputs: width of the last Dense layer (1 for the standard CNN, 2k+1 for a VAE).
    n_filters: base number of filters (12 in the labs).
    dtype: compute dtype (parameters stay float32).
    plain_layers: use ``nn.Conv`` rather than :class:`StridedConv` (same parameters).
  """
  n_outputs: int
  n_filters: int = 12
  dtype: Any = jnp.float32
  plain_layers: bool = False

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    """Maps images (B, H, W, 3) to raw outputs (B, n_outputs), in float32."""
    # On CPU the batch is a list of chunks until the dense layers (jaxface.ops.split_batch).
    chunks = ops.split_batch(x.astype(self.dtype))
    for i, (mult, kernel) in enumerate(_ENCODER_LAYERS):
      conv = _stride2(self.n_filters * mult, kernel, i, transpose=False, plain=self.plain_layers,
                      dtype=self.dtype)
      chunks = [nn.relu(c) for c in _on_chunks(conv, chunks)]
      chunks = ChunkedBatchNorm(use_running_average=not train, dtype=self.dtype,
                                name=f"BatchNorm_{i}")(chunks)
    x = ops.join_batch([c.reshape((c.shape[0], -1)) for c in chunks])
    x = nn.relu(nn.Dense(512, dtype=self.dtype)(x))
    x = nn.Dense(self.n_outputs, dtype=self.dtype)(x)
    return x.astype(jnp.float32)


class Decoder(nn.Module):
  """Transposed-convolution decoder from a latent code to an image.

  Attributes:
    n_filters: base number of filters (mirrors the encoder).
    image_size: output height and width; a multiple of 16.
    dtype: compute dtype.
    plain_layers: use ``nn.ConvTranspose`` rather than :class:`StridedConv` (same parameters).
  """
  n_filters: int = 12
  image_size: int = 64
  dtype: Any = jnp.float32
  plain_layers: bool = False

  @nn.compact
  def __call__(self, z: Array) -> Array:
    """Maps latent codes (B, k) to images (B, S, S, 3), linear output, float32."""
    side = self.image_size // 16
    # Every code is decoded on its own, so on CPU the batch runs as a list of chunks from the
    # first layer to the last (jaxface.ops.split_batch).
    dense = nn.Dense(side * side * 6 * self.n_filters, dtype=self.dtype)
    chunks = [nn.relu(dense(c)).reshape((c.shape[0], side, side, 6 * self.n_filters))
              for c in ops.split_batch(z.astype(self.dtype))]
    layers = [(self.n_filters * mult, kernel) for mult, kernel in _DECODER_LAYERS] + [(3, 5)]
    for i, (features, kernel) in enumerate(layers):
      chunks = _on_chunks(_stride2(features, kernel, i, transpose=True, plain=self.plain_layers,
                                   dtype=self.dtype), chunks)
      if i < len(layers) - 1:
        chunks = [nn.relu(c) for c in chunks]
    return ops.join_batch(chunks).astype(jnp.float32)


class EncoderOutput(NamedTuple):
  """What :func:`encode` returns.

  Attributes:
    y_logit: face logit, (B,).
    z_mean: latent mean, (B, k); (B, 0) for the standard CNN.
    z_logvar: latent log-variance, (B, k); (B, 0) for the standard CNN.
    batch_stats: batch-norm statistics (updated when ``train`` is True, else unchanged).
  """
  y_logit: Array
  z_mean: Array
  z_logvar: Array
  batch_stats: PyTree


def check_image_size(image_size: int) -> None:
  """Raises ValueError unless ``image_size`` is a positive multiple of 16."""
  if not isinstance(image_size, int) or image_size < 16 or image_size % 16:
    raise ValueError(f"image_size must be a positive multiple of 16, got {image_size!r}")


def init_variables(key: Array, *, latent_dim: int, n_filters: int = 12,
                   image_size: int = 64) -> PyTree:
  """Creates the variables of a standard CNN (``latent_dim=0``) or a VAE (``latent_dim>0``).

  Args:
    key: PRNG key.
    latent_dim: number of latent dimensions k; 0 gives the standard one-output classifier.
    n_filters: base number of convolution filters.
    image_size: input height and width (a multiple of 16).

  Returns:
    ``{'params': {'encoder': ..., ['decoder': ...]}, 'batch_stats': {'encoder': ...}}``.
  """
  check_image_size(image_size)
  if latent_dim < 0:
    raise ValueError(f"latent_dim must be >= 0, got {latent_dim}")
  if n_filters < 1:
    raise ValueError(f"n_filters must be >= 1, got {n_filters}")
  return _init_variables(key, latent_dim, n_filters, image_size)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _init_variables(key: Array, latent_dim: int, n_filters: int, image_size: int) -> PyTree:
  # Jitted: one compile instead of one per initializer op.
  enc_key, dec_key = jax.random.split(key)
  encoder = Encoder(n_outputs=2 * latent_dim + 1, n_filters=n_filters)
  x = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  enc_vars = encoder.init(enc_key, x, train=False)
  params = {"encoder": enc_vars["params"]}
  if latent_dim > 0:
    decoder = Decoder(n_filters=n_filters, image_size=image_size)
    params["decoder"] = decoder.init(dec_key, jnp.zeros((1, latent_dim)))["params"]
  return {"params": params, "batch_stats": {"encoder": enc_vars["batch_stats"]}}


def latent_dim_of(params: PyTree) -> int:
  """Latent size k read from the parameters (0 for the standard CNN)."""
  n_outputs = params["encoder"]["Dense_1"]["kernel"].shape[-1]
  return (n_outputs - 1) // 2


def n_filters_of(params: PyTree) -> int:
  """Base filter count read from the encoder's first convolution."""
  return params["encoder"]["Conv_0"]["kernel"].shape[-1]


def image_size_of_decoder(params: PyTree) -> int:
  """Output image size read from the decoder's first Dense layer."""
  n_filters = n_filters_of(params)
  cells = params["decoder"]["Dense_0"]["kernel"].shape[-1] // (6 * n_filters)
  return int(round(math.sqrt(cells))) * 16


def encode(variables: PyTree, x: Array, train: bool = False, *,
           dtype: Any = jnp.float32) -> EncoderOutput:
  """Runs the encoder / classifier.

  Args:
    variables: ``{'params', 'batch_stats'}`` as made by :func:`init_variables`.
    x: images, (B, H, W, 3), float in [0, 1].
    train: use batch statistics and return updated running statistics.
    dtype: compute dtype (e.g. ``jnp.bfloat16`` on accelerators); outputs are float32.

  Returns:
    :class:`EncoderOutput` with ``y_logit (B,)``, ``z_mean (B, k)``, ``z_logvar (B, k)``.
  """
  params = variables["params"]
  k = latent_dim_of(params)
  encoder = Encoder(n_outputs=2 * k + 1, n_filters=n_filters_of(params), dtype=dtype)
  enc_vars = {"params": params["encoder"], "batch_stats": variables["batch_stats"]["encoder"]}
  if train:
    out, updates = encoder.apply(enc_vars, x, train=True, mutable=["batch_stats"])
    batch_stats = {"encoder": updates["batch_stats"]}
  else:
    out = encoder.apply(enc_vars, x, train=False)
    batch_stats = variables["batch_stats"]
  return EncoderOutput(y_logit=out[:, 0], z_mean=out[:, 1:k + 1], z_logvar=out[:, k + 1:],
                       batch_stats=batch_stats)


def batch_norm_statistics(variables: PyTree, x: Array, *, dtype: Any = jnp.float32) -> PyTree:
  """The batch statistics (mean, var) of every batch norm of the encoder on one batch.

  Args:
    variables: model variables.
    x: images, (B, H, W, 3).
    dtype: compute dtype.

  Returns:
    A pytree shaped like ``variables['batch_stats']`` holding this batch's statistics.
  """
  zeros = jax.tree.map(jnp.zeros_like, variables["batch_stats"])
  # From zero running statistics, one train-mode update leaves (1 - momentum) * batch statistic.
  updated = encode({"params": variables["params"], "batch_stats": zeros}, x, train=True,
                   dtype=dtype).batch_stats
  return jax.tree.map(lambda s: s / (1.0 - BN_MOMENTUM), updated)


def decode(params: PyTree, z: Array, *, dtype: Any = jnp.float32) -> Array:
  """Decodes latent codes to images.

  Args:
    params: the model parameters (``variables['params']``, with a ``'decoder'`` entry).
    z: latent codes, (B, k).
    dtype: compute dtype.

  Returns:
    Reconstructed images, (B, S, S, 3), float32 (linear output, not clipped).
  """
  if "decoder" not in params:
    raise ValueError("these parameters have no decoder: a standard CNN (latent_dim=0) "
                     "cannot decode")
  decoder = Decoder(n_filters=n_filters_of(params), image_size=image_size_of_decoder(params),
                    dtype=dtype)
  return decoder.apply({"params": params["decoder"]}, z)


def reparameterize(key: Array, z_mean: Array, z_logvar: Array) -> Array:
  """Samples z = z_mean + exp(0.5 * z_logvar) * eps, eps ~ N(0, I).

  Args:
    key: PRNG key.
    z_mean: (B, k).
    z_logvar: (B, k) log-variance.

  Returns:
    z, (B, k).
  """
  eps = jax.random.normal(key, z_mean.shape, z_mean.dtype)
  return z_mean + jnp.exp(0.5 * z_logvar) * eps


class ForwardOutput(NamedTuple):
  """What :func:`forward` returns.

  Attributes:
    y_logit: (B,) face logits.
    z_mean: (B, k).
    z_logvar: (B, k).
    z: (B, k) sampled latent code (``z_mean`` when no key is given).
    x_recon: (B, S, S, 3) reconstruction; None for the standard CNN.
    batch_stats: batch-norm statistics (updated when training).
  """
  y_logit: Array
  z_mean: Array
  z_logvar: Array
  z: Array
  x_recon: Array | None
  batch_stats: PyTree


def forward(variables: PyTree, x: Array, key: Array | None = None, train: bool = False, *,
            dtype: Any = jnp.float32) -> ForwardOutput:
  """Full forward pass: encode, sample the latent code, decode (VAE) or classify (CNN).

  Args:
    variables: model variables.
    x: images, (B, H, W, 3).
    key: PRNG key for the latent sample; None decodes the mean.
    train: training mode (batch statistics are updated).
    dtype: compute dtype.

  Returns:
    :class:`ForwardOutput`.
  """
  enc = encode(variables, x, train, dtype=dtype)
  if latent_dim_of(variables["params"]) == 0:
    return ForwardOutput(enc.y_logit, enc.z_mean, enc.z_logvar, enc.z_mean, None,
                         enc.batch_stats)
  z = enc.z_mean if key is None else reparameterize(key, enc.z_mean, enc.z_logvar)
  x_recon = decode(variables["params"], z, dtype=dtype)
  return ForwardOutput(enc.y_logit, enc.z_mean, enc.z_logvar, z, x_recon, enc.batch_stats)
