"""Whole-photo face detection with a trained face / not-face classifier, as pure functions.

A photo is scanned with square windows of a few sides (fractions of its shorter side, by
default a fifth to all of it) at a stride proportional to the side. Every window is cut and
resized to the model's input size on the device and classified in batched, jitted calls through
:func:`jaxface.models.encode` (eval mode; the face probability is the sigmoid of ``y_logit``).

Cutting and resizing: a window of side ``S`` is sliced out of the photo and resized by two
matrix products with a fixed ``(input_size, S)`` weight matrix, the antialiased filter of
``jax.image.resize`` (Lanczos-3 by default, the filter the training crops were made with). The
result is that of resizing the crop alone (it equals ``PIL.Image.resize`` of the crop), so a
window never reads a pixel outside itself.

Photos of different sizes: the photos of one call are zero-padded to one canvas (height and
width rounded up to a multiple of 64, which bounds the number of compiled shapes). Padding is
never read, because every window lies inside its own photo. Windows are sorted by side and
packed across photos into classifier batches of ``batch_size``; each run of one side in a batch
is cut on its own (:func:`cut_batch`), at a power-of-two length, so the cut costs about as
much as the windows it cuts (a few large windows are not cut as a whole batch).

With a mesh (one axis named ``data``), the window batch is sharded over it and the photos and
variables are replicated.

Boxes are ``(x0, y0, side)`` in photo pixels (x0 from the left, y0 from the top).

Whole-image evaluation: :func:`threshold_for_false_rate` picks the threshold from the non-face
photos' highest window probabilities, :func:`false_detections` counts non-face photos with a
detection, and :func:`faces_found` counts portraits whose face is found, by group. Results of
these measurements are in experiments/results/detect_whole_images.md.
"""

from __future__ import annotations

import csv
import functools
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
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
    method: resize filter, a ``jax.image.resize`` method ('lanczos3', 'linear', 'cubic').
    batch_size: windows per classifier call (rounded up to a multiple of the device count).
    threshold: a window whose face probability is >= this is a detection.
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
    face_present: ``best_prob >= threshold``.
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


def window_boxes(height: int, width: int, options: ScanOptions = ScanOptions()) -> np.ndarray:
  """All windows of a photo: for each side, a grid that reaches every edge.

  Args:
    height: photo height in pixels.
    width: photo width in pixels.
    options: the scan options.

  Returns:
    (N, 3) int32 boxes ``(x0, y0, side)``, ordered by side, then y0, then x0.
  """
  boxes = []
  for side in window_sides(height, width, options):
    stride = max(1, round(options.stride_frac * side))
    for y0 in _starts(height, side, stride):
      for x0 in _starts(width, side, stride):
        boxes.append((x0, y0, side))
  return np.asarray(boxes, np.int32).reshape(-1, 3)


@functools.lru_cache(maxsize=256)
def resize_matrix(side: int, out_size: int, method: str = "lanczos3") -> np.ndarray:
  """The linear map of ``jax.image.resize`` (antialiased) from ``side`` to ``out_size`` pixels.

  Returns:
    (out_size, side) float32 ``W`` such that ``W @ x`` resizes a length-``side`` signal ``x``.
  """
  with jax.ensure_compile_time_eval():  # a constant, also when called while tracing
    eye = jnp.eye(side, dtype=jnp.float32)
    return np.asarray(jax.image.resize(eye, (out_size, side), method, antialias=True))


