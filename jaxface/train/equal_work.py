"""The train step doing the work of the PyTorch reference: every row of the batch decoded.

The reference decodes the faces and the non-faces and zeroes the non-faces' VAE terms; the
step it takes is :func:`jaxface.train.train_step`'s, which decodes the faces only. This variant
is for benchmarking the two pipelines on equal work (``experiments/benchmark.py``).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxface import data as data_lib
from jaxface import losses, models
from jaxface.train.state import TrainState
from jaxface.train.step import StepInputs, join_halves, split_halves, step_with_vae_loss


def every_row_vae_loss(params: Any, enc: models.EncoderOutput, inputs: StepInputs,
                       step_key: jax.Array, *, kl_weight: float, recon: str, dtype: Any,
                       impl: str, num_shards: int) -> tuple[jax.Array, jax.Array]:
  """The faces' VAE loss, computed by decoding every row and zeroing the non-faces' terms.

  The faces' latent noise is drawn as in :func:`jaxface.train.step.faces_vae_loss`, the
  non-faces' from ``fold_in(step_key, 1)``; arguments as there.

  Returns:
    The sum of the faces' VAE losses and the (B / 2,) losses themselves.
  """
  join = functools.partial(join_halves, num_shards=num_shards)
  split = functools.partial(split_halves, num_shards=num_shards)
  (z_mean, z_mean_non), (z_logvar, z_logvar_non) = split(enc.z_mean), split(enc.z_logvar)
  z = models.reparameterize(step_key, z_mean, z_logvar)
  z_non = models.reparameterize(jax.random.fold_in(step_key, 1), z_mean_non, z_logvar_non)
  x_recon = models.decode(params, join(z, z_non), dtype=dtype, impl=impl)
  vae = losses.vae_loss(inputs.images, x_recon, join(z_mean, z_mean_non),
                        join(z_logvar, z_logvar_non), kl_weight, recon)
  return jnp.sum(inputs.labels * vae), split(vae)[0]


def train_step_decoding_every_row(
    state: TrainState, batch: data_lib.Batch, key: jax.Array, *,
    optimizer: optax.GradientTransformation, kl_weight: float, recon: str, dtype: Any,
    num_shards: int = 1, augment: ml_collections.ConfigDict | None = None,
    impl: str = "auto", vae_weight: float = 1.0) -> tuple[TrainState, dict[str, jax.Array]]:
  """:func:`jaxface.train.train_step` with the decoder run on every row (a VAE).

  Takes the same step (up to rounding) at the cost of decoding the non-faces too. Arguments
  and returns as :func:`jaxface.train.train_step`.
  """
  return step_with_vae_loss(state, batch, key, every_row_vae_loss, optimizer=optimizer,
                            kl_weight=kl_weight, recon=recon, dtype=dtype,
                            num_shards=num_shards, augment=augment, impl=impl,
                            vae_weight=vae_weight)
