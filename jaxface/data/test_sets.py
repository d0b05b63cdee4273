"""Extra, named test sets (e.g. the Pilot Parliaments Benchmark crops) and their attributes.

A test set is one of three layouts, told apart by :func:`detect_layout`:

* ``'grouped'``: a folder of faces in one sub-folder per group, ``ROOT/<group>/*.png|jpg``
  (:func:`~jaxface.data.load_grouped_faces`); faces only.
* ``'folders'``: a folder with ``faces/`` (images, or one sub-folder per group) and optionally
  ``not_faces/`` (label 0).
* ``'manifest'``: a CSV manifest (:func:`~jaxface.data.load_manifest`), one split of it.

Attributes of the faces from a ``faces.csv``-style table (a ``file`` column plus e.g.
``fitzpatrick``, ``gender``, ``country``) are joined on the image's file name by
:func:`attach_attributes`; :func:`groups_from_attribute` turns one of them (e.g. the
Fitzpatrick skin type, 1-6) into the groups that :func:`jaxface.evaluation.group_metrics`
reports detection rates by.

Every problem raises :class:`~jaxface.data.DataError` (a ValueError) whose message starts with
the set's name and names the path.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np

from jaxface.data.container import DataError, FaceData, concatenate
from jaxface.data.loaders import (IMAGE_EXTENSIONS, _parse_column, load_grouped_faces,
                                  load_image_folder, load_manifest, read_csv_rows)

LAYOUTS = ("grouped", "folders", "manifest")
PathLike = str | os.PathLike


def _sub_folders(folder: pathlib.Path) -> list[pathlib.Path]:
  return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _has_loose_images(folder: pathlib.Path) -> bool:
  return any(p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
             for p in folder.iterdir())


def detect_layout(path: PathLike, faces_dir: str = "faces") -> str:
  """Which layout a test set has: 'grouped', 'folders' or 'manifest'.

  Args:
    path: a folder or a ``.csv`` file.
    faces_dir: the faces sub-folder of the 'folders' layout.

  Returns:
    One of :data:`LAYOUTS`.

  Raises:
    DataError: the path is missing, or a folder without group sub-folders or ``faces_dir``.
  """
  path = pathlib.Path(path)
  if not path.exists():
    raise DataError(f"{path}: test set not found")
  if path.is_file():
    if path.suffix.lower() != ".csv":
      raise DataError(f"{path}: a test set file must be a CSV manifest (.csv)")
    return "manifest"
  if (path / faces_dir).is_dir():
    return "folders"
  if _sub_folders(path):
    return "grouped"
  raise DataError(f"{path}: empty test set (no group sub-folders and no {faces_dir}/ folder)")


def _load_faces(folder: pathlib.Path, root: pathlib.Path, image_size: int,
                skip_corrupt: bool) -> FaceData:
  """Faces in ``folder``: grouped if it has sub-folders, else one ungrouped folder."""
  if _sub_folders(folder):
    if _has_loose_images(folder):
      raise DataError(f"{folder}: holds both group sub-folders and loose images; put every "
                      "face in a group sub-folder")
    faces = load_grouped_faces(folder, image_size=image_size, skip_corrupt=skip_corrupt)
    rel = folder.relative_to(root)
    faces.attributes["path"] = np.array([str(rel / p) for p in faces.attributes["path"]])
    return faces
  return load_image_folder(folder, 1, "", image_size, skip_corrupt, root=root)


def load_test_set(name: str, path: PathLike, *, image_size: int = 64, skip_corrupt: bool = False,
                  split: str = "test", faces_dir: str = "faces",
                  non_faces_dir: str = "not_faces") -> FaceData:
  """Loads one named test set in any of the :data:`LAYOUTS`.

  Args:
    name: the set's name, used in error messages.
    path: the set's folder or CSV manifest.
    image_size: output height and width.
    skip_corrupt: skip unreadable images (counted in ``FaceData.skipped``) instead of raising.
    split: the manifest split to load (manifest layout only).
    faces_dir, non_faces_dir: sub-folder names of the 'folders' layout.

  Returns:
    FaceData with a ``path`` attribute relative to the set's folder (the manifest's paths for
    a manifest); faces first, then non-faces.

  Raises:
    DataError: ``"test set NAME: PATH: problem"`` for a missing or empty set, a group folder
      without images or an unreadable image (unless ``skip_corrupt``).
  """
  path = pathlib.Path(path)
  try:
    layout = detect_layout(path, faces_dir)
    if layout == "manifest":
      return load_manifest(path, split, image_size, skip_corrupt)
    if layout == "grouped":
      return load_grouped_faces(path, image_size=image_size, skip_corrupt=skip_corrupt)
    parts = [_load_faces(path / faces_dir, path, image_size, skip_corrupt)]
    if (path / non_faces_dir).exists():
      parts.append(load_image_folder(path / non_faces_dir, 0, "", image_size, skip_corrupt,
                                     root=path))
    return concatenate(parts)
  except DataError as err:
    raise DataError(f"test set {name!r}: {err}") from None


def load_test_sets(paths: Mapping[str, PathLike], **kwargs) -> dict[str, FaceData]:
  """Loads several named test sets: ``{name: load_test_set(name, path, **kwargs)}``."""
  return {name: load_test_set(name, path, **kwargs) for name, path in paths.items()}


def read_attribute_table(csv_path: PathLike, key: str = "file") -> dict[str, dict[str, object]]:
  """Reads a ``faces.csv``-style table: one row per image file, keyed by its file name.

  Integer columns become ints, numeric ones floats (NaN for blanks), others strings.

  Args:
    csv_path: the CSV file, with a header.
    key: the column holding the image's file name (its base name is the key).

  Returns:
    ``{file name: {column: value}}`` for every column but ``key``.

  Raises:
    DataError: the file is missing or unreadable, lacks ``key`` or repeats a file name.
  """
  csv_path = pathlib.Path(csv_path)
  columns, numbered = read_csv_rows(csv_path, "attribute table")
  rows = [row for _, row in numbered]
  if key not in columns:
    raise DataError(f"{csv_path}: missing column {key!r} (found {columns})")
  names = [pathlib.PurePath(row[key] or "").name for row in rows]
  seen: set[str] = set()
  for line, name in enumerate(names, start=2):
    if not name:
      raise DataError(f"{csv_path} line {line}: empty {key!r}")
    if name in seen:
      raise DataError(f"{csv_path} line {line}: file {name!r} listed twice")
    seen.add(name)
  others = [c for c in columns if c != key]
  parsed = {c: _parse_column([row.get(c) or "" for row in rows]).tolist() for c in others}
  return {name: {c: parsed[c][i] for c in others} for i, name in enumerate(names)}


def attach_attributes(data: FaceData, csv_path: PathLike, columns: Sequence[str] | None = None,
                      key: str = "file") -> FaceData:
  """Adds per-face columns of an attribute table to a test set, matched by file name.

  Args:
    data: a test set with a ``path`` attribute (every loader of this module gives one).
    csv_path: the table (see :func:`read_attribute_table`).
    columns: which columns to add (default: all but ``key``).
    key: the table's file-name column.

  Returns:
    A FaceData with the columns as attributes (ints as int64, numbers as float64, others as
    str). Non-faces get -1 / NaN / ''.

  Raises:
    DataError: ``data`` has no ``path``, a column is missing, or a face has no row.
  """
  if "path" not in data.attributes:
    raise DataError("attach_attributes: the test set has no 'path' attribute to match on")
  table = read_attribute_table(csv_path, key)
  some_row = next(iter(table.values()), {})
  columns = list(columns) if columns is not None else list(some_row)
  missing = [c for c in columns if c not in some_row]
  if missing:
    raise DataError(f"{csv_path}: missing column(s) {missing} (found {list(some_row)})")
  names = [pathlib.PurePath(p).name for p in data.attributes["path"]]
  is_face = data.labels == 1
  absent = [n for n, face in zip(names, is_face) if face and n not in table]
  if absent:
    raise DataError(f"{csv_path}: no row for {len(absent)} of {int(is_face.sum())} faces, "
                    f"e.g. {absent[0]!r}")
  attributes = dict(data.attributes)
  for column in columns:
    values = [table[n][column] if face else None for n, face in zip(names, is_face)]
    present = [v for v in values if v is not None]
    if all(isinstance(v, int) for v in present):
      attributes[column] = np.array([-1 if v is None else v for v in values], np.int64)
    elif all(isinstance(v, (int, float)) for v in present):
      attributes[column] = np.array([np.nan if v is None else v for v in values], np.float64)
    else:
      attributes[column] = np.array(["" if v is None else str(v) for v in values], dtype=str)
  return FaceData(images=data.images, labels=data.labels, groups=data.groups,
                  attributes=attributes, skipped=data.skipped)


def groups_from_attribute(data: FaceData, column: str, prefix: str = "") -> FaceData:
  """The test set regrouped by one attribute (e.g. ``'fitzpatrick'`` -> groups '1'...'6').

  Args:
    data: a FaceData with the attribute.
    column: the attribute.
    prefix: put before each value (e.g. ``'fitz'`` gives 'fitz1'...).

  Returns:
    A FaceData whose faces' groups are ``prefix + str(value)``; non-faces get ''.
  """
  if column not in data.attributes:
    raise DataError(f"no attribute {column!r} (attributes: {sorted(data.attributes)})")
  values = data.attributes[column]
  groups = np.array([f"{prefix}{v}" if label == 1 else ""
                     for v, label in zip(values.tolist(), data.labels)], dtype=str)
  return FaceData(images=data.images, labels=data.labels, groups=groups,
                  attributes=data.attributes, skipped=data.skipped)
