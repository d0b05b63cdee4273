"""Jittable, per-sample data augmentation of image batches on the device.

:func:`augment_batch` resamples every image of a batch through its own random axis-aligned
affine map (zoom, translation, horizontal flip; bilinear) and then jitters its brightness,
contrast, saturation and exposure. Faces and non-faces are treated alike, so no augmentation
artefact (the zoom, the fill around a zoomed-out image, a colour shift) is a face cue.

Zoom. ``scale`` is the side of the output's field of view over the input's: 1 keeps the
framing, 1.5 zooms out (the content shrinks to 1 / 1.5 of the side and pixels from outside
the chip fill the border), 0.85 zooms in. A face chip framed at 0.8 times the face box (brows
to chin, like the UTKFace chips) shows a framing of ``0.8 * scale`` after the zoom, so the
default range (0.85, 1.9) covers framings from about 0.7 to 1.5 face boxes (the Pilot
Parliaments Benchmark crops are at 0.8 and 1.2). The scale is drawn log-uniformly.

Matched to the whole-photo scan (:mod:`jaxface.detect`, default :class:`ScanOptions`), two
defaults follow from the scan's geometry rather than from the chips:

* Shift. Windows step by a quarter of their side, so a face lies up to an eighth of a window
  side off the nearest window's centre along each axis. ``max_translate`` is a fraction of the
  chip, and a window framing the face at the zoom range's geometric middle (1.27) shows a shift
  of ``max_translate / 1.27`` of its side, so the default 0.16 covers the eighth.
* Non-faces zoomed in further. A face zoomed in much below 0.85 is no longer a whole face, but
  a non-face zoomed in is still a non-face, and the scan sees non-face windows smaller than any
  training crop (its smallest window is a fifth of the photo's shorter side; utkface-bias'
  non-face crops take 40-100% of it). ``non_face_scale_min`` (below ``scale_min``) widens the
  non-faces' range to ``[non_face_scale_min, scale_max]``, drawn log-uniformly too (at or
  above ``scale_min`` it changes nothing): the default 0.5 takes the 40% crops down to the
  scan's fifth. The faces' draws are unchanged by it, bit for bit; 0 draws the non-faces' zoom
  from ``[scale_min, scale_max]`` too.

What these two did on whole photos and on the crops: experiments/results/detect_whole_images.md.

Fill. Zooming out needs pixels the chip does not have. ``fill='reflect'`` mirrors the chip at
its edges (edge pixel repeated); ``fill='background'`` puts the image in front of a
background image of the same size (e.g. another non-face of the batch,
:func:`background_from_batch`), blending bilinearly at the chip's border.

Keys. Every image draws its transform from its own key. With a single key,
``jax.random.split(key, B)`` gives row i its key, so the result is deterministic and depends
only on the key and the row. A trainer should derive the step's augmentation key as
``fold_in(fold_in(base_key, step), AUG_STREAM)`` (a stream apart from the model's noise) and,
for runs that take the same steps on any number of devices, pass the per-row keys of
:func:`layout_keys`, which follow each row's place in the one-shard batch rather than its
place in the sharded layout.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

Array = jax.Array

AUG_STREAM = 0xA06  # fold_in constant of the augmentation key stream
FILLS = ("reflect", "background")
_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 grey


def default_augment_config() -> ml_collections.ConfigDict:
  """The augmentation fields and their defaults.

  Fields:
    enabled: False returns the images unchanged.
    scale_min, scale_max: range of the zoom factor (field-of-view side over the input's side,
      > 1 zooms out), drawn log-uniformly; see the module docstring.
    max_translate: largest shift of the image centre along each axis, as a fraction of the
      image side, drawn uniformly in [-max_translate, max_translate] (see the module
      docstring for the default).
    flip: flip each image left-right with probability 1/2.
    brightness: largest additive brightness change (uniform in [-brightness, brightness]).
    contrast: contrast factor drawn uniformly in [1 - contrast, 1 + contrast] around the
      image's mean grey level.
    saturation: saturation factor drawn uniformly in [1 - saturation, 1 + saturation] around
      each pixel's grey level.
    fill: what surrounds a zoomed-out or shifted image: 'reflect' or 'background'.
    non_face_scale_min: smallest zoom of the non-faces where below ``scale_min`` (see the
      module docstring); 0 uses ``scale_min`` for them too (then no labels are needed).
    exposure_min, exposure_max: range of a factor multiplying every pixel value after the
      other colour changes, drawn log-uniformly (a darker or brighter exposure of the same
      scene; as sRGB is close to a power law, a factor on it is a factor on the light
      too). 1, 1 (the default) leaves the exposure alone.

  Returns:
    A ConfigDict with the fields above.
  """
  return ml_collections.ConfigDict({
      "enabled": True,
      "scale_min": 0.85,
      "scale_max": 1.9,
      "max_translate": 0.16,
      "flip": True,
      "brightness": 0.1,
      "contrast": 0.2,
      "saturation": 0.2,
      "fill": "reflect",
      "non_face_scale_min": 0.5,
      "exposure_min": 1.0,
      "exposure_max": 1.0,
  })


def check_augment_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the field for a bad augmentation setting."""
  if config.fill not in FILLS:
    raise ValueError(f"augment.fill = {config.fill!r}: must be one of {FILLS}")
  if not 0 < config.scale_min <= config.scale_max:
    raise ValueError(f"augment.scale_min, scale_max = {config.scale_min!r}, "
                     f"{config.scale_max!r}: need 0 < scale_min <= scale_max")
  if not config.get("non_face_scale_min", 0.0) >= 0:
    raise ValueError(f"augment.non_face_scale_min = {config.non_face_scale_min!r}: must be "
                     ">= 0 (0: the non-faces' zoom range is the faces')")
  for field in ("max_translate", "brightness", "contrast", "saturation"):
    if not config[field] >= 0:
      raise ValueError(f"augment.{field} = {config[field]!r}: must be >= 0")
  for field in ("contrast", "saturation"):
    if config[field] > 1:
      raise ValueError(f"augment.{field} = {config[field]!r}: must be <= 1 (factor >= 0)")
  low, high = exposure_range(config)
  if not 0 < low <= high:
    raise ValueError(f"augment.exposure_min, exposure_max = {low!r}, {high!r}: need "
                     "0 < exposure_min <= exposure_max")


