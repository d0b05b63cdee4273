"""Whole-photo face detection with a trained face / not-face classifier, as pure functions.

A photo is scanned with square windows of a few sides at a stride proportional to the side
(:mod:`jaxface.windows`: :class:`ScanOptions`, the windows of a photo), cut from an image
pyramid on the device (:mod:`jaxface.pyramid`), and every window is classified in batched,
jitted calls through :func:`jaxface.models.encode` (:func:`window_probabilities`: eval mode,
in the run's compute ``dtype`` and model ``impl``; the face probability is the sigmoid of
``y_logit``). ``experiments/bench_detect.py`` times the scan against that inference alone
(figures in experiments/results/detect_whole_images.md).

With a mesh (one axis named ``data``), the window batch is sharded over it and the photos and
variables are replicated.

Boxes are ``(x0, y0, side)`` in photo pixels (x0 from the left, y0 from the top). A window is a
detection when its face probability is above the threshold
(:func:`jaxface.eval.operating_point.detected`, the rule of every evaluation); greedy
non-maximum suppression (:func:`nms`, jitted on padded arrays, vmapped over photos by
:func:`nms_detections`) leaves one box per face. Whole-photo evaluation (faces found on
portraits at a threshold calibrated on non-face photos) is :mod:`jaxface.eval.whole_photos`.
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
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from PIL import Image

from jaxface import models
from jaxface.data import IMAGE_EXTENSIONS, DataError
from jaxface.eval.operating_point import detected
from jaxface.pyramid import cut_windows, make_atlas, pad_to_canvas, scan_layout, window_batches
# The scan's options and windows are part of this module's interface.
from jaxface.windows import (RESIZE_METHODS, ScanOptions, check_options,  # noqa: F401
                             window_boxes, window_grid, window_sides)  # noqa: F401

PyTree = Any
DATA_AXIS = "data"


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


# --------------------------------------------------------------------------------------------
# Non-maximum suppression
# --------------------------------------------------------------------------------------------


def box_corners(boxes: Any, xp: Any = np) -> Any:
  """Boxes as corners: (..., 3) squares ``(x0, y0, side)`` or (..., 4) ``(x0, y0, x1, y1)``.

  Args:
    boxes: (..., 3) or (..., 4) boxes (NumPy or JAX, as ``xp``).
    xp: ``numpy`` or ``jax.numpy``.

  Returns:
    (..., 4) ``(x0, y0, x1, y1)``.
  """
  if boxes.shape[-1] == 4:
    return boxes
  if boxes.shape[-1] != 3:
    raise ValueError(f"boxes must be (..., 3) squares or (..., 4) corners, got {boxes.shape}")
  return xp.concatenate([boxes[..., :2], boxes[..., :2] + boxes[..., 2:3]], axis=-1)


def corner_iou(box: Any, boxes: Any, xp: Any = np) -> Any:
  """Intersection over union of one corner box (4,) with many (N, 4); 0 where both are empty."""
  iw = xp.clip(xp.minimum(box[2], boxes[:, 2]) - xp.maximum(box[0], boxes[:, 0]), 0, None)
  ih = xp.clip(xp.minimum(box[3], boxes[:, 3]) - xp.maximum(box[1], boxes[:, 1]), 0, None)
  inter = iw * ih
  union = ((box[2] - box[0]) * (box[3] - box[1])
           + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) - inter)
  return xp.where(union > 0, inter / xp.where(union > 0, union, 1), 0.0)


@functools.partial(jax.jit, static_argnames=("max_out",))
def nms(boxes: jax.Array, scores: jax.Array, iou_threshold: float | jax.Array, max_out: int,
        valid: jax.Array | None = None) -> jax.Array:
  """Greedy non-maximum suppression on fixed-size (padded) arrays; vmappable over photos.

  The highest-scoring box left is kept, and every box left that overlaps it with IoU above
  ``iou_threshold`` is dropped, until ``max_out`` boxes are kept or none is left. Equal scores
  go by index.

  Args:
    boxes: (N, 3) squares ``(x0, y0, side)`` as the scanner gives them, or (N, 4) corners.
    scores: (N,) scores (face probabilities).
    iou_threshold: overlap above which a lower-scoring box is dropped, in (0, 1].
    max_out: the most boxes kept (static).
    valid: (N,) bool; boxes that are not valid (padding, or below a detection threshold) are
      never kept and drop nothing. Default: every box.

  Returns:
    (max_out,) int32 indices into ``boxes`` of the kept boxes, highest score first, then -1.
  """
  if boxes.shape[0] == 0:
    return jnp.full((max_out,), -1, jnp.int32)
  order = jnp.argsort(-scores, stable=True)
  corners = box_corners(jnp.asarray(boxes, jnp.float32), jnp)[order]
  alive = (jnp.ones(scores.shape, bool) if valid is None else jnp.asarray(valid, bool))[order]

  def keep_next(i, carry):
    alive, kept = carry
    first = jnp.argmax(alive)  # the first alive box in score order
    found = alive[first]
    overlaps = corner_iou(corners[first], corners, jnp) > iou_threshold
    alive = jnp.where(found, alive & ~overlaps, alive).at[first].set(False)
    return alive, kept.at[i].set(jnp.where(found, order[first], -1).astype(jnp.int32))

  _, kept = jax.lax.fori_loop(0, max_out, keep_next,
                              (alive, jnp.full((max_out,), -1, jnp.int32)))
  return kept


@functools.partial(jax.jit, static_argnames=("max_out",))
def _nms_photos(boxes: jax.Array, scores: jax.Array, valid: jax.Array,
                iou_threshold: jax.Array, max_out: int) -> jax.Array:
  """:func:`nms` of each photo: (P, N, 3), (P, N), (P, N) -> (P, max_out)."""
  return jax.vmap(lambda b, p, v: nms(b, p, iou_threshold, max_out, v))(boxes, scores, valid)


def _bucket(n: int) -> int:
  """``n`` rounded up to a power of two (at least 16): few shapes to compile."""
  return max(16, 1 << (max(n, 1) - 1).bit_length())


def nms_detections(results: Sequence[ScanResult], iou_threshold: float,
                   threshold: float | None = None, max_out: int = 64
                   ) -> list[tuple[np.ndarray, np.ndarray]]:
  """The detections of each scan after :func:`nms`: one box per face, highest first.

  The photos' windows are padded to one size and suppressed in one vmapped call.

  Args:
    results: scans of photos.
    iou_threshold: the NMS overlap, in (0, 1].
    threshold: the detection threshold (default: each scan's); ``-inf`` keeps every window.
    max_out: the most boxes kept per photo.

  Returns:
    Per photo ``(boxes (D, 3) int32, probs (D,) float32)``, D <= ``max_out``.
  """
  if not results:
    return []
  n = _bucket(max(len(r.boxes) for r in results))
  boxes = np.zeros((len(results), n, 3), np.int32)
  probs = np.zeros((len(results), n), np.float32)
  valid = np.zeros((len(results), n), bool)
  for i, r in enumerate(results):
    t = r.threshold if threshold is None else threshold
    boxes[i, :len(r.boxes)], probs[i, :len(r.probs)] = r.boxes, r.probs
    valid[i, :len(r.probs)] = detected(r.probs, t)
  kept = np.asarray(_nms_photos(boxes, probs, valid, jnp.float32(iou_threshold), max_out))
  out = []
  for r, k in zip(results, kept):
    k = k[k >= 0]
    out.append((r.boxes[k], r.probs[k]))
  return out


@functools.partial(jax.jit, static_argnames=("min_neighbours",))
def support_scores(boxes: jax.Array, probs: jax.Array, iou_threshold: float | jax.Array,
                   min_neighbours: int, valid: jax.Array | None = None) -> jax.Array:
  """Each window's score when a detection needs ``min_neighbours`` overlapping detections.

  A window's neighbours are itself and the windows overlapping it with IoU above
  ``iou_threshold``; its support score is the lower of its probability and the
  ``min_neighbours``-th highest probability among its neighbours. A window is above a threshold
  in support score exactly when it and at least ``min_neighbours - 1`` of its neighbours are
  above it in probability (the grouping rule of classical cascades), so every threshold rule
  applies to these scores unchanged. ``min_neighbours`` 1 gives the probabilities back.

  Args:
    boxes: (N, 3) squares ``(x0, y0, side)`` or (N, 4) corners.
    probs: (N,) face probabilities.
    iou_threshold: the overlap above which two windows are neighbours.
    min_neighbours: windows (the window itself included) needed above a threshold (static).
    valid: (N,) bool; invalid windows (padding) neither count as neighbours nor score.

  Returns:
    (N,) float32 support scores; 0 (never a detection: thresholds are scores, >= 0) for a
    window with fewer than ``min_neighbours`` valid neighbours, and for an invalid one.
  """
  if min_neighbours < 1:
    raise ValueError(f"min_neighbours must be >= 1, got {min_neighbours}")
  probs = jnp.asarray(probs, jnp.float32)
  valid = jnp.ones(probs.shape, bool) if valid is None else jnp.asarray(valid, bool)
  scores = jnp.where(valid, probs, 0.0)
  if min_neighbours == 1 or probs.shape[0] == 0:
    return scores
  corners = box_corners(jnp.asarray(boxes, jnp.float32), jnp)
  iou = jax.vmap(lambda box: corner_iou(box, corners, jnp))(corners)  # (N, N)
  neighbours = (iou > iou_threshold) | jnp.eye(probs.shape[0], dtype=bool)
  neighbour_probs = jnp.where(neighbours & valid[None, :], scores[None, :], -jnp.inf)
  columns = jnp.arange(probs.shape[0])
  for _ in range(min(min_neighbours, probs.shape[0]) - 1):  # drop the highest k - 1 (k small;
    top = jnp.argmax(neighbour_probs, axis=1)  # 15x faster than lax.top_k on a CPU)
    neighbour_probs = jnp.where(columns[None, :] == top[:, None], -jnp.inf, neighbour_probs)
  kth = jnp.max(neighbour_probs, axis=1)
  if min_neighbours > probs.shape[0]:  # fewer windows in the photo than needed
    kth = jnp.zeros_like(kth)
  return jnp.where(valid, jnp.maximum(jnp.minimum(scores, kth), 0.0), 0.0)


def with_support(results: Sequence[ScanResult], iou_threshold: float, min_neighbours: int,
                 chunk: int = 16) -> list[ScanResult]:
  """Scans whose probabilities are replaced by :func:`support_scores` (1: unchanged).

  The photos' windows are padded to one size and scored in vmapped chunks of ``chunk`` photos;
  ``best_box`` / ``best_prob`` / ``face_present`` follow the new scores.
  """
  if min_neighbours == 1 or not results:
    return list(results)
  n = _bucket(max(len(r.boxes) for r in results))
  score = jax.jit(jax.vmap(lambda b, p, iou, v: support_scores(b, p, iou, min_neighbours, v),
                           in_axes=(0, 0, None, 0)))
  out = []
  for start in range(0, len(results), chunk):
    part = results[start:start + chunk]
    boxes = np.zeros((len(part), n, 3), np.int32)
    probs = np.zeros((len(part), n), np.float32)
    valid = np.zeros((len(part), n), bool)
    for i, r in enumerate(part):
      boxes[i, :len(r.boxes)], probs[i, :len(r.probs)], valid[i, :len(r.probs)] = (
          r.boxes, r.probs, True)
    scores = np.asarray(score(boxes, probs, jnp.float32(iou_threshold), valid))
    for r, s in zip(part, scores):
      s = s[:len(r.probs)]
      best = int(np.argmax(s)) if len(s) else 0
      best_prob = float(s[best]) if len(s) else 0.0
      out.append(r._replace(probs=s, best_box=r.boxes[best] if len(s) else r.best_box,
                            best_prob=best_prob,
                            face_present=bool(detected(best_prob, r.threshold))))
  return out


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
