"""Whole-photo figures of a finished study run, scanned after training (``--scan_rows``).

Scanning the PPB portraits and the non-face photos takes about two minutes a run on a 2-core
CPU, more than training the CNN; ``experiments/study.py --scan_rows ROW ...`` scans only the
runs of those rows, from their last checkpoint (the state the run ended with), into
``RUN/whole_images.json``. The figures are those the run would have written with
``config.whole_images`` set (:func:`jaxface.eval.whole_photos.evaluate_sets`), plus the fields
scanned with (``scan_fields``): a study asking for other fields scans the run again.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SCAN_FILE = "whole_images.json"


def saved_scan(workdir: Path) -> dict[str, Any]:
  """The whole-photo figures scanned after training, ``{}`` when the run has none."""
  path = workdir / SCAN_FILE
  return json.loads(path.read_text()) if path.is_file() else {}


def is_stale(scan: Mapping[str, Any], fields: Mapping[str, str]) -> bool:
  """Whether a saved scan was made with other ``config.whole_images`` fields than ``fields``
  (a scan that does not record its fields, from before they were recorded, is stale)."""
  return any(figures.get("scan_fields") != dict(fields) for figures in scan.values())


def scan_run(workdir: Path, fields: Mapping[str, str]) -> dict[str, Any]:
  """Scans a finished run's whole-photo sets into ``RUN/whole_images.json`` (see
  :func:`saved_scan` for a scan already made).

  Args:
    workdir: the run directory (its latest checkpoint is read, nothing in it is rewritten but
      ``whole_images.json``).
    fields: ``config.whole_images`` fields (sets, boxes, non-face and validation photos).

  Returns:
    ``{set name: figures}`` as in ``metrics['eval']['whole_images']``.
  """
  from jaxface.checkpoints import load_run
  from jaxface.eval import whole_photos
  from jaxface.train.metric_log import json_default

  config, variables = load_run(workdir)
  settings = whole_photos.default_whole_images_config()
  settings.update(dict(fields))
  sets = whole_photos.load_whole_image_sets(settings, int(config.data.image_size))
  figures = whole_photos.evaluate_sets(variables, sets, settings,
                                       dtype=config.dtype, impl=config.model.impl)
  for set_figures in figures.values():
    set_figures["scan_fields"] = dict(fields)
  text = json.dumps(figures, default=json_default)
  (workdir / SCAN_FILE).write_text(text)
  return json.loads(text)  # as saved_scan will read it
