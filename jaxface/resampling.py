"""Latent-density resampling of training faces (DB-VAE) and per-face risk scores.

The DB-VAE estimates how common each training face is from a histogram of its latent code in
every dimension, then samples faces with probability inversely related to that density, so
under-represented faces are seen more often.

Per latent dimension i (the MIT 6.S191 lab's algorithm): a ``bins``-bin density histogram of
``z_mean[:, i]`` over all N faces (edges spread evenly from the lowest to the highest value; the
lowest and highest samples fall in the first and last bins), smoothed by adding ``alpha`` to the
density, renormalised to sum to 1 over the bins (``q_i``), and each face gets ``1 / q_i(z_i)``,
normalised over the faces. The per-dimension weights are then combined:

* ``combine="max"``: per-face maximum over dimensions of the normalised per-dimension weights
  (the lab), renormalised.
* ``combine="product"``: ``W ∝ prod_i 1 / q_i(z_i)`` (the paper, Amini et al. 2019,
  ``W ∝ prod_i 1 / (Q_i(z_i) + alpha)`` up to a per-dimension constant that cancels in the
  normalisation), computed as a softmax of ``-sum_i log q_i`` so that hundreds of dimensions
  neither underflow nor overflow.

Everything is jitted, vectorised over dimensions with ``jax.vmap`` and linear in N * k memory.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

COMBINE_MODES = ("max", "product")


def _check(z_mean, bins: int, alpha: float | None = None) -> None:
  if getattr(z_mean, "ndim", None) != 2:
    raise ValueError(f"z_mean must be (N, k), got shape {getattr(z_mean, 'shape', None)}")
  if z_mean.shape[0] < 1 or z_mean.shape[1] < 1:
    raise ValueError(f"z_mean must have at least one sample and one dimension, got {z_mean.shape}")
  if int(bins) < 1:
    raise ValueError(f"bins must be >= 1, got {bins}")
  if alpha is not None and not alpha >= 0:
    raise ValueError(f"alpha must be >= 0, got {alpha}")


def _dim_histogram(z: Array, bins: int) -> tuple[Array, Array]:
  """Density histogram of one latent dimension and each sample's bin.

  Args:
    z: (N,) values of one dimension.
    bins: number of bins.

  Returns:
    ``density (bins,)`` (``jnp.histogram(..., density=True)``) and ``bin_index (N,)`` in
    ``[0, bins)``; edges are open at both ends as in the lab's ``np.digitize`` lookup.
  """
  density, edges = jnp.histogram(z, bins=bins, density=True)
  bin_index = jnp.searchsorted(edges[1:-1], z, side="right")
  return density, bin_index


def _log_smoothed_prob(z_mean: Array, bins: int, alpha: Array) -> Array:
  """log q_i(z_i) per sample and dimension, (N, k): smoothed, renormalised histogram mass."""

  def per_dim(z):
    density, bin_index = _dim_histogram(z, bins)
    smoothed = density + alpha
    log_q = jnp.log(smoothed) - jnp.log(jnp.sum(smoothed))
    return log_q[bin_index]

  return jax.vmap(per_dim, in_axes=1, out_axes=1)(z_mean.astype(jnp.float32))


@functools.partial(jax.jit, static_argnames=("bins", "combine"))
def _sampling_probabilities(z_mean: Array, alpha: Array, bins: int, combine: str) -> Array:
  log_q = _log_smoothed_prob(z_mean, bins, alpha)  # (N, k)
  if combine == "max":
    # Per-dimension weights 1/q normalised over samples, then the max over dimensions.
    log_w = -log_q - jax.nn.logsumexp(-log_q, axis=0, keepdims=True)
    w = jnp.exp(jnp.max(log_w, axis=1))
    return w / jnp.sum(w)
  return jax.nn.softmax(-jnp.sum(log_q, axis=1))


def sampling_probabilities(z_mean: Array, bins: int = 10, alpha: float = 1e-3,
                           combine: str = "max") -> Array:
  """Probability of drawing each training face, inversely related to its latent density.

  Args:
    z_mean: (N, k) latent means of the N training faces.
    bins: histogram bins per dimension.
    alpha: smoothing added to each bin's density; larger = closer to uniform sampling.
    combine: ``"max"`` (lab) or ``"product"`` (paper), see the module docstring.

  Returns:
    (N,) float32 probabilities summing to 1.
  """
  _check(z_mean, bins, alpha)
  if combine not in COMBINE_MODES:
    raise ValueError(f"combine must be one of {COMBINE_MODES}, got {combine!r}")
  return _sampling_probabilities(jnp.asarray(z_mean), jnp.float32(alpha), int(bins), combine)


@functools.partial(jax.jit, static_argnames=("bins",))
def _bias_score(z_mean: Array, bins: int) -> Array:

  def per_dim(z):
    density, bin_index = _dim_histogram(z, bins)
    counts = jnp.zeros((bins,), jnp.float32).at[bin_index].add(1.0)
    return jnp.log(counts / z.shape[0])[bin_index]

  return jnp.sum(jax.vmap(per_dim, in_axes=1, out_axes=1)(z_mean.astype(jnp.float32)), axis=1)


def bias_score(z_mean: Array, bins: int = 10) -> Array:
  """Log joint latent density of each sample: low = rare (under-represented).

  The joint density is approximated by the product over dimensions of the histogram mass of
  the sample's bin (count / N), summed in log space. Each sample counts in its own bin, so the
  score is always finite.

  Args:
    z_mean: (N, k) latent means.
    bins: histogram bins per dimension.

  Returns:
    (N,) log density (<= 0).
  """
  _check(z_mean, bins)
  return _bias_score(jnp.asarray(z_mean), int(bins))


def epistemic_score(x: Array, x_recon: Array, kind: str = "l1") -> Array:
  """Per-face epistemic score: the reconstruction error (high = unfamiliar to the model).

  Args:
    x: (N, H, W, C) images.
    x_recon: (N, H, W, C) reconstructions.
    kind: ``"l1"`` or ``"l2"``.

  Returns:
    (N,) mean error per face.
  """
  from jaxface.losses import reconstruction_loss
  return reconstruction_loss(x, x_recon, kind)


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


def effective_sample_size(p: Array) -> float:
  """Kish effective sample size 1 / sum(p^2) of a probability vector: N when uniform."""
  p = np.asarray(p, np.float64)
  p = p / p.sum()
  return float(1.0 / np.sum(p * p))


def lab_sampling_probabilities_numpy(z_mean: np.ndarray, bins: int = 10,
                                     smoothing_fac: float = 1e-3) -> np.ndarray:
  """The MIT 6.S191 lab's per-dimension NumPy loop, as a reference for ``combine="max"``.

  Args:
    z_mean: (N, k) latent means.
    bins: histogram bins per dimension.
    smoothing_fac: the lab's smoothing (``alpha``).

  Returns:
    (N,) float64 probabilities summing to 1.
  """
  z_mean = np.asarray(z_mean)
  p_max = np.zeros(z_mean.shape[0])
  for i in range(z_mean.shape[1]):
    dist = z_mean[:, i]
    density, edges = np.histogram(dist, density=True, bins=bins)
    edges[0], edges[-1] = -np.inf, np.inf
    bin_idx = np.digitize(dist, edges)
    smoothed = density + smoothing_fac
    smoothed = smoothed / np.sum(smoothed)
    p = 1.0 / smoothed[bin_idx - 1]
    p = p / np.sum(p)
    p_max = np.maximum(p, p_max)
  return p_max / np.sum(p_max)
