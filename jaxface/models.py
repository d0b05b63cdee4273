"""Face-detection networks: the standard CNN and the (SS-/DB-)VAE, as pure functions.

The standard classifier of the MIT 6.S191 debiasing lab doubles as the VAE encoder: four
stride-2 convolutions (:data:`ENCODER_CONVS`: 12, 24, 48, 72 filters; kernels 5, 5, 3, 3; SAME
padding), each followed by ReLU and batch norm (momentum 0.9, PyTorch's default), then Dense 512
+ ReLU and a Dense output layer: one output (the face logit) for the CNN, ``2 * latent_dim + 1``
for a VAE, split into ``y_logit (B,)``, ``z_mean (B, k)`` and ``z_logvar (B, k)``. The decoder
mirrors it with stride-2 transposed convolutions (:data:`DECODER_CONVS`) back to the input size.
Images are channels-last ``(B, H, W, 3)`` floats in [0, 1].

:class:`Encoder` and :class:`Decoder` are stock Linen networks with injectable layers (as in
Flax's ResNet example); ``impl`` chooses what :func:`networks` injects, and every choice makes the
same parameter names and shapes (checkpoints are interchangeable) and, to float rounding, the
same outputs and gradients:

* ``'flax'``: the stock layers (``nn.Conv``, ``nn.ConvTranspose``, ``nn.BatchNorm``); the one for
  accelerators and for ``jax.jvp`` / ``jax.hessian``.
* ``'cpu_fast'``: the XLA:CPU layers of :mod:`jaxface.cpu_fast` on batch chunks (reverse mode
  only).
* ``'auto'``: ``'cpu_fast'`` on the CPU backend, ``'flax'`` elsewhere.

Other code calls the pure functions :func:`init_variables`, :func:`encode`, :func:`decode`,
:func:`reparameterize`, :func:`forward` and :func:`batch_norm_statistics`; they read the
architecture from the parameter shapes, so a ``variables`` pytree is all they need.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxface import cpu_fast

Array = jax.Array
PyTree = Any
ModuleDef = Any

# The input norm's floor on an image's variance (pixels in [0, 1]): a standard deviation of
# about 0.02, so a nearly flat window is not blown up into noise.
INPUT_NORM_EPSILON = 4e-4
INPUT_NORM = "InputNorm"  # its name in params['encoder']; its presence marks the architecture
BN_MOMENTUM = 0.9  # running-statistics momentum of the encoder's batch norms (PyTorch's 0.1)
BN_EPSILON = 1e-5
IMPLS = ("auto", "flax", "cpu_fast")

# The layer table of the networks. (filter multiplier, kernel size) of the encoder's
# stride-2 convolutions and of the decoder's stride-2 transposed convolutions before the RGB one.
ENCODER_CONVS = ((1, 5), (2, 5), (4, 3), (6, 3))
DECODER_CONVS = ((4, 3), (2, 3), (1, 5))
DENSE_FEATURES = 512  # the encoder's hidden Dense layer
RGB_KERNEL = 5  # the decoder's last transposed convolution (3 output channels)


def encoder_convs(n_filters: int) -> tuple[tuple[int, int], ...]:
  """(features, kernel size) of the encoder's stride-2 convolutions, input to output."""
  return tuple((n_filters * mult, k) for mult, k in ENCODER_CONVS)


def decoder_convs(n_filters: int) -> tuple[tuple[int, int], ...]:
  """(features, kernel size) of the decoder's stride-2 transposed convolutions, RGB last."""
  return tuple((n_filters * mult, k) for mult, k in DECODER_CONVS) + ((3, RGB_KERNEL),)


def decoder_grid(n_filters: int, image_size: int) -> tuple[int, int]:
  """(side, channels) of the decoder's first feature map: the encoder's last one."""
  return image_size // 16, n_filters * ENCODER_CONVS[-1][0]


def lecun_normal(key: Array, shape: Sequence[int], dtype: Any = jnp.float32) -> Array:
  """Flax's default kernel initializer, ``nn.initializers.lecun_normal()``, drawn as a matrix.

  A kernel of shape ``(..., C_in, C_out)`` is drawn as ``(prod(shape[:-1]), C_out)`` and
  reshaped. The values are those of the stock initializer: the fan-in is the product of all
  axes but the last either way, and JAX's (partitionable) threefry bits depend only on each
  element's flat index. Drawing a 4-D kernel directly compiles far slower on XLA:CPU, and
  :func:`init_variables` draws one per convolution.
  """
  shape = tuple(int(n) for n in shape)
  matrix = nn.initializers.lecun_normal()(key, (math.prod(shape[:-1]), shape[-1]), dtype)
  return matrix.reshape(shape)


