"""Builds the train / validation / test sets from a ``config.data`` ConfigDict.

Fields of ``config.data`` (defaults from :func:`default_data_config`):

* ``source`` (``'planted'``): one of

  - ``'planted'``: procedural faces from :func:`jaxface.data.make_planted_bias`; no files needed.
  - ``'h5'``: training data from the HDF5 file ``path`` (:func:`load_h5`), e.g. the MIT
    ``train_face.h5``; an empty ``path`` downloads it (:func:`download_train_face_h5`).
  - ``'folders'``: training data from ``path/faces_dir`` and ``path/non_faces_dir``
    (:func:`load_folders`).
  - ``'manifest'``: splits ``'train'``, ``'val'`` (if present) and ``'test'`` of the CSV
    manifest ``path`` (:func:`load_manifest`).

* ``path`` (``''``): HDF5 file, folder root or CSV manifest, per ``source``.
* ``test_path`` (``''``): for ``'h5'`` and ``'folders'``, the test faces in one sub-folder per
  group (:func:`load_grouped_faces`); if it instead holds ``faces_dir`` (with group
  sub-folders) and ``non_faces_dir``, both are loaded, the non-faces with label 0.
* ``faces_dir`` (``'faces'``), ``non_faces_dir`` (``'not_faces'``): sub-folder names.
* ``image_size`` (64): height and width, a multiple of 16.
* ``val_fraction`` (0.2): share of the training data held out for validation, stratified by
  label and group (unused when a manifest has a ``'val'`` split).
* ``seed`` (0): seed of the planted data and of the train / validation split.
* ``skip_corrupt`` (False): skip unreadable image files instead of failing.
* ``extra_test_sets`` (``''``): named extra test sets, ``'NAME=PATH,NAME=PATH'`` (e.g.
  ``'ppb_tight=/data/ppb-faces/tight'``), each a folder or manifest that
  :func:`jaxface.data.load_test_set` reads; loaded with the other sets (before any compile) and
  evaluated like the test split. Names are letters, digits, '_' and '-', unique, and not
  'train', 'val' or 'test'.
* ``extra_test_attributes`` (``''``): ``'NAME=CSV,...'``, a ``faces.csv``-style attribute
  table per extra set (:func:`jaxface.data.attach_attributes`); explicit, never guessed.
* ``extra_test_attribute_groups`` (``'fitzpatrick'``): comma-separated columns of those tables
  that the faces are also grouped by (e.g. the Fitzpatrick skin type 1-6).
* Planted source only: ``n_train_faces`` (6000) and ``n_train_non_faces`` (6000), generated
  before the validation split; ``dark_fraction`` (0.05), ``accessory_fraction`` (0.1);
  ``n_test_per_group`` (250) faces in each of LF, LM, DF, DM and ``n_test_non_faces`` (1000)
  in the test set, with ``test_accessory_fraction`` (0.5) of its faces wearing glasses.
"""

from __future__ import annotations

import pathlib
import re

import ml_collections
import numpy as np
from absl import logging

from jaxface.data.container import DataError, FaceData, concatenate
from jaxface.data.loaders import (download_train_face_h5, load_folders, load_grouped_faces,
                                  load_h5, load_image_folder, load_manifest, manifest_splits)
from jaxface.data.planted import make_planted_bias
from jaxface.data.test_sets import attach_attributes, load_test_set

SOURCES = ("planted", "h5", "folders", "manifest")
SPLITS = ("train", "val", "test")
_SET_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


def default_data_config() -> ml_collections.ConfigDict:
  """The ``config.data`` defaults: the planted source (see the module docstring)."""
  return ml_collections.ConfigDict({
      "source": "planted",
      "path": "",
      "test_path": "",
      "faces_dir": "faces",
      "non_faces_dir": "not_faces",
      "image_size": 64,
      "val_fraction": 0.2,
      "seed": 0,
      "skip_corrupt": False,
      "extra_test_sets": "",
      "extra_test_attributes": "",
      "extra_test_attribute_groups": "fitzpatrick",
      "n_train_faces": 6000,
      "n_train_non_faces": 6000,
      "n_test_per_group": 250,
      "n_test_non_faces": 1000,
      "dark_fraction": 0.05,
      "accessory_fraction": 0.1,
      "test_accessory_fraction": 0.5,
  })


