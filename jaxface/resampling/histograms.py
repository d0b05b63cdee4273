"""Per-dimension latent histograms: the DB-VAE's density-based sampling and bias scores.

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

:func:`log_inverse_density` is the ``product`` weight along given axes (e.g. the principal
components of :mod:`jaxface.resampling.latent_axes`), from a ``jnp.histogram`` of each.
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


def check_histogram_args(z_mean, bins, alpha=None) -> int:
  """Checks the arguments shared by the histogram functions; returns ``bins`` as a Python int.

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
  bins = check_histogram_args(z_mean, bins, alpha)
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
  bins = check_histogram_args(z_mean, bins)
  impl = resolve_histogram_impl(histogram_impl)
  return _bias_score(jnp.asarray(z_mean), bins, impl)


def log_inverse_density(u: Array, bins: int, alpha: Array) -> Array:
  """-sum_j log q_j(u_j) with q_j the smoothed histogram density of component j.

  Per component: ``jnp.histogram`` (vmapped over components), density + ``alpha``, normalised
  over the bins as in the lab; each face looks up its bin by ``searchsorted`` on the edges.
  Jittable with ``bins`` static.

  Args:
    u: (N, m) coordinates of the faces along m axes.
    bins: histogram bins per axis (a concrete int).
    alpha: scalar smoothing added to each bin's density.

  Returns:
    (N,) log inverse density (the log of the ``product`` weight, up to a constant).
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
