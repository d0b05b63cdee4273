"""Tests of jaxface.data.test_sets: named extra test sets and their per-face attributes."""

import csv

import numpy as np
import pytest
from PIL import Image

from jaxface.data import DataError
from jaxface.data import test_sets

from helpers import shared_data_dir

PPB = shared_data_dir() / "ppb-faces"


def _save(path, seed=0, size=16):
  path.parent.mkdir(parents=True, exist_ok=True)
  image = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
  Image.fromarray(image).save(path)
  return image


def _grouped(root, counts=(("DF", 2), ("LM", 3))):
  for k, (g, n) in enumerate(counts):
    for i in range(n):
      _save(root / g / f"{g}_{i}.png", seed=100 * k + i)
  return root


def _write_csv(path, header, rows):
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(header)
    writer.writerows(rows)
  return path


def test_grouped_layout(tmp_path):
  root = _grouped(tmp_path / "set")
  d = test_sets.load_test_set("mine", root, image_size=16)
  assert test_sets.detect_layout(root) == "grouped"
  assert d.num_faces == 5 and d.num_non_faces == 0
  assert d.groups.tolist() == ["DF"] * 2 + ["LM"] * 3
  assert d.attributes["path"][0] == "DF/DF_0.png"


def test_folders_layout_with_grouped_and_plain_faces(tmp_path):
  root = tmp_path / "set"
  _grouped(root / "faces")
  _save(root / "not_faces" / "n0.png", seed=5)
  d = test_sets.load_test_set("mine", root, image_size=16)
  assert test_sets.detect_layout(root) == "folders"
  assert d.labels.tolist() == [1] * 5 + [0]
  assert d.groups.tolist() == ["DF"] * 2 + ["LM"] * 3 + [""]
  assert d.attributes["path"].tolist()[0] == "faces/DF/DF_0.png"
  assert d.attributes["path"].tolist()[-1] == "not_faces/n0.png"

  plain = tmp_path / "plain"
  _save(plain / "faces" / "a.png")
  d = test_sets.load_test_set("plain", plain, image_size=16)
  assert d.labels.tolist() == [1] and d.groups.tolist() == [""]


def test_manifest_layout(tmp_path):
  _save(tmp_path / "a.png", 1)
  _save(tmp_path / "b.png", 2)
  manifest = _write_csv(tmp_path / "m.csv", ["split", "path", "label", "group"],
                        [["test", "a.png", 1, "DM"], ["test", "b.png", 0, ""],
                         ["train", "a.png", 1, "DM"]])
  d = test_sets.load_test_set("m", manifest, image_size=16)
  assert test_sets.detect_layout(manifest) == "manifest"
  assert d.labels.tolist() == [1, 0] and d.groups.tolist() == ["DM", ""]


def test_load_test_sets_by_name(tmp_path):
  sets = test_sets.load_test_sets({"a": _grouped(tmp_path / "a"), "b": _grouped(tmp_path / "b")},
                                  image_size=16)
  assert sorted(sets) == ["a", "b"] and len(sets["a"]) == 5


def test_missing_set_names_the_set_and_path(tmp_path):
  with pytest.raises(DataError, match=r"test set 'ppb'.*nowhere.*not found"):
    test_sets.load_test_set("ppb", tmp_path / "nowhere")


def test_empty_set_folder(tmp_path):
  (tmp_path / "empty").mkdir()
  with pytest.raises(DataError, match=r"test set 'e'.*empty.*empty test set"):
    test_sets.load_test_set("e", tmp_path / "empty")


def test_group_folder_without_images(tmp_path):
  root = _grouped(tmp_path / "set")
  (root / "DM").mkdir()
  (root / "DM" / "notes.txt").write_text("x")
  with pytest.raises(DataError, match=r"test set 'g'.*DM: no face images"):
    test_sets.load_test_set("g", root, image_size=16)


def test_loose_images_next_to_groups_are_an_error(tmp_path):
  root = tmp_path / "set"
  _grouped(root / "faces")
  _save(root / "faces" / "stray.png")
  with pytest.raises(DataError, match=r"test set 's'.*both group sub-folders and loose"):
    test_sets.load_test_set("s", root, image_size=16)


