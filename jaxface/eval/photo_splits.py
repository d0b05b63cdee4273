"""The validation part of the whole photos: which photos choose the decision rule.

The threshold of a whole-photo evaluation (:mod:`jaxface.eval.whole_photos`) is chosen on
validation non-face photos, a deterministic part of a folder of training photos
(``config.whole_images.val_non_face_photos``, the files at the sorted positions that fit
``val_non_face_rule``, e.g. ``'index % 4 == 0'``), and the validation portraits
(``val_faces_rule``, e.g. ``'image_id % 4 == 0'`` of the PPB image ids) are kept out of the
test figures. Hard-negative mining (:mod:`jaxface.hard_negatives`) leaves the validation
photos out too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import ml_collections

from jaxface import detect
from jaxface.data import DataError
from jaxface.data.ppb import portrait_id


def folder_photos(folder: str, field: str) -> list[Path]:
  """The photos of a folder named by ``config.<field>`` (sorted by name).

  Raises:
    DataError: naming the field: the folder is missing or holds no photo.
  """
  if not Path(folder).is_dir():
    raise DataError(f"config.{field}: {folder}: no such folder")
  try:
    return detect.photo_files(folder)
  except DataError as err:
    raise DataError(f"config.{field}: {err}") from None


def parse_rule(text: str, variable: str, field: str) -> tuple[int, int] | None:
  """``'<variable> % M == R'`` as ``(M, R)``; None for ``''``.

  Raises:
    DataError: naming ``config.<field>``: another form, M < 1 or R >= M.
  """
  if isinstance(text, str) and not text.strip():
    return None
  match = re.fullmatch(rf"\s*{variable}\s*%\s*(\d+)\s*==\s*(\d+)\s*", str(text))
  if not isinstance(text, str) or not match or not 0 <= int(match.group(2)) < int(match.group(1)):
    raise DataError(f"config.{field} = {text!r}: must read '{variable} % M == R' with "
                    f"0 <= R < M (e.g. '{variable} % 4 == 0'), or '' for none")
  return int(match.group(1)), int(match.group(2))


def validation_non_face_photos(config: ml_collections.ConfigDict) -> list[Path]:
  """The validation non-face photos of ``config.whole_images`` (``[]`` where none is set).

  The files of ``val_non_face_photos`` at the sorted positions ``index`` that fit
  ``val_non_face_rule``.

  Raises:
    DataError: naming the field: a missing or empty folder, a bad rule, or a rule that
      selects no photo.
  """
  if not config.get("val_non_face_photos"):
    return []
  field = "whole_images.val_non_face_rule"
  files = folder_photos(config.val_non_face_photos, "whole_images.val_non_face_photos")
  rule = parse_rule(config.val_non_face_rule, "index", field)
  if rule is None:
    raise DataError(f"config.{field} is empty: it selects the validation photos of "
                    f"config.whole_images.val_non_face_photos ({config.val_non_face_photos})")
  val = [f for i, f in enumerate(files) if i % rule[0] == rule[1]]
  if not val:
    raise DataError(f"config.{field} = {config.val_non_face_rule!r} selects none of the "
                    f"{len(files)} photos of {config.val_non_face_photos}: the validation split "
                    "is empty")
  return val


def shared_photos(these: Iterable[Path], those: Iterable[Path]) -> list[str]:
  """The photos in both lists: the same file, or the same file name."""
  those = list(those)
  names = {p.name for p in those} | {str(p.resolve()) for p in those}
  return [str(p) for p in these if p.name in names or str(p.resolve()) in names]


def _split_portraits(name: str, files: list[Path], rule: tuple[int, int]
                     ) -> tuple[list[Path], list[Path]]:
  """``(test, validation)`` portraits of set ``name``: the validation ones fit ``rule``."""
  field = "config.whole_images.val_faces_rule"
  test, val = [], []
  for f in files:
    image_id = portrait_id(f.name)
    if image_id is None:
      raise DataError(f"{field}: set {name!r}: {f}: no image id (the number a portrait's file "
                      "name starts with, e.g. 0612_6_f_RW.jpg); set the rule to '' to keep "
                      "every portrait for the test")
    (val if image_id % rule[0] == rule[1] else test).append(f)
  if not val or not test:
    raise DataError(f"{field}: set {name!r}: the rule leaves {len(val)} validation and "
                    f"{len(test)} test portraits of {len(files)}: both must be non-empty")
  return test, val


def validation_split(config: ml_collections.ConfigDict, photos: dict[str, list[Path]],
                      non_faces: list[Path]
                      ) -> tuple[dict[str, list[Path]], dict[str, list[Path]] | None, list[Path]]:
  """``(test portraits, validation portraits or None, validation non-face photos)``."""
  val_non_faces = validation_non_face_photos(config)
  if not val_non_faces:
    return photos, None, []
  shared = shared_photos(val_non_faces, non_faces)
  if shared:
    raise DataError(f"config.whole_images.val_non_face_photos: {len(shared)} validation "
                    f"photo(s) are also test photos of config.whole_images.non_face_photos, "
                    f"e.g. {shared[0]}")
  rule = parse_rule(config.val_faces_rule, "image_id", "whole_images.val_faces_rule")
  if rule is None:
    return photos, None, val_non_faces
  split = {name: _split_portraits(name, files, rule) for name, files in photos.items()}
  return ({name: s[0] for name, s in split.items()}, {name: s[1] for name, s in split.items()},
          val_non_faces)