def whole_batch(x: PyTree) -> PyTree:
  """The stock batch layout: the batch stays one array from layer to layer (the identity)."""
  return x


class Encoder(nn.Module):
  """Convolutional face classifier / VAE encoder.

  The layers are injectable (as ``conv`` in Flax's ResNet example); the defaults are stock
  Linen. Between ``split_batch`` and ``join_batch`` the activation is whatever the injected
  layers take: one array by default, or e.g. a list of batch chunks
  (:mod:`jaxface.cpu_fast`); the element-wise steps map over it with ``jax.tree.map``.

  Attributes:
    n_outputs: width of the last Dense layer (1 for the standard CNN, 2k+1 for a VAE).
    n_filters: base number of filters (12 in the labs).
    dtype: compute dtype (parameters stay float32).
    conv: the stride-2 convolution (``nn.Conv`` signature; the kernels are drawn by
      :func:`lecun_normal`).
    norm: the batch norm (``nn.BatchNorm`` signature).
    split_batch: images (B, H, W, 3) -> the activation the first layer takes.
    join_batch: the last batch norm's activation, flattened -> (B, D) for the Dense layers.
    axis_name: batch-norm statistics also over this mapped axis (``pmap`` / ``shard_map``).
    input_norm: standardise each image first: a layer norm over its pixels and channels
      (``nn.LayerNorm`` named ``InputNorm``, a scale and offset per channel), so the
      classifier sees the same input under any exposure and contrast of the photo, as a
      cascade detector normalises each window by its standard deviation.
  """
  n_outputs: int
  n_filters: int = 12
  dtype: Any = jnp.float32
  conv: ModuleDef = nn.Conv
  norm: ModuleDef = nn.BatchNorm
  split_batch: Callable[[Array], PyTree] = whole_batch
  join_batch: Callable[[PyTree], Array] = whole_batch
  axis_name: str | None = None
  input_norm: bool = False

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    """Maps images (B, H, W, 3) to raw outputs (B, n_outputs), in float32."""
    conv = functools.partial(self.conv, strides=(2, 2), padding="SAME", dtype=self.dtype,
                             kernel_init=lecun_normal)
    norm = functools.partial(self.norm, use_running_average=not train, momentum=BN_MOMENTUM,
                             epsilon=BN_EPSILON, dtype=self.dtype, axis_name=self.axis_name)
    if self.input_norm:
      x = nn.LayerNorm(epsilon=INPUT_NORM_EPSILON, reduction_axes=(-3, -2, -1),
                       feature_axes=-1, name=INPUT_NORM)(x.astype(jnp.float32))
    x = self.split_batch(x.astype(self.dtype))
    for i, (features, k) in enumerate(encoder_convs(self.n_filters)):
      x = conv(features, (k, k), name=f"Conv_{i}")(x)
      x = norm(name=f"BatchNorm_{i}")(jax.tree.map(nn.relu, x))
    x = self.join_batch(jax.tree.map(lambda a: a.reshape((a.shape[0], -1)), x))
    x = nn.relu(nn.Dense(DENSE_FEATURES, dtype=self.dtype)(x))
    return nn.Dense(self.n_outputs, dtype=self.dtype)(x).astype(jnp.float32)


class Decoder(nn.Module):
  """Transposed-convolution decoder from a latent code to an image.

  Injectable layers and batch layout as for :class:`Encoder` (stock Linen by default); the
  first Dense layer runs on the activation ``split_batch`` makes.

  Attributes:
    n_filters: base number of filters (mirrors the encoder).
    image_size: output height and width; a multiple of 16.
    dtype: compute dtype.
    conv_transpose: the stride-2 transposed convolution (``nn.ConvTranspose`` signature; the
      kernels are drawn by :func:`lecun_normal`).
    split_batch: latent codes (B, k) -> the activation the first Dense layer takes.
    join_batch: the last layer's activation -> images (B, S, S, 3).
  """
  n_filters: int = 12
  image_size: int = 64
  dtype: Any = jnp.float32
  conv_transpose: ModuleDef = nn.ConvTranspose
  split_batch: Callable[[Array], PyTree] = whole_batch
  join_batch: Callable[[PyTree], Array] = whole_batch

  @nn.compact
  def __call__(self, z: Array) -> Array:
    """Maps latent codes (B, k) to images (B, S, S, 3), linear output, float32."""
    conv_transpose = functools.partial(self.conv_transpose, strides=(2, 2), padding="SAME",
                                       dtype=self.dtype, kernel_init=lecun_normal)
    side, channels = decoder_grid(self.n_filters, self.image_size)
    dense = nn.Dense(side * side * channels, dtype=self.dtype)
    x = jax.tree.map(lambda a: nn.relu(dense(a)).reshape((a.shape[0], side, side, channels)),
                     self.split_batch(z.astype(self.dtype)))
    layers = decoder_convs(self.n_filters)
    for i, (features, k) in enumerate(layers):
      x = conv_transpose(features, (k, k), name=f"ConvTranspose_{i}")(x)
      x = jax.tree.map(nn.relu, x) if i < len(layers) - 1 else x
    return self.join_batch(x).astype(jnp.float32)


