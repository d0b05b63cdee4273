"""Batch-norm statistics of the population, replacing the running averages before evaluation."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from jaxface import data as data_lib
from jaxface import inference, models
from jaxface.sharding import shard_batch
from jaxface.train.state import TrainState, compute_dtype


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