def train_val_split(d: FaceData, val_fraction: float = 0.2,
                    seed: int = 0) -> tuple[FaceData, FaceData]:
  """Splits a dataset at random, stratified by label and group.

  Within each (label, group) stratum, ``round(val_fraction * size)`` images go to validation.

  Args:
    d: the dataset.
    val_fraction: in [0, 1).
    seed: split seed.

  Returns:
    ``(train, val)``, each in the original order.
  """
  if not 0.0 <= val_fraction < 1.0:
    raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
  rng = np.random.Generator(np.random.PCG64([seed, 0x5B1D]))
  is_val = np.zeros(len(d), bool)
  strata = np.char.add(d.labels.astype(str), np.char.add(":", d.groups))
  for stratum in np.unique(strata):
    idx = np.flatnonzero(strata == stratum)
    n_val = int(round(val_fraction * len(idx)))
    is_val[rng.permutation(idx)[:n_val]] = True
  return d.subset(~is_val), d.subset(is_val)


def _check_train(d: FaceData, where: str) -> None:
  if not d.num_faces:
    raise DataError(f"{where}: the training data has no faces")
  if not d.num_non_faces:
    raise DataError(f"{where}: the training data has no non-faces")


def _load_test_folder(root: str, config: ml_collections.ConfigDict) -> FaceData:
  if not root:
    raise DataError(f"config.data.test_path is required for source {config.source!r} (a folder "
                    "of test faces with one sub-folder per group)")
  path = pathlib.Path(root)
  faces_path = path / config.faces_dir
  if faces_path.is_dir():
    parts = [load_grouped_faces(faces_path, image_size=config.image_size,
                                skip_corrupt=config.skip_corrupt)]
    if (path / config.non_faces_dir).is_dir():
      parts.append(load_image_folder(path / config.non_faces_dir, 0, "", config.image_size,
                                     config.skip_corrupt, root=path))
    return concatenate(parts)
  return load_grouped_faces(path, image_size=config.image_size, skip_corrupt=config.skip_corrupt)


def _with_defaults(config) -> ml_collections.ConfigDict:
  if "source" not in config and "data" in config:
    config = config.data
  merged = default_data_config().to_dict()
  unknown = sorted(set(config) - set(merged))
  if unknown:
    logging.warning("config.data has fields the data pipeline does not use: %s", unknown)
  merged.update(dict(config))
  return ml_collections.ConfigDict(merged)


def load_datasets(config: ml_collections.ConfigDict) -> dict[str, FaceData]:
  """Loads the data described by ``config`` (the ``config.data`` ConfigDict).

  Args:
    config: the ``config.data`` ConfigDict (a whole config with a ``data`` field also works);
      fields it lacks take their :func:`default_data_config` values.

  Returns:
    ``{'train', 'val', 'test'}`` FaceData (the test set has group labels), then each extra
    test set of ``config.extra_test_sets`` under its name (:func:`load_extra_test_sets`, loaded
    first, so a bad one fails before the training data is read).
  """
  config = _with_defaults(config)
  extra = load_extra_test_sets(config)
  return {**_load_splits(config), **extra}


def parse_named_paths(text: str, field: str) -> dict[str, str]:
  """``'a=/x,b=/y'`` -> ``{'a': '/x', 'b': '/y'}``, checked.

  Args:
    text: comma-separated ``NAME=PATH`` entries ('' for none).
    field: the config field it came from, named in errors: a ``config.data`` field (e.g.
      ``'extra_test_sets'``) or a dotted one (``'whole_images.sets'``).

  Returns:
    The names and paths, in the given order.

  Raises:
    DataError: an entry without '=', an empty or badly formed name or path, a name given twice
      or one of ``'train'``, ``'val'``, ``'test'``.
  """
  where = f"config.{field}" if "." in field else f"config.data.{field}"
  named: dict[str, str] = {}
  for entry in (e.strip() for e in str(text or "").split(",")):
    if not entry:
      continue
    name, sep, path = (part.strip() for part in entry.partition("="))
    if not sep or not path:
      raise DataError(f"{where}: entry {entry!r} must be NAME=PATH")
    if not _SET_NAME.match(name):
      raise DataError(f"{where}: name {name!r} must be letters, digits, '_' or '-'")
    if name in SPLITS:
      raise DataError(f"{where}: name {name!r} clashes with the {name!r} split; choose another")
    if name in named:
      raise DataError(f"{where}: name {name!r} given twice")
    named[name] = path
  return named


