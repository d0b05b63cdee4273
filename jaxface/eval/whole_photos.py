"""Whole-photo test sets: faces found on whole photos, false detections on non-face photos.

A run evaluates every set of ``config.whole_images.sets`` once, after its last epoch, with the
sliding-window scan of :mod:`jaxface.detect` (in the run's ``dtype`` and ``model.impl``). The
decision rule is a threshold on the window probabilities (a window is detected when its
probability is above it, :func:`jaxface.eval.operating_point.detected`): the lowest at which at
most ``max_false_rate`` of the photos that set it have a window detected
(:func:`jaxface.eval.operating_point.threshold_at_fpr` of their highest window probabilities).
Those photos are the validation non-face photos where ``val_non_face_photos`` is set: the
threshold is then chosen on them, the share of the test photos (``non_face_photos``) with a
detection is measured at it, and the validation portraits (``val_faces_rule``) are left out of
the test figures and reported apart (``val``). Without it the test photos set the threshold.
A portrait counts as found when a detected window overlaps the face box of the set's ``boxes``
table (IoU >= ``min_iou``; any window for a portrait without a box); after non-maximum
suppression (:func:`jaxface.detect.nms`, ``nms_iou``) each portrait's boxes are counted. The
figures (:mod:`jaxface.eval.photo_figures`) land in ``metrics.json`` under
``eval.whole_images.<name>`` with the rule and the split used (``decision_rule``), in the
summary and in the report. Results of these measurements are in
experiments/results/detect_whole_images.md.

Fields of ``config.whole_images`` (:func:`default_whole_images_config`):

* ``sets`` (``''``): ``'NAME=FOLDER,...'``, folders of whole photos with one face each (e.g.
  ``'ppb_portraits=/data/ppb-faces/portraits'``). Names follow the rules of
  ``config.data.extra_test_sets`` and may not repeat one of its names.
* ``boxes`` (``''``): ``'NAME=CSV,...'``, a ``faces.csv``-style table per set (columns
  ``portrait, group, box_cx, box_cy, box_side``, :func:`jaxface.data.load_face_boxes`); a set
  without one takes each portrait's group from its PPB-style file name and counts any window.
* ``non_face_photos`` (``''``): a folder of test photos without faces; required with ``sets``.
* ``max_false_rate`` (0.05), ``min_iou`` (0.3), ``nms_iou`` (0.3, in (0, 1]): as above.
* ``min_neighbours`` (``'1'``): windows needed above the threshold around a detection, the
  window itself included (its neighbours overlap it with IoU above ``nms_iou``;
  :func:`jaxface.detect.support_scores`); the threshold is chosen on the support scores. Several
  candidates (``'1,2,3'``) need validation portraits: the one whose validation portraits' worst
  group is found most often is used (ties: the fewest); each candidate's validation and test
  figures are kept under ``decision_rule.candidates`` (the test figures of the others are
  measured, never used to choose).
* ``val_non_face_photos`` (``''``): a folder of non-face photos (e.g. nonface-photos'
  ``train_images/``) whose files selected by ``val_non_face_rule`` (``'index % 4 == 0'``: every
  4th file by sorted name) set the threshold; none may be a test photo.
* ``val_faces_rule`` (``'image_id % 4 == 0'``): with ``val_non_face_photos``, the portraits
  whose image id (the number their file name starts with, :func:`jaxface.data.ppb.portrait_id`)
  fits the rule are validation portraits; ``''`` keeps every portrait for the test.
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
from jaxface.data import DataError, load_face_boxes, parse_named_paths
from jaxface.eval.formatting import percent
from jaxface.eval.operating_point import detected, threshold_at_fpr
# The figures are part of this module's interface.
from jaxface.eval.photo_figures import (false_detections, faces_found,  # noqa: F401
                                        group_figures, iou, whole_image_figures)
from jaxface.eval.photo_splits import folder_photos, validation_split

PyTree = Any
FALSE_WINDOWS = 8  # the highest-scoring test non-face photos kept for the report


def default_whole_images_config() -> ml_collections.ConfigDict:
  """The ``config.whole_images`` fields and their defaults (see the module docstring)."""
  defaults = detect.ScanOptions()
  return ml_collections.ConfigDict({
      "sets": "",
      "boxes": "",
      "non_face_photos": "",
      "max_false_rate": 0.05,
      "min_iou": 0.3,
      "nms_iou": 0.3,
      "min_neighbours": "1",
      "val_non_face_photos": "",
      "val_non_face_rule": "index % 4 == 0",
      "val_faces_rule": "image_id % 4 == 0",
      "min_frac": defaults.min_frac,
      "n_scales": defaults.n_scales,
      "stride_frac": defaults.stride_frac,
      "batch_size": defaults.batch_size,
  })


class WholeImageSets(NamedTuple):
  """The checked whole-image sets of a config.

  Attributes:
    photos: ``{name: [photo files]}`` in the configured order: the test portraits.
    faces: ``{name: load_face_boxes(table)}`` (``{}`` for a set without a table).
    non_face_photos: the test non-face photo files.
    options: the scan options.
    val_photos: ``{name: [photo files]}``, the validation portraits of each set (None: none).
    val_non_face_photos: the validation non-face photos that set the threshold (empty: the
      test photos set it).
  """
  photos: dict[str, list[Path]]
  faces: dict[str, dict[str, dict[str, Any]]]
  non_face_photos: list[Path]
  options: detect.ScanOptions
  val_photos: Mapping[str, Sequence[Path]] | None = None
  val_non_face_photos: Sequence[Path] = ()


def scan_options(config: ml_collections.ConfigDict, input_size: int) -> detect.ScanOptions:
  """The :class:`jaxface.detect.ScanOptions` of ``config.whole_images``."""
  return detect.ScanOptions(min_frac=float(config.min_frac), n_scales=int(config.n_scales),
                            stride_frac=float(config.stride_frac),
                            batch_size=int(config.batch_size), input_size=int(input_size))


def min_neighbours_candidates(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """The ``config.whole_images.min_neighbours`` candidates (``'2'``, ``'1,2,3'`` or an int).

  Raises:
    DataError: naming the field, for anything but distinct integers >= 1.
  """
  value = setting(config, "min_neighbours")
  try:
    candidates = tuple(int(word) for word in str(value).split(","))
  except ValueError:
    candidates = ()
  if (isinstance(value, (bool, float)) or not candidates or min(candidates) < 1
      or len(set(candidates)) != len(candidates)):
    raise DataError(f"config.whole_images.min_neighbours = {value!r}: must be distinct "
                    "integers >= 1, e.g. '1' or '1,2,3'")
  return candidates


def check_settings(config: ml_collections.ConfigDict, input_size: int) -> detect.ScanOptions:
  """The scan options of ``config.whole_images``, after checking its numeric fields.

  Raises:
    DataError: naming the field of a bad value.
  """
  if not 0 <= config.max_false_rate < 1:
    raise DataError(f"config.whole_images.max_false_rate = {config.max_false_rate!r}: must be "
                    "in [0, 1)")
  for field in ("min_iou", "nms_iou"):
    value = setting(config, field)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
      raise DataError(f"config.whole_images.{field} = {value!r}: must be in (0, 1]")
  min_neighbours_candidates(config)
  options = scan_options(config, input_size)
  try:
    detect.check_options(options)
  except ValueError as err:
    raise DataError(f"config.whole_images: {err}") from None
  return options


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
      read, a missing ``non_face_photos`` folder, a bad scan setting, or a validation split
      that is empty or shares photos with the test.
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
  options = check_settings(config, input_size)
  photos = {}
  for name, folder in sets.items():
    photos[name] = folder_photos(folder, f"whole_images.sets: set {name!r}")
  faces = {}
  for name, table in tables.items():
    try:
      faces[name] = load_face_boxes(table)
    except (DataError, OSError, KeyError, ValueError) as err:
      raise DataError(f"config.whole_images.boxes: set {name!r}: {err}") from None
  if not config.non_face_photos:
    raise DataError("config.whole_images.non_face_photos: a folder of photos without faces is "
                    "needed for config.whole_images.sets (false detections are counted on it)")
  non_faces = folder_photos(config.non_face_photos, "whole_images.non_face_photos")
  test, val, val_non_faces = validation_split(config, photos, non_faces)
  if len(min_neighbours_candidates(config)) > 1 and not val:
    raise DataError(f"config.whole_images.min_neighbours = {config.min_neighbours!r}: several "
                    "candidates are chosen on validation portraits; set "
                    "config.whole_images.val_non_face_photos and val_faces_rule")
  return WholeImageSets(test, {name: faces.get(name, {}) for name in sets}, non_faces, options,
                        val, val_non_faces)


# ------------------------------------------------------------------------------ evaluation


def scan_non_face_photos(variables: PyTree, photos: Sequence[str | os.PathLike],
                         options: detect.ScanOptions = detect.ScanOptions(),
                         mesh: Mesh | None = None, progress: bool = False, *,
                         dtype: Any = jnp.float32, impl: str = "auto"
                         ) -> tuple[dict[str, detect.ScanResult], dict[str, str]]:
  """Scans non-face photos (:func:`jaxface.detect.scan_files`).

  Returns:
    ``(scans, errors)``: the readable photos' scans and the unreadable ones' messages, by path.

  Raises:
    DataError: none of the photos could be read.
  """
  scans, errors = detect.scan_files(variables, photos, options, mesh, progress=progress,
                                    dtype=dtype, impl=impl)
  if not scans:
    raise DataError(f"none of the {len(photos)} non-face photos could be read")
  return scans, errors


def non_face_max_probs(variables: PyTree, photos: Sequence[str | os.PathLike],
                       options: detect.ScanOptions = detect.ScanOptions(),
                       mesh: Mesh | None = None, progress: bool = False, *,
                       dtype: Any = jnp.float32,
                       impl: str = "auto") -> tuple[dict[str, float], dict[str, str]]:
  """Scans non-face photos: the highest window probability of each.

  Returns:
    ``(max_probs, errors)``: file name -> highest window probability of each readable photo,
    and the unreadable photos' messages by path.

  Raises:
    DataError: none of the photos could be read.
  """
  scans, errors = scan_non_face_photos(variables, photos, options, mesh, progress,
                                       dtype=dtype, impl=impl)
  return _best_scores(scans), errors


def setting(config: ml_collections.ConfigDict, field: str) -> Any:
  """``config.whole_images.<field>``, or its default where the config predates the field."""
  return config.get(field, default_whole_images_config()[field])


def decision_rule(sets: WholeImageSets, config: ml_collections.ConfigDict,
                  min_neighbours: int = 1) -> dict[str, Any]:
  """How the threshold was chosen and which photos were held out (JSON-ready)."""
  held_out = bool(sets.val_non_face_photos)
  support = (f" in support score (at least {min_neighbours} overlapping windows above it)"
             if min_neighbours > 1 else "")
  return {
      "rule": f"a window is detected when its probability{support} is above the threshold; "
              f"the threshold leaves at most {float(config.max_false_rate):g} of the "
              f"{'validation' if held_out else 'test'} non-face photos with a detection",
      "threshold_photos": "val_non_face_photos" if held_out else "non_face_photos",
      "n_threshold_photos": len(sets.val_non_face_photos if held_out else sets.non_face_photos),
      "val_non_face_photos": str(config.val_non_face_photos) if held_out else None,
      "val_non_face_rule": str(config.val_non_face_rule) if held_out else None,
      "val_faces_rule": str(config.val_faces_rule) if sets.val_photos else None,
      "nms_iou": float(setting(config, "nms_iou")),
      "min_neighbours": int(min_neighbours),
  }


def _boxes_after_nms(figures: dict[str, Any], scans: Mapping[str, detect.ScanResult],
                     nms_iou: float) -> None:
  """Adds each portrait's number of boxes after NMS at the threshold, and their mean."""
  boxes = detect.nms_detections(list(scans.values()), nms_iou, figures["threshold"])
  for key, (kept, _) in zip(scans, boxes):
    figures["portraits"][Path(key).name]["n_boxes"] = int(len(kept))
  figures["boxes_per_portrait"] = (float(np.mean([len(b) for b, _ in boxes])) if boxes
                                   else None)


