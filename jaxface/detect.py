"""Whole-photo face detection with a trained face / not-face classifier, as pure functions.

A photo is scanned with square windows of a few sides (fractions of its shorter side, by
default a fifth to all of it) at a stride proportional to the side, and every window is
classified in batched, jitted calls through :func:`jaxface.models.encode` (eval mode, in the
run's compute ``dtype`` and model ``impl``; the face probability is the sigmoid of
``y_logit``).

Cutting and resizing, by an image pyramid: for each window side ``S`` the photo is resized
once, on the device, by ``input_size / S`` (a *level*, :func:`level_matrix`: the antialiased
filter of ``jax.image.scale_and_translate``, Lanczos-3 by default, the filter the training
crops were made with), and the windows are the ``input_size`` squares of that level, cut by
slicing. A level is applied along each axis by bands: each group of ROW_GROUP level rows
reads only the photo rows its filter reaches, so a level costs a few operations per photo
pixel whatever the scale, and cutting costs little beside classifying the windows. A
window's pixels near its border see the photo just outside it (as a resize of the whole photo
does), not the zero padding of a crop.

Photos of different sizes: the photos of one call are zero-padded to one canvas (height and
width rounded up to a multiple of 64, which bounds the number of compiled shapes). Padding is
never read: a level's filter weights stop at its own photo's edge. All levels of a call are
flattened into one array of pixels (the *atlas*, :func:`make_atlas`), so a batch of
``batch_size`` windows of any sides and photos is cut in one gather of pixel rows
(:func:`cut_windows`) and classified by the model's plain batched inference
(:func:`window_probabilities`). ``experiments/bench_detect.py`` times the scan against that
inference alone (figures in experiments/results/detect_whole_images.md).

With a mesh (one axis named ``data``), the window batch is sharded over it and the photos and
variables are replicated.

Boxes are ``(x0, y0, side)`` in photo pixels (x0 from the left, y0 from the top).

A window is a detection when its face probability is above the threshold
(:func:`jaxface.eval.operating_point.detected`, the rule of every evaluation). Whole-photo
evaluation (faces found on portraits at a threshold calibrated on non-face photos) is
:mod:`jaxface.eval.whole_photos`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from PIL import Image

from jaxface import models
from jaxface.data import IMAGE_EXTENSIONS, DataError
from jaxface.eval.operating_point import detected

PyTree = Any
DATA_AXIS = "data"
CANVAS_MULTIPLE = 64  # photos of one call are padded to a canvas of a multiple of this


class ScanOptions(NamedTuple):
  """How photos are scanned.

  Attributes:
    min_frac: smallest window side, as a fraction of the photo's shorter side.
    max_frac: largest window side, as a fraction of the shorter side (at most 1).
    n_scales: number of window sides, spaced geometrically from min_frac to max_frac.
    stride_frac: step between windows, as a fraction of the window side.
    side_step: window sides are rounded to a multiple of this many pixels (except the full
      shorter side), so photos of similar sizes share compiled cuts.
    min_side: no window is smaller than this (pixels); a photo whose shorter side is smaller
      cannot be scanned.
    input_size: the model's input height and width.
    method: resize filter of the levels: 'lanczos3', 'lanczos5', 'linear' or 'cubic' (the
      ``jax.image.resize`` filters of those names, antialiased).
    batch_size: windows per classifier call (rounded up to a multiple of the device count).
    threshold: a window whose face probability is above this is a detection.
  """
  min_frac: float = 0.2
  max_frac: float = 1.0
  n_scales: int = 5
  stride_frac: float = 0.25
  side_step: int = 8
  min_side: int = 32
  input_size: int = 64
  method: str = "lanczos3"
  batch_size: int = 256
  threshold: float = 0.5


class ScanResult(NamedTuple):
  """The windows of one photo and their face probabilities.

  Attributes:
    boxes: (N, 3) int32 windows ``(x0, y0, side)`` in photo pixels.
    probs: (N,) float32 face probabilities.
    best_box: (3,) the window with the highest probability.
    best_prob: its probability.
    face_present: whether ``best_prob`` is a detection (above ``threshold``).
    threshold: the detection threshold used.
  """
  boxes: np.ndarray
  probs: np.ndarray
  best_box: np.ndarray
  best_prob: float
  face_present: bool
  threshold: float


def check_options(options: ScanOptions) -> None:
  """Raises ValueError naming the first invalid field of ``options``."""
  if not 0 < options.min_frac <= options.max_frac <= 1:
    raise ValueError(f"ScanOptions.min_frac/max_frac must satisfy 0 < min_frac <= max_frac <= 1,"
                     f" got {options.min_frac}, {options.max_frac}")
  if options.n_scales < 1:
    raise ValueError(f"ScanOptions.n_scales must be >= 1, got {options.n_scales}")
  if not 0 < options.stride_frac <= 1:
    raise ValueError(f"ScanOptions.stride_frac must be in (0, 1], got {options.stride_frac}")
  if options.side_step < 1 or options.min_side < 1:
    raise ValueError(f"ScanOptions.side_step and min_side must be >= 1, got "
                     f"{options.side_step}, {options.min_side}")
  if options.batch_size < 1:
    raise ValueError(f"ScanOptions.batch_size must be >= 1, got {options.batch_size}")
  if options.method not in RESIZE_METHODS:
    raise ValueError(f"ScanOptions.method must be one of {RESIZE_METHODS}, got {options.method!r}")
  models.check_image_size(options.input_size)


def window_sides(height: int, width: int, options: ScanOptions = ScanOptions()) -> list[int]:
  """The window sides (pixels, ascending, distinct) for a photo of ``height`` x ``width``.

  Raises:
    ValueError: the photo's shorter side is below ``options.min_side``.
  """
  short = min(height, width)
  if short < options.min_side:
    raise ValueError(f"a {width}x{height} image is smaller than the smallest window "
                     f"({options.min_side} pixels)")
  fracs = np.geomspace(options.min_frac, options.max_frac, options.n_scales)
  step = options.side_step
  sides = set()
  for frac in fracs:
    side = short if frac * short >= short - step / 2 else step * round(frac * short / step)
    sides.add(int(min(short, max(options.min_side, side))))
  return sorted(sides)


def _starts(length: int, side: int, stride: int) -> list[int]:
  """Window offsets along one axis: every ``stride`` pixels, plus one flush with the end."""
  starts = list(range(0, length - side + 1, stride))
  if starts[-1] != length - side:
    starts.append(length - side)
  return starts


RESIZE_METHODS = ("lanczos3", "lanczos5", "linear", "cubic")
ROW_GROUP = 8  # level rows (and columns) resized together from one band of photo rows


def level_length(length: int, side: int, input_size: int) -> int:
  """Pixels along one axis of a photo's level for windows of ``side`` (those inside the photo)."""
  return length * input_size // side


