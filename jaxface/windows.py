"""The windows of a whole-photo scan: how a photo is scanned, and where its windows lie.

A photo is scanned with square windows of a few sides (fractions of its shorter side, by
default a fifth to all of it, :func:`window_sides`) at a stride proportional to the side. Each
window is an ``input_size`` square of the photo resized by ``input_size / side`` (a *level* of
the image pyramid, :mod:`jaxface.pyramid`), so the windows of a side are laid out on the
level's pixel grid (:func:`window_grid`).

Boxes are ``(x0, y0, side)`` in photo pixels (x0 from the left, y0 from the top).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from jaxface import models

RESIZE_METHODS = ("lanczos3", "lanczos5", "linear", "cubic")


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


def level_length(length: int, side: int, input_size: int) -> int:
  """Pixels along one axis of a photo's level for windows of ``side`` (those inside the photo)."""
  return length * input_size // side


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
