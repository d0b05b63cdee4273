"""Tests of jaxface.resampling against independent NumPy references and hand-computed values.

The lab's NumPy loop is experiments/bench_resampling.py's (the loop that benchmark times).

Speed: every (shape, bins, combine, histogram_impl) compiles the jitted kernels once, so the
random-input tests share one shape, (N, K) = (120, 5), and the default 10 bins wherever they can.
"""

import math
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import REPO, forced_devices_flags, load_experiment

from jaxface import config as config_lib
from jaxface import resampling

IMPLS = ("vmap", "scatter")
bench = load_experiment("bench_resampling", "_experiments_bench_resampling")
lab_loop = bench.lab_sampling_probabilities_numpy

# ----------------------------------------------------------------------------------------------
# Independent NumPy references.
# ----------------------------------------------------------------------------------------------


def _dim_bins_and_q(z, bins, alpha):
  """Per dimension: (bin index of each sample, smoothed normalised bin mass q, raw counts)."""
  density, edges = np.histogram(z, bins=bins, density=True)
  counts, _ = np.histogram(z, bins=bins)
  edges = edges.astype(np.float64)
  edges[0], edges[-1] = -np.inf, np.inf
  idx = np.digitize(z, edges) - 1  # 0-based bin of each sample
  smoothed = density.astype(np.float64) + alpha
  return idx, smoothed / smoothed.sum(), counts


def ref_max(z_mean, bins=10, alpha=1e-3):
  """The lab's loop: per-dimension 1/q normalised over samples, running maximum, normalise."""
  z_mean = np.asarray(z_mean)
  p_max = np.zeros(z_mean.shape[0])
  for i in range(z_mean.shape[1]):
    idx, q, _ = _dim_bins_and_q(z_mean[:, i], bins, alpha)
    p = 1.0 / q[idx]
    p = p / p.sum()
    p_max = np.maximum(p_max, p)
  return p_max / p_max.sum()


def ref_product_direct(z_mean, bins=10, alpha=1e-3):
  """prod_i 1/q_i(z_i), normalised, in float64 (only for few dimensions)."""
  z_mean = np.asarray(z_mean)
  w = np.ones(z_mean.shape[0])
  for i in range(z_mean.shape[1]):
    idx, q, _ = _dim_bins_and_q(z_mean[:, i], bins, alpha)
    w = w * (1.0 / q[idx])
  return w / w.sum()


def ref_product_log(z_mean, bins=10, alpha=1e-3):
  """Same as ref_product_direct, in log space (any number of dimensions), float64."""
  z_mean = np.asarray(z_mean)
  log_w = np.zeros(z_mean.shape[0])
  for i in range(z_mean.shape[1]):
    idx, q, _ = _dim_bins_and_q(z_mean[:, i], bins, alpha)
    log_w -= np.log(q[idx])
  log_w -= log_w.max()
  w = np.exp(log_w)
  return w / w.sum()


def ref_bias_score(z_mean, bins=10):
  """sum over dimensions of log(count of the sample's bin / N)."""
  z_mean = np.asarray(z_mean)
  n = z_mean.shape[0]
  score = np.zeros(n)
  for i in range(z_mean.shape[1]):
    idx, _, counts = _dim_bins_and_q(z_mean[:, i], bins, 0.0)
    score += np.log(counts[idx] / n)
  return score


N, K = 120, 5


def _normal(n, k, seed=0):
  return np.random.default_rng(seed).normal(size=(n, k)).astype(np.float32)


