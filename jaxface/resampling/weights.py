"""Per-face sampling weights beyond the latent density, and what is done with any weights.

Signals: the reconstruction error (:func:`epistemic_probabilities`, the capsa lab's epistemic
signal), the classifier's mistakes (:func:`error_probabilities`) and the labelled groups
(:func:`group_balanced_probabilities`, a known-groups baseline). Then: mixtures of several
signals (:func:`blend`, :func:`blend_probabilities`), tempering to a target effective sample
size (:func:`temper_to_ess`) and a cap on any face's weight (:func:`cap_weights`).

The probability functions return ``jax.Array`` and work under ``jax.jit``, except the two
host-side ones: :func:`group_balanced_probabilities` (string labels in, exact float64 out) and
:func:`effective_sample_size` (a float64 summary of the probabilities the batcher draws from).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxface import losses

Array = jax.Array


def epistemic_score(x: Array, x_recon: Array, kind: str = "l1") -> Array:
  """Per-face epistemic score: the reconstruction error (high = unfamiliar to the model).

  Args:
    x: (N, H, W, C) images.
    x_recon: (N, H, W, C) reconstructions.
    kind: ``"l1"`` or ``"l2"``.

  Returns:
    (N,) mean error per face.
  """
  return losses.reconstruction_loss(x, x_recon, kind)


def _normalise(p: Array, name: str) -> Array:
  p = jnp.asarray(p, jnp.float32)
  if p.ndim != 1:
    raise ValueError(f"{name} must be (N,), got shape {p.shape}")
  return p / jnp.sum(p)


def blend_probabilities(p_bias: Array, p_epistemic: Array) -> Array:
  """Blends bias and epistemic sampling probabilities as in the capsa lab.

  Args:
    p_bias: (N,) non-negative weights from latent density (e.g. :func:`sampling_probabilities`).
    p_epistemic: (N,) non-negative weights from reconstruction error (higher error = sampled
      more, e.g. :func:`epistemic_probabilities`).

  Returns:
    (N,) ``(p_bias / sum + p_epistemic / sum) / 2``, summing to 1.
  """
  p_bias = _normalise(p_bias, "p_bias")
  p_epistemic = _normalise(p_epistemic, "p_epistemic")
  if p_bias.shape != p_epistemic.shape:
    raise ValueError(f"p_bias {p_bias.shape} and p_epistemic {p_epistemic.shape} differ")
  return 0.5 * (p_bias + p_epistemic)


def epistemic_probabilities(recon_error: Array) -> Array:
  """Sampling probabilities proportional to each face's reconstruction error, (N,) -> (N,)."""
  recon_error = jnp.asarray(recon_error, jnp.float32)
  return _normalise(jnp.maximum(recon_error, 0.0), "recon_error")


def group_balanced_probabilities(groups: np.ndarray, power: float = 1.0) -> np.ndarray:
  """Sampling probabilities from the faces' group sizes (a known-groups baseline).

  Not a latent method: it needs each training face's group label, which the DB-VAE does
  without. It bounds what re-sampling alone can do when the under-represented group is known.
  Host-side (NumPy, string labels): not for use under ``jax.jit``; float64, since without further
  tempering these are the probabilities the batcher draws from.

  Args:
    groups: (N,) group label of each face; every face must have one (no ``''``).
    power: a face of group g gets weight ``n_g ** -power`` (n_g: the faces in g), so group g
      gets mass proportional to ``n_g ** (1 - power)``: 1 gives every group the same mass, 0.5
      mass proportional to the square root of the group's size, 0 uniform sampling.

  Returns:
    (N,) float64 probabilities summing to 1 (``1 / (G * n_g)`` for power 1, G groups).
  """
  groups = np.asarray(groups, dtype=str)
  if groups.ndim != 1 or groups.size == 0:
    raise ValueError(f"groups must be a non-empty (N,) array, got shape {groups.shape}")
  unlabelled = int(np.sum(groups == ""))
  if unlabelled:
    raise ValueError(f"{unlabelled} of {groups.size} faces have no group label; group-balanced "
                     "sampling needs one for every face")
  if not 0 <= power <= 1:
    raise ValueError(f"power must be in [0, 1], got {power}")
  _, index, counts = np.unique(groups, return_inverse=True, return_counts=True)
  weights = counts[index].astype(np.float64) ** -float(power)
  return weights / weights.sum()


def effective_sample_size(p: Array) -> float:
  """Kish effective sample size 1 / sum(p^2) of an (N,) probability vector: N when uniform.

  Host-side (NumPy): not for use under ``jax.jit``.
  """
  p = np.asarray(p, np.float64)
  if p.ndim != 1 or p.size == 0:
    raise ValueError(f"p must be a non-empty (N,) vector, got shape {p.shape}")
  p = p / p.sum()
  return float(1.0 / np.sum(p * p))