@functools.partial(jax.jit, static_argnames=("side", "out_size", "method"))
def _cut_windows(images: jax.Array, band_image: jax.Array, band_y0: jax.Array,
                 window_band: jax.Array, window_x0: jax.Array, *, side: int, out_size: int,
                 method: str) -> jax.Array:
  """Cuts windows of one side from (N, H, W, C) photos; returns (B, out, out, C) in [0, 1].

  The rows of a band (``side`` rows of a photo from ``band_y0``) are resized once for all the
  windows on it; each window then takes its ``side`` columns and resizes them. Both steps only
  read the window's own pixels, so the result is that of resizing each crop alone.
  """
  weights = jnp.asarray(resize_matrix(side, out_size, method))
  identity = side == out_size and np.allclose(resize_matrix(side, out_size, method),
                                              np.eye(side), atol=1e-6)
  channels, width = images.shape[-1], images.shape[2]

  def band(i, y):
    return lax.dynamic_slice(images[i], (y, 0, 0), (side, width, channels))

  bands = jax.vmap(band)(band_image, band_y0).astype(jnp.float32)
  if images.dtype == jnp.uint8:
    bands = bands / 255.0
  # The filter at scale 1 (Lanczos, linear) leaves the pixels as they are.
  rows = bands if identity else jnp.einsum("oh,bhwc->bowc", weights, bands)

  def window(b, x):
    return lax.dynamic_slice(rows[b], (0, x, 0), (out_size, side, channels))

  crops = jax.vmap(window)(window_band, window_x0)
  return crops if identity else jnp.einsum("pw,bowc->bopc", weights, crops)


