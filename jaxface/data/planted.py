"""Procedural face / not-face images with a planted, known bias.

:func:`make_planted_bias` draws cartoon faces and non-faces with numpy, deterministically from a
seed, so the library runs with no download and tests have ground-truth attributes.

Faces: a head (ellipse with shading, ears, neck and shoulders) on a random background, with
independently drawn

* ``skin``: 0 lighter / 1 darker skin tone, each a continuum between several base tones;
* ``gender``: a sex-like style attribute coded like UTKFace (0 ``M``: short or no hair, wider
  face, heavier brows, sometimes a beard; 1 ``F``: long hair, narrower face);
* ``accessory``: 0 none / 1 glasses (frames around the eyes, tinted lenses);

and random position, scale, tilt, background, hair colour and hairline, eye gaze and openness and
mouth expression (smile, neutral, open). The demographic group is skin x gender, named like the
UTKFace bias set: ``'LF'``, ``'LM'``, ``'DF'``, ``'DM'``.

Non-faces (``kind`` attribute): colour-noise textures, gratings and checkerboards, random
ellipses and rectangles (some skin-coloured), and hard negatives: heads with hair, neck and
shoulders but no facial features (some with random blotches), in the same skin tones as the
faces, with darker tones over-represented.

The planted bias: by default darker-skinned faces are 5% of the training faces and glasses 10%;
the darker faces' features (eyes, brows, lips) have lower contrast against the skin, and most
darker-toned head shapes in training are featureless hard negatives. A classifier trained on the
skewed set therefore tends to use "light head with high-contrast features" and misses darker
faces, while one trained on balanced data learns the low-contrast features too. The test set
(``n_per_group``) is balanced over the four groups.

How strong the planted bias is for each model (detection rates per group, the gap between
lighter and darker faces) and how fast the faces are generated are measured in
``experiments/results/README.md`` (``python experiments/bias_check.py``,
``python experiments/bench_batcher.py``).
"""

from __future__ import annotations

import numpy as np

from jaxface.data.container import DataError, FaceData

GROUPS = ("LF", "LM", "DF", "DM")
NON_FACE_KINDS = ("texture", "grating", "shapes", "head")

# Base RGB tones (0..255); each face mixes two of them and varies the brightness.
_LIGHT_SKIN = ((242, 212, 190), (232, 190, 160), (222, 172, 138), (238, 200, 172),
               (210, 162, 126))
_DARK_SKIN = ((124, 84, 58), (104, 68, 46), (88, 56, 38), (134, 92, 64), (74, 48, 34))
_HAIR_LIGHT = ((28, 22, 20), (64, 42, 28), (110, 74, 46), (200, 168, 108), (150, 74, 40),
               (165, 162, 158))
_HAIR_DARK = ((22, 18, 16), (40, 30, 24), (58, 40, 30))
_CHUNK = 32


