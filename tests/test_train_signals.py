"""The trainer's epoch-start resampling with the label-free signals, tempering and blends."""

from __future__ import annotations

import numpy as np
import pytest

from jaxface import config as config_lib
from jaxface import data as data_lib
from jaxface import inference, resampling, sharding, train

from helpers import tiny_config


def _faces(config):
  datasets = data_lib.load_datasets(config.data)
  return datasets["train"].subset(datasets["train"].face_indices())


def _fake_pass(monkeypatch, z_mean, face_prob):
  monkeypatch.setattr(inference, "infer",
                      lambda *a, **k: {"z_mean": z_mean, "face_prob": face_prob})


def test_each_signal_reaches_the_batcher_as_its_resampling_function_gives(monkeypatch):
  config = tiny_config("dbvae")
  faces = _faces(config)
  n = len(faces)
  rng = np.random.default_rng(0)
  z_mean = rng.normal(size=(n, 16)).astype(np.float32)
  face_prob = rng.random(n).astype(np.float32)
  _fake_pass(monkeypatch, z_mean, face_prob)
  rs = config.resampling
  expected = {
      "latent_pca": resampling.latent_pca_probabilities(z_mean, rs.components, rs.bins, rs.alpha),
      "clusters": resampling.cluster_probabilities(z_mean, rs.clusters, rs.components,
                                                   seed=config.seed),
      "errors": resampling.error_probabilities(face_prob, rs.error_upweight),
  }
  for signal, want in expected.items():
    config.resampling.signal = signal
    p, info = train.resampling_probabilities(config, None, faces, sharding.make_mesh(), epoch=1)
    np.testing.assert_allclose(p, np.asarray(want, np.float64), rtol=1e-5)
    assert info["ess"] == pytest.approx(resampling.effective_sample_size(p))
  # In the first epoch the untrained classifier's errors mean nothing: uniform.
  p, _ = train.resampling_probabilities(config, None, faces, sharding.make_mesh(), epoch=0)
  np.testing.assert_allclose(p, 1 / n)


def test_blend_temper_and_cap_compose(monkeypatch):
  config = tiny_config("dbvae", **{"resampling.signal": "latent_pca+errors",
                                   "resampling.blend_weights": "3,1",
                                   "resampling.target_ess": 0.5})
  faces = _faces(config)
  n = len(faces)
  rng = np.random.default_rng(1)
  z_mean = rng.normal(size=(n, 16)).astype(np.float32)
  face_prob = rng.random(n).astype(np.float32)
  _fake_pass(monkeypatch, z_mean, face_prob)
  p, info = train.resampling_probabilities(config, None, faces, sharding.make_mesh(), epoch=2)
  mix = resampling.blend(np.stack([
      np.asarray(resampling.latent_pca_probabilities(z_mean, 4)),
      np.asarray(resampling.error_probabilities(face_prob, 5.0))]), [3, 1])
  tempered, power = resampling.temper_to_ess(mix, 0.5)
  np.testing.assert_allclose(p, np.asarray(tempered, np.float64), rtol=1e-4)
  assert info["power"] == pytest.approx(float(power))
  assert info["ess_fraction"] == pytest.approx(0.5, rel=1e-3)
  config.resampling.max_weight = 2.0
  p, _ = train.resampling_probabilities(config, None, faces, sharding.make_mesh(), epoch=2)
  assert p.max() <= 2.0 / n * (1 + 1e-4)


def test_a_cnn_trains_with_the_errors_signal(tmp_path):
  config = tiny_config("cnn", **{"resampling.signal": "errors", "num_epochs": 2})
  metrics = train.train_and_evaluate(config, tmp_path).metrics
  first, second = metrics["resampling"]
  assert first["ess_fraction"] == pytest.approx(1.0)  # epoch 0: uniform
  assert second["ess_fraction"] <= 1.0
  assert "val" in metrics["eval"] and metrics["eval"]["val"]["groups"]


@pytest.mark.parametrize("field,value,message", [
    ("resampling.signal", "latent_pca+groups", "can be blended"),
    ("resampling.signal", "latent_pca+latent_pca", "twice"),
    ("resampling.signal", "pca", "must be one of"),
    ("resampling.blend_weights", "1,2,3", "one weight per signal"),
    ("resampling.blend_weights", "a,b", "comma-separated numbers"),
    ("resampling.target_ess", 1.5, r"\(0, 1\]"),
    ("resampling.max_weight", 0.5, ">= 1"),
    ("resampling.components", 0, ">= 1"),
    ("resampling.error_kind", "hinge", "'mistakes' or 'loss'"),
])
def test_bad_signal_settings_are_refused_by_field(field, value, message):
  config = tiny_config("dbvae", **{"resampling.signal": "latent_pca+errors", field: value})
  with pytest.raises(ValueError, match=f"config.{field}.*{message}"):
    config_lib.validate_config(config, 1)


def test_cnn_refuses_latent_signals():
  config = tiny_config("cnn", **{"resampling.signal": "latent_pca"})
  with pytest.raises(ValueError, match="no latent space"):
    config_lib.validate_config(config, 1)
