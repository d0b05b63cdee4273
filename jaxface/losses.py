"""Losses of the standard CNN, the SS-VAE and the DB-VAE, in plain ``jax.numpy``.

Every function works per sample and documents its shapes. Labels and logits may be given as
``(B,)`` or ``(B, 1)`` (what a ``Dense(1)`` head returns); they are flattened to ``(B,)`` before
use, so a ``(B, 1)`` array never broadcasts against a ``(B,)`` one into a ``(B, B)`` matrix. Any
other shape, or batch sizes that disagree, raise ``ValueError`` (at trace time under ``jax.jit``).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array


def flat_per_sample(values, name: str, batch: int | None = None):
  """One value per sample, given as (B,) or (B, 1), as (B,); ValueError for any other shape.

  Works on NumPy and JAX arrays alike (and on tracers: only the static shape is read).

  Args:
    values: (B,) or (B, 1) array.
    name: the argument's name, for the error message.
    batch: the expected B; None accepts any.

  Returns:
    ``values`` reshaped to (B,), same array type and dtype.
  """
  shape = getattr(values, "shape", None)
  ok = shape is not None and (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1))
  if ok and batch is not None:
    ok = shape[0] == batch
  if not ok:
    expected = "(B,) or (B, 1)" if batch is None else f"({batch},) or ({batch}, 1)"
    raise ValueError(f"{name} must have shape {expected}, got {shape}")
  return values.reshape(shape[0])


def flat_labels(labels: Array, batch: int) -> Array:
  """Labels of shape (B,) or (B, 1) as float32 (B,); ValueError for any other shape."""
  return flat_per_sample(jnp.asarray(labels), "labels", batch).astype(jnp.float32)


def _check_latents(z_mean: Array, z_logvar: Array) -> None:
  if jnp.ndim(z_mean) != 2 or jnp.shape(z_mean) != jnp.shape(z_logvar):
    raise ValueError(f"z_mean and z_logvar must both be (B, k), got {jnp.shape(z_mean)} and "
                     f"{jnp.shape(z_logvar)}")


def kl_divergence(z_mean: Array, z_logvar: Array) -> Array:
  """KL(N(z_mean, exp(z_logvar)) || N(0, I)) per sample.

  Args:
    z_mean: (B, k).
    z_logvar: (B, k).

  Returns:
    (B,) = 0.5 * sum_k(exp(logvar) + mean^2 - 1 - logvar).
  """
  _check_latents(z_mean, z_logvar)
  return 0.5 * jnp.sum(jnp.exp(z_logvar) + jnp.square(z_mean) - 1.0 - z_logvar, axis=-1)


def reconstruction_loss(x: Array, x_recon: Array, kind: str = "l1") -> Array:
  """Per-sample reconstruction error.

  Args:
    x: images, (B, H, W, C).
    x_recon: reconstructions, (B, H, W, C).
    kind: ``"l1"`` (mean absolute error, as in the labs) or ``"l2"`` (mean squared error, the
      paper's choice).

  Returns:
    (B,) mean error over H, W, C.
  """
  if x.shape != x_recon.shape:
    raise ValueError(f"x {x.shape} and x_recon {x_recon.shape} differ in shape")
  if x.ndim < 2:
    raise ValueError(f"x must be (B, ...) images with a batch axis, got shape {x.shape}")
  diff = x.astype(jnp.float32) - x_recon.astype(jnp.float32)
  if kind == "l1":
    err = jnp.abs(diff)
  elif kind == "l2":
    err = jnp.square(diff)
  else:
    raise ValueError(f"reconstruction kind must be 'l1' or 'l2', got {kind!r}")
  return jnp.mean(err, axis=tuple(range(1, x.ndim)))


def vae_loss(x: Array, x_recon: Array, z_mean: Array, z_logvar: Array,
             kl_weight: float = 5e-4, recon_kind: str = "l1") -> Array:
  """VAE loss per sample: ``kl_weight * KL + reconstruction``.

  Args:
    x: (B, H, W, C) images.
    x_recon: (B, H, W, C) reconstructions.
    z_mean: (B, k).
    z_logvar: (B, k).
    kl_weight: weight of the KL term (5e-4 in the labs).
    recon_kind: ``"l1"`` or ``"l2"``.

  Returns:
    (B,) loss.
  """
  _check_latents(z_mean, z_logvar)
  if jnp.shape(z_mean)[0] != jnp.shape(x)[0]:
    raise ValueError(f"x {jnp.shape(x)} and z_mean {jnp.shape(z_mean)} differ in batch size")
  return kl_weight * kl_divergence(z_mean, z_logvar) + reconstruction_loss(x, x_recon, recon_kind)


def classification_loss(y_logit: Array, labels: Array) -> Array:
  """Sigmoid cross-entropy from logits, per sample.

  Args:
    y_logit: (B,) or (B, 1) face logits.
    labels: (B,) or (B, 1), 1 for faces and 0 for non-faces.

  Returns:
    (B,) loss.
  """
  y_logit = flat_per_sample(jnp.asarray(y_logit, jnp.float32), "y_logit")
  labels = flat_labels(labels, y_logit.shape[0])
  # log(1 + exp(-|x|)) + max(x, 0) - x * y: stable for any logit.
  return jnp.maximum(y_logit, 0.0) - y_logit * labels + jnp.log1p(jnp.exp(-jnp.abs(y_logit)))


class DebiasingLoss(NamedTuple):
  """Total loss and its per-sample parts.

  Attributes:
    total: scalar, mean over the batch of ``per_sample``.
    classification: (B,) classification loss (every sample).
    vae: (B,) VAE loss before masking and weighting.
    per_sample: (B,) ``classification + vae_weight * face * vae``.
  """
  total: Array
  classification: Array
  vae: Array
  per_sample: Array


def debiasing_loss(x: Array, x_recon: Array, labels: Array, y_logit: Array, z_mean: Array,
                   z_logvar: Array, kl_weight: float = 5e-4,
                   recon_kind: str = "l1", vae_weight: float = 1.0) -> DebiasingLoss:
  """SS-VAE / DB-VAE loss: classification for every sample, VAE loss for faces only.

  Args:
    x: (B, H, W, C) images.
    x_recon: (B, H, W, C) reconstructions.
    labels: (B,) or (B, 1), 1 = face.
    y_logit: (B,) or (B, 1) face logits.
    z_mean: (B, k).
    z_logvar: (B, k).
    kl_weight: KL weight.
    recon_kind: ``"l1"`` or ``"l2"``.
    vae_weight: weight of the faces' VAE loss beside the classification loss (1 in the labs
      and the paper; ``config.loss.vae_weight``).

  Returns:
    :class:`DebiasingLoss`.
  """
  y_logit = flat_per_sample(jnp.asarray(y_logit, jnp.float32), "y_logit")
  face = flat_labels(labels, y_logit.shape[0])
  if jnp.shape(x)[:1] != y_logit.shape:
    raise ValueError(f"x {jnp.shape(x)} and y_logit {y_logit.shape} differ in batch size")
  cls = classification_loss(y_logit, face)
  vae = vae_loss(x, x_recon, z_mean, z_logvar, kl_weight, recon_kind)
  per_sample = cls + vae_weight * face * vae
  return DebiasingLoss(jnp.mean(per_sample), cls, vae, per_sample)
