"""Tests of jaxface.augment: per-sample zoom / shift / flip / colour augmentation on device."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxface import augment


def _config(**overrides):
  """The default augmentation, with faces and non-faces zoomed alike unless overridden."""
  config = augment.default_augment_config()
  config.non_face_scale_min = 0.0
  config.update(overrides)
  return config


def _degenerate(**overrides):
  """A config whose every range is a single no-op value."""
  fields = dict(scale_min=1.0, scale_max=1.0, max_translate=0.0, flip=False, brightness=0.0,
                contrast=0.0, saturation=0.0)
  fields.update(overrides)
  return _config(**fields)


def _images(n=8, size=32, seed=0):
  return jax.random.uniform(jax.random.key(seed), (n, size, size, 3))


def _square(side, size=64):
  """(size, size, 3) black image with a white centred square of the given side."""
  image = np.zeros((size, size, 3), np.float32)
  lo = (size - side) // 2
  image[lo:lo + side, lo:lo + side] = 1.0
  return image


def test_deterministic_per_key_and_shape_and_range():
  x = _images()
  config = _config(brightness=0.5, contrast=1.0, saturation=1.0)
  a = augment.augment_batch(jax.random.key(3), x, None, config)
  b = augment.augment_batch(jax.random.key(3), x, None, config)
  c = augment.augment_batch(jax.random.key(4), x, None, config)
  assert a.shape == x.shape and a.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert np.abs(np.asarray(a) - np.asarray(c)).max() > 0.05
  assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0


def test_row_result_depends_only_on_its_key():
  x = _images(6)
  config = _config()
  keys = jax.random.split(jax.random.key(0), 6)
  whole = augment.augment_batch(keys, x, None, config)
  alone = augment.augment_batch(keys[2:3], x[2:3], None, config)
  np.testing.assert_allclose(np.asarray(whole[2]), np.asarray(alone[0]), atol=1e-6)
  # A single key is split into the per-row keys.
  np.testing.assert_allclose(np.asarray(augment.augment_batch(jax.random.key(0), x, None, config)),
                             np.asarray(whole), atol=1e-6)


def test_disabled_returns_the_images():
  x = _images()
  out = augment.augment_batch(jax.random.key(0), x, None, _config(enabled=False))
  assert out is x


@pytest.mark.parametrize("fill", ["reflect", "background"])
def test_degenerate_ranges_are_the_identity(fill):
  x = _images()
  background = _images(seed=9) if fill == "background" else None
  out = augment.augment_batch(jax.random.key(0), x, background, _degenerate(fill=fill))
  np.testing.assert_allclose(np.asarray(out), np.asarray(x), atol=1e-5)


def test_flip_is_left_right():
  x = _images(32)
  out = np.asarray(augment.augment_batch(jax.random.key(1), x, None, _degenerate(flip=True)))
  x = np.asarray(x)
  same = np.all(np.isclose(out, x, atol=1e-5), axis=(1, 2, 3))
  flipped = np.all(np.isclose(out, x[:, :, ::-1], atol=1e-5), axis=(1, 2, 3))
  assert np.all(same | flipped)
  assert same.any() and flipped.any()


def test_brightness_shift_is_one_constant_per_image():
  x = 0.25 + 0.5 * _images(8)  # no clipping for shifts up to 0.25
  out = augment.augment_batch(jax.random.key(2), x, None, _degenerate(brightness=0.2))
  delta = np.asarray(out - x)
  per_image = delta.reshape(8, -1)
  np.testing.assert_allclose(per_image, per_image[:, :1] * np.ones_like(per_image), atol=1e-5)
  assert np.abs(per_image[:, 0]).max() > 0.01 and np.abs(per_image[:, 0]).max() <= 0.2


@pytest.mark.parametrize("scale,expected_side", [(2.0, 8), (0.5, 32), (1.0, 16)])
def test_scale_changes_the_size_of_a_square(scale, expected_side):
  x = jnp.asarray(_square(16))[None]
  config = _degenerate(scale_min=scale, scale_max=scale, fill="background")
  out = np.asarray(augment.augment_batch(jax.random.key(0), x, jnp.zeros_like(x), config))
  area = float(out[0, ..., 0].sum())  # bilinear edges keep the total intensity of the region
  assert abs(area - expected_side ** 2) <= 2 * expected_side + 2
  # The centre stays white.
  assert out[0, 31:33, 31:33].min() > 0.99


def test_zoom_out_with_reflect_fills_from_the_image():
  x = jnp.full((1, 32, 32, 3), 0.7)
  out = augment.augment_batch(jax.random.key(0), x, None, _degenerate(scale_min=1.8,
                                                                      scale_max=1.8))
  np.testing.assert_allclose(np.asarray(out), 0.7, atol=1e-5)


def test_background_fill_uses_another_non_face_of_the_batch():
  # Faces are 0.9 everywhere; each non-face is its own constant, so a border pixel names the
  # image it came from.
  values = np.array([0.9, 0.9, 0.9, 0.1, 0.2, 0.3, 0.4, 0.5], np.float32)
  labels = jnp.array([1, 1, 1, 0, 0, 0, 0, 0])
  x = jnp.asarray(np.broadcast_to(values[:, None, None, None], (8, 32, 32, 3)).copy())
  background = augment.background_from_batch(jax.random.key(5), x, labels)
  config = _degenerate(scale_min=2.0, scale_max=2.0, fill="background")
  out = np.asarray(augment.augment_batch(jax.random.key(0), x, background, config))
  corner = out[:, 0, 0, 0]
  centre = out[:, 16, 16, 0]
  np.testing.assert_allclose(centre, values, atol=1e-5)
  for row in range(8):
    assert np.isclose(corner[row], values[3:], atol=1e-5).any()  # a non-face's value
    if labels[row] == 0:
      assert not np.isclose(corner[row], values[row], atol=1e-5)  # never its own
  # Different rows draw different backgrounds.
  assert len(np.unique(np.round(corner, 4))) > 1


def test_background_from_batch_single_non_face():
  x = _images(4)
  labels = jnp.array([1, 1, 1, 0])
  background = augment.background_from_batch(jax.random.key(0), x, labels)
  np.testing.assert_array_equal(np.asarray(background), np.repeat(np.asarray(x[3:]), 4, 0))


def test_jit_and_vmap_match_eager():
  x = _images(4)
  config = _config(fill="reflect")
  eager = augment.augment_batch(jax.random.key(0), x, None, config)
  jitted = jax.jit(lambda k, im: augment.augment_batch(k, im, None, config))(jax.random.key(0), x)
  np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), atol=1e-5)
  stacked = jnp.stack([x, x[::-1]])
  keys = jax.random.split(jax.random.key(1), 2)
  mapped = jax.vmap(lambda k, im: augment.augment_batch(k, im, None, config))(keys, stacked)
  for i in range(2):
    np.testing.assert_allclose(np.asarray(mapped[i]),
                               np.asarray(augment.augment_batch(keys[i], stacked[i], None, config)),
                               atol=1e-5)


@pytest.mark.parametrize("non_face_scale_min", [0.0, 0.5])
def test_step_augmentation_does_not_depend_on_the_shard_count(non_face_scale_min):
  batch = 8
  x = _images(batch)
  labels = jnp.array([1, 1, 1, 1, 0, 0, 0, 0])
  # The 2-shard layout of the same one-shard batch: shard s = faces[s], non-faces[s].
  order = np.array([0, 1, 4, 5, 2, 3, 6, 7])
  config = _config(fill="background", non_face_scale_min=non_face_scale_min)
  one = augment.augment_for_step(jax.random.key(0), 7, x, labels, config, num_shards=1)
  two = augment.augment_for_step(jax.random.key(0), 7, x[order], labels[order], config,
                                 num_shards=2)
  np.testing.assert_allclose(np.asarray(two), np.asarray(one)[order], atol=1e-5)
  other_step = augment.augment_for_step(jax.random.key(0), 8, x, labels, config)
  assert np.abs(np.asarray(other_step) - np.asarray(one)).max() > 0.05


def test_non_face_scale_min_zooms_in_on_the_non_faces_only():
  labels = jnp.array([1] * 8 + [0] * 8)
  x = jnp.asarray(np.stack([_square(16)] * 16))
  config = _degenerate(non_face_scale_min=0.5)  # faces at scale 1, non-faces in [0.5, 1]
  out = np.asarray(augment.augment_batch(jax.random.key(0), x, None, config, labels))
  np.testing.assert_allclose(out[:8], np.asarray(x[:8]), atol=1e-5)  # faces: the identity
  area = out[8:, ..., 0].sum(axis=(1, 2))
  # A zoom of s shows the square at side 16 / s: area in [256, 1024], mean about 550.
  assert area.min() >= 256 - 2 * 16 and area.max() <= 1024 + 2 * 32
  assert area.mean() > 400


def test_non_face_scale_min_keeps_the_faces_draws_and_defaults_to_scale_min():
  x = _images(8)
  labels = jnp.array([1, 1, 1, 1, 0, 0, 0, 0])
  plain = np.asarray(augment.augment_batch(jax.random.key(2), x, None, _config()))
  for at_or_above in (0.85, 0.9):  # no wider than the faces' range: no labels needed
    same = augment.augment_batch(jax.random.key(2), x, None,
                                 _config(non_face_scale_min=at_or_above))
    np.testing.assert_array_equal(np.asarray(same), plain)
  wider = np.asarray(augment.augment_batch(jax.random.key(2), x, None,
                                           _config(non_face_scale_min=0.4), labels))
  np.testing.assert_array_equal(wider[:4], plain[:4])
  assert np.abs(wider[4:] - plain[4:]).max() > 0.05


def test_non_face_scale_min_needs_the_labels():
  with pytest.raises(ValueError, match="labels"):
    augment.augment_batch(jax.random.key(0), _images(2), None, _config(non_face_scale_min=0.5))


@pytest.mark.parametrize("field,value", [("fill", "zeros"), ("scale_min", 0.0),
                                         ("contrast", 1.5), ("brightness", -0.1),
                                         ("non_face_scale_min", -0.5),
                                         ("exposure_min", 0.0), ("exposure_max", 0.5)])
def test_bad_config_names_the_field(field, value):
  with pytest.raises(ValueError, match=field):
    augment.augment_batch(jax.random.key(0), _images(2), None, _config(**{field: value}))


def test_background_fill_needs_a_background():
  with pytest.raises(ValueError, match="background"):
    augment.augment_batch(jax.random.key(0), _images(2), None, _config(fill="background"))


def test_exposure_multiplies_each_image_by_one_factor_in_its_range():
  x = _images(16) * 0.5  # below 1 / exposure_max: nothing clips
  out = augment.augment_batch(jax.random.key(3), x, None,
                              _degenerate(exposure_min=0.4, exposure_max=1.5))
  ratio = np.asarray(out) / np.asarray(x)
  per_image = ratio.reshape(16, -1)
  np.testing.assert_allclose(per_image, np.broadcast_to(per_image[:, :1], per_image.shape),
                             rtol=1e-4)  # one factor per image
  factors = per_image[:, 0]
  assert np.all((factors >= 0.4 - 1e-6) & (factors <= 1.5 + 1e-6))
  assert np.ptp(factors) > 0.2  # the images drew different factors


def test_exposure_leaves_the_other_draws_unchanged():
  x = _images(8)
  key = jax.random.key(5)
  plain = np.asarray(augment.augment_batch(key, x, None, _config()))
  darker = np.asarray(augment.augment_batch(key, x, None,
                                            _config(exposure_min=0.5, exposure_max=0.5)))
  # Without clipping, a fixed factor 0.5 halves the unchanged augmentation's pre-clip output.
  unclipped = plain < 1.0 - 1e-6
  np.testing.assert_allclose(darker[unclipped], 0.5 * plain[unclipped], rtol=1e-4, atol=1e-6)


def test_config_without_exposure_fields_is_accepted():
  config = _config()
  del config["exposure_min"]
  del config["exposure_max"]
  out = augment.augment_batch(jax.random.key(0), _images(2), None, config)
  np.testing.assert_array_equal(
      np.asarray(out), np.asarray(augment.augment_batch(jax.random.key(0), _images(2), None,
                                                        _config())))