def make_planted_bias(n_faces: int = 6000, n_non_faces: int | None = None, *,
                      image_size: int = 64, seed: int = 0, dark_fraction: float = 0.05,
                      accessory_fraction: float = 0.10, female_fraction: float = 0.5,
                      n_per_group: int | None = None, hard_negative_fraction: float = 0.35,
                      hard_negative_dark_fraction: float = 0.5,
                      dark_feature_contrast: float = 0.55) -> FaceData:
  """Generates a planted-bias face / not-face dataset.

  Args:
    n_faces: number of faces when ``n_per_group`` is None.
    n_non_faces: number of non-faces; None gives as many as faces.
    image_size: height and width, a multiple of 16.
    seed: random seed; the same arguments and seed give identical images.
    dark_fraction: fraction of faces with darker skin (exact count, rounded).
    accessory_fraction: fraction of faces wearing glasses (exact count, rounded).
    female_fraction: fraction of faces with the ``F`` style (exact count, rounded).
    n_per_group: if given, a balanced set of ``n_per_group`` faces in each of
      ``'LF', 'LM', 'DF', 'DM'`` (``n_faces``, ``dark_fraction`` and ``female_fraction`` are then
      unused) drawn from a random stream independent of the skewed set's for the same seed.
    hard_negative_fraction: fraction of non-faces that are featureless heads.
    hard_negative_dark_fraction: fraction of those heads with a darker skin tone.
    dark_feature_contrast: contrast of darker faces' eyes, brows and lips relative to lighter
      faces' (1.0 = same colours; lower makes the darker faces harder).

  Returns:
    FaceData (faces first, then non-faces) with groups for the faces and attributes ``skin``,
    ``gender``, ``accessory`` (int8, -1 for non-faces; ``skin`` is the tone of hard-negative
    heads) and ``kind`` (``'face'`` or a non-face kind).
  """
  _check_planted_args(image_size, dark_fraction=dark_fraction,
                      accessory_fraction=accessory_fraction, female_fraction=female_fraction,
                      hard_negative_fraction=hard_negative_fraction,
                      hard_negative_dark_fraction=hard_negative_dark_fraction,
                      dark_feature_contrast=dark_feature_contrast)
  balanced = n_per_group is not None
  plan_seq, face_seq, non_face_seq = np.random.SeedSequence([seed, int(balanced)]).spawn(3)
  plan_rng = np.random.Generator(np.random.PCG64(plan_seq))
  dark, female, glasses = _face_plan(plan_rng, n_faces, n_per_group, dark_fraction,
                                     female_fraction, accessory_fraction)
  n_faces = dark.size
  n_non_faces = n_faces if n_non_faces is None else n_non_faces
  if n_non_faces < 0:
    raise DataError(f"n_non_faces must be >= 0, got {n_non_faces}")
  kinds, hard_dark = _non_face_plan(plan_rng, n_non_faces, hard_negative_fraction,
                                    hard_negative_dark_fraction)
  images = _render_all(face_seq, non_face_seq, int(image_size), dark, female, glasses,
                       dark_feature_contrast, kinds, hard_dark)

  groups = np.char.add(np.where(dark == 1, "D", "L"), np.where(female == 1, "F", "M"))
  kind_names = np.asarray(NON_FACE_KINDS)[kinds]
  return FaceData(
      images=images,
      labels=np.concatenate([np.ones(n_faces, np.int32), np.zeros(n_non_faces, np.int32)]),
      groups=np.concatenate([groups, np.full(n_non_faces, "")]),
      attributes={
          "skin": np.concatenate([dark, hard_dark]),
          "gender": np.concatenate([female, np.full(n_non_faces, -1, np.int8)]),
          "accessory": np.concatenate([glasses, np.full(n_non_faces, -1, np.int8)]),
          "kind": np.concatenate([np.full(n_faces, "face"), kind_names]).astype(str),
      })


# ----------------------------------------------------------------------------- helpers
#
# Rendering works channels-first, (n, 3, S, S) float32 canvases and (n, S, S) coverage maps, so
# that numpy's inner loops run over image rows rather than over 3 colour channels, and mostly in
# place; the result is transposed to (n, S, S, 3) uint8 at the end.


def _check_planted_args(image_size, **fractions: float) -> None:
  """Raises DataError for an image size that is not a positive multiple of 16 or a fraction
  outside [0, 1]."""
  if not isinstance(image_size, (int, np.integer)) or image_size < 16 or image_size % 16:
    raise DataError(f"image_size must be a positive multiple of 16, got {image_size!r}")
  for name, value in fractions.items():
    if not 0.0 <= value <= 1.0:
      raise DataError(f"{name} must be in [0, 1], got {value}")