def exposure_range(config: ml_collections.ConfigDict) -> tuple[float, float]:
  """``(exposure_min, exposure_max)``, 1 where a field is absent (configs saved before them)."""
  return config.get("exposure_min", 1.0), config.get("exposure_max", 1.0)


def layout_keys(key: Array, batch_size: int, num_shards: int = 1) -> Array:
  """Per-row keys of a batch in the batcher's sharded layout, independent of ``num_shards``.

  ``jax.random.split(key, B)`` numbers the rows of the one-shard batch (faces, then
  non-faces); the keys are then laid out as ``jaxface.data.Batcher(..., num_devices=S)`` lays
  out its rows (per shard: its faces, then its non-faces), so the image that is row i of the
  one-shard batch gets the same key whatever S is.

  Args:
    key: the step's augmentation key.
    batch_size: B, a multiple of ``2 * num_shards``.
    num_shards: the batcher's ``num_devices``.

  Returns:
    (B,) keys.
  """
  if batch_size % (2 * num_shards):
    raise ValueError(f"batch_size {batch_size} is not a multiple of 2 * num_shards "
                     f"({2 * num_shards})")
  keys = jax.random.split(key, batch_size)
  per = batch_size // (2 * num_shards)
  halves = keys.reshape(2, num_shards, per)
  return jnp.swapaxes(halves, 0, 1).reshape(batch_size)


def _one_shard_order(batch_size: int, num_shards: int) -> Array:
  """Row indices of a sharded-layout batch listed in one-shard order (B,)."""
  per = batch_size // (2 * num_shards)
  rows = jnp.arange(batch_size).reshape(num_shards, 2, per)
  return jnp.swapaxes(rows, 0, 1).reshape(batch_size)


