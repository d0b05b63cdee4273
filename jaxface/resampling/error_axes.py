"""Sampling along the latent directions that predict the classifier's errors (no group labels).

A group the data set under-represents need not sit in a low-density region of the latent: it
can lie along a *direction* (e.g. skin tone), where the per-dimension histograms
(:mod:`jaxface.resampling.histograms`) and the principal axes
(:mod:`jaxface.resampling.latent_axes`) give it about its share of the mass. The faces the
classifier gets wrong point at that direction. :func:`error_axis_probabilities`:

1. whitens the active latent dimensions (:func:`latent_axes.whitened_components` with every
   active component), ``u`` (N, m);
2. scores each face's error (:func:`jaxface.resampling.weights.error_score`, the ``kind`` of
   :func:`jaxface.resampling.error_probabilities`);
3. finds the axes (:func:`error_directions`): first the ridge least-squares direction that
   predicts the error score from ``u``; then, for more axes, the directions orthogonal to it
   along which the mistaken faces spread most (the top eigenvectors of the error-weighted
   covariance of ``u``, with the first axis projected out). A second least-squares fit on the
   residual would find nothing: the residual of a linear fit is uncorrelated with every
   direction of ``u``. The further axes separate mistaken faces of different kinds, e.g. two
   rare groups whose mean directions the first axis averages;
4. samples each face inversely to the histogram density of its projections on the axes, as the
   lab does per latent dimension (``bins``, ``alpha``; the axes combined by ``max`` or
   ``product``; :func:`jaxface.resampling.sampling_probabilities` with ``jnp.histogram``
   vmapped over the axes).

The axes follow the errors, so they move from epoch to epoch once the model learns the faces
they point at; ``config.resampling.momentum`` smooths the probabilities over epochs
(:func:`jaxface.resampling.face_probabilities`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxface.resampling import histograms, latent_axes, weights

Array = jax.Array

RIDGE = 1e-3  # ridge of the least-squares fit, relative to the unit variance of each component


@functools.partial(jax.jit, static_argnames=("n_axes",))
def error_directions(u: Array, score: Array, n_axes: int = 1, ridge: float = RIDGE,
                     fit_weight: Array | None = None) -> Array:
  """Unit directions of the whitened codes along which the faces' errors lie.

  Axis 0 is the ridge least-squares fit of the centred score on ``u``,
  ``(u^T u / N + ridge I)^-1 u^T (score - mean) / N``, normalised: the mistaken faces have
  positive projections. Axes 1.. are the top eigenvectors of the error-weighted covariance of
  ``u`` (weights ``score / sum(score)``, centred on the weighted mean) once axis 0 is projected
  out, each signed so that the faces' projections have a positive third moment (a sign that
  does not depend on the eigensolver).

  Args:
    u: (N, m) whitened codes (zero mean, unit variance per component).
    score: (N,) non-negative error scores (:func:`error_score`), not all equal.
    n_axes: number of axes, 1 <= n_axes <= m (static).
    ridge: ridge added to the diagonal of the Gram matrix.
    fit_weight: (N,) non-negative weights of the faces in the fit (e.g. 1 on the faces held
      out of training, 0 elsewhere: the fit then reads their errors only, with ``u`` centred
      on their weighted mean); None weighs every face 1.

  Returns:
    (n_axes, m) float32 orthonormal rows.
  """
  u = jnp.asarray(u, jnp.float32)
  score = jnp.asarray(score, jnp.float32)
  m = u.shape[1]
  eye = jnp.eye(m, dtype=jnp.float32)
  if fit_weight is None:
    n = u.shape[0]
    beta = jnp.linalg.solve(u.T @ u / n + ridge * eye, u.T @ (score - jnp.mean(score)) / n)
  else:
    fw = jnp.asarray(fit_weight, jnp.float32)
    total = jnp.maximum(jnp.sum(fw), 1e-30)
    u = u - (fw @ u) / total  # the fit's own centre; the projections below shift, not rescale
    weighted = u * fw[:, None]
    beta = jnp.linalg.solve(weighted.T @ u / total + ridge * eye,
                            weighted.T @ (score - fw @ score / total) / total)
    score = score * fw
  first = beta / jnp.maximum(jnp.linalg.norm(beta), 1e-30)
  if n_axes == 1:
    return first[None]
  w = score / jnp.maximum(jnp.sum(score), 1e-30)
  centred = u - w @ u
  cov = (centred * w[:, None]).T @ centred
  outside = eye - jnp.outer(first, first)
  # The first axis at eigenvalue -1, below every direction orthogonal to it (all >= 0).
  _, vectors = jnp.linalg.eigh(outside @ cov @ outside - jnp.outer(first, first))
  rest = vectors[:, ::-1][:, :n_axes - 1].T
  third_moment = jnp.sum(jnp.power(u @ rest.T, 3), axis=0)
  rest = rest * jnp.where(third_moment < 0, -1.0, 1.0)[:, None]
  return jnp.concatenate([first[None], rest])


@functools.partial(jax.jit, static_argnames=("n_axes", "bins", "combine"))
def error_axis_weights(u: Array, score: Array, n_axes: int = 1, bins: int = 10,
                       alpha: float | Array = 1e-3, combine: str = "max",
                       fit_weight: Array | None = None) -> Array:
  """Probabilities inversely related to the density along the error directions.

  Args:
    u: (N, m) whitened codes (:func:`latent_axes.whitened_components`).
    score: (N,) error scores, not all equal.
    n_axes: number of axes (:func:`error_directions`), <= m.
    bins: histogram bins per axis.
    alpha: scalar smoothing added to each bin's density.
    combine: ``'max'`` or ``'product'`` over the axes, as in
      :func:`jaxface.resampling.sampling_probabilities`.
    fit_weight: (N,) weights of the faces in the fit of the directions
      (:func:`error_directions`); the densities are those of every face.

  Returns:
    (N,) float32 probabilities summing to 1.
  """
  projections = u @ error_directions(u, score, n_axes, fit_weight=fit_weight).T  # (N, n_axes)
  return histograms.sampling_probabilities(projections, bins, alpha, combine,
                                           histogram_impl="vmap")


@functools.partial(jax.jit, static_argnames=("m", "n_axes", "bins", "combine"))
def _error_axis_probabilities(z_mean, active, score, alpha, m, n_axes, bins, combine, fit_weight):
  u = latent_axes.whitened_components(z_mean, active, m)
  return error_axis_weights(u, score, n_axes, bins, alpha, combine, fit_weight)


def error_axis_probabilities(z_mean: Array, face_prob: Array, n_axes: int = 1, bins: int = 10,
                             alpha: float = 1e-3, combine: str = "max", kind: str = "mistakes",
                             threshold: float = latent_axes.ACTIVE_VARIANCE,
                             fit_mask: np.ndarray | None = None) -> Array:
  """Sampling probabilities along the latent directions that predict the classifier's errors.

  See the module docstring. The number of active dimensions and whether the errors vary are
  read from the data here, on the host (they fix the shapes of the jitted computation,
  :func:`error_axis_weights`, or call for its fallback).

  Args:
    z_mean: (N, k) latent means of the training faces.
    face_prob: (N,) or (N, 1) the classifier's p(face) for each of them.
    n_axes: number of error directions; more than the active dimensions uses them all.
    bins: histogram bins per axis.
    alpha: smoothing added to each bin's density.
    combine: ``'max'`` or ``'product'`` over the axes.
    kind: the error score, ``'mistakes'`` or ``'loss'`` (:func:`error_score`).
    threshold: variance above which a latent dimension counts as active.
    fit_mask: (N,) bool, the faces whose errors the directions are fitted to (e.g. those held
      out of training, whose errors are generalisation errors); None fits every face. The
      densities along the directions are every face's.

  Returns:
    (N,) float32 probabilities summing to 1; uniform, with one logged warning, when fewer than
    two latent dimensions are active or every fitted face has the same error score (no
    mistakes, or all mistaken).
  """
  z = latent_axes.finite_codes(z_mean)
  bins = histograms.check_histogram_args(z_mean, bins, alpha)
  latent_axes.check_positive_int(n_axes, "n_axes")
  if combine not in histograms.COMBINE_MODES:
    raise ValueError(f"combine must be one of {histograms.COMBINE_MODES}, got {combine!r}")
  if np.shape(face_prob) not in ((z.shape[0],), (z.shape[0], 1)):
    raise ValueError(f"face_prob must be (N,) or (N, 1) with the N = {z.shape[0]} faces of "
                     f"z_mean, got shape {np.shape(face_prob)}")
  if fit_mask is not None:
    fit_mask = np.asarray(fit_mask)
    if fit_mask.shape != (z.shape[0],) or fit_mask.dtype != bool or not fit_mask.any():
      raise ValueError(f"fit_mask must be a (N,) = ({z.shape[0]},) bool mask with a face in it, "
                       f"got shape {fit_mask.shape}, dtype {fit_mask.dtype}")
    face_prob = weights.read_only(face_prob, fit_mask)  # before error_score's normalisation
  score = np.asarray(weights.error_score(face_prob, kind))
  fitted = score if fit_mask is None else score[fit_mask]
  active = latent_axes.active_dimensions(z_mean, threshold)
  n_active = int(jnp.sum(active))
  if n_active < 2:
    return latent_axes.uniform_with_warning(
        z.shape[0], f"only {n_active} latent dimension(s) vary over the faces, no direction "
        "to fit the errors on")
  if fitted.max() == fitted.min():
    return latent_axes.uniform_with_warning(
        z.shape[0], "the classifier's error score is the same for every face it is fitted on "
        "(no mistakes, or only mistakes), no direction to fit it on")
  fit_weight = None if fit_mask is None else jnp.asarray(fit_mask, jnp.float32)
  return _error_axis_probabilities(jnp.asarray(z_mean), active, jnp.asarray(score),
                                   jnp.float32(alpha), n_active, min(n_axes, n_active), bins,
                                   combine, fit_weight)
