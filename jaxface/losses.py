"""Losses of the standard CNN, the SS-VAE and the DB-VAE, in plain ``jax.numpy``.

Every function works per sample and documents its shapes. Labels may be given as ``(B,)`` or
``(B, 1)``; they are flattened to ``(B,)`` before use, so a ``(B, 1)`` label never broadcasts
against a ``(B,)`` loss into a ``(B, B)`` matrix.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array


def flat_labels(labels: Array, batch: int) -> Array:
  """Labels of shape (B,) or (B, 1) as float32 (B,); ValueError for any other shape."""
  labels = jnp.asarray(labels)
  if labels.ndim == 2 and labels.shape[1] == 1:
    labels = labels[:, 0]
  if labels.shape != (batch,):
    raise ValueError(f"labels must have shape ({batch},) or ({batch}, 1), got {labels.shape}")
  return labels.astype(jnp.float32)


def kl_divergence(z_mean: Array, z_logvar: Array) -> Array:
  """KL(N(z_mean, exp(z_logvar)) || N(0, I)) per sample.

  Args:
    z_mean: (B, k).
    z_logvar: (B, k).

  Returns:
    (B,) = 0.5 * sum_k(exp(logvar) + mean^2 - 1 - logvar).
  """
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
  return kl_weight * kl_divergence(z_mean, z_logvar) + reconstruction_loss(x, x_recon, recon_kind)


def classification_loss(y_logit: Array, labels: Array) -> Array:
  """Sigmoid cross-entropy from logits, per sample.

  Args:
    y_logit: (B,) face logits.
    labels: (B,) or (B, 1), 1 for faces and 0 for non-faces.

  Returns:
    (B,) loss.
  """
  y_logit = jnp.asarray(y_logit, jnp.float32)
  labels = flat_labels(labels, y_logit.shape[0])
  # log(1 + exp(-|x|)) + max(x, 0) - x * y: stable for any logit.
  return jnp.maximum(y_logit, 0.0) - y_logit * labels + jnp.log1p(jnp.exp(-jnp.abs(y_logit)))


class DebiasingLoss(NamedTuple):
  """Total loss and its per-sample parts.

  Attributes:
    total: scalar, mean over the batch of ``classification + face * vae``.
    classification: (B,) classification loss (every sample).
    vae: (B,) VAE loss before masking.
    per_sample: (B,) ``classification + face * vae``.
  """
  total: Array
  classification: Array
  vae: Array
  per_sample: Array


def debiasing_loss(x: Array, x_recon: Array, labels: Array, y_logit: Array, z_mean: Array,
                   z_logvar: Array, kl_weight: float = 5e-4,
                   recon_kind: str = "l1") -> DebiasingLoss:
  """SS-VAE / DB-VAE loss: classification for every sample, VAE loss for faces only.

  Args:
    x: (B, H, W, C) images.
    x_recon: (B, H, W, C) reconstructions.
    labels: (B,) or (B, 1), 1 = face.
    y_logit: (B,) face logits.
    z_mean: (B, k).
    z_logvar: (B, k).
    kl_weight: KL weight.
    recon_kind: ``"l1"`` or ``"l2"``.

  Returns:
    :class:`DebiasingLoss`.
  """
  face = flat_labels(labels, y_logit.shape[0])
  cls = classification_loss(y_logit, face)
  vae = vae_loss(x, x_recon, z_mean, z_logvar, kl_weight, recon_kind)
  per_sample = cls + face * vae
  return DebiasingLoss(jnp.mean(per_sample), cls, vae, per_sample)