def background_from_batch(key: Array, images: Array, labels: Array,
                          num_shards: int = 1) -> Array:
  """For every row, a random non-face of the batch other than itself, as its background.

  Each row draws, with its own key, one of the batch's non-faces (counted in one-shard order,
  see :func:`layout_keys`, so the choice does not depend on ``num_shards``); a non-face never
  draws itself. With a single non-face, that non-face is its own background.

  Args:
    key: a key, split into one per row, or (B,) per-row keys.
    images: (B, H, W, 3).
    labels: (B,) 1 = face, 0 = non-face; the batch must hold at least one non-face.
    num_shards: shards of the batcher's layout (1 for a plain batch).

  Returns:
    (B, H, W, 3) backgrounds.
  """
  batch = images.shape[0]
  keys = _row_keys(key, batch)
  order = _one_shard_order(batch, num_shards) if num_shards > 1 else jnp.arange(batch)
  is_face = jnp.asarray(labels)[order] != 0
  non_face_rows = order[jnp.argsort(is_face, stable=True)]  # non-faces first, in order
  n_non = jnp.sum(~is_face)
  rank = jnp.zeros(batch, jnp.int32).at[order].set(jnp.cumsum(~is_face) - 1)  # among non-faces
  own = jnp.zeros(batch, bool).at[order].set(~is_face)
  draw_from = jnp.maximum(n_non - own.astype(jnp.int32), 1)
  u = jax.vmap(lambda k: jax.random.uniform(k, ()))(keys)
  pick = jnp.minimum((u * draw_from).astype(jnp.int32), draw_from - 1)
  pick = jnp.where(own & (pick >= rank) & (n_non > 1), pick + 1, pick)
  return images[non_face_rows[pick]]


def _row_keys(key: Array, batch: int) -> Array:
  """One key per row: ``split(key, batch)`` for a single key, else the keys given."""
  key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
  is_typed = jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
  single = key.ndim == 0 if is_typed else key.ndim == 1
  if single:
    return jax.random.split(key, batch)
  if key.shape[0] != batch:
    raise ValueError(f"got {key.shape[0]} per-row keys for a batch of {batch} images")
  return key


def _neighbours(src: Array, size: int, reflect: bool) -> tuple[Array, Array, Array, Array]:
  """The two bilinear neighbours of each 1-D sample position ``src`` (n,) and their weights.

  Out-of-range neighbours are mirrored (edge pixel repeated) with ``reflect``; otherwise they
  are clamped to the edge and get weight 0, so the two weights sum to the fraction of the
  sample that lies inside the signal.

  Returns:
    ``(lo, hi, weight_lo, weight_hi)``, each (n,).
  """
  lo = jnp.floor(src)
  frac = src - lo
  lo = lo.astype(jnp.int32)
  hi = lo + 1
  if reflect:
    def mirror(i):
      i = jnp.mod(i, 2 * size)
      return jnp.where(i >= size, 2 * size - 1 - i, i)
    return mirror(lo), mirror(hi), 1.0 - frac, frac
  inside = lambda i: ((i >= 0) & (i < size)).astype(src.dtype)
  return (jnp.clip(lo, 0, size - 1), jnp.clip(hi, 0, size - 1), (1.0 - frac) * inside(lo),
          frac * inside(hi))


def _source_weights(lo: Array, hi: Array, weight_lo: Array, weight_hi: Array,
                    size: int) -> Array:
  """(size,) total bilinear weight that the samples of :func:`_neighbours` put on each source
  index."""
  index = jnp.arange(size)
  return (jnp.sum(weight_lo[:, None] * (lo[:, None] == index), axis=0)
          + jnp.sum(weight_hi[:, None] * (hi[:, None] == index), axis=0))


def _grey(image: Array) -> Array:
  """(..., 1) luma of (..., 3) RGB."""
  return jnp.tensordot(image, jnp.asarray(_LUMA, image.dtype), axes=([-1], [0]))[..., None]