def resolve_impl(impl: str) -> str:
  """``'flax'`` or ``'cpu_fast'``: ``impl``, with ``'auto'`` resolved for the default backend.

  Raises:
    ValueError: ``impl`` is not one of :data:`IMPLS`.
  """
  if impl not in IMPLS:
    raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
  if impl == "auto":
    return "cpu_fast" if jax.default_backend() == "cpu" else "flax"
  return impl


def networks(impl: str = "auto") -> tuple[Callable[..., Encoder], Callable[..., Decoder]]:
  """The (encoder, decoder) constructors of an implementation (see :data:`IMPLS`).

  ``'flax'``: :class:`Encoder` and :class:`Decoder` with their stock layers. ``'cpu_fast'``: the
  same classes with the layers and the chunked batch layout of :mod:`jaxface.cpu_fast` injected.
  Both take the other attributes of :class:`Encoder` / :class:`Decoder`.
  """
  if resolve_impl(impl) == "flax":
    return Encoder, Decoder
  layout = {"split_batch": cpu_fast.split_batch, "join_batch": cpu_fast.join_batch}
  return (functools.partial(Encoder, conv=cpu_fast.StridedConv, norm=cpu_fast.ChunkedBatchNorm,
                            **layout),
          functools.partial(Decoder, conv_transpose=cpu_fast.StridedConvTranspose, **layout))


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


def init_variables(key: Array, *, latent_dim: int, n_filters: int = 12, image_size: int = 64,
                   impl: str = "auto", input_norm: bool = False) -> PyTree:
  """Creates the variables of a standard CNN (``latent_dim=0``) or a VAE (``latent_dim>0``).

  Args:
    key: PRNG key.
    latent_dim: number of latent dimensions k; 0 gives the standard one-output classifier.
    n_filters: base number of convolution filters.
    image_size: input height and width (a multiple of 16).
    impl: one of :data:`IMPLS`; every implementation makes the same tree.
    input_norm: standardise each image first (:class:`Encoder`); read back from the
      parameters by :func:`input_norm_of`.

  Returns:
    ``{'params': {'encoder': ..., ['decoder': ...]}, 'batch_stats': {'encoder': ...}}``.
  """
  check_image_size(image_size)
  if latent_dim < 0:
    raise ValueError(f"latent_dim must be >= 0, got {latent_dim}")
  if n_filters < 1:
    raise ValueError(f"n_filters must be >= 1, got {n_filters}")
  return _init_variables(key, latent_dim, n_filters, image_size, resolve_impl(impl),
                         bool(input_norm))


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4, 5))
def _init_variables(key: Array, latent_dim: int, n_filters: int, image_size: int,
                    impl: str, input_norm: bool) -> PyTree:
  # Jitted: one compile instead of one per initializer op.
  encoder_cls, decoder_cls = networks(impl)
  enc_key, dec_key = jax.random.split(key)
  encoder = encoder_cls(n_outputs=2 * latent_dim + 1, n_filters=n_filters,
                        input_norm=input_norm)
  enc_vars = encoder.init(enc_key, jnp.zeros((1, image_size, image_size, 3)), train=False)
  params = {"encoder": enc_vars["params"]}
  if latent_dim > 0:
    decoder = decoder_cls(n_filters=n_filters, image_size=image_size)
    params["decoder"] = decoder.init(dec_key, jnp.zeros((1, latent_dim)))["params"]
  return {"params": params, "batch_stats": {"encoder": enc_vars["batch_stats"]}}


def latent_dim_of(params: PyTree) -> int:
  """Latent size k read from the parameters (0 for the standard CNN)."""
  n_outputs = params["encoder"]["Dense_1"]["kernel"].shape[-1]
  return (n_outputs - 1) // 2


def n_filters_of(params: PyTree) -> int:
  """Base filter count read from the encoder's first convolution."""
  return params["encoder"]["Conv_0"]["kernel"].shape[-1]


def input_norm_of(params: PyTree) -> bool:
  """Whether the encoder standardises its input (its ``InputNorm`` layer; absent from models
  made before it, which do not)."""
  return INPUT_NORM in params["encoder"]