def _skewed(n, k, seed=0):
  # Mixed shapes per dimension so that histograms are uneven.
  rng = np.random.default_rng(seed)
  z = rng.normal(size=(n, k))
  z[:, ::2] = rng.exponential(size=(n, (k + 1) // 2))
  return z.astype(np.float32)


# ----------------------------------------------------------------------------------------------
# combine="max" (the lab).
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("bins,alpha,data,seed", [
    (10, 1e-3, "normal", 0),
    (10, 0.05, "skewed", 1),
    (20, 1e-3, "skewed", 2),  # 20 bins: several empty bins per dimension
    (100, 1e-3, "normal", 3),  # more bins than the vmap path's comparison lookup takes
])
def test_max_matches_numpy_lab_loop(bins, alpha, data, seed, impl):
  z = (_normal if data == "normal" else _skewed)(N, K, seed=seed)
  p = np.asarray(resampling.sampling_probabilities(z, bins=bins, alpha=alpha, combine="max",
                                                   histogram_impl=impl))
  expected = ref_max(z, bins, alpha)
  np.testing.assert_allclose(p, expected, rtol=1e-4, atol=1e-7)
  # And the benchmark's NumPy transcription of the lab.
  np.testing.assert_allclose(
      p, lab_loop(z, bins=bins, smoothing_fac=alpha),
      rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(
      lab_loop(z, bins=bins, smoothing_fac=alpha), expected,
      rtol=1e-10)


def test_max_is_the_default_mode():
  z = _skewed(N, K, seed=3)
  np.testing.assert_allclose(np.asarray(resampling.sampling_probabilities(z)),
                             ref_max(z, 10, 1e-3), rtol=1e-4)


def test_hand_computed_one_dimension():
  # Values 0, 0, 0, 1 with 2 bins: edges 0, .5, 1; counts (3, 1); density (1.5, .5).
  z = np.array([[0.0], [0.0], [0.0], [1.0]], np.float32)
  # alpha = 0: q = (.75, .25); 1/q = (4/3, 4/3, 4/3, 4) -> (1/6, 1/6, 1/6, 1/2).
  for combine in ("max", "product"):
    p = np.asarray(resampling.sampling_probabilities(z, bins=2, alpha=0.0, combine=combine))
    np.testing.assert_allclose(p, [1 / 6, 1 / 6, 1 / 6, 1 / 2], rtol=1e-5)
  # alpha = 1: smoothed (2.5, 1.5) -> q = (5/8, 3/8); 1/q = (8/5, .., 8/3) -> (3, 3, 3, 5)/14.
  p = np.asarray(resampling.sampling_probabilities(z, bins=2, alpha=1.0))
  np.testing.assert_allclose(p, np.array([3, 3, 3, 5]) / 14, rtol=1e-5)


def test_max_alpha_zero_with_an_empty_bin():
  # Values 0, 0, 0, 1 with 3 bins: counts (3, 0, 1); q = (.75, 0, .25) with alpha = 0; the
  # occupied bins give 1/q = (4/3, 4/3, 4/3, 4) -> (1/6, 1/6, 1/6, 1/2).
  z = np.array([[0.0], [0.0], [0.0], [1.0]], np.float32)
  expected = [1 / 6, 1 / 6, 1 / 6, 1 / 2]
  np.testing.assert_allclose(ref_max(z, 3, 0.0), expected, rtol=1e-6)
  np.testing.assert_allclose(lab_loop(z, 3, 0.0), expected,
                             rtol=1e-6)
  p = np.asarray(resampling.sampling_probabilities(z, bins=3, alpha=0.0, combine="max"))
  np.testing.assert_allclose(p, expected, rtol=1e-5)


def test_product_alpha_zero_with_an_empty_bin():
  # The same input is fine in product mode (log q = -inf only at the unoccupied bin).
  z = np.array([[0.0], [0.0], [0.0], [1.0]], np.float32)
  p = np.asarray(resampling.sampling_probabilities(z, bins=3, alpha=0.0, combine="product"))
  np.testing.assert_allclose(p, [1 / 6, 1 / 6, 1 / 6, 1 / 2], rtol=1e-5)


def test_hand_computed_two_dimensions_max_vs_product():
  # dim 0: 0, 0, 0, 1 -> per-dim weights (1, 1, 1, 3)/6; dim 1: 0, 0, 1, 1 -> uniform 1/4.
  z = np.array([[0, 0], [0, 0], [0, 1], [1, 1]], np.float32)
  # max: (1/4, 1/4, 1/4, 1/2) / 1.25 = (.2, .2, .2, .4).
  p = np.asarray(resampling.sampling_probabilities(z, bins=2, alpha=0.0, combine="max"))
  np.testing.assert_allclose(p, [0.2, 0.2, 0.2, 0.4], rtol=1e-5)
  # product: (4/3 * 2, ..., 4 * 2) -> (1, 1, 1, 3)/6.
  p = np.asarray(resampling.sampling_probabilities(z, bins=2, alpha=0.0, combine="product"))
  np.testing.assert_allclose(p, [1 / 6, 1 / 6, 1 / 6, 1 / 2], rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# General properties (both modes).
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("combine", ["max", "product"])
def test_probabilities_sum_to_one_and_are_non_negative(combine):
  for z in (_normal(N, K, seed=1), _skewed(N, K, seed=2)):
    p = np.asarray(resampling.sampling_probabilities(z, combine=combine))
    assert p.shape == (z.shape[0],)
    assert p.dtype == np.float32
    assert np.all(p >= 0)
    assert np.all(np.isfinite(p))
    assert p.sum() == pytest.approx(1.0, abs=1e-5)


def _most_central(z, count=10):
  """The samples closest to the mode of N(0, 1) codes: the most common ones."""
  return np.argsort(np.abs(z).max(axis=1))[:count]


@pytest.mark.parametrize("combine", ["max", "product"])
def test_rare_codes_get_higher_probability(combine):
  z = _normal(N, K, seed=3)
  z[7] = 6.0  # far outlier in every dimension
  z[11, 0] = -5.0  # outlier in one dimension only
  p = np.asarray(resampling.sampling_probabilities(z, combine=combine))
  common = _most_central(z)
  assert p[7] == p.max()
  assert p[7] > 3 * p[common].max()
  assert p[11] > p[common].max()
  assert p[7] > 3 * np.median(p)


@pytest.mark.parametrize("combine", ["max", "product"])
def test_identical_codes_give_uniform_probabilities(combine):
  z = np.tile(np.array([[0.3, -1.2, 5.0, 0.0, 1e-3]], np.float32), (N, 1))
  p = np.asarray(resampling.sampling_probabilities(z, combine=combine))
  np.testing.assert_allclose(p, np.full(N, 1 / N), rtol=1e-5)


def test_one_bin_gives_uniform_probabilities():
  p = np.asarray(resampling.sampling_probabilities(_skewed(N, K), bins=1))
  np.testing.assert_allclose(p, np.full(N, 1 / N), rtol=1e-5)


@pytest.mark.parametrize("combine", ["max", "product"])
def test_permuting_samples_permutes_output(combine):
  z = _skewed(N, K, seed=4)
  perm = np.random.default_rng(5).permutation(N)
  p = np.asarray(resampling.sampling_probabilities(z, combine=combine))
  p_perm = np.asarray(resampling.sampling_probabilities(z[perm], combine=combine))
  np.testing.assert_allclose(p_perm, p[perm], rtol=1e-5, atol=1e-8)
  assert not np.allclose(p, p[perm])  # the check above is not vacuous


@pytest.mark.parametrize("combine", ["max", "product"])
def test_larger_alpha_is_closer_to_uniform(combine):
  z = _skewed(N, K, seed=6)
  ess = [resampling.effective_sample_size(
      resampling.sampling_probabilities(z, alpha=a, combine=combine)) for a in (1e-3, 0.1, 10.0)]
  assert ess[0] < ess[1] < ess[2] <= N + 1e-6
  assert ess[2] > 0.99 * N


# ----------------------------------------------------------------------------------------------
# combine="product" (the paper).
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("alpha,seed", [(1e-3, 7), (0.2, 8)])
def test_product_matches_float64_reference_small_dims(alpha, seed, impl):
  z, bins = _skewed(N, K, seed=seed), 10
  p = np.asarray(resampling.sampling_probabilities(z, bins=bins, alpha=alpha,
                                                   combine="product", histogram_impl=impl))
  direct = ref_product_direct(z, bins, alpha)
  assert np.all(np.isfinite(direct))  # no underflow at these sizes: a valid reference
  np.testing.assert_allclose(p, direct, rtol=1e-4, atol=1e-8)
  np.testing.assert_allclose(ref_product_log(z, bins, alpha), direct, rtol=1e-10)


def test_product_200_dims_no_underflow_or_overflow():
  n, k = 400, 200
  z = _normal(n, k, seed=7)
  # The naive float32 product overflows here: the regime is a real one.
  w32 = np.ones(n, np.float32)
  with np.errstate(over="ignore"):
    for i in range(k):
      idx, q, _ = _dim_bins_and_q(z[:, i], 10, 1e-3)
      w32 = w32 * (1.0 / q[idx]).astype(np.float32)
  assert not np.all(np.isfinite(w32))

  p = np.asarray(resampling.sampling_probabilities(z, combine="product"))
  assert np.all(np.isfinite(p))
  assert np.all(p >= 0)
  assert p.sum() == pytest.approx(1.0, abs=1e-5)
  # Matches the float64 log-space reference (where the weights span many decades).
  ref = ref_product_log(z, 10, 1e-3)
  np.testing.assert_allclose(p, ref, rtol=1e-3, atol=1e-12)
  # Not all mass on one sample. The exact weights ARE very peaked at 200 dimensions (the
  # reference gives the top sample ~0.97), so check the runner-up samples keep their mass
  # rather than being flushed to zero (a one-hot, which an underflowing product would give).
  top = np.sort(p)[::-1]
  assert top[0] < 0.999
  assert top[1] > 1e-3 and top[2] > 1e-4
  assert np.sum(p > 1e-8) == np.sum(ref > 1e-8) > 5


# ----------------------------------------------------------------------------------------------
# bias_score.
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("bins", [10, 4])
def test_bias_score_matches_numpy_reference(bins, impl):
  z = _skewed(N, K, seed=8)
  s = np.asarray(resampling.bias_score(z, bins=bins, histogram_impl=impl))
  assert s.shape == (N,)
  np.testing.assert_allclose(s, ref_bias_score(z, bins), rtol=1e-5, atol=1e-5)
  assert np.all(s <= 0)
  assert np.all(np.isfinite(s))


def test_bias_score_hand_values():
  z = np.array([[0, 0], [0, 0], [0, 1], [1, 1]], np.float32)
  s = np.asarray(resampling.bias_score(z, bins=2))
  # dim 0 counts (3, 1), dim 1 counts (2, 2) out of 4.
  expected = [math.log(3 / 8)] * 3 + [math.log(1 / 8)]
  np.testing.assert_allclose(s, expected, rtol=1e-6)


def test_bias_score_lower_for_outliers_and_zero_for_identical():
  z = _normal(N, K, seed=9)
  z[5] = 7.0
  s = np.asarray(resampling.bias_score(z))
  assert s[5] == s.min()
  common = _most_central(z)
  # The outlier is alone in its bin in each of the K dimensions: log(1/N) each.
  assert s[5] == pytest.approx(K * math.log(1 / N), rel=1e-5)
  assert s[5] < s[common].min() - 5.0
  np.testing.assert_allclose(
      np.asarray(resampling.bias_score(np.ones((N, K), np.float32))), 0.0, atol=1e-6)


def test_bias_score_permutation_equivariant():
  z = _skewed(N, K, seed=10)
  perm = np.random.default_rng(1).permutation(N)
  np.testing.assert_allclose(np.asarray(resampling.bias_score(z[perm])),
                             np.asarray(resampling.bias_score(z))[perm], rtol=1e-6)


# ----------------------------------------------------------------------------------------------
# Epistemic scores, blending, effective sample size.
# ----------------------------------------------------------------------------------------------


def test_blend_probabilities_hand_values():
  p1 = np.array([1.0, 1.0, 2.0])  # -> (.25, .25, .5)
  p2 = np.array([0.0, 3.0, 1.0])  # -> (0, .75, .25)
  out = np.asarray(resampling.blend_probabilities(p1, p2))
  np.testing.assert_allclose(out, [0.125, 0.5, 0.375], rtol=1e-6)
  assert out.sum() == pytest.approx(1.0)


def test_blend_probabilities_random_matches_formula():
  rng = np.random.default_rng(2)
  p1, p2 = rng.uniform(size=30), rng.uniform(size=30) * 7
  np.testing.assert_allclose(np.asarray(resampling.blend_probabilities(p1, p2)),
                             (p1 / p1.sum() + p2 / p2.sum()) / 2, rtol=1e-5)


def test_blend_probabilities_bad_shapes_raise():
  with pytest.raises(ValueError):
    resampling.blend_probabilities(np.ones(3), np.ones(4))
  with pytest.raises(ValueError):
    resampling.blend_probabilities(np.ones((3, 1)), np.ones((3, 1)))


def test_epistemic_probabilities_proportional_to_error():
  err = np.array([1.0, 2.0, 3.0, 4.0])
  np.testing.assert_allclose(np.asarray(resampling.epistemic_probabilities(err)),
                             [0.1, 0.2, 0.3, 0.4], rtol=1e-6)
  rng = np.random.default_rng(3)
  err = rng.uniform(0.01, 2.0, size=25)
  np.testing.assert_allclose(np.asarray(resampling.epistemic_probabilities(err)),
                             err / err.sum(), rtol=1e-5)


def test_epistemic_score_is_per_sample_reconstruction_error():
  x = np.zeros((2, 2, 2, 1), np.float32)
  recon = np.array([[1, -1, 2, 0], [0.5, 0.5, 0.5, 0.5]], np.float32).reshape(2, 2, 2, 1)
  np.testing.assert_allclose(np.asarray(resampling.epistemic_score(x, recon)), [1.0, 0.5],
                             rtol=1e-6)
  np.testing.assert_allclose(np.asarray(resampling.epistemic_score(x, recon, "l2")),
                             [1.5, 0.25], rtol=1e-6)


def test_effective_sample_size():
  assert resampling.effective_sample_size(np.full(50, 1 / 50)) == pytest.approx(50.0)
  one_hot = np.zeros(50)
  one_hot[17] = 1.0
  assert resampling.effective_sample_size(one_hot) == pytest.approx(1.0)
  # 1 / (.5^2 + .25^2 + .25^2) = 8/3; unnormalised input is normalised first.
  assert resampling.effective_sample_size([2.0, 1.0, 1.0]) == pytest.approx(8 / 3)
  assert resampling.effective_sample_size([3.0, 3.0]) == pytest.approx(2.0)


# ----------------------------------------------------------------------------------------------
# Bad inputs.
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [
    dict(bins=0), dict(bins=-3), dict(alpha=-0.1), dict(alpha=float("nan")),
    dict(combine="sum"), dict(combine="MAX"),
])
def test_sampling_probabilities_bad_arguments_raise(kwargs):
  with pytest.raises(ValueError):
    resampling.sampling_probabilities(_normal(N, K), **kwargs)


@pytest.mark.parametrize("z", [np.zeros(10, np.float32), np.zeros((2, 3, 4), np.float32),
                               np.zeros((0, 3), np.float32), np.zeros((5, 0), np.float32)])
def test_bad_z_mean_shapes_raise(z):
  with pytest.raises(ValueError):
    resampling.sampling_probabilities(z)
  with pytest.raises(ValueError):
    resampling.bias_score(z)


def test_bias_score_bad_bins_raise():
  with pytest.raises(ValueError):
    resampling.bias_score(_normal(N, K), bins=0)


def test_group_balanced_probabilities_hand_values():
  groups = np.array(["LF", "LF", "LF", "DM", "LM", "LM"])
  p = resampling.group_balanced_probabilities(groups)
  np.testing.assert_allclose(p, [1 / 9, 1 / 9, 1 / 9, 1 / 3, 1 / 6, 1 / 6])
  assert p.dtype == np.float64 and abs(p.sum() - 1) < 1e-12
  for g in np.unique(groups):  # every group gets the same mass
    np.testing.assert_allclose(p[groups == g].sum(), 1 / 3)


def test_group_balanced_probabilities_refuse_unlabelled_or_empty():
  with pytest.raises(ValueError, match="1 of 3 faces have no group label"):
    resampling.group_balanced_probabilities(np.array(["LF", "", "DM"]))
  with pytest.raises(ValueError, match="non-empty"):
    resampling.group_balanced_probabilities(np.array([], dtype=str))


def test_group_power_tempers_the_group_weights():
  groups = np.array(["A"] * 9 + ["B"] * 1)
  # power 0.5: weights 1/3 per A face, 1 for the B face -> masses 3 : 1.
  p = resampling.group_balanced_probabilities(groups, power=0.5)
  np.testing.assert_allclose([p[:9].sum(), p[9]], [0.75, 0.25])
  np.testing.assert_allclose(resampling.group_balanced_probabilities(groups, power=0.0), 0.1)
  for bad in (-0.1, 1.5):
    with pytest.raises(ValueError, match="power"):
      resampling.group_balanced_probabilities(groups, power=bad)


def test_effective_sample_size_refuses_non_vectors():
  for bad in (np.float64(1.0), np.ones((3, 2)), np.ones(0)):
    with pytest.raises(ValueError, match="p must be a non-empty"):
      resampling.effective_sample_size(bad)


def test_lab_loop_refuses_non_matrices():
  with pytest.raises(ValueError, match="z_mean must be a non-empty"):
    lab_loop(np.zeros(10, np.float32))


# ----------------------------------------------------------------------------------------------
# The two histogram paths: vmap of jnp.histogram (reference) and arithmetic scatter-add.
# ----------------------------------------------------------------------------------------------


def _edge_codes():
  """(12, 4) codes on exactly representable bin edges (4 bins in every dimension).

  dim 0: integers 0..4 (edges 0, 1, 2, 3, 4): values on interior edges and three on the max;
  dim 1: constant (widened to 4.5..5.5); dim 2: quarter steps in [-1, 1] (edges every 0.5),
  ties at the min and the max; dim 3: one low outlier, the rest at the max.
  """
  dim0 = [0, 1, 1, 2, 2, 2, 3, 3, 4, 4, 4, 0]
  dim1 = [5.0] * 12
  dim2 = [-1, -1, -0.5, -0.25, 0, 0, 0.5, 0.75, 1, 1, 1, 0.25]
  dim3 = [-8.0] + [3.0] * 11
  return np.array([dim0, dim1, dim2, dim3], np.float32).T.copy()


@pytest.mark.parametrize("impl", IMPLS)
def test_edge_bins_match_the_lab_loop(impl):
  z = _edge_codes()
  for alpha in (0.0, 1e-3):
    p = np.asarray(resampling.sampling_probabilities(z, bins=4, alpha=alpha, combine="max",
                                                     histogram_impl=impl))
    np.testing.assert_allclose(p, lab_loop(z, 4, alpha),
                               rtol=1e-5)
    np.testing.assert_allclose(p, ref_max(z, 4, alpha), rtol=1e-5)
    p = np.asarray(resampling.sampling_probabilities(z, bins=4, alpha=alpha, combine="product",
                                                     histogram_impl=impl))
    np.testing.assert_allclose(p, ref_product_direct(z, 4, alpha), rtol=1e-5)
  s = np.asarray(resampling.bias_score(z, bins=4, histogram_impl=impl))
  np.testing.assert_allclose(s, ref_bias_score(z, 4), rtol=1e-6)


@pytest.mark.parametrize("impl", IMPLS)
def test_interior_edges_go_up_and_the_max_is_in_the_last_bin(impl):
  # 0, 1, 1, 2, 4 with edges 0, 1, 2, 3, 4: bins 0, 1, 1, 2, 3 -> counts (1, 2, 1, 1) of 5. A
  # value on an edge counted in the lower bin, or the max dropped, changes the scores.
  z = np.array([[0.0], [1.0], [1.0], [2.0], [4.0]], np.float32)
  s = np.asarray(resampling.bias_score(z, bins=4, histogram_impl=impl))
  np.testing.assert_allclose(s, np.log([1 / 5, 2 / 5, 2 / 5, 1 / 5, 1 / 5]), rtol=1e-6)


@pytest.mark.parametrize("impl", IMPLS)
def test_constant_dimension_beside_varying_ones(impl):
  z = _skewed(N, K, seed=11)
  z[:, -1] = -2.5
  # max: the constant dimension gives every code 1/N, a floor under the other dimensions'.
  p = np.asarray(resampling.sampling_probabilities(z, histogram_impl=impl))
  np.testing.assert_allclose(p, lab_loop(z), rtol=1e-4,
                             atol=1e-7)
  np.testing.assert_allclose(p, ref_max(z), rtol=1e-4, atol=1e-7)
  # product: every code in the same bin of the constant dimension, a factor that cancels.
  p = np.asarray(resampling.sampling_probabilities(z, combine="product", histogram_impl=impl))
  np.testing.assert_allclose(p, ref_product_direct(z[:, :-1]), rtol=1e-4, atol=1e-8)
  # bias: the constant dimension adds log(N / N) = 0.
  s = np.asarray(resampling.bias_score(z, histogram_impl=impl))
  np.testing.assert_allclose(s, ref_bias_score(z[:, :-1]), rtol=1e-5, atol=1e-5)


def test_vmap_path_calls_jnp_histogram_and_scatter_does_not(monkeypatch):
  calls = []
  histogram = jnp.histogram

  def spy(*args, **kwargs):
    calls.append(args[0].shape)
    return histogram(*args, **kwargs)

  monkeypatch.setattr(jnp, "histogram", spy)
  z = _normal(37, 3, seed=12)  # a shape no other test compiles: the kernels are traced here
  resampling.sampling_probabilities(z, histogram_impl="scatter")
  assert calls == []
  resampling.sampling_probabilities(z, histogram_impl="vmap")
  assert calls == [(37,)]  # one per-dimension call, vmapped over the 3 dimensions
  resampling.bias_score(z, histogram_impl="vmap")
  assert calls == [(37,), (37,)]


def test_auto_is_scatter_on_cpu_only(monkeypatch):
  assert resampling.resolve_histogram_impl("vmap") == "vmap"
  assert resampling.resolve_histogram_impl("scatter") == "scatter"
  monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
  assert resampling.resolve_histogram_impl() == "scatter"
  for backend in ("gpu", "tpu"):
    monkeypatch.setattr(jax, "default_backend", lambda b=backend: b)
    assert resampling.resolve_histogram_impl("auto") == "vmap"
  with pytest.raises(ValueError, match="histogram_impl must be one of"):
    resampling.resolve_histogram_impl("gpu")
  for fn in (resampling.sampling_probabilities, resampling.bias_score):
    with pytest.raises(ValueError, match="histogram_impl must be one of"):
      fn(_normal(N, K), histogram_impl="numpy")


def test_config_histogram_impl_default_and_validation():
  config = config_lib.get_base_config()
  assert config.resampling.histogram_impl == "auto"
  for impl in resampling.HISTOGRAM_IMPLS:
    config.resampling.histogram_impl = impl
    config_lib.validate_config(config, 1)
  config.resampling.histogram_impl = "gpu"
  with pytest.raises(ValueError, match=r"config\.resampling\.histogram_impl = 'gpu'"):
    config_lib.validate_config(config, 1)


_SHARDED_SCRIPT = textwrap.dedent("""
    import jax, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec
    from jaxface import resampling
    from bench_resampling import lab_sampling_probabilities_numpy
    mesh = jax.make_mesh((2,), ("batch",), axis_types=(jax.sharding.AxisType.Explicit,))
    z = np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32)
    z_sharded = jax.device_put(z, NamedSharding(mesh, PartitionSpec("batch")))
    ref = lab_sampling_probabilities_numpy(z)
    for impl in ("vmap", "scatter"):
      p = np.asarray(resampling.sampling_probabilities(z_sharded, histogram_impl=impl))
      np.testing.assert_allclose(p, ref, rtol=1e-4, atol=1e-7)
    print("sharded ok")
""")


def test_batch_sharded_codes_on_two_devices():
  env = dict(os.environ, XLA_FLAGS=forced_devices_flags(2), JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join([str(REPO / "experiments"),
                                         os.environ.get("PYTHONPATH", "")]))
  out = subprocess.run([sys.executable, "-c", _SHARDED_SCRIPT], env=env, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "sharded ok" in out.stdout


# ----------------------------------------------------------------------------------------------
# Under jax.jit and jax.vmap: traced arguments work, concrete ones are still checked.
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("combine", ["max", "product"])
def test_jit_with_static_bins_and_combine(combine):
  z = _skewed(N, K, seed=13)
  jitted = jax.jit(resampling.sampling_probabilities, static_argnames=("bins", "combine"))
  p = np.asarray(jitted(z, bins=10, alpha=1e-3, combine=combine))
  np.testing.assert_allclose(
      p, np.asarray(resampling.sampling_probabilities(z, 10, 1e-3, combine)), rtol=1e-6)
  if combine == "max":
    np.testing.assert_allclose(p, ref_max(z, 10, 1e-3), rtol=1e-4, atol=1e-7)
  jitted_impl = jax.jit(resampling.sampling_probabilities,
                        static_argnames=("bins", "combine", "histogram_impl"))
  for impl in IMPLS:
    np.testing.assert_allclose(
        np.asarray(jitted_impl(z, bins=10, alpha=1e-3, combine=combine, histogram_impl=impl)),
        p, rtol=1e-5)


@pytest.mark.parametrize("combine", ["max", "product"])
def test_vmap_over_alpha(combine):
  z = _skewed(N, K, seed=14)
  alphas = np.array([0.0, 1e-3, 0.1, 10.0], np.float32)
  batched = np.asarray(jax.vmap(
      lambda a: resampling.sampling_probabilities(z, alpha=a, combine=combine))(alphas))
  assert batched.shape == (4, N)
  for row, alpha in zip(batched, alphas):
    np.testing.assert_allclose(
        row, np.asarray(resampling.sampling_probabilities(z, alpha=float(alpha),
                                                          combine=combine)), rtol=1e-5)
  assert not np.allclose(batched[0], batched[-1])  # alpha does change the weights


def test_bias_score_and_blends_under_jit():
  z = _skewed(N, K, seed=15)
  np.testing.assert_allclose(
      np.asarray(jax.jit(resampling.bias_score, static_argnames=("bins",))(z, bins=4)),
      ref_bias_score(z, 4), rtol=1e-5, atol=1e-5)
  rng = np.random.default_rng(16)
  p1, p2 = rng.uniform(size=N), rng.uniform(size=N)
  np.testing.assert_allclose(np.asarray(jax.jit(resampling.blend_probabilities)(p1, p2)),
                             (p1 / p1.sum() + p2 / p2.sum()) / 2, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(jax.jit(resampling.epistemic_probabilities)(p2)),
                             p2 / p2.sum(), rtol=1e-5)
  x = np.zeros((2, 2, 2, 1), np.float32)
  recon = np.array([[1, -1, 2, 0], [0.5, 0.5, 0.5, 0.5]], np.float32).reshape(2, 2, 2, 1)
  score = jax.jit(resampling.epistemic_score, static_argnames=("kind",))(x, recon, kind="l2")
  np.testing.assert_allclose(np.asarray(score), [1.5, 0.25], rtol=1e-6)


def test_traced_bins_is_a_clear_error():
  z = _normal(N, K)
  with pytest.raises(TypeError, match="bins must be a concrete int"):
    jax.jit(resampling.sampling_probabilities)(z, 10)
  with pytest.raises(TypeError, match="bins must be a concrete int"):
    jax.jit(resampling.bias_score)(z, 10)


@pytest.mark.parametrize("kwargs,error,message", [
    (dict(alpha=jnp.float32(-0.1)), ValueError, "alpha must be a scalar >= 0"),
    (dict(alpha=np.array([0.1, 0.2])), ValueError, "alpha must be a scalar"),
    (dict(bins=2.5), TypeError, "bins must be an int"),
    (dict(bins="10"), TypeError, "bins must be an int"),
])
def test_concrete_bad_values_still_raise(kwargs, error, message):
  with pytest.raises(error, match=message):
    resampling.sampling_probabilities(_normal(N, K), **kwargs)


def test_traced_alpha_of_the_wrong_shape_raises():
  with pytest.raises(ValueError, match="alpha must be a scalar"):
    jax.jit(lambda a: resampling.sampling_probabilities(_normal(N, K), alpha=a))(jnp.ones(2))


def test_bench_resampling_quick_run():
  # The shape and bins the tests above compile already.
  (row,) = bench.main(["--sizes", str(N), "--dims", str(K), "--repeats", "1"])
  assert row["auto_impl"] == resampling.resolve_histogram_impl("auto")
  for impl in IMPLS:
    assert row[f"{impl}_max_rel_diff_vs_numpy"] < 1e-4
    for name in ("max", "product", "bias_score"):
      assert row[f"{impl}_{name}_ms"] > 0
