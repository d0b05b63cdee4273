"""The trainer's epoch-start resampling with the label-free signals, tempering and blends."""

from __future__ import annotations

import numpy as np
import pytest

from jaxface import inference, resampling, sharding, train
from jaxface import config as config_lib
from jaxface import data as data_lib

from helpers import last_checkpoint, tiny_config


def _faces(config):
  datasets = data_lib.load_datasets(config.data)
  return datasets["train"].subset(datasets["train"].face_indices())


def _fake_pass(monkeypatch, z_mean, face_prob):
  monkeypatch.setattr(inference, "infer",
                      lambda *a, **k: {"z_mean": z_mean, "face_prob": face_prob})


def _faked_faces(monkeypatch, config, seed):
  """The training faces, with random codes and p(face) that the inference pass returns."""
  faces = _faces(config)
  rng = np.random.default_rng(seed)
  z_mean = rng.normal(size=(len(faces), 16)).astype(np.float32)
  face_prob = rng.random(len(faces)).astype(np.float32)
  _fake_pass(monkeypatch, z_mean, face_prob)
  return faces, z_mean, face_prob


def test_each_signal_reaches_the_batcher_as_its_resampling_function_gives(monkeypatch):
  config = tiny_config("dbvae")
  faces, z_mean, face_prob = _faked_faces(monkeypatch, config, 0)
  n = len(faces)
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
  faces, z_mean, face_prob = _faked_faces(monkeypatch, config, 1)
  n = len(faces)
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


def test_momentum_mixes_in_the_batchers_probabilities(monkeypatch):
  config = tiny_config("dbvae", **{"resampling.signal": "error_axis",
                                   "resampling.momentum": 0.25})
  faces, z_mean, face_prob = _faked_faces(monkeypatch, config, 2)
  n = len(faces)
  previous = np.random.default_rng(3).random(n)
  previous /= previous.sum()
  p, info = train.resampling_probabilities(config, None, faces, sharding.make_mesh(), epoch=1,
                                           previous=previous)
  signal = np.asarray(resampling.error_axis_probabilities(z_mean, face_prob), np.float64)
  want = 0.25 * previous + 0.75 * signal / signal.sum()
  np.testing.assert_allclose(p, want / want.sum(), rtol=1e-6)
  assert info["ess"] == pytest.approx(resampling.effective_sample_size(p))


def _last_checkpoint(workdir, config):
  """(face probabilities, parameters) of a run's latest checkpoint."""
  params, probs, _ = last_checkpoint(workdir, config, len(_faces(config)))
  return probs, params


def test_a_run_with_momentum_resumes_exactly(tmp_path):
  config = tiny_config("dbvae", **{"resampling.signal": "latent+error_axis",
                                   "resampling.momentum": 0.5})
  datasets = data_lib.load_datasets(config.data)
  full = train.train_and_evaluate(config, tmp_path / "full", datasets).metrics
  # Killed at epoch 1's first step: the run resumes from epoch 0's last checkpoint (step 6),
  # and epoch 1's resampling mixes in the probabilities that checkpoint holds.
  train.train_and_evaluate(config, tmp_path / "resumed", datasets, stop_at_step=7)
  resumed = train.train_and_evaluate(config, tmp_path / "resumed", datasets).metrics
  assert resumed["steps"] == full["steps"] == 12
  assert resumed["resampling"] == full["resampling"]
  probs_full, params_full = _last_checkpoint(tmp_path / "full", config)
  probs_resumed, params_resumed = _last_checkpoint(tmp_path / "resumed", config)
  assert probs_full.std() > 0  # not uniform
  np.testing.assert_allclose(probs_resumed, probs_full, rtol=1e-12)
  np.testing.assert_allclose(params_resumed, params_full, rtol=1e-6, atol=1e-7)


