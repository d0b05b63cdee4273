"""Label-free signals in a decorrelated latent: PCA of the active dimensions, k-means.

The per-dimension histograms (:mod:`jaxface.resampling.histograms`) are decided by the
dimensions one by one: ``max`` by each face's single most extreme dimension, ``product`` mostly
by the many dimensions that carry no group signal. The signals here work in a decorrelated,
low-dimensional latent instead: the top principal components of the active dimensions (those
whose ``z_mean`` varies over the faces), whitened. :func:`latent_pca_probabilities` samples
inversely to the density of those components, :func:`cluster_probabilities` gives every
k-means cluster of them the same mass.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from jaxface.resampling import histograms

Array = jax.Array

ACTIVE_VARIANCE = 1e-2  # a latent dimension is active when Var[z_mean] over the faces exceeds it


def finite_codes(z_mean, name: str = "z_mean") -> np.ndarray | None:
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


@functools.partial(jax.jit, static_argnames=("m", "bins"))
def _latent_pca_probabilities(z_mean, active, alpha, m, bins):
  return jax.nn.softmax(histograms.log_inverse_density(whitened_components(z_mean, active, m), bins, alpha))


def _resolve_components(z_mean, m: int, threshold: float) -> tuple[Array, bool]:
  """The active-dimension mask, checked against ``m``; also whether any dimension is active."""
  check_positive_int(m, "m")
  active = active_dimensions(z_mean, threshold)
  n_active = int(jnp.sum(active))
  if n_active and m > n_active:
    raise ValueError(f"m = {m} components asked for, but only {n_active} latent dimensions "
                     f"are active (variance > {threshold}); use m <= {n_active}")
  return active, n_active > 0


def check_positive_int(value, name: str) -> None:
  """Raises ValueError naming ``name`` unless ``value`` is an int >= 1 (not a bool)."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"{name} must be a positive integer, got {value!r}")


def uniform_with_warning(n: int, why: str) -> Array:
  """(n,) float32 uniform probabilities, logging ``why`` once (a signal's stated fallback)."""
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
  z = finite_codes(z_mean)
  histograms.check_histogram_args(z_mean, bins, alpha)
  active, any_active = _resolve_components(z_mean, m, threshold)
  if not any_active:
    return uniform_with_warning(z.shape[0], "no latent dimension varies over the faces")
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
  z = finite_codes(z_mean)
  check_positive_int(k, "k")
  if k > z.shape[0]:
    raise ValueError(f"k = {k} clusters asked for, but there are only {z.shape[0]} faces")
  active, any_active = _resolve_components(z_mean, m, threshold)
  if not any_active:
    return uniform_with_warning(z.shape[0], "no latent dimension varies over the faces")
  return _cluster_probabilities(jax.random.key(seed), jnp.asarray(z_mean), active, m, k)
