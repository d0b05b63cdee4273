"""Tests of jaxface.eval.latent_bias: where darker and lighter faces separate in the latent."""

import numpy as np
import pytest

from jaxface.eval import latent_bias as lb
from jaxface.eval.operating_point import roc_auc


def _oblique_codes(n=400, k=24, n_darker=100, shift=4.0, seed=0):
  """Codes whose darker faces are shifted along an oblique direction over 20 dimensions, under
  four noisier dimensions that lead the principal axes; returns (z, darker, direction)."""
  rng = np.random.default_rng(seed)
  z = rng.normal(size=(n, k)) * np.where(np.arange(k) < 4, 3.0, 1.0)
  darker = np.arange(n) < n_darker
  direction = np.where(np.arange(k) >= 4, 1.0, 0.0)
  direction /= np.linalg.norm(direction)
  z[darker] += shift * direction
  return z, darker, direction


def test_the_probe_finds_an_oblique_direction_that_no_single_dimension_shows():
  z, darker, direction = _oblique_codes()
  rng = np.random.default_rng(1)
  # The classifier is less sure of the darker faces: the error axis points at them.
  face_prob = np.clip(np.where(darker, 0.6, 0.95) + rng.normal(0, 0.02, len(z)), 0.01, 0.99)
  found = lb.latent_bias(z, face_prob, darker, n_axes=10)
  assert (found.n_darker, found.n_lighter) == (100, 300)
  assert found.darker_share == pytest.approx(0.25)
  # Single dimensions barely separate the tones; the held-out probe nearly perfectly.
  assert found.dim_auc.max() < 0.85
  assert found.probe_auc > 0.97
  # The noisy dimensions lead the principal axes; the shift makes the fifth axis, which lies
  # along the planted direction (its darker side positive) and separates the tones.
  assert found.axis_auc.shape == found.axis_variance_share.shape == (10,)
  assert np.all(np.diff(found.axis_variance_share) <= 1e-9)
  assert found.axis_auc[:4].max() < 0.65
  best = int(np.argmax(found.axis_auc))
  assert best == 4 and found.axis_auc[best] > 0.97
  assert found.axis_direction[best] @ direction > 0.9
  np.testing.assert_allclose(np.linalg.norm(found.axis_direction, axis=1), 1.0, rtol=1e-5)
  assert found.error_axis_auc > 0.95
  assert 0.0 < found.darker_mass_latent < 1.0 and 0.0 < found.darker_mass_error_axis < 1.0


def test_aucs_are_the_pairwise_share_symmetrised():
  z, darker, _ = _oblique_codes(n=60, k=6, n_darker=20)
  found = lb.latent_bias(z, np.full(len(z), 0.9), darker, n_axes=3)
  for j in range(z.shape[1]):
    pairs = z[darker, j][:, None] - z[~darker, j][None]
    auc = np.mean(pairs > 0) + 0.5 * np.mean(pairs == 0)
    assert found.dim_auc[j] == pytest.approx(max(auc, 1 - auc))
  np.testing.assert_allclose(found.dim_variance, np.var(z, axis=0))
  # The principal axes' shares are the eigenvalues over the total variance.
  eigval = np.linalg.eigvalsh(np.cov(z.T, bias=True))[::-1]
  np.testing.assert_allclose(found.axis_variance_share, eigval[:3] / eigval.sum(), rtol=1e-4)
  # Every face with the same error score: no error axis.
  assert np.isnan(found.error_axis_auc) and np.isnan(found.darker_mass_error_axis)


def test_the_probe_is_scored_on_held_out_faces():
  rng = np.random.default_rng(0)
  u = rng.normal(size=(80, 30))  # more dimensions than half the faces can pin down
  darker = np.arange(80) < 40
  held_out = lb.probe_auc(u, darker, seed=0)
  assert held_out < 0.8  # pure noise: the fit half's perfect separation does not carry over
  assert lb.probe_auc(u, darker, seed=0) == held_out  # a fixed split
  fit, rest = lb._halves(darker, seed=0)
  assert len(np.intersect1d(fit, rest)) == 0 and len(fit) + len(rest) == 80
  assert darker[fit].sum() == darker[rest].sum() == 20


def test_skin_tone_and_skip_reasons():
  darker, known = lb.skin_tone(np.array(["DF", "LM", "", "DM", "X"]))
  np.testing.assert_array_equal(darker, [True, False, False, True, False])
  np.testing.assert_array_equal(known, [True, True, False, True, False])
  z = np.random.default_rng(0).normal(size=(5, 3))
  assert "found 2 darker and 1 lighter" in lb.skip_reason(darker, known, z)
  groups = np.repeat(["DF", "LF"], 4)
  darker, known = lb.skin_tone(groups)
  assert lb.skip_reason(darker, known, np.random.default_rng(0).normal(size=(8, 3))) is None
  assert "no latent dimension varies" in lb.skip_reason(darker, known, np.zeros((8, 3)))
  assert lb.darker_mass({"LF": 0.3, "DF": 0.2, "DM": 0.3, "": 0.2}) == pytest.approx(0.625)
  assert lb.darker_mass({"": 1.0}) is None


def test_symmetric_auc_matches_roc_auc():
  values = np.array([0.1, 0.4, 0.35, 0.8])
  darker = np.array([True, True, False, False])
  auc = roc_auc(values[darker], values[~darker])
  assert lb.symmetric_auc(values, darker) == pytest.approx(max(auc, 1 - auc)) == 0.75


def test_axis_traversal_decodes_the_mean_moved_along_the_axis():
  from jaxface import evaluation
  from test_evaluation import LATENT_DIM, make_variables
  variables = make_variables(LATENT_DIM, seed=0)
  z = np.random.default_rng(0).normal(size=(30, LATENT_DIM))
  direction = np.eye(LATENT_DIM)[1] * 0.6 + np.eye(LATENT_DIM)[2] * 0.8
  traversal = lb.axis_traversal(variables, z, direction, std=2.0, axis=3, steps=5)
  np.testing.assert_array_equal(traversal.dims, [3])
  np.testing.assert_allclose(traversal.values, [np.linspace(-4.0, 4.0, 5)])
  codes = z.mean(axis=0)[None] + np.linspace(-4.0, 4.0, 5)[:, None] * direction[None]
  expected = evaluation.decode_latents(variables, codes.astype(np.float32))
  assert traversal.images.shape == (1,) + expected.shape
  np.testing.assert_allclose(traversal.images[0], expected, atol=1e-6)