def _kernel(method: str, x: np.ndarray) -> np.ndarray:
  """The resize filters of ``jax.image.scale_and_translate`` at distances ``x >= 0``."""
  if method == "linear":
    return np.maximum(0.0, 1.0 - x)
  if method == "cubic":  # Keys, a = -0.5
    out = ((1.5 * x - 2.5) * x) * x + 1.0
    out = np.where(x >= 1.0, ((-0.5 * x + 2.5) * x - 4.0) * x + 2.0, out)
    return np.where(x >= 2.0, 0.0, out)
  radius = float(method[len("lanczos"):])
  with np.errstate(divide="ignore", invalid="ignore"):
    out = np.where(x > 1e-3, radius * np.sin(np.pi * x) * np.sin(np.pi * x / radius)
                   / np.square(np.pi * x), 1.0)
  return np.where(x > radius, 0.0, out)


@functools.lru_cache(maxsize=4096)
def level_matrix(length: int, side: int, input_size: int, method: str = "lanczos3") -> np.ndarray:
  """The antialiased resize of one photo axis by ``input_size / side`` (a pyramid level).

  Level pixel ``i`` samples the photo at ``(i + 0.5) * side / input_size - 0.5`` with the
  filter widened by ``side / input_size`` when shrinking: the weights of
  ``jax.image.scale_and_translate`` at that scale and no translation. A window of ``side``
  photo pixels is then ``input_size`` level pixels.

  Returns:
    (level_length, length) float32 ``W``; ``W @ x`` is the level of a length-``length`` axis.
  """
  n_out = level_length(length, side, input_size)
  inv_scale = side / input_size
  sample = (np.arange(n_out) + 0.5) * inv_scale - 0.5
  x = np.abs(sample[:, None] - np.arange(length)[None, :]) / max(inv_scale, 1.0)
  w = _kernel(method, x)
  total = w.sum(axis=1, keepdims=True)
  w = np.where(np.abs(total) > 1000 * np.finfo(np.float32).eps,
               w / np.where(total != 0, total, 1), 0.0)
  return w.astype(np.float32)