def _best_scores(scans: Mapping[str, detect.ScanResult]) -> dict[str, float]:
  """File name -> the highest window score of each scanned photo."""
  return {Path(key).name: r.best_prob for key, r in scans.items()}


def _false_windows(scans: Mapping[str, detect.ScanResult], threshold: float,
                   n: int = FALSE_WINDOWS) -> list[dict[str, Any]]:
  """The ``n`` non-face photos with the highest best window: file, box, score, detected."""
  worst = sorted(scans.items(), key=lambda item: (-item[1].best_prob, item[0]))[:n]
  return [{"file": str(key), "best_box": [int(v) for v in r.best_box],
           "best_prob": float(r.best_prob), "detected": bool(detected(r.best_prob, threshold))}
          for key, r in worst]


def _by_rule(scans: Mapping[str, Mapping[str, detect.ScanResult]], nms_iou: float,
             rules: Sequence[int]) -> dict[int, dict[str, dict[str, detect.ScanResult]]]:
  """``{rule: {part: {photo: scan scored under the rule}}}`` (one pass per part)."""
  out: dict[int, dict[str, dict[str, detect.ScanResult]]] = {k: {} for k in rules}
  for part, photos in scans.items():
    for k, scored in detect.with_support_rules(list(photos.values()), nms_iou, rules).items():
      out[k][part] = dict(zip(photos, scored))
  return out