ERROR_KINDS = ("mistakes", "loss")


def error_score(face_prob: Array, kind: str = "mistakes") -> Array:
  """Each face's error, the quantity :func:`error_probabilities` up-weights.

  Args:
    face_prob: (N,) or (N, 1) the classifier's p(face) for each training face.
    kind: ``'mistakes'`` (1 where p(face) <= 0.5, else 0) or ``'loss'`` (``-log p(face)``
      divided by its largest value, in [0, 1]).

  Returns:
    (N,) float32 non-negative scores. Jittable (``kind`` static).
  """
  if kind not in ERROR_KINDS:
    raise ValueError(f"kind must be one of {ERROR_KINDS}, got {kind!r}")
  p = jnp.asarray(face_prob, jnp.float32)
  if p.ndim == 2 and p.shape[1] == 1:
    p = p[:, 0]
  if p.ndim != 1:
    raise ValueError(f"face_prob must be (N,) or (N, 1), got shape {p.shape}")
  if kind == "mistakes":
    return (p <= 0.5).astype(jnp.float32)
  bce = -jnp.log(jnp.clip(p, 1e-7, 1.0))
  return bce / jnp.maximum(jnp.max(bce), 1e-12)


def read_only(face_prob: Array, mask: Array) -> Array:
  """``face_prob`` (N,) or (N, 1) as (N,) float32, with every face outside ``mask`` (N,) bool
  scored as correct (p = 1): the error signals then read the masked faces' errors alone."""
  return jnp.where(jnp.asarray(mask), jnp.reshape(jnp.asarray(face_prob, jnp.float32), -1), 1.0)


HELD_OUT_STREAM = 0x686F6C64  # the fold's own random stream, apart from the batcher's


def held_out_faces(n: int, fraction: float, seed: int) -> np.ndarray:
  """The faces held out of the first epoch, whose errors at its end are generalisation errors.

  Cross-fitting in one run: the first epoch (uniform, before any signal) trains on the other
  faces only; at the second epoch's start the classifier's errors on the held-out faces say
  which faces it fails to generalise to, which its training errors (the faces it has fitted)
  do not. ``round(fraction * n)`` faces, drawn by the run's seed.

  Args:
    n: number of training faces.
    fraction: the share held out, in (0, 1).
    seed: the run's seed.

  Returns:
    (n,) bool, True for a held-out face.

  Raises:
    ValueError: a fraction outside (0, 1), or one that holds out no face or every face.
  """
  if not 0 < fraction < 1:
    raise ValueError(f"resampling.heldout_fraction must be in (0, 1), got {fraction}")
  k = int(round(fraction * n))
  if not 0 < k < n:
    raise ValueError(f"resampling.heldout_fraction={fraction} holds out {k} of the {n} training "
                     "faces: at least one must be held out and one trained on")
  rng = np.random.Generator(np.random.PCG64([seed, HELD_OUT_STREAM]))
  mask = np.zeros(n, bool)
  mask[rng.permutation(n)[:k]] = True
  return mask


def error_probabilities(face_prob: Array, upweight: float = 5.0, kind: str = "mistakes",
                        mask: Array | None = None) -> Array:
  """Sampling probabilities that favour the faces the classifier gets wrong (JTT-style).

  Just Train Twice (Liu et al., 2021) up-weights the training errors of an earlier model. Here
  the earlier model is the current one at the end of the previous epoch (the trainer computes
  the signal at the start of each epoch), so no second training run is needed; it needs no
  latent space and works for the CNN too.

  Args:
    face_prob: (N,) or (N, 1) the classifier's p(face) for each training face.
    upweight: weight of a misclassified face (``kind='mistakes'``: p(face) <= 0.5) relative to
      a correct one; with ``kind='loss'``, weights are ``1 + (upweight - 1) * bce / max(bce)``
      with ``bce = -log p(face)``.
    kind: ``'mistakes'`` or ``'loss'``.
    mask: (N,) bool, the faces whose errors are read (e.g. those held out of training); the
      others weigh 1, as a correct face does. None reads every face.

  Returns:
    (N,) float32 probabilities summing to 1.
  """
  if not isinstance(upweight, jax.core.Tracer) and not upweight >= 1:
    raise ValueError(f"upweight must be >= 1, got {upweight}")
  if mask is not None:  # a face outside the mask weighs 1, as a correct one
    face_prob = read_only(face_prob, mask)
  score = error_score(face_prob, kind)
  if kind == "mistakes":
    w = jnp.where(score > 0, upweight, 1.0)
  else:
    w = 1.0 + (upweight - 1.0) * score
  return w / jnp.sum(w)


