"""The data-parallel train step of the standard CNN and the SS-/DB-VAE.

:func:`train_step` is one optimisation step; :func:`make_train_step` jits a step function
for a device mesh. The step is built from small pieces (:func:`step_inputs`, the loss with a
pluggable VAE term in :func:`step_with_vae_loss`, :func:`apply_gradients`,
:func:`step_metrics`), which :mod:`jaxface.train.equal_work` reuses.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxface import augment as augment_lib
from jaxface import data as data_lib
from jaxface import losses, models
from jaxface.sharding import DATA_AXIS
from jaxface.train.state import TrainState, compute_dtype

# (params, encoder outputs, step inputs, step key, **settings) -> (the VAE terms' sum over the
# batch, (B / 2,) the faces' VAE losses).
VaeLoss = Callable[..., tuple[jax.Array, jax.Array]]


def join_halves(faces: jax.Array, non_faces: jax.Array, num_shards: int = 1) -> jax.Array:
  """The faces and non-faces of a batch as one array, each device's rows kept on the device.

  Each half is split in ``num_shards`` equal shards along the batch axis (one per device of
  the ``data`` axis); shard ``i`` of the result is shard ``i`` of the faces, then shard ``i``
  of the non-faces. A plain concatenation would put the faces on the first half of the
  devices and the non-faces on the others, so XLA would move rows between devices
  (all-gathers or collective-permutes) before the first convolution; this interleaving is a
  local reshape on every device (tested on 4 devices).

  Args:
    faces: (B / 2, ...), B / 2 a multiple of ``num_shards``.
    non_faces: (B / 2, ...).
    num_shards: the devices each half is split over (1: a plain concatenation).

  Returns:
    (B, ...).
  """
  if faces.shape != non_faces.shape:
    raise ValueError(f"a batch needs as many faces as non-faces of one shape, got faces "
                     f"{faces.shape} and non_faces {non_faces.shape}")
  half = faces.shape[0]
  if half % num_shards:
    raise ValueError(f"{half} faces cannot be split into {num_shards} equal shards")
  shape = (num_shards, half // num_shards) + faces.shape[1:]
  return jnp.stack([faces.reshape(shape), non_faces.reshape(shape)], axis=1).reshape(
      (2 * half,) + faces.shape[1:])


def split_halves(x: jax.Array, num_shards: int = 1) -> tuple[jax.Array, jax.Array]:
  """The inverse of :func:`join_halves`: the face rows and the non-face rows of ``x``.

  Args:
    x: (B, ...) in the layout of :func:`join_halves` with ``num_shards``.
    num_shards: as given to :func:`join_halves`.

  Returns:
    (B / 2, ...) face rows and (B / 2, ...) non-face rows, each in its original order.
  """
  if x.shape[0] % (2 * num_shards):
    raise ValueError(f"a batch of {x.shape[0]} rows cannot be {num_shards} shards of faces "
                     "and non-faces")
  blocks = x.reshape((num_shards, 2, x.shape[0] // (2 * num_shards)) + x.shape[1:])
  rows = (x.shape[0] // 2,) + x.shape[1:]
  return blocks[:, 0].reshape(rows), blocks[:, 1].reshape(rows)


class StepInputs(NamedTuple):
  """A batch as the step's model sees it.

  Attributes:
    images: (B, H, W, 3) faces and non-faces joined by :func:`join_halves`, augmented.
    labels: (B,) float32, 1 for the face rows and 0 for the non-face rows.
    faces: (B / 2, H, W, 3) the face rows of ``images``, in ``batch.faces`` order.
  """
  images: jax.Array
  labels: jax.Array
  faces: jax.Array


def step_inputs(state: TrainState, batch: data_lib.Batch, key: jax.Array,
                augment: ml_collections.ConfigDict | None, num_shards: int) -> StepInputs:
  """The joined (and, with ``augment`` enabled, augmented) batch and its labels."""
  images = join_halves(batch.faces, batch.non_faces, num_shards)
  n_faces = batch.faces.shape[0]
  labels = join_halves(jnp.ones((n_faces,), jnp.float32), jnp.zeros((n_faces,), jnp.float32),
                       num_shards)
  faces = batch.faces
  if augment is not None and augment.enabled:
    images = augment_lib.augment_for_step(key, state.step, images, labels, augment, num_shards)
    faces = split_halves(images, num_shards)[0]
  return StepInputs(images, labels, faces)


def faces_vae_loss(params: Any, enc: models.EncoderOutput, inputs: StepInputs,
                   step_key: jax.Array, *, kl_weight: float, recon: str, dtype: Any, impl: str,
                   num_shards: int) -> tuple[jax.Array, jax.Array]:
  """The VAE loss of the faces, decoding the faces' latent codes only.

  Args:
    params: the model parameters.
    enc: the encoder's outputs for ``inputs.images``.
    inputs: the step's joined batch.
    step_key: the step's PRNG key; the faces' (B / 2, k) latent noise is drawn from it.
    kl_weight: KL weight of the VAE loss.
    recon: 'l1' or 'l2' reconstruction loss.
    dtype: compute dtype.
    impl: the model implementation.
    num_shards: as given to :func:`join_halves`.

  Returns:
    The sum of the faces' VAE losses and the (B / 2,) losses themselves.
  """
  (z_mean, _), (z_logvar, _) = (split_halves(enc.z_mean, num_shards),
                                split_halves(enc.z_logvar, num_shards))
  z = models.reparameterize(step_key, z_mean, z_logvar)
  x_recon = models.decode(params, z, dtype=dtype, impl=impl)
  vae = losses.vae_loss(inputs.faces, x_recon, z_mean, z_logvar, kl_weight, recon)
  return jnp.sum(vae), vae


def apply_gradients(state: TrainState, grads: Any, batch_stats: Any,
                    optimizer: optax.GradientTransformation) -> TrainState:
  """The state after one optimizer update, with the batch's batch-norm statistics."""
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  return TrainState(step=state.step + 1, params=params, batch_stats=batch_stats,
                    opt_state=opt_state)