def test_unreadable_image_raises_or_is_counted(tmp_path):
  root = _grouped(tmp_path / "set")
  bad = root / "LM" / "broken.png"
  bad.write_bytes(b"not a png")
  with pytest.raises(DataError, match=r"test set 'u'.*broken\.png"):
    test_sets.load_test_set("u", root, image_size=16)
  d = test_sets.load_test_set("u", root, image_size=16, skip_corrupt=True)
  assert d.num_skipped == 1 and len(d) == 5


def test_attach_attributes_and_regroup(tmp_path):
  root = tmp_path / "set"
  _grouped(root / "faces", (("DF", 2), ("LM", 1)))
  _save(root / "not_faces" / "n0.png")
  table = _write_csv(tmp_path / "faces.csv", ["file", "fitzpatrick", "gender", "country"],
                     [["DF_0.png", 5, "Female", "Rwanda"], ["DF_1.png", 6, "Female", "Senegal"],
                      ["LM_0.png", 2, "Male", "Iceland"], ["other.png", 1, "Male", "Sweden"]])
  d = test_sets.attach_attributes(test_sets.load_test_set("s", root, image_size=16), table)
  assert d.attributes["fitzpatrick"].tolist() == [5, 6, 2, -1]
  assert d.attributes["fitzpatrick"].dtype == np.int64
  assert d.attributes["country"].tolist() == ["Rwanda", "Senegal", "Iceland", ""]
  regrouped = test_sets.groups_from_attribute(d, "fitzpatrick")
  assert regrouped.groups.tolist() == ["5", "6", "2", ""]
  assert regrouped.group_names == ["2", "5", "6"]

  only = test_sets.attach_attributes(d, table, columns=["gender"])
  assert "gender" in only.attributes
  with pytest.raises(DataError, match="missing column"):
    test_sets.attach_attributes(d, table, columns=["skin"])


def test_attach_attributes_bad_tables(tmp_path):
  root = _grouped(tmp_path / "set", (("DF", 2),))
  d = test_sets.load_test_set("s", root, image_size=16)
  partial = _write_csv(tmp_path / "p.csv", ["file", "fitzpatrick"], [["DF_0.png", 4]])
  with pytest.raises(DataError, match=r"no row for 1 of 2 faces, e\.g\. 'DF_1\.png'"):
    test_sets.attach_attributes(d, partial)
  twice = _write_csv(tmp_path / "t.csv", ["file", "fitzpatrick"],
                     [["DF_0.png", 4], ["x/DF_0.png", 5]])
  with pytest.raises(DataError, match="listed twice"):
    test_sets.attach_attributes(d, twice)
  no_key = _write_csv(tmp_path / "k.csv", ["name", "fitzpatrick"], [["DF_0.png", 4]])
  with pytest.raises(DataError, match="missing column 'file'"):
    test_sets.attach_attributes(d, no_key)
  with pytest.raises(DataError, match="not found"):
    test_sets.attach_attributes(d, tmp_path / "absent.csv")


@pytest.mark.skipif(not (PPB / "faces.csv").is_file(), reason="ppb-faces is not present")
@pytest.mark.parametrize("framing", ["tight", "loose"])
def test_ppb_crops_with_fitzpatrick(framing):
  d = test_sets.load_test_set(f"ppb_{framing}", PPB / framing)
  d = test_sets.attach_attributes(d, PPB / "faces.csv", ["fitzpatrick", "gender", "country"])
  assert d.num_faces == 615
  assert [len(d.group_indices(g)) for g in ("LF", "LM", "DF", "DM")] == [148, 192, 133, 142]
  fitz = d.attributes["fitzpatrick"]
  assert set(np.unique(fitz).tolist()) <= {1, 2, 3, 4, 5, 6}
  lighter = np.char.startswith(d.groups, "L")
  assert np.all(fitz[lighter] <= 3) and np.all(fitz[~lighter] >= 4)
  by_type = test_sets.groups_from_attribute(d, "fitzpatrick")
  assert sum(len(by_type.group_indices(g)) for g in by_type.group_names) == 615