def _augment_one(key: Array, image: Array, background: Array | None, is_face: Array | None,
                 config: "_Params") -> Array:
  """Augments one (H, W, 3) image (see :func:`augment_batch`); ``is_face`` () bool or None
  when every row draws from ``[scale_min, scale_max]``."""
  h, w = image.shape[0], image.shape[1]
  k_scale, k_ty, k_tx, k_flip, k_b, k_c, k_s = jax.random.split(key, 7)
  log_min = jnp.log(jnp.float32(config.scale_min))
  if is_face is not None:
    log_min = jnp.where(is_face, log_min, jnp.log(jnp.float32(config.non_face_scale_min)))
  log_scale = jax.random.uniform(k_scale, (), minval=log_min,
                                 maxval=jnp.log(config.scale_max))
  scale = jnp.exp(log_scale)
  t = config.max_translate
  shift_y = jax.random.uniform(k_ty, (), minval=-t, maxval=t) * h
  shift_x = jax.random.uniform(k_tx, (), minval=-t, maxval=t) * w
  flip = jax.random.bernoulli(k_flip) if config.flip else jnp.bool_(False)

  # Output pixel i samples the input at centre + scale * (i - centre) + shift.
  rows = jnp.arange(h, dtype=jnp.float32)
  cols = jnp.arange(w, dtype=jnp.float32)
  cols = jnp.where(flip, (w - 1) - cols, cols)
  src_y = (h - 1) / 2 + scale * (rows - (h - 1) / 2) + shift_y
  src_x = (w - 1) / 2 + scale * (cols - (w - 1) / 2) + shift_x
  reflect = config.fill == "reflect"
  y_lo, y_hi, wy_lo, wy_hi = _neighbours(src_y, h, reflect)
  x_lo, x_hi, wx_lo, wx_hi = _neighbours(src_x, w, reflect)

  # Colour jitter of the resampled image: brightness (+ beta), contrast (x kappa around its mean
  # grey m) and saturation (x sigma around each pixel's grey), in this order. As the grey
  # weights sum to 1 this is one per-pixel affine map f(p) = sigma kappa p + (1 - sigma) kappa
  # grey(p) + kappa beta + (1 - kappa) m, then multiplied by the exposure factor.
  b, c, s = config.brightness, config.contrast, config.saturation
  beta = jax.random.uniform(k_b, (), minval=-b, maxval=b)
  kappa = jax.random.uniform(k_c, (), minval=1 - c, maxval=1 + c)
  sigma = jax.random.uniform(k_s, (), minval=1 - s, maxval=1 + s)
  gain = jnp.float32(1.0)
  if (config.exposure_min, config.exposure_max) != (1.0, 1.0):
    # A key of its own (not an eighth split), so the other draws stay as they were.
    gain = jnp.exp(jax.random.uniform(jax.random.fold_in(key, 7), (),
                                      minval=jnp.log(jnp.float32(config.exposure_min)),
                                      maxval=jnp.log(jnp.float32(config.exposure_max))))

  def colour(pixels, mean_grey):
    return gain * (sigma * kappa * pixels + (1 - sigma) * kappa * _grey(pixels)
                   + (kappa * beta + (1 - kappa) * (mean_grey + beta)))

  if reflect:
    # The mirrored samples' weights sum to 1, so f(resample(image)) = resample(f(image)): f is
    # applied to the chip, with m from the resampling weights, and the gathers run once
    # (jittering the resampled image made XLA:CPU recompute them for each use, 4x the cost).
    per_row = _source_weights(y_lo, y_hi, wy_lo, wy_hi, h)  # (H,) weight of each source row
    per_col = _source_weights(x_lo, x_hi, wx_lo, wx_hi, w)
    image = colour(image, per_row @ _grey(image)[..., 0] @ per_col / (h * w))
  # Separable bilinear resampling: two row gathers, then two column gathers.
  rows_sampled = image[y_lo] * wy_lo[:, None, None] + image[y_hi] * wy_hi[:, None, None]
  out = (rows_sampled[:, x_lo] * wx_lo[None, :, None]
         + rows_sampled[:, x_hi] * wx_hi[None, :, None])
  if not reflect:
    inside = (wy_lo + wy_hi)[:, None, None] * (wx_lo + wx_hi)[None, :, None]
    out = out + (1.0 - inside) * background
    out = colour(out, jnp.mean(_grey(out)))
  return jnp.clip(out, 0.0, 1.0)


