"""Label-free resampling signals: decorrelated latent density, clusters, errors, tempering."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxface import resampling
from jaxface.resampling import latent_axes


def _oblique_minority(n=2000, k=32, share=0.05, shift=4.0, seed=0):
  """Codes whose minority lies along an oblique direction, with 8 dead dimensions."""
  rng = np.random.default_rng(seed)
  z = rng.normal(size=(n, k)).astype(np.float32)
  minority = rng.random(n) < share
  direction = np.ones(k - 8) / np.sqrt(k - 8)
  z[minority, : k - 8] += shift * direction
  z[:, k - 8:] = 1e-3 * rng.normal(size=(n, 8))  # collapsed to the prior
  return z, minority


def _numpy_whitened(z, active, m):
  zc = (z - z.mean(0)) * active
  val, vec = np.linalg.eigh(zc.T @ zc / len(z))
  val, vec = val[::-1][:m], vec[:, ::-1][:, :m]
  return zc @ vec / np.sqrt(val)


def _numpy_latent_pca(z, m, bins, alpha, threshold=resampling.ACTIVE_VARIANCE):
  active = z.var(0) > threshold
  u = _numpy_whitened(z.astype(np.float64), active, m)
  log_w = np.zeros(len(z))
  for j in range(m):
    density, edges = np.histogram(u[:, j], bins=bins, density=True)
    smoothed = density + alpha
    q = smoothed / smoothed.sum()
    index = np.clip(np.searchsorted(edges, u[:, j], side="right") - 1, 0, bins - 1)
    log_w -= np.log(q[index])
  w = np.exp(log_w - log_w.max())
  return w / w.sum()


def test_active_dimensions_finds_the_used_ones():
  z, _ = _oblique_minority()
  active = np.asarray(resampling.active_dimensions(z))
  np.testing.assert_array_equal(active, np.arange(32) < 24)


def test_whitened_components_match_numpy_pca_up_to_sign():
  z, _ = _oblique_minority()
  active = np.arange(32) < 24
  u = np.asarray(resampling.whitened_components(jnp.asarray(z), jnp.asarray(active), 5))
  ref = _numpy_whitened(z.astype(np.float64), active, 5)
  np.testing.assert_allclose(np.cov(u.T, bias=True), np.eye(5), atol=1e-4)
  for j in range(5):
    assert abs(np.corrcoef(u[:, j], ref[:, j])[0, 1]) > 0.999


@pytest.mark.parametrize("m,bins,alpha", [(1, 10, 1e-3), (4, 10, 1e-3), (3, 5, 0.1)])
def test_latent_pca_probabilities_match_numpy(m, bins, alpha):
  z, _ = _oblique_minority(seed=m)
  p = np.asarray(resampling.latent_pca_probabilities(z, m=m, bins=bins, alpha=alpha))
  np.testing.assert_allclose(p.sum(), 1.0, rtol=1e-5)
  np.testing.assert_allclose(p, _numpy_latent_pca(z, m, bins, alpha), rtol=2e-3, atol=1e-9)


def test_latent_pca_finds_an_oblique_minority_that_per_dimension_max_misses():
  z, minority = _oblique_minority()
  p_pca = np.asarray(resampling.latent_pca_probabilities(z, m=2))
  p_max = np.asarray(resampling.sampling_probabilities(z, combine="max"))
  share = minority.mean()
  assert p_pca[minority].sum() > 3 * share
  assert p_pca[minority].sum() > 2 * p_max[minority].sum()


def test_latent_pca_jits_with_static_sizes():
  z, _ = _oblique_minority(n=300)
  active = resampling.active_dimensions(z)
  fn = jax.jit(latent_axes._latent_pca_probabilities, static_argnames=("m", "bins"))
  p = fn(jnp.asarray(z), active, jnp.float32(1e-3), m=2, bins=10)
  np.testing.assert_allclose(p, resampling.latent_pca_probabilities(z, m=2), rtol=1e-5)


def test_kmeans_recovers_separated_blobs():
  rng = np.random.default_rng(0)
  centers = np.array([[0, 0], [10, 0], [0, 10]], np.float32)
  sizes = [200, 50, 10]
  u = np.concatenate([c + 0.3 * rng.normal(size=(s, 2)) for c, s in zip(centers, sizes)])
  truth = np.repeat(np.arange(3), sizes)
  _, assign = resampling.kmeans(jax.random.key(0), jnp.asarray(u, jnp.float32), 3)
  assign = np.asarray(assign)
  # The same partition up to relabelling.
  for c in range(3):
    assert len(set(assign[truth == c])) == 1
  assert len(set(assign)) == 3


def test_cluster_probabilities_give_each_cluster_equal_mass():
  rng = np.random.default_rng(1)
  sizes = [400, 80, 20]
  means = [np.zeros(6), np.r_[8.0, np.zeros(5)], np.r_[0.0, 8.0, np.zeros(4)]]
  z = np.concatenate([mu + rng.normal(size=(s, 6)) for mu, s in zip(means, sizes)])
  truth = np.repeat(np.arange(3), sizes)
  p = np.asarray(resampling.cluster_probabilities(z.astype(np.float32), k=3, m=2))
  mass = np.array([p[truth == c].sum() for c in range(3)])
  np.testing.assert_allclose(mass, 1 / 3, atol=0.02)
  # Deterministic: the key is fixed by the seed.
  np.testing.assert_array_equal(
      p, np.asarray(resampling.cluster_probabilities(z.astype(np.float32), k=3, m=2)))


def test_error_probabilities_match_numpy():
  prob = np.array([0.9, 0.2, 0.6, 0.5, 0.99], np.float32)
  p = np.asarray(resampling.error_probabilities(prob, upweight=4.0))
  w = np.where(prob <= 0.5, 4.0, 1.0)
  np.testing.assert_allclose(p, w / w.sum(), rtol=1e-6)
  p_loss = np.asarray(resampling.error_probabilities(prob[:, None], upweight=3.0, kind="loss"))
  bce = -np.log(prob)
  w = 1 + 2 * bce / bce.max()
  np.testing.assert_allclose(p_loss, w / w.sum(), rtol=1e-5)


@pytest.mark.parametrize("target", [0.2, 0.5, 0.9])
def test_temper_to_ess_hits_the_target(target):
  z, _ = _oblique_minority()
  p = resampling.sampling_probabilities(z, combine="max")
  p_t, t = resampling.temper_to_ess(p, target)
  assert resampling.effective_sample_size(np.asarray(p_t)) / len(z) == pytest.approx(target,
                                                                                   rel=1e-3)
  expected = np.asarray(p, np.float64) ** float(t)
  np.testing.assert_allclose(p_t, expected / expected.sum(), rtol=1e-3)


def test_temper_to_ess_keeps_order_and_is_jittable():
  p = jnp.asarray([0.1, 0.2, 0.3, 0.4])
  p_t, t = jax.jit(resampling.temper_to_ess)(p, 0.5)
  assert float(t) > 1.0  # the target is below this p's ESS: sharpen
  assert np.all(np.diff(np.asarray(p_t)) > 0)


def test_cap_weights():
  rng = np.random.default_rng(0)
  p = rng.pareto(1.0, size=1000) + 1e-3
  p /= p.sum()
  capped = np.asarray(resampling.cap_weights(jnp.asarray(p, jnp.float32), 5.0))
  assert capped.max() <= 5.0 / 1000 * (1 + 1e-4)
  np.testing.assert_allclose(capped.sum(), 1.0, rtol=1e-5)
  # Uncapped faces keep their relative weights.
  free = capped < 5.0 / 1000 * (1 - 1e-4)
  ratio = capped[free] / p[free]
  np.testing.assert_allclose(ratio, ratio[0], rtol=1e-4)
  assert np.all(np.diff(capped[np.argsort(p)]) >= -1e-9)


def test_blend_generalises_the_lab_blend():
  rng = np.random.default_rng(0)
  a, b = rng.random(50), rng.random(50)
  np.testing.assert_allclose(resampling.blend(np.stack([a, b]), [1, 1]),
                             resampling.blend_probabilities(a, b), rtol=1e-6)
  c = rng.random(50)
  expected = (0.2 * a / a.sum() + 0.3 * b / b.sum() + 0.5 * c / c.sum())
  np.testing.assert_allclose(resampling.blend(np.stack([a, b, c]), [2, 3, 5]), expected,
                             rtol=1e-5)


def test_bad_input_is_refused_by_name():
  z, _ = _oblique_minority(n=100)
  with pytest.raises(ValueError, match="only 24 latent dimensions are active"):
    resampling.latent_pca_probabilities(z, m=30)
  with pytest.raises(ValueError, match="only 100 faces"):
    resampling.cluster_probabilities(z, k=101)
  with pytest.raises(ValueError, match="target_ess"):
    resampling.temper_to_ess(jnp.ones(4) / 4, 0.0)
  with pytest.raises(ValueError, match="target_ess"):
    resampling.temper_to_ess(jnp.ones(4) / 4, 1.5)
  bad = z.copy()
  bad[3, 2] = np.nan
  with pytest.raises(ValueError, match="non-finite"):
    resampling.latent_pca_probabilities(bad)
  with pytest.raises(ValueError, match="non-finite"):
    resampling.cluster_probabilities(bad)
  with pytest.raises(ValueError, match="m must be a positive integer"):
    resampling.latent_pca_probabilities(z, m=0)
  with pytest.raises(ValueError, match="kind"):
    resampling.error_probabilities(np.ones(3) * 0.5, kind="hinge")


def test_identical_codes_give_uniform_probabilities_with_a_warning(caplog):
  z = np.ones((50, 8), np.float32)
  for p in (resampling.latent_pca_probabilities(z), resampling.cluster_probabilities(z, k=4)):
    p = np.asarray(p)
    assert np.all(np.isfinite(p))
    np.testing.assert_allclose(p, 1 / 50)
  assert sum("sampling the faces uniformly" in r.getMessage() for r in caplog.records) == 2
