"""Whole-image test sets: faces found on whole photos, false detections on non-face photos.

A run evaluates every set of ``config.whole_images.sets`` once, after its last epoch, with the
sliding-window scan of :mod:`jaxface.detect`: the threshold is set so that at most
``max_false_rate`` of the photos in ``non_face_photos`` have a window at or above it, and a
portrait counts as found when a window at or above it overlaps the face box of the set's
``boxes`` table (IoU >= ``min_iou``; any window for a portrait without a box). The figures land
in ``metrics.json`` under ``eval.whole_images.<name>``, in the summary and in the report.

Fields of ``config.whole_images`` (:func:`default_whole_images_config`):

* ``sets`` (``''``): ``'NAME=FOLDER,...'``, folders of whole photos with one face each (e.g.
  ``'ppb_portraits=/data/ppb-faces/portraits'``). Names follow the rules of
  ``config.data.extra_test_sets`` and may not repeat one of its names.
* ``boxes`` (``''``): ``'NAME=CSV,...'``, a ``faces.csv``-style table per set (columns
  ``portrait, group, box_cx, box_cy, box_side``, :func:`jaxface.detect.load_face_boxes`); a set
  without one takes each portrait's group from its PPB-style file name and counts any window.
* ``non_face_photos`` (``''``): a folder of photos without faces; required with ``sets``.
* ``max_false_rate`` (0.05), ``min_iou`` (0.3): as above.
* ``min_frac`` (0.2), ``n_scales`` (5), ``stride_frac`` (0.25), ``batch_size`` (256): the scan's
  :class:`jaxface.detect.ScanOptions`.

Scanning costs a few hundred windows per photo (the whole evaluation of 635 portraits and 112
photos takes minutes on a CPU), so it runs at the end of a run only. Measured figures are in
experiments/results/detect_whole_images.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import ml_collections
from jax.sharding import Mesh

from jaxface import detect, evaluation
from jaxface.data import GROUPS, DataError, parse_named_paths

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
      faces[name] = detect.load_face_boxes(table)
    except (DataError, OSError, KeyError, ValueError) as err:
      raise DataError(f"config.whole_images.boxes: set {name!r}: {err}") from None
  if not config.non_face_photos:
    raise DataError("config.whole_images.non_face_photos: a folder of photos without faces is "
                    "needed to set the threshold of config.whole_images.sets")
  if not Path(config.non_face_photos).is_dir():
    raise DataError(f"config.whole_images.non_face_photos: {config.non_face_photos}: no such "
                    "folder")
  try:
    non_faces = detect.photo_files(config.non_face_photos)
  except DataError as err:
    raise DataError(f"config.whole_images.non_face_photos: {err}") from None
  return WholeImageSets(photos, {name: faces.get(name, {}) for name in sets}, non_faces, options)


def group_figures(found: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
  """E[A], Var[A] and the worst group over the groups of a ``faces_found`` section.

  Args:
    found: group -> ``{'n', 'found', 'rate'}`` (``'overall'`` and ``'unknown'`` are left out).

  Returns:
    ``{'group_order', 'E_A', 'Var_A', 'worst_group', 'worst_rate'}`` in %; None values when no
    group has a rate.
  """
  rates = {g: v["rate"] for g, v in found.items()
           if g not in ("overall", "unknown") and v.get("rate") is not None}
  order = [g for g in GROUPS if g in rates] + sorted(set(rates) - set(GROUPS))
  out = {"group_order": order, "E_A": None, "Var_A": None, "worst_group": None,
         "worst_rate": None}
  if order:
    figures = evaluation.rate_figures([(g, rates[g]) for g in order])
    out.update({k: figures[k] for k in ("E_A", "Var_A", "worst_group", "worst_rate")})
  return out


def evaluate_sets(variables: PyTree, sets: WholeImageSets, config: ml_collections.ConfigDict,
                  mesh: Mesh | None = None, progress: bool = False) -> dict[str, Any]:
  """Scans the non-face photos once and every set; the figures of each set.

  Args:
    variables: model variables.
    sets: :func:`load_whole_image_sets`.
    config: ``config.whole_images`` (``max_false_rate``, ``min_iou``).
    mesh: the device mesh the window batches are sharded over.
    progress: progress bars over photos.

  Returns:
    ``{name: figures}``: :func:`jaxface.detect.whole_image_figures` plus ``summary``
    (:func:`group_figures` of the portraits found at the calibrated threshold, the boxed and
    the box-less together), ``errors`` (unreadable photos of the set and of the non-face
    photos, by path: they are skipped) and ``n_photos``.
  """
  try:
    max_probs, non_face_errors = detect.non_face_max_probs(variables, sets.non_face_photos,
                                                           sets.options, mesh, progress)
  except DataError as err:
    raise DataError(f"config.whole_images.non_face_photos: {err}") from None
  out = {}
  for name, photos in sets.photos.items():
    scans, errors = detect.scan_files(variables, photos, sets.options, mesh, progress=progress)
    figures = detect.whole_image_figures(scans, sets.faces[name], max_probs,
                                         sets.options.threshold, float(config.max_false_rate),
                                         float(config.min_iou))
    figures.update(summary=group_figures(figures["faces_found"]["all"]),
                   summary_at_default=group_figures(figures["faces_found_at_default"]["all"]),
                   errors={**non_face_errors, **errors}, n_photos=len(photos),
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
      (f"found at p >= {figures['options']['threshold']:g} "
       f"({100 * figures['false_detections_at_default']['rate']:.0f}% false photos)",
       figures["faces_found_at_default"]["all"], figures["summary_at_default"])):
    cells = "  ".join(f"{g} {v['found']}/{v['n']} ({100 * v['rate']:.1f}%)"
                      for g, v in section.items() if g != "overall" and v.get("rate") is not None)
    lines.append(f"  {label}: {cells}")
    if summary.get("E_A") is not None:
      lines.append(f"  E[A] {summary['E_A']:.2f}%  Var[A] {summary['Var_A']:.2f}%²  worst "
                   f"{summary['worst_group']} {summary['worst_rate']:.2f}%")
  return lines
