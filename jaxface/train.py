"""Training and evaluation of the standard CNN, the SS-VAE and the DB-VAE.

``train_and_evaluate(config, workdir)`` reads top to bottom:

1. set-up: validate the config, build the device mesh, load the data;
2. the train state and one jitted, data-parallel train step (batch sharded on the ``data`` mesh
   axis, parameters replicated, the state donated, per-step randomness from
   ``jax.random.fold_in(key, step)``);
3. DB-VAE resampling: at the start of every epoch all training faces are encoded with a
   jitted, sharded, batched pass and the batcher's face probabilities are replaced (or, with
   ``resampling.signal='groups'``, mass by labelled group from the group sizes, for any model);
4. checkpoints (Orbax, under ``WORKDIR/checkpoints``) that resume exactly where a run stopped,
   after checking that the run's seed, batch, model, data size and PRNG key match the
   checkpoint's (:func:`run_identity`);
5. the loop, with a progress bar, metrics every ``log_every_steps`` steps to
   ``WORKDIR/metrics.jsonl`` and TensorBoard, and evaluation at every epoch end;
6. the final summary, ``WORKDIR/metrics.json`` and the report.
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxface import config as config_lib
from jaxface import data as data_lib
from jaxface import losses, models, resampling

PyTree = Any
DATA_AXIS = "data"


# --------------------------------------------------------------------------------------------
# Set-up
# --------------------------------------------------------------------------------------------


def make_mesh(devices: list | None = None) -> Mesh:
  """A one-axis mesh named ``data`` over ``devices`` (default: every device of every host)."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def compute_dtype(config: ml_collections.ConfigDict):
  return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[config.dtype]


def shard_batch(mesh: Mesh, array: np.ndarray) -> jax.Array:
  """Places a global host batch (B, ...) on the mesh, split along B over ``data``.

  Every process holds the same global batch (the batcher is deterministic) and contributes the
  rows of its own devices, so this works on one host and on many.
  """
  sharding = NamedSharding(mesh, P(DATA_AXIS))
  return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def replicate(mesh: Mesh, tree: PyTree) -> PyTree:
  return jax.device_put(tree, NamedSharding(mesh, P()))


# --------------------------------------------------------------------------------------------
# Train state and step
# --------------------------------------------------------------------------------------------


@flax.struct.dataclass
class TrainState:
  """Everything the step updates. ``step`` is the global step (int32 scalar)."""
  step: jax.Array
  params: PyTree
  batch_stats: PyTree
  opt_state: PyTree

  @property
  def variables(self) -> PyTree:
    return {"params": self.params, "batch_stats": self.batch_stats}


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  return optax.adam(config.learning_rate)


def create_train_state(key: jax.Array, config: ml_collections.ConfigDict,
                       optimizer: optax.GradientTransformation) -> TrainState:
  variables = models.init_variables(key, latent_dim=config.model.latent_dim,
                                    n_filters=config.model.n_filters,
                                    image_size=config.data.image_size)
  return TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                    batch_stats=variables["batch_stats"],
                    opt_state=optimizer.init(variables["params"]))