def test_last_update_epoch_keeps_that_epochs_probabilities_and_resumes(tmp_path):
  settings = {"resampling.signal": "latent", "num_epochs": 3}
  kept = tiny_config("dbvae", **settings, **{"resampling.last_update_epoch": 1})
  datasets = data_lib.load_datasets(kept.data)
  full = train.train_and_evaluate(kept, tmp_path / "kept", datasets).metrics
  # One record per epoch; epoch 2 logs the mass of the probabilities it kept.
  records = full["resampling"]
  assert [r["epoch"] for r in records] == [0, 1, 2]
  assert "kept_from_epoch" not in records[1] and records[2]["kept_from_epoch"] == 1
  assert records[2]["mass_by_group"] == records[1]["mass_by_group"]
  assert records[2]["ess"] == pytest.approx(records[1]["ess"])
  # Epoch 2 draws from what epoch 1 computed: the last probabilities of a 2-epoch run.
  two = tiny_config("dbvae", **{**settings, "num_epochs": 2})
  train.train_and_evaluate(two, tmp_path / "two", datasets)
  every = tiny_config("dbvae", **settings)
  train.train_and_evaluate(every, tmp_path / "every", datasets)
  probs_kept, params_kept = _last_checkpoint(tmp_path / "kept", kept)
  probs_two, _ = _last_checkpoint(tmp_path / "two", two)
  probs_every, params_every = _last_checkpoint(tmp_path / "every", every)
  np.testing.assert_array_equal(probs_kept, probs_two)
  assert np.abs(probs_every - probs_kept).max() > 1e-6
  assert np.abs(params_every - params_kept).max() > 1e-6
  # Killed inside epoch 2 (step 14 of 6 per epoch): resumed, it keeps drawing from epoch 1's.
  train.train_and_evaluate(kept, tmp_path / "resumed", datasets, stop_at_step=14)
  resumed = train.train_and_evaluate(kept, tmp_path / "resumed", datasets).metrics
  assert resumed["resampling"] == full["resampling"]
  probs_resumed, params_resumed = _last_checkpoint(tmp_path / "resumed", kept)
  np.testing.assert_array_equal(probs_resumed, probs_kept)
  np.testing.assert_allclose(params_resumed, params_kept, rtol=1e-6, atol=1e-7)


def test_a_held_out_fold_skips_the_first_epoch_and_resumes(tmp_path):
  config = tiny_config("dbvae", **{"resampling.signal": "error_axis", "num_epochs": 2,
                                   "resampling.last_update_epoch": 1,
                                   "resampling.heldout_fraction": 0.5})
  datasets = data_lib.load_datasets(config.data)
  full = train.train_and_evaluate(config, tmp_path / "full", datasets).metrics
  first, second = full["resampling"]
  n = first["n_faces"]
  assert first["held_out_faces"] == second["held_out_faces"] == n // 2
  assert first["ess"] == pytest.approx(n - n // 2)  # uniform over the faces trained on
  assert 0 <= second["held_out_mistakes_face_prob"] <= n // 2
  # Killed inside epoch 0 (step 5 of 6, after the checkpoint of step 4): it resumes drawing
  # from the fold's probabilities, to the same records and parameters.
  train.train_and_evaluate(config, tmp_path / "resumed", datasets, stop_at_step=5)
  resumed = train.train_and_evaluate(config, tmp_path / "resumed", datasets).metrics
  assert resumed["resampling"] == full["resampling"]
  _, params_full = _last_checkpoint(tmp_path / "full", config)
  _, params_resumed = _last_checkpoint(tmp_path / "resumed", config)
  np.testing.assert_allclose(params_resumed, params_full, rtol=1e-6, atol=1e-7)
  # Without the fold the first epoch trains on other faces.
  plain = tiny_config("dbvae", **{"resampling.signal": "error_axis", "num_epochs": 2,
                                  "resampling.last_update_epoch": 1})
  train.train_and_evaluate(plain, tmp_path / "plain", datasets)
  _, params_plain = _last_checkpoint(tmp_path / "plain", plain)
  assert np.abs(params_plain - params_full).max() > 1e-6
  # The fold needs the signal kept after epoch 1.
  with pytest.raises(ValueError, match="heldout_fraction.*needs resampling.last_update_epoch = 1"):
    config_lib.validate_config(tiny_config("dbvae", **{"resampling.signal": "errors",
                                                       "resampling.heldout_fraction": 0.5}), 1)


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
    ("resampling.error_axes", 0, "integer >= 1"),
    ("resampling.momentum", 1.0, r"\[0, 1\)"),
    ("resampling.momentum", -0.1, r"\[0, 1\)"),
    ("resampling.last_update_epoch", 0, "-1 .every epoch. or an epoch >= 1"),
    ("resampling.last_update_epoch", -2, "-1 .every epoch. or an epoch >= 1"),
    ("resampling.heldout_fraction", 1.0, r"\[0, 1\)"),
    ("resampling.heldout_fraction", 0.3, "needs a signal that reads the classifier's errors"),
])
def test_bad_signal_settings_are_refused_by_field(field, value, message):
  config = tiny_config("dbvae", **{"resampling.signal": "latent_pca+errors", field: value})
  with pytest.raises(ValueError, match=f"config.{field}.*{message}"):
    config_lib.validate_config(config, 1)


def test_cnn_refuses_latent_signals():
  config = tiny_config("cnn", **{"resampling.signal": "latent_pca"})
  with pytest.raises(ValueError, match="no latent space"):
    config_lib.validate_config(config, 1)


def test_a_dbvae_trains_with_the_shifted_error_axis(tmp_path):
  config = tiny_config("dbvae", **{"resampling.signal": "shift_error_axis",
                                   "resampling.error_kind": "loss"})
  metrics = train.train_and_evaluate(config, tmp_path).metrics
  first, second = metrics["resampling"]
  assert first["ess_fraction"] == pytest.approx(1.0)  # epoch 0: uniform
  assert second["ess_fraction"] < 1.0  # the shifted errors move the mass