def _bands(image_index: np.ndarray, y0: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Distinct (photo, y0) bands: ``(band_image, band_y0, window_band)``."""
  keys = np.stack([image_index, y0], axis=1).astype(np.int64)
  unique, window_band = np.unique(keys, axis=0, return_inverse=True)
  return unique[:, 0], unique[:, 1], window_band.reshape(-1)


def _pow2(n: int, multiple: int) -> int:
  """The smallest power of two >= max(n, 8), rounded up to a multiple of ``multiple``."""
  size = max(8, 1 << (max(n, 1) - 1).bit_length())
  return -(-size // multiple) * multiple


def _pad(values: np.ndarray, size: int) -> np.ndarray:
  return np.concatenate([values, np.full(size - len(values), values[0], values.dtype)])


def cut_windows(images: np.ndarray | jax.Array, image_index: np.ndarray, boxes: np.ndarray,
                out_size: int = 64, method: str = "lanczos3") -> jax.Array:
  """Cuts windows of one side out of a stack of photos and resizes them, on the device.

  Args:
    images: (N, H, W, 3) uint8 (0-255) or float (0-1) photos.
    image_index: (B,) photo of each window.
    boxes: (B, 3) windows ``(x0, y0, side)``, all of the same side, inside their photos.
    out_size: output height and width.
    method: ``jax.image.resize`` method.

  Returns:
    (B, out_size, out_size, 3) float32 crops in [0, 1].
  """
  boxes = np.asarray(boxes)
  sides = np.unique(boxes[:, 2])
  if sides.size != 1:
    raise ValueError(f"cut_windows takes windows of one side, got sides {sides.tolist()}")
  band_image, band_y0, window_band = _bands(np.asarray(image_index), boxes[:, 1])
  return _cut_windows(jnp.asarray(images), jnp.asarray(band_image, jnp.int32),
                      jnp.asarray(band_y0, jnp.int32), jnp.asarray(window_band, jnp.int32),
                      jnp.asarray(boxes[:, 0], jnp.int32), side=int(sides[0]),
                      out_size=out_size, method=method)


@jax.jit
def window_probabilities(variables: PyTree, crops: jax.Array) -> jax.Array:
  """Face probabilities (B,) of (B, S, S, 3) crops in [0, 1] (eval mode, sigmoid of y_logit)."""
  return jax.nn.sigmoid(models.encode(variables, crops, train=False).y_logit)


def _check_photo(image: np.ndarray, index: int) -> None:
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"images[{index}] must be (H, W, 3), got shape {image.shape}")


def pad_to_canvas(images: Sequence[np.ndarray]) -> np.ndarray:
  """Zero-pads photos to one (N, H, W, 3) canvas, H and W multiples of CANVAS_MULTIPLE.

  uint8 photos stay uint8 (0-255) unless mixed with float ones, when all become float (0-1).
  """
  m = CANVAS_MULTIPLE
  height = -(-max(im.shape[0] for im in images) // m) * m
  width = -(-max(im.shape[1] for im in images) // m) * m
  if all(im.dtype == np.uint8 for im in images):
    canvas = np.zeros((len(images), height, width, 3), np.uint8)
  else:  # mixed: every photo as float in [0, 1]
    canvas = np.zeros((len(images), height, width, 3), np.float32)
    images = [im.astype(np.float32) / 255.0 if im.dtype == np.uint8 else im for im in images]
  for i, im in enumerate(images):
    canvas[i, :im.shape[0], :im.shape[1]] = im
  return canvas


def scan_images(variables: PyTree, images: Sequence[np.ndarray],
                options: ScanOptions = ScanOptions(), mesh: Mesh | None = None) -> list[ScanResult]:
  """Scans photos of any sizes with every window and classifies the windows.

  Args:
    variables: model variables (``{'params', 'batch_stats'}``) for ``options.input_size``.
    images: photos, each (H_i, W_i, 3), uint8 (0-255) or float (0-1).
    options: the scan options.
    mesh: optional one-axis mesh named ``data``; window batches are sharded over it.

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
  per_image = [window_boxes(im.shape[0], im.shape[1], options) for im in images]
  owner = np.concatenate([np.full(len(b), i, np.int32) for i, b in enumerate(per_image)])
  boxes = np.concatenate(per_image)
  canvas = pad_to_canvas(images)
  n_dev = 1 if mesh is None else mesh.devices.size
  batch = max(n_dev, -(-options.batch_size // n_dev) * n_dev)
  place_batch, place_all = _placements(mesh)
  canvas_dev = place_all(canvas)
  variables = place_all(variables)
  plan = plan_batches(boxes[:, 2], batch)
  probs_dev = []
  for segments in plan:
    crops = cut_batch(canvas_dev, owner, boxes, segments, batch, options, mesh)
    probs_dev.append(window_probabilities(variables, place_batch(crops)))
  probs = np.empty(len(boxes), np.float32)
  for segments, p in zip(plan, jax.device_get(probs_dev)):
    idx = np.concatenate([seg for _, seg in segments])
    probs[idx] = np.asarray(p)[:len(idx)]
  results, start = [], 0
  for b in per_image:
    p = probs[start:start + len(b)]
    start += len(b)
    best = int(np.argmax(p))
    results.append(ScanResult(boxes=b, probs=p, best_box=b[best], best_prob=float(p[best]),
                              face_present=bool(p[best] >= options.threshold),
                              threshold=float(options.threshold)))
  return results


def plan_batches(sides: np.ndarray, batch: int) -> list[list[tuple[int, np.ndarray]]]:
  """Packs windows, grouped by side, into classifier batches.

  Args:
    sides: (N,) side of every window.
    batch: windows per batch.

  Returns:
    One list per batch of ``(side, window indices)`` segments, at most ``batch`` windows in
    all; every window is in exactly one segment, and only the last batch is short.
  """
  order = np.argsort(sides, kind="stable")
  plan = []
  for start in range(0, len(order), batch):
    chunk = order[start:start + batch]
    bounds = np.flatnonzero(np.diff(sides[chunk])) + 1
    plan.append([(int(sides[seg[0]]), seg) for seg in np.split(chunk, bounds)])
  return plan


def _placements(mesh: Mesh | None):
  """(place a batch, place a replicated value) for ``mesh`` (plain device_put without one)."""
  if mesh is None:
    return jax.device_put, jax.device_put
  return (functools.partial(jax.device_put, device=NamedSharding(mesh, P(DATA_AXIS))),
          functools.partial(jax.device_put, device=NamedSharding(mesh, P())))


def cut_batch(canvas: jax.Array, owner: np.ndarray, boxes: np.ndarray,
              segments: Sequence[tuple[int, np.ndarray]], batch: int, options: ScanOptions,
              mesh: Mesh | None = None) -> jax.Array:
  """The crops of one classifier batch: each segment cut at its side, then joined.

  A segment is cut at a power-of-two length (at least 8 and a multiple of the device count),
  which bounds the compiled shapes without cutting many padding windows; the rows of each band
  of photo rows that windows share are resized once.

  Args:
    canvas: (N, H, W, 3) photos on the device (:func:`pad_to_canvas`).
    owner: (M,) photo of every window.
    boxes: (M, 3) every window ``(x0, y0, side)``.
    segments: ``(side, window indices)`` pairs from :func:`plan_batches`.
    batch: the batch length; a short batch is padded with zero images.
    options: the scan options (input size and resize method).
    mesh: optional mesh; segment cuts are sharded over it.

  Returns:
    (batch, input_size, input_size, 3) float32 crops in the order of the segments.
  """
  n_dev = 1 if mesh is None else mesh.devices.size
  place_batch, _ = _placements(mesh)
  parts = []
  for side, idx in segments:
    band_image, band_y0, window_band = _bands(owner[idx], boxes[idx, 1])
    n_bands = _pow2(len(band_image), 1)
    size = _pow2(len(idx), n_dev)
    crops = _cut_windows(canvas, jnp.asarray(_pad(band_image, n_bands), jnp.int32),
                         jnp.asarray(_pad(band_y0, n_bands), jnp.int32),
                         place_batch(_pad(window_band, size).astype(np.int32)),
                         place_batch(_pad(boxes[idx, 0], size).astype(np.int32)),
                         side=side, out_size=options.input_size, method=options.method)
    parts.append(crops[:len(idx)])
  n = sum(len(idx) for _, idx in segments)
  if n < batch:
    parts.append(jnp.zeros((batch - n,) + parts[0].shape[1:], parts[0].dtype))
  return parts[0] if len(parts) == 1 else jnp.concatenate(parts)


def scan_image(variables: PyTree, image: np.ndarray, options: ScanOptions = ScanOptions(),
               mesh: Mesh | None = None) -> ScanResult:
  """Scans one (H, W, 3) photo; see :func:`scan_images`."""
  return scan_images(variables, [image], options, mesh)[0]


def detections(result: ScanResult, threshold: float | None = None) -> tuple[np.ndarray, np.ndarray]:
  """The windows at or above ``threshold`` (default: the scan's), highest probability first.

  Returns:
    ``(boxes (D, 3), probs (D,))``.
  """
  threshold = result.threshold if threshold is None else threshold
  keep = np.flatnonzero(result.probs >= threshold)
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
               images_per_call: int = 32, progress: bool = False
               ) -> tuple[dict[str, ScanResult], dict[str, str]]:
  """Reads and scans photo files; a bad file is reported and the others still scanned.

  Args:
    variables: model variables.
    paths: photo files.
    options: the scan options.
    mesh: optional device mesh.
    images_per_call: photos per :func:`scan_images` call (bounds the device memory).
    progress: show a tqdm progress bar (over photos).

  Returns:
    ``(results, errors)``: ScanResults and one-line error messages, keyed by ``str(path)``.
  """
  results: dict[str, ScanResult] = {}
  errors: dict[str, str] = {}
  bar = None
  if progress:
    from tqdm.auto import tqdm
    bar = tqdm(total=len(paths), unit="photo", dynamic_ncols=True)
  for start in range(0, len(paths), images_per_call):
    names, photos = [], []
    for path in paths[start:start + images_per_call]:
      try:
        photo = read_photo(path)
        window_sides(photo.shape[0], photo.shape[1], options)
      except ValueError as e:  # DataError is a ValueError
        msg = str(e)
        errors[str(path)] = msg if msg.startswith(str(path)) else f"{path}: {msg}"
        continue
      names.append(str(path))
      photos.append(photo)
    results.update(zip(names, scan_images(variables, photos, options, mesh)))
    if bar is not None:
      bar.update(len(paths[start:start + images_per_call]))
  if bar is not None:
    bar.close()
  return results, errors


# --------------------------------------------------------------------------------------------
# Whole-image evaluation
# --------------------------------------------------------------------------------------------


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
  """Intersection over union of one square box with many.

  Args:
    box: (3,) ``(x0, y0, side)``.
    boxes: (N, 3) ``(x0, y0, side)``.

  Returns:
    (N,) float64 IoU in [0, 1].
  """
  box = np.asarray(box, np.float64)
  boxes = np.asarray(boxes, np.float64).reshape(-1, 3)
  x1, y1 = box[0] + box[2], box[1] + box[2]
  bx1, by1 = boxes[:, 0] + boxes[:, 2], boxes[:, 1] + boxes[:, 2]
  iw = np.clip(np.minimum(x1, bx1) - np.maximum(box[0], boxes[:, 0]), 0, None)
  ih = np.clip(np.minimum(y1, by1) - np.maximum(box[1], boxes[:, 1]), 0, None)
  inter = iw * ih
  union = box[2] ** 2 + boxes[:, 2] ** 2 - inter
  return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def threshold_for_false_rate(max_probs: Iterable[float], max_rate: float = 0.05) -> float:
  """The lowest threshold at which at most ``max_rate`` of the non-face photos have a detection.

  A photo has a detection when its highest window probability is >= the threshold.

  Args:
    max_probs: (n,) highest window probability of each non-face photo.
    max_rate: the largest allowed share of photos with a detection.

  Returns:
    The threshold (just above the probability of the photo that would exceed the share).
  """
  m = np.sort(np.asarray(list(max_probs), np.float64))[::-1]
  if m.size == 0:
    raise ValueError("threshold_for_false_rate needs at least one non-face photo")
  if not 0 <= max_rate < 1:
    raise ValueError(f"max_rate must be in [0, 1), got {max_rate}")
  allowed = int(math.floor(max_rate * m.size + 1e-9))
  return float(np.nextafter(m[allowed], np.inf))


def false_detections(max_probs: Mapping[str, float], threshold: float) -> dict[str, Any]:
  """Share of non-face photos with a detection (highest window probability >= threshold).

  Returns:
    ``{'threshold', 'n_photos', 'n_with_detection', 'rate', 'photos_with_detection'}``.
  """
  hits = sorted(name for name, p in max_probs.items() if p >= threshold)
  n = len(max_probs)
  return {"threshold": float(threshold), "n_photos": n, "n_with_detection": len(hits),
          "rate": len(hits) / n if n else None, "photos_with_detection": hits}


_PPB_NAME = re.compile(r"^\d+_([1-6])_([fm])_", re.IGNORECASE)


def portrait_group(name: str) -> str | None:
  """The PPB group (LF, LM, DF, DM) coded in a portrait's file name, e.g. ``0612_6_f_RW.jpg``.

  Fitzpatrick types 1-3 are lighter (L), 4-6 darker (D). Returns None for other names.
  """
  match = _PPB_NAME.match(Path(name).name)
  if not match:
    return None
  tone = "L" if int(match.group(1)) <= 3 else "D"
  return tone + match.group(2).upper()


def load_face_boxes(csv_path: str | os.PathLike) -> dict[str, dict[str, Any]]:
  """Reads ppb-faces' faces.csv: portrait file name -> ``{'group', 'box'}``.

  ``box`` is ``(x0, y0, side)`` in portrait pixels from ``box_cx, box_cy, box_side``, or None
  where the row has no box.

  Raises:
    DataError: the file is missing or lacks a column.
  """
  csv_path = Path(csv_path)
  if not csv_path.exists():
    raise DataError(f"{csv_path}: face-box CSV not found")
  with csv_path.open(newline="") as f:
    rows = list(csv.DictReader(f))
  needed = {"portrait", "group", "box_cx", "box_cy", "box_side"}
  missing = needed - set(rows[0] if rows else ())
  if missing:
    raise DataError(f"{csv_path}: missing column(s) {', '.join(sorted(missing))}")
  faces = {}
  for row in rows:
    box = None
    if row["box_side"].strip():
      side = float(row["box_side"])
      box = (float(row["box_cx"]) - side / 2, float(row["box_cy"]) - side / 2, side)
    faces[row["portrait"]] = {"group": row["group"], "box": box}
  return faces


def _rates(flags: Mapping[str, list[bool]]) -> dict[str, dict[str, Any]]:
  out = {}
  for group in sorted(flags):
    hits = flags[group]
    out[group] = {"n": len(hits), "found": int(sum(hits)),
                  "rate": sum(hits) / len(hits) if hits else None}
  return out


def faces_found(scans: Mapping[str, ScanResult], faces: Mapping[str, Mapping[str, Any]],
                threshold: float, min_iou: float = 0.3) -> dict[str, Any]:
  """Portraits whose face is found, per group.

  A portrait listed in ``faces`` with a box counts as found when a window at or above
  ``threshold`` overlaps the box with IoU >= ``min_iou``; one without a box, when any window is
  at or above ``threshold``. Portraits absent from ``faces`` (no box: the cascade missed them)
  count as found with any window at or above the threshold and take their group from the file
  name (:func:`portrait_group`); they are reported on their own and in ``all``.

  Args:
    scans: scan results keyed by portrait path or file name.
    faces: :func:`load_face_boxes` output, keyed by file name.
    threshold: detection threshold.
    min_iou: overlap needed with the face box.

  Returns:
    ``{'threshold', 'min_iou', 'with_box', 'without_box', 'all', 'missed'}``; each of the
    first three maps group -> ``{'n', 'found', 'rate'}`` (plus ``'overall'``), and ``missed``
    lists the portraits not found.
  """
  with_box: dict[str, list[bool]] = {}
  without_box: dict[str, list[bool]] = {}
  missed = []
  for key, scan in scans.items():
    name = Path(key).name
    above = scan.probs >= threshold
    entry = faces.get(name)
    if entry is not None and entry.get("box") is not None:
      found = bool(np.any(above & (iou(entry["box"], scan.boxes) >= min_iou)))
      with_box.setdefault(entry["group"], []).append(found)
    else:
      group = entry["group"] if entry is not None else (portrait_group(name) or "unknown")
      found = bool(np.any(above))
      without_box.setdefault(group, []).append(found)
    if not found:
      missed.append(name)
  combined = {g: with_box.get(g, []) + without_box.get(g, [])
              for g in set(with_box) | set(without_box)}

  def section(flags):
    rates = _rates(flags)
    every = [f for hits in flags.values() for f in hits]
    rates["overall"] = {"n": len(every), "found": int(sum(every)),
                        "rate": sum(every) / len(every) if every else None}
    return rates

  return {"threshold": float(threshold), "min_iou": float(min_iou),
          "with_box": section(with_box), "without_box": section(without_box),
          "all": section(combined), "missed": sorted(missed)}


def non_face_max_probs(variables: PyTree, photos: Sequence[str | os.PathLike],
                       options: ScanOptions = ScanOptions(), mesh: Mesh | None = None,
                       progress: bool = False) -> tuple[dict[str, float], dict[str, str]]:
  """Scans the non-face photos that calibrate the threshold.

  Returns:
    ``(max_probs, errors)``: file name -> highest window probability of each readable photo,
    and the unreadable photos' messages by path.

  Raises:
    DataError: none of the photos could be read.
  """
  scans, errors = scan_files(variables, photos, options, mesh, progress=progress)
  if not scans:
    raise DataError(f"none of the {len(photos)} non-face photos could be read to calibrate "
                    "the threshold")
  return {Path(k).name: r.best_prob for k, r in scans.items()}, errors


def whole_image_figures(scans: Mapping[str, ScanResult], faces: Mapping[str, Mapping[str, Any]],
                        non_face_max_probs: Mapping[str, float], default_threshold: float = 0.5,
                        max_false_rate: float = 0.05, min_iou: float = 0.3) -> dict[str, Any]:
  """The figures of a whole-image evaluation from finished scans (no device work).

  Args:
    scans: the portraits' scan results, keyed by path or file name.
    faces: :func:`load_face_boxes` of their faces.csv (``{}``: groups from the file names).
    non_face_max_probs: file name -> highest window probability of each non-face photo.
    default_threshold: the scan's own threshold, reported beside the calibrated one.
    max_false_rate: largest allowed share of non-face photos with a detection.
    min_iou: overlap needed with a face box.

  Returns:
    ``threshold`` (:func:`threshold_for_false_rate`), ``max_false_rate``,
    ``false_detections``, ``faces_found`` (at that threshold), ``faces_found_at_default``,
    ``false_detections_at_default``, ``n_windows_per_portrait`` and ``portraits``: per file
    name ``{'file', 'group', 'best_box', 'best_prob', 'found'}`` (found at the calibrated
    threshold).
  """
  if not non_face_max_probs:
    raise DataError("no readable non-face photo to calibrate the threshold")
  threshold = threshold_for_false_rate(non_face_max_probs.values(), max_false_rate)
  found = faces_found(scans, faces, threshold, min_iou)
  missed = set(found["missed"])
  portraits = {}
  for key, scan in scans.items():
    name = Path(key).name
    entry = faces.get(name)
    group = entry["group"] if entry is not None else (portrait_group(name) or "unknown")
    portraits[name] = {"file": str(key), "group": group,
                       "best_box": [int(v) for v in scan.best_box],
                       "best_prob": float(scan.best_prob), "found": name not in missed}
  return {
      "threshold": threshold, "max_false_rate": max_false_rate,
      "false_detections": false_detections(non_face_max_probs, threshold),
      "faces_found": found,
      "false_detections_at_default": false_detections(non_face_max_probs, default_threshold),
      "faces_found_at_default": faces_found(scans, faces, default_threshold, min_iou),
      "n_windows_per_portrait": (float(np.mean([len(r.boxes) for r in scans.values()]))
                                 if scans else None),
      "portraits": portraits,
  }


def evaluate_whole_images(variables: PyTree, portraits: Sequence[str | os.PathLike],
                          faces: Mapping[str, Mapping[str, Any]],
                          non_face_photos: Sequence[str | os.PathLike],
                          options: ScanOptions = ScanOptions(), mesh: Mesh | None = None,
                          max_false_rate: float = 0.05, min_iou: float = 0.3,
                          progress: bool = False) -> dict[str, Any]:
  """Scans portraits and non-face photos; faces found per group at the calibrated threshold.

  The threshold is :func:`threshold_for_false_rate` of the non-face photos' highest window
  probabilities; faces found are also given at ``options.threshold``.

  Args:
    variables: model variables.
    portraits: portrait files (e.g. ppb-faces/portraits/*.jpg).
    faces: :func:`load_face_boxes` of their faces.csv.
    non_face_photos: photo files without faces (e.g. nonface-photos/images/*.jpg).
    options: the scan options.
    mesh: optional device mesh.
    max_false_rate: largest allowed share of non-face photos with a detection.
    min_iou: overlap needed with a face box.
    progress: show progress bars.

  Returns:
    :func:`whole_image_figures`, plus ``options`` and ``errors`` (unreadable files, by path).
  """
  max_probs, errors = non_face_max_probs(variables, non_face_photos, options, mesh, progress)
  scans, portrait_errors = scan_files(variables, portraits, options, mesh, progress=progress)
  errors.update(portrait_errors)
  result = whole_image_figures(scans, faces, max_probs, options.threshold, max_false_rate,
                               min_iou)
  result.update(options=options._asdict(), errors=errors)
  return result
