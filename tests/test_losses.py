"""Tests of jaxface.losses: hand-computed values, stability, gradients, and the three defects
of the reference notebooks (label broadcasting, masking, reparameterisation std)."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxface import evaluation, losses, models

# ----------------------------------------------------------------------------------------------
# Hand-computed values.
# ----------------------------------------------------------------------------------------------


def test_kl_divergence_hand_values():
  # Row 0: mean 0, logvar 0 -> KL 0 exactly.
  # Row 1: mean (1, 2), logvar (0, 0) -> 0.5 * (1 + 4) = 2.5.
  # Row 2: mean (0, 0), logvar (log 2, -log 2) ->
  #        0.5 * [(2 - 1 - log 2) + (0.5 - 1 + log 2)] = 0.5 * 0.5 = 0.25.
  z_mean = jnp.array([[0.0, 0.0], [1.0, 2.0], [0.0, 0.0]])
  z_logvar = jnp.array([[0.0, 0.0], [0.0, 0.0], [math.log(2.0), -math.log(2.0)]])
  kl = losses.kl_divergence(z_mean, z_logvar)
  assert kl.shape == (3,)
  np.testing.assert_allclose(np.asarray(kl), [0.0, 2.5, 0.25], rtol=1e-6, atol=1e-7)


def test_kl_divergence_single_dim_formula():
  # One dimension, mean 0.5, logvar 1: 0.5 * (e + 0.25 - 1 - 1).
  kl = losses.kl_divergence(jnp.array([[0.5]]), jnp.array([[1.0]]))
  np.testing.assert_allclose(float(kl[0]), 0.5 * (math.e + 0.25 - 2.0), rtol=1e-6)


def test_kl_divergence_is_non_negative_on_random_inputs():
  rng = np.random.default_rng(0)
  kl = losses.kl_divergence(jnp.asarray(rng.normal(size=(32, 8)), jnp.float32),
                            jnp.asarray(rng.normal(size=(32, 8)), jnp.float32))
  assert np.all(np.asarray(kl) >= -1e-6)


def _two_images():
  # Batch of 2 images, 2x2x1. Image 0 differs from its reconstruction by (+1, -1, +2, 0),
  # image 1 by (0.5, 0.5, 0.5, 0.5).
  x = jnp.zeros((2, 2, 2, 1))
  recon = jnp.array([[1.0, -1.0, 2.0, 0.0], [0.5, 0.5, 0.5, 0.5]]).reshape(2, 2, 2, 1)
  return x, recon


def test_reconstruction_loss_l1_hand_values():
  x, recon = _two_images()
  l1 = losses.reconstruction_loss(x, recon, "l1")
  # mean |d|: (1 + 1 + 2 + 0) / 4 = 1.0 and 0.5.
  np.testing.assert_allclose(np.asarray(l1), [1.0, 0.5], rtol=1e-6)
  # l1 is the default kind.
  np.testing.assert_allclose(np.asarray(losses.reconstruction_loss(x, recon)), [1.0, 0.5])


def test_reconstruction_loss_l2_hand_values():
  x, recon = _two_images()
  l2 = losses.reconstruction_loss(x, recon, "l2")
  # mean d^2: (1 + 1 + 4 + 0) / 4 = 1.5 and 0.25.
  np.testing.assert_allclose(np.asarray(l2), [1.5, 0.25], rtol=1e-6)


def test_reconstruction_loss_rejects_bad_inputs():
  x, recon = _two_images()
  with pytest.raises(ValueError):
    losses.reconstruction_loss(x, recon, "l3")
  with pytest.raises(ValueError):
    losses.reconstruction_loss(x, recon[:, :1])


def test_vae_loss_hand_value_default_kl_weight():
  x, recon = _two_images()
  z_mean = jnp.array([[1.0, 2.0], [0.0, 0.0]])
  z_logvar = jnp.zeros((2, 2))
  # KL = (2.5, 0); default weight 5e-4 -> 5e-4 * 2.5 + 1.0 and 0 + 0.5.
  out = losses.vae_loss(x, recon, z_mean, z_logvar)
  np.testing.assert_allclose(np.asarray(out), [1.0 + 5e-4 * 2.5, 0.5], rtol=1e-6)
  # Explicit weight and l2.
  out = losses.vae_loss(x, recon, z_mean, z_logvar, kl_weight=0.1, recon_kind="l2")
  np.testing.assert_allclose(np.asarray(out), [1.5 + 0.25, 0.25], rtol=1e-6)


def _bce_reference(logit, label):
  """-(y log sigmoid(x) + (1-y) log(1 - sigmoid(x))), in float64 by hand."""
  logit = float(logit)
  # log sigmoid(x) = -log(1 + e^-x); log(1 - sigmoid(x)) = -log(1 + e^x); written stably.
  log_sig = -(max(-logit, 0.0) + math.log1p(math.exp(-abs(logit))))
  log_one_minus = -(max(logit, 0.0) + math.log1p(math.exp(-abs(logit))))
  return -(label * log_sig + (1.0 - label) * log_one_minus)


def test_classification_loss_hand_values():
  # logit 0 -> log 2 whatever the label; logit log 3 with label 1 -> -log(3/4) = log(4/3);
  # logit log 3 with label 0 -> -log(1/4) = log 4.
  logits = jnp.array([0.0, 0.0, math.log(3.0), math.log(3.0)])
  labels = jnp.array([1.0, 0.0, 1.0, 0.0])
  out = losses.classification_loss(logits, labels)
  np.testing.assert_allclose(np.asarray(out),
                             [math.log(2.0), math.log(2.0), math.log(4.0 / 3.0), math.log(4.0)],
                             rtol=1e-6)


def test_classification_loss_matches_reference_on_random_inputs():
  rng = np.random.default_rng(1)
  logits = rng.normal(scale=4.0, size=20)
  labels = rng.integers(0, 2, size=20).astype(np.float64)
  out = losses.classification_loss(jnp.asarray(logits, jnp.float32), jnp.asarray(labels))
  expected = [_bce_reference(l, y) for l, y in zip(logits, labels)]
  np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-5, atol=1e-6)


def test_classification_loss_is_stable_for_large_logits():
  logits = jnp.array([1000.0, 1000.0, -1000.0, -1000.0, 100.0, -100.0])
  labels = jnp.array([1.0, 0.0, 1.0, 0.0, 0.0, 1.0])
  out = np.asarray(losses.classification_loss(logits, labels))
  assert np.all(np.isfinite(out))
  # Confident and right -> ~0; confident and wrong -> ~|logit|.
  np.testing.assert_allclose(out, [0.0, 1000.0, 1000.0, 0.0, 100.0, 100.0], rtol=1e-6,
                             atol=1e-6)
  # Gradient is finite too: d/dx = sigmoid(x) - y -> 0, 1, -1, 0, 1, -1.
  grad = jax.grad(lambda l: jnp.sum(losses.classification_loss(l, labels)))(logits)
  np.testing.assert_allclose(np.asarray(grad), [0.0, 1.0, -1.0, 0.0, 1.0, -1.0], atol=1e-6)


# ----------------------------------------------------------------------------------------------
# Debiasing loss: total and parts, masking, labels (B,1) vs (B,).
# ----------------------------------------------------------------------------------------------


def _batch(seed=0, b=4, s=4, k=3):
  rng = np.random.default_rng(seed)
  f = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
  x = jnp.asarray(rng.uniform(size=(b, s, s, 3)), jnp.float32)
  recon = jnp.asarray(rng.uniform(size=(b, s, s, 3)), jnp.float32)
  labels = jnp.array([1.0, 0.0, 1.0, 0.0][:b])
  return dict(x=x, x_recon=recon, labels=labels, y_logit=f(b), z_mean=f(b, k),
              z_logvar=0.5 * f(b, k))


def _numpy_debiasing(x, x_recon, labels, y_logit, z_mean, z_logvar, kl_weight=5e-4,
                     recon_kind="l1", vae_weight=1.0):
  x, x_recon = np.asarray(x, np.float64), np.asarray(x_recon, np.float64)
  labels = np.asarray(labels, np.float64).reshape(-1)
  y_logit = np.asarray(y_logit, np.float64)
  z_mean, z_logvar = np.asarray(z_mean, np.float64), np.asarray(z_logvar, np.float64)
  cls = np.array([_bce_reference(l, y) for l, y in zip(y_logit, labels)])
  kl = 0.5 * np.sum(np.exp(z_logvar) + z_mean ** 2 - 1.0 - z_logvar, axis=1)
  d = x - x_recon
  err = np.abs(d) if recon_kind == "l1" else d ** 2
  rec = err.reshape(len(x), -1).mean(axis=1)
  vae = kl_weight * kl + rec
  per = cls + vae_weight * labels * vae
  return per.mean(), cls, vae, per


@pytest.mark.parametrize("recon_kind,vae_weight", [("l1", 1.0), ("l2", 1.0), ("l1", 0.1)])
def test_debiasing_loss_total_and_parts(recon_kind, vae_weight):
  b = _batch()
  out = losses.debiasing_loss(**b, recon_kind=recon_kind, vae_weight=vae_weight)
  total, cls, vae, per = _numpy_debiasing(**b, recon_kind=recon_kind, vae_weight=vae_weight)
  np.testing.assert_allclose(float(out.total), total, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(out.classification), cls, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(out.vae), vae, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(out.per_sample), per, rtol=1e-5)
  assert out.total.shape == ()
  for part in (out.classification, out.vae, out.per_sample):
    assert part.shape == (4,)


def test_debiasing_loss_masks_vae_term_for_non_faces_only():
  b = _batch()
  out = losses.debiasing_loss(**b)
  labels = np.asarray(b["labels"])
  cls, vae, per = map(np.asarray, (out.classification, out.vae, out.per_sample))
  # Non-faces: classification only (classification is not masked).
  np.testing.assert_allclose(per[labels == 0], cls[labels == 0], rtol=1e-6)
  assert np.all(cls[labels == 0] > 0)
  # Faces: classification + VAE.
  np.testing.assert_allclose(per[labels == 1], cls[labels == 1] + vae[labels == 1], rtol=1e-6)
  # The VAE part is reported unmasked for every sample.
  assert np.all(vae > 0)


def test_debiasing_loss_all_non_faces_is_pure_classification():
  b = _batch()
  b["labels"] = jnp.zeros(4)
  out = losses.debiasing_loss(**b)
  np.testing.assert_allclose(float(out.total),
                             float(jnp.mean(losses.classification_loss(b["y_logit"],
                                                                       b["labels"]))),
                             rtol=1e-6)


def test_labels_b1_equal_labels_b():
  b = _batch()
  flat = losses.debiasing_loss(**b)
  b1 = dict(b, labels=b["labels"][:, None])
  col = losses.debiasing_loss(**b1)
  assert col.per_sample.shape == (4,)
  assert col.classification.shape == (4,)
  np.testing.assert_allclose(float(col.total), float(flat.total), rtol=1e-7)
  np.testing.assert_allclose(np.asarray(col.per_sample), np.asarray(flat.per_sample))
  np.testing.assert_allclose(np.asarray(col.classification), np.asarray(flat.classification))
  # classification_loss on its own as well.
  np.testing.assert_allclose(
      np.asarray(losses.classification_loss(b["y_logit"], b["labels"][:, None])),
      np.asarray(losses.classification_loss(b["y_logit"], b["labels"])))
  # And it equals the reference computed without any broadcasting.
  total, *_ = _numpy_debiasing(**b)
  np.testing.assert_allclose(float(col.total), total, rtol=1e-5)


def test_bad_label_shapes_raise():
  b = _batch()
  with pytest.raises(ValueError):
    losses.debiasing_loss(**dict(b, labels=jnp.ones((4, 4))))
  with pytest.raises(ValueError):
    losses.classification_loss(b["y_logit"], jnp.ones((3,)))


@pytest.mark.parametrize("label_shape", ["flat", "column"])
def test_non_face_reconstruction_does_not_leak_into_total(label_shape):
  b = _batch()
  if label_shape == "column":
    b["labels"] = b["labels"][:, None]
  base = float(losses.debiasing_loss(**b).total)
  # Sample 1 is a non-face: wreck its reconstruction and latent code -> total unchanged.
  recon = b["x_recon"].at[1].set(100.0)
  z_mean = b["z_mean"].at[1].set(50.0)
  changed = losses.debiasing_loss(**dict(b, x_recon=recon, z_mean=z_mean))
  assert float(changed.total) == pytest.approx(base, rel=1e-7, abs=0)
  # ... although its unmasked VAE part did change.
  assert float(changed.vae[1]) > 50.0
  # Sample 0 is a face: the same change moves the total by exactly delta_vae / B.
  recon0 = b["x_recon"].at[0].set(100.0)
  changed0 = losses.debiasing_loss(**dict(b, x_recon=recon0))
  old_vae0 = float(losses.debiasing_loss(**b).vae[0])
  expected = base + (float(changed0.vae[0]) - old_vae0) / 4
  assert float(changed0.total) == pytest.approx(expected, rel=1e-5)
  assert float(changed0.total) > base + 20.0


def test_non_face_gradient_wrt_reconstruction_is_zero():
  b = _batch()

  def total(recon):
    return losses.debiasing_loss(**dict(b, x_recon=recon)).total

  g = np.asarray(jax.grad(total)(b["x_recon"]))
  labels = np.asarray(b["labels"])
  assert np.all(g[labels == 0] == 0.0)
  assert np.all(np.abs(g[labels == 1]) > 0)
  # d/d recon of mean|x - r| / (B * n_pixels): magnitude 1 / (4 * 48) per pixel for faces.
  np.testing.assert_allclose(np.abs(g[labels == 1]), 1.0 / (4 * 4 * 4 * 3), rtol=1e-6)


def test_classification_term_is_not_masked_for_non_faces():
  b = _batch()
  base = float(losses.debiasing_loss(**b).total)
  # Changing a non-face's logit changes the total by delta_cls / B.
  y = b["y_logit"].at[1].set(5.0)
  out = losses.debiasing_loss(**dict(b, y_logit=y))
  delta = (_bce_reference(5.0, 0.0) - _bce_reference(float(b["y_logit"][1]), 0.0)) / 4
  assert float(out.total) == pytest.approx(base + delta, rel=1e-5)
  assert abs(delta) > 0.1


# ----------------------------------------------------------------------------------------------
# Per-sample shapes: (B,) and (B, 1) alike for labels and logits, anything else refused.
# ----------------------------------------------------------------------------------------------


def _batch8(seed=4):
  b = _batch(seed=seed, b=4)
  rng = np.random.default_rng(seed)
  # Eight samples, half faces: (8, 4, 4, 3) images, (8,) logits, (8, 3) codes.
  return dict(x=jnp.concatenate([b["x"], b["x"][::-1]]),
              x_recon=jnp.concatenate([b["x_recon"], b["x"]]),
              labels=jnp.array([1.0, 0.0] * 4),
              y_logit=jnp.asarray(rng.normal(scale=2.0, size=8), jnp.float32),
              z_mean=jnp.asarray(rng.normal(size=(8, 3)), jnp.float32),
              z_logvar=jnp.asarray(0.5 * rng.normal(size=(8, 3)), jnp.float32))


@pytest.mark.parametrize("logit_shape,label_shape", [
    ("column", "flat"), ("column", "column"), ("flat", "column")])
def test_column_logits_equal_flat_logits_under_jit(logit_shape, label_shape):
  b = _batch8()
  reference = _numpy_debiasing(**b)
  flat = jax.jit(losses.debiasing_loss)(**b)
  shaped = dict(b)
  if logit_shape == "column":
    shaped["y_logit"] = b["y_logit"][:, None]  # what a Dense(1) head returns
  if label_shape == "column":
    shaped["labels"] = b["labels"][:, None]
  out = jax.jit(losses.debiasing_loss)(**shaped)
  for part in (out.classification, out.vae, out.per_sample):
    assert part.shape == (8,)
  np.testing.assert_allclose(float(out.total), float(flat.total), rtol=1e-6)
  np.testing.assert_allclose(float(out.total), reference[0], rtol=1e-5)
  np.testing.assert_allclose(np.asarray(out.per_sample), reference[3], rtol=1e-5)
  cls = jax.jit(losses.classification_loss)(shaped["y_logit"], shaped["labels"])
  assert cls.shape == (8,)
  np.testing.assert_allclose(np.asarray(cls), reference[1], rtol=1e-5)


@pytest.mark.parametrize("y_logit,labels,message", [
    (np.zeros(8), np.zeros(7), r"labels must have shape \(8,\) or \(8, 1\), got \(7,\)"),
    (np.zeros((8, 2)), np.zeros(8), r"y_logit must have shape \(B,\) or \(B, 1\), got \(8, 2\)"),
    (np.zeros(8), np.zeros((8, 2)), r"labels must have shape .*got \(8, 2\)"),
    (np.float32(0.0), np.float32(1.0), r"y_logit must have shape .*got \(\)"),
    (np.zeros(8), np.float32(1.0), r"labels must have shape .*got \(\)"),
    (np.zeros((1, 8)), np.zeros(8), r"y_logit must have shape .*got \(1, 8\)"),
])
def test_classification_loss_refuses_other_shapes_at_trace_time(y_logit, labels, message):
  with pytest.raises(ValueError, match=message):
    losses.classification_loss(jnp.asarray(y_logit), jnp.asarray(labels))
  with pytest.raises(ValueError, match=message):
    jax.jit(losses.classification_loss)(y_logit, labels)


@pytest.mark.parametrize("overrides,message", [
    (dict(y_logit=np.zeros((8, 2))), "y_logit must have shape"),
    (dict(y_logit=np.float32(0.0)), "y_logit must have shape"),
    (dict(y_logit=np.zeros(6)), r"labels must have shape \(6,\) or \(6, 1\), got \(8,\)"),
    (dict(y_logit=np.zeros(6), labels=np.zeros(6)),
     r"x \(8, 4, 4, 3\) and y_logit \(6,\) differ in batch size"),
    (dict(labels=np.zeros((8, 8))), "labels must have shape"),
    (dict(labels=np.zeros(6)), "labels must have shape"),
    (dict(z_mean=np.zeros((6, 3))), "z_mean and z_logvar must both be"),
    (dict(z_mean=np.zeros((6, 3)), z_logvar=np.zeros((6, 3))), "differ in batch size"),
    (dict(z_logvar=np.zeros((8, 1))), "z_mean and z_logvar must both be"),
    (dict(x_recon=np.zeros((6, 4, 4, 3))), "differ in shape"),
])
def test_debiasing_loss_refuses_other_shapes_at_trace_time(overrides, message):
  b = dict(_batch8(), **{k: jnp.asarray(v) for k, v in overrides.items()})
  with pytest.raises(ValueError, match=message):
    jax.jit(losses.debiasing_loss)(**b)


def test_vae_parts_refuse_mismatched_batches():
  b = _batch8()
  with pytest.raises(ValueError, match="z_mean and z_logvar must both be"):
    losses.kl_divergence(b["z_mean"], b["z_logvar"][:1])  # (1, k) would broadcast to (8,)
  with pytest.raises(ValueError, match="z_mean and z_logvar must both be"):
    losses.kl_divergence(b["z_mean"][0], b["z_logvar"][0])
  with pytest.raises(ValueError, match=r"differ in batch size"):
    losses.vae_loss(b["x"], b["x_recon"], b["z_mean"][:1], b["z_logvar"][:1])
  with pytest.raises(ValueError, match="batch axis"):
    losses.reconstruction_loss(jnp.float32(1.0), jnp.float32(0.0))


def test_flat_per_sample_keeps_numpy_and_jax_types():
  column = np.arange(5.0)[:, None]
  out = losses.flat_per_sample(column, "v")
  assert isinstance(out, np.ndarray) and out.shape == (5,)
  np.testing.assert_array_equal(out, np.arange(5.0))
  assert losses.flat_per_sample(jnp.asarray(column), "v", 5).shape == (5,)
  with pytest.raises(ValueError, match=r"v must have shape \(4,\) or \(4, 1\), got \(5, 1\)"):
    losses.flat_per_sample(column, "v", 4)
  with pytest.raises(ValueError, match="v must have shape"):
    losses.flat_per_sample([1.0, 2.0], "v")  # no shape: not an array


def test_group_metrics_per_sample_shapes():
  prob = np.array([0.9, 0.2, 0.7, 0.6, 0.1, 0.8])
  labels = np.array([1, 1, 1, 1, 0, 0])
  groups = np.array(["A", "A", "B", "B", "", ""])
  flat = evaluation.group_metrics(prob, labels, groups)
  assert flat == evaluation.group_metrics(prob[:, None], labels[:, None], groups[:, None])
  # (N, 2) probabilities beside (2N,) labels used to be flattened into a wrong match.
  with pytest.raises(ValueError, match=r"face_prob must have shape .*got \(3, 2\)"):
    evaluation.group_metrics(prob.reshape(3, 2), np.tile(labels, 1), groups)
  with pytest.raises(ValueError, match=r"labels must have shape .*got \(3, 2\)"):
    evaluation.group_metrics(prob, labels.reshape(3, 2), groups)
  with pytest.raises(ValueError, match=r"groups must have shape .*got \(\)"):
    evaluation.group_metrics(prob[:1], labels[:1], np.array("A"))
  with pytest.raises(ValueError, match=r"face_prob must have shape .*got \(\)"):
    evaluation.group_metrics(np.float64(0.9), labels[:1], groups[:1])


def test_aleatoric_score_per_sample_shapes():
  logits = np.array([0.0, 2.0, -3.0], np.float32)
  flat = evaluation.aleatoric_score(logits)
  column = evaluation.aleatoric_score(logits[:, None])
  assert column.shape == (3,)
  np.testing.assert_allclose(column, flat)
  np.testing.assert_allclose(flat[0], math.log(2.0), rtol=1e-6)
  for bad in (np.zeros((3, 2), np.float32), np.float32(0.0)):
    with pytest.raises(ValueError, match="y_logit must have shape"):
      evaluation.aleatoric_score(bad)


def test_var_a_sampling_noise_refuses_nan():
  with pytest.raises(ValueError, match="rates must be fractions"):
    evaluation.var_a_sampling_noise([0.5, float("nan")], [5, 3])
  with pytest.raises(ValueError, match="at least 2 faces"):
    evaluation.var_a_sampling_noise([0.5, 0.9], [5, float("nan")])


# ----------------------------------------------------------------------------------------------
# Reparameterisation uses exp(0.5 * logvar).
# ----------------------------------------------------------------------------------------------


# One sample shape for both tests (each new shape compiles the PRNG program again).
_N_SAMPLES = 20000
_MEANS = np.array([1.0, -1.0, 0.0, 2.0], np.float32)
_LOGVARS = np.array([math.log(4.0), 0.0, -2.0, 2.0], np.float32)  # std 2, 1, e^-1, e


def _reparam_inputs():
  z_mean = jnp.asarray(np.tile(_MEANS, (_N_SAMPLES, 1)))
  z_logvar = jnp.asarray(np.tile(_LOGVARS, (_N_SAMPLES, 1)))
  return z_mean, z_logvar


def test_reparameterize_exact_value_with_fixed_key():
  key = jax.random.PRNGKey(42)
  z_mean, z_logvar = _reparam_inputs()
  z = np.asarray(models.reparameterize(key, z_mean, z_logvar))
  eps = np.asarray(jax.random.normal(key, z_mean.shape), np.float64)
  expected = _MEANS.astype(np.float64) + np.exp(0.5 * _LOGVARS.astype(np.float64)) * eps
  np.testing.assert_allclose(z, expected, rtol=1e-5, atol=1e-6)
  # Explicitly: for logvar = log 4 the noise is scaled by 2 (not 4 = exp(logvar)).
  np.testing.assert_allclose(z[:5, 0], 1.0 + 2.0 * eps[:5, 0], rtol=1e-5)
  assert not np.allclose(z[:, 0], 1.0 + 4.0 * eps[:, 0], atol=1e-2)


def test_reparameterize_empirical_std():
  z_mean, z_logvar = _reparam_inputs()
  z = np.asarray(models.reparameterize(jax.random.PRNGKey(0), z_mean, z_logvar), np.float64)
  np.testing.assert_allclose(z.std(axis=0), np.exp(0.5 * _LOGVARS), rtol=0.03)
  np.testing.assert_allclose(z.mean(axis=0), _MEANS, atol=0.06)
  # Different keys, different samples.
  z2 = np.asarray(models.reparameterize(jax.random.PRNGKey(1), z_mean, z_logvar))
  assert not np.allclose(z, z2)


# ----------------------------------------------------------------------------------------------
# Gradients through the model.
# ----------------------------------------------------------------------------------------------


def test_debiasing_loss_gradients_through_forward_are_finite():
  # init_variables' exact structure (eval_shape, no slow random-init compilation), filled with
  # LeCun-scaled NumPy noise.
  abstract = jax.eval_shape(
      functools.partial(models.init_variables, latent_dim=2, n_filters=2, image_size=16),
      jax.random.PRNGKey(0))
  prng = np.random.default_rng(0)

  def fill(path, leaf):
    name = path[-1].key
    if name == "kernel":
      value = prng.normal(size=leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))
    elif name in ("scale", "var"):
      value = np.ones(leaf.shape)
    else:
      value = 0.05 * prng.normal(size=leaf.shape) if name == "bias" else np.zeros(leaf.shape)
    return jnp.asarray(value, jnp.float32)

  variables = jax.tree_util.tree_map_with_path(fill, abstract)
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.uniform(size=(4, 16, 16, 3)), jnp.float32)
  labels = jnp.array([[1.0], [0.0], [1.0], [0.0]])

  def loss_fn(params):
    out = models.forward({"params": params, "batch_stats": variables["batch_stats"]}, x,
                         key=jax.random.PRNGKey(1), train=True)
    return losses.debiasing_loss(x, out.x_recon, labels, out.y_logit, out.z_mean,
                                 out.z_logvar).total

  # Test-only jit with XLA backend optimisations turned down: compilation dominates on CPU.
  fast = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
  loss, grads = jax.jit(jax.value_and_grad(loss_fn), compiler_options=fast)(variables["params"])
  assert np.isfinite(float(loss))
  leaves = jax.tree_util.tree_leaves(grads)
  assert leaves
  assert all(np.all(np.isfinite(np.asarray(g))) for g in leaves)
  # Both the encoder and the decoder receive gradient.
  enc_norm = sum(float(jnp.sum(g ** 2)) for g in jax.tree_util.tree_leaves(grads["encoder"]))
  dec_norm = sum(float(jnp.sum(g ** 2)) for g in jax.tree_util.tree_leaves(grads["decoder"]))
  assert enc_norm > 0 and dec_norm > 0
