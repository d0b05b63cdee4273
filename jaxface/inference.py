"""Batched, sharded eval-mode inference: the one pass behind evaluation, reports and resampling.

:func:`infer` runs the model in evaluation mode over a whole host array of images in
fixed-size batches, each split over the ``data`` axis of a device mesh, and returns the
requested outputs as NumPy arrays. :func:`decode` does the same for latent codes. On a
multi-host mesh every process must call them with the same inputs (the outputs are gathered
on every process); the default mesh, this process's own devices, needs no other process.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxface import losses, models
from jaxface.sharding import make_mesh, shard_batch

PyTree = Any

OUTPUTS = ("face_prob", "y_logit", "z_mean", "z_logvar", "recon_error", "x_recon",
           "face_prob_shifted")
# The photometric shifts of ``face_prob_shifted``, (gain, contrast) pairs far outside the training
# augmentation: darker, flatter, and both. A face the classifier finds only in its own lighting
# is one whose detection does not generalise.
PHOTOMETRIC_SHIFTS = ((0.45, 1.0), (1.0, 0.45), (0.65, 0.65))
_DECODER_OUTPUTS = frozenset({"recon_error", "x_recon"})


def unit_float(images: jax.Array) -> jax.Array:
  """uint8 images as float32 / 255; other dtypes as float32."""
  if images.dtype == jnp.uint8:
    return images.astype(jnp.float32) * (1.0 / 255.0)
  return images.astype(jnp.float32)


def photometric_shift(x: jax.Array, gain: float, contrast: float) -> jax.Array:
  """Images (..., H, W, 3) in [0, 1] with their contrast scaled by ``contrast`` around each
  image's mean, then their brightness by ``gain``, clipped to [0, 1]."""
  mean = jnp.mean(x, axis=(-3, -2, -1), keepdims=True)
  return jnp.clip((mean + (x - mean) * contrast) * gain, 0.0, 1.0)


@functools.partial(jax.jit, static_argnames=("outputs", "dtype", "recon", "impl"))
def _infer_batch(variables: PyTree, images: jax.Array, outputs: tuple[str, ...], dtype: Any,
                 recon: str, impl: str = "auto") -> dict[str, jax.Array]:
  """The requested outputs of one batch; the decoder runs only when one of them needs it."""
  x = unit_float(images)
  enc = models.encode(variables, x, train=False, dtype=dtype, impl=impl)
  out = {"face_prob": jax.nn.sigmoid(enc.y_logit), "y_logit": enc.y_logit,
         "z_mean": enc.z_mean, "z_logvar": enc.z_logvar}
  if _DECODER_OUTPUTS & set(outputs):
    x_recon = models.decode(variables["params"], enc.z_mean, dtype=dtype,
                            impl=impl).astype(jnp.float32)
    out["recon_error"] = losses.reconstruction_loss(x, x_recon, recon)
    out["x_recon"] = jnp.clip(x_recon, 0.0, 1.0)
  if "face_prob_shifted" in outputs:
    out["face_prob_shifted"] = jnp.min(jnp.stack([
        jax.nn.sigmoid(models.encode(variables, photometric_shift(x, gain, contrast),
                                     train=False, dtype=dtype, impl=impl).y_logit)
        for gain, contrast in PHOTOMETRIC_SHIFTS]), axis=0)
  return {name: out[name].astype(jnp.float32) for name in outputs}


@functools.partial(jax.jit, static_argnames=("dtype", "impl"))
def _decode_batch(params: PyTree, z: jax.Array, dtype: Any,
                  impl: str = "auto") -> dict[str, jax.Array]:
  x = models.decode(params, z.astype(jnp.float32), dtype=dtype, impl=impl).astype(jnp.float32)
  return {"x_decoded": jnp.clip(x, 0.0, 1.0)}


