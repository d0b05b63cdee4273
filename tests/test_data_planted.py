"""Tests of the procedural planted-bias data."""

import numpy as np
import pytest

from jaxface import data
from jaxface.data import DataError


@pytest.fixture(scope="module")
def skewed():
  return data.make_planted_bias(400, 300, seed=7)


def test_deterministic_from_seed(skewed):
  again = data.make_planted_bias(400, 300, seed=7)
  np.testing.assert_array_equal(skewed.images, again.images)
  np.testing.assert_array_equal(skewed.groups, again.groups)
  for k, v in skewed.attributes.items():
    np.testing.assert_array_equal(v, again.attributes[k])
  other = data.make_planted_bias(400, 300, seed=8)
  assert not np.array_equal(skewed.images, other.images)


def test_layout_and_types(skewed):
  assert skewed.images.shape == (700, 64, 64, 3) and skewed.images.dtype == np.uint8
  np.testing.assert_array_equal(skewed.labels, [1] * 400 + [0] * 300)
  assert set(skewed.groups[:400]) <= set(data.GROUPS) and set(skewed.groups[400:]) == {""}
  assert set(skewed.attributes) == {"skin", "gender", "accessory", "kind"}
  assert set(skewed.attributes["kind"][400:]) == set(data.NON_FACE_KINDS)
  assert (skewed.attributes["accessory"][400:] == -1).all()
  # Images have content: backgrounds vary, faces are not flat.
  assert skewed.images.reshape(700, -1).std(axis=1).min() > 5


def test_attribute_proportions(skewed):
  faces = skewed.face_indices()
  skin, glasses = skewed.attributes["skin"][faces], skewed.attributes["accessory"][faces]
  assert np.count_nonzero(skin == 1) == 20  # 5% of 400.
  assert np.count_nonzero(glasses == 1) == 40  # 10%.
  assert np.count_nonzero(skewed.attributes["gender"][faces] == 1) == 200
  np.testing.assert_array_equal(np.char.startswith(skewed.groups[faces], "D"), skin == 1)
  heads = skewed.attributes["kind"] == "head"
  assert np.count_nonzero(heads) == 105  # 35% of 300 non-faces.
  assert np.count_nonzero(skewed.attributes["skin"][heads] == 1) == 52  # round(0.5 * 105)


def test_balanced_test_set():
  test = data.make_planted_bias(n_per_group=12, n_non_faces=10, seed=7, accessory_fraction=0.5)
  assert test.num_faces == 48 and test.num_non_faces == 10
  for g in data.GROUPS:
    idx = test.group_indices(g)
    assert len(idx) == 12
    assert np.count_nonzero(test.attributes["accessory"][idx] == 1) == 6
    assert (test.attributes["skin"][idx] == (g[0] == "D")).all()
    assert (test.attributes["gender"][idx] == (g[1] == "F")).all()
  # The balanced stream differs from the skewed one for the same seed.
  skewed = data.make_planted_bias(48, 10, seed=7)
  assert not np.array_equal(skewed.images[48:], test.images[48:])


def test_darker_skin_is_darker():
  d = data.make_planted_bias(n_per_group=20, n_non_faces=0, seed=1, image_size=32)
  centre = d.images[:, 12:20, 12:20].astype(float).mean(axis=(1, 2, 3))
  dark = d.attributes["skin"] == 1
  assert centre[dark].mean() < centre[~dark].mean() - 40


def test_other_sizes_and_bad_arguments():
  assert data.make_planted_bias(4, 4, image_size=32).images.shape == (8, 32, 32, 3)
  assert data.make_planted_bias(2, 0, image_size=128).images.shape == (2, 128, 128, 3)
  assert len(data.make_planted_bias(0, 0)) == 0
  with pytest.raises(DataError, match="multiple of 16"):
    data.make_planted_bias(4, image_size=40)
  with pytest.raises(DataError, match="dark_fraction"):
    data.make_planted_bias(4, dark_fraction=1.5)
  with pytest.raises(DataError, match="n_faces"):
    data.make_planted_bias(-1)
