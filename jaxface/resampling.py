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

Two implementations of the per-dimension histograms give the same bins, up to float rounding
of codes on an interior edge (``histogram_impl``):

* ``"vmap"``: the reference, a ``jax.vmap`` of ``jnp.histogram`` over the latent dimensions, each
  face looked up in its bin with ``jnp.searchsorted`` on the same edges.
* ``"scatter"``: the bin index computed arithmetically, ``floor((z - lo) * bins / (hi - lo))``,
  and the counts scatter-added into one flat ``(bins * k)`` table chunk by chunk, so that each
  chunk stays in cache (the fast path on CPU; experiments/bench_resampling.py measures both).
* ``"auto"``: ``"scatter"`` on the CPU backend, ``"vmap"`` on every other backend.

Everything is jitted, works on all dimensions at once and is linear in N * k memory. The bin
count and the mode strings are static; ``alpha`` may be traced (``jax.jit`` with ``bins`` and
``combine`` static, ``jax.vmap`` over ``alpha``), and is only checked when it is concrete.
"""

from __future__ import annotations

import functools
import operator

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

Array = jax.Array

COMBINE_MODES = ("max", "product")
HISTOGRAM_IMPLS = ("auto", "vmap", "scatter")


def _is_traced(value) -> bool:
  """True when ``value`` is a tracer (under ``jax.jit``, ``jax.vmap``, ...), not concrete."""
  return isinstance(value, jax.core.Tracer)


def _check(z_mean, bins, alpha=None) -> int:
  """Checks the shared arguments; returns ``bins`` as a Python int.

  Shapes are always known, so ``z_mean`` is checked under any transformation; ``alpha`` is
  checked only when concrete; ``bins`` fixes the histogram's shape and must be concrete.
  """
  if getattr(z_mean, "ndim", None) != 2:
    raise ValueError(f"z_mean must be (N, k), got shape {getattr(z_mean, 'shape', None)}")
  if z_mean.shape[0] < 1 or z_mean.shape[1] < 1:
    raise ValueError(f"z_mean must have at least one sample and one dimension, got {z_mean.shape}")
  if _is_traced(bins):
    raise TypeError("bins must be a concrete int (it fixes the histogram shape): mark it static "
                    "under jax.jit (static_argnames=('bins',))")
  try:
    bins = operator.index(bins)
  except TypeError:
    raise TypeError(f"bins must be an int, got {bins!r}") from None
  if bins < 1:
    raise ValueError(f"bins must be >= 1, got {bins}")
  if alpha is not None and not _is_traced(alpha):
    alpha_value = np.asarray(alpha)
    if alpha_value.ndim != 0 or not alpha_value >= 0:
      raise ValueError(f"alpha must be a scalar >= 0, got {alpha!r}")
  elif alpha is not None and jnp.ndim(alpha) != 0:
    raise ValueError(f"alpha must be a scalar, got shape {jnp.shape(alpha)}")
  return bins


def resolve_histogram_impl(histogram_impl: str = "auto") -> str:
  """The histogram implementation ``histogram_impl`` stands for on this process's backend.

  Args:
    histogram_impl: ``"auto"``, ``"vmap"`` or ``"scatter"`` (see the module docstring).

  Returns:
    ``"vmap"`` or ``"scatter"``; ``"auto"`` is ``"scatter"`` on the CPU backend, else ``"vmap"``.
  """
  if histogram_impl not in HISTOGRAM_IMPLS:
    raise ValueError(f"histogram_impl must be one of {HISTOGRAM_IMPLS}, got {histogram_impl!r}")
  if histogram_impl == "auto":
    return "scatter" if jax.default_backend() == "cpu" else "vmap"
  return histogram_impl


_CHUNK_ROWS = 4096  # rows of z per pass step: the chunk and its index table stay in cache
_COMPARE_ALL_MAX_BINS = 64  # "vmap" path: up to this many bins, look codes up by comparisons


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


def _scatter_histograms(z: Array, bins: int):
  """Per-dimension histograms by arithmetic bin index and a chunked scatter-add.

  Edges are spread evenly from the lowest to the highest value of each dimension (numpy's and
  ``jnp.histogram``'s rule, including widening a constant dimension to +-0.5); bin ``b`` holds
  ``edge_b <= z < edge_{b+1}``, the highest value falls in the last bin. A value within float
  rounding of an interior edge may land in the neighbouring bin of the ``"vmap"`` path's.

  Args:
    z: (N, k) float32 latent codes.
    bins: number of bins per dimension.

  Returns:
    See :func:`_latent_histograms`.
  """
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

  return lookup, counts.reshape(bins, k), jnp.broadcast_to((hi - lo) / bins, (bins, k))


def _replicated(z: Array) -> Array:
  """``z`` resharded to replicated when its type is sharded over a mesh axis (explicit sharding).

  Under explicit sharding ``jnp.histogram`` and ``jnp.searchsorted`` (the ``"vmap"`` path) and
  the chunking slices (the ``"scatter"`` path) refuse an operand sharded along the batch, and the
  histograms need every code anyway: batch-sharded codes are gathered onto every device first.
  """
  sharding = jax.typeof(z).sharding
  spec = getattr(sharding, "spec", None)
  if spec is None or all(axis is None for axis in spec):
    return z
  return jax.sharding.reshard(z, NamedSharding(sharding.mesh, PartitionSpec()))


def _vmap_histograms(z: Array, bins: int):
  """Per-dimension histograms as a ``jax.vmap`` of ``jnp.histogram`` over latent dimensions.

  The reference path: counts and edges are ``jnp.histogram``'s (and numpy's: edges from the
  lowest to the highest value, a constant dimension widened to +-0.5, the highest value in the
  last bin); each code is looked up in its bin with ``jnp.searchsorted`` on the same edges,
  which is ``np.digitize`` on the lab's edges. ``jnp.histogram`` needs the whole of each
  dimension on one device: the caller replicates a batch-sharded ``z`` first (:func:`_replicated`).

  Args:
    z: (N, k) float32 latent codes.
    bins: number of bins per dimension.

  Returns:
    See :func:`_latent_histograms`.
  """
  per_dim = functools.partial(jax.vmap, in_axes=1, out_axes=1)
  counts, edges = per_dim(lambda z_i: jnp.histogram(z_i, bins))(z)  # (bins, k), (bins + 1, k)
  # Few edges: comparing with all of them fuses into one pass, faster than the default binary
  # search on CPU (same result).
  method = "compare_all" if bins <= _COMPARE_ALL_MAX_BINS else "scan"
  position = per_dim(
      lambda e_i, z_i: jnp.searchsorted(e_i, z_i, side="right", method=method))(edges, z)
  bin_index = jnp.clip(position, 1, bins) - 1  # (N, k): the highest value in the last bin

  def lookup(table, reduce):
    return reduce(jnp.take_along_axis(table, bin_index, axis=0), axis=1)

  return lookup, counts.astype(jnp.float32), jnp.diff(edges, axis=0)


def _latent_histograms(z_mean: Array, bins: int, impl: str):
  """Per-dimension histograms of the latent codes, by the ``"vmap"`` or ``"scatter"`` path.

  Args:
    z_mean: (N, k) latent codes.
    bins: number of bins per dimension.
    impl: ``"vmap"`` or ``"scatter"`` (resolved, not ``"auto"``).

  Returns:
    A function ``lookup(table (bins, k), reduce) -> (N,)`` that gathers each code's entry of
    ``table`` in every dimension and reduces over dimensions with ``reduce`` (e.g. ``jnp.max``
    or ``jnp.sum``, called with ``axis=1``); ``counts (bins, k)`` float32; and the bin widths
    ``(bins, k)`` float32.
  """
  z = _replicated(z_mean.astype(jnp.float32))  # jnp.histogram needs each whole dimension
  if impl == "vmap":
    return _vmap_histograms(z, bins)
  return _scatter_histograms(z, bins)


@functools.partial(jax.jit, static_argnames=("bins", "combine", "impl"))
def _sampling_probabilities(z_mean: Array, alpha: Array, bins: int, combine: str,
                            impl: str) -> Array:
  n = z_mean.shape[0]
  lookup, counts, width = _latent_histograms(z_mean, bins, impl)
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


def sampling_probabilities(z_mean: Array, bins: int = 10, alpha: float | Array = 1e-3,
                           combine: str = "max", *, histogram_impl: str = "auto") -> Array:
  """Probability of drawing each training face, inversely related to its latent density.

  Works under ``jax.jit`` (``bins``, ``combine`` and ``histogram_impl`` static) and
  ``jax.vmap`` over ``alpha``; a traced ``alpha`` is not checked. A batch-sharded ``z_mean``
  (explicit sharding) is replicated before the histograms: ``jnp.histogram`` needs each whole
  dimension on one device.

  Args:
    z_mean: (N, k) latent means of the N training faces.
    bins: histogram bins per dimension (a concrete int).
    alpha: scalar smoothing added to each bin's density; larger = closer to uniform sampling.
    combine: ``"max"`` (lab) or ``"product"`` (paper), see the module docstring.
    histogram_impl: ``"auto"``, ``"vmap"`` (``jnp.histogram``, the reference) or ``"scatter"``
      (the CPU fast path); see :func:`resolve_histogram_impl`.

  Returns:
    (N,) float32 probabilities summing to 1.
  """
  bins = _check(z_mean, bins, alpha)
  if combine not in COMBINE_MODES:
    raise ValueError(f"combine must be one of {COMBINE_MODES}, got {combine!r}")
  impl = resolve_histogram_impl(histogram_impl)
  return _sampling_probabilities(jnp.asarray(z_mean), jnp.asarray(alpha, jnp.float32), bins,
                                 combine, impl)


@functools.partial(jax.jit, static_argnames=("bins", "impl"))
def _bias_score(z_mean: Array, bins: int, impl: str) -> Array:
  lookup, counts, _ = _latent_histograms(z_mean, bins, impl)
  log_mass = jnp.log(jnp.maximum(counts, 1.0) / z_mean.shape[0])  # empty bins are never looked up
  return lookup(log_mass, jnp.sum)


def bias_score(z_mean: Array, bins: int = 10, *, histogram_impl: str = "auto") -> Array:
  """Log joint latent density of each sample: low = rare (under-represented).

  The joint density is approximated by the product over dimensions of the histogram mass of
  the sample's bin (count / N), summed in log space. Each sample counts in its own bin, so the
  score is always finite. Works under ``jax.jit`` with ``bins`` and ``histogram_impl`` static.

  Args:
    z_mean: (N, k) latent means.
    bins: histogram bins per dimension (a concrete int).
    histogram_impl: ``"auto"``, ``"vmap"`` or ``"scatter"``, as in
      :func:`sampling_probabilities`.

  Returns:
    (N,) log density (<= 0).
  """
  bins = _check(z_mean, bins)
  impl = resolve_histogram_impl(histogram_impl)
  return _bias_score(jnp.asarray(z_mean), bins, impl)


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
  Host-side (NumPy, string labels): not for use under ``jax.jit``.

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


def lab_sampling_probabilities_numpy(z_mean: np.ndarray, bins: int = 10,
                                     smoothing_fac: float = 1e-3) -> np.ndarray:
  """The MIT 6.S191 lab's per-dimension NumPy loop, as a reference for ``combine="max"``.

  Host-side (NumPy). Its bin edges are NumPy's, rounded differently from ``jnp.histogram``'s: a
  code within float rounding of an interior edge may fall in the neighbouring bin of
  :func:`sampling_probabilities`'s.

  Args:
    z_mean: (N, k) latent means.
    bins: histogram bins per dimension.
    smoothing_fac: the lab's smoothing (``alpha``).

  Returns:
    (N,) float64 probabilities summing to 1.
  """
  z_mean = np.asarray(z_mean)
  if z_mean.ndim != 2 or 0 in z_mean.shape:
    raise ValueError(f"z_mean must be a non-empty (N, k) array, got shape {z_mean.shape}")
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


# --------------------------------------------------------------------------------------------
# Label-free signals beyond per-dimension histograms
# --------------------------------------------------------------------------------------------
#
# The per-dimension histograms above are decided by the dimensions one by one: ``max`` by each
# face's single most extreme dimension, ``product`` mostly by the many dimensions that carry
# no group signal. The signals below work in a decorrelated, low-dimensional latent instead
# (the top principal components of the active dimensions, whitened), or use the classifier's
# own mistakes; :func:`temper_to_ess` then sets how far any of them moves the sampling mass.

ACTIVE_VARIANCE = 1e-2  # a latent dimension is active when Var[z_mean] over the faces exceeds it


def _finite_codes(z_mean, name: str = "z_mean") -> np.ndarray | None:
  """Checks a concrete (N, k) code array; returns it as NumPy (None when traced)."""
  if isinstance(z_mean, jax.core.Tracer):
    return None
  z = np.asarray(z_mean)
  if z.ndim != 2 or z.shape[0] < 1 or z.shape[1] < 1:
    raise ValueError(f"{name} must be (N, k) with N, k >= 1, got shape {z.shape}")
  if not np.isfinite(z).all():
    raise ValueError(f"{name} has {int(np.sum(~np.isfinite(z)))} non-finite values: the encoder "
                     "diverged; no sampling probabilities can be computed from it")
  return z


def active_dimensions(z_mean: Array, threshold: float = ACTIVE_VARIANCE) -> Array:
  """Mask of the latent dimensions in use: variance of ``z_mean`` over the faces > threshold.

  A VAE leaves unused dimensions at the prior (``z_mean`` about 0 for every face); they carry
  no information about a face and only add noise to a density estimate.

  Args:
    z_mean: (N, k) latent means.
    threshold: minimum variance of an active dimension.

  Returns:
    (k,) bool.
  """
  return jnp.var(jnp.asarray(z_mean, jnp.float32), axis=0) > threshold


@functools.partial(jax.jit, static_argnames=("m",))
def whitened_components(z_mean: Array, active: Array, m: int) -> Array:
  """The faces' coordinates on the top ``m`` principal axes of the active dimensions, whitened.

  Args:
    z_mean: (N, k) latent means.
    active: (k,) bool mask of the dimensions to use (:func:`active_dimensions`).
    m: number of components (at most the number of active dimensions).

  Returns:
    (N, m) float32 coordinates with zero mean and unit variance per component (a component of
    zero variance stays zero).
  """
  z = jnp.asarray(z_mean, jnp.float32)
  z = (z - jnp.mean(z, axis=0)) * active.astype(jnp.float32)
  cov = z.T @ z / z.shape[0]
  eigval, eigvec = jnp.linalg.eigh(cov)  # ascending
  top_val, top_vec = eigval[::-1][:m], eigvec[:, ::-1][:, :m]
  scale = jnp.where(top_val > 1e-12, jax.lax.rsqrt(jnp.maximum(top_val, 1e-12)), 0.0)
  return (z @ top_vec) * scale


def _log_inverse_density(u: Array, bins: int, alpha: Array) -> Array:
  """-sum_j log q_j(u_j) with q_j the smoothed histogram density of component j, (N, m) -> (N,).

  Per component: ``jnp.histogram`` (vmapped over components), density + ``alpha``, normalised
  over the bins as in the lab; each face looks up its bin by ``searchsorted`` on the edges.
  """
  n = u.shape[0]

  def one_component(col):
    counts, edges = jnp.histogram(col, bins=bins)
    width = edges[1] - edges[0]
    smoothed = counts / (n * width) + alpha
    q = smoothed / jnp.sum(smoothed)
    index = jnp.clip(jnp.searchsorted(edges, col, side="right") - 1, 0, bins - 1)
    return jnp.log(q[index])

  return -jnp.sum(jax.vmap(one_component, in_axes=1, out_axes=1)(u), axis=1)


@functools.partial(jax.jit, static_argnames=("m", "bins"))
def _latent_pca_probabilities(z_mean, active, alpha, m, bins):
  return jax.nn.softmax(_log_inverse_density(whitened_components(z_mean, active, m), bins, alpha))


def _resolve_components(z_mean, m: int, threshold: float) -> tuple[Array, bool]:
  """The active-dimension mask, checked against ``m``; also whether any dimension is active."""
  _check_positive_int(m, "m")
  active = active_dimensions(z_mean, threshold)
  n_active = int(jnp.sum(active))
  if n_active and m > n_active:
    raise ValueError(f"m = {m} components asked for, but only {n_active} latent dimensions "
                     f"are active (variance > {threshold}); use m <= {n_active}")
  return active, n_active > 0


def _check_positive_int(value, name: str) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _uniform_with_warning(n: int, why: str) -> Array:
  from absl import logging
  logging.warning("%s: sampling the faces uniformly", why)
  return jnp.full((n,), 1.0 / n, jnp.float32)


def latent_pca_probabilities(z_mean: Array, m: int = 4, bins: int = 10, alpha: float = 1e-3,
                             threshold: float = ACTIVE_VARIANCE) -> Array:
  """Sampling probabilities inversely related to the density of a decorrelated latent.

  The active dimensions (:func:`active_dimensions`) are whitened with PCA and the top ``m``
  components kept (:func:`whitened_components`); each component gets a ``bins``-bin histogram
  (``jax.vmap`` of ``jnp.histogram``), smoothed by ``alpha`` and normalised as in the lab, and a
  face's weight is the product over components of ``1 / q_j``, combined in log space (a
  softmax of ``-sum_j log q_j``).

  Args:
    z_mean: (N, k) latent means of the training faces.
    m: number of principal components.
    bins: histogram bins per component.
    alpha: smoothing added to each bin's density.
    threshold: variance above which a latent dimension counts as active.

  Returns:
    (N,) float32 probabilities summing to 1; uniform (with a warning) when no dimension is
    active, e.g. identical codes.
  """
  z = _finite_codes(z_mean)
  _check(z_mean, bins, alpha)
  active, any_active = _resolve_components(z_mean, m, threshold)
  if not any_active:
    return _uniform_with_warning(z.shape[0], "no latent dimension varies over the faces")
  return _latent_pca_probabilities(jnp.asarray(z_mean), active, jnp.float32(alpha), m, int(bins))


@functools.partial(jax.jit, static_argnames=("k", "iterations"))
def kmeans(key: Array, u: Array, k: int, iterations: int = 50) -> tuple[Array, Array]:
  """k-means with k-means++ seeding (Arthur and Vassilvitskii, 2007).

  Args:
    key: PRNG key for the seeding.
    u: (N, d) points.
    k: number of clusters (<= N).
    iterations: Lloyd iterations after seeding.

  Returns:
    ``centers (k, d)`` and ``assignment (N,)`` int32 (index of each point's nearest center).
  """
  u = jnp.asarray(u, jnp.float32)
  n = u.shape[0]

  def sq_dist(centers):  # (N, k)
    return jnp.sum(jnp.square(u[:, None, :] - centers[None, :, :]), axis=-1)

  first = jax.random.randint(jax.random.fold_in(key, 0), (), 0, n)
  centers = jnp.zeros((k, u.shape[1]), jnp.float32).at[0].set(u[first])

  def seed(i, centers):
    d2 = jnp.min(jnp.where(jnp.arange(k) < i, sq_dist(centers), jnp.inf), axis=1)
    # All points on chosen centers (d2 = 0 everywhere): any point will do.
    logits = jnp.where(jnp.sum(d2) > 0, jnp.log(jnp.maximum(d2, 1e-30)), 0.0)
    pick = jax.random.categorical(jax.random.fold_in(key, i), logits)
    return centers.at[i].set(u[pick])

  centers = jax.lax.fori_loop(1, k, seed, centers)

  def lloyd(_, centers):
    assign = jnp.argmin(sq_dist(centers), axis=1)
    one_hot = jax.nn.one_hot(assign, k, dtype=jnp.float32)
    size = jnp.sum(one_hot, axis=0)
    mean = (one_hot.T @ u) / jnp.maximum(size, 1.0)[:, None]
    return jnp.where(size[:, None] > 0, mean, centers)  # an empty cluster keeps its center

  centers = jax.lax.fori_loop(0, iterations, lloyd, centers)
  return centers, jnp.argmin(sq_dist(centers), axis=1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("m", "k"))
def _cluster_probabilities(key, z_mean, active, m, k):
  _, assign = kmeans(key, whitened_components(z_mean, active, m), k)
  size = jnp.bincount(assign, length=k).astype(jnp.float32)
  w = 1.0 / size[assign]
  return w / jnp.sum(w)


def cluster_probabilities(z_mean: Array, k: int = 8, m: int = 4,
                          threshold: float = ACTIVE_VARIANCE, seed: int = 0) -> Array:
  """Sampling probabilities that give every k-means cluster of the latent the same mass.

  The faces are clustered (:func:`kmeans`, a fixed key from ``seed``) in the whitened top-``m``
  principal components of the active latent dimensions; a face's weight is 1 / the size of
  its cluster (GEORGE-style balancing of discovered subclasses, Sohoni et al. 2020).

  Args:
    z_mean: (N, k_latent) latent means of the training faces.
    k: number of clusters (<= N).
    m: number of principal components clustered.
    threshold: variance above which a latent dimension counts as active.
    seed: seeds the k-means++ initialisation.

  Returns:
    (N,) float32 probabilities summing to 1 (uniform, with a warning, when no dimension is
    active).
  """
  z = _finite_codes(z_mean)
  _check_positive_int(k, "k")
  if k > z.shape[0]:
    raise ValueError(f"k = {k} clusters asked for, but there are only {z.shape[0]} faces")
  active, any_active = _resolve_components(z_mean, m, threshold)
  if not any_active:
    return _uniform_with_warning(z.shape[0], "no latent dimension varies over the faces")
  return _cluster_probabilities(jax.random.key(seed), jnp.asarray(z_mean), active, m, k)


ERROR_KINDS = ("mistakes", "loss")


def error_probabilities(face_prob: Array, upweight: float = 5.0, kind: str = "mistakes") -> Array:
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

  Returns:
    (N,) float32 probabilities summing to 1.
  """
  if kind not in ERROR_KINDS:
    raise ValueError(f"kind must be one of {ERROR_KINDS}, got {kind!r}")
  if not isinstance(upweight, jax.core.Tracer) and not upweight >= 1:
    raise ValueError(f"upweight must be >= 1, got {upweight}")
  p = jnp.asarray(face_prob, jnp.float32)
  if p.ndim == 2 and p.shape[1] == 1:
    p = p[:, 0]
  if p.ndim != 1:
    raise ValueError(f"face_prob must be (N,) or (N, 1), got shape {p.shape}")
  if kind == "mistakes":
    w = jnp.where(p <= 0.5, upweight, 1.0)
  else:
    bce = -jnp.log(jnp.clip(p, 1e-7, 1.0))
    w = 1.0 + (upweight - 1.0) * bce / jnp.maximum(jnp.max(bce), 1e-12)
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