def _band_spans(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """First and last input row each band of ROW_GROUP output rows of ``matrix`` reads.

  Returns:
    ``(first, last)``, (ceil(L / ROW_GROUP),) int arrays; a band reading nothing has 0, 0.
  """
  n_bands = -(-matrix.shape[0] // ROW_GROUP)
  padded = np.zeros((n_bands * ROW_GROUP, matrix.shape[1]), bool)
  padded[:matrix.shape[0]] = matrix != 0
  reads = padded.reshape(n_bands, ROW_GROUP, -1).any(axis=1)  # (n_bands, length)
  first = np.argmax(reads, axis=1)
  last = np.where(reads.any(axis=1), matrix.shape[1] - 1 - np.argmax(reads[:, ::-1], axis=1), 0)
  return first, last


def _band_taps(matrix: np.ndarray, first: np.ndarray, n_rows: int, n_in: int, taps: int
               ) -> tuple[np.ndarray, np.ndarray]:
  """A level matrix as bands: each group of ROW_GROUP output rows reads ``taps`` input rows.

  Args:
    matrix: (L, length) level matrix of one photo axis.
    first: (ceil(L / ROW_GROUP),) the first input row of each band (:func:`_band_spans`).
    n_rows: padded output length (a multiple of ROW_GROUP, >= L); extra rows weigh nothing.
    n_in: the canvas length (input rows that can be read).
    taps: input rows per band, at least the widest band's span.

  Returns:
    ``(starts (n_rows // ROW_GROUP,) int32, weights (n_rows // ROW_GROUP, ROW_GROUP, taps))``.
  """
  starts = np.zeros(n_rows // ROW_GROUP, np.int32)
  weights = np.zeros((n_rows // ROW_GROUP, ROW_GROUP, taps), np.float32)
  for b, first_row in enumerate(first):
    block = matrix[b * ROW_GROUP:(b + 1) * ROW_GROUP]
    start = min(int(first_row), n_in - taps)
    stop = min(matrix.shape[1], start + taps)
    weights[b, :len(block), :stop - start] = block[:, start:stop]
    starts[b] = start
  return starts, weights


def _resize_axis0(x: jax.Array, starts: jax.Array, weights: jax.Array) -> jax.Array:
  """Resizes axis 0 of ``x`` by bands: (L_in, ...) -> (n_bands * ROW_GROUP, ...)."""
  rows = x[starts[:, None] + jnp.arange(weights.shape[-1])]  # (n_bands, taps, ...)
  out = jnp.einsum("bgt,bt...->bg...", weights, rows)
  return out.reshape((-1,) + x.shape[1:])


@jax.jit
def _as_level(canvas: jax.Array, members: jax.Array) -> jax.Array:
  """The photos themselves as float levels (windows of the model's input size: scale 1)."""
  photos = canvas[members].astype(jnp.float32)
  return photos / 255.0 if canvas.dtype == jnp.uint8 else photos


@jax.jit
def _make_levels(canvas: jax.Array, members: jax.Array, row_starts: jax.Array,
                 row_weights: jax.Array, col_starts: jax.Array, col_weights: jax.Array
                 ) -> jax.Array:
  """(n, Lh, Lw, 3) float32 levels in [0, 1] of the photos ``canvas[members]``."""
  photos = _as_level(canvas, members)

  def level(photo, rs, rw, cs, cw):
    rows = _resize_axis0(photo, rs, rw)  # (Lh, W, 3)
    return jnp.swapaxes(_resize_axis0(jnp.swapaxes(rows, 0, 1), cs, cw), 0, 1)

  return jax.vmap(level)(photos, row_starts, row_weights, col_starts, col_weights)


def window_grid(height: int, width: int, options: ScanOptions = ScanOptions()
                ) -> tuple[np.ndarray, np.ndarray]:
  """All windows of a photo, in photo pixels and in level pixels.

  For each side ``S``, the windows are the ``input_size`` squares of the photo's level at
  scale ``input_size / S`` (:func:`level_matrix`), every ``stride_frac * input_size`` level
  pixels plus one flush with the level's end; a box is the window's level position times
  ``S / input_size``, rounded.

  Returns:
    ``boxes`` (N, 3) int32 ``(x0, y0, side)`` in photo pixels, ordered by side, then y0, then
    x0, and ``cells`` (N, 2) int32 ``(x, y)`` of each window in its level.
  """
  size = options.input_size
  stride = max(1, round(options.stride_frac * size))
  boxes, cells = [], []
  for side in window_sides(height, width, options):
    for ly in _starts(level_length(height, side, size), size, stride):
      for lx in _starts(level_length(width, side, size), size, stride):
        # Round half up, in integers: (2 * l * side + size) // (2 * size).
        boxes.append(((2 * lx * side + size) // (2 * size), (2 * ly * side + size) // (2 * size),
                      side))
        cells.append((lx, ly))
  return (np.asarray(boxes, np.int32).reshape(-1, 3), np.asarray(cells, np.int32).reshape(-1, 2))


def window_boxes(height: int, width: int, options: ScanOptions = ScanOptions()) -> np.ndarray:
  """All windows of a photo: (N, 3) int32 boxes ``(x0, y0, side)`` (see :func:`window_grid`)."""
  return window_grid(height, width, options)[0]


def _pad(values: np.ndarray, size: int) -> np.ndarray:
  return np.concatenate([values, np.full(size - len(values), values[0], values.dtype)])


@functools.partial(jax.jit, static_argnames=("dtype", "impl"))
def window_probabilities(variables: PyTree, crops: jax.Array, dtype: Any = jnp.float32,
                         impl: str = "auto") -> jax.Array:
  """Face probabilities of crops: eval mode, the sigmoid of ``y_logit``.

  Args:
    variables: model variables.
    crops: (B, S, S, 3) float32 crops in [0, 1].
    dtype: compute dtype (the run's ``config.dtype``).
    impl: the model implementation (:data:`jaxface.models.IMPLS`, the run's
      ``config.model.impl``).

  Returns:
    (B,) float32 face probabilities.
  """
  y_logit = models.encode(variables, crops, train=False, dtype=dtype, impl=impl).y_logit
  return jax.nn.sigmoid(y_logit).astype(jnp.float32)


def _check_photo(image: np.ndarray, index: int) -> None:
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"images[{index}] must be (H, W, 3), got shape {image.shape}")


def canvas_shape(shapes: Sequence[tuple[int, int]]) -> tuple[int, int]:
  """(H, W) of the canvas of photos of these (height, width) shapes: the largest of each,
  rounded up to a multiple of CANVAS_MULTIPLE."""
  m = CANVAS_MULTIPLE
  return (-(-max(h for h, _ in shapes) // m) * m, -(-max(w for _, w in shapes) // m) * m)


def pad_to_canvas(images: Sequence[np.ndarray]) -> np.ndarray:
  """Zero-pads photos to one (N, H, W, 3) canvas of :func:`canvas_shape`.

  uint8 photos stay uint8 (0-255) unless mixed with float ones, when all become float (0-1).
  """
  height, width = canvas_shape([im.shape[:2] for im in images])
  if all(im.dtype == np.uint8 for im in images):
    canvas = np.zeros((len(images), height, width, 3), np.uint8)
  else:  # mixed: every photo as float in [0, 1]
    canvas = np.zeros((len(images), height, width, 3), np.float32)
    images = [im.astype(np.float32) / 255.0 if im.dtype == np.uint8 else im for im in images]
  for i, im in enumerate(images):
    canvas[i, :im.shape[0], :im.shape[1]] = im
  return canvas


class ScanLayout(NamedTuple):
  """Every window of a scan call and where it lies in the call's pyramid atlas (host side).

  The atlas is every level of the call (:func:`make_atlas`), each flattened to pixels and
  laid end to end: a window's row ``r`` is the ``input_size`` pixels from
  ``origin + r * row_stride``.

  Attributes:
    shapes: (height, width) of each photo.
    per_image: each photo's (N_i, 3) boxes, in scan order.
    boxes: (M, 3) every window ``(x0, y0, side)``.
    origin: (M,) atlas index of every window's top-left pixel.
    row_stride: (M,) atlas pixels between its rows (the width of its level).
    members: side -> (n,) photos with a level of that side, padded to a power of two by
      repeating the first.
    level_shapes: side -> (n, Lh, Lw): the padded shape of that side's levels in the atlas.
    canvas_shape: (H, W) of the photos' canvas (:func:`pad_to_canvas`).
  """
  shapes: list[tuple[int, int]]
  per_image: list[np.ndarray]
  boxes: np.ndarray
  origin: np.ndarray
  row_stride: np.ndarray
  members: dict[int, np.ndarray]
  level_shapes: dict[int, tuple[int, int, int]]
  canvas_shape: tuple[int, int]


def _level_shape(canvas_hw: tuple[int, int], side: int, input_size: int) -> tuple[int, int]:
  """(Lh, Lw) of a canvas's level for ``side``, rounded up to a multiple of ROW_GROUP."""
  if side == input_size:
    return canvas_hw
  return tuple(-(-level_length(n, side, input_size) // ROW_GROUP) * ROW_GROUP
               for n in canvas_hw)


def scan_layout(shapes: Sequence[tuple[int, int]], options: ScanOptions = ScanOptions()
                ) -> ScanLayout:
  """The windows of photos of the given (height, width) shapes and their place in the atlas.

  The canvas is that of :func:`pad_to_canvas` for photos of these shapes.
  """
  shapes = [(int(h), int(w)) for h, w in shapes]
  canvas_hw = canvas_shape(shapes)
  grids = [window_grid(h, w, options) for h, w in shapes]
  per_image = [g[0] for g in grids]
  owner = np.concatenate([np.full(len(b), i, np.int64) for i, b in enumerate(per_image)])
  boxes = np.concatenate(per_image)
  cells = np.concatenate([g[1] for g in grids]).astype(np.int64)
  origin = np.zeros(len(boxes), np.int64)
  row_stride = np.zeros(len(boxes), np.int64)
  members, level_shapes, base = {}, {}, 0
  for side in np.unique(boxes[:, 2]).tolist():
    of_side = boxes[:, 2] == side
    photos = np.unique(owner[of_side])
    members[side] = _pad(photos.astype(np.int32), 1 << (len(photos) - 1).bit_length())
    height, width = _level_shape(canvas_hw, side, options.input_size)
    level_shapes[side] = (len(members[side]), height, width)
    slot = np.searchsorted(photos, owner[of_side])
    origin[of_side] = base + (slot * height + cells[of_side, 1]) * width + cells[of_side, 0]
    row_stride[of_side] = width
    base += len(members[side]) * height * width
  if base >= 2 ** 31:
    raise ValueError(f"the pyramid of these {len(shapes)} photos has {base} pixels, more than "
                     "int32 indexes: scan fewer photos per call")
  return ScanLayout(shapes, per_image, boxes, origin.astype(np.int32),
                    row_stride.astype(np.int32), members, level_shapes, canvas_hw)


def make_atlas(canvas: jax.Array, layout: ScanLayout, options: ScanOptions = ScanOptions()
               ) -> jax.Array:
  """Every pyramid level of a scan call, on the device: (P, 3) float32 pixels in [0, 1].

  Each photo is resized once per window side (:func:`level_matrix` along each axis, applied by
  bands of ROW_GROUP level rows, each reading only the photo rows its filter reaches). Level
  rows and columns past a photo's own level are zero; padding of the canvas is never read.
  The levels of each side (``layout.level_shapes``) are flattened and joined in side order.

  Args:
    canvas: (N, H, W, 3) photos on the device (:func:`pad_to_canvas`), replicated on a mesh.
    layout: :func:`scan_layout` of the photos.
    options: the scan options (input size and resize method).
  """
  if tuple(canvas.shape[1:3]) != tuple(layout.canvas_shape):
    raise ValueError(f"canvas of {tuple(canvas.shape[1:3])} pixels, but the layout was made for "
                     f"{tuple(layout.canvas_shape)} (pad_to_canvas of the same photos)")
  size = options.input_size
  levels = []
  for side, members in layout.members.items():
    if side == size:  # every filter is the identity at scale 1
      levels.append(_as_level(canvas, jnp.asarray(members)))
      continue
    axes = []
    for axis, n_out in ((0, layout.level_shapes[side][1]), (1, layout.level_shapes[side][2])):
      n_in = int(canvas.shape[1 + axis])
      mats = [level_matrix(layout.shapes[i][axis], side, size, options.method) for i in members]
      spans = [_band_spans(m) for m in mats]
      taps = min(n_in, max(int(np.max(last - first)) + 1 for first, last in spans))
      bands = [_band_taps(m, first, n_out, n_in, taps) for m, (first, _) in zip(mats, spans)]
      axes += [jnp.asarray(np.stack([b[0] for b in bands])),
               jnp.asarray(np.stack([b[1] for b in bands]))]
    levels.append(_make_levels(canvas, jnp.asarray(members), *axes))
  return _join(levels)


@jax.jit
def _join(levels: list[jax.Array]) -> jax.Array:
  return jnp.concatenate([level.reshape(-1, level.shape[-1]) for level in levels])


def window_starts(layout: ScanLayout, idx: np.ndarray, size: int, batch: int) -> np.ndarray:
  """(batch, size) int32 atlas index of each row of the windows ``idx`` (padded with the first).

  Args:
    layout: :func:`scan_layout` of the scan.
    idx: (B,) windows, B <= batch.
    size: the model's input size.
    batch: rows of the result; rows past B repeat the first window.
  """
  idx = _pad(np.asarray(idx), batch)
  return (layout.origin[idx, None]
          + np.arange(size, dtype=np.int32)[None, :] * layout.row_stride[idx, None])


def window_batches(layout: ScanLayout, size: int, batch: int) -> list[np.ndarray]:
  """:func:`window_starts` of every window of a scan, ``batch`` windows at a time, in order."""
  n = len(layout.boxes)
  return [window_starts(layout, np.arange(start, min(n, start + batch)), size, batch)
          for start in range(0, n, batch)]


def _gather_windows(atlas: jax.Array, starts: jax.Array) -> jax.Array:
  """(B, size, size, C) windows: row ``r`` of window ``b`` is ``atlas[starts[b, r]:][:size]``."""
  n_windows, size = starts.shape

  def row(start):
    return lax.dynamic_slice(atlas, (start, 0), (size, atlas.shape[-1]))

  rows = jax.vmap(row)(starts.reshape(-1))  # (B * size, size, C): one gather of pixel rows
  return rows.reshape(n_windows, size, size, atlas.shape[-1])


cut_windows = jax.jit(_gather_windows)


def scan_images(variables: PyTree, images: Sequence[np.ndarray],
                options: ScanOptions = ScanOptions(), mesh: Mesh | None = None, *,
                dtype: Any = jnp.float32, impl: str = "auto") -> list[ScanResult]:
  """Scans photos of any sizes with every window and classifies the windows.

  Args:
    variables: model variables (``{'params', 'batch_stats'}``) for ``options.input_size``.
    images: photos, each (H_i, W_i, 3), uint8 (0-255) or float (0-1).
    options: the scan options.
    mesh: optional one-axis mesh named ``data``; window batches are sharded over it.
    dtype: compute dtype of the classifier (the run's ``config.dtype``).
    impl: the model implementation (the run's ``config.model.impl``).

  Returns:
    One :class:`ScanResult` per photo, in order.

  Raises:
    ValueError: a photo is not (H, W, 3) or is smaller than the smallest window.
  """
  check_options(options)
  if not images:
    return []
  images = [np.asarray(im) for im in images]
  for i, im in enumerate(images):
    _check_photo(im, i)
  layout = scan_layout([im.shape[:2] for im in images], options)
  n_dev = 1 if mesh is None else mesh.devices.size
  batch = max(n_dev, -(-options.batch_size // n_dev) * n_dev)
  place_batch, place_all = _placements(mesh)
  atlas = make_atlas(place_all(pad_to_canvas(images)), layout, options)
  variables = place_all(variables)
  classify = functools.partial(window_probabilities, dtype=jnp.dtype(dtype),
                               impl=models.resolve_impl(impl))
  probs_dev = [classify(variables, cut_windows(atlas, place_batch(starts)))
               for starts in window_batches(layout, options.input_size, batch)]
  probs = np.concatenate(jax.device_get(probs_dev))[:len(layout.boxes)]
  results, start = [], 0
  for b in layout.per_image:
    p = probs[start:start + len(b)]
    start += len(b)
    best = int(np.argmax(p))
    results.append(ScanResult(boxes=b, probs=p, best_box=b[best], best_prob=float(p[best]),
                              face_present=bool(detected(p[best], options.threshold)),
                              threshold=float(options.threshold)))
  return results


def _placements(mesh: Mesh | None):
  """(place a batch, place a replicated value) for ``mesh`` (plain device_put without one)."""
  if mesh is None:
    return jax.device_put, jax.device_put
  return (functools.partial(jax.device_put, device=NamedSharding(mesh, P(DATA_AXIS))),
          functools.partial(jax.device_put, device=NamedSharding(mesh, P())))


def scan_image(variables: PyTree, image: np.ndarray, options: ScanOptions = ScanOptions(),
               mesh: Mesh | None = None, *, dtype: Any = jnp.float32,
               impl: str = "auto") -> ScanResult:
  """Scans one (H, W, 3) photo; see :func:`scan_images`."""
  return scan_images(variables, [image], options, mesh, dtype=dtype, impl=impl)[0]


def detections(result: ScanResult, threshold: float | None = None) -> tuple[np.ndarray, np.ndarray]:
  """The windows detected at ``threshold`` (default: the scan's), highest probability first.

  Returns:
    ``(boxes (D, 3), probs (D,))``.
  """
  threshold = result.threshold if threshold is None else threshold
  keep = np.flatnonzero(detected(result.probs, threshold))
  keep = keep[np.argsort(-result.probs[keep], kind="stable")]
  return result.boxes[keep], result.probs[keep]


# --------------------------------------------------------------------------------------------
# Photos on disk
# --------------------------------------------------------------------------------------------


def read_photo(path: str | os.PathLike) -> np.ndarray:
  """Reads a photo as (H, W, 3) uint8 RGB; greyscale, palette and RGBA photos are converted.

  Raises:
    DataError: the file is missing, empty or cannot be decoded.
  """
  path = os.fspath(path)
  try:
    if os.path.getsize(path) == 0:
      raise DataError(f"{path}: empty file (0 bytes)")
    with Image.open(path) as im:
      if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")  # composite on white: transparent areas read as background
        im = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
      photo = np.asarray(im.convert("RGB"), dtype=np.uint8)
  except DataError:
    raise
  except FileNotFoundError:
    raise DataError(f"{path}: image file not found") from None
  except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, ... on bad files.
    raise DataError(f"{path}: cannot read image ({type(e).__name__}: {e})") from None
  if photo.shape[0] == 0 or photo.shape[1] == 0:
    raise DataError(f"{path}: image has zero size")
  return photo


def photo_files(path: str | os.PathLike) -> list[Path]:
  """A photo file itself, or the photos in a folder (sorted, not recursive).

  Raises:
    DataError: the path does not exist, or the folder holds no photo.
  """
  path = Path(path)
  if path.is_dir():
    files = sorted(p for p in path.iterdir()
                   if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
      raise DataError(f"{path}: folder holds no image ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    return files
  if not path.exists():
    raise DataError(f"{path}: no such file or folder")
  return [path]


def scan_files(variables: PyTree, paths: Sequence[str | os.PathLike],
               options: ScanOptions = ScanOptions(), mesh: Mesh | None = None,
               images_per_call: int = 32, pixels_per_call: int = 1 << 24, progress: bool = False,
               *, dtype: Any = jnp.float32, impl: str = "auto"
               ) -> tuple[dict[str, ScanResult], dict[str, str]]:
  """Reads and scans photo files; a bad file is reported and the others still scanned.

  Args:
    variables: model variables.
    paths: photo files.
    options: the scan options.
    mesh: optional device mesh.
    images_per_call: most photos per :func:`scan_images` call.
    pixels_per_call: most canvas pixels per call (photos x the largest height x the largest
      width; a larger photo is scanned alone); with ``images_per_call`` it bounds the device
      memory of the canvas and its pyramid.
    progress: show a tqdm progress bar (over photos).
    dtype: compute dtype of the classifier (the run's ``config.dtype``).
    impl: the model implementation (the run's ``config.model.impl``).

  Returns:
    ``(results, errors)``: ScanResults and one-line error messages, keyed by ``str(path)``.
  """
  results: dict[str, ScanResult] = {}
  errors: dict[str, str] = {}
  bar = None
  if progress:
    from tqdm.auto import tqdm
    bar = tqdm(total=len(paths), unit="photo", dynamic_ncols=True)
  names, photos, n_read = [], [], 0

  def flush():
    results.update(zip(names, scan_images(variables, photos, options, mesh, dtype=dtype,
                                          impl=impl)))
    if bar is not None:
      bar.update(n_read)
    names.clear()
    photos.clear()

  for path in paths:
    try:
      photo = read_photo(path)
      window_sides(photo.shape[0], photo.shape[1], options)
    except ValueError as e:  # DataError is a ValueError
      msg = str(e)
      errors[str(path)] = msg if msg.startswith(str(path)) else f"{path}: {msg}"
      if bar is not None:
        bar.update(1)
      continue
    shapes = [p.shape[:2] for p in photos] + [photo.shape[:2]]
    pixels = len(shapes) * max(h for h, _ in shapes) * max(w for _, w in shapes)  # the canvas
    if photos and (len(photos) == images_per_call or pixels > pixels_per_call):
      flush()
      n_read = 0
    names.append(str(path))
    photos.append(photo)
    n_read += 1
  if photos:
    flush()
  if bar is not None:
    bar.close()
  return results, errors
