"""The 'error_axis' signal against a NumPy reference, its fallbacks, a planted rare direction,
and the momentum of face_probabilities."""

from __future__ import annotations

import logging

import jax
import numpy as np
import pytest
from helpers import tiny_config

from jaxface import config as config_lib
from jaxface import data as data_lib
from jaxface import resampling
from jaxface.resampling import error_axes

N, K = 300, 10


def _codes(n=N, seed=0):
  """Correlated codes in 8 active dimensions and 2 near-constant ones; a rare cluster (5%) along
  one direction, where most of the classifier's mistakes are."""
  rng = np.random.default_rng(seed)
  z = np.zeros((n, K), np.float32)
  z[:, :8] = rng.normal(size=(n, 8)) @ rng.normal(size=(8, 8)) * 0.7
  z[:, 8:] = 1e-3 * rng.normal(size=(n, 2))
  rare = np.arange(n) < n // 20
  direction = rng.normal(size=8)
  z[rare, :8] += 4.0 * direction / np.linalg.norm(direction)
  face_prob = np.where(rare & (rng.random(n) < 0.8), 0.2, 0.9)
  face_prob = np.where(~rare & (rng.random(n) < 0.05), 0.4, face_prob)
  face_prob = np.clip(face_prob + 0.05 * rng.normal(size=n), 0.01, 1.0)
  return z.astype(np.float32), face_prob.astype(np.float32), rare


def _reference(z, face_prob, n_axes, bins, alpha, combine, kind, threshold=1e-2, mask=None):
  """The signal in float64 NumPy, step by step as the module docstring says; with ``mask``, the
  axes fitted to the masked faces alone (the others score as correct)."""
  z = np.asarray(z, np.float64)
  n = z.shape[0]
  p = np.asarray(face_prob, np.float64).reshape(-1)
  if mask is not None:
    p = np.where(mask, p, 1.0)
  if kind == "mistakes":
    y = (p <= 0.5).astype(np.float64)
  else:
    bce = -np.log(np.clip(p, 1e-7, 1.0))
    y = bce / max(bce.max(), 1e-12)
  active = z.var(axis=0) > threshold
  m = int(active.sum())
  centred = (z - z.mean(axis=0)) * active
  values, vectors = np.linalg.eigh(centred.T @ centred / n)
  u = centred @ vectors[:, ::-1][:, :m] / np.sqrt(values[::-1][:m])
  eye = np.eye(m)
  fit_u, fit_y = (u, y) if mask is None else (u[mask] - u[mask].mean(axis=0), y[mask])
  k = len(fit_y)
  beta = np.linalg.solve(fit_u.T @ fit_u / k + error_axes.RIDGE * eye,
                         fit_u.T @ (fit_y - fit_y.mean()) / k)
  axes = [beta / np.linalg.norm(beta)]
  if mask is not None:
    u = u - u[mask].mean(axis=0)  # the fit's centre: projections shift, densities do not change
  if n_axes > 1:
    w = y / y.sum()
    c = u - w @ u
    cov = (c * w[:, None]).T @ c
    outer = np.outer(axes[0], axes[0])
    _, vecs = np.linalg.eigh((eye - outer) @ cov @ (eye - outer) - outer)
    for v in vecs[:, ::-1][:, :n_axes - 1].T:
      axes.append(v if np.sum((u @ v) ** 3) >= 0 else -v)
  t = u @ np.stack(axes).T
  per_axis, log_q = [], []
  for col in t.T:
    counts, edges = np.histogram(col, bins)
    smoothed = counts / (n * np.diff(edges)) + alpha
    q = smoothed / smoothed.sum()
    index = np.clip(np.searchsorted(edges, col, side="right"), 1, bins) - 1
    inv_q = 1.0 / q
    per_axis.append(inv_q[index] / np.sum(counts * inv_q))
    log_q.append(np.log(q[index]))
  if combine == "max":
    w = np.max(np.stack(per_axis, axis=1), axis=1)
    return w / w.sum()
  log_w = -np.sum(np.stack(log_q, axis=1), axis=1)
  w = np.exp(log_w - log_w.max())
  return w / w.sum()