def _map_batches(fn: Callable[[np.ndarray], dict[str, jax.Array]], inputs: np.ndarray,
                 mesh: Mesh, batch_size: int) -> dict[str, np.ndarray]:
  """Applies ``fn`` to sharded fixed-size batches of ``inputs`` and concatenates the outputs.

  The batch is ``min(batch_size, the next power of two >= N)`` rounded up to a multiple of the
  mesh's device count, so few shapes are compiled; the last batch is zero-padded and the
  padding rows are dropped.

  Args:
    fn: a jitted function of one sharded batch (B, ...) returning a dict of (B, ...) arrays.
    inputs: (N, ...) host array, N >= 1.
    mesh: the device mesh.
    batch_size: the largest batch.

  Returns:
    The dict of (N, ...) NumPy arrays.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  n, n_dev = inputs.shape[0], mesh.devices.size
  batch = min(int(batch_size), 1 << max(n - 1, 0).bit_length())
  batch = -(-batch // n_dev) * n_dev
  parts = []
  for start in range(0, n, batch):
    chunk = inputs[start:start + batch]
    if chunk.shape[0] < batch:
      pad = np.zeros((batch - chunk.shape[0],) + chunk.shape[1:], chunk.dtype)
      chunk = np.concatenate([chunk, pad])
    parts.append(fn(shard_batch(mesh, chunk)))
  if mesh.is_multi_process:
    from jax.experimental import multihost_utils
    parts = [multihost_utils.process_allgather(p, tiled=True) for p in parts]
  parts = jax.device_get(parts)
  return {key: np.concatenate([np.asarray(p[key]) for p in parts])[:n] for key in parts[0]}


def infer(variables: PyTree, images: np.ndarray, outputs: Sequence[str] = ("face_prob",
                                                                           "z_mean"), *,
          mesh: Mesh | None = None, batch_size: int = 256, dtype: Any = jnp.float32,
          recon: str = "l1", impl: str = "auto") -> dict[str, np.ndarray]:
  """Eval-mode pass of a model over a whole image array, batched and sharded over a mesh.

  Args:
    variables: model variables (host arrays, or replicated on ``mesh``).
    images: (N, H, W, 3) uint8 in [0, 255] or float in [0, 1], on the host.
    outputs: names from :data:`OUTPUTS`: ``face_prob`` (N,), ``y_logit`` (N,), ``z_mean``
      (N, k), ``z_logvar`` (N, k) (k = 0 for the standard CNN), and for a VAE ``recon_error``
      (N,) (the ``recon`` error of the image decoded from ``z_mean``) and ``x_recon``
      (N, H, W, 3) (that image, clipped to [0, 1]); the decoder runs only for these two.
      ``face_prob_shifted`` (N,): the lowest p(face) over the :data:`PHOTOMETRIC_SHIFTS` of the
      image (:func:`photometric_shift`).
    mesh: the device mesh (default: this process's devices).
    batch_size: the largest number of images per pass.
    dtype: compute dtype; outputs are float32.
    recon: 'l1' or 'l2', the kind of ``recon_error``.
    impl: the model implementation (:data:`jaxface.models.IMPLS`).

  Returns:
    ``{name: NumPy array}`` for every name in ``outputs``.
  """
  outputs = tuple(outputs)
  unknown = [name for name in outputs if name not in OUTPUTS]
  if unknown:
    raise ValueError(f"outputs: unknown {unknown}; choose from {list(OUTPUTS)}")
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"images must have shape (N, H, W, 3), got {images.shape}")
  k = models.latent_dim_of(variables["params"])
  if k == 0 and _DECODER_OUTPUTS & set(outputs):
    raise ValueError("the standard CNN (latent_dim=0) has no decoder: outputs "
                     f"{sorted(_DECODER_OUTPUTS & set(outputs))} need a VAE")
  if images.shape[0] == 0:
    shapes = {"face_prob": (0,), "y_logit": (0,), "z_mean": (0, k), "z_logvar": (0, k),
              "recon_error": (0,), "x_recon": images.shape, "face_prob_shifted": (0,)}
    return {name: np.zeros(shapes[name], np.float32) for name in outputs}
  mesh = make_mesh(jax.local_devices()) if mesh is None else mesh
  fn = functools.partial(_infer_batch, variables, outputs=outputs, dtype=jnp.dtype(dtype),
                         recon=recon, impl=models.resolve_impl(impl))
  return _map_batches(fn, images, mesh, batch_size)


def decode(variables: PyTree, z: np.ndarray, *, mesh: Mesh | None = None,
           batch_size: int = 256, dtype: Any = jnp.float32, impl: str = "auto") -> np.ndarray:
  """Decodes latent codes in eval mode, batched and sharded over a mesh (VAE only).

  Args:
    variables: VAE variables.
    z: (M, k) latent codes.
    mesh: the device mesh (default: this process's devices).
    batch_size: the largest number of codes per pass.
    dtype: compute dtype.
    impl: the model implementation (:data:`jaxface.models.IMPLS`).

  Returns:
    (M, H, W, 3) float32 images clipped to [0, 1].
  """
  z = np.asarray(z, np.float32)
  if z.ndim != 2:
    raise ValueError(f"z must be (M, k), got shape {z.shape}")
  if models.latent_dim_of(variables["params"]) == 0:
    raise ValueError("the standard CNN (latent_dim=0) has no decoder to decode with")
  if z.shape[0] == 0:
    size = models.image_size_of_decoder(variables["params"])
    return np.zeros((0, size, size, 3), np.float32)
  mesh = make_mesh(jax.local_devices()) if mesh is None else mesh
  fn = functools.partial(_decode_batch, variables["params"], dtype=jnp.dtype(dtype),
                         impl=models.resolve_impl(impl))
  return _map_batches(fn, z, mesh, batch_size)["x_decoded"]
