"""The Pilot Parliaments Benchmark portraits: groups coded in file names, the face-box table.

A PPB portrait's file name codes its Fitzpatrick skin type (1-6) and gender, e.g.
``0612_6_f_RW.jpg``; types 1-3 are the lighter (L) groups, 4-6 the darker (D) ones, so the
groups are LF, LM, DF and DM (:data:`jaxface.data.GROUPS`). ``ppb-faces/faces.csv`` gives, per
portrait, its group and the square box of its face (``box_cx, box_cy, box_side``; empty where
the face detector that made the table found none).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jaxface.data.container import DataError
from jaxface.data.loaders import read_csv_rows

_PPB_NAME = re.compile(r"^\d+_([1-6])_([fm])_", re.IGNORECASE)
_IMAGE_ID = re.compile(r"^(\d+)_")
UNKNOWN_GROUP = "unknown"  # the group of a portrait neither the table nor its name places


def portrait_group(name: str) -> str | None:
  """The PPB group (LF, LM, DF, DM) coded in a portrait's file name, e.g. ``0612_6_f_RW.jpg``.

  Fitzpatrick types 1-3 are lighter (L), 4-6 darker (D). Returns None for other names.
  """
  match = _PPB_NAME.match(Path(name).name)
  if not match:
    return None
  tone = "L" if int(match.group(1)) <= 3 else "D"
  return tone + match.group(2).upper()


def portrait_id(name: str) -> int | None:
  """A PPB portrait's image id: the number its file name starts with (612 for
  ``0612_6_f_RW.jpg``, the ``file`` and ``portrait`` columns of faces.csv alike); None for
  other names."""
  match = _IMAGE_ID.match(Path(name).name)
  return int(match.group(1)) if match else None


def load_face_boxes(csv_path: str | os.PathLike) -> dict[str, dict[str, Any]]:
  """Reads ppb-faces' faces.csv: portrait file name -> ``{'group', 'box'}``.

  ``box`` is ``(x0, y0, side)`` in portrait pixels from ``box_cx, box_cy, box_side``, or None
  where the row has no box.

  Raises:
    DataError: the file is missing or lacks a column.
  """
  csv_path = Path(csv_path)
  columns, rows = read_csv_rows(csv_path, "face-box CSV")
  missing = {"portrait", "group", "box_cx", "box_cy", "box_side"} - set(columns)
  if missing:
    raise DataError(f"{csv_path}: missing column(s) {', '.join(sorted(missing))}")
  faces = {}
  for _, row in rows:
    box = None
    if row["box_side"].strip():
      side = float(row["box_side"])
      box = (float(row["box_cx"]) - side / 2, float(row["box_cy"]) - side / 2, side)
    faces[row["portrait"]] = {"group": row["group"], "box": box}
  return faces


def group_of_portrait(name: str, faces: Mapping[str, Mapping[str, Any]]) -> str:
  """A portrait's group: from its row of :func:`load_face_boxes`, else from its file name.

  Args:
    name: the portrait's file name (a path's last part is used).
    faces: :func:`load_face_boxes` output (``{}``: every group from the file names).

  Returns:
    The group, or :data:`UNKNOWN_GROUP` where neither gives one.
  """
  entry = faces.get(Path(name).name)
  if entry is not None:
    return entry["group"]
  return portrait_group(name) or UNKNOWN_GROUP
