"""Tests of jaxface.data: container, file formats, download, pipeline and the real data set."""

import csv
import pathlib

import h5py
import numpy as np
import pytest
from helpers import shared_data_dir
from PIL import Image

from jaxface import data
from jaxface.data import DataError, FaceData

UTK = shared_data_dir() / "utkface-bias"


def _rng_images(n, h=64, w=64, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def _save(path, image, fmt=None):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(image).save(path, format=fmt)


def _write_h5(path, images, labels, **extra):
  with h5py.File(path, "w") as f:
    if images is not None:
      f.create_dataset("images", data=images)
    if labels is not None:
      f.create_dataset("labels", data=labels)
    for k, v in extra.items():
      f.create_dataset(k, data=v)


# ----------------------------------------------------------------------------- container


def test_facedata_helpers():
  images = _rng_images(6, 16, 16)
  d = FaceData(images, np.array([1, 0, 1, 1, 0, 1]), np.array(["LF", "", "DM", "LF", "", ""]),
               {"age": np.arange(6)})
  assert len(d) == 6 and d.num_faces == 4 and d.num_non_faces == 2
  assert d.group_names == ["DM", "LF"]
  np.testing.assert_array_equal(d.face_indices(), [0, 2, 3, 5])
  sub = d.subset([2, 4])
  np.testing.assert_array_equal(sub.images, images[[2, 4]])
  np.testing.assert_array_equal(sub.attributes["age"], [2, 4])
  assert sub.labels.dtype == np.int32 and list(sub.groups) == ["DM", ""]
  f = d.float_images([1])
  assert f.dtype == np.float32 and f.shape == (1, 16, 16, 3)
  np.testing.assert_allclose(f[0], images[1] / 255.0, atol=1e-6)
  assert 0.0 <= d.float_images().min() and d.float_images().max() <= 1.0
  np.testing.assert_array_equal(d.float_images(d.labels == 0), d.float_images([1, 4]))
  both = data.concatenate([d, sub])
  assert len(both) == 8 and list(both.attributes) == ["age"]


@pytest.mark.parametrize("kwargs,match", [
    ({"images": np.zeros((2, 8, 8), np.uint8)}, "shape"),
    ({"images": np.zeros((2, 8, 8, 3), np.float32)}, "uint8"),
    ({"labels": np.array([0, 2])}, "0 or 1"),
    ({"labels": np.array([0])}, "labels"),
    ({"groups": np.array([""])}, "groups"),
    ({"attributes": {"age": np.zeros(3)}}, "age"),
])
def test_facedata_validation(kwargs, match):
  args = {"images": np.zeros((2, 8, 8, 3), np.uint8), "labels": np.array([0, 1]),
          "groups": np.array(["", "LF"])}
  args.update(kwargs)
  with pytest.raises(DataError, match=match):
    FaceData(**args)


# ----------------------------------------------------------------------------- HDF5


def test_load_h5_bgr_to_rgb(tmp_path):
  rgb = _rng_images(10, 32, 32)
  labels = np.array([1, 0] * 5, np.float32)[:, None]
  _write_h5(tmp_path / "f.h5", rgb[..., ::-1], labels, idx=np.arange(10))
  d = data.load_h5(tmp_path / "f.h5")
  np.testing.assert_array_equal(d.images, rgb)
  np.testing.assert_array_equal(d.labels, labels[:, 0].astype(int))
  assert list(d.groups) == [""] * 10
  # A pure red pixel stored BGR (0, 0, 255) comes back as RGB (255, 0, 0).
  red_bgr = np.zeros((2, 16, 16, 3), np.uint8)
  red_bgr[..., 2] = 255
  _write_h5(tmp_path / "red.h5", red_bgr, np.array([1, 0]))
  assert tuple(data.load_h5(tmp_path / "red.h5").images[0, 0, 0]) == (255, 0, 0)


def test_load_h5_resizes(tmp_path):
  _write_h5(tmp_path / "f.h5", _rng_images(3, 64, 64), np.array([1, 0, 1]))
  assert data.load_h5(tmp_path / "f.h5", image_size=32).images.shape == (3, 32, 32, 3)


@pytest.mark.parametrize("images,labels,match", [
    (None, np.array([1, 0]), "missing dataset 'images'"),
    (np.zeros((2, 8, 8, 3), np.uint8), None, "missing dataset 'labels'"),
    (np.zeros((2, 8, 8), np.uint8), np.array([1, 0]), "shape"),
    (np.zeros((2, 8, 8, 3), np.float32), np.array([1, 0]), "uint8"),
    (np.zeros((2, 8, 8, 3), np.uint8), np.array([1, 0, 1]), "'labels' must have shape"),
    (np.zeros((2, 8, 8, 3), np.uint8), np.array([1, 2]), "0 or 1"),
    (np.zeros((2, 8, 8, 3), np.uint8), np.array([b"a", b"b"]), "numeric"),
])
def test_load_h5_bad_content(tmp_path, images, labels, match):
  path = tmp_path / "bad.h5"
  _write_h5(path, images, labels)
  with pytest.raises(DataError, match=match) as e:
    data.load_h5(path)
  assert str(path) in str(e.value)


def test_load_h5_missing_or_not_hdf5(tmp_path):
  with pytest.raises(DataError, match="not found"):
    data.load_h5(tmp_path / "nope.h5")
  (tmp_path / "text.h5").write_text("hello")
  with pytest.raises(DataError, match="not a readable HDF5"):
    data.load_h5(tmp_path / "text.h5")


# ----------------------------------------------------------------------------- folders


def _make_folders(root, n_faces=3, n_non=2):
  faces = _rng_images(n_faces, 64, 64, seed=1)
  for i, im in enumerate(faces):
    _save(root / "faces" / f"f{i}.png", im)
  _save(root / "faces" / "sub" / "big.jpg", _rng_images(1, 100, 80, seed=2)[0])
  for i, im in enumerate(_rng_images(n_non, 48, 48, seed=3)):
    _save(root / "not_faces" / f"n{i}.jpeg", im)
  (root / "faces" / "notes.txt").write_text("not an image")
  return faces


def test_load_folders_png_jpeg(tmp_path):
  faces = _make_folders(tmp_path)
  d = data.load_folders(tmp_path)
  assert d.images.shape == (6, 64, 64, 3) and d.images.dtype == np.uint8
  np.testing.assert_array_equal(d.labels, [1, 1, 1, 1, 0, 0])
  assert list(d.attributes["path"][:4]) == ["faces/f0.png", "faces/f1.png", "faces/f2.png",
                                            "faces/sub/big.jpg"]
  np.testing.assert_array_equal(d.images[:3], faces)  # PNG at the target size is lossless.
  assert d.num_skipped == 0


def test_load_folders_errors(tmp_path):
  with pytest.raises(DataError, match="not found"):
    data.load_folders(tmp_path / "missing")
  (tmp_path / "faces").mkdir()
  with pytest.raises(DataError, match="not_faces.*not found"):
    data.load_folders(tmp_path)
  (tmp_path / "not_faces").mkdir()
  _save(tmp_path / "faces" / "a.png", _rng_images(1)[0])
  with pytest.raises(DataError, match="no non-face images"):
    data.load_folders(tmp_path)


def test_corrupt_image_fails_or_is_skipped(tmp_path):
  _make_folders(tmp_path)
  bad = tmp_path / "faces" / "broken.png"
  bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
  truncated = tmp_path / "not_faces" / "cut.jpg"
  _save(truncated, _rng_images(1, 64, 64)[0])
  truncated.write_bytes(truncated.read_bytes()[:300])
  with pytest.raises(DataError, match="broken.png") as e:
    data.load_folders(tmp_path)
  assert "cannot read image" in str(e.value)
  d = data.load_folders(tmp_path, skip_corrupt=True)
  assert len(d) == 6 and d.num_skipped == 2
  assert {pathlib.Path(p).name for p in d.skipped} == {"broken.png", "cut.jpg"}


def test_load_grouped_faces(tmp_path):
  for g, n in (("LF", 2), ("DM", 3), ("DF", 1)):
    for i in range(n):
      _save(tmp_path / g / f"{i}.png", _rng_images(1, 32, 32, seed=i)[0])
  d = data.load_grouped_faces(tmp_path, image_size=32)
  assert list(d.groups) == ["DF"] + ["DM"] * 3 + ["LF"] * 2
  assert (d.labels == 1).all() and d.group_names == ["DF", "DM", "LF"]
  d = data.load_grouped_faces(tmp_path, groups=["LF"], image_size=32)
  assert len(d) == 2
  with pytest.raises(DataError, match="'XX'.*not found"):
    data.load_grouped_faces(tmp_path, groups=["LF", "XX"])
  (tmp_path / "empty").mkdir()
  with pytest.raises(DataError, match="no face images"):
    data.load_grouped_faces(tmp_path)
  with pytest.raises(DataError, match="no group sub-folders"):
    data.load_grouped_faces(tmp_path / "empty")


# ----------------------------------------------------------------------------- manifest


def _make_manifest(root, rows=None):
  rows = rows or [
      ("train", "img/a.png", "1", "LF", "30", "x"),
      ("train", "img/b.jpg", "0", "", "", "y"),
      ("train", "img/c.png", "1", "DM", "41", "z"),
      ("test", "img/d.png", "1", "DF", "22", "w"),
      ("test", "img/e.png", "0", "", "", "v"),
  ]
  for i, r in enumerate(rows):
    _save(root / r[1], _rng_images(1, 64, 64, seed=i)[0])
  with open(root / "manifest.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["split", "path", "label", "group", "age", "source"])
    w.writerows(rows)
  return root / "manifest.csv"


def test_load_manifest(tmp_path):
  path = _make_manifest(tmp_path)
  d = data.load_manifest(path, "train")
  assert len(d) == 3 and list(d.labels) == [1, 0, 1] and list(d.groups) == ["LF", "", "DM"]
  np.testing.assert_array_equal(d.attributes["age"], [30.0, np.nan, 41.0])
  assert list(d.attributes["source"]) == ["x", "y", "z"]
  assert list(d.attributes["path"]) == ["img/a.png", "img/b.jpg", "img/c.png"]
  np.testing.assert_array_equal(d.images[0], _rng_images(1, 64, 64, seed=0)[0])
  t = data.load_manifest(path, "test", image_size=32)
  assert t.images.shape == (2, 32, 32, 3) and t.group_names == ["DF"]


def test_load_manifest_errors(tmp_path):
  path = _make_manifest(tmp_path)
  with pytest.raises(DataError, match="no rows with split 'val'.*'test', 'train'"):
    data.load_manifest(path, "val")
  with pytest.raises(DataError, match="manifest file not found"):
    data.load_manifest(tmp_path / "none.csv", "train")
  text = path.read_text()
  path.write_text(text.replace("train,img/b.jpg,0", "train,img/b.jpg,7"))
  with pytest.raises(DataError, match=r"line 3: label '7' is not 0 or 1"):
    data.load_manifest(path, "train")
  path.write_text(text.replace("img/c.png", "img/gone.png"))
  with pytest.raises(DataError, match="line 4: image .*gone.png not found"):
    data.load_manifest(path, "train")
  path.write_text(text.replace("split,path,label", "part,path,label"))
  with pytest.raises(DataError, match=r"missing column\(s\) \['split'\]"):
    data.load_manifest(path, "train")
  path.write_text(text)
  (tmp_path / "img" / "c.png").write_bytes(b"not a png")
  with pytest.raises(DataError, match="c.png: cannot read image"):
    data.load_manifest(path, "train")
  d = data.load_manifest(path, "train", skip_corrupt=True)
  assert len(d) == 2 and d.num_skipped == 1 and list(d.groups) == ["LF", ""]


# ----------------------------------------------------------------------------- download


def test_download_file_url_and_cache(tmp_path):
  src = tmp_path / "src" / "train_face.h5"
  src.parent.mkdir()
  _write_h5(src, _rng_images(4, 16, 16), np.array([1, 0, 1, 0]))
  cache = tmp_path / "cache"
  path = data.download_train_face_h5(src.as_uri(), cache_dir=cache)
  assert path == cache / "train_face.h5" and path.is_file()
  assert len(data.load_h5(path)) == 4
  src.unlink()  # A second call uses the cached copy.
  assert data.download_train_face_h5(src.as_uri(), cache_dir=cache) == path
  assert [p.name for p in cache.iterdir()] == ["train_face.h5"]


def test_download_default_cache_dir(tmp_path, monkeypatch):
  monkeypatch.delenv("JAXFACE_CACHE", raising=False)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert data.default_cache_dir() == tmp_path / "xdg" / "jaxface"
  src = tmp_path / "train_face.h5"
  _write_h5(src, _rng_images(2, 16, 16), np.array([1, 0]))
  assert data.download_train_face_h5(src.as_uri()) == tmp_path / "xdg" / "jaxface" / src.name


@pytest.mark.parametrize("url", ["file:///definitely/not/here/train_face.h5",
                                 "http://127.0.0.1:9/train_face.h5", "nonsense://x/y.h5"])
def test_download_failure_is_one_clear_line(tmp_path, url):
  with pytest.raises(DataError, match="could not download") as e:
    data.download_train_face_h5(url, cache_dir=tmp_path)
  assert url in str(e.value) and "\n" not in str(e.value)
  assert list(tmp_path.iterdir()) == []  # No partial file left behind.


def test_download_not_hdf5(tmp_path):
  src = tmp_path / "page.h5"
  src.write_text("<html>quota exceeded</html>")
  with pytest.raises(DataError, match="not an HDF5 file"):
    data.download_train_face_h5(src.as_uri(), cache_dir=tmp_path / "c")


# ----------------------------------------------------------------------------- pipeline


def _small_config(**overrides):
  config = data.default_data_config()
  config.update(dict(n_train_faces=80, n_train_non_faces=60, n_test_per_group=5,
                     n_test_non_faces=8, dark_fraction=0.25))
  config.update(overrides)
  return config


def test_default_data_config():
  config = data.default_data_config()
  assert config.source == "planted" and config.image_size == 64
  assert 4000 <= config.n_train_faces <= 8000 and config.dark_fraction == 0.05
  for field in ("path", "test_path", "val_fraction", "seed", "skip_corrupt", "n_train_faces",
                "n_train_non_faces", "n_test_per_group", "dark_fraction", "accessory_fraction"):
    assert field in config


def test_load_datasets_planted():
  sets = data.load_datasets(_small_config())
  train, val, test = sets["train"], sets["val"], sets["test"]
  assert len(train) + len(val) == 140
  assert val.num_faces == 16 and val.num_non_faces == 12
  assert test.num_faces == 20 and test.num_non_faces == 8
  assert [np.count_nonzero(test.groups == g) for g in data.GROUPS] == [5, 5, 5, 5]


def test_train_val_split_stratified_and_deterministic():
  d = data.make_planted_bias(100, 50, seed=3, dark_fraction=0.2, image_size=16)
  train, val = data.train_val_split(d, 0.2, seed=1)
  assert len(train) + len(val) == 150
  assert val.num_faces == 20 and val.num_non_faces == 10
  assert np.count_nonzero(np.char.startswith(val.groups, "D")) == 4
  train2, val2 = data.train_val_split(d, 0.2, seed=1)
  np.testing.assert_array_equal(val.images, val2.images)
  keys = {im.tobytes() for im in train.images} | {im.tobytes() for im in val.images}
  assert len(keys) == 150
  with pytest.raises(DataError, match="val_fraction"):
    data.train_val_split(d, 1.0)


def test_load_datasets_files(tmp_path):
  # Folders source, test folder with faces/<group>/ and not_faces/.
  _make_folders(tmp_path / "train", n_faces=5, n_non=5)
  for g in ("LF", "DM"):
    _save(tmp_path / "test" / "faces" / g / "0.png", _rng_images(1)[0])
  _save(tmp_path / "test" / "not_faces" / "0.png", _rng_images(1)[0])
  config = _small_config(source="folders", path=str(tmp_path / "train"),
                         test_path=str(tmp_path / "test"))
  sets = data.load_datasets(config)
  assert len(sets["train"]) + len(sets["val"]) == 11
  assert list(sets["test"].groups) == ["DM", "LF", ""] and list(sets["test"].labels) == [1, 1, 0]
  # HDF5 source with a plain grouped test folder.
  _write_h5(tmp_path / "t.h5", _rng_images(10), np.array([1, 0] * 5))
  config = _small_config(source="h5", path=str(tmp_path / "t.h5"),
                         test_path=str(tmp_path / "test" / "faces"))
  sets = data.load_datasets(config)
  assert len(sets["val"]) == 2 and sets["test"].group_names == ["DM", "LF"]
  with pytest.raises(DataError, match="test_path is required"):
    data.load_datasets(_small_config(source="h5", path=str(tmp_path / "t.h5")))
  # Manifest source.
  path = _make_manifest(tmp_path / "m")
  sets = data.load_datasets(_small_config(source="manifest", path=str(path), val_fraction=0.5))
  assert len(sets["train"]) + len(sets["val"]) == 3 and len(sets["test"]) == 2


def test_load_datasets_rejects_bad_training_data(tmp_path):
  with pytest.raises(DataError, match="source must be one of"):
    data.load_datasets(_small_config(source="celeba"))
  with pytest.raises(DataError, match="no non-faces"):
    data.load_datasets(_small_config(n_train_non_faces=0))
  _write_h5(tmp_path / "faces_only.h5", _rng_images(4), np.ones(4))
  with pytest.raises(DataError, match="faces_only.h5: the training data has no non-faces"):
    data.load_datasets(_small_config(source="h5", path=str(tmp_path / "faces_only.h5"),
                                     test_path=str(tmp_path)))


# ----------------------------------------------------------------------------- real data


def _utk_rows():
  if not (UTK / "manifest.csv").is_file():
    pytest.skip(f"UTKFace bias set not found at {UTK}")
  with open(UTK / "manifest.csv", newline="") as f:
    return list(csv.DictReader(f))


def test_utkface_manifest_counts():
  rows = _utk_rows()
  counts = {}
  for r in rows:
    key = (r["split"], r["group"] or ("face" if r["label"] == "1" else "not_face"))
    counts[key] = counts.get(key, 0) + 1
  assert {g: counts[("train", g)] for g in ("LF", "LM", "DF", "DM", "not_face")} == {
      "LF": 3918, "LM": 4783, "DF": 222, "DM": 236, "not_face": 9159}
  test = data.load_manifest(UTK / "manifest.csv", "test")
  assert test.images.shape == (2400, 64, 64, 3)
  assert test.num_faces == 1200 and test.num_non_faces == 1200
  assert [np.count_nonzero(test.groups == g) for g in ("LF", "LM", "DF", "DM")] == [300] * 4
  assert set(test.attributes) == {"path", "age", "gender", "race", "source"}
  faces = test.face_indices()
  assert set(test.attributes["race"][faces]) == {0.0, 1.0}
  np.testing.assert_array_equal(test.attributes["race"][faces] == 1,
                                np.char.startswith(test.groups[faces], "D"))


def test_utkface_train_subset_and_folders(tmp_path):
  rows = [r for r in _utk_rows() if r["split"] == "train"][::25]
  with open(tmp_path / "subset.csv", "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    for r in rows:
      w.writerow({**r, "path": str(UTK / r["path"])})  # Absolute paths work too.
  d = data.load_manifest(tmp_path / "subset.csv", "train")
  assert len(d) == len(rows) and d.num_faces == sum(r["label"] == "1" for r in rows)
  assert d.images.std() > 20  # Real photographs, not blanks.
  grouped = data.load_grouped_faces(UTK / "test" / "faces", groups=["DF", "DM"])
  assert grouped.num_faces == 600 and grouped.group_names == ["DF", "DM"]


def test_load_datasets_manifest_val_split_and_partial_config(tmp_path):
  rows = [("train", f"i/{k}.png", str(k % 2), "LF" if k % 2 else "", "1", "s") for k in range(6)]
  rows += [("val", "i/v.png", "1", "DM", "2", "s"), ("val", "i/w.png", "0", "", "", "s"),
           ("test", "i/t.png", "1", "DF", "3", "s")]
  path = _make_manifest(tmp_path, rows)
  assert data.manifest_splits(path) == ["test", "train", "val"]
  import ml_collections
  partial = ml_collections.ConfigDict({"source": "manifest", "path": str(path)})
  sets = data.load_datasets(ml_collections.ConfigDict({"data": partial}))
  assert (len(sets["train"]), len(sets["val"]), len(sets["test"])) == (6, 2, 1)
  assert list(sets["val"].groups) == ["DM", ""]


def test_load_image_folder(tmp_path):
  for i in range(3):
    _save(tmp_path / "nf" / f"{i}.png", _rng_images(1, 32, 32, seed=i)[0])
  d = data.load_image_folder(tmp_path / "nf", label=0, image_size=32, root=tmp_path)
  assert d.num_non_faces == 3 and list(d.attributes["path"]) == ["nf/0.png", "nf/1.png",
                                                                  "nf/2.png"]
  with pytest.raises(DataError, match="image folder not found"):
    data.load_image_folder(tmp_path / "missing", label=0)
