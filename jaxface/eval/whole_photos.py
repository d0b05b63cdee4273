"""Whole-photo test sets: faces found on whole photos, false detections on non-face photos.

A run evaluates every set of ``config.whole_images.sets`` once, after its last epoch, with the
sliding-window scan of :mod:`jaxface.detect` (in the run's ``dtype`` and ``model.impl``): the
threshold is the lowest at which at most ``max_false_rate`` of the photos in
``non_face_photos`` have a window detected (:func:`jaxface.eval.operating_point.threshold_at_fpr`
of their highest window probabilities; a window is detected when its probability is above the
threshold, :func:`jaxface.eval.operating_point.detected`), and a portrait counts as found when a
detected window overlaps the face box of the set's ``boxes`` table (IoU >= ``min_iou``; any
window for a portrait without a box). The figures land in ``metrics.json`` under
``eval.whole_images.<name>``, in the summary and in the report. Results of these measurements
are in experiments/results/detect_whole_images.md.

Fields of ``config.whole_images`` (:func:`default_whole_images_config`):

* ``sets`` (``''``): ``'NAME=FOLDER,...'``, folders of whole photos with one face each (e.g.
  ``'ppb_portraits=/data/ppb-faces/portraits'``). Names follow the rules of
  ``config.data.extra_test_sets`` and may not repeat one of its names.
* ``boxes`` (``''``): ``'NAME=CSV,...'``, a ``faces.csv``-style table per set (columns
  ``portrait, group, box_cx, box_cy, box_side``, :func:`jaxface.data.load_face_boxes`); a set
  without one takes each portrait's group from its PPB-style file name and counts any window.
* ``non_face_photos`` (``''``): a folder of photos without faces; required with ``sets``.
* ``max_false_rate`` (0.05), ``min_iou`` (0.3): as above.
* ``min_frac`` (0.2), ``n_scales`` (5), ``stride_frac`` (0.25), ``batch_size`` (256): the scan's
  :class:`jaxface.detect.ScanOptions`.

Scanning costs a few hundred windows per photo (the whole evaluation of 635 portraits and 112
photos takes minutes on a CPU), so it runs at the end of a run only.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from jaxface import detect
from jaxface.data import (GROUPS, DataError, group_of_portrait, load_face_boxes,
                          parse_named_paths)
from jaxface.data.ppb import UNKNOWN_GROUP
from jaxface.eval.formatting import percent
from jaxface.eval.metrics import rate_figures
from jaxface.eval.operating_point import detected, threshold_at_fpr

PyTree = Any


def default_whole_images_config() -> ml_collections.ConfigDict:
  """The ``config.whole_images`` fields and their defaults (see the module docstring)."""
  defaults = detect.ScanOptions()
  return ml_collections.ConfigDict({
      "sets": "",
      "boxes": "",
      "non_face_photos": "",
      "max_false_rate": 0.05,
      "min_iou": 0.3,
      "min_frac": defaults.min_frac,
      "n_scales": defaults.n_scales,
      "stride_frac": defaults.stride_frac,
      "batch_size": defaults.batch_size,
  })


class WholeImageSets(NamedTuple):
  """The checked whole-image sets of a config.

  Attributes:
    photos: ``{name: [photo files]}`` in the configured order.
    faces: ``{name: load_face_boxes(table)}`` (``{}`` for a set without a table).
    non_face_photos: the non-face photo files.
    options: the scan options.
  """
  photos: dict[str, list[Path]]
  faces: dict[str, dict[str, dict[str, Any]]]
  non_face_photos: list[Path]
  options: detect.ScanOptions


def scan_options(config: ml_collections.ConfigDict, input_size: int) -> detect.ScanOptions:
  """The :class:`jaxface.detect.ScanOptions` of ``config.whole_images``."""
  return detect.ScanOptions(min_frac=float(config.min_frac), n_scales=int(config.n_scales),
                            stride_frac=float(config.stride_frac),
                            batch_size=int(config.batch_size), input_size=int(input_size))


def _check_settings(config: ml_collections.ConfigDict, input_size: int) -> detect.ScanOptions:
  """The scan options of ``config.whole_images``, after checking its numeric fields."""
  if not 0 <= config.max_false_rate < 1:
    raise DataError(f"config.whole_images.max_false_rate = {config.max_false_rate!r}: must be "
                    "in [0, 1)")
  if not 0 < config.min_iou <= 1:
    raise DataError(f"config.whole_images.min_iou = {config.min_iou!r}: must be in (0, 1]")
  options = scan_options(config, input_size)
  try:
    detect.check_options(options)
  except ValueError as err:
    raise DataError(f"config.whole_images: {err}") from None
  return options


def _non_face_files(folder: str) -> list[Path]:
  """The photos of ``config.whole_images.non_face_photos``."""
  if not folder:
    raise DataError("config.whole_images.non_face_photos: a folder of photos without faces is "
                    "needed to set the threshold of config.whole_images.sets")
  if not Path(folder).is_dir():
    raise DataError(f"config.whole_images.non_face_photos: {folder}: no such folder")
  try:
    return detect.photo_files(folder)
  except DataError as err:
    raise DataError(f"config.whole_images.non_face_photos: {err}") from None


def load_whole_image_sets(config: ml_collections.ConfigDict, input_size: int,
                          taken: Iterable[str] = ()) -> WholeImageSets | None:
  """Checks ``config.whole_images`` and lists its photos (none is decoded yet).

  Args:
    config: the ``config.whole_images`` ConfigDict.
    input_size: the model's input side.
    taken: names already used by other test sets.

  Returns:
    The sets, or None when ``config.sets`` is empty.

  Raises:
    DataError: one line naming the field and the path: a bad entry, a name in ``taken``, a
      missing folder or one without photos, a table for no such set or one that cannot be
      read, a missing ``non_face_photos`` folder, or a bad scan setting.
  """
  sets = parse_named_paths(config.sets, "whole_images.sets")
  tables = parse_named_paths(config.boxes, "whole_images.boxes")
  if not sets:
    if tables:
      raise DataError("config.whole_images.boxes is set but config.whole_images.sets is empty")
    return None
  taken = set(taken)
  for name in sets:
    if name in taken:
      raise DataError(f"config.whole_images.sets: name {name!r} is already a test set of "
                      "config.data.extra_test_sets; choose another")
  for name in tables:
    if name not in sets:
      raise DataError(f"config.whole_images.boxes: {name!r} is not a set of "
                      f"config.whole_images.sets (sets: {list(sets)})")
  options = _check_settings(config, input_size)
  photos = {}
  for name, folder in sets.items():
    if not Path(folder).is_dir():
      raise DataError(f"config.whole_images.sets: set {name!r}: {folder}: no such folder")
    try:
      photos[name] = detect.photo_files(folder)
    except DataError as err:
      raise DataError(f"config.whole_images.sets: set {name!r}: {err}") from None
  faces = {}
  for name, table in tables.items():
    try:
      faces[name] = load_face_boxes(table)
    except (DataError, OSError, KeyError, ValueError) as err:
      raise DataError(f"config.whole_images.boxes: set {name!r}: {err}") from None
  non_faces = _non_face_files(config.non_face_photos)
  return WholeImageSets(photos, {name: faces.get(name, {}) for name in sets}, non_faces, options)


# --------------------------------------------------------------------------------- figures


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
                        max_false_rate: float = 0.05, min_iou: float = 0.3) -> dict[str, Any]:
  """The figures of a whole-image evaluation from finished scans (no device work).

  Args:
    scans: the portraits' scan results, keyed by path or file name.
    faces: :func:`jaxface.data.load_face_boxes` of their faces.csv (``{}``: groups from the
      file names).
    non_face_max_probs: file name -> highest window probability of each non-face photo.
    default_threshold: the scan's own threshold, reported beside the calibrated one.
    max_false_rate: largest allowed share of non-face photos with a detection.
    min_iou: overlap needed with a face box.

  Returns:
    ``threshold`` (:func:`jaxface.eval.operating_point.threshold_at_fpr` of the non-face
    photos' highest window probabilities at ``max_false_rate``), ``max_false_rate``,
    ``false_detections``, ``faces_found`` (at that threshold), ``faces_found_at_default``,
    ``false_detections_at_default``, ``n_windows_per_portrait``, ``portraits`` (per file name
    ``{'file', 'group', 'best_box', 'best_prob', 'found'}``, found at the calibrated
    threshold), ``summary`` and ``summary_at_default`` (:func:`group_figures` of the portraits
    found at either threshold, the boxed and the box-less together).
  """
  if not non_face_max_probs:
    raise DataError("no readable non-face photo to calibrate the threshold")
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


# ------------------------------------------------------------------------------ evaluation


def non_face_max_probs(variables: PyTree, photos: Sequence[str | os.PathLike],
                       options: detect.ScanOptions = detect.ScanOptions(),
                       mesh: Mesh | None = None, progress: bool = False, *,
                       dtype: Any = jnp.float32,
                       impl: str = "auto") -> tuple[dict[str, float], dict[str, str]]:
  """Scans the non-face photos that calibrate the threshold.

  Returns:
    ``(max_probs, errors)``: file name -> highest window probability of each readable photo,
    and the unreadable photos' messages by path.

  Raises:
    DataError: none of the photos could be read.
  """
  scans, errors = detect.scan_files(variables, photos, options, mesh, progress=progress,
                                    dtype=dtype, impl=impl)
  if not scans:
    raise DataError(f"none of the {len(photos)} non-face photos could be read to calibrate "
                    "the threshold")
  return {Path(k).name: r.best_prob for k, r in scans.items()}, errors


def evaluate_sets(variables: PyTree, sets: WholeImageSets, config: ml_collections.ConfigDict,
                  mesh: Mesh | None = None, progress: bool = False, *, dtype: Any = jnp.float32,
                  impl: str = "auto") -> dict[str, Any]:
  """Scans the non-face photos once and every set; the figures of each set.

  Args:
    variables: model variables.
    sets: :func:`load_whole_image_sets` (or sets made by hand, e.g. one of PPB portraits).
    config: ``config.whole_images`` (``max_false_rate``, ``min_iou``).
    mesh: the device mesh the window batches are sharded over.
    progress: progress bars over photos.
    dtype: the compute dtype of the scan (the run's ``config.dtype``).
    impl: the model implementation (the run's ``config.model.impl``).

  Returns:
    ``{name: figures}``: :func:`whole_image_figures` plus ``errors`` (unreadable photos of the
    set and of the non-face photos, by path: they are skipped), ``n_photos`` and ``options``.
  """
  try:
    max_probs, non_face_errors = non_face_max_probs(variables, sets.non_face_photos,
                                                    sets.options, mesh, progress, dtype=dtype,
                                                    impl=impl)
  except DataError as err:
    raise DataError(f"config.whole_images.non_face_photos: {err}") from None
  out = {}
  for name, photos in sets.photos.items():
    scans, errors = detect.scan_files(variables, photos, sets.options, mesh, progress=progress,
                                      dtype=dtype, impl=impl)
    figures = whole_image_figures(scans, sets.faces[name], max_probs, sets.options.threshold,
                                  float(config.max_false_rate), float(config.min_iou))
    figures.update(errors={**non_face_errors, **errors}, n_photos=len(photos),
                   options=sets.options._asdict())
    out[name] = figures
  return out


def summary_lines(name: str, figures: Mapping[str, Any]) -> list[str]:
  """The end-of-run summary lines of one whole-image set."""
  fd = figures["false_detections"]
  lines = [f"-- whole images {name}: {len(figures['portraits'])} photos scanned"
           + (f", {len(figures['errors'])} unreadable skipped" if figures.get("errors") else "")
           + f"; threshold {figures['threshold']:.4f} ({fd['n_with_detection']}/"
           f"{fd['n_photos']} non-face photos with a detection)"]
  for label, section, summary in (
      ("found", figures["faces_found"]["all"], figures["summary"]),
      (f"found at p > {figures['options']['threshold']:g} "
       f"({percent(figures['false_detections_at_default']['rate'], 0)} false photos)",
       figures["faces_found_at_default"]["all"], figures["summary_at_default"])):
    cells = "  ".join(f"{g} {v['found']}/{v['n']} ({percent(v['rate'])})"
                      for g, v in section.items() if g != "overall" and v.get("rate") is not None)
    lines.append(f"  {label}: {cells}")
    if summary.get("E_A") is not None:
      lines.append(f"  E[A] {summary['E_A']:.2f}%  Var[A] {summary['Var_A']:.2f}%²  worst "
                   f"{summary['worst_group']} {summary['worst_rate']:.2f}%")
  return lines