@pytest.mark.parametrize("n_axes,combine,kind,bins,alpha", [
    (1, "max", "mistakes", 10, 1e-3),
    (2, "max", "mistakes", 10, 1e-3),
    (2, "product", "loss", 8, 1e-2),
    (3, "max", "loss", 20, 1e-3),
])
def test_matches_the_numpy_reference(n_axes, combine, kind, bins, alpha):
  z, face_prob, _ = _codes()
  got = np.asarray(resampling.error_axis_probabilities(z, face_prob, n_axes, bins, alpha,
                                                       combine, kind))
  assert got.shape == (N,) and got.dtype == np.float32
  np.testing.assert_allclose(got, _reference(z, face_prob, n_axes, bins, alpha, combine, kind),
                             rtol=1e-5, atol=1e-9)


def test_the_axes_are_orthonormal_and_the_first_points_at_the_mistakes():
  z, face_prob, _ = _codes()
  active = resampling.active_dimensions(z)
  assert int(active.sum()) == 8
  u = resampling.whitened_components(z, active, 8)
  score = resampling.error_score(face_prob)
  axes = np.asarray(resampling.error_directions(u, score, 3))
  assert axes.shape == (3, 8)
  np.testing.assert_allclose(axes @ axes.T, np.eye(3), atol=1e-5)
  along = np.asarray(u) @ axes[0]
  assert along[np.asarray(score) > 0].mean() > along[np.asarray(score) == 0].mean()
  # The whole jitted core under an outer jit and vmap over alpha.
  weights = jax.vmap(lambda a: resampling.error_axis_weights(u, score, 2, 10, a))(
      np.array([1e-3, 1e-1], np.float32))
  assert weights.shape == (2, N)
  np.testing.assert_allclose(np.asarray(weights).sum(axis=1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(weights[0], resampling.error_axis_weights(u, score, 2, 10, 1e-3),
                             rtol=1e-5)


def test_error_score_reads_face_prob_as_error_probabilities_does():
  face_prob = np.array([[0.1], [0.5], [0.6], [1.0]], np.float32)
  np.testing.assert_array_equal(resampling.error_score(face_prob), [1, 1, 0, 0])
  loss = np.asarray(resampling.error_score(face_prob, "loss"))
  np.testing.assert_allclose(loss, -np.log(face_prob[:, 0]) / -np.log(0.1), rtol=1e-6)
  # error_probabilities' weights are 1 + (upweight - 1) * score.
  for kind in resampling.ERROR_KINDS:
    w = 1 + 4 * np.asarray(resampling.error_score(face_prob, kind))
    np.testing.assert_allclose(resampling.error_probabilities(face_prob, 5.0, kind),
                               w / w.sum(), rtol=1e-6)
  with pytest.raises(ValueError, match="kind must be one of"):
    resampling.error_score(face_prob, "hinge")


def test_a_rare_direction_that_carries_the_errors_gets_more_than_its_share():
  z, face_prob, rare = _codes(n=600, seed=1)
  share = rare.mean()
  for n_axes in (1, 2):
    p = np.asarray(resampling.error_axis_probabilities(z, face_prob, n_axes))
    assert p[rare].sum() > 3 * share, n_axes
  # Two rare clusters along two directions, both mistaken: two axes favour both.
  rng = np.random.default_rng(2)
  z = rng.normal(size=(600, 6)).astype(np.float32)
  first, second = np.arange(600) < 30, (np.arange(600) >= 30) & (np.arange(600) < 60)
  z[first, 0] += 4.0
  z[second, 1] += 4.0
  face_prob = np.where(first | second, 0.2, 0.9).astype(np.float32)
  p = np.asarray(resampling.error_axis_probabilities(z, face_prob, 2))
  assert p[first].sum() > 2 * first.mean() and p[second].sum() > 2 * second.mean()


@pytest.mark.parametrize("case", ["no mistakes", "only mistakes", "constant loss",
                                  "one active dimension", "identical codes"])
def test_fallbacks_are_uniform_with_one_warning(case, caplog):
  z, face_prob, _ = _codes()
  kind = "mistakes"
  if case == "no mistakes":
    face_prob = np.full(N, 0.9, np.float32)
  elif case == "only mistakes":
    face_prob = np.full(N, 0.1, np.float32)
  elif case == "constant loss":
    face_prob, kind = np.ones(N, np.float32), "loss"
  elif case == "one active dimension":
    z[:, 1:] = 0.0
  else:
    z[:] = 0.5
  with caplog.at_level(logging.WARNING):
    p = np.asarray(resampling.error_axis_probabilities(z, face_prob, 2, kind=kind))
  np.testing.assert_allclose(p, 1 / N)
  assert [r.levelno for r in caplog.records].count(logging.WARNING) == 1
  assert "sampling the faces uniformly" in caplog.records[0].getMessage()


def test_bad_inputs_are_refused():
  z, face_prob, _ = _codes()
  with pytest.raises(ValueError, match=r"face_prob must be \(N,\) or \(N, 1\) with the N = 300"):
    resampling.error_axis_probabilities(z, face_prob[1:])
  with pytest.raises(ValueError, match="combine must be one of"):
    resampling.error_axis_probabilities(z, face_prob, combine="sum")
  with pytest.raises(ValueError, match="n_axes must be a positive integer"):
    resampling.error_axis_probabilities(z, face_prob, 0)
  z[3, 2] = np.nan
  with pytest.raises(ValueError, match="non-finite"):
    resampling.error_axis_probabilities(z, face_prob)
  # Through the registry: its one error naming z_mean.
  rs = config_lib.get_base_config().resampling
  rs.signal = "error_axis"
  with pytest.raises(FloatingPointError, match=r"non-finite latent means \(z_mean\)"):
    resampling.face_probabilities(rs, {"z_mean": z, "face_prob": face_prob}, epoch=1, seed=0)


def test_the_registry_entry():
  z, face_prob, _ = _codes(n=97)
  rs = config_lib.get_base_config().resampling
  rs.update(signal="error_axis", error_axes=2, bins=12, alpha=1e-2, combine="product",
            error_kind="loss", active_variance=0.05)
  inputs = {"z_mean": z, "face_prob": face_prob}
  assert resampling.needed_outputs("error_axis") == ("z_mean", "face_prob")
  p, _ = resampling.face_probabilities(rs, inputs, epoch=1, seed=0)
  want = np.asarray(resampling.error_axis_probabilities(z, face_prob, 2, 12, 1e-2, "product",
                                                        "loss", 0.05), np.float64)
  np.testing.assert_array_equal(p, want / want.sum())
  first, _ = resampling.face_probabilities(rs, inputs, epoch=0, seed=0)
  np.testing.assert_array_equal(first, np.full(97, 1 / 97) / np.full(97, 1 / 97).sum())
  config_lib.validate_config(tiny_config("dbvae", **{"resampling.signal": "latent+error_axis"}),
                             1)
  with pytest.raises(ValueError, match="no latent space"):
    config_lib.validate_config(tiny_config("cnn", **{"resampling.signal": "error_axis"}), 1)


def test_momentum_mixes_in_the_previous_probabilities():
  z, face_prob, _ = _codes()
  rs = config_lib.get_base_config().resampling
  rs.signal = "latent_pca"
  inputs = {"z_mean": z, "face_prob": face_prob}
  signal, _ = resampling.face_probabilities(rs, inputs, epoch=1, seed=0)
  previous = np.random.default_rng(0).random(N)
  # momentum 0 (the default) ignores previous: the signal bit for bit.
  p, _ = resampling.face_probabilities(rs, inputs, epoch=1, seed=0, previous=previous)
  np.testing.assert_array_equal(p, signal)
  rs.momentum = 0.75
  p, _ = resampling.face_probabilities(rs, inputs, epoch=1, seed=0, previous=previous)
  want = 0.75 * previous / previous.sum() + 0.25 * signal
  np.testing.assert_allclose(p, want / want.sum(), rtol=1e-12)
  assert p.dtype == np.float64 and p.sum() == pytest.approx(1.0, abs=1e-12)
  uniform, _ = resampling.face_probabilities(rs, inputs, epoch=1, seed=0)
  np.testing.assert_allclose(uniform, 0.75 / N + 0.25 * signal, rtol=1e-12)
  with pytest.raises(ValueError, match="previous face probabilities have shape"):
    resampling.face_probabilities(rs, inputs, epoch=1, seed=0, previous=previous[1:])
  rs.momentum = 1.0
  with pytest.raises(ValueError, match=r"resampling.momentum must be in \[0, 1\)"):
    resampling.face_probabilities(rs, inputs, epoch=1, seed=0)


@pytest.mark.parametrize("n_axes,kind", [(1, "mistakes"), (2, "loss")])
def test_axes_fitted_to_held_out_faces_match_the_numpy_reference(n_axes, kind):
  z, face_prob, _ = _codes()
  mask = np.random.default_rng(3).random(N) < 0.4
  got = np.asarray(resampling.error_axis_probabilities(z, face_prob, n_axes, kind=kind,
                                                       fit_mask=mask))
  want = _reference(z, face_prob, n_axes, 10, 1e-3, "max", kind, mask=mask)
  np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-9)
  # Only the masked faces' errors count: changing the others' p(face) changes nothing.
  other = np.where(mask, face_prob, 0.05).astype(np.float32)
  np.testing.assert_allclose(
      resampling.error_axis_probabilities(z, other, n_axes, kind=kind, fit_mask=mask), got,
      rtol=1e-6)
  # Every face in the mask is the plain fit, up to centring codes that already have mean 0.
  np.testing.assert_allclose(
      resampling.error_axis_probabilities(z, face_prob, n_axes, kind=kind,
                                          fit_mask=np.ones(N, bool)),
      resampling.error_axis_probabilities(z, face_prob, n_axes, kind=kind), rtol=1e-4)


def test_held_out_errors_with_no_mistake_fall_back_to_uniform_and_bad_masks_are_refused(caplog):
  z, face_prob, rare = _codes()
  mask = ~rare & (face_prob > 0.5)  # every held-out face correct
  with caplog.at_level(logging.WARNING):
    p = np.asarray(resampling.error_axis_probabilities(z, face_prob, fit_mask=mask))
  np.testing.assert_allclose(p, 1 / N)
  assert "every face it is fitted on" in caplog.text
  with pytest.raises(ValueError, match="fit_mask must be a"):
    resampling.error_axis_probabilities(z, face_prob, fit_mask=np.zeros(N, bool))
  with pytest.raises(ValueError, match="fit_mask must be a"):
    resampling.error_axis_probabilities(z, face_prob, fit_mask=np.ones(N - 1, bool))


def test_the_held_out_faces_are_a_seeded_fold_of_the_asked_size():
  mask = resampling.held_out_faces(1000, 0.25, seed=3)
  assert mask.dtype == bool and mask.shape == (1000,) and mask.sum() == 250
  np.testing.assert_array_equal(mask, resampling.held_out_faces(1000, 0.25, seed=3))
  assert (mask != resampling.held_out_faces(1000, 0.25, seed=4)).any()
  for fraction in (0.0, 1.0, -0.1):
    with pytest.raises(ValueError, match=r"heldout_fraction must be in \(0, 1\)"):
      resampling.held_out_faces(100, fraction, 0)
  with pytest.raises(ValueError, match="holds out 0 of the 10"):
    resampling.held_out_faces(10, 0.01, 0)


@pytest.mark.parametrize("signal", ["errors", "error_axis"])
def test_a_held_out_fold_is_skipped_in_epoch_0_and_read_alone_in_epoch_1(signal):
  z, face_prob, _ = _codes()
  rs = config_lib.get_base_config().resampling
  rs.update(signal=signal, error_upweight=20.0, target_ess=0.3, last_update_epoch=1,
            heldout_fraction=0.5)
  inputs = {"z_mean": z, "face_prob": face_prob}
  mask = resampling.held_out_faces(N, 0.5, seed=7)
  # Epoch 0: none of the held-out faces, the others uniform, untouched by the tempering.
  first, details = resampling.face_probabilities(rs, inputs, epoch=0, seed=7)
  np.testing.assert_array_equal(first[mask], 0.0)
  np.testing.assert_allclose(first[~mask], 1 / (~mask).sum(), rtol=1e-12)
  assert details == {"held_out_faces": N // 2}
  # The batcher never draws them.
  labels = np.r_[np.ones(N, np.int32), np.zeros(10, np.int32)]  # the faces first
  train_set = data_lib.FaceData(images=np.zeros((N + 10, 8, 8, 3), np.uint8), labels=labels,
                                groups=np.array([""] * (N + 10)))
  batcher = data_lib.Batcher(train_set, batch_size=8, seed=0)
  batcher.set_face_probabilities(first)
  drawn = np.concatenate([batcher.batch_indices(0, step)[:4] for step in range(40)])
  assert drawn.max() < N and not mask[drawn].any()
  # Epoch 1: the held-out faces' errors alone, then the tempering.
  p, details = resampling.face_probabilities(rs, inputs, epoch=1, seed=7)
  assert details["held_out_faces"] == N // 2
  assert details["held_out_mistakes_face_prob"] == int(np.sum(face_prob[mask] <= 0.5))
  assert details["mistakes_face_prob"] == int(np.sum(face_prob <= 0.5))  # every face's
  assert "held_out_mistakes_face_prob_by_group" not in details  # no labels in the inputs
  groups = np.where(np.arange(N) % 3 == 0, "DF", "LM")
  _, labelled = resampling.face_probabilities(rs, {**inputs, "groups": groups}, epoch=1, seed=7)
  mistaken = mask & (face_prob <= 0.5)
  assert labelled["held_out_mistakes_face_prob_by_group"] == {
      g: int(np.sum(mistaken & (groups == g))) for g in ("DF", "LM")}
  assert labelled["mistakes_face_prob_by_group"] == {
      g: int(np.sum((face_prob <= 0.5) & (groups == g))) for g in ("DF", "LM")}
  plain = (resampling.error_probabilities(face_prob, 20.0, "mistakes", mask) if signal == "errors"
           else resampling.error_axis_probabilities(z, face_prob, fit_mask=mask))
  tempered, _ = resampling.temper_to_ess(plain, 0.3)
  np.testing.assert_allclose(p, np.asarray(tempered, np.float64) / np.sum(tempered), rtol=1e-6)
  if signal == "errors":  # a trained-on face weighs as a correct one, whatever its p(face)
    w = np.asarray(resampling.error_probabilities(face_prob, 20.0, "mistakes", mask))
    np.testing.assert_allclose(w[~mask], w[~mask & (face_prob > 0.5)][0], rtol=1e-6)
  # Later epochs read every face (a run keeps epoch 1's; the config insists on it).
  later, details = resampling.face_probabilities(rs, inputs, epoch=2, seed=7)
  assert "held_out_faces" not in details and "held_out_mistakes_face_prob" not in details
  assert np.abs(later - p).max() > 1e-6