def _kish_fraction(log_w: Array) -> Array:
  p = jax.nn.softmax(log_w)
  return 1.0 / (jnp.sum(jnp.square(p)) * log_w.shape[0])


@functools.partial(jax.jit, static_argnames=("iterations",))
def _temper(log_p: Array, target: Array, max_power: Array, iterations: int = 60) -> Array:
  # The Kish fraction of p ** t falls from 1 at t = 0 as t grows: bisect on t.
  def body(_, bounds):
    lo, hi = bounds
    mid = 0.5 * (lo + hi)
    above = _kish_fraction(mid * log_p) > target
    return jnp.where(above, mid, lo), jnp.where(above, hi, mid)

  lo, hi = jax.lax.fori_loop(0, iterations, body, (jnp.float32(0.0), max_power))
  return 0.5 * (lo + hi)


def temper_to_ess(p: Array, target_ess: float, max_power: float = 64.0) -> tuple[Array, Array]:
  """``p ** t`` renormalised, with ``t`` set so the Kish effective sample size hits a target.

  The effective sample size ``1 / sum(p_t ** 2)`` is N for uniform sampling (t = 0) and falls
  as t grows; bisection (jitted) finds the t in ``[0, max_power]`` whose ESS is
  ``target_ess * N``. ``t < 1`` softens a signal that concentrates on few faces, ``t > 1``
  sharpens one that barely moves the mass. A target the signal cannot reach even at
  ``max_power`` gives ``t = max_power``.

  Args:
    p: (N,) positive probabilities (zeros get probability 0 at any t > 0).
    target_ess: the target ESS as a fraction of N, in (0, 1].
    max_power: the largest power tried.

  Returns:
    ``(p_t (N,) float32 summing to 1, t scalar)``.
  """
  if not isinstance(target_ess, jax.core.Tracer) and not 0 < target_ess <= 1:
    raise ValueError(f"target_ess must be in (0, 1], got {target_ess}")
  p = jnp.asarray(p, jnp.float32)
  if p.ndim != 1:
    raise ValueError(f"p must be (N,), got shape {p.shape}")
  log_p = jnp.log(jnp.maximum(p, 1e-38))
  log_p = log_p - jnp.max(log_p)
  t = _temper(log_p, jnp.float32(target_ess), jnp.float32(max_power))
  return jax.nn.softmax(t * log_p), t


@functools.partial(jax.jit, static_argnames=("iterations",))
def cap_weights(p: Array, max_ratio: float, iterations: int = 32) -> Array:
  """Caps every probability at ``max_ratio / N`` (``max_ratio`` times uniform), keeping sum 1.

  The excess is spread over the uncapped faces in proportion to their probabilities (water
  filling; ``iterations`` rounds, enough for the cap to hold to float precision in practice).

  Args:
    p: (N,) probabilities summing to 1.
    max_ratio: the cap relative to uniform sampling (>= 1).
    iterations: rounds of clipping and renormalising.

  Returns:
    (N,) float32 probabilities summing to 1, each <= max(max_ratio, 1) / N (up to rounding).
  """
  p = jnp.asarray(p, jnp.float32)
  cap = jnp.maximum(max_ratio, 1.0) / p.shape[0]

  def body(_, q):
    capped = q >= cap
    free = jnp.sum(jnp.where(capped, 0.0, q))
    room = 1.0 - cap * jnp.sum(capped)
    return jnp.where(capped, cap, q * room / jnp.maximum(free, 1e-30))

  return jax.lax.fori_loop(0, iterations, body, p / jnp.sum(p))


def blend(probabilities: Array, weights: Array) -> Array:
  """A weighted mixture of several normalised sampling distributions.

  Generalises the capsa lab's 50/50 blend of bias and epistemic probabilities.

  Args:
    probabilities: (S, N) non-negative weights, one row per signal (each row is normalised).
    weights: (S,) non-negative mixture weights (normalised).

  Returns:
    (N,) float32 probabilities summing to 1.
  """
  probs = jnp.asarray(probabilities, jnp.float32)
  w = jnp.asarray(weights, jnp.float32)
  if probs.ndim != 2 or w.shape != (probs.shape[0],):
    raise ValueError(f"probabilities must be (S, N) and weights (S,), got {probs.shape} and "
                     f"{w.shape}")
  probs = probs / jnp.sum(probs, axis=1, keepdims=True)
  return (w / jnp.sum(w)) @ probs
