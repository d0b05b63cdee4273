"""The epoch-start resampling pass: new face sampling probabilities from the current model."""

from __future__ import annotations

from typing import Any

import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh

from jaxface import data as data_lib
from jaxface import inference, resampling
from jaxface.train.state import compute_dtype

PyTree = Any


def resampling_probabilities(config: ml_collections.ConfigDict, variables: PyTree,
                             train_faces: data_lib.FaceData, mesh: Mesh, epoch: int = 0,
                             previous: np.ndarray | None = None
                             ) -> tuple[np.ndarray, dict[str, Any]]:
  """New face sampling probabilities from the current model (the epoch-start pass).

  The signal (``config.resampling.signal``, see ``jaxface.resampling.SIGNALS``) reads the
  inference outputs it needs (none for 'groups', which reads the group labels) and
  ``jaxface.resampling.face_probabilities`` blends, tempers and caps it, and mixes in
  ``previous`` by ``config.resampling.momentum``.

  Args:
    config: the run config (``resampling``, ``seed``, ``eval_batch_size``, ``loss.recon`` and
      ``model.impl`` are read).
    variables: current model variables.
    train_faces: the training faces.
    mesh: device mesh for the encoding pass.
    epoch: the epoch about to start (signal 'errors' samples uniformly in epoch 0, before the
      model has learnt anything).
    previous: (n_faces,) the batcher's current face probabilities (read when
      ``resampling.momentum`` > 0); None is uniform.

  Returns:
    ``(n_faces,)`` float64 probabilities and a summary: the effective sample size (Kish) and,
    when the faces carry group labels, each group's share of the sampling mass next to its
    share of the faces.
  """
  rs = config.resampling
  inputs: dict[str, Any] = {"groups": train_faces.groups}
  outputs = resampling.needed_outputs(rs.signal)
  if outputs:  # one eval-mode pass; the decoder runs only for a signal that reads recon_error
    inputs.update(inference.infer(variables, train_faces.images, outputs, mesh=mesh,
                                  batch_size=config.eval_batch_size, dtype=compute_dtype(config),
                                  recon=config.loss.recon, impl=config.model.impl))
  p, info = resampling.face_probabilities(rs, inputs, epoch=epoch, seed=config.seed,
                                          previous=previous)
  info.update(probability_summary(p, train_faces))
  if info["ess"] < max(0.01 * p.size, config.batch_size // 2):  # < 1%, or < one batch's faces
    logging.warning(
        "resampling puts almost all sampling mass on a few faces (effective sample size %.1f "
        "of %d): training will see little but them. combine='product' over many latent "
        "dimensions does this; combine='max' or a larger alpha spreads the mass.",
        info["ess"], p.size)
  return p, info


def probability_summary(p: np.ndarray, train_faces: data_lib.FaceData) -> dict[str, Any]:
  """The effective sample size (Kish) of the face probabilities ``p`` (n_faces,) and, when the
  faces carry group labels, each group's share of the mass next to its share of the faces."""
  info: dict[str, Any] = {"ess": resampling.effective_sample_size(p), "n_faces": int(p.size)}
  info["ess_fraction"] = info["ess"] / p.size
  groups = train_faces.groups
  if any(groups):
    info["mass_by_group"] = {g: float(p[groups == g].sum()) for g in train_faces.group_names}
    info["share_by_group"] = {g: float(np.mean(groups == g)) for g in train_faces.group_names}
  return info


def hard_non_faces(config: ml_collections.ConfigDict, variables: PyTree,
                   train: data_lib.FaceData, mesh: Mesh, epoch: int
                   ) -> tuple[np.ndarray, dict[str, Any]]:
  """The epoch-start pass on the other side: the training non-faces the model scores most
  face-like, to be drawn ``resampling.non_face_upweight`` times as often
  (:mod:`jaxface.resampling.non_faces`; the weights: :func:`non_face_weights`).

  Args:
    config: the run config (``resampling.non_face_upweight`` / ``non_face_top``,
      ``eval_batch_size``, ``model.impl`` are read).
    variables: current model variables.
    train: the training set (its non-faces, in ``non_face_indices()`` order, are scored).
    mesh: device mesh for the scoring pass.
    epoch: the epoch about to start; epoch 0 is uniform (an untrained model's scores say
      nothing).

  Returns:
    ``(hard, info)``: (k,) int positions of the up-weighted non-faces among the training
    non-faces (empty in epoch 0), and a JSON-ready summary (``n_hard``, the lowest p(face) among
    them, their share of the sampling mass).
  """
  rs = config.resampling
  if epoch == 0:
    return np.zeros(0, np.int64), {"epoch": epoch, "n_hard": 0}
  images = train.images[train.non_face_indices()]
  scores = inference.infer(variables, images, ("face_prob",), mesh=mesh,
                           batch_size=config.eval_batch_size, dtype=compute_dtype(config),
                           impl=config.model.impl)["face_prob"]
  k = resampling.hard_count(len(scores), float(rs.non_face_top))
  hard, _ = resampling.hard_non_face_weights(scores, k, float(rs.non_face_upweight))
  hard = np.asarray(hard, np.int64)
  weights = non_face_weights(len(scores), hard, float(rs.non_face_upweight))
  info = {"epoch": epoch, "n_hard": int(k), "n_non_faces": int(len(scores)),
          "min_face_prob_hard": float(scores[hard].min()),
          "mass_hard": float(weights[hard].sum() / weights.sum())}
  return hard, info


def non_face_weights(n: int, hard: np.ndarray, upweight: float) -> np.ndarray | None:
  """(n,) sampling weights: ``upweight`` at the positions ``hard``, 1 elsewhere (None, i.e.
  uniform, when ``hard`` is empty). The batcher's non-face weights, at an epoch's start and on
  resuming it alike."""
  if not len(hard):
    return None
  weights = np.ones(n, np.float64)
  weights[np.asarray(hard, np.int64)] = upweight
  return weights