def _rule_figures(scored: Mapping[str, Mapping[str, detect.ScanResult]], faces: Mapping[str, Any],
                  config: ml_collections.ConfigDict, default_threshold: float) -> dict[str, Any]:
  """The figures of one set under one rule, from its scored scans (:func:`_by_rule`).

  ``scored`` holds ``'test'`` (the portraits), ``'non_face_photos'`` and, where there are
  validation photos, ``'val'`` (portraits) and ``'val_non_face_photos'``.
  """
  nms_iou = float(setting(config, "nms_iou"))
  threshold = None
  if "val_non_face_photos" in scored:
    threshold, _ = threshold_at_fpr(list(_best_scores(scored["val_non_face_photos"]).values()),
                                    float(config.max_false_rate))
  figures = whole_image_figures(scored["test"], faces, _best_scores(scored["non_face_photos"]),
                                default_threshold, float(config.max_false_rate),
                                float(config.min_iou), threshold=threshold)
  _boxes_after_nms(figures, scored["test"], nms_iou)
  figures["false_windows"] = _false_windows(scored["non_face_photos"], figures["threshold"])
  if "val" in scored:
    found = faces_found(scored["val"], faces, figures["threshold"], float(config.min_iou))
    figures["val"] = {
        "n_photos": len(scored["val"]), "faces_found": found,
        "false_detections": false_detections(_best_scores(scored["val_non_face_photos"]),
                                             figures["threshold"]),
        "summary": group_figures(found["all"])}
  return figures