def load_extra_test_sets(config: ml_collections.ConfigDict) -> dict[str, FaceData]:
  """The named extra test sets of ``config.extra_test_sets``, with their attributes.

  Args:
    config: the ``config.data`` ConfigDict (see the module docstring).

  Returns:
    ``{name: FaceData}`` in the configured order; a set with an attribute table in
    ``config.extra_test_attributes`` carries its ``extra_test_attribute_groups`` columns as
    attributes.

  Raises:
    DataError: ``"config.data.extra_test_sets: test set NAME: PATH: problem"`` for a bad
      entry, a missing or empty set, a set without faces, a group folder without images or an
      unreadable image (unless ``skip_corrupt``); ``config.data.extra_test_attributes`` for a
      table naming no such set, or a table that is missing, lacks a column or a face.
  """
  config = _with_defaults(config)
  paths = parse_named_paths(config.extra_test_sets, "extra_test_sets")
  tables = parse_named_paths(config.extra_test_attributes, "extra_test_attributes")
  unknown = [name for name in tables if name not in paths]
  if unknown:
    raise DataError(f"config.data.extra_test_attributes: {unknown[0]!r} is not a set of "
                    f"config.data.extra_test_sets (sets: {list(paths)})")
  columns = [c.strip() for c in str(config.extra_test_attribute_groups or "").split(",")
             if c.strip()]
  sets = {}
  for name, path in paths.items():
    try:
      data = load_test_set(name, path, image_size=config.image_size,
                           skip_corrupt=config.skip_corrupt, faces_dir=config.faces_dir,
                           non_faces_dir=config.non_faces_dir)
    except DataError as err:
      raise DataError(f"config.data.extra_test_sets: {err}") from None
    if not data.num_faces:
      raise DataError(f"config.data.extra_test_sets: test set {name!r}: {path}: has no faces")
    if data.num_skipped:
      logging.warning("test set %r: skipped %d unreadable images (config.data.skip_corrupt), "
                      "e.g. %s", name, data.num_skipped, data.skipped[0])
    if name in tables:
      try:
        data = attach_attributes(data, tables[name], columns)
      except DataError as err:
        raise DataError(f"config.data.extra_test_attributes: test set {name!r}: {err}") from None
    sets[name] = data
  return sets


def _load_splits(config: ml_collections.ConfigDict) -> dict[str, FaceData]:
  """The train / validation / test splits of an already defaulted ``config.data``."""
  source = config.source
  if source not in SOURCES:
    raise DataError(f"config.data.source must be one of {SOURCES}, got {source!r}")
  size = config.image_size
  if source == "planted":
    full = make_planted_bias(config.n_train_faces, config.n_train_non_faces, image_size=size,
                             seed=config.seed, dark_fraction=config.dark_fraction,
                             accessory_fraction=config.accessory_fraction)
    _check_train(full, "config.data (planted)")
    train, val = train_val_split(full, config.val_fraction, config.seed)
    test = make_planted_bias(n_per_group=config.n_test_per_group,
                             n_non_faces=config.n_test_non_faces, image_size=size,
                             seed=config.seed, accessory_fraction=config.test_accessory_fraction)
    return {"train": train, "val": val, "test": test}
  if source == "manifest":
    if not config.path:
      raise DataError("config.data.path must name the CSV manifest for source 'manifest'")
    load = lambda split: load_manifest(config.path, split, size, config.skip_corrupt)
    full = load("train")
    _check_train(full, config.path)
    if "val" in manifest_splits(config.path):
      train, val = full, load("val")
    else:
      train, val = train_val_split(full, config.val_fraction, config.seed)
    return {"train": train, "val": val, "test": load("test")}
  if source == "h5":
    path = config.path or download_train_face_h5()
    full = load_h5(path, size)
    where = str(path)
  else:
    if not config.path:
      raise DataError("config.data.path must name the dataset folder for source 'folders'")
    full = load_folders(config.path, config.faces_dir, config.non_faces_dir, size,
                        config.skip_corrupt)
    where = config.path
  _check_train(full, where)
  train, val = train_val_split(full, config.val_fraction, config.seed)
  return {"train": train, "val": val, "test": _load_test_folder(config.test_path, config)}
