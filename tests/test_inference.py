"""The one batched, sharded eval pass (jaxface.inference)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxface import evaluation, inference, models, sharding

from helpers import tiny_config
from test_train import random_variables


@pytest.fixture(scope="module")
def vae_variables():
  return random_variables(tiny_config("ssvae"))


def _images(n: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def test_infer_returns_the_requested_outputs_whatever_the_batching(vae_variables):
  images = _images(11)
  names = ("face_prob", "y_logit", "z_mean", "z_logvar", "recon_error", "x_recon")
  one = inference.infer(vae_variables, images, names, batch_size=256)
  assert set(one) == set(names)
  assert one["z_mean"].shape == (11, 8) and one["x_recon"].shape == images.shape
  assert one["x_recon"].min() >= 0.0 and one["x_recon"].max() <= 1.0
  np.testing.assert_allclose(one["face_prob"], 1 / (1 + np.exp(-one["y_logit"])), rtol=1e-5)
  # Batches of 4 (the last one padded) on an explicit mesh: the same rows.
  small = inference.infer(vae_variables, images, ("z_mean", "recon_error"), batch_size=4,
                          mesh=sharding.make_mesh())
  assert set(small) == {"z_mean", "recon_error"}
  np.testing.assert_allclose(small["z_mean"], one["z_mean"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(small["recon_error"], one["recon_error"], rtol=1e-5, atol=1e-6)
  # evaluation's conveniences are this pass.
  pred = evaluation.predict(vae_variables, images, batch_size=4)
  np.testing.assert_allclose(pred.recon_error, one["recon_error"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(evaluation.reconstruct(vae_variables, images), one["x_recon"],
                             rtol=1e-5, atol=1e-6)
  decoded = inference.decode(vae_variables, one["z_mean"], batch_size=4)
  np.testing.assert_allclose(decoded, one["x_recon"], rtol=1e-4, atol=1e-5)


def test_infer_refuses_unknown_outputs_and_a_decoder_the_cnn_lacks(vae_variables):
  with pytest.raises(ValueError, match="outputs: unknown \\['z'\\]"):
    inference.infer(vae_variables, _images(2), ("z",))
  cnn = random_variables(tiny_config("cnn"))
  assert models.latent_dim_of(cnn["params"]) == 0
  with pytest.raises(ValueError, match="no decoder.*recon_error"):
    inference.infer(cnn, _images(2), ("face_prob", "recon_error"))
  empty = inference.infer(vae_variables, _images(0), ("face_prob", "z_mean", "x_recon"))
  assert empty["face_prob"].shape == (0,) and empty["z_mean"].shape == (0, 8)
  assert empty["x_recon"].shape == (0, 32, 32, 3)


def test_face_prob_shifted_is_the_lowest_p_face_over_the_photometric_shifts(vae_variables):
  rng = np.random.default_rng(5)  # weights whose p(face) varies from image to image
  vae_variables = {**vae_variables, "params": jax.tree.map(
      lambda w: w + 0.3 * rng.normal(size=w.shape).astype(w.dtype), vae_variables["params"])}
  images = _images(9, seed=3)
  x = images.astype(np.float32) / 255
  got = inference.infer(vae_variables, images, ("face_prob_shifted",), batch_size=4)
  per_shift = []
  for gain, contrast in inference.PHOTOMETRIC_SHIFTS:
    mean = x.mean(axis=(1, 2, 3), keepdims=True)  # NumPy reference of the shift
    shifted = np.clip((mean + (x - mean) * contrast) * gain, 0.0, 1.0)
    per_shift.append(inference.infer(vae_variables, shifted, ("face_prob",))["face_prob"])
  np.testing.assert_allclose(got["face_prob_shifted"], np.min(per_shift, axis=0), rtol=1e-5,
                             atol=1e-6)
  plain = inference.infer(vae_variables, images, ("face_prob",))["face_prob"]
  assert not np.allclose(got["face_prob_shifted"], plain)  # the shifts change what it sees
  empty = inference.infer(vae_variables, _images(0), ("face_prob_shifted",))
  assert empty["face_prob_shifted"].shape == (0,)