def _chosen(by_rule: Mapping[int, dict[str, Any]]) -> int:
  """The rule whose validation portraits' worst group is found most often (ties: fewest)."""
  def key(k):
    worst = by_rule[k].get("val", {}).get("summary", {}).get("worst_rate")
    return (-1.0 if worst is None else worst, -k)
  return max(by_rule, key=key)


def evaluate_sets(variables: PyTree, sets: WholeImageSets, config: ml_collections.ConfigDict,
                  mesh: Mesh | None = None, progress: bool = False, *, dtype: Any = jnp.float32,
                  impl: str = "auto") -> dict[str, Any]:
  """Scans the non-face photos once and every set; the figures of each set.

  Args:
    variables: model variables.
    sets: :func:`load_whole_image_sets` (or sets made by hand, e.g. one of PPB portraits).
    config: ``config.whole_images`` (``max_false_rate``, ``min_iou``, ``nms_iou``,
      ``min_neighbours``, the rules).
    mesh: the device mesh the window batches are sharded over.
    progress: progress bars over photos.
    dtype: the compute dtype of the scan (the run's ``config.dtype``).
    impl: the model implementation (the run's ``config.model.impl``).

  Returns:
    ``{name: figures}``: :func:`whole_image_figures` of the test portraits (at the threshold
    of the validation photos where there are some) under the chosen ``min_neighbours``, plus
    ``boxes_per_portrait`` (after NMS), ``false_windows`` (the test non-face photos with the
    highest best window, highest first), ``decision_rule``, ``errors`` (unreadable photos by
    path: they are skipped), ``n_photos``, ``options`` and, with validation portraits, ``val``.
  """
  scan = dict(options=sets.options, mesh=mesh, progress=progress, dtype=dtype, impl=impl)
  errors, non_face_scans = {}, {}
  for field, photos in (("val_non_face_photos", sets.val_non_face_photos),
                        ("non_face_photos", sets.non_face_photos)):
    if photos:
      try:
        non_face_scans[field], field_errors = scan_non_face_photos(variables, photos, **scan)
      except DataError as err:
        raise DataError(f"config.whole_images.{field}: {err}") from None
      errors.update(field_errors)
  candidates = min_neighbours_candidates(config)
  nms_iou = float(setting(config, "nms_iou"))
  non_faces_by_rule = _by_rule(non_face_scans, nms_iou, candidates)  # shared by every set
  out = {}
  for name, photos in sets.photos.items():
    scans = {}
    scans["test"], set_errors = detect.scan_files(variables, photos, **scan)
    if sets.val_photos:
      scans["val"], val_errors = detect.scan_files(variables, sets.val_photos[name], **scan)
      set_errors.update(val_errors)
    by_rule = {k: _rule_figures({**non_faces_by_rule[k], **scored}, sets.faces[name], config,
                                sets.options.threshold)
               for k, scored in _by_rule(scans, nms_iou, candidates).items()}
    chosen = _chosen(by_rule)
    figures = by_rule[chosen]
    figures.update(decision_rule=decision_rule(sets, config, chosen), n_photos=len(photos),
                   options=sets.options._asdict())
    if len(candidates) > 1:
      figures["decision_rule"]["candidates"] = {
          str(k): {"threshold": f["threshold"], "val_summary": f["val"]["summary"],
                   "val_false_detections": f["val"]["false_detections"],
                   "summary": f["summary"], "faces_found": f["faces_found"]["all"],
                   "false_detections": f["false_detections"]}
          for k, f in by_rule.items()}
    figures["errors"] = {**errors, **set_errors}
    out[name] = figures
  return out


def summary_lines(name: str, figures: Mapping[str, Any]) -> list[str]:
  """The end-of-run summary lines of one whole-image set."""
  fd = figures["false_detections"]
  rule = figures.get("decision_rule") or {}
  chosen = ""
  if rule.get("threshold_photos") == "val_non_face_photos":
    vd = figures["val"]["false_detections"] if "val" in figures else None
    chosen = (f" set on {rule['n_threshold_photos']} validation non-face photos"
              + (f" ({vd['n_with_detection']} with a detection)" if vd else "") + "; test")
  if rule.get("min_neighbours", 1) > 1:
    chosen = (f" on windows with at least {rule['min_neighbours'] - 1} overlapping detections"
              f"{' (chosen on the validation portraits)' if 'candidates' in rule else ''},"
              + chosen)
  lines = [f"-- whole images {name}: {len(figures['portraits'])} photos scanned"
           + (f", {len(figures['errors'])} unreadable skipped" if figures.get("errors") else "")
           + f"; threshold {figures['threshold']:.4f}{chosen} ({fd['n_with_detection']}/"
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
