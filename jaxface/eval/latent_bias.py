"""Where skin tone lives in a VAE's latent space: a dimension, a principal axis or a direction.

A group the data under-represents need not sit in a low-density region of the latent: skin
tone can be a *direction*, along which the per-dimension histograms and the principal axes give
the darker faces about their share of the mass. :func:`latent_bias` measures, for faces with a
known skin tone, how well darker and lighter faces separate:

* along each latent dimension (the ROC AUC of ``z_mean[:, j]``, symmetrised);
* along each principal axis of the active dimensions
  (:func:`jaxface.resampling.latent_axes.whitened_components`), with its explained variance;
* along the best linear direction: a least-squares probe on the whitened codes
  (:func:`jaxface.resampling.error_axes.error_directions` with the skin label as the score),
  fitted on one half of the faces and scored on the other;
* along the classifier's error axis (the same fit to the faces' ``'loss'`` error score, the
  direction the ``error_axis`` signal samples along).

It also gives the darker faces' share of the sampling mass of density-based resampling, over
the latent dimensions (the lab's signal) and along the error axis. The skin tone is read from
the group names' first letter (``'D'`` darker, ``'L'`` lighter) for this diagnostic only; no
resampling signal reads it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

from jaxface import evaluation
from jaxface.eval.operating_point import roc_auc
from jaxface.resampling import error_axes, histograms, latent_axes, weights

PyTree = Any

SKIN_LETTERS = {"D": "darker", "L": "lighter"}  # first letter of a group name -> skin tone
MIN_FACES = 4  # fewest darker and fewest lighter faces the diagnostic needs


class LatentBias(NamedTuple):
  """How darker and lighter faces separate in the latent space.

  AUCs are the probability that a random darker face lies further along than a random lighter
  one; ``dim_auc`` and ``axis_auc`` are symmetrised (``max(AUC, 1 - AUC)``): a dimension or
  axis has no preferred sign.

  Attributes:
    n_darker: darker faces.
    n_lighter: lighter faces.
    dim_auc: (k,) symmetrised AUC of each latent dimension.
    dim_variance: (k,) variance of each dimension's ``z_mean``.
    active: (k,) bool, the active dimensions
      (:func:`jaxface.resampling.latent_axes.active_dimensions`).
    axis_auc: (m,) symmetrised AUC of each of the top ``m`` principal axes of the active
      dimensions.
    axis_variance_share: (m,) the share of the active dimensions' total variance along each.
    axis_direction: (m, k) unit direction of each axis in the latent space, signed so that the
      darker faces lie on its positive side.
    axis_std: (m,) standard deviation of the faces along each axis.
    probe_auc: AUC of the least-squares probe on the whitened codes, on the held-out half.
    error_axis_auc: AUC along the error axis, signed towards the errors (above 0.5: the darker
      faces lie further towards the errors); NaN when every face has the same error score.
    darker_share: the darker faces' share of the faces.
    darker_mass_latent: their share of the mass of the per-dimension latent density signal
      (:func:`jaxface.resampling.sampling_probabilities`, ``combine='max'``).
    darker_mass_error_axis: their share of the mass sampled inversely to the density along the
      error axis (:func:`jaxface.resampling.error_axis_weights`); NaN without an error axis.
  """
  n_darker: int
  n_lighter: int
  dim_auc: np.ndarray
  dim_variance: np.ndarray
  active: np.ndarray
  axis_auc: np.ndarray
  axis_variance_share: np.ndarray
  axis_direction: np.ndarray
  axis_std: np.ndarray
  probe_auc: float
  error_axis_auc: float
  darker_share: float
  darker_mass_latent: float
  darker_mass_error_axis: float


def skin_tone(groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """The skin tone of each face from its group name's first letter.

  Args:
    groups: (N,) group names, e.g. ``'DF'`` or ``'LM'``; others (``''``) have no known tone.

  Returns:
    ``(darker (N,) bool, known (N,) bool)``: ``darker`` is meaningful where ``known``.
  """
  first = np.array([str(g)[:1] for g in np.asarray(groups).ravel()], dtype=object)
  darker = first == "D"
  return darker, darker | (first == "L")


def skip_reason(darker: np.ndarray, known: np.ndarray, z_mean: np.ndarray,
                threshold: float = latent_axes.ACTIVE_VARIANCE) -> str | None:
  """Why :func:`latent_bias` cannot run on these faces, or None when it can.

  Args:
    darker: (N,) bool, from :func:`skin_tone`.
    known: (N,) bool, from :func:`skin_tone`.
    z_mean: (N, k) latent means.
    threshold: variance above which a latent dimension counts as active.

  Returns:
    A sentence naming what is missing, or None.
  """
  n_darker, n_lighter = int(np.sum(darker & known)), int(np.sum(~darker & known))
  if min(n_darker, n_lighter) < MIN_FACES:
    return (f"it needs at least {MIN_FACES} faces of each skin tone (group names starting with "
            f"'D' and 'L'), found {n_darker} darker and {n_lighter} lighter")
  if not np.any(np.asarray(latent_axes.active_dimensions(np.asarray(z_mean)[known], threshold))):
    return f"no latent dimension varies over the faces (variance above {threshold})"
  return None


def symmetric_auc(values: np.ndarray, darker: np.ndarray) -> float:
  """``max(AUC, 1 - AUC)`` of ``values`` (N,) separating the ``darker`` (N,) faces."""
  auc = roc_auc(values[darker], values[~darker])
  return max(auc, 1.0 - auc)


def _halves(darker: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Indices of two halves of the faces, each holding half of the darker and lighter ones."""
  rng = np.random.default_rng(seed)
  fit, held_out = [], []
  for members in (np.flatnonzero(darker), np.flatnonzero(~darker)):
    members = rng.permutation(members)
    fit.append(members[:len(members) // 2])
    held_out.append(members[len(members) // 2:])
  return np.sort(np.concatenate(fit)), np.sort(np.concatenate(held_out))


def probe_auc(u: np.ndarray, darker: np.ndarray, seed: int = 0) -> float:
  """Held-out AUC of a least-squares probe of the skin tone on whitened codes.

  The probe is :func:`jaxface.resampling.error_axes.error_directions` with the darker
  indicator as the score, fitted on one half of the faces (split by ``seed``, each half with
  half of each tone) and scored on the other.

  Args:
    u: (N, m) whitened codes.
    darker: (N,) bool.
    seed: seeds the split.

  Returns:
    The AUC on the held-out half.
  """
  fit, held_out = _halves(darker, seed)
  u_fit = u[fit] - u[fit].mean(axis=0)
  direction = np.asarray(error_axes.error_directions(u_fit, darker[fit].astype(np.float32)))[0]
  projection = u[held_out] @ direction
  return roc_auc(projection[darker[held_out]], projection[~darker[held_out]])


def _principal_axes(z: np.ndarray, u: np.ndarray, active: np.ndarray,
                    darker: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Directions (m, k), standard deviations (m,) and variance shares (m,) of the axes of ``u``.

  ``u_j = (z - mean) v_j / s_j``, so ``(z - mean)^T u_j / N = s_j v_j``: the axes come from the
  whitened codes without a second eigendecomposition.
  """
  centred = (z - z.mean(axis=0)) * active
  scaled = centred.T @ u / z.shape[0]  # (k, m), column j = s_j v_j
  std = np.linalg.norm(scaled, axis=0)
  direction = (scaled / np.maximum(std, 1e-30)).T
  sign = np.where(u[darker].mean(axis=0) >= u[~darker].mean(axis=0), 1.0, -1.0)
  share = std ** 2 / max(float(np.sum(np.var(centred, axis=0))), 1e-30)
  return direction * sign[:, None], std, share


def _mass_share(probabilities, darker: np.ndarray) -> float:
  p = np.asarray(probabilities, np.float64)
  return float(p[darker].sum() / max(p.sum(), 1e-30))


def latent_bias(z_mean: np.ndarray, face_prob: np.ndarray, darker: np.ndarray, *,
                n_axes: int = 10, bins: int = 10, alpha: float = 1e-3, seed: int = 0,
                threshold: float = latent_axes.ACTIVE_VARIANCE) -> LatentBias:
  """Where darker and lighter faces separate in the latent space (see the module docstring).

  Args:
    z_mean: (N, k) latent means of faces of known skin tone (:func:`skip_reason` is None).
    face_prob: (N,) the classifier's p(face) for them.
    darker: (N,) bool, True for the darker faces.
    n_axes: principal axes to measure (fewer when fewer dimensions are active).
    bins: histogram bins of the density-based signals.
    alpha: their smoothing.
    seed: seeds the probe's split.
    threshold: variance above which a latent dimension counts as active.

  Returns:
    :class:`LatentBias`.
  """
  z = np.asarray(z_mean, np.float64)
  darker = np.asarray(darker, bool)
  active = np.asarray(latent_axes.active_dimensions(z, threshold))
  n_active = int(active.sum())
  u = np.asarray(latent_axes.whitened_components(jnp.asarray(z, jnp.float32),
                                                 jnp.asarray(active), n_active), np.float64)
  m = min(n_axes, n_active)
  direction, std, share = _principal_axes(z, u[:, :m], active, darker)
  score = np.asarray(weights.error_score(face_prob, "loss"))
  error_auc, error_mass = float("nan"), float("nan")
  if score.max() > score.min():
    error_axis = np.asarray(error_axes.error_directions(u, score))[0]
    projection = u @ error_axis
    error_auc = roc_auc(projection[darker], projection[~darker])
    error_mass = _mass_share(error_axes.error_axis_weights(u, score, 1, bins, alpha), darker)
  latent_mass = histograms.sampling_probabilities(z.astype(np.float32), bins, alpha, "max")
  return LatentBias(
      n_darker=int(darker.sum()), n_lighter=int((~darker).sum()),
      dim_auc=np.array([symmetric_auc(z[:, j], darker) for j in range(z.shape[1])]),
      dim_variance=np.var(z, axis=0), active=active,
      axis_auc=np.array([symmetric_auc(u[:, j], darker) for j in range(m)]),
      axis_variance_share=share, axis_direction=direction, axis_std=std,
      probe_auc=probe_auc(u, darker, seed), error_axis_auc=error_auc,
      darker_share=float(darker.mean()), darker_mass_latent=_mass_share(latent_mass, darker),
      darker_mass_error_axis=error_mass)


def darker_mass(mass_by_group: Mapping[str, float]) -> float | None:
  """The darker groups' share of a sampling mass by group (of the groups of known tone).

  Args:
    mass_by_group: group name -> mass (a resampling record's ``mass_by_group``).

  Returns:
    The share, or None when no group has a known tone or the mass is zero.
  """
  tone = {g: SKIN_LETTERS.get(str(g)[:1]) for g in mass_by_group}
  known = sum(float(v) for g, v in mass_by_group.items() if tone[g])
  if not known:
    return None
  return sum(float(v) for g, v in mass_by_group.items() if tone[g] == "darker") / known


def axis_traversal(variables: PyTree, z_mean: np.ndarray, direction: np.ndarray, std: float,
                   axis: int, steps: int = 7, span: float = 2.0, *,
                   dtype: Any = jnp.float32) -> evaluation.Traversal:
  """Decodes the mean latent code moved along a direction, from ``-span`` to ``span`` std.

  Args:
    variables: VAE variables.
    z_mean: (N, k) latent means of the faces (their mean is the centre).
    direction: (k,) unit direction.
    std: the faces' standard deviation along it.
    axis: the number the traversal is labelled with (its ``dims``).
    steps: codes decoded.
    span: how many standard deviations each side of the mean.
    dtype: compute dtype.

  Returns:
    :class:`jaxface.evaluation.Traversal` with ``dims`` ``[axis]``, ``values`` (1, steps) the
    offsets along the direction and ``images`` (1, steps, H, W, 3).
  """
  offsets = np.linspace(-span, span, steps) * std
  centre = np.asarray(z_mean, np.float64).mean(axis=0)
  codes = (centre[None] + offsets[:, None] * np.asarray(direction)[None]).astype(np.float32)
  images = evaluation.decode_latents(variables, codes, dtype=dtype)
  return evaluation.Traversal(np.array([axis]), offsets[None].astype(np.float32), images[None])
