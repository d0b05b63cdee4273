"""Boxes of detected windows: overlap, non-maximum suppression and neighbour support.

Boxes are ``(x0, y0, side)`` squares in photo pixels (as the scanner of :mod:`jaxface.detect`
gives them) or ``(x0, y0, x1, y1)`` corners. Greedy non-maximum suppression (:func:`nms`,
jitted on padded arrays, vmapped over photos by :func:`nms_detections`) leaves one box per face;
:func:`support_scores` scores each window by the detections around it (a detection then needs
several overlapping windows above the threshold). The scan results these functions take are
:class:`jaxface.detect.ScanResult`; :mod:`jaxface.detect` re-exports every public name here.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxface.eval.operating_point import detected

if TYPE_CHECKING:
  from jaxface.detect import ScanResult


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


def _padded(results: Sequence[ScanResult], n: int
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The scans' windows padded to ``n``: boxes (P, n, 3), probs (P, n), present (P, n)."""
  boxes = np.zeros((len(results), n, 3), np.int32)
  probs = np.zeros((len(results), n), np.float32)
  present = np.zeros((len(results), n), bool)
  for i, r in enumerate(results):
    boxes[i, :len(r.boxes)], probs[i, :len(r.probs)], present[i, :len(r.probs)] = (
        r.boxes, r.probs, True)
  return boxes, probs, present


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
  boxes, probs, present = _padded(results, _bucket(max(len(r.boxes) for r in results)))
  thresholds = np.array([r.threshold if threshold is None else threshold for r in results],
                        np.float64)
  valid = present & detected(probs, thresholds[:, None])
  kept = np.asarray(_nms_photos(boxes, probs, valid, jnp.float32(iou_threshold), max_out))
  out = []
  for r, k in zip(results, kept):
    k = k[k >= 0]
    out.append((r.boxes[k], r.probs[k]))
  return out


def _support_rules(boxes: jax.Array, probs: jax.Array, iou_threshold: float | jax.Array,
                   rules: tuple[int, ...], valid: jax.Array | None = None) -> jax.Array:
  """:func:`support_scores` of every rule in ``rules`` (ascending), in one pass: (R, N)."""
  probs = jnp.asarray(probs, jnp.float32)
  valid = jnp.ones(probs.shape, bool) if valid is None else jnp.asarray(valid, bool)
  scores = jnp.where(valid, probs, 0.0)
  n = probs.shape[0]
  if rules[-1] == 1 or n == 0:
    return jnp.broadcast_to(scores, (len(rules), n))
  corners = box_corners(jnp.asarray(boxes, jnp.float32), jnp)
  iou = jax.vmap(lambda box: corner_iou(box, corners, jnp))(corners)  # (N, N)
  neighbours = (iou > iou_threshold) | jnp.eye(n, dtype=bool)
  neighbour_probs = jnp.where(neighbours & valid[None, :], scores[None, :], -jnp.inf)
  columns = jnp.arange(n)
  kth = {}
  for k in range(1, min(rules[-1], n) + 1):  # the k-th highest: drop the highest k - 1 (k
    if k > 1:  # small; argmax passes are 15x faster than lax.top_k on a CPU)
      top = jnp.argmax(neighbour_probs, axis=1)
      neighbour_probs = jnp.where(columns[None, :] == top[:, None], -jnp.inf, neighbour_probs)
    if k in rules:
      kth[k] = jnp.max(neighbour_probs, axis=1)
  out = [jnp.where(valid, jnp.maximum(jnp.minimum(scores, kth[k]), 0.0), 0.0) if k <= n
         else jnp.zeros_like(scores)  # fewer windows in the photo than needed
         for k in rules]
  return jnp.stack(out)


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
  return _support_rules(boxes, probs, iou_threshold, (min_neighbours,), valid)[0]


@functools.partial(jax.jit, static_argnames=("rules",))
def _support_photos(boxes: jax.Array, probs: jax.Array, valid: jax.Array,
                    iou_threshold: jax.Array, rules: tuple[int, ...]) -> jax.Array:
  """:func:`_support_rules` of each photo: (P, N, 3), (P, N), (P, N) -> (R, P, N)."""
  scores = jax.vmap(lambda b, p, v: _support_rules(b, p, iou_threshold, rules, v))(
      boxes, probs, valid)
  return jnp.moveaxis(scores, 1, 0)


def with_support_rules(results: Sequence[ScanResult], iou_threshold: float,
                       rules: Sequence[int], chunk: int = 16
                       ) -> dict[int, list[ScanResult]]:
  """The scans under each rule, probabilities replaced by :func:`support_scores`.

  All rules come from one pass over each photo's neighbours; photos are taken in chunks of
  ``chunk`` with similar window counts, padded to a multiple of 128 windows. ``best_box`` /
  ``best_prob`` / ``face_present`` follow the new scores; rule 1 is the scans unchanged.

  Returns:
    ``{rule: [ScanResult per photo, in the order given]}``.
  """
  rules = tuple(sorted(set(int(k) for k in rules)))
  if not rules or rules[0] < 1:
    raise ValueError(f"min_neighbours must be >= 1, got {rules}")
  out: dict[int, list] = {k: list(results) for k in rules}
  needed = tuple(k for k in rules if k > 1)
  if not needed or not results:
    return out
  order = sorted(range(len(results)), key=lambda i: len(results[i].boxes))
  for start in range(0, len(order), chunk):
    part = order[start:start + chunk]
    n = max(128, -(-max(len(results[i].boxes) for i in part) // 128) * 128)
    boxes, probs, valid = _padded([results[i] for i in part], n)
    scores = np.asarray(_support_photos(boxes, probs, valid, jnp.float32(iou_threshold),
                                        needed))
    for k, by_photo in zip(needed, scores):
      for j, i in enumerate(part):
        r, s = results[i], by_photo[j, :len(results[i].probs)]
        best = int(np.argmax(s)) if len(s) else 0
        best_prob = float(s[best]) if len(s) else 0.0
        out[k][i] = r._replace(probs=s, best_box=r.boxes[best] if len(s) else r.best_box,
                               best_prob=best_prob,
                               face_present=bool(detected(best_prob, r.threshold)))
  return out


def with_support(results: Sequence[ScanResult], iou_threshold: float, min_neighbours: int,
                 chunk: int = 16) -> list[ScanResult]:
  """Scans whose probabilities are replaced by :func:`support_scores` (1: unchanged); see
  :func:`with_support_rules`."""
  return with_support_rules(results, iou_threshold, (min_neighbours,), chunk)[min_neighbours]
