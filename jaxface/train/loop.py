"""Training and evaluation of the standard CNN, the SS-VAE and the DB-VAE.

``train_and_evaluate(config, workdir)`` reads top to bottom:

1. set-up: validate the config, build the device mesh (:mod:`jaxface.sharding`), load the data;
2. the train state and one jitted, data-parallel train step (batch sharded on the ``data`` mesh
   axis, parameters replicated, the state donated, per-step randomness from
   ``jax.random.fold_in(key, step)``);
3. DB-VAE resampling: at the start of every epoch all training faces are encoded with the
   sharded, batched pass of :func:`jaxface.inference.infer` and the batcher's face
   probabilities are replaced (or, with ``resampling.signal='groups'``, mass by labelled group
   from the group sizes, for any model);
4. checkpoints (:mod:`jaxface.checkpoints`, under ``WORKDIR/checkpoints``) that resume exactly
   where a run stopped, after checking the run's identity against the checkpoint's;
5. the loop, with a progress bar, metrics every ``log_every_steps`` steps to
   ``WORKDIR/metrics.jsonl`` and TensorBoard, and evaluation at every epoch end (the test
   split and each extra test set of ``config.data.extra_test_sets``, :func:`test_set_metrics`);
6. the final summary and ``WORKDIR/metrics.json``. The report is written by the caller
   (``experiments/run.py``) from the returned :class:`TrainResult`.
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from pathlib import Path
from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxface import config as config_lib
from jaxface import data as data_lib
from jaxface import augment as augment_lib
from jaxface import checkpoints, evaluation, inference, losses, models, resampling, whole_images
from jaxface.sharding import DATA_AXIS, make_mesh, replicate, shard_batch

PyTree = Any


# --------------------------------------------------------------------------------------------
# Set-up
# --------------------------------------------------------------------------------------------


def compute_dtype(config: ml_collections.ConfigDict) -> Any:
  """The jnp dtype named by ``config.dtype``."""
  return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[config.dtype]


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


def make_optimizer(config: ml_collections.ConfigDict,
                   total_steps: int | None = None) -> optax.GradientTransformation:
  """Adam at ``config.learning_rate``, constant or on ``config.lr_schedule``.

  Args:
    config: the run config (``learning_rate``, ``lr_schedule``).
    total_steps: the run's number of steps; needed by ``lr_schedule='cosine'``, which decays
      the rate to 0 along a half cosine over them.

  Returns:
    The optax transformation.
  """
  schedule = config.get("lr_schedule", "constant")
  if schedule == "constant":
    return optax.adam(config.learning_rate)
  if schedule == "cosine":
    if not total_steps:
      raise ValueError("config.lr_schedule = 'cosine' needs the run's total number of steps")
    return optax.adam(optax.cosine_decay_schedule(config.learning_rate, int(total_steps)))
  raise ValueError(f"config.lr_schedule = {schedule!r}: must be one of {config_lib.LR_SCHEDULES}")


def create_train_state(key: jax.Array, config: ml_collections.ConfigDict,
                       optimizer: optax.GradientTransformation) -> TrainState:
  variables = models.init_variables(key, latent_dim=config.model.latent_dim,
                                    n_filters=config.model.n_filters,
                                    image_size=config.data.image_size)
  return TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                    batch_stats=variables["batch_stats"],
                    opt_state=optimizer.init(variables["params"]))


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


def train_step(state: TrainState, batch: data_lib.Batch, key: jax.Array, *,
               optimizer: optax.GradientTransformation, kl_weight: float, recon: str,
               dtype: Any, num_shards: int = 1, decode_every_row: bool = False,
               augment: ml_collections.ConfigDict | None = None,
               impl: str = "auto") -> tuple[TrainState, dict[str, jax.Array]]:
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
  ``batch.faces``' latent codes only; ``decode_every_row`` also decodes the non-faces (the
  work of a step that does not know which rows are faces) and takes the same step. The faces'
  latent noise is a (B / 2, k) draw from ``fold_in(key, state.step)`` in ``batch.faces``
  order, so it does not depend on ``num_shards``, and each device draws its own rows.

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
    decode_every_row: decode the non-faces too (a VAE; for benchmarking).
    augment: fields of :func:`jaxface.augment.default_augment_config` (read at trace time);
      None or ``enabled=False`` trains on the batch as it is.
    impl: the model implementation (:data:`jaxface.models.IMPLS`).

  Returns:
    The new state and scalar metrics (loss, classification, vae, accuracy).
  """
  step_key = jax.random.fold_in(key, state.step)
  is_vae = models.latent_dim_of(state.params) > 0
  join = functools.partial(join_halves, num_shards=num_shards)
  split = functools.partial(split_halves, num_shards=num_shards)
  images = join(batch.faces, batch.non_faces)
  n_faces = batch.faces.shape[0]
  labels = join(jnp.ones((n_faces,), jnp.float32), jnp.zeros((n_faces,), jnp.float32))
  faces = batch.faces
  if augment is not None and augment.enabled:
    images = augment_lib.augment_for_step(key, state.step, images, labels, augment, num_shards)
    faces = split(images)[0]

  def loss_fn(params):
    variables = {"params": params, "batch_stats": state.batch_stats}
    enc = models.encode(variables, images, train=True, dtype=dtype, impl=impl)
    cls = losses.classification_loss(enc.y_logit, labels)
    if not is_vae:
      return jnp.mean(cls), (enc.batch_stats, enc.y_logit, cls, jnp.zeros((n_faces,)))
    (z_mean, z_mean_non), (z_logvar, z_logvar_non) = split(enc.z_mean), split(enc.z_logvar)
    z = models.reparameterize(step_key, z_mean, z_logvar)
    if decode_every_row:
      z_non = models.reparameterize(jax.random.fold_in(step_key, 1), z_mean_non, z_logvar_non)
      x_recon_all = models.decode(params, join(z, z_non), dtype=dtype, impl=impl)
      vae_all = losses.vae_loss(images, x_recon_all, join(z_mean, z_mean_non),
                                join(z_logvar, z_logvar_non), kl_weight, recon)
      vae_sum = jnp.sum(labels * vae_all)  # the non-faces' terms are computed, then zeroed
      vae = split(vae_all)[0]
    else:
      x_recon = models.decode(params, z, dtype=dtype, impl=impl)
      vae = losses.vae_loss(faces, x_recon, z_mean, z_logvar, kl_weight, recon)
      vae_sum = jnp.sum(vae)
    total = (jnp.sum(cls) + vae_sum) / labels.shape[0]
    return total, (enc.batch_stats, enc.y_logit, cls, vae)

  (loss, (batch_stats, y_logit, cls, vae)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  new_state = TrainState(step=state.step + 1, params=params, batch_stats=batch_stats,
                         opt_state=opt_state)
  metrics = {
      "loss": loss,
      "classification_loss": jnp.mean(cls),
      "vae_loss_faces": jnp.mean(vae),
      "accuracy": jnp.mean(((y_logit > 0).astype(jnp.float32) == labels).astype(jnp.float32)),
  }
  return new_state, metrics


def make_train_step(config: ml_collections.ConfigDict, optimizer: optax.GradientTransformation,
                    mesh: Mesh, *, decode_every_row: bool = False):
  """The jitted step ``(state, batch, key) -> (state, metrics)`` of :func:`train_step`.

  State and key are replicated, both halves of the :class:`jaxface.data.Batch` are sharded on
  the ``data`` axis (``num_shards`` is the mesh's device count, so no row leaves its device),
  and the state is donated. A VAE decodes the faces only; ``decode_every_row`` decodes every
  row instead. ``config.augment`` (a frozen copy) augments every batch inside the step.
  """
  step_fn = functools.partial(
      train_step, optimizer=optimizer, kl_weight=config.loss.kl_weight,
      recon=config.loss.recon, dtype=compute_dtype(config), num_shards=mesh.devices.size,
      decode_every_row=decode_every_row, impl=config.model.impl,
      augment=ml_collections.FrozenConfigDict(config.augment))
  repl, batch = NamedSharding(mesh, P()), NamedSharding(mesh, P(DATA_AXIS))
  return jax.jit(step_fn, in_shardings=(repl, batch, repl), out_shardings=(repl, repl),
                 donate_argnums=(0,))


# --------------------------------------------------------------------------------------------
# Batch-norm recalibration and the resampling pass
# --------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("dtype", "impl"))
def _batch_norm_statistics(variables, images, dtype, impl):
  return models.batch_norm_statistics(variables, inference.unit_float(images), dtype=dtype,
                                      impl=impl)


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
  for batch in batcher.epoch_batches(epoch):
    images = np.concatenate([batch.faces, batch.non_faces])
    stats = _batch_norm_statistics(state.variables, shard_batch(mesh, images),
                                   compute_dtype(config), config.model.impl)
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
    outputs = ("face_prob", "z_mean") + (("recon_error",) if "epistemic" in parts else ())
    out = inference.infer(variables, train_faces.images, outputs, mesh=mesh,
                          batch_size=config.eval_batch_size, dtype=compute_dtype(config),
                          recon=config.loss.recon, impl=config.model.impl)
    z_mean = out["z_mean"]
    if not np.isfinite(z_mean).all():
      raise FloatingPointError("the encoder produced non-finite latent means for the training "
                               "faces; cannot compute resampling probabilities")
    signals = []
    for part in parts:
      if part == "latent":
        signals.append(resampling.sampling_probabilities(
            z_mean, rs.bins, rs.alpha, rs.combine, histogram_impl=rs.histogram_impl))
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
# Logging helpers
# --------------------------------------------------------------------------------------------


def line_kind(line: dict[str, Any]) -> str:
  """The kind of a ``metrics.jsonl`` line: 'train', 'eval' or 'resampling'.

  Lines carry it as ``kind``; for lines written without it, it is read from their fields.
  """
  if "kind" in line:
    return str(line["kind"])
  if "resampling_ess_fraction" in line:
    return "resampling"
  return "train" if "loss" in line else "eval"


def rewound_lines(lines: list[str], step: int, redo_at_step: tuple[str, ...]) -> list[str]:
  """The ``metrics.jsonl`` lines a run resumed at ``step`` keeps: one per (step, kind).

  Args:
    lines: the file's lines (JSON objects with a ``step``).
    step: the restored checkpoint's step; lines of later steps are dropped.
    redo_at_step: kinds the resumed run logs again at ``step`` itself (the epoch-start
      resampling pass), dropped there.

  Returns:
    The kept lines in file order; of two lines with the same (step, kind), the first.
  """
  kept, seen = [], set()
  for text in lines:
    if not text.strip():
      continue
    line = json.loads(text)
    key = (int(line.get("step", 0)), line_kind(line))
    if key[0] > step or (key[0] == step and key[1] in redo_at_step) or key in seen:
      continue
    seen.add(key)
    kept.append(text)
  return kept


class MetricWriter:
  """Writes metrics to ``metrics.jsonl`` and TensorBoard event files (process 0 only).

  Every line is a JSON object with ``step``, ``kind`` ('train', 'eval' or 'resampling') and
  the metrics; a run that starts fresh or resumes keeps exactly one line per (step, kind).
  """

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

  def reset(self) -> None:
    """Empties the log (a fresh start: lines of an earlier attempt are stale)."""
    if self.active:
      self.path.write_text("")

  def rewind(self, step: int) -> None:
    """Keeps what a run resumed at ``step`` does not log again (:func:`rewound_lines`)."""
    if not self.active or not self.path.exists():
      return
    lines = rewound_lines(self.path.read_text().splitlines(), step, ("resampling",))
    self.path.write_text("".join(line + "\n" for line in lines))

  def write(self, step: int, kind: str, metrics: dict[str, Any]) -> None:
    """Appends one line (and the numeric metrics to TensorBoard)."""
    if not self.active:
      return
    with self.path.open("a") as f:
      f.write(json.dumps({"step": step, "kind": kind, **metrics}) + "\n")
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


OPERATING_FPR = 0.01  # the false positive rate of the extra test sets' operating point


def test_set_metrics(face_prob: np.ndarray, data: data_lib.FaceData,
                     fallback_non_face_prob: np.ndarray | None = None,
                     attribute_columns: tuple[str, ...] = ("fitzpatrick",),
                     fpr: float = OPERATING_FPR) -> dict[str, Any]:
  """The figures of one extra test set: those of the test split plus an operating point.

  Args:
    face_prob: (N,) face probabilities of ``data``'s images.
    data: the test set (faces, and perhaps non-faces).
    fallback_non_face_prob: (M,) face probabilities of the non-faces to score the faces
      against when ``data`` has none (the main test split's); None for none.
    attribute_columns: attributes of ``data`` (e.g. ``'fitzpatrick'``) to also group the faces
      by; columns it lacks are left out.
    fpr: the false positive rate of the operating point.

  Returns:
    :func:`jaxface.evaluation.group_metrics` by the set's groups, plus ``n_skipped``
    (unreadable images skipped), ``non_faces_from`` ('own', 'test' or None),
    ``operating_point`` (:func:`jaxface.evaluation.operating_point` at ``fpr`` on those
    non-faces: the per-group rates at one threshold and each group's ROC AUC; None without
    non-faces) and ``by_attribute`` ``{column: the same figures grouped by that column}``.
  """
  face_prob = np.asarray(face_prob, np.float64).reshape(-1)
  is_face = data.labels == 1
  if (~is_face).any():
    non_face_prob, source = face_prob[~is_face], "own"
  elif fallback_non_face_prob is not None and np.size(fallback_non_face_prob):
    non_face_prob, source = np.asarray(fallback_non_face_prob).reshape(-1), "test"
  else:
    non_face_prob, source = None, None

  def figures(groups: np.ndarray) -> dict[str, Any]:
    out = evaluation.group_metrics(face_prob, data.labels, groups)
    out["operating_point"] = (None if non_face_prob is None else evaluation.operating_point(
        face_prob[is_face], groups[is_face], non_face_prob, fpr, group_order=out["group_order"]))
    return out

  result = figures(data.groups)
  result.update(n_skipped=data.num_skipped, non_faces_from=source, by_attribute={})
  for column in attribute_columns:
    if column in data.attributes:
      regrouped = data_lib.groups_from_attribute(data, column)
      result["by_attribute"][column] = figures(regrouped.groups)
  return result


def evaluate(variables: PyTree, datasets: dict[str, data_lib.FaceData], mesh: Mesh,
             config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Validation accuracy, per-group test detection rates and the extra test sets' figures.

  Args:
    variables: model variables.
    datasets: ``'train'``, ``'val'``, ``'test'`` and each extra test set by name (as
      :func:`jaxface.data.load_datasets` returns them).
    mesh: device mesh of the inference passes.
    config: the run config (``eval_batch_size``, ``dtype``,
      ``data.extra_test_attribute_groups``).

  Returns:
    ``val_accuracy``, ``val_face_accuracy``, ``val_non_face_accuracy``; with a test set
    ``test`` (:func:`jaxface.evaluation.group_metrics`); with extra test sets ``test_sets``
    ``{name: test_set_metrics(...)}``, a set without non-faces scored against the test split's.
  """
  result: dict[str, Any] = {}
  face_prob = functools.partial(inference.infer, variables, outputs=("face_prob",), mesh=mesh,
                                batch_size=config.eval_batch_size, dtype=compute_dtype(config),
                                impl=config.model.impl)
  val = datasets.get("val")
  if val is not None and len(val):
    prob = face_prob(val.images)["face_prob"]
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
  test_non_face_prob = None
  if test is not None and len(test):
    test_prob = face_prob(test.images)["face_prob"]
    result["test"] = evaluation.group_metrics(test_prob, test.labels, test.groups)
    test_non_face_prob = np.asarray(test_prob).reshape(-1)[test.labels == 0]
  columns = tuple(c.strip() for c in str(
      config.data.get("extra_test_attribute_groups", "") or "").split(",") if c.strip())
  extra = {name: d for name, d in datasets.items() if name not in data_lib.SPLITS}
  if extra:
    result["test_sets"] = {
        name: test_set_metrics(face_prob(d.images)["face_prob"], d, test_non_face_prob, columns)
        for name, d in extra.items()}
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
  for name, figures in ev.get("test_sets", {}).items():
    lines.extend(_test_set_lines(name, figures))
  for name, figures in ev.get("whole_images", {}).items():
    lines.extend(whole_images.summary_lines(name, figures))
  return "\n".join(lines)


def _rate(x: float | None) -> str:
  return "-" if x is None else f"{100 * x:.1f}%"


def _test_set_lines(name: str, figures: dict[str, Any]) -> list[str]:
  """The summary lines of one extra test set (see :func:`test_set_metrics`)."""
  source = {"own": "its own", "test": "the test split's"}.get(figures.get("non_faces_from"))
  skipped = (f", {figures['n_skipped']} unreadable images skipped"
             if figures.get("n_skipped") else "")
  lines = [f"-- test set {name}: {figures['n_faces']} faces, {figures['n_non_faces']} non-faces"
           f"{skipped}" + (f"; operating point on {source} non-faces" if source else "")]
  op = figures.get("operating_point")
  lines.append(f"  all faces detected {_rate(figures['face_detection_rate'])}"
               + ("" if op is None else f" ({_rate(op['detection_rate'])} at "
                  f"{100 * op['fpr_target']:g}% false positives, AUC {op['auc']:.3f})")
               + ("" if figures.get("non_face_accuracy") is None else
                  f"; non-face accuracy {_rate(figures['non_face_accuracy'])}"))
  for label, m in [("group", figures)] + [(c, by) for c, by in
                                          figures.get("by_attribute", {}).items()]:
    op = m.get("operating_point")
    rates = "  ".join(
        f"{g} {_rate(v['detection_rate'])}"
        + ("" if op is None or g not in op["groups"] else
           f" ({_rate(op['groups'][g]['detection_rate'])} @{100 * op['fpr_target']:g}%FP, "
           f"AUC {op['groups'][g]['auc']:.3f})")
        for g, v in m["groups"].items())
    if not rates:
      continue
    lines.append(f"  by {label}: {rates}")
    if m.get("E_A") is not None:
      noise = m.get("Var_A_noise")
      lines.append(f"  E[A] {m['E_A']:.2f}%  Var[A] {m['Var_A']:.2f}%²"
                   + ("" if noise is None else f" (sampling ~{noise:.2f}%²)")
                   + f"  worst {m['worst_group']} {m['worst_rate']:.2f}%"
                   + ("" if op is None else f"; at {100 * op['fpr_target']:g}% false positives "
                      f"(threshold {op['threshold']:.4f}) E[A] {op['E_A']:.2f}%  worst "
                      f"{op['worst_group']} {op['worst_rate']:.2f}%"))
  return lines


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


class TrainResult(NamedTuple):
  """What :func:`train_and_evaluate` returns.

  Attributes:
    metrics: the final metrics (as in ``WORKDIR/metrics.json``); for a run stopped by
      ``stop_at_step``, ``{'stopped_at_step': step}``.
    datasets: the loaded ``{'train', 'val', 'test'}`` data sets (for the report).
    variables: the final model variables (``params``, ``batch_stats``) as host arrays.
    workdir: the absolute run directory.
  """
  metrics: dict[str, Any]
  datasets: dict[str, data_lib.FaceData]
  variables: PyTree
  workdir: Path


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *,
                       mesh: Mesh | None = None,
                       stop_at_step: int | None = None) -> TrainResult:
  """Trains the configured model, checkpointing as it goes, and evaluates it.

  A run started again on the same ``workdir`` resumes from the latest readable checkpoint (one
  that cannot be restored is moved to ``checkpoints/corrupt/``) and ends with the same
  parameters and metrics as an uninterrupted run; ``num_epochs`` may grow, but a run whose
  :func:`jaxface.checkpoints.run_identity` (seed, batch size, steps per epoch, model, number of
  training faces, PRNG key) differs from the checkpoint's raises ValueError. The report is not
  written here (``experiments/run.py`` writes it from the result).

  Args:
    config: the run configuration (see ``jaxface.config.get_base_config``).
    workdir: output directory (created if needed).
    mesh: the device mesh (default: a ``data`` axis over every device, :func:`make_mesh`).
    stop_at_step: stop right after this global step without writing a checkpoint there, as if
      the process had been killed (for testing resumption). None trains to the end.

  Returns:
    A :class:`TrainResult`; its metrics are also written to ``WORKDIR/metrics.json``.
  """
  # ---- Set-up ------------------------------------------------------------------------------
  if config.get("distributed", False) and not jax.distributed.is_initialized():
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
  whole_image_sets = whole_images.load_whole_image_sets(
      config.whole_images, config.data.image_size, taken=datasets)
  train_data = datasets["train"]
  face_idx = train_data.face_indices()
  train_faces = train_data.subset(face_idx)
  if config.resampling.signal == "groups":  # unlabelled faces fail here, before any compile
    try:
      resampling.group_balanced_probabilities(train_faces.groups, config.resampling.group_power)
    except ValueError as err:
      raise ValueError(f"config.resampling.signal = 'groups': {err}") from None
  # The batches do not depend on the device count; the step splits each half over the devices
  # and its loss, batch-norm statistics and latent noise do not depend on how, so runs on 1 and
  # on N devices take the same steps.
  batcher = data_lib.Batcher(train_data, config.batch_size, seed=config.seed,
                             num_devices=mesh.devices.size,
                             steps_per_epoch=(None if config.steps_per_epoch == -1
                                              else config.steps_per_epoch))
  steps_per_epoch = batcher.steps_per_epoch
  total_steps = steps_per_epoch * config.num_epochs

  # ---- State and step ----------------------------------------------------------------------
  optimizer = make_optimizer(config, total_steps)
  root_key = jax.random.key(config.seed)
  init_key, step_key = jax.random.split(root_key)
  identity = checkpoints.run_identity(config, steps_per_epoch, int(face_idx.size), step_key)
  abstract_state = jax.eval_shape(lambda: create_train_state(init_key, config, optimizer))
  train_step_fn = make_train_step(config, optimizer, mesh)

  # ---- Resume ------------------------------------------------------------------------------
  # The checkpoint's run identity is checked before its state is read and before config.json
  # is rewritten: a run with other settings fails here and leaves the workdir as it was.
  ckpts = checkpoints.Checkpoints(workdir / "checkpoints", config.keep_checkpoints)
  try:
    restored = ckpts.restore_latest(
        abstract_state, int(face_idx.size),
        check_meta=functools.partial(checkpoints.check_resume, current=identity,
                                     checkpoint_dir=ckpts.directory))
  except ValueError:
    ckpts.close()
    raise
  meta = {} if restored is None else restored[2]
  missing = [field for field in identity if field not in meta]
  if restored is not None and missing:
    logging.warning("the checkpoint in %s predates run-identity checks (it lacks %s): resuming "
                    "without checking that these settings match", ckpts.directory,
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
    writer.reset()
  else:
    state, probs, meta = restored
    state = replicate(mesh, state)
    epoch, step_in_epoch, history = meta["epoch"], meta["step_in_epoch"], meta["history"]
    # Without resampling the batcher samples uniformly (None); the checkpoint's uniform
    # probabilities would switch it to its weighted sampler and draw other batches.
    batcher.set_face_probabilities(None if config.resampling.signal == "none" else probs)
    writer.rewind(int(jax.device_get(state.step)))
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
    writer.write(pending[-1][0], "train", mean)
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
        writer.write(int(jax.device_get(state.step)), "resampling",
                     {"resampling_ess_fraction": info["ess_fraction"], "epoch": epoch,
                      **{f"resampling_mass_{g}": m
                         for g, m in info.get("mass_by_group", {}).items()}})
      window_start = time.perf_counter()
      for batch in batcher.epoch_batches(epoch, step_in_epoch):
        global_step = epoch * steps_per_epoch + step_in_epoch + 1
        batch = jax.tree.map(functools.partial(shard_batch, mesh), batch)
        state, metrics = train_step_fn(state, batch, step_key)
        pending.append((global_step, metrics))
        step_in_epoch += 1
        if bar is not None:
          bar.update(1)
        if global_step % config.log_every_steps == 0:
          flush_metrics()
        if stop_at_step is not None and global_step >= stop_at_step:
          return TrainResult({"stopped_at_step": global_step}, datasets,
                             jax.device_get(state.variables), workdir)
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
      writer.write(int(jax.device_get(state.step)), "eval",
                   {"epoch": epoch, **{k: v for k, v in ev.items() if k not in ("test", "val")},
                    **({"test_E_A": ev["test"]["E_A"], "test_Var_A": ev["test"]["Var_A"]}
                       if ev.get("test") and ev["test"].get("E_A") is not None else {}),
                    **{f"{name}_{key}": m[key] for name, m in ev.get("test_sets", {}).items()
                       for key in ("E_A", "Var_A") if m.get(key) is not None}})
      logging.info("epoch %d: %s", epoch,
                   {k: v for k, v in ev.items() if k not in ("test", "val", "test_sets")})
      epoch, step_in_epoch = epoch + 1, 0
      save(state, epoch, step_in_epoch)
  finally:
    if bar is not None:
      bar.close()
    ckpts.close()  # waits for the last save; every process reaches it
    writer.close()

  # ---- Whole images and summary -------------------------------------------------------------
  final_eval = dict(history["epochs"][-1]) if history["epochs"] else {}
  if whole_image_sets is not None:
    logging.info("scanning the whole-image test sets %s", list(whole_image_sets.photos))
    final_eval["whole_images"] = whole_images.evaluate_sets(
        state.variables, whole_image_sets, config.whole_images, mesh,
        progress=is_main and config.progress_bar)
  wall = time.perf_counter() - start_time
  final = {
      "name": config.name, "kind": config.model.kind, "steps": int(jax.device_get(state.step)),
      "wall_time_s": wall,
      "images_per_s": trained_images / train_time if train_time else 0.0,
      "eval": final_eval,
      "epochs": history["epochs"], "resampling": history["resampling"],
      "devices": int(mesh.devices.size),
  }
  if is_main:
    (workdir / "metrics.json").write_text(json.dumps(final, indent=2, default=_json_default))
    print(format_summary(config, final), flush=True)
  return TrainResult(final, datasets, jax.device_get(state.variables), workdir)
