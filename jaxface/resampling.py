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

Everything is jitted, works on all dimensions at once and is linear in N * k memory.
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


_CHUNK_ROWS = 4096  # rows of z per pass step: the chunk and its index table stay in cache


def _bin_index(z: Array, lo: Array, hi: Array, bins: int) -> Array:
  """Flat bin-major table index ``bin * k + dim`` of each code, (C, k) int32."""
  k = z.shape[1]
  # z >= lo, so truncation is floor; clamping after the cast puts the highest value in the last bin.
  bin_index = jnp.minimum(((z - lo) * (bins / (hi - lo))).astype(jnp.int32), bins - 1)
  return bin_index * k + jnp.arange(k, dtype=jnp.int32)


def _chunked(z: Array) -> tuple[Array, Array]:
  """Pads (N, k) to whole chunks: (n_chunks, C, k) codes and (n_chunks, C) validity weights."""
  n, k = z.shape
  rows = min(_CHUNK_ROWS, n)
  n_chunks = -(-n // rows)
  pad = n_chunks * rows - n
  z = jnp.concatenate([z, jnp.broadcast_to(z[:1], (pad, k))], axis=0)
  valid = (jnp.arange(n_chunks * rows) < n).astype(jnp.float32)
  return z.reshape(n_chunks, rows, k), valid.reshape(n_chunks, rows)


def _latent_histograms(z_mean: Array, bins: int):
  """Per-dimension histograms of the latent codes.

  Edges are spread evenly from the lowest to the highest value of each dimension (numpy's and
  ``jnp.histogram``'s rule, including widening a constant dimension to +-0.5); bin ``b`` holds
  ``edge_b <= z < edge_{b+1}``, the highest value falls in the last bin. The bin index is
  computed arithmetically, ``floor((z - lo) * bins / (hi - lo))``, and the counts come from a
  scatter-add into a flat ``(bins * k)`` table, chunk by chunk so that each chunk stays in
  cache: on CPU this is several times faster than a ``vmap`` of ``jnp.histogram`` and
  ``jnp.searchsorted`` over dimensions. A value within float rounding of an interior edge may
  land in the neighbouring bin.

  Args:
    z_mean: (N, k) latent codes.
    bins: number of bins per dimension.

  Returns:
    A function ``lookup(table (bins, k), reduce) -> (N,)`` that, chunk by chunk, gathers each
    code's entry of ``table`` in every dimension and reduces over dimensions with ``reduce``
    (e.g. ``jnp.max`` or ``jnp.sum`` with ``axis=1``); ``counts (bins, k)`` float32; and the bin
    ``width (k,)`` float32.
  """
  z = z_mean.astype(jnp.float32)
  n, k = z.shape
  lo, hi = jnp.min(z, axis=0), jnp.max(z, axis=0)
  constant = hi == lo
  lo = jnp.where(constant, lo - 0.5, lo)
  hi = jnp.where(constant, hi + 0.5, hi)
  z_chunks, valid = _chunked(z)

  def count(counts, chunk):
    z_c, valid_c = chunk
    index = _bin_index(z_c, lo, hi, bins).reshape(-1)
    weight = jnp.repeat(valid_c, k)
    return counts.at[index].add(weight), None

  counts, _ = jax.lax.scan(count, jnp.zeros((bins * k,), jnp.float32), (z_chunks, valid))

  def lookup(table, reduce):
    flat_table = table.reshape(-1)
    per_chunk = jax.lax.map(
        lambda z_c: reduce(jnp.take(flat_table, _bin_index(z_c, lo, hi, bins)), axis=1), z_chunks)
    return per_chunk.reshape(-1)[:n]

  return lookup, counts.reshape(bins, k), (hi - lo) / bins


@functools.partial(jax.jit, static_argnames=("bins", "combine"))
def _sampling_probabilities(z_mean: Array, alpha: Array, bins: int, combine: str) -> Array:
  n = z_mean.shape[0]
  lookup, counts, width = _latent_histograms(z_mean, bins)
  density = counts / (n * width)  # the histogram density of np.histogram(density=True)
  smoothed = density + alpha
  q = smoothed / jnp.sum(smoothed, axis=0, keepdims=True)  # (bins, k), sums to 1 per dim
  if combine == "max":
    # 1/q normalised over the samples of each dimension: sum_n 1/q(z_n) = sum_b counts_b / q_b.
    # Empty bins (q = 0 when alpha = 0) are never looked up; keep them out of the sum.
    inv_q = 1.0 / q
    norm = jnp.sum(jnp.where(counts > 0, counts * inv_q, 0.0), axis=0, keepdims=True)
    per_dim = inv_q / norm
    w = lookup(per_dim, jnp.max)
    return w / jnp.sum(w)
  return jax.nn.softmax(-lookup(jnp.log(q), jnp.sum))


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
  lookup, counts, _ = _latent_histograms(z_mean, bins)
  log_mass = jnp.log(jnp.maximum(counts, 1.0) / z_mean.shape[0])  # empty bins are never looked up
  return lookup(log_mass, jnp.sum)


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


def group_balanced_probabilities(groups: np.ndarray, power: float = 1.0) -> np.ndarray:
  """Sampling probabilities from the faces' group sizes (a known-groups baseline).

  Not a latent method: it needs each training face's group label, which the DB-VAE does
  without. It bounds what re-sampling alone can do when the under-represented group is known.

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