def augment_batch(key: Array, images: Array, background: Array | None,
                  config: ml_collections.ConfigDict, labels: Array | None = None) -> Array:
  """Augments every image of a batch with its own random zoom, shift, flip and colour jitter.

  Jittable (close over ``config``: its values are read at trace time) and vmappable.

  Args:
    key: a PRNG key, split into one key per row (``jax.random.split(key, B)``), or (B,) keys
      (e.g. from :func:`layout_keys`).
    images: (B, H, W, 3) float in [0, 1].
    background: (B, H, W, 3) float in [0, 1], what shows around each zoomed-out or shifted
      image with ``config.fill == 'background'`` (e.g. :func:`background_from_batch`); may be
      None with ``'reflect'``.
    config: fields of :func:`default_augment_config`.
    labels: (B,) 1 = face; needed when ``config.non_face_scale_min`` sets the non-faces' zoom
      apart (ignored otherwise).

  Returns:
    (B, H, W, 3) float32 in [0, 1]; ``images`` itself when ``config.enabled`` is False.
  """
  if not config.enabled:
    return images
  check_augment_config(config)
  images = jnp.asarray(images, jnp.float32)
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"images must have shape (B, H, W, 3), got {images.shape}")
  keys = _row_keys(key, images.shape[0])
  params = _params(config)
  is_face = None
  if params.non_face_scale_min != params.scale_min:
    if labels is None:
      raise ValueError("augment.non_face_scale_min sets the non-faces' zoom apart: "
                       "augment_batch needs the batch's labels")
    is_face = jnp.asarray(labels).reshape(-1) != 0
    if is_face.shape[0] != images.shape[0]:
      raise ValueError(f"got {is_face.shape[0]} labels for a batch of {images.shape[0]} images")
  if config.fill == "background":
    if background is None:
      raise ValueError("augment.fill = 'background' needs a background batch, got None")
    background = jnp.asarray(background, jnp.float32)
    if background.shape != images.shape:
      raise ValueError(f"background shape {background.shape} differs from images "
                       f"{images.shape}")
  else:
    background = None
  return _augment_rows(keys, images, background, is_face, params)


def non_face_scale_min(config: ml_collections.ConfigDict) -> float:
  """The non-faces' smallest zoom in effect: ``min(non_face_scale_min, scale_min)``, and
  ``scale_min`` where the field is 0 or absent (the non-faces then zoom like the faces)."""
  value = config.get("non_face_scale_min", 0.0)
  return min(value, config.scale_min) if value > 0 else config.scale_min


def _params(config: ml_collections.ConfigDict) -> "_Params":
  """The hashable :class:`_Params` of a config (``non_face_scale_min`` the one in effect)."""
  own = ("non_face_scale_min", "exposure_min", "exposure_max")
  values = {field: config[field] for field in _Params._fields if field not in own}
  low, high = exposure_range(config)
  return _Params(**values, non_face_scale_min=non_face_scale_min(config),
                 exposure_min=float(low), exposure_max=float(high))


class _Params(NamedTuple):
  """The augmentation fields the transform reads, hashable (a static argument of the jit)."""
  scale_min: float
  scale_max: float
  max_translate: float
  flip: bool
  brightness: float
  contrast: float
  saturation: float
  fill: str
  non_face_scale_min: float
  exposure_min: float
  exposure_max: float


@functools.partial(jax.jit, static_argnames=("params",))
def _augment_rows(keys: Array, images: Array, background: Array | None, is_face: Array | None,
                  params: _Params) -> Array:
  """:func:`_augment_one` over the rows (compiled once per shape and setting, also when called
  outside a jitted step)."""
  return jax.vmap(functools.partial(_augment_one, config=params),
                  in_axes=(0, 0, None if background is None else 0,
                           None if is_face is None else 0))(keys, images, background, is_face)


def augment_for_step(base_key: Array, step: Array | int, images: Array, labels: Array,
                     config: ml_collections.ConfigDict, num_shards: int = 1) -> Array:
  """Augments a training batch in the batcher's layout, as a trainer would call it.

  The key is ``fold_in(fold_in(base_key, step), AUG_STREAM)``; the per-row keys come from
  :func:`layout_keys` and, with ``fill='background'``, the backgrounds from
  :func:`background_from_batch`, so the result does not depend on ``num_shards``.

  Args:
    base_key: the run's base key.
    step: the global step.
    images: (B, H, W, 3) float in [0, 1] in the layout of ``Batcher(num_devices=num_shards)``.
    labels: (B,) 1 = face.
    config: fields of :func:`default_augment_config`.
    num_shards: the batcher's ``num_devices``.

  Returns:
    (B, H, W, 3) float32 in [0, 1].
  """
  if not config.enabled:
    return images
  key = jax.random.fold_in(jax.random.fold_in(base_key, step), AUG_STREAM)
  key_rows, key_background = jax.random.split(key)
  keys = layout_keys(key_rows, images.shape[0], num_shards)
  background = None
  if config.fill == "background":
    bg_keys = layout_keys(key_background, images.shape[0], num_shards)
    background = background_from_batch(bg_keys, images, labels, num_shards)
  return augment_batch(keys, images, background, config, labels)
