"""Non-faces resampled by their own errors: the weights, the batcher's draws and a run's
epochs, checkpoints and resumption."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import last_checkpoint, tiny_config

from jaxface import resampling, train
from jaxface import config as config_lib
from jaxface import data as data_lib
from jaxface.data import DataError


def _reference(face_prob: np.ndarray, top: float, upweight: float):
  """NumPy: the ceil(top * n) highest scores (ties to the lower position) get ``upweight``."""
  k = max(1, int(np.ceil(top * len(face_prob))))
  hard = np.argsort(-face_prob, kind="stable")[:k]
  weights = np.ones(len(face_prob))
  weights[hard] = upweight
  return hard, weights / weights.sum()


@pytest.mark.parametrize("n,top,upweight", [(1, 0.05, 20.0), (37, 0.05, 20.0), (400, 0.2, 3.0),
                                            (10, 1.0, 5.0)])
def test_hard_non_face_weights_match_numpy(n, top, upweight):
  rng = np.random.default_rng(n)
  face_prob = rng.random(n).astype(np.float32)
  face_prob[: n // 4] = face_prob[0]  # ties
  k = resampling.hard_count(n, top)
  hard, p = resampling.hard_non_face_weights(face_prob, k, upweight)
  ref_hard, ref_p = _reference(face_prob, top, upweight)
  assert k == len(ref_hard)
  np.testing.assert_array_equal(np.sort(np.asarray(hard)), np.sort(ref_hard))
  np.testing.assert_allclose(np.asarray(p), ref_p, rtol=1e-6)


@pytest.mark.parametrize("n,top,message", [(0, 0.05, "no non-faces"), (5, 0.0, r"\(0, 1\]"),
                                           (5, 1.5, r"\(0, 1\]")])
def test_hard_count_refuses_bad_input(n, top, message):
  with pytest.raises(ValueError, match=message):
    resampling.hard_count(n, top)


def _planted(n_faces=40, n_non_faces=60):
  config = tiny_config("cnn")
  config.data.n_train_faces = n_faces
  config.data.n_train_non_faces = n_non_faces
  return data_lib.load_datasets(config.data)["train"]


def test_batcher_draws_non_faces_by_their_weights_and_is_unchanged_without():
  train_set = _planted()
  plain = data_lib.Batcher(train_set, 16, seed=3)
  weighted = data_lib.Batcher(train_set, 16, seed=3)
  before = plain.batch_indices(1, 2)
  weighted.set_non_face_probabilities(None)
  np.testing.assert_array_equal(weighted.batch_indices(1, 2), before)
  weights = np.zeros(weighted.num_non_faces)
  weights[[4, 9]] = 1.0  # only these two can be drawn
  weighted.set_non_face_probabilities(weights)
  allowed = set(train_set.non_face_indices()[[4, 9]].tolist())
  drawn = np.concatenate([weighted.batch_indices(0, s)[8:] for s in range(weighted.steps_per_epoch)])
  assert set(drawn.tolist()) == allowed
  np.testing.assert_array_equal(weighted.batch_indices(1, 2)[:8], before[:8])  # faces as before
  np.testing.assert_allclose(weighted.non_face_probabilities[[4, 9]], [0.5, 0.5])
  np.testing.assert_allclose(plain.non_face_probabilities, 1 / plain.num_non_faces)


@pytest.mark.parametrize("make,message", [
    (lambda n: np.ones(3), r"shape \(COUNT,\) \(one per non-face\)"),
    (lambda n: np.r_[np.ones(n - 1), np.nan], "NaN or infinite values, e.g. at non-face LAST"),
    (lambda n: np.r_[np.ones(n - 1), -1.0], "negative values"),
    (lambda n: np.zeros(n), "non-face probabilities are all zero"),
])
def test_batcher_refuses_bad_non_face_weights(make, message):
  batcher = data_lib.Batcher(_planted(), 16, seed=0)
  n = batcher.num_non_faces
  with pytest.raises(DataError, match=message.replace("COUNT", str(n)).replace("LAST", str(n - 1))):
    batcher.set_non_face_probabilities(make(n))


@pytest.mark.parametrize("field,value,message", [
    ("resampling.non_face_upweight", 0.5, ">= 1"),
    ("resampling.non_face_top", 0.0, r"\(0, 1\]"),
    ("resampling.non_face_top", 2.0, r"\(0, 1\]"),
])
def test_bad_non_face_settings_are_refused_by_field(field, value, message):
  config = tiny_config("cnn", **{field: value})
  with pytest.raises(ValueError, match=f"config.{field}.*{message}"):
    config_lib.validate_config(config, 1)


def test_a_run_resamples_its_non_faces_and_resumes_exactly(tmp_path):
  config = tiny_config("cnn", **{"resampling.non_face_upweight": 20.0,
                                 "resampling.non_face_top": 0.1})
  datasets = data_lib.load_datasets(config.data)
  full = train.train_and_evaluate(config, tmp_path / "full", datasets).metrics
  first, second = full["non_face_resampling"]
  assert first == {"epoch": 0, "n_hard": 0}  # uniform before the model has learnt anything
  n_non_faces = len(datasets["train"].non_face_indices())
  k = int(np.ceil(0.1 * n_non_faces))
  assert second["n_hard"] == k
  assert second["mass_hard"] == pytest.approx(20 * k / (20 * k + n_non_faces - k), rel=1e-5)
  plain = train.train_and_evaluate(tiny_config("cnn"), tmp_path / "plain", datasets).metrics
  assert "non_face_resampling" not in plain
  # Epoch 0 draws the same batches as without the setting; epoch 1 other non-faces.
  assert full["epochs"][0] == plain["epochs"][0]
  assert full["epochs"][1]["test"] != plain["epochs"][1]["test"]
  # Killed mid-epoch 1 (after the checkpoint at step 8): the resumed epoch draws the same
  # non-faces, from the positions the checkpoint holds.
  train.train_and_evaluate(config, tmp_path / "resumed", datasets, stop_at_step=10)
  n_faces = len(datasets["train"].face_indices())
  _, _, meta = last_checkpoint(tmp_path / "resumed", config, n_faces)
  assert meta["step_in_epoch"] == 2 and len(meta["history"]["non_face_hard"]) == second["n_hard"]
  resumed = train.train_and_evaluate(config, tmp_path / "resumed", datasets).metrics
  assert resumed["non_face_resampling"] == full["non_face_resampling"]
  params_full, _, _ = last_checkpoint(tmp_path / "full", config, n_faces)
  params_resumed, _, _ = last_checkpoint(tmp_path / "resumed", config, n_faces)
  np.testing.assert_allclose(params_resumed, params_full, rtol=1e-6, atol=1e-7)
