"""Tests of the deterministic half-face / half-non-face batcher."""

import numpy as np
import pytest

from jaxface import data
from jaxface.data import Batcher, DataError, FaceData


def _dataset(n_faces=50, n_non=30, size=16):
  """Image i is filled with value i % 256 in channel 0 and i // 256 in channel 1."""
  n = n_faces + n_non
  images = np.zeros((n, size, size, 3), np.uint8)
  images[..., 0] = (np.arange(n) % 256)[:, None, None]
  images[..., 1] = (np.arange(n) // 256)[:, None, None]
  labels = np.array([1] * n_faces + [0] * n_non)
  rng = np.random.default_rng(0)
  perm = rng.permutation(n)  # Faces and non-faces interleaved.
  return FaceData(images[perm], labels[perm], np.full(n, ""))


def _ids(images):
  """Dataset-order ids encoded in the pixel values (before the permutation)."""
  px = np.rint(images[:, 0, 0] * 255).astype(int)
  return px[:, 0] + 256 * px[:, 1]


def _images(batch):
  """A batch's faces then its non-faces, (B, H, W, 3)."""
  return np.concatenate([batch.faces, batch.non_faces])


def test_batch_shapes_types_and_half_half():
  d = _dataset()
  b = Batcher(d, batch_size=8, seed=0)
  assert b.steps_per_epoch == 50 // 4
  batch = b.batch(0, 0)
  assert isinstance(batch, data.Batch)
  for half in batch:
    assert half.shape == (4, 16, 16, 3) and half.dtype == np.float32
    assert 0.0 <= half.min() and half.max() <= 1.0
  idx = b.batch_indices(0, 0)
  np.testing.assert_array_equal(d.labels[idx], [1, 1, 1, 1, 0, 0, 0, 0])
  np.testing.assert_allclose(batch.faces, d.images[idx[:4]] / 255.0, atol=1e-6)
  np.testing.assert_allclose(batch.non_faces, d.images[idx[4:]] / 255.0, atol=1e-6)
  # Both halves are views of one batch buffer (two half-size buffers page-fault at batch 256).
  assert batch.faces.base is not None and batch.faces.base is batch.non_faces.base


def test_deterministic_and_resumable():
  d = _dataset()
  a, b = Batcher(d, 8, seed=3), Batcher(d, 8, seed=3)
  b.batch(5, 2)  # Other calls in between change nothing.
  for epoch, step in ((0, 0), (1, 4), (7, 11)):
    np.testing.assert_array_equal(_images(a.batch(epoch, step)), _images(b.batch(epoch, step)))
  for half in (0, 1):  # faces and non-faces each change with the step, epoch and seed
    assert not np.array_equal(a.batch(0, 0)[half], a.batch(0, 1)[half])
    assert not np.array_equal(a.batch(0, 0)[half], a.batch(1, 0)[half])
    assert not np.array_equal(a.batch(0, 0)[half], Batcher(d, 8, seed=4).batch(0, 0)[half])
  # Restoring the probabilities reproduces the batches of an interrupted epoch.
  p = np.linspace(1, 2, d.num_faces)
  a.set_face_probabilities(p)
  full = [_images(x) for x in a.epoch_batches(2)]
  resumed = Batcher(d, 8, seed=3)
  resumed.set_face_probabilities(a.face_probabilities)
  tail = [_images(x) for x in resumed.epoch_batches(2, start_step=5)]
  assert len(full) == a.steps_per_epoch and len(tail) == a.steps_per_epoch - 5
  for x, y in zip(full[5:], tail):
    np.testing.assert_array_equal(x, y)


def test_epoch_batches_match_batch_with_and_without_prefetch():
  d = _dataset()
  b = Batcher(d, 4, seed=1, steps_per_epoch=6)
  expected = [_images(b.batch(3, s)) for s in range(6)]
  for prefetch in (0, 1, 3):
    got = [_images(x) for x in b.epoch_batches(3, prefetch=prefetch)]
    assert len(got) == 6
    for x, y in zip(got, expected):
      np.testing.assert_array_equal(x, y)
  # Stopping early does not hang the prefetch thread.
  for i, _ in enumerate(b.epoch_batches(0, prefetch=1)):
    if i == 1:
      break


def test_probabilities_snapshot_per_epoch():
  d = _dataset()
  b = Batcher(d, 4, seed=1, steps_per_epoch=4)
  it = b.epoch_batches(0, prefetch=2)
  first = next(it).faces
  b.set_face_probabilities(np.eye(d.num_faces)[0])
  rest = [x.faces for x in it]
  fresh = Batcher(d, 4, seed=1, steps_per_epoch=4)
  np.testing.assert_array_equal(first, fresh.batch(0, 0).faces)
  for s, x in enumerate(rest, start=1):
    np.testing.assert_array_equal(x, fresh.batch(0, s).faces)


def test_probability_weighting():
  d = _dataset()
  faces = d.face_indices()
  b = Batcher(d, 20, seed=0, steps_per_epoch=12)
  p = np.ones(len(faces))
  p[7] = 200.0
  p[:3] = 0.0
  b.set_face_probabilities(p)
  np.testing.assert_allclose(b.face_probabilities.sum(), 1.0)
  drawn = np.concatenate([b.batch_indices(0, s)[:10] for s in range(b.steps_per_epoch)])
  values, counts = np.unique(drawn, return_counts=True)
  assert values[np.argmax(counts)] == faces[7]
  assert counts.max() > 0.5 * len(drawn)
  assert not np.isin(faces[:3], drawn).any()
  # Non-faces stay uniform and are never faces.
  non = np.concatenate([b.batch_indices(e, s)[10:] for e in range(5) for s in range(12)])
  assert (d.labels[non] == 0).all() and len(np.unique(non)) == d.num_non_faces
  b.set_face_probabilities(None)
  np.testing.assert_allclose(b.face_probabilities, 1 / len(faces))


@pytest.mark.parametrize("p,match", [
    (np.ones(3), r"shape \(50,\)"),
    (np.r_[np.ones(49), np.nan], "NaN"),
    (np.r_[np.ones(49), np.inf], "NaN or infinite"),
    (np.r_[np.ones(49), -1.0], "negative"),
    (np.zeros(50), "all zero"),
])
def test_bad_probabilities(p, match):
  b = Batcher(_dataset(), 4, seed=0)
  with pytest.raises(DataError, match=match):
    b.set_face_probabilities(p)


def test_batches_do_not_depend_on_the_device_count():
  d = _dataset()
  one = Batcher(d, 12, seed=0)
  three = Batcher(d, 12, seed=0, num_devices=3)
  np.testing.assert_array_equal(three.batch_indices(2, 1), one.batch_indices(2, 1))
  for got, want in zip(three.batch(2, 1), one.batch(2, 1)):
    np.testing.assert_array_equal(got, want)
  ids = _ids(_images(three.batch(2, 1)))
  np.testing.assert_array_equal(ids[:6] < 50, True)  # _dataset's faces are ids 0..49
  np.testing.assert_array_equal(ids[6:] >= 50, True)


@pytest.mark.parametrize("kwargs,match", [
    ({"batch_size": 7}, "even"),
    ({"batch_size": 0}, "even"),
    ({"batch_size": 6, "num_devices": 4}, "divisible by num_devices 4"),
    ({"batch_size": 6, "num_devices": 2}, "multiple of 4"),
    ({"batch_size": 4, "num_devices": 0}, "num_devices"),
    ({"batch_size": 4, "steps_per_epoch": 0}, "steps_per_epoch"),
    ({"batch_size": 4, "seed": -1}, "seed"),
])
def test_bad_batch_arguments(kwargs, match):
  kwargs = {"seed": 0, **kwargs}
  with pytest.raises(DataError, match=match):
    Batcher(_dataset(), **kwargs)


def test_needs_faces_and_non_faces():
  d = _dataset()
  with pytest.raises(DataError, match="no non-faces"):
    Batcher(d.subset(d.face_indices()), 4, seed=0)
  with pytest.raises(DataError, match="no faces"):
    Batcher(d.subset(d.non_face_indices()), 4, seed=0)
  b = Batcher(d, 4, seed=0)
  with pytest.raises(DataError, match="step"):
    b.batch(0, b.steps_per_epoch)


def test_planted_data_batches():
  d = data.make_planted_bias(40, 40, seed=0, image_size=32)
  b = Batcher(d, 8, seed=0)
  batch = next(b.epoch_batches(0))
  assert batch.faces.shape == batch.non_faces.shape == (4, 32, 32, 3)
  idx = b.batch_indices(0, 0)
  assert (d.labels[idx[:4]] == 1).all() and (d.labels[idx[4:]] == 0).all()
