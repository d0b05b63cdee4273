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
:func:`nms_detections`) leaves one box per face, and :func:`support_scores` lets a detection
need several overlapping windows (both in :mod:`jaxface.boxes`, re-exported here). Whole-photo
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
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from PIL import Image

from jaxface import models
# Boxes, NMS and neighbour support are part of this module's interface.
from jaxface.boxes import (box_corners, corner_iou, nms, nms_detections,  # noqa: F401
                           support_scores, with_support, with_support_rules)  # noqa: F401
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
# Detections
# --------------------------------------------------------------------------------------------


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
