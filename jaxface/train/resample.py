"""The epoch-start resampling pass: new face sampling probabilities from the current model."""

from __future__ import annotations

from typing import Any

import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh

from jaxface import config as config_lib
from jaxface import data as data_lib
from jaxface import inference, resampling
from jaxface.train.state import compute_dtype

PyTree = Any


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
