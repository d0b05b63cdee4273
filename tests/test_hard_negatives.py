"""Hard negatives by bootstrapping: the windows mined, the checks of the settings, the rounds
of a run and their resumption."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from helpers import shared_data_dir, tiny_config
from PIL import Image

from jaxface import checkpoints, data, detect, hard_negatives, models, train
from jaxface import config as config_lib
from jaxface.data import DataError


def _photos(folder, n: int, bad: bool = False):
  """``n`` small photos in ``folder`` (``photo<i>.png``), and with ``bad`` an unreadable one."""
  folder.mkdir(parents=True, exist_ok=True)
  for i in range(n):
    pixels = np.random.default_rng(i).integers(0, 256, (64, 80 + 8 * (i % 3), 3), np.uint8)
    Image.fromarray(pixels).save(folder / f"photo{i}.png")
  if bad:
    (folder / "zz_broken.jpg").write_bytes(b"not a jpeg")
  return folder


def _config(tmp_path, **fields):
  config = tiny_config("cnn", num_epochs=1, steps_per_epoch=3, checkpoint_every_steps=2)
  config.whole_images.batch_size = 64
  config.hard_negatives.photos = str(_photos(tmp_path / "mine", 4, bad=True))
  config.hard_negatives.rounds = 2
  config.hard_negatives.windows_per_round = 6
  config.hard_negatives.windows_per_photo = 2
  for key, value in fields.items():
    config.hard_negatives[key] = value
  return config


def _scan(boxes, probs) -> detect.ScanResult:
  boxes, probs = np.asarray(boxes, np.int32), np.asarray(probs, np.float32)
  best = int(np.argmax(probs))
  return detect.ScanResult(boxes, probs, boxes[best], float(probs[best]), True, 0.5)


def test_top_windows_per_photo_after_nms_ties_by_photo_and_rank_and_exclusions():
  scans = {
      "a/p0.png": _scan([(0, 0, 32), (2, 0, 32), (40, 0, 32), (80, 0, 32)], [0.9, 0.95, 0.7, 0.7]),
      "a/p1.png": _scan([(0, 0, 32), (40, 0, 32)], [0.7, 0.8]),
  }
  top = hard_negatives._top_windows(scans, set(), per_photo=2, n=3, nms_iou=0.3)
  # p0: (2, 0) suppresses (0, 0); then (40, 0) before (80, 0) (equal scores: by rank).
  assert [(k, b.tolist(), p) for k, b, p in top] == [
      ("a/p0.png", [2, 0, 32], pytest.approx(0.95)), ("a/p1.png", [40, 0, 32], pytest.approx(0.8)),
      ("a/p0.png", [40, 0, 32], pytest.approx(0.7))]  # ties with p1's 0.7: the first photo
  again = hard_negatives._top_windows(scans, {("p0.png", 2, 0, 32)}, per_photo=2, n=2,
                                      nms_iou=0.3)
  assert [b.tolist() for _, b, _ in again] == [[0, 0, 32], [40, 0, 32]]


def test_mined_crops_are_the_photos_windows(tmp_path):
  config = _config(tmp_path)
  variables = models.init_variables(jax.random.key(0), latent_dim=0, n_filters=4, image_size=32)
  photos = hard_negatives.mining_photos(config)
  mined = hard_negatives.mine_round(variables, photos, config)
  assert mined["crops"].shape == (6, 32, 32, 3) and mined["crops"].dtype == np.uint8
  assert list(mined["error_files"]) == [str(tmp_path / "mine" / "zz_broken.jpg")]
  assert int(mined["n_photos_scanned"]) == 4
  assert (np.diff(mined["scores"]) <= 0).all()
  assert max(np.unique(mined["photos"], return_counts=True)[1]) <= 2
  name, box = mined["photos"][0], mined["boxes"][0]
  photo = detect.read_photo(tmp_path / "mine" / name)
  np.testing.assert_array_equal(mined["crops"][0], hard_negatives.window_crop(photo, box, 32))
  path = hard_negatives.round_path(tmp_path / "run", 1)
  hard_negatives.save_round(path, mined)
  loaded = hard_negatives.load_round(path)
  assert set(loaded) == set(mined)
  for key in mined:
    np.testing.assert_array_equal(loaded[key], mined[key])
  non_faces = hard_negatives.as_non_faces(loaded, data.FaceData(
      np.zeros((1, 32, 32, 3), np.uint8), np.ones(1), np.array(["LF"]),
      attributes={"path": np.array(["a.png"]), "age": np.array([30])}))
  assert non_faces.num_non_faces == 6 and non_faces.attributes["path"][0] == f"{name}#" + \
      ",".join(str(v) for v in box)


@pytest.mark.parametrize("field, value, message", [
    ("rounds", -1, r"config.hard_negatives.rounds = -1: must be an integer >= 0"),
    ("windows_per_round", 0, r"config.hard_negatives.windows_per_round = 0"),
    ("epochs_per_round", 0, r"config.hard_negatives.epochs_per_round = 0"),
    ("photos", "", r"config.hard_negatives.photos = '': a folder of non-face photos"),
])
def test_bad_settings_fail_naming_the_field(tmp_path, field, value, message):
  config = _config(tmp_path, **{field: value})
  with pytest.raises(ValueError, match=message):
    config_lib.validate_config(config, 1)


def test_mining_photos_leave_out_the_validation_photos_and_refuse_too_few_or_test_ones(tmp_path):
  config = _config(tmp_path, windows_per_round=8)
  assert len(hard_negatives.mining_photos(config)) == 5  # the unreadable file is listed
  config.whole_images.val_non_face_photos = config.hard_negatives.photos
  config.whole_images.val_non_face_rule = "index % 5 == 0"  # photo0 is a validation photo
  photos = hard_negatives.mining_photos(config)
  assert [p.name for p in photos] == ["photo1.png", "photo2.png", "photo3.png", "zz_broken.jpg"]
  config.hard_negatives.windows_per_round = 9  # 5 photos of 2 windows are needed, 4 are left
  with pytest.raises(DataError, match=r"config.hard_negatives.photos: .* has 4 photo\(s\) to "
                     r"mine \(1 validation photo\(s\) left out\), fewer than the 5 needed"):
    hard_negatives.mining_photos(config)
  config.hard_negatives.windows_per_round = 2
  config.whole_images.non_face_photos = config.hard_negatives.photos
  with pytest.raises(DataError, match=r"config.hard_negatives.photos: 4 photo\(s\) are also "
                     r"test photos of config.whole_images.non_face_photos"):
    hard_negatives.mining_photos(config)
  config.hard_negatives.photos = str(tmp_path / "nowhere")
  with pytest.raises(DataError, match=r"config.hard_negatives.photos: .*nowhere: no such folder"):
    hard_negatives.mining_photos(config)


def test_without_rounds_nothing_changes():
  config = config_lib.get_base_config()
  assert hard_negatives.total_epochs(config) == config.num_epochs
  assert hard_negatives.rounds_due(config, 10) == 0
  key = jax.random.key(0)
  identity = checkpoints.run_identity(config, 5, 10, key)
  del config.hard_negatives  # a config written before the field existed
  assert checkpoints.run_identity(config, 5, 10, key) == identity
  assert "hard_negatives" not in identity


def test_rounds_schedule_and_identity(tmp_path):
  config = _config(tmp_path, epochs_per_round=2)
  assert hard_negatives.total_epochs(config) == 1 + 2 * 2
  assert [hard_negatives.rounds_due(config, e) for e in range(6)] == [0, 1, 1, 2, 2, 2]
  assert hard_negatives.round_start(config, 2) == 3
  config.lr_schedule = "cosine"
  identity = checkpoints.run_identity(config, 3, 10, jax.random.key(0))
  assert identity["schedule_steps"] == 3 * 5
  assert identity["hard_negatives"] == {"windows_per_round": 6, "windows_per_photo": 2,
                                        "epochs_per_round": 2}


TRAIN_PHOTOS = shared_data_dir() / "nonface-photos" / "train_images"
TEST_PHOTOS = shared_data_dir() / "nonface-photos" / "images"


@pytest.mark.skipif(not TRAIN_PHOTOS.is_dir() or not TEST_PHOTOS.is_dir(),
                    reason="nonface-photos data not available")
def test_mining_the_training_photos_leaves_the_validation_quarter_out(tmp_path):
  config = _config(tmp_path)
  config.hard_negatives.photos = str(TRAIN_PHOTOS)
  config.whole_images.val_non_face_photos = str(TRAIN_PHOTOS)
  config.whole_images.non_face_photos = str(TEST_PHOTOS)
  photos = hard_negatives.mining_photos(config)
  every = detect.photo_files(TRAIN_PHOTOS)
  assert photos == [p for i, p in enumerate(every) if i % 4]
  variables = models.init_variables(jax.random.key(0), latent_dim=0, n_filters=4, image_size=32)
  mined = hard_negatives.mine_round(variables, photos[:3], config)
  assert mined["crops"].shape == (6, 32, 32, 3) and not len(mined["error_files"])
  assert set(mined["photos"].tolist()) <= {p.name for p in photos[:3]}


def _flat(variables) -> np.ndarray:
  return np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree.leaves(variables)])


def test_rounds_train_on_mined_crops_and_a_run_resumed_at_any_point_ends_the_same(
    tmp_path, monkeypatch):
  config = _config(tmp_path)
  datasets = data.load_datasets(config.data)
  full = train.train_and_evaluate(config, tmp_path / "full", datasets)
  assert full.metrics["steps"] == 3 * 3
  rounds = full.metrics["hard_negatives"]
  assert [r["round"] for r in rounds] == [1, 2] and [r["first_epoch"] for r in rounds] == [1, 2]
  assert all(r["n_windows"] == 6 and r["n_photos_scanned"] == 4 for r in rounds)
  assert list(rounds[0]["errors"]) == [str(tmp_path / "mine" / "zz_broken.jpg")]
  first = hard_negatives.load_round(hard_negatives.round_path(tmp_path / "full", 1))
  second = hard_negatives.load_round(hard_negatives.round_path(tmp_path / "full", 2))
  taken = set(zip(first["photos"].tolist(), map(tuple, first["boxes"].tolist())))
  assert not taken & set(zip(second["photos"].tolist(), map(tuple, second["boxes"].tolist())))
  assert len(full.metrics["epochs"]) == 3
  saved = json.loads((tmp_path / "full" / "metrics.json").read_text())
  assert saved["hard_negatives"] == rounds

  # A run of the main epochs only (as written before hard negatives existed), resumed with
  # the rounds, killed at round 1's first step (after its crops were written) and resumed:
  # round 1's crops are read again, round 2's mined, and it ends as the uninterrupted run.
  staged = tmp_path / "staged"
  config.hard_negatives.rounds = 0
  assert "hard_negatives" not in train.train_and_evaluate(config, staged, datasets).metrics
  config.hard_negatives.rounds = 2
  assert train.train_and_evaluate(config, staged, datasets, stop_at_step=4).metrics == {
      "stopped_at_step": 4}
  assert hard_negatives.round_path(staged, 1).exists()
  mined_rounds = []
  mine = hard_negatives.mine_round
  monkeypatch.setattr(hard_negatives, "mine_round",
                      lambda *a, **k: mined_rounds.append(1) or mine(*a, **k))
  resumed = train.train_and_evaluate(config, staged, datasets)
  assert len(mined_rounds) == 1  # round 2 only
  assert resumed.metrics["hard_negatives"] == rounds
  assert resumed.metrics["steps"] == full.metrics["steps"]
  np.testing.assert_allclose(_flat(resumed.variables), _flat(full.variables), rtol=1e-6,
                             atol=1e-7)
  assert resumed.metrics["eval"]["val_accuracy"] == full.metrics["eval"]["val_accuracy"]

  # Without round 1's crops, a run past its start cannot resume exactly: it says so.
  hard_negatives.round_path(staged, 1).unlink()
  config.hard_negatives.rounds = 3
  with pytest.raises(DataError, match=r"round1.npz is missing: round 1 of "
                     r"config.hard_negatives was mined at the start of epoch 1"):
    train.train_and_evaluate(config, staged, datasets)