def image_size_of_decoder(params: PyTree) -> int:
  """Output image size read from the decoder's first Dense layer."""
  _, channels = decoder_grid(n_filters_of(params), 16)
  cells = params["decoder"]["Dense_0"]["kernel"].shape[-1] // channels
  return int(round(math.sqrt(cells))) * 16


def encode(variables: PyTree, x: Array, train: bool = False, *, dtype: Any = jnp.float32,
           impl: str = "auto") -> EncoderOutput:
  """Runs the encoder / classifier.

  Args:
    variables: ``{'params', 'batch_stats'}`` as made by :func:`init_variables`.
    x: images, (B, H, W, 3), float in [0, 1].
    train: use batch statistics and return updated running statistics.
    dtype: compute dtype (e.g. ``jnp.bfloat16`` on accelerators); outputs are float32.
    impl: one of :data:`IMPLS`.

  Returns:
    :class:`EncoderOutput` with ``y_logit (B,)``, ``z_mean (B, k)``, ``z_logvar (B, k)``.
  """
  encoder_cls, _ = networks(impl)
  params = variables["params"]
  k = latent_dim_of(params)
  encoder = encoder_cls(n_outputs=2 * k + 1, n_filters=n_filters_of(params), dtype=dtype,
                        input_norm=input_norm_of(params))
  enc_vars = {"params": params["encoder"], "batch_stats": variables["batch_stats"]["encoder"]}
  if train:
    out, updates = encoder.apply(enc_vars, x, train=True, mutable=["batch_stats"])
    batch_stats = {"encoder": updates["batch_stats"]}
  else:
    out = encoder.apply(enc_vars, x, train=False)
    batch_stats = variables["batch_stats"]
  return EncoderOutput(y_logit=out[:, 0], z_mean=out[:, 1:k + 1], z_logvar=out[:, k + 1:],
                       batch_stats=batch_stats)


def batch_norm_statistics(variables: PyTree, x: Array, *, dtype: Any = jnp.float32,
                          impl: str = "auto") -> PyTree:
  """The batch statistics (mean, var) of every batch norm of the encoder on one batch.

  Args:
    variables: model variables.
    x: images, (B, H, W, 3).
    dtype: compute dtype.
    impl: one of :data:`IMPLS`.

  Returns:
    A pytree shaped like ``variables['batch_stats']`` holding this batch's statistics.
  """
  zeros = jax.tree.map(jnp.zeros_like, variables["batch_stats"])
  # From zero running statistics, one train-mode update leaves (1 - momentum) * batch statistic.
  updated = encode({"params": variables["params"], "batch_stats": zeros}, x, train=True,
                   dtype=dtype, impl=impl).batch_stats
  return jax.tree.map(lambda s: s / (1.0 - BN_MOMENTUM), updated)


def decode(params: PyTree, z: Array, *, dtype: Any = jnp.float32, impl: str = "auto") -> Array:
  """Decodes latent codes to images.

  Args:
    params: the model parameters (``variables['params']``, with a ``'decoder'`` entry).
    z: latent codes, (B, k).
    dtype: compute dtype.
    impl: one of :data:`IMPLS`.

  Returns:
    Reconstructed images, (B, S, S, 3), float32 (linear output, not clipped).
  """
  _, decoder_cls = networks(impl)
  if "decoder" not in params:
    raise ValueError("params has no 'decoder': a standard CNN (latent_dim=0) cannot decode")
  decoder = decoder_cls(n_filters=n_filters_of(params), image_size=image_size_of_decoder(params),
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
            dtype: Any = jnp.float32, impl: str = "auto") -> ForwardOutput:
  """Full forward pass: encode, sample the latent code, decode (VAE) or classify (CNN).

  Args:
    variables: model variables.
    x: images, (B, H, W, 3).
    key: PRNG key for the latent sample; None decodes the mean.
    train: training mode (batch statistics are updated).
    dtype: compute dtype.
    impl: one of :data:`IMPLS`.

  Returns:
    :class:`ForwardOutput`.
  """
  enc = encode(variables, x, train, dtype=dtype, impl=impl)
  if latent_dim_of(variables["params"]) == 0:
    return ForwardOutput(enc.y_logit, enc.z_mean, enc.z_logvar, enc.z_mean, None,
                         enc.batch_stats)
  z = enc.z_mean if key is None else reparameterize(key, enc.z_mean, enc.z_logvar)
  x_recon = decode(variables["params"], z, dtype=dtype, impl=impl)
  return ForwardOutput(enc.y_logit, enc.z_mean, enc.z_logvar, z, x_recon, enc.batch_stats)
