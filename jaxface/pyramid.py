"""The image pyramid of a whole-photo scan, on the device, and the windows cut from it.

For each window side ``S`` the photo is resized once, on the device, by ``input_size / S`` (a
*level*, :func:`level_matrix`: the antialiased filter of ``jax.image.scale_and_translate``,
Lanczos-3 by default, the filter the training crops were made with), and the windows are the
``input_size`` squares of that level, cut by slicing. A level is applied along each axis by
bands: each group of ROW_GROUP level rows reads only the photo rows its filter reaches, so a
level costs a few operations per photo pixel whatever the scale, and cutting costs little
beside classifying the windows. A window's pixels near its border see the photo just outside
it (as a resize of the whole photo does), not the zero padding of a crop.

Photos of different sizes: the photos of one call are zero-padded to one canvas (height and
width rounded up to a multiple of 64, which bounds the number of compiled shapes). Padding is
never read: a level's filter weights stop at its own photo's edge. All levels of a call are
flattened into one array of pixels (the *atlas*, :func:`make_atlas`), so a batch of windows of
any sides and photos is cut in one gather of pixel rows (:func:`cut_windows`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxface.windows import ScanOptions, level_length, window_grid

CANVAS_MULTIPLE = 64  # photos of one call are padded to a canvas of a multiple of this
ROW_GROUP = 8  # level rows (and columns) resized together from one band of photo rows


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


def _pad(values: np.ndarray, size: int) -> np.ndarray:
  return np.concatenate([values, np.full(size - len(values), values[0], values.dtype)])


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
