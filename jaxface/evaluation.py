"""Evaluation and bias diagnosis of trained face detectors.

Conventions used throughout:

* A sample is *detected as a face* when its face probability ``p = sigmoid(y_logit)`` is
  strictly greater than the threshold (``p > 0.5`` by default, as the reference study): the
  rule of :func:`jaxface.eval.operating_point.detected`. A non-face is classified correctly
  when it is not detected (``p <= threshold``).
* Per-group detection rates are fractions in [0, 1]; the aggregate bias figures of the DB-VAE
  paper are in percent: ``E_A`` (mean of the group rates), ``Var_A`` (population variance of the
  group rates, percent squared), ``worst_rate`` and ``gap`` (best minus worst rate).
* Risk scores of a face, all of shape (N,):

  - **bias** (latent density): the log of the histogram-estimated joint density of the face's
    latent mean, :func:`jaxface.resampling.bias_score`; *low = rare*.
  - **epistemic**: the reconstruction error of the face decoded from its latent mean,
    :func:`jaxface.resampling.epistemic_score` with the run's ``loss.recon`` kind (L1 by
    default), the same signal the resampling uses; *high = unfamiliar*.
  - **aleatoric**: the Bernoulli predictive entropy of the face probability, in nats,
    ``H(p) = -p log p - (1 - p) log(1 - p)`` in [0, log 2]; *high = ambiguous*. It measures how
    uncertain the classifier's own output distribution is for that input (maximal at p = 0.5),
    as opposed to how unfamiliar the input is (epistemic). It is defined for the standard CNN too.

Everything returns NumPy arrays or plain Python values so results can go straight to JSON or
matplotlib.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxface import inference, losses, models, resampling
# The figures at a threshold live in jaxface.eval; they are importable from here as well.
from jaxface.eval.metrics import rate_figures, var_a_sampling_noise  # noqa: F401
from jaxface.eval.operating_point import (detected, group_metrics,  # noqa: F401
                                          operating_point, roc_auc, roc_curve,  # noqa: F401
                                          threshold_at_fpr)  # noqa: F401

Array = jax.Array
PyTree = Any


class Predictions(NamedTuple):
  """Model outputs for N images.

  Attributes:
    face_prob: (N,) sigmoid of the face logit.
    y_logit: (N,) face logit.
    z_mean: (N, k) latent mean; (N, 0) for the standard CNN.
    z_logvar: (N, k) latent log-variance; (N, 0) for the standard CNN.
    recon_error: (N,) reconstruction error (mean over pixels and channels, L1 or L2, see
      :func:`predict`) of the image decoded from ``z_mean``; None for the standard CNN.
  """
  face_prob: np.ndarray
  y_logit: np.ndarray
  z_mean: np.ndarray
  z_logvar: np.ndarray
  recon_error: np.ndarray | None


def _check_images(images) -> np.ndarray:
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"images must have shape (N, H, W, 3), got {images.shape}")
  return images


def predict(variables: PyTree, images: np.ndarray | Array, batch_size: int = 256, *,
            dtype: Any = jnp.float32, recon: str = "l1") -> Predictions:
  """Runs a model in evaluation mode over a set of images, in batches.

  A convenience over :func:`jaxface.inference.infer` on this process's devices.

  Args:
    variables: model variables (standard CNN or VAE).
    images: (N, H, W, 3), uint8 in [0, 255] (divided by 255) or float in [0, 1].
    batch_size: images per jitted call; the last partial batch is padded.
    dtype: compute dtype (e.g. ``jnp.bfloat16``); outputs are float32.
    recon: reconstruction error kind of ``recon_error`` (``'l1'`` or ``'l2'``, the run's
      ``loss.recon``).

  Returns:
    :class:`Predictions` as NumPy arrays.
  """
  if recon not in ("l1", "l2"):
    raise ValueError(f"recon must be 'l1' or 'l2', got {recon!r}")
  images = _check_images(images)
  is_vae = models.latent_dim_of(variables["params"]) > 0
  names = ("face_prob", "y_logit", "z_mean", "z_logvar") + (("recon_error",) if is_vae else ())
  out = inference.infer(variables, images, names, batch_size=batch_size, dtype=dtype,
                        recon=recon)
  return Predictions(out["face_prob"], out["y_logit"], out["z_mean"], out["z_logvar"],
                     recon_error=out.get("recon_error"))


def reconstruct(variables: PyTree, images: np.ndarray | Array, batch_size: int = 256, *,
                dtype: Any = jnp.float32) -> np.ndarray:
  """Reconstructions decoded from the latent means (VAE only).

  Args:
    variables: VAE variables.
    images: (N, H, W, 3), uint8 or float in [0, 1].
    batch_size: images per jitted call.
    dtype: compute dtype.

  Returns:
    (N, H, W, 3) float32 images clipped to [0, 1].
  """
  images = _check_images(images)
  if models.latent_dim_of(variables["params"]) == 0:
    raise ValueError("the standard CNN (latent_dim=0) has no decoder to reconstruct with")
  return inference.infer(variables, images, ("x_recon",), batch_size=batch_size,
                         dtype=dtype)["x_recon"]


def decode_latents(variables: PyTree, z: np.ndarray | Array, batch_size: int = 256, *,
                   dtype: Any = jnp.float32) -> np.ndarray:
  """Decodes latent codes (M, k) to images (M, H, W, 3) float32 clipped to [0, 1]."""
  return inference.decode(variables, z, batch_size=batch_size, dtype=dtype)


# ------------------------------------------------------------------------------- risk scores


def aleatoric_score(y_logit: np.ndarray | Array) -> np.ndarray:
  """Bernoulli predictive entropy of the face probability, in nats.

  ``H = -p log p - (1 - p) log(1 - p)`` with ``p = sigmoid(y_logit)``, computed stably from the
  logit as ``p * softplus(-l) + (1 - p) * softplus(l)``. 0 for a confident prediction, log 2 at
  p = 0.5.

  Args:
    y_logit: (N,) or (N, 1) face logits.

  Returns:
    (N,) float32 entropy in [0, log 2].
  """
  logit = losses.flat_per_sample(jnp.asarray(y_logit, jnp.float32), "y_logit")
  p = jax.nn.sigmoid(logit)
  return np.asarray(p * jax.nn.softplus(-logit) + (1.0 - p) * jax.nn.softplus(logit))


def reference_bias_score(z_mean: np.ndarray, reference_z_mean: np.ndarray,
                         bins: int = 10) -> np.ndarray:
  """Log latent density of each code under histograms of a reference set (low = rare).

  The histograms are built as in :func:`jaxface.resampling.bias_score` (per dimension,
  ``bins`` equal-width bins from the reference's lowest to highest value, a constant dimension
  widened by +-0.5), but on ``reference_z_mean`` (e.g. the training faces), so the density of
  held-out faces reflects what the model was trained on. A code's mass in each dimension is the
  reference count of its bin over the reference size; a code in an empty bin or outside the
  reference range counts as half a sample. The score is the sum over dimensions of the log mass.
  With ``z_mean`` equal to the reference this matches ``resampling.bias_score``.

  Args:
    z_mean: (N, k) codes to score.
    reference_z_mean: (M, k) codes the density is estimated from.
    bins: bins per dimension.

  Returns:
    (N,) float64 log density.
  """
  z = np.asarray(z_mean, np.float64)
  ref = np.asarray(reference_z_mean, np.float64)
  if z.ndim != 2 or ref.ndim != 2 or z.shape[1] != ref.shape[1] or ref.shape[0] < 1:
    raise ValueError(f"z_mean (N, k) and reference_z_mean (M>=1, k) must agree in k, got "
                     f"{z.shape} and {ref.shape}")
  if bins < 1:
    raise ValueError(f"bins must be >= 1, got {bins}")
  m, k = ref.shape
  lo, hi = ref.min(axis=0), ref.max(axis=0)
  constant = hi == lo
  lo, hi = np.where(constant, lo - 0.5, lo), np.where(constant, hi + 0.5, hi)
  scale = bins / (hi - lo)

  def index(codes):
    pos = np.floor((codes - lo) * scale)
    inside = (codes >= lo) & (codes <= hi)
    return np.clip(pos, 0, bins - 1).astype(np.int64) * k + np.arange(k), inside

  ref_index, _ = index(ref)
  counts = np.bincount(ref_index.reshape(-1), minlength=bins * k).astype(np.float64)
  idx, inside = index(z)
  count = np.where(inside, counts[idx], 0.0)
  return np.sum(np.log(np.maximum(count, 0.5) / m), axis=1)


def risk_scores_from_predictions(predictions: Predictions, bins: int = 10,
                                 reference_z_mean: np.ndarray | None = None) -> dict:
  """Per-face risk scores from precomputed :class:`Predictions`.

  Args:
    predictions: model outputs for N faces.
    bins: histogram bins per latent dimension for the bias score.
    reference_z_mean: (M, k) latent means the density is estimated from (e.g. training faces);
      None estimates it on the N faces themselves (``resampling.bias_score``).

  Returns:
    ``{'bias', 'epistemic', 'aleatoric'}``, each (N,) NumPy; ``bias`` and ``epistemic`` are
    None for the standard CNN.
  """
  aleatoric = aleatoric_score(predictions.y_logit)
  z_mean = predictions.z_mean
  if z_mean.shape[1] == 0:
    return {"bias": None, "epistemic": None, "aleatoric": aleatoric}
  if z_mean.shape[0] == 0:
    bias = np.zeros((0,), np.float32)
  elif reference_z_mean is None:
    bias = np.asarray(resampling.bias_score(jnp.asarray(z_mean), bins))
  else:
    bias = reference_bias_score(z_mean, reference_z_mean, bins)
  return {"bias": bias, "epistemic": np.asarray(predictions.recon_error),
          "aleatoric": aleatoric}


def risk_scores(variables: PyTree, images: np.ndarray | Array, bins: int = 10, *,
                reference_images: np.ndarray | None = None, batch_size: int = 256,
                dtype: Any = jnp.float32, recon: str = "l1") -> dict:
  """Bias, epistemic and aleatoric score of each face (see the module docstring).

  Args:
    variables: model variables.
    images: (N, H, W, 3) faces, uint8 or float in [0, 1].
    bins: histogram bins per latent dimension.
    reference_images: optional faces (e.g. from the training set) whose latent density the
      bias score is measured against; None uses ``images`` themselves.
    batch_size: images per jitted call.
    dtype: compute dtype.
    recon: reconstruction error kind of the epistemic score (the run's ``loss.recon``).

  Returns:
    ``{'bias', 'epistemic', 'aleatoric'}``, each (N,); ``bias`` (low = rare) and ``epistemic``
    are None for the standard CNN.
  """
  pred = predict(variables, images, batch_size, dtype=dtype, recon=recon)
  ref = None
  if reference_images is not None and pred.z_mean.shape[1]:
    ref = predict(variables, reference_images, batch_size, dtype=dtype).z_mean
  return risk_scores_from_predictions(pred, bins, ref)


# -------------------------------------------------------------------------------- diagnostics


class LatentAccuracy(NamedTuple):
  """Face probability along each latent dimension (the SS-VAE diagnosis).

  Attributes:
    mean_curve: (bins,) mean over dimensions of ``per_dim`` (NaN where no dimension has faces).
    per_dim: (k, bins) mean face probability of the faces in each bin; NaN for empty bins and
      for dimensions whose 5th and 95th percentiles coincide.
    counts: (k, bins) number of faces per bin.
    share: (bins,) mean over dimensions of the fraction of the binned faces in each bin (the
      latent density at that position).
  """
  mean_curve: np.ndarray
  per_dim: np.ndarray
  counts: np.ndarray
  share: np.ndarray


def accuracy_vs_latent(z_mean: np.ndarray, face_prob: np.ndarray, bins: int = 10,
                       percentiles: tuple[float, float] = (5.0, 95.0)) -> LatentAccuracy:
  """Mean face probability per bin of every latent dimension.

  In each dimension, the faces between the given percentiles of ``z_mean[:, d]`` are split
  into ``bins`` equal-width bins; faces outside are left out. The outer bins hold the rarer
  latent values, so a curve that drops at both ends means the model detects faces worse where
  the latent density is low.

  Args:
    z_mean: (N, k) latent means of faces.
    face_prob: (N,) their face probabilities.
    bins: bins per dimension.
    percentiles: lower and upper percentile of the binned range.

  Returns:
    :class:`LatentAccuracy`.
  """
  z = np.asarray(z_mean, np.float64)
  prob = np.asarray(face_prob, np.float64).reshape(-1)
  if z.ndim != 2 or z.shape[0] != prob.shape[0]:
    raise ValueError(f"z_mean (N, k) and face_prob (N,) disagree: {z.shape}, {prob.shape}")
  k = z.shape[1]
  sums = np.zeros((k, bins))
  counts = np.zeros((k, bins), np.int64)
  if z.shape[0]:
    lo, hi = np.percentile(z, percentiles, axis=0)
    for d in np.flatnonzero(hi > lo):
      keep = (z[:, d] >= lo[d]) & (z[:, d] <= hi[d])
      idx = np.minimum(((z[keep, d] - lo[d]) * (bins / (hi[d] - lo[d]))).astype(np.int64),
                       bins - 1)
      counts[d] = np.bincount(idx, minlength=bins)
      sums[d] = np.bincount(idx, weights=prob[keep], minlength=bins)
  with np.errstate(invalid="ignore", divide="ignore"):
    per_dim = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    valid = ~np.isnan(per_dim)
    n_valid = valid.sum(axis=0)
    mean_curve = np.where(n_valid > 0, np.nansum(per_dim, axis=0) / np.maximum(n_valid, 1),
                          np.nan)
    totals = counts.sum(axis=1, keepdims=True)
    used = totals[:, 0] > 0
    share = (counts[used] / totals[used]).mean(axis=0) if used.any() else np.full(bins, np.nan)
  return LatentAccuracy(mean_curve, per_dim, counts, share)


class QuantileRates(NamedTuple):
  """Detection rate per quantile band of a score (band 0 = lowest scores).

  Attributes:
    rate: (n_bins,) fraction of the band's faces with ``p > threshold`` (NaN when empty).
    mean_prob: (n_bins,) mean face probability (NaN when empty).
    count: (n_bins,) faces per band.
    edges: (n_bins + 1,) score of the lowest face of each band, then the highest score.
  """
  rate: np.ndarray
  mean_prob: np.ndarray
  count: np.ndarray
  edges: np.ndarray


def _rank_bands(score: np.ndarray, n_bins: int) -> list[np.ndarray]:
  """Indices of ``score`` split by rank into ``n_bins`` near-equal bands, lowest first."""
  if n_bins < 1:
    raise ValueError(f"n_bins must be >= 1, got {n_bins}")
  return np.array_split(np.argsort(score, kind="stable"), n_bins)


def rate_by_quantile(score: np.ndarray, face_prob: np.ndarray, n_bins: int = 10,
                     threshold: float = 0.5) -> QuantileRates:
  """Detection rate of faces per rank quantile (decile by default) of a score.

  Faces are sorted by score (ties kept in input order) and split into ``n_bins`` bands of
  near-equal size.

  Args:
    score: (N,) per-face score.
    face_prob: (N,) face probabilities of the same faces.
    n_bins: number of bands.
    threshold: detection threshold (:func:`detected`: ``p > threshold``).

  Returns:
    :class:`QuantileRates`.
  """
  score = np.asarray(score, np.float64).reshape(-1)
  prob = np.asarray(face_prob, np.float64).reshape(-1)
  if score.shape != prob.shape:
    raise ValueError(f"score {score.shape} and face_prob {prob.shape} differ in shape")
  bands = _rank_bands(score, n_bins)
  count = np.array([len(b) for b in bands], np.int64)
  rate = np.array([detected(prob[b], threshold).mean() if len(b) else np.nan for b in bands])
  mean_prob = np.array([prob[b].mean() if len(b) else np.nan for b in bands])
  lows = [score[b[0]] if len(b) else np.nan for b in bands]
  edges = np.array(lows + [score.max() if score.size else np.nan])
  return QuantileRates(rate, mean_prob, count, edges)


def percentile_faces(images: np.ndarray, score: np.ndarray,
                     n_bands: int = 10) -> tuple[np.ndarray, np.ndarray]:
  """Mean face of each rank-percentile band of a score ("percentile faces").

  Args:
    images: (N, H, W, 3) faces, uint8 or float in [0, 1].
    score: (N,) per-face score.
    n_bands: number of bands, lowest scores first.

  Returns:
    ``(means (n_bands, H, W, 3) float32 in [0, 1], counts (n_bands,))``; an empty band's mean
    is black.
  """
  images = _check_images(images)
  score = np.asarray(score).reshape(-1)
  if score.shape[0] != images.shape[0]:
    raise ValueError(f"{images.shape[0]} images but {score.shape[0]} scores")
  scale = 1.0 / 255.0 if images.dtype == np.uint8 else 1.0
  bands = _rank_bands(score, n_bands)
  means = np.zeros((n_bands,) + images.shape[1:], np.float32)
  for i, b in enumerate(bands):
    if len(b):
      means[i] = images[b].mean(axis=0, dtype=np.float64) * scale
  return np.clip(means, 0.0, 1.0), np.array([len(b) for b in bands], np.int64)


def top_variance_dims(z_mean: np.ndarray, n: int = 5) -> np.ndarray:
  """Indices (n,) of the latent dimensions with the largest variance of ``z_mean`` (N, k)."""
  var = np.var(np.asarray(z_mean, np.float64), axis=0)
  return np.argsort(-var, kind="stable")[:n]


class Traversal(NamedTuple):
  """Decoded images along chosen latent dimensions.

  Attributes:
    dims: (D,) latent dimensions walked.
    values: (D, steps) values the walked dimension takes.
    images: (D, steps, H, W, 3) float32 in [0, 1].
  """
  dims: np.ndarray
  values: np.ndarray
  images: np.ndarray


def latent_traversal(variables: PyTree, z_mean: np.ndarray, dims: Sequence[int] | None = None,
                     steps: int = 7, n_dims: int = 5, *, dtype: Any = jnp.float32) -> Traversal:
  """Decodes the mean latent code with one dimension walked across its observed range.

  Args:
    variables: VAE variables.
    z_mean: (N, k) latent means of faces (the observed codes).
    dims: dimensions to walk; None takes the ``n_dims`` of largest variance.
    steps: values per dimension, evenly spaced from its lowest to its highest observed value.
    n_dims: how many dimensions when ``dims`` is None.
    dtype: compute dtype.

  Returns:
    :class:`Traversal`.
  """
  z = np.asarray(z_mean, np.float32)
  if z.ndim != 2 or z.shape[0] == 0 or z.shape[1] == 0:
    raise ValueError(f"z_mean must be (N>=1, k>=1), got {z.shape}")
  dims = top_variance_dims(z, n_dims) if dims is None else np.asarray(dims, np.int64)
  centre = z.mean(axis=0)
  values = np.stack([np.linspace(z[:, d].min(), z[:, d].max(), steps) for d in dims])
  codes = np.repeat(centre[None, None], len(dims) * steps, axis=0).reshape(len(dims), steps, -1)
  codes[np.arange(len(dims))[:, None], np.arange(steps)[None], dims[:, None]] = values
  images = decode_latents(variables, codes.reshape(len(dims) * steps, -1), dtype=dtype)
  return Traversal(dims, values.astype(np.float32),
                   images.reshape((len(dims), steps) + images.shape[1:]))
