"""The figures of a whole-photo evaluation from finished scans (no device work).

Faces found per group on portraits (a window above the threshold overlapping the face box),
the share of non-face photos with a detection, and the group figures (E[A], Var[A], the worst
group); :mod:`jaxface.eval.whole_photos` scans the photos and calls these.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from jaxface import detect
from jaxface.data import GROUPS, DataError, group_of_portrait
from jaxface.data.ppb import UNKNOWN_GROUP
from jaxface.eval.metrics import rate_figures
from jaxface.eval.operating_point import detected, threshold_at_fpr


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
  """Intersection over union of one square box with many.

  Args:
    box: (3,) ``(x0, y0, side)``.
    boxes: (N, 3) ``(x0, y0, side)``.

  Returns:
    (N,) float64 IoU in [0, 1].
  """
  corners = detect.box_corners(np.asarray(boxes, np.float64).reshape(-1, 3))
  return detect.corner_iou(detect.box_corners(np.asarray(box, np.float64)), corners)


def false_detections(max_probs: Mapping[str, float], threshold: float) -> dict[str, Any]:
  """Share of non-face photos with a detection (a window :func:`detected` at ``threshold``).

  Args:
    max_probs: file name -> highest window probability of each non-face photo.
    threshold: the detection threshold.

  Returns:
    ``{'threshold', 'n_photos', 'n_with_detection', 'rate', 'photos_with_detection'}``.
  """
  hits = sorted(name for name, p in max_probs.items() if detected(p, threshold))
  n = len(max_probs)
  return {"threshold": float(threshold), "n_photos": n, "n_with_detection": len(hits),
          "rate": len(hits) / n if n else None, "photos_with_detection": hits}


def _found_rates(flags: Mapping[str, list[bool]]) -> dict[str, dict[str, Any]]:
  """group -> ``{'n', 'found', 'rate'}`` of per-portrait found flags, plus ``'overall'``."""
  out = {}
  every = [f for group in sorted(flags) for f in flags[group]]
  for group, hits in sorted(flags.items()) + [("overall", every)]:
    out[group] = {"n": len(hits), "found": int(sum(hits)),
                  "rate": sum(hits) / len(hits) if hits else None}
  return out


def faces_found(scans: Mapping[str, detect.ScanResult], faces: Mapping[str, Mapping[str, Any]],
                threshold: float, min_iou: float = 0.3) -> dict[str, Any]:
  """Portraits whose face is found, per group.

  A portrait listed in ``faces`` with a box counts as found when a window :func:`detected` at
  ``threshold`` overlaps the box with IoU >= ``min_iou``; one without a box, when any window
  is detected. Portraits absent from ``faces`` (no box: the cascade missed them) count as found
  with any window detected and take their group from the file name
  (:func:`jaxface.data.group_of_portrait`); they are reported on their own and in ``all``.

  Args:
    scans: scan results keyed by portrait path or file name.
    faces: :func:`jaxface.data.load_face_boxes` output, keyed by file name.
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
    hit = detected(scan.probs, threshold)
    entry = faces.get(name)
    if entry is not None and entry.get("box") is not None:
      found = bool(np.any(hit & (iou(entry["box"], scan.boxes) >= min_iou)))
      with_box.setdefault(entry["group"], []).append(found)
    else:
      found = bool(np.any(hit))
      without_box.setdefault(group_of_portrait(name, faces), []).append(found)
    if not found:
      missed.append(name)
  combined = {g: with_box.get(g, []) + without_box.get(g, [])
              for g in set(with_box) | set(without_box)}
  return {"threshold": float(threshold), "min_iou": float(min_iou),
          "with_box": _found_rates(with_box), "without_box": _found_rates(without_box),
          "all": _found_rates(combined), "missed": sorted(missed)}


def group_figures(found: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
  """E[A], Var[A] and the worst group over the groups of a ``faces_found`` section.

  Args:
    found: group -> ``{'n', 'found', 'rate'}`` (``'overall'`` and ``'unknown'`` are left out).

  Returns:
    ``{'group_order', 'E_A', 'Var_A', 'worst_group', 'worst_rate'}`` in %; None values when no
    group has a rate.
  """
  rates = {g: v["rate"] for g, v in found.items()
           if g not in ("overall", UNKNOWN_GROUP) and v.get("rate") is not None}
  order = [g for g in GROUPS if g in rates] + sorted(set(rates) - set(GROUPS))
  out = {"group_order": order, "E_A": None, "Var_A": None, "worst_group": None,
         "worst_rate": None}
  if order:
    figures = rate_figures([(g, rates[g]) for g in order])
    out.update({k: figures[k] for k in ("E_A", "Var_A", "worst_group", "worst_rate")})
  return out


def whole_image_figures(scans: Mapping[str, detect.ScanResult],
                        faces: Mapping[str, Mapping[str, Any]],
                        non_face_max_probs: Mapping[str, float], default_threshold: float = 0.5,
                        max_false_rate: float = 0.05, min_iou: float = 0.3, *,
                        threshold: float | None = None) -> dict[str, Any]:
  """The figures of a whole-image evaluation from finished scans (no device work).

  Args:
    scans: the portraits' scan results, keyed by path or file name.
    faces: :func:`jaxface.data.load_face_boxes` of their faces.csv (``{}``: groups from the
      file names).
    non_face_max_probs: file name -> highest window probability of each non-face photo.
    default_threshold: the scan's own threshold, reported beside the calibrated one.
    max_false_rate: largest allowed share of non-face photos with a detection.
    min_iou: overlap needed with a face box.
    threshold: the detection threshold, chosen elsewhere (on validation photos); None sets it
      on ``non_face_max_probs``.

  Returns:
    ``threshold`` (as given, or :func:`jaxface.eval.operating_point.threshold_at_fpr` of the
    non-face photos' highest window probabilities at ``max_false_rate``), ``max_false_rate``,
    ``false_detections``, ``faces_found`` (at that threshold), ``faces_found_at_default``,
    ``false_detections_at_default``, ``n_windows_per_portrait``, ``portraits`` (per file name
    ``{'file', 'group', 'best_box', 'best_prob', 'found'}``, found at the calibrated
    threshold), ``summary`` and ``summary_at_default`` (:func:`group_figures` of the portraits
    found at either threshold, the boxed and the box-less together).
  """
  if not non_face_max_probs:
    raise DataError("no readable non-face photo to calibrate the threshold")
  if threshold is None:
    threshold, _ = threshold_at_fpr(list(non_face_max_probs.values()), max_false_rate)
  found = faces_found(scans, faces, threshold, min_iou)
  found_at_default = faces_found(scans, faces, default_threshold, min_iou)
  missed = set(found["missed"])
  portraits = {}
  for key, scan in scans.items():
    name = Path(key).name
    portraits[name] = {"file": str(key), "group": group_of_portrait(name, faces),
                       "best_box": [int(v) for v in scan.best_box],
                       "best_prob": float(scan.best_prob), "found": name not in missed}
  return {
      "threshold": threshold, "max_false_rate": max_false_rate,
      "false_detections": false_detections(non_face_max_probs, threshold),
      "faces_found": found,
      "false_detections_at_default": false_detections(non_face_max_probs, default_threshold),
      "faces_found_at_default": found_at_default,
      "n_windows_per_portrait": (float(np.mean([len(r.boxes) for r in scans.values()]))
                                 if scans else None),
      "portraits": portraits,
      "summary": group_figures(found["all"]),
      "summary_at_default": group_figures(found_at_default["all"]),
  }
