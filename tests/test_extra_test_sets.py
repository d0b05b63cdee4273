"""Tests of the named extra test sets: config, loading at set-up, evaluation, summary, report."""

import csv
import json

import numpy as np
import pytest
from PIL import Image

from jaxface import data as data_lib
from jaxface import evaluation, train
from jaxface.data import DataError

from helpers import shared_data_dir, tiny_config

PPB = shared_data_dir() / "ppb-faces"


def _save(path, seed=0, size=32, value=None):
  path.parent.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  image = (np.full((size, size, 3), value, np.uint8) if value is not None
           else rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
  Image.fromarray(image).save(path)


def _grouped_set(root, groups=("A", "B"), n=3):
  """ROOT/<group>/<group>_<i>.png, and a faces.csv beside ROOT with a fitzpatrick column."""
  rows = []
  for k, g in enumerate(groups):
    for i in range(n):
      _save(root / g / f"{g}_{i}.png", seed=10 * k + i)
      rows.append([f"{g}_{i}.png", 1 + (k * n + i) % 6])
  table = root.parent / f"{root.name}_faces.csv"
  with open(table, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["file", "fitzpatrick"])
    writer.writerows(rows)
  return root, table


def _mixed_set(root, n_faces=4, n_non=5):
  """ROOT/faces/*.png and ROOT/not_faces/*.png."""
  for i in range(n_faces):
    _save(root / "faces" / f"f{i}.png", seed=100 + i)
  for i in range(n_non):
    _save(root / "not_faces" / f"n{i}.png", seed=200 + i)
  return root


def _data_config(**fields):
  config = data_lib.default_data_config()
  config.image_size = 32
  config.update(fields)
  return config


# ------------------------------------------------------------------------------ config parsing


def test_parse_named_paths_keeps_order_and_strips():
  assert data_lib.parse_named_paths(" b=/y , a=/x,", "extra_test_sets") == {"b": "/y", "a": "/x"}
  assert data_lib.parse_named_paths("", "extra_test_sets") == {}


@pytest.mark.parametrize("text, why", [
    ("test=/x", "clashes with the 'test' split"),
    ("val=/x", "clashes with the 'val' split"),
    ("a=/x,a=/y", "'a' given twice"),
    ("a", "must be NAME=PATH"),
    ("a=", "must be NAME=PATH"),
    ("a b=/x", "must be letters"),
])
def test_parse_named_paths_rejects_bad_entries_naming_the_field(text, why):
  with pytest.raises(DataError, match="config.data.extra_test_sets: .*" + why):
    data_lib.parse_named_paths(text, "extra_test_sets")


def test_extra_fields_pass_config_validation():
  config = tiny_config("cnn")
  config.data.extra_test_sets = "a=/x"
  config.data.extra_test_attributes = "a=/x.csv"
  from jaxface import config as config_lib
  config_lib.validate_config(config, 1)


# ----------------------------------------------------------------------------------- loading


def test_load_extra_test_sets_with_attributes(tmp_path):
  grouped, table = _grouped_set(tmp_path / "grouped")
  mixed = _mixed_set(tmp_path / "mixed")
  config = _data_config(extra_test_sets=f"g={grouped},m={mixed}",
                        extra_test_attributes=f"g={table}")
  sets = data_lib.load_extra_test_sets(config)
  assert list(sets) == ["g", "m"]
  assert sets["g"].groups.tolist() == ["A"] * 3 + ["B"] * 3
  assert sets["g"].attributes["fitzpatrick"].tolist() == [1, 2, 3, 4, 5, 6]
  assert sets["m"].labels.tolist() == [1] * 4 + [0] * 5
  assert "fitzpatrick" not in sets["m"].attributes
  # load_datasets returns them beside the splits
  config.n_train_faces = config.n_train_non_faces = 8
  config.n_test_per_group, config.n_test_non_faces = 2, 4
  assert list(data_lib.load_datasets(config)) == ["train", "val", "test", "g", "m"]


def test_missing_set_names_field_and_path(tmp_path):
  config = _data_config(extra_test_sets=f"gone={tmp_path / 'nowhere'}")
  with pytest.raises(DataError, match=r"config.data.extra_test_sets: test set 'gone': .*nowhere"):
    data_lib.load_extra_test_sets(config)


def test_empty_set_and_empty_group_folder(tmp_path):
  (tmp_path / "empty").mkdir()
  with pytest.raises(DataError, match=r"extra_test_sets: test set 'e': .*empty.*empty test set"):
    data_lib.load_extra_test_sets(_data_config(extra_test_sets=f"e={tmp_path / 'empty'}"))
  grouped, _ = _grouped_set(tmp_path / "grouped")
  (grouped / "C").mkdir()
  with pytest.raises(DataError, match=r"extra_test_sets: test set 'g': .*C.*no .*images"):
    data_lib.load_extra_test_sets(_data_config(extra_test_sets=f"g={grouped}"))


def test_set_of_non_faces_only_has_no_faces(tmp_path):
  root = tmp_path / "nf"
  for i in range(2):
    _save(root / "not_faces" / f"n{i}.png", seed=i)
  (root / "faces").mkdir()
  _save(root / "faces" / "x.png")  # one face then removed: faces/ is empty
  (root / "faces" / "x.png").unlink()
  with pytest.raises(DataError, match=r"extra_test_sets: test set 'nf': .*faces"):
    data_lib.load_extra_test_sets(_data_config(extra_test_sets=f"nf={root}"))


def test_unreadable_image_fails_or_is_counted(tmp_path):
  grouped, _ = _grouped_set(tmp_path / "grouped")
  (grouped / "A" / "broken.png").write_bytes(b"not a png")
  with pytest.raises(DataError, match=r"extra_test_sets: test set 'g': .*broken.png"):
    data_lib.load_extra_test_sets(_data_config(extra_test_sets=f"g={grouped}"))
  sets = data_lib.load_extra_test_sets(_data_config(extra_test_sets=f"g={grouped}",
                                                    skip_corrupt=True))
  assert sets["g"].num_faces == 6 and sets["g"].num_skipped == 1


def test_attribute_table_errors_name_their_field(tmp_path):
  grouped, table = _grouped_set(tmp_path / "grouped")
  with pytest.raises(DataError, match=r"config.data.extra_test_attributes: 'x' is not a set"):
    data_lib.load_extra_test_sets(_data_config(extra_test_sets=f"g={grouped}",
                                               extra_test_attributes=f"x={table}"))
  with pytest.raises(DataError, match=r"config.data.extra_test_attributes: test set 'g': "
                                      r".*missing column"):
    data_lib.load_extra_test_sets(_data_config(
        extra_test_sets=f"g={grouped}", extra_test_attributes=f"g={table}",
        extra_test_attribute_groups="skin"))
  with pytest.raises(DataError, match=r"config.data.extra_test_attributes: test set 'g': "
                                      r".*nope.csv"):
    data_lib.load_extra_test_sets(_data_config(extra_test_sets=f"g={grouped}",
                                               extra_test_attributes=f"g={tmp_path}/nope.csv"))