def step_metrics(loss: jax.Array, cls: jax.Array, vae: jax.Array, y_logit: jax.Array,
                 labels: jax.Array) -> dict[str, jax.Array]:
  """The step's scalar metrics from its (B,) classification and (B / 2,) faces' VAE losses."""
  return {
      "loss": loss,
      "classification_loss": jnp.mean(cls),
      "vae_loss_faces": jnp.mean(vae),
      "accuracy": jnp.mean(((y_logit > 0).astype(jnp.float32) == labels).astype(jnp.float32)),
  }


def step_with_vae_loss(state: TrainState, batch: data_lib.Batch, key: jax.Array,
                       vae_loss: VaeLoss, *, optimizer: optax.GradientTransformation,
                       kl_weight: float, recon: str, dtype: Any, num_shards: int,
                       augment: ml_collections.ConfigDict | None,
                       impl: str, vae_weight: float = 1.0
                       ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimisation step whose VAE term is ``vae_loss`` (see :func:`train_step`).

  The loss is the batch's classification losses plus ``vae_weight`` times ``vae_loss``'s sum,
  over the batch size (the mean classification loss for the CNN, which has no VAE term).
  """
  step_key = jax.random.fold_in(key, state.step)
  is_vae = models.latent_dim_of(state.params) > 0
  inputs = step_inputs(state, batch, key, augment, num_shards)
  n_faces = batch.faces.shape[0]

  def loss_fn(params):
    variables = {"params": params, "batch_stats": state.batch_stats}
    enc = models.encode(variables, inputs.images, train=True, dtype=dtype, impl=impl)
    cls = losses.classification_loss(enc.y_logit, inputs.labels)
    if not is_vae:
      return jnp.mean(cls), (enc.batch_stats, enc.y_logit, cls, jnp.zeros((n_faces,)))
    vae_sum, vae = vae_loss(params, enc, inputs, step_key, kl_weight=kl_weight, recon=recon,
                            dtype=dtype, impl=impl, num_shards=num_shards)
    total = (jnp.sum(cls) + vae_weight * vae_sum) / inputs.labels.shape[0]
    return total, (enc.batch_stats, enc.y_logit, cls, vae)

  (loss, (batch_stats, y_logit, cls, vae)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  return (apply_gradients(state, grads, batch_stats, optimizer),
          step_metrics(loss, cls, vae, y_logit, inputs.labels))


def train_step(state: TrainState, batch: data_lib.Batch, key: jax.Array, *,
               optimizer: optax.GradientTransformation, kl_weight: float, recon: str,
               dtype: Any, num_shards: int = 1,
               augment: ml_collections.ConfigDict | None = None,
               impl: str = "auto", vae_weight: float = 1.0
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimisation step of the CNN (latent_dim 0) or the SS-/DB-VAE.

  With ``augment`` enabled, every image of the joined batch, face or non-face, is first
  augmented by :func:`jaxface.augment.augment_for_step` (key ``fold_in(fold_in(key,
  state.step), AUG_STREAM)``, per-row keys in one-shard order), so the augmentation does not
  depend on ``num_shards``; the classifier sees and the VAE reconstructs the augmented images.
  With ``fill='reflect'`` each row is augmented on its own device; ``fill='background'`` draws
  every row's background from the non-faces of the whole batch, so XLA gathers rows across
  devices for it.

  The encoder (and its batch norms) sees the whole batch, faces and non-faces joined by
  :func:`join_halves`. The VAE loss counts for faces only, so the decoder runs on
  ``batch.faces``' latent codes only (:func:`faces_vae_loss`;
  :func:`jaxface.train.equal_work.train_step_decoding_every_row` does the work of a step that
  decodes every row and takes the same step). The faces' latent noise is a (B / 2, k) draw
  from ``fold_in(key, state.step)`` in ``batch.faces`` order, so it does not depend on
  ``num_shards``, and each device draws its own rows.

  Args:
    state: the train state.
    batch: ``faces`` and ``non_faces``, (B / 2, H, W, 3) float32 in [0, 1] each.
    key: the run's base PRNG key; the step's key is ``fold_in(key, state.step)``.
    optimizer: the optax transformation.
    kl_weight: KL weight of the VAE loss.
    recon: 'l1' or 'l2' reconstruction loss.
    dtype: compute dtype.
    num_shards: the devices each half of the batch is split over (:func:`join_halves`); it
      changes the rows' order inside the step, not the step.
    augment: fields of :func:`jaxface.augment.default_augment_config` (read at trace time);
      None or ``enabled=False`` trains on the batch as it is.
    impl: the model implementation (:data:`jaxface.models.IMPLS`).
    vae_weight: weight of the faces' VAE loss beside the classification loss
      (``config.loss.vae_weight``).

  Returns:
    The new state and scalar metrics (loss, classification, vae, accuracy).
  """
  return step_with_vae_loss(state, batch, key, faces_vae_loss, optimizer=optimizer,
                            kl_weight=kl_weight, recon=recon, dtype=dtype,
                            num_shards=num_shards, augment=augment, impl=impl,
                            vae_weight=vae_weight)


def make_train_step(config: ml_collections.ConfigDict, optimizer: optax.GradientTransformation,
                    mesh: Mesh, *, step_fn: Callable[..., Any] = train_step):
  """The jitted step ``(state, batch, key) -> (state, metrics)`` of ``step_fn``.

  State and key are replicated, both halves of the :class:`jaxface.data.Batch` are sharded on
  the ``data`` axis (``num_shards`` is the mesh's device count, so no row leaves its device),
  and the state is donated. ``config.augment`` (a frozen copy) augments every batch inside the
  step.

  Args:
    config: the run config.
    optimizer: the optax transformation.
    mesh: the device mesh.
    step_fn: a step with the signature of :func:`train_step`, e.g.
      :func:`jaxface.train.equal_work.train_step_decoding_every_row`.

  Returns:
    The jitted step.
  """
  step = functools.partial(
      step_fn, optimizer=optimizer, kl_weight=config.loss.kl_weight,
      recon=config.loss.recon, vae_weight=config.loss.vae_weight,
      dtype=compute_dtype(config), num_shards=mesh.devices.size,
      impl=config.model.impl, augment=ml_collections.FrozenConfigDict(config.augment))
  repl, batch = NamedSharding(mesh, P()), NamedSharding(mesh, P(DATA_AXIS))
  return jax.jit(step, in_shardings=(repl, batch, repl), out_shardings=(repl, repl),
                 donate_argnums=(0,))