def _face_plan(plan_rng: np.random.Generator, n_faces: int, n_per_group: int | None,
               dark_fraction: float, female_fraction: float, accessory_fraction: float
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The faces' ``dark``, ``female`` and ``glasses`` flags, (n_faces,) int8 each: a skewed set
  of ``n_faces``, or ``n_per_group`` faces in each group (then with the same share of glasses
  in every group)."""
  if n_per_group is not None:
    if n_per_group < 0:
      raise DataError(f"n_per_group must be >= 0, got {n_per_group}")
    dark = np.repeat(np.array([0, 0, 1, 1], np.int8), n_per_group)
    female = np.repeat(np.array([1, 0, 1, 0], np.int8), n_per_group)
    glasses = np.concatenate([_exact_flags(plan_rng, n_per_group, accessory_fraction)
                              for _ in GROUPS])
    return dark, female, glasses
  if n_faces < 0:
    raise DataError(f"n_faces must be >= 0, got {n_faces}")
  dark = _exact_flags(plan_rng, n_faces, dark_fraction)
  female = _exact_flags(plan_rng, n_faces, female_fraction)
  glasses = _exact_flags(plan_rng, n_faces, accessory_fraction)
  return dark, female, glasses


def _non_face_plan(plan_rng: np.random.Generator, n_non_faces: int, hard_negative_fraction: float,
                   hard_negative_dark_fraction: float) -> tuple[np.ndarray, np.ndarray]:
  """The non-faces' kinds (indices into NON_FACE_KINDS, 3 = featureless head) and the heads'
  darker-tone flags (-1 for other kinds), (n_non_faces,) int8 each."""
  n_hard = int(round(hard_negative_fraction * n_non_faces))
  n_rest = n_non_faces - n_hard
  kinds = np.concatenate([np.full(n_hard, 3, np.int8),
                          plan_rng.choice(3, size=n_rest, p=[0.3, 0.25, 0.45]).astype(np.int8)])
  kinds = plan_rng.permutation(kinds)
  hard_dark = np.full(n_non_faces, -1, np.int8)
  hard_dark[kinds == 3] = _exact_flags(plan_rng, n_hard, hard_negative_dark_fraction)
  return kinds, hard_dark


def _render_all(face_seq: np.random.SeedSequence, non_face_seq: np.random.SeedSequence,
                image_size: int, dark: np.ndarray, female: np.ndarray, glasses: np.ndarray,
                dark_feature_contrast: float, kinds: np.ndarray, hard_dark: np.ndarray
                ) -> np.ndarray:
  """(n_faces + n_non_faces, S, S, 3) uint8 images, faces first, drawn in fixed-size chunks,
  each from its own stream keyed by its start index."""
  n_faces, n_non_faces = dark.size, kinds.size
  images = np.empty((n_faces + n_non_faces, image_size, image_size, 3), np.uint8)
  face_key, non_face_key = face_seq.generate_state(2), non_face_seq.generate_state(2)
  for start in range(0, n_faces, _CHUNK):
    sl = slice(start, min(start + _CHUNK, n_faces))
    rng = np.random.Generator(np.random.PCG64([*face_key, start]))
    images[sl] = _render_faces(rng, image_size, dark[sl], female[sl], glasses[sl],
                               dark_feature_contrast)
  for start in range(0, n_non_faces, _CHUNK):
    sl = slice(start, min(start + _CHUNK, n_non_faces))
    rng = np.random.Generator(np.random.PCG64([*non_face_key, start]))
    images[n_faces + sl.start:n_faces + sl.stop] = _render_non_faces(
        rng, image_size, kinds[sl], hard_dark[sl])
  return images


def _exact_flags(rng: np.random.Generator, n: int, fraction: float) -> np.ndarray:
  """(n,) int8 with exactly round(fraction * n) ones at random positions."""
  flags = np.zeros(n, np.int8)
  flags[rng.permutation(n)[:int(round(fraction * n))]] = 1
  return flags


def _col(v: np.ndarray) -> np.ndarray:
  """(n,) -> (n, 1, 1) float32, to broadcast against (n, S, S) coverage maps."""
  return np.asarray(v, np.float32)[:, None, None]


def _u(rng: np.random.Generator, lo: float, hi: float, n: int) -> np.ndarray:
  """(n, 1, 1) float32 uniform in [lo, hi)."""
  return _col(rng.uniform(lo, hi, n))


def _colors(rng: np.random.Generator, lo: float, hi: float, n: int) -> np.ndarray:
  """(n, 3) float32 uniform random colours."""
  return rng.uniform(lo, hi, (n, 3)).astype(np.float32)


def _step(signed_px: np.ndarray) -> np.ndarray:
  """Anti-aliased inside test, in place: signed distance in pixels (inside > 0) -> [0, 1]."""
  signed_px += 0.5
  return np.clip(signed_px, 0.0, 1.0, out=signed_px)


def _ellipse(u, v, cx, cy, rx, ry, size: int) -> np.ndarray:
  """Coverage (n, S, S) of ellipses centred (cx, cy) with radii (rx, ry), each (n, 1, 1).

  ``u`` and ``v`` are x and y coordinates broadcastable to (n, S, S). The signed distance to the
  edge is approximated by ``(1 - d^2) / 2`` radii (exact at the edge), which avoids a square root.
  """
  a = u - cx
  a *= 1.0 / rx
  np.square(a, out=a)
  b = v - cy
  b *= 1.0 / ry
  np.square(b, out=b)
  if b.shape == np.broadcast_shapes(a.shape, b.shape):
    b += a
    d2 = b
  else:
    d2 = a + b
  scale = (0.5 * size) * np.minimum(rx, ry)
  d2 *= -scale
  d2 += scale + 0.5
  return np.clip(d2, 0.0, 1.0, out=d2)


def _ring(u, v, cx, cy, rx, ry, half_width, size: int) -> np.ndarray:
  """Coverage of elliptical rings (frames) with the given half width, all (n, 1, 1)."""
  d = np.sqrt(np.square((u - cx) / rx) + np.square((v - cy) / ry))
  return _step((half_width - np.abs(d - 1.0) * np.minimum(rx, ry)) * size)


def _box(u, v, cx, cy, hw, hh, size: int) -> np.ndarray:
  """Coverage of axis-aligned boxes centred (cx, cy) with half sizes (hw, hh)."""
  return _step((hw - np.abs(u - cx)) * size) * _step((hh - np.abs(v - cy)) * size)


def _paint(canvas: np.ndarray, alpha: np.ndarray, color: np.ndarray) -> None:
  """In place: canvas = (1 - alpha) * canvas + alpha * color.

  Args:
    canvas: (n, 3, S, S) float32.
    alpha: (n, S, S) coverage in [0, 1].
    color: (n, 3) colours, or (n, 3, S, S) per-pixel colours.
  """
  # Only the band of rows that any image in the batch covers is touched.
  rows = np.flatnonzero(alpha.max(axis=(0, 2)))
  if not len(rows):
    return
  band = slice(rows[0], rows[-1] + 1)
  target = canvas[:, :, band]
  color = color[:, :, None, None] if color.ndim == 2 else color[:, :, band]
  # color + (1 - alpha) * (canvas - color), in place: no temporary the size of the canvas.
  target -= color
  target *= np.subtract(1.0, alpha[:, None, band])
  target += color


def _mix_tones(rng: np.random.Generator, tones, n: int) -> np.ndarray:
  """(n, 3) colours in [0, 1] mixing two random base tones, with brightness jitter."""
  tones = np.asarray(tones, np.float32) / 255.0
  a, b = rng.integers(len(tones), size=(2, n))
  w = rng.uniform(0.0, 1.0, (n, 1)).astype(np.float32)
  mixed = (w * tones[a] + (1 - w) * tones[b]) * rng.uniform(0.92, 1.08, (n, 1))
  return np.clip(mixed, 0, 1).astype(np.float32)


def _skin(rng: np.random.Generator, dark: np.ndarray) -> np.ndarray:
  """(n, 3) skin colours, darker tones where ``dark == 1``."""
  return np.where(dark[:, None] == 1, _mix_tones(rng, _DARK_SKIN, len(dark)),
                  _mix_tones(rng, _LIGHT_SKIN, len(dark)))


def _hair(rng: np.random.Generator, dark: np.ndarray) -> np.ndarray:
  """(n, 3) hair colours; darker-skinned faces get black or dark-brown hair."""
  n = len(dark)
  light_pick = np.asarray(_HAIR_LIGHT, np.float32)[rng.integers(len(_HAIR_LIGHT), size=n)]
  dark_pick = np.asarray(_HAIR_DARK, np.float32)[rng.integers(len(_HAIR_DARK), size=n)]
  hair = np.where(dark[:, None] == 1, dark_pick, light_pick) / 255.0
  return (hair * rng.uniform(0.85, 1.15, (n, 1))).clip(0, 1).astype(np.float32)


def _upsample(grid: np.ndarray, size: int) -> np.ndarray:
  """Bilinear upsampling of (n, c, g, g) grids to (n, c, size, size).

  Done with gathers and multiply-adds rather than matrix products, which would hand tiny
  products to a multi-threaded BLAS.
  """
  g = grid.shape[-1]
  pos = (np.arange(size, dtype=np.float32) + 0.5) / size * (g - 1)
  lo = np.minimum(pos.astype(np.int64), g - 2)
  frac = (pos - lo).astype(np.float32)
  # First along the last axis of the small grid, then whole rows of the result.
  cols = np.take(grid, lo, axis=-1) * (1 - frac) + np.take(grid, lo + 1, axis=-1) * frac
  out = np.take(cols, lo, axis=-2)  # np.take keeps the result C-contiguous.
  out *= (1 - frac)[:, None]
  below = np.take(cols, lo + 1, axis=-2)
  below *= frac[:, None]
  out += below
  return out


def _background(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
  """(n, 3, S, S) smooth random colour fields: a base colour plus low-frequency colour noise."""
  base = rng.uniform(0.05, 0.95, (n, 3, 1, 1)).astype(np.float32)
  amp = rng.uniform(0.05, 0.35, (n, 1, 1, 1)).astype(np.float32)
  noise = rng.uniform(-1, 1, (n, 3, 4, 4)).astype(np.float32)
  canvas = _upsample(noise, size)
  canvas *= amp
  canvas += base
  return np.clip(canvas, 0, 1, out=canvas)


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
  """Pixel-centre coordinates in [0, 1]: x (1, 1, S) and y (1, S, 1)."""
  c = (np.arange(size, dtype=np.float32) + 0.5) / size
  return c[None, None, :], c[None, :, None]


def _finish(rng: np.random.Generator, canvas: np.ndarray) -> np.ndarray:
  """Global lighting, colour cast and sensor noise; (n, 3, S, S) float -> (n, S, S, 3) uint8."""
  n = canvas.shape[0]
  gain = rng.uniform(0.85, 1.12, (n, 1, 1, 1)) * rng.uniform(0.95, 1.05, (n, 3, 1, 1))
  canvas *= (255.0 * gain).astype(np.float32)
  # Uniform luminance noise with a standard deviation of ~1.5%, and +0.5 to round below.
  noise = rng.random((n, 1) + canvas.shape[2:], dtype=np.float32)
  noise *= np.float32(255.0 * 0.05)
  noise += np.float32(0.5 - 255.0 * 0.025)
  canvas += noise
  np.clip(canvas, 0.0, 255.0, out=canvas)
  pixels = canvas.astype(np.uint8)  # Truncation rounds, thanks to the +0.5 above.
  out = np.empty((n, canvas.shape[2], canvas.shape[3], 3), np.uint8)
  for c in range(3):  # Channel by channel: long strided loops, much faster than one transpose.
    out[..., c] = pixels[:, c]
  return out


# ----------------------------------------------------------------------------- heads


def _draw_heads(rng: np.random.Generator, canvas: np.ndarray, skin: np.ndarray,
                dark: np.ndarray, female: np.ndarray) -> dict[str, np.ndarray]:
  """Draws shoulders, neck, hair, ears and the head; returns the head geometry.

  Args:
    rng: random generator.
    canvas: (n, 3, S, S) float32, painted in place.
    skin: (n, 3) skin colours.
    dark: (n,) 1 for darker skin (hair colours differ).
    female: (n,) 1 for the F style (long hair, narrower face).

  Returns:
    Geometry: coordinates in the tilted head frame (origin at the head centre), ``u`` and
    ``au = |u|`` (n, 1, S) and ``v`` (n, S, S), radii ``rx``, ``ry`` (n, 1, 1), ``head`` coverage (n, S, S) and
    ``hair`` colours (n, 3).
  """
  n, size = canvas.shape[0], canvas.shape[-1]
  x, y = _grid(size)
  f = _col(female)
  cx, cy = _u(rng, 0.38, 0.62, n), _u(rng, 0.40, 0.54, n)
  scale = _u(rng, 0.78, 1.08, n)
  rx = 0.215 * scale * (1.08 - 0.1 * f) * _u(rng, 0.95, 1.05, n)
  ry = 0.285 * scale * _u(rng, 0.95, 1.05, n)
  # Head tilt as a vertical shear, so that u stays one row per image: (n, 1, S).
  u = x - cx
  v = (y - cy) - _u(rng, -0.2, 0.2, n) * u
  au = np.abs(u)
  hair = _hair(rng, dark)
  has_hair = _col(~((rng.uniform(size=n) < 0.08) & (female == 0)))  # Some M are bald.

  _paint(canvas, _ellipse(x, y, cx, cy + 2.1 * ry, 2.3 * rx, 1.15 * ry, size),
         _colors(rng, 0.05, 0.95, n))
  _paint(canvas, _box(x, y, cx, cy + 0.95 * ry, 0.42 * rx, 0.6 * ry, size), skin * 0.82)
  # Hair behind the head: long (F) reaches the shoulders, short (M) only frames the top.
  long_len = ry * _u(rng, 0.7, 1.5, n)
  back = _ellipse(u, v, 0, ry * (-0.1 + 0.05 * f), rx * (1.06 + 0.18 * f), ry * (1.04 + 0.1 * f),
                  size)
  np.maximum(back, _box(u, v, 0, 0.5 * long_len, 1.22 * rx, 0.5 * long_len, size) * f, out=back)
  back *= has_hair
  _paint(canvas, back, hair)
  _paint(canvas, _ellipse(au, v, 0.98 * rx, -0.02 * ry, 0.17 * rx, 0.2 * ry, size), skin * 0.9)
  a = u / rx
  np.square(a, out=a)
  d2 = v / ry
  np.square(d2, out=d2)
  d2 += a
  head = _step((1.0 - d2) * ((0.5 * size) * rx))
  shade = np.subtract(1.06, 0.22 * d2, out=d2)
  _paint(canvas, head, skin[:, :, None, None] * shade[:, None])
  # Hair over the forehead, with a curved hairline.
  hairline = ry * (_u(rng, -0.78, -0.5, n) + 0.12 * f) + (0.3 / rx) * np.square(u) * (ry / rx)
  _paint(canvas, head * _step((hairline - v) * size) * has_hair, hair)
  return {"u": u, "v": v, "au": au, "rx": rx, "ry": ry, "head": head, "hair": hair}


def _draw_features(rng: np.random.Generator, canvas: np.ndarray, geo: dict[str, np.ndarray],
                   skin: np.ndarray, female: np.ndarray, glasses: np.ndarray,
                   contrast: np.ndarray) -> None:
  """Draws beard, eyes, brows, nose, mouth and glasses in the head frame.

  Args:
    rng: random generator.
    canvas: (n, 3, S, S), painted in place.
    geo: head geometry from :func:`_draw_heads`.
    skin: (n, 3) skin colours.
    female: (n,) F style.
    glasses: (n,) 1 to draw glasses.
    contrast: (n,) feature contrast in [0, 1]: feature colours are blended towards the skin.
  """
  n, size = canvas.shape[0], canvas.shape[-1]
  u, v, au, rx, ry = geo["u"], geo["v"], geo["au"], geo["rx"], geo["ry"]
  head, hair = geo["head"], geo["hair"]
  f = _col(female)
  k = contrast.astype(np.float32)[:, None]

  def toward_skin(color: np.ndarray) -> np.ndarray:
    return skin + k * (color - skin)

  beard = _col((rng.uniform(size=n) < 0.3) & (female == 0)) * 0.8
  beard_top = ry * _u(rng, 0.2, 0.4, n)
  if beard.any():
    _paint(canvas, head * _step((v - beard_top) * size) * beard, toward_skin(hair))

  # Eyes (both at once, mirrored with |u|): sclera, then iris with a common gaze offset.
  ex = rx * _u(rng, 0.34, 0.42, n)
  ey = -ry * _u(rng, 0.0, 0.12, n)
  erx = rx * _u(rng, 0.15, 0.19, n)
  ery = erx * _u(rng, 0.4, 0.62, n)
  sclera = _ellipse(au, v, ex, ey, erx, ery, size)
  _paint(canvas, sclera, toward_skin(np.full((n, 3), 0.9, np.float32)))
  gaze = erx * _u(rng, -0.35, 0.35, n)
  iris = _ellipse(np.abs(u - gaze), v, ex, ey, ery * 1.05, ery * 1.05, size)
  iris *= sclera
  iris_color = rng.uniform(0.05, 0.3, (n, 1)) * np.array([[1.0, 0.8, 0.65]])
  _paint(canvas, iris, toward_skin(iris_color.astype(np.float32)))

  by = ey - ry * _u(rng, 0.14, 0.2, n)
  bh = rx * (0.03 + 0.025 * (1 - f))
  _paint(canvas, _ellipse(au, v, ex, by, erx * 1.25, bh, size), toward_skin(hair * 0.8))

  nose = _ellipse(u, v, 0, 0.14 * ry, 0.08 * rx, 0.2 * ry, size)
  nose *= 0.3
  nostrils = _ellipse(au, v, 0.09 * rx, 0.3 * ry, 0.05 * rx, 0.03 * ry, size)
  nostrils *= 0.8
  _paint(canvas, np.maximum(nose, nostrils, out=nose), toward_skin(skin * 0.45))

  # Mouth: a lip curve (smile or neutral), or an open mouth.
  my = ry * _u(rng, 0.5, 0.6, n)
  mw = rx * _u(rng, 0.28, 0.42, n)
  expression = rng.choice(3, size=n, p=[0.5, 0.3, 0.2])  # smile, neutral, open
  curve = np.where(_col(expression) == 0, _u(rng, 0.04, 0.1, n), _u(rng, -0.01, 0.02, n)) * ry
  line = my - (curve / np.square(mw)) * np.square(u)
  thick = ry * (0.03 + 0.02 * f) * _u(rng, 0.9, 1.3, n)
  lips = _step((thick - np.abs(v - line)) * size)
  lips *= _step((mw - au) * size)
  _paint(canvas, lips, toward_skin(skin * np.array([[0.72, 0.42, 0.42]], np.float32)))
  is_open = np.flatnonzero(expression == 2)
  if len(is_open):
    sub = canvas[is_open]
    mouth = _ellipse(u[is_open], v[is_open], 0, my[is_open], mw[is_open] * 0.55,
                     ry[is_open] * 0.09, size)
    dark_red = np.tile(np.array([[0.22, 0.05, 0.06]], np.float32), (len(is_open), 1))
    _paint(sub, mouth, skin[is_open] + k[is_open] * (dark_red - skin[is_open]))
    canvas[is_open] = sub

  wear = np.flatnonzero(glasses)
  if len(wear):
    frame_w = rx[wear] * _u(rng, 0.025, 0.045, len(wear))
    tint = _u(rng, 0.1, 0.45, len(wear))
    lens_color = _colors(rng, 0.1, 0.5, len(wear))
    frame_color = np.where(rng.uniform(size=(len(wear), 1)) < 0.6,
                           rng.uniform(0.0, 0.15, (len(wear), 1)),
                           rng.uniform(0.0, 0.9, (len(wear), 3))).astype(np.float32)
    _draw_glasses(canvas, wear, au[wear], v[wear], rx[wear], ex[wear], ey[wear], erx[wear],
                  frame_w, tint, lens_color, frame_color)


def _draw_glasses(canvas, idx, au, v, rx, ex, ey, erx, frame_w, tint, lens_color, frame_color):
  """Paints glasses (tinted lenses, frames, bridge, temples) on ``canvas[idx]``."""
  size = canvas.shape[-1]
  sub = canvas[idx]
  grx, gry = erx * 1.55, erx * 1.2
  _paint(sub, _ellipse(au, v, ex, ey, grx, gry, size) * tint, lens_color)
  frame = _ring(au, v, ex, ey, grx, gry, frame_w, size)
  bridge = _box(au, v, 0, ey, ex - grx + frame_w, frame_w, size)
  temples = _box(au, v, (ex + grx + rx) / 2, ey, (rx - ex - grx) / 2, frame_w, size)
  _paint(sub, np.maximum(np.maximum(frame, bridge), temples), frame_color)
  canvas[idx] = sub


def _render_faces(rng: np.random.Generator, size: int, dark: np.ndarray, female: np.ndarray,
                  glasses: np.ndarray, dark_feature_contrast: float) -> np.ndarray:
  """(n, S, S, 3) uint8 faces with the given attributes."""
  n = len(dark)
  canvas = _background(rng, n, size)
  skin = _skin(rng, dark)
  geo = _draw_heads(rng, canvas, skin, dark, female)
  contrast = np.where(dark == 1, dark_feature_contrast, 1.0) * rng.uniform(0.85, 1.0, n)
  _draw_features(rng, canvas, geo, skin, female, glasses, contrast)
  return _finish(rng, canvas)


# ----------------------------------------------------------------------------- non-faces


def _textures(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
  """(n, 3, S, S) multi-scale noise mapped between two random colours."""
  noise = sum(a * _upsample(rng.uniform(-1, 1, (n, 1, g, g)).astype(np.float32), size)
              for a, g in ((1.0, 4), (0.6, 8), (0.35, 16)))
  t = np.clip(0.5 + 0.5 * noise, 0, 1)
  c0, c1 = rng.uniform(0, 1, (2, n, 3, 1, 1)).astype(np.float32)
  return c0 + t * (c1 - c0)


def _gratings(rng: np.random.Generator, canvas: np.ndarray) -> None:
  """Paints smooth or square gratings, or checkerboards, on ``canvas`` in place."""
  n, size = canvas.shape[0], canvas.shape[-1]
  x, y = _grid(size)
  theta = _u(rng, 0, np.pi, n)
  freq = _u(rng, 2, 10, n)
  phase = _u(rng, 0, 2 * np.pi, n)
  wave = np.sin(2 * np.pi * freq * (x * np.cos(theta) + y * np.sin(theta)) + phase)
  wave2 = np.sin(2 * np.pi * freq * (y * np.cos(theta) - x * np.sin(theta)) + phase)
  style = rng.integers(3, size=n)[:, None, None]
  pattern = np.where(style == 0, 0.5 + 0.5 * wave,
                     np.where(style == 1, _step(wave * 4), _step(wave * wave2 * 8)))
  _paint(canvas, pattern, _colors(rng, 0, 1, n))


def _shapes(rng: np.random.Generator, canvas: np.ndarray) -> None:
  """Paints up to five random ellipses and boxes, some in skin tones, on ``canvas``."""
  n, size = canvas.shape[0], canvas.shape[-1]
  x, y = _grid(size)
  for _ in range(5):
    cx, cy = _u(rng, 0.1, 0.9, n), _u(rng, 0.1, 0.9, n)
    w, h = _u(rng, 0.05, 0.3, n), _u(rng, 0.05, 0.3, n)
    is_box = (rng.uniform(size=n) < 0.4)[:, None, None]
    shape = np.where(is_box, _box(x, y, cx, cy, w, h, size), _ellipse(x, y, cx, cy, w, h, size))
    tone_dark = (rng.uniform(size=n) < 0.5).astype(np.int8)
    color = np.where(rng.uniform(size=(n, 1)) < 0.3, _skin(rng, tone_dark), _colors(rng, 0, 1, n))
    shape *= _col(rng.uniform(size=n) < 0.8)
    _paint(canvas, shape, color)


def _featureless_heads(rng: np.random.Generator, canvas: np.ndarray, dark: np.ndarray) -> None:
  """Paints heads with hair, neck and shoulders but no facial features, some blotched."""
  n, size = canvas.shape[0], canvas.shape[-1]
  female = (rng.uniform(size=n) < 0.5).astype(np.int8)
  skin = _skin(rng, dark)
  geo = _draw_heads(rng, canvas, skin, dark, female)
  u, v, rx, ry, head = geo["u"], geo["v"], geo["rx"], geo["ry"], geo["head"]
  for _ in range(3):
    r = rx * _u(rng, 0.06, 0.2, n)
    blot = _ellipse(u, v, rx * _u(rng, -0.6, 0.6, n), ry * _u(rng, -0.5, 0.6, n), r,
                    r * _u(rng, 0.4, 1.2, n), size)
    blot *= head
    blot *= _col(rng.uniform(size=n) < 0.35)
    _paint(canvas, blot, skin * rng.uniform(0.35, 0.8, (n, 1)).astype(np.float32))


def _render_non_faces(rng: np.random.Generator, size: int, kinds: np.ndarray,
                      head_dark: np.ndarray) -> np.ndarray:
  """(n, S, S, 3) uint8 non-faces of the given kinds (indices into NON_FACE_KINDS)."""
  canvas = _background(rng, len(kinds), size)
  for kind in range(len(NON_FACE_KINDS)):
    idx = np.flatnonzero(kinds == kind)
    if not len(idx):
      continue
    if kind == 0:
      canvas[idx] = _textures(rng, len(idx), size)
      continue
    sub = canvas[idx]
    if kind == 1:
      _gratings(rng, sub)
    elif kind == 2:
      _shapes(rng, sub)
    else:
      _featureless_heads(rng, sub, head_dark[idx].clip(0, 1).astype(np.int8))
    canvas[idx] = sub
  return _finish(rng, canvas)