def batch_half(x: jax.Array, num_shards: int, half: int) -> jax.Array:
  """The face (``half=0``) or non-face (``half=1``) rows of a batch in the batcher's layout.

  :class:`jaxface.data.Batcher` with ``num_devices=num_shards`` lays a batch of B rows out as
  ``(num_shards, 2, B / (2 * num_shards))``: every shard holds faces, then as many non-faces.
  The rows of one half come back in the order they have with one shard, whatever
  ``num_shards`` is, and a batch sharded over ``num_shards`` devices keeps each row on its
  device.

  Args:
    x: (B, ...) with B a multiple of ``2 * num_shards``.
    num_shards: the batcher's ``num_devices``.
    half: 0 for the faces, 1 for the non-faces.

  Returns:
    (B / 2, ...).
  """
  batch = x.shape[0]
  if batch % (2 * num_shards):
    raise ValueError(f"a batch of {batch} rows cannot be {num_shards} shards of half faces, "
                     "half non-faces")
  blocks = x.reshape((num_shards, 2, batch // (2 * num_shards)) + x.shape[1:])
  return blocks[:, half].reshape((batch // 2,) + x.shape[1:])


def train_step(state: TrainState, images: jax.Array, labels: jax.Array, key: jax.Array, *,
               optimizer: optax.GradientTransformation, kl_weight: float, recon: str,
               dtype: Any, face_half_shards: int | None = None,
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimisation step of the CNN (latent_dim 0) or the SS-/DB-VAE.

  The VAE loss counts for faces only, so a decoder pass over a non-face changes nothing. With
  ``face_half_shards`` the batch must be in the batcher's layout (:func:`batch_half`) and the
  decoder runs on the face halves only: the same loss and gradients as decoding every row at
  about half the decoder's cost. The faces' latent noise does not depend on the layout: JAX's
  default (partitionable) threefry draws the same noise for the first B / 2 rows of a (B, k)
  draw as for a (B / 2, k) draw, so both give the same step (tested), and each device draws
  its own rows. A face among the non-face halves would lose its VAE term: the loss is NaN
  instead.

  Args:
    state: the train state.
    images: (B, H, W, 3) float32 in [0, 1].
    labels: (B,) 1 = face.
    key: the run's base PRNG key; the step's key is ``fold_in(key, state.step)``.
    optimizer: the optax transformation.
    kl_weight: KL weight of the VAE loss.
    recon: 'l1' or 'l2' reconstruction loss.
    dtype: compute dtype.
    face_half_shards: None decodes every row; S decodes the face halves of a batch laid out in
      S shards of half faces, half non-faces.

  Returns:
    The new state and scalar metrics (loss, classification, vae, accuracy).
  """
  step_key = jax.random.fold_in(key, state.step)
  is_vae = models.latent_dim_of(state.params) > 0
  faces = losses.flat_labels(labels, images.shape[0])

  def loss_fn(params):
    variables = {"params": params, "batch_stats": state.batch_stats}
    if not is_vae:
      out = models.forward(variables, images, None, train=True, dtype=dtype)
      cls = losses.classification_loss(out.y_logit, faces)
      return jnp.mean(cls), (out.batch_stats, out.y_logit, cls, jnp.zeros_like(cls), faces)
    if face_half_shards is None:
      out = models.forward(variables, images, step_key, train=True, dtype=dtype)
      parts = losses.debiasing_loss(images, out.x_recon, faces, out.y_logit, out.z_mean,
                                    out.z_logvar, kl_weight, recon)
      return parts.total, (out.batch_stats, out.y_logit, parts.classification, parts.vae, faces)
    half = functools.partial(batch_half, num_shards=face_half_shards, half=0)
    enc = models.encode(variables, images, train=True, dtype=dtype)
    z_mean, z_logvar = half(enc.z_mean), half(enc.z_logvar)
    z = models.reparameterize(step_key, z_mean, z_logvar)
    x_recon = models.decode(params, z, dtype=dtype)
    cls = losses.classification_loss(enc.y_logit, faces)
    vae = losses.vae_loss(half(images), x_recon, z_mean, z_logvar, kl_weight, recon)
    face_of_half = half(faces)
    total = (jnp.sum(cls) + jnp.sum(face_of_half * vae)) / faces.shape[0]
    misplaced = jnp.any(batch_half(faces, face_half_shards, 1) != 0)
    total = jnp.where(misplaced, jnp.nan, total)
    return total, (enc.batch_stats, enc.y_logit, cls, vae, face_of_half)

  (loss, (batch_stats, y_logit, cls, vae, vae_faces)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  new_state = TrainState(step=state.step + 1, params=params, batch_stats=batch_stats,
                         opt_state=opt_state)
  metrics = {
      "loss": loss,
      "classification_loss": jnp.mean(cls),
      "vae_loss_faces": jnp.sum(vae * vae_faces) / jnp.maximum(jnp.sum(vae_faces), 1.0),
      "accuracy": jnp.mean(((y_logit > 0).astype(jnp.float32) == faces).astype(jnp.float32)),
  }
  return new_state, metrics


def make_train_step(config: ml_collections.ConfigDict, optimizer: optax.GradientTransformation,
                    mesh: Mesh, *, decode_every_row: bool = False):
  """The jitted step: state and key replicated, batch sharded on ``data``, state donated.

  The step takes batches in the layout of ``jaxface.data.Batcher(..., num_devices=n)`` with
  ``n`` the mesh's device count, and a VAE decodes their face halves only
  (:func:`train_step`'s ``face_half_shards``); ``decode_every_row`` decodes every row instead.
  """
  step_fn = functools.partial(
      train_step, optimizer=optimizer, kl_weight=config.loss.kl_weight,
      recon=config.loss.recon, dtype=compute_dtype(config),
      face_half_shards=None if decode_every_row else mesh.devices.size)
  repl, batch = NamedSharding(mesh, P()), NamedSharding(mesh, P(DATA_AXIS))
  return jax.jit(step_fn, in_shardings=(repl, batch, batch, repl), out_shardings=(repl, repl),
                 donate_argnums=(0,))


# --------------------------------------------------------------------------------------------
# Sharded inference (evaluation and the resampling pass)
# --------------------------------------------------------------------------------------------


def _unit_float(images: jax.Array) -> jax.Array:
  """uint8 images as float32 in [0, 1]; float images unchanged."""
  return images.astype(jnp.float32) / 255.0 if images.dtype == jnp.uint8 else images


@functools.partial(jax.jit, static_argnames=("dtype", "recon", "with_recon"))
def _infer(variables, images, dtype, recon, with_recon=True):
  """Eval-mode encoding of one batch; decodes ``z_mean`` only for a VAE with ``with_recon``."""
  x = _unit_float(images)
  enc = models.encode(variables, x, train=False, dtype=dtype)
  out = {"face_prob": jax.nn.sigmoid(enc.y_logit), "z_mean": enc.z_mean}
  if with_recon and models.latent_dim_of(variables["params"]) > 0:
    x_recon = models.decode(variables["params"], enc.z_mean, dtype=dtype)
    out["recon_error"] = losses.reconstruction_loss(x, x_recon, recon)
  return out


def infer_dataset(variables: PyTree, images: np.ndarray, mesh: Mesh, batch_size: int = 256,
                  dtype: Any = jnp.float32, recon: str = "l1",
                  with_recon: bool = True) -> dict[str, np.ndarray]:
  """Eval-mode pass over a whole image array, batched and sharded over the mesh.

  Args:
    variables: model variables (replicated on the mesh).
    images: (N, H, W, 3) uint8 or float32 images on the host.
    mesh: the device mesh; each batch is split over its ``data`` axis.
    batch_size: images per pass (rounded up to a multiple of the device count).
    dtype: compute dtype.
    recon: reconstruction error kind ('l1' or 'l2').
    with_recon: decode ``z_mean`` and return its reconstruction error (a VAE only); False
      skips the decoder.

  Returns:
    ``face_prob (N,)``, ``z_mean (N, k)`` and, for a VAE with ``with_recon``,
    ``recon_error (N,)`` (decoding ``z_mean``), as NumPy arrays.
  """
  n_dev = mesh.devices.size
  batch_size = max(n_dev, -(-batch_size // n_dev) * n_dev)
  n = images.shape[0]
  parts = []
  for start in range(0, n, batch_size):
    chunk = images[start:start + batch_size]
    if chunk.shape[0] < batch_size:  # pad the last batch: one compiled shape
      pad = np.zeros((batch_size - chunk.shape[0],) + chunk.shape[1:], chunk.dtype)
      chunk = np.concatenate([chunk, pad])
    parts.append(_infer(variables, shard_batch(mesh, chunk), dtype, recon, with_recon))
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    parts = [multihost_utils.process_allgather(p, tiled=True) for p in parts]
  parts = jax.device_get(parts)
  return {key: np.concatenate([p[key] for p in parts])[:n] for key in parts[0]} if parts else {}


@functools.partial(jax.jit, static_argnames=("dtype",))
def _batch_norm_statistics(variables, images, dtype):
  return models.batch_norm_statistics(variables, _unit_float(images), dtype=dtype)


def recalibrate_batch_norm(state: TrainState, train_data: data_lib.FaceData, mesh: Mesh,
                           config: ml_collections.ConfigDict, epoch: int) -> TrainState:
  """Replaces the running batch-norm statistics by their mean over uniform training batches.

  The exponential running averages (momentum ``models.BN_MOMENTUM``) follow the last few dozen
  training batches, which are small and, for the DB-VAE, drawn with the resampling weights;
  in eval mode their noise can shift the face logits of a whole group. Averaging the batch
  statistics of ``config.bn_recalibration_batches`` batches of ``config.eval_batch_size``
  images (half faces, half non-faces, drawn uniformly and deterministically from ``seed + 1``
  and the epoch, a stream apart from the training batches') gives population statistics
  instead. Training is unaffected: train-mode steps use the statistics of their own batch.

  Args:
    state: the train state.
    train_data: the training set (faces and non-faces).
    mesh: device mesh; each batch is sharded over its ``data`` axis.
    config: the run config.
    epoch: the epoch just finished (selects the batches).

  Returns:
    The state with new ``batch_stats``.
  """
  n_dev = mesh.devices.size
  batch_size = max(2 * n_dev, -(-config.eval_batch_size // (2 * n_dev)) * 2 * n_dev)
  batcher = data_lib.Batcher(train_data, batch_size, seed=config.seed + 1, num_devices=1,
                             steps_per_epoch=config.bn_recalibration_batches)
  total = None
  for images, _ in batcher.epoch_batches(epoch):
    stats = _batch_norm_statistics(state.variables, shard_batch(mesh, images),
                                   compute_dtype(config))
    total = stats if total is None else jax.tree.map(jnp.add, total, stats)
  n = config.bn_recalibration_batches
  return state.replace(batch_stats=jax.tree.map(lambda s: s / n, total))


def resampling_probabilities(config: ml_collections.ConfigDict, variables: PyTree,
                             train_faces: data_lib.FaceData, mesh: Mesh,
                             epoch: int = 0) -> tuple[np.ndarray, dict[str, Any]]:
  """New face sampling probabilities from the current model (the epoch-start pass).

  Args:
    config: the run config (``resampling`` and ``loss.recon`` are read).
    variables: current model variables.
    train_faces: the training faces.
    mesh: device mesh for the encoding pass.
    epoch: the epoch about to start (signal 'errors' samples uniformly in epoch 0, before the
      model has learnt anything).

  Returns:
    ``(n_faces,)`` float64 probabilities and a summary: the effective sample size (Kish) and,
    when the faces carry group labels, each group's share of the sampling mass next to its
    share of the faces.
  """
  rs = config.resampling
  parts = config_lib.signal_parts(rs.signal)
  info: dict[str, Any] = {}
  if parts == ["groups"]:
    p = resampling.group_balanced_probabilities(train_faces.groups, rs.group_power)
  else:
    # Only the epistemic signal needs the reconstruction error: the others skip the decoder.
    out = infer_dataset(variables, train_faces.images, mesh, config.eval_batch_size,
                        compute_dtype(config), config.loss.recon,
                        with_recon="epistemic" in parts)
    z_mean = out["z_mean"]
    if not np.isfinite(z_mean).all():
      raise FloatingPointError("the encoder produced non-finite latent means for the training "
                               "faces; cannot compute resampling probabilities")
    signals = []
    for part in parts:
      if part == "latent":
        signals.append(resampling.sampling_probabilities(z_mean, rs.bins, rs.alpha, rs.combine))
      elif part == "epistemic":
        signals.append(resampling.epistemic_probabilities(out["recon_error"]))
      elif part == "latent_pca":
        signals.append(resampling.latent_pca_probabilities(
            z_mean, rs.components, rs.bins, rs.alpha, rs.active_variance))
      elif part == "clusters":
        signals.append(resampling.cluster_probabilities(
            z_mean, rs.clusters, rs.components, rs.active_variance, seed=config.seed))
      elif part == "errors":
        n = z_mean.shape[0]
        signals.append(np.full(n, 1.0 / n) if epoch == 0 else resampling.error_probabilities(
            out["face_prob"], rs.error_upweight, rs.error_kind))
    p = (signals[0] if len(signals) == 1 else
         resampling.blend(np.stack([np.asarray(q) for q in signals]),
                          config_lib.blend_weights(rs)))
  if rs.target_ess:
    p, power = resampling.temper_to_ess(p, rs.target_ess)
    info["power"] = float(power)
  if rs.max_weight:
    p = resampling.cap_weights(p, rs.max_weight)
  p = np.asarray(p, np.float64)
  if not np.isfinite(p).all() or p.sum() <= 0:
    raise FloatingPointError(f"resampling signal {rs.signal!r} gave non-finite probabilities")
  p = p / p.sum()
  info.update(ess=resampling.effective_sample_size(p), n_faces=int(p.size))
  info["ess_fraction"] = info["ess"] / p.size
  if info["ess"] < max(0.01 * p.size, config.batch_size // 2):  # < 1%, or < one batch's faces
    logging.warning(
        "resampling puts almost all sampling mass on a few faces (effective sample size %.1f "
        "of %d): training will see little but them. combine='product' over many latent "
        "dimensions does this; combine='max' or a larger alpha spreads the mass.",
        info["ess"], p.size)
  groups = train_faces.groups
  if any(groups):
    info["mass_by_group"] = {g: float(p[groups == g].sum()) for g in train_faces.group_names}
    info["share_by_group"] = {g: float(np.mean(groups == g)) for g in train_faces.group_names}
  return p, info


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------


def run_identity(config: ml_collections.ConfigDict, steps_per_epoch: int, n_train_faces: int,
                 step_key: jax.Array) -> dict[str, Any]:
  """What a resumed run must share with the run that wrote the checkpoint (JSON-ready).

  ``num_epochs`` is not part of it: a finished run may be resumed with more epochs.

  Args:
    config: the run config.
    steps_per_epoch: the resolved number of steps per epoch.
    n_train_faces: the number of training faces (after the validation split).
    step_key: the run's base step key (host or replicated).

  Returns:
    A flat dict keyed by field name; ``step_key`` is ``jax.random.key_data`` as a list.
  """
  return {
      "seed": int(config.seed),
      "batch_size": int(config.batch_size),
      "steps_per_epoch": int(steps_per_epoch),
      "model.kind": str(config.model.kind),
      "model.latent_dim": int(config.model.latent_dim),
      "model.n_filters": int(config.model.n_filters),
      "data.image_size": int(config.data.image_size),
      "n_train_faces": int(n_train_faces),
      "step_key": np.asarray(jax.device_get(jax.random.key_data(step_key))).ravel().tolist(),
  }


def check_resume(meta: dict[str, Any], current: dict[str, Any],
                 checkpoint_dir: str | os.PathLike) -> None:
  """Raises ValueError when a checkpoint's run identity differs from the current run's.

  Fields the checkpoint lacks (one written before these checks) are not compared.

  Args:
    meta: the checkpoint's meta (run-identity fields at its top level).
    current: :func:`run_identity` of the current run.
    checkpoint_dir: the checkpoint directory (for the message).
  """
  differ = [field for field, value in current.items() if field in meta and meta[field] != value]
  if "seed" in differ and "step_key" in differ:
    differ.remove("step_key")  # another seed gives another key: name the cause only
  mismatches = [f"{field}: checkpoint has {meta[field]!r}, config has {current[field]!r}"
                for field in differ]
  if mismatches:
    hint = (" (the same seed gave another PRNG key: a different JAX version or PRNG "
            "implementation)" if "step_key" in differ else "")
    raise ValueError(
        f"cannot resume from the checkpoints in {checkpoint_dir}: the run that wrote them "
        f"differs from this one in {'; '.join(mismatches)}{hint}. Use a fresh --workdir for "
        "the new settings, or run again with the checkpoint's values to resume.")


class Checkpoints:
  """Orbax checkpoints of the train state, the face probabilities and the loop position.

  Each checkpoint (keyed by global step) holds ``state`` (the TrainState), ``probs`` (the
  batcher's face probabilities) and ``meta`` (epoch, step within the epoch, per-epoch history
  and the :func:`run_identity` fields).
  """

  def __init__(self, directory: Path, keep: int):
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           cleanup_tmp_directories=True)
    self.manager = ocp.CheckpointManager(Path(directory).absolute(), options=options,
                                         item_names=("state", "probs", "meta"))

  def save(self, state: TrainState, probs: np.ndarray, meta: dict[str, Any]) -> None:
    # A host copy: the device buffers are donated to the next step while Orbax writes.
    host_state = jax.device_get(state)
    step = int(host_state.step)
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(host_state),
        probs=ocp.args.StandardSave({"face_probs": np.asarray(probs, np.float64)}),
        meta=ocp.args.JsonSave(meta)), force=True)

  def restore_latest(self, abstract_state: TrainState, n_faces: int,
                     check_meta: Callable[[dict[str, Any]], Any] | None = None):
    """The newest readable checkpoint as ``(state, probs, meta)``, or None when there is none.

    A checkpoint that fails to restore (corrupt or partial) is skipped with a warning and the
    previous one is tried.

    Args:
      abstract_state: the TrainState's shapes and dtypes.
      n_faces: the length of the face probabilities.
      check_meta: called with each checkpoint's meta before its state is read; the errors it
        raises (e.g. :func:`check_resume`'s ValueError) are not caught.
    """
    abstract_probs = {"face_probs": jax.ShapeDtypeStruct((n_faces,), np.float64)}
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        meta = self.manager.restore(step, args=ocp.args.Composite(
            meta=ocp.args.JsonRestore())).meta
      except Exception as err:  # noqa: BLE001 -- any failure means: try the previous one
        self._skip(step, err)
        continue
      if check_meta is not None:
        check_meta(meta)
      try:
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            probs=ocp.args.StandardRestore(abstract_probs)))
        return restored.state, np.asarray(restored.probs["face_probs"]), meta
      except Exception as err:  # noqa: BLE001
        self._skip(step, err)
    return None

  def _skip(self, step: int, err: Exception) -> None:
    logging.warning("checkpoint at step %d in %s could not be restored (%s: %s); "
                    "falling back to the previous checkpoint", step, self.manager.directory,
                    type(err).__name__, err)

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


def load_run(workdir: str | os.PathLike) -> tuple[ml_collections.ConfigDict, PyTree]:
  """The config and the latest model variables of a run directory.

  Args:
    workdir: a directory written by :func:`train_and_evaluate`.

  Returns:
    ``(config, variables)`` with variables as host NumPy arrays.
  """
  workdir = Path(workdir).absolute()
  config_path = workdir / "config.json"
  if not config_path.exists():
    raise FileNotFoundError(f"{config_path} not found: is {workdir} a jaxface run directory?")
  config = ml_collections.ConfigDict(json.loads(config_path.read_text()))
  optimizer = make_optimizer(config)
  abstract = jax.eval_shape(lambda: create_train_state(jax.random.key(0), config, optimizer))
  probs_len = json.loads((workdir / "run_info.json").read_text())["n_train_faces"]
  ckpts = Checkpoints(workdir / "checkpoints", keep=max(1, config.keep_checkpoints))
  restored = ckpts.restore_latest(abstract, probs_len)
  ckpts.close()
  if restored is None:
    raise FileNotFoundError(f"no readable checkpoint under {workdir / 'checkpoints'}")
  return config, jax.device_get(restored[0].variables)


# --------------------------------------------------------------------------------------------
# Logging helpers
# --------------------------------------------------------------------------------------------


class MetricWriter:
  """Appends metrics to ``metrics.jsonl`` and TensorBoard event files (process 0 only)."""

  def __init__(self, workdir: Path, active: bool):
    self.active = active
    self.path = workdir / "metrics.jsonl"
    self.tb = None
    if active:
      try:
        from tensorboardX import SummaryWriter
        self.tb = SummaryWriter(str(workdir / "tensorboard"))
      except ImportError:  # TensorBoard files are optional; the jsonl log is not
        logging.warning("tensorboardX is not installed: writing metrics.jsonl only")

  def truncate_after(self, step: int) -> None:
    """Drops lines logged after ``step`` (a resumed run logs those steps again)."""
    if not self.active or not self.path.exists():
      return
    lines = [line for line in self.path.read_text().splitlines()
             if line and json.loads(line).get("step", 0) <= step]
    self.path.write_text("".join(line + "\n" for line in lines))

  def write(self, step: int, metrics: dict[str, Any]) -> None:
    if not self.active:
      return
    with self.path.open("a") as f:
      f.write(json.dumps({"step": step, **metrics}) + "\n")
    if self.tb is not None:
      for key, value in metrics.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
          self.tb.add_scalar(key, value, step)
      self.tb.flush()

  def close(self) -> None:
    if self.tb is not None:
      self.tb.close()


def _progress(total: int, initial: int, active: bool):
  if not active:
    return None
  from tqdm.auto import tqdm
  return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, smoothing=0.1)


def _json_default(value):
  if isinstance(value, (np.floating, np.integer)):
    return value.item()
  raise TypeError(f"not JSON-serialisable: {type(value)}")


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


def evaluate(variables: PyTree, datasets: dict[str, data_lib.FaceData], mesh: Mesh,
             config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Validation accuracy and per-group test detection rates.

  Returns:
    ``val_accuracy``, ``val_face_accuracy``, ``val_non_face_accuracy`` and, with a test set,
    ``test`` (:func:`jaxface.evaluation.group_metrics`).
  """
  from jaxface import evaluation

  result: dict[str, Any] = {}
  dtype = compute_dtype(config)
  val = datasets.get("val")
  if val is not None and len(val):
    prob = infer_dataset(variables, val.images, mesh, config.eval_batch_size, dtype,
                         with_recon=False)["face_prob"]
    pred = prob > 0.5
    result["val_accuracy"] = float(np.mean(pred == (val.labels == 1)))
    faces = val.labels == 1
    if faces.any():
      result["val_face_accuracy"] = float(np.mean(pred[faces]))
    if (~faces).any():
      result["val_non_face_accuracy"] = float(np.mean(~pred[~faces]))
    if any(val.groups[faces]):  # per-group validation rates: for choosing settings
      result["val"] = evaluation.group_metrics(prob, val.labels, val.groups)
  test = datasets.get("test")
  if test is not None and len(test):
    prob = infer_dataset(variables, test.images, mesh, config.eval_batch_size, dtype,
                         with_recon=False)["face_prob"]
    result["test"] = evaluation.group_metrics(prob, test.labels, test.groups)
  return result


def format_summary(config: ml_collections.ConfigDict, final: dict[str, Any]) -> str:
  """The one-screen end-of-run summary."""
  lines = [f"== {config.name} ({config.model.kind}) finished in {final['wall_time_s']:.1f} s, "
           f"{final['images_per_s']:.0f} train images/s, {final['steps']} steps =="]
  ev = final.get("eval", {})
  if "val_accuracy" in ev:
    lines.append(f"validation accuracy {100 * ev['val_accuracy']:.2f}%")
  test = ev.get("test")
  if test:
    lines.append(f"{'group':<10}{'n':>6}{'detection %':>14}{'mean p(face)':>14}")
    for name, g in test["groups"].items():
      rate = "-" if g["detection_rate"] is None else f"{100 * g['detection_rate']:.2f}"
      prob = "-" if g["mean_face_prob"] is None else f"{g['mean_face_prob']:.3f}"
      lines.append(f"{name:<10}{g['n']:>6}{rate:>14}{prob:>14}")
    if test.get("E_A") is not None:
      noise = test.get("Var_A_noise")
      lines.append(f"E[A] {test['E_A']:.2f}%  Var[A] {test['Var_A']:.2f}%²"
                   + ("" if noise is None else f" (test-set sampling alone: ~{noise:.2f}%²)")
                   + f"  worst group {test['worst_group']} {test['worst_rate']:.2f}%")
    if test.get("non_face_accuracy") is not None:
      lines.append(f"non-face accuracy {100 * test['non_face_accuracy']:.2f}%")
  return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *,
                       mesh: Mesh | None = None,
                       stop_at_step: int | None = None) -> dict[str, Any]:
  """Trains the configured model, checkpointing as it goes, and evaluates it.

  A run started again on the same ``workdir`` resumes from the latest readable checkpoint and
  ends with the same parameters and metrics as an uninterrupted run; ``num_epochs`` may grow,
  but a run whose :func:`run_identity` (seed, batch size, steps per epoch, model, number of
  training faces, PRNG key) differs from the checkpoint's raises ValueError.

  Args:
    config: the run configuration (see ``jaxface.config.get_base_config``).
    workdir: output directory (created if needed).
    mesh: the device mesh (default: a ``data`` axis over every device, :func:`make_mesh`).
    stop_at_step: stop right after this global step without writing a checkpoint there, as if
      the process had been killed (for testing resumption). None trains to the end.

  Returns:
    The final metrics (also written to ``WORKDIR/metrics.json``); for a run stopped by
    ``stop_at_step``, ``{'stopped_at_step': step}``.
  """
  # ---- Set-up ------------------------------------------------------------------------------
  if config.get("distributed", False):
    jax.distributed.initialize()
  mesh = make_mesh() if mesh is None else mesh
  config_lib.validate_config(config, mesh.devices.size)
  workdir = Path(workdir).absolute()
  is_main = jax.process_index() == 0
  if is_main:
    workdir.mkdir(parents=True, exist_ok=True)
  logging.info("devices: %d x %s; mesh %s", mesh.devices.size, jax.devices()[0].platform,
               dict(mesh.shape))

  datasets = data_lib.load_datasets(config.data)
  train_data = datasets["train"]
  face_idx = train_data.face_indices()
  train_faces = train_data.subset(face_idx)
  if config.resampling.signal == "groups":  # unlabelled faces fail here, before any compile
    try:
      resampling.group_balanced_probabilities(train_faces.groups, config.resampling.group_power)
    except ValueError as err:
      raise ValueError(f"config.resampling.signal = 'groups': {err}") from None
  # Each device's shard is half faces, half non-faces (the step decodes the face halves only).
  # The batch holds the same images in another order whatever the device count, and the step's
  # loss, batch-norm statistics and latent noise do not depend on that order, so runs on 1 and
  # on N devices take the same steps.
  batcher = data_lib.Batcher(train_data, config.batch_size, seed=config.seed,
                             num_devices=mesh.devices.size,
                             steps_per_epoch=(None if config.steps_per_epoch == -1
                                              else config.steps_per_epoch))
  steps_per_epoch = batcher.steps_per_epoch
  total_steps = steps_per_epoch * config.num_epochs

  # ---- State and step ----------------------------------------------------------------------
  optimizer = make_optimizer(config)
  root_key = jax.random.key(config.seed)
  init_key, step_key = jax.random.split(root_key)
  identity = run_identity(config, steps_per_epoch, int(face_idx.size), step_key)
  abstract_state = jax.eval_shape(lambda: create_train_state(init_key, config, optimizer))
  train_step_fn = make_train_step(config, optimizer, mesh)

  # ---- Resume ------------------------------------------------------------------------------
  # The checkpoint's run identity is checked before its state is read and before config.json
  # is rewritten: a run with other settings fails here and leaves the workdir as it was.
  ckpts = Checkpoints(workdir / "checkpoints", config.keep_checkpoints)
  try:
    restored = ckpts.restore_latest(
        abstract_state, int(face_idx.size),
        check_meta=functools.partial(check_resume, current=identity,
                                     checkpoint_dir=ckpts.manager.directory))
  except ValueError:
    ckpts.close()
    raise
  meta = {} if restored is None else restored[2]
  missing = [field for field in identity if field not in meta]
  if restored is not None and missing:
    logging.warning("the checkpoint in %s predates run-identity checks (it lacks %s): resuming "
                    "without checking that these settings match", ckpts.manager.directory,
                    ", ".join(missing))
  if "step_key" in meta:  # the checkpoint's key (checked equal to the re-derived one)
    step_key = jax.random.wrap_key_data(np.asarray(meta["step_key"], np.uint32).reshape(
        jax.random.key_data(step_key).shape))
  step_key = replicate(mesh, step_key)
  if is_main:
    (workdir / "config.json").write_text(config.to_json(indent=2))
    (workdir / "run_info.json").write_text(json.dumps({
        "n_train_faces": int(face_idx.size), "n_train": len(train_data),
        "steps_per_epoch": steps_per_epoch, "devices": int(mesh.devices.size),
        "platform": jax.devices()[0].platform}, indent=2))
  writer = MetricWriter(workdir, is_main)
  if restored is None:
    state = jax.jit(lambda key: create_train_state(key, config, optimizer),
                    out_shardings=NamedSharding(mesh, P()))(init_key)
    epoch, step_in_epoch, history = 0, 0, {"epochs": [], "resampling": []}
    batcher.set_face_probabilities(None)
    writer.truncate_after(0)
  else:
    state, probs, meta = restored
    state = replicate(mesh, state)
    epoch, step_in_epoch, history = meta["epoch"], meta["step_in_epoch"], meta["history"]
    batcher.set_face_probabilities(probs)
    writer.truncate_after(int(jax.device_get(state.step)))
    logging.info("resuming from step %d (epoch %d, step %d of the epoch)",
                 int(jax.device_get(state.step)), epoch, step_in_epoch)

  def save(state, epoch, step_in_epoch):
    ckpts.save(state, batcher.face_probabilities,
               {"epoch": epoch, "step_in_epoch": step_in_epoch, "history": history, **identity})

  # ---- Loop --------------------------------------------------------------------------------
  pending: list[tuple[int, dict[str, jax.Array]]] = []
  window_start = time.perf_counter()
  train_time, trained_images = 0.0, 0
  bar = _progress(total_steps, epoch * steps_per_epoch + step_in_epoch,
                  is_main and config.progress_bar)

  def flush_metrics():
    """Fetches the pending step metrics (one device sync), checks them, logs their mean."""
    nonlocal window_start, train_time, trained_images
    if not pending:
      return
    fetched = jax.device_get([m for _, m in pending])
    for (step, _), m in zip(pending, fetched):
      if not math.isfinite(float(m["loss"])):
        raise FloatingPointError(
            f"non-finite loss ({float(m['loss'])}) at step {step}: stopping; the last good "
            f"checkpoint is kept in {workdir / 'checkpoints'}")
    elapsed = time.perf_counter() - window_start
    n_images = len(pending) * config.batch_size
    train_time += elapsed
    trained_images += n_images
    mean = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
    mean.update(epoch=epoch, images_per_s=n_images / max(elapsed, 1e-9))
    writer.write(pending[-1][0], mean)
    if bar is not None:
      bar.set_postfix(loss=f"{mean['loss']:.4f}", acc=f"{mean['accuracy']:.3f}",
                      img_s=f"{mean['images_per_s']:.0f}", epoch=epoch)
    pending.clear()
    window_start = time.perf_counter()

  start_time = time.perf_counter()
  try:
    while epoch < config.num_epochs:
      if step_in_epoch == 0 and config.resampling.signal != "none":
        probs, info = resampling_probabilities(config, state.variables, train_faces, mesh,
                                               epoch)
        batcher.set_face_probabilities(probs)
        info["epoch"] = epoch
        history["resampling"].append(info)
        logging.info("epoch %d resampling: effective sample size %.0f of %d (%.1f%%)%s", epoch,
                     info["ess"], info["n_faces"], 100 * info["ess_fraction"],
                     "".join(f"; {g} {100 * m:.1f}% of mass ({100 * info['share_by_group'][g]:.1f}%"
                             " of faces)" for g, m in info.get("mass_by_group", {}).items()))
        writer.write(int(jax.device_get(state.step)),
                     {"resampling_ess_fraction": info["ess_fraction"], "epoch": epoch,
                      **{f"resampling_mass_{g}": m
                         for g, m in info.get("mass_by_group", {}).items()}})
      window_start = time.perf_counter()
      for images, labels in batcher.epoch_batches(epoch, step_in_epoch):
        global_step = epoch * steps_per_epoch + step_in_epoch + 1
        state, metrics = train_step_fn(state, shard_batch(mesh, images),
                                       shard_batch(mesh, labels), step_key)
        pending.append((global_step, metrics))
        step_in_epoch += 1
        if bar is not None:
          bar.update(1)
        if global_step % config.log_every_steps == 0:
          flush_metrics()
        if stop_at_step is not None and global_step >= stop_at_step:
          ckpts.wait()
          return {"stopped_at_step": global_step}
        if (config.checkpoint_every_steps and global_step % config.checkpoint_every_steps == 0
            and step_in_epoch < steps_per_epoch):
          flush_metrics()  # never checkpoint a state whose loss has not been checked
          save(state, epoch, step_in_epoch)
      flush_metrics()
      if config.bn_recalibration_batches:
        state = recalibrate_batch_norm(state, train_data, mesh, config, epoch)
      ev = evaluate(state.variables, datasets, mesh, config)
      ev["epoch"] = epoch
      history["epochs"].append(ev)
      writer.write(int(jax.device_get(state.step)),
                   {"epoch": epoch, **{k: v for k, v in ev.items() if k not in ("test", "val")},
                    **({"test_E_A": ev["test"]["E_A"], "test_Var_A": ev["test"]["Var_A"]}
                       if ev.get("test") and ev["test"].get("E_A") is not None else {})})
      logging.info("epoch %d: %s", epoch,
                   {k: v for k, v in ev.items() if k not in ("test", "val")})
      epoch, step_in_epoch = epoch + 1, 0
      save(state, epoch, step_in_epoch)
  finally:
    if bar is not None:
      bar.close()
    ckpts.wait()

  # ---- Summary -----------------------------------------------------------------------------
  wall = time.perf_counter() - start_time
  final = {
      "name": config.name, "kind": config.model.kind, "steps": int(jax.device_get(state.step)),
      "wall_time_s": wall,
      "images_per_s": trained_images / train_time if train_time else 0.0,
      "eval": history["epochs"][-1] if history["epochs"] else {},
      "epochs": history["epochs"], "resampling": history["resampling"],
      "devices": int(mesh.devices.size),
  }
  ckpts.close()
  writer.close()
  if is_main:
    (workdir / "metrics.json").write_text(json.dumps(final, indent=2, default=_json_default))
    print(format_summary(config, final), flush=True)
    if config.write_report:
      from jaxface import report
      path = report.write_report(workdir)
      print(f"report: {path}", flush=True)
  return final
