"""Loaders for face / not-face data on disk: HDF5, image folders and CSV manifests.

Every loader returns a :class:`~jaxface.data.FaceData` with uint8 RGB images of a common size
and raises :class:`~jaxface.data.DataError`, naming the file and the problem, on bad input.

Image files (PNG, JPEG, BMP, GIF, WebP, PPM, TIFF) are decoded with Pillow in a thread pool
(Pillow releases the GIL while decoding); large JPEGs are decoded at reduced resolution (draft
mode) before resizing; the 18,318 64x64 JPEGs of the UTKFace bias set's training split load in
about 6-10 s on a shared 2-core machine (Pillow's header parsing holds the GIL, so threads help
less than cores would). Non-square images are centre-cropped to a square, then resized to
``image_size`` with an antialiasing bilinear filter. Unreadable images raise a DataError with
their path, or with ``skip_corrupt=True`` are skipped, logged and listed in
``FaceData.skipped``.
"""

from __future__ import annotations

import concurrent.futures
import csv
import os
import pathlib
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence

import h5py
import numpy as np
from absl import logging
from PIL import Image

from jaxface.data.container import DataError, FaceData, concatenate

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".tif", ".tiff")
DEFAULT_URL = "https://www.dropbox.com/s/hlz8atheyozp1yx/train_face.h5?dl=1"
_H5_CHUNK = 4096

PathLike = str | os.PathLike


# ----------------------------------------------------------------------------- images


def _check_size(image_size: int | None, allow_none: bool = False) -> None:
  if image_size is None and allow_none:
    return
  if not isinstance(image_size, (int, np.integer)) or image_size < 16 or image_size % 16:
    raise DataError(f"image_size must be a positive multiple of 16, got {image_size!r}")


def _to_square(im: Image.Image, image_size: int) -> Image.Image:
  """Centre-crops to a square and resizes to (image_size, image_size)."""
  w, h = im.size
  if w == h == image_size:
    return im
  side = min(w, h)
  box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
  return im.resize((image_size, image_size), Image.Resampling.BILINEAR, box=box)


def read_image(path: PathLike, image_size: int) -> np.ndarray:
  """Reads one image file as (image_size, image_size, 3) uint8 RGB.

  Raises:
    DataError: the file is missing or cannot be decoded.
  """
  path = os.fspath(path)
  try:
    with Image.open(path) as im:
      if im.format == "JPEG":
        im.draft("RGB", (image_size, image_size))
      if im.mode != "RGB":
        im = im.convert("RGB")
      return np.asarray(_to_square(im, image_size), dtype=np.uint8)
  except FileNotFoundError:
    raise DataError(f"{path}: image file not found") from None
  except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, ... on bad files.
    raise DataError(f"{path}: cannot read image ({type(e).__name__}: {e})") from None


def read_images(paths: Sequence[PathLike], image_size: int, skip_corrupt: bool = False,
                num_threads: int | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
  """Reads image files in parallel.

  Args:
    paths: image files.
    image_size: output height and width.
    skip_corrupt: skip unreadable files instead of raising.
    num_threads: decoding threads; None picks ``min(16, 2 * cpu_count)``.

  Returns:
    ``images`` (n_ok, S, S, 3) uint8, ``ok`` (len(paths),) bool mask of the files read, and
    the skipped paths.

  Raises:
    DataError: a file is unreadable and ``skip_corrupt`` is False.
  """
  n = len(paths)
  images = np.empty((n, image_size, image_size, 3), np.uint8)
  ok = np.ones(n, bool)
  errors: list[str] = []

  def load(i: int) -> None:
    try:
      images[i] = read_image(paths[i], image_size)
    except DataError as e:
      if not skip_corrupt:
        raise DataError(f"{e}; skip_corrupt=True (config.data.skip_corrupt) skips unreadable "
                        "images") from None
      ok[i] = False
      errors.append(str(e))

  num_threads = num_threads or min(16, 2 * (os.cpu_count() or 1))
  if n < 64 or num_threads == 1:
    for i in range(n):
      load(i)
  else:
    pool = concurrent.futures.ThreadPoolExecutor(num_threads)
    try:
      for _ in pool.map(lambda r: [load(i) for i in r], _chunks(n, 32)):
        pass
    finally:  # On an error, drop the queued work rather than decoding it.
      pool.shutdown(wait=True, cancel_futures=True)
  skipped = [str(paths[i]) for i in np.flatnonzero(~ok)]
  if skipped:
    logging.warning("skipped %d unreadable image(s), e.g. %s", len(skipped), errors[0])
  return (images if ok.all() else images[ok]), ok, skipped


def _chunks(n: int, size: int) -> list[range]:
  return [range(i, min(i + size, n)) for i in range(0, n, size)]


def resize_images(images: np.ndarray, image_size: int) -> np.ndarray:
  """Resizes uint8 images (N, H, W, 3) to (N, image_size, image_size, 3) (centre square crop)."""
  if images.shape[1:3] == (image_size, image_size):
    return images
  out = np.empty((len(images), image_size, image_size, 3), np.uint8)
  for i, image in enumerate(images):
    out[i] = np.asarray(_to_square(Image.fromarray(image), image_size))
  return out


def _list_images(folder: pathlib.Path) -> list[pathlib.Path]:
  """Image files under ``folder`` (recursively, hidden entries skipped), sorted."""
  found = []
  for dirpath, dirnames, filenames in os.walk(folder):
    dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
    found.extend(pathlib.Path(dirpath) / f for f in filenames
                 if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS))
  return sorted(found)


def _require_dir(path: pathlib.Path, what: str) -> None:
  if not path.exists():
    raise DataError(f"{path}: {what} folder not found")
  if not path.is_dir():
    raise DataError(f"{path}: {what} is not a folder")


def load_image_folder(folder: PathLike, label: int, group: str = "", image_size: int = 64,
                      skip_corrupt: bool = False, root: PathLike | None = None) -> FaceData:
  """Loads every image under ``folder`` (recursively) with one label and group.

  Args:
    folder: the folder.
    label: 1 for faces, 0 for non-faces.
    group: group name given to every image.
    image_size: output height and width.
    skip_corrupt: skip unreadable images instead of raising.
    root: the ``path`` attribute is relative to this folder (default: ``folder``).

  Returns:
    FaceData sorted by path.
  """
  folder = pathlib.Path(folder)
  _check_size(image_size)
  _require_dir(folder, "image")
  what = "face" if label == 1 else "non-face"
  return _load_folder(folder, pathlib.Path(root or folder), label, group, image_size,
                      skip_corrupt, what)


def _load_folder(folder: pathlib.Path, root: pathlib.Path, label: int, group: str,
                 image_size: int, skip_corrupt: bool, what: str) -> FaceData:
  files = _list_images(folder)
  if not files:
    raise DataError(f"{folder}: no {what} images found (looked for "
                    f"{', '.join(IMAGE_EXTENSIONS)})")
  images, ok, skipped = read_images(files, image_size, skip_corrupt)
  if not len(images):
    raise DataError(f"{folder}: none of the {len(files)} {what} images could be read")
  rel = np.array([str(f.relative_to(root)) for f, keep in zip(files, ok) if keep])
  n = len(images)
  return FaceData(images=images, labels=np.full(n, label, np.int32), groups=np.full(n, group),
                  attributes={"path": rel}, skipped=tuple(skipped))


# ----------------------------------------------------------------------------- formats


def load_h5(path: PathLike, image_size: int | None = None) -> FaceData:
  """Loads an MIT 6.S191 style HDF5 file (e.g. ``train_face.h5``).

  The file holds ``images``, (N, H, W, 3) uint8 in BGR channel order (converted to RGB here), and
  ``labels``, (N,) or (N, 1), 1 for faces and 0 for non-faces. It has no group labels.

  Args:
    path: the .h5 file.
    image_size: resize to this size; None keeps the stored size.

  Returns:
    FaceData with ``groups`` all ``''``.
  """
  path = pathlib.Path(path)
  _check_size(image_size, allow_none=True)
  if not path.is_file():
    raise DataError(f"{path}: HDF5 file not found")
  try:
    f = h5py.File(path, "r")
  except OSError as e:
    raise DataError(f"{path}: not a readable HDF5 file ({e})") from None
  with f:
    for key in ("images", "labels"):
      if key not in f or not isinstance(f[key], h5py.Dataset):
        raise DataError(f"{path}: missing dataset {key!r} (found {sorted(f.keys())})")
    images_ds, labels_ds = f["images"], f["labels"]
    if images_ds.ndim != 4 or images_ds.shape[-1] != 3:
      raise DataError(f"{path}: 'images' must have shape (N, H, W, 3), got {images_ds.shape}")
    if images_ds.dtype != np.uint8:
      raise DataError(f"{path}: 'images' must be uint8, got {images_ds.dtype}")
    n = images_ds.shape[0]
    if labels_ds.shape not in ((n,), (n, 1)):
      raise DataError(f"{path}: 'labels' must have shape ({n},) or ({n}, 1) to match 'images', "
                      f"got {labels_ds.shape}")
    if labels_ds.dtype.kind not in "biuf":
      raise DataError(f"{path}: 'labels' must be numeric, got {labels_ds.dtype}")
    labels = _binary_labels(labels_ds[()].reshape(n), f"{path}: 'labels'")
    size = image_size or images_ds.shape[1]
    if image_size is None and images_ds.shape[1] != images_ds.shape[2]:
      raise DataError(f"{path}: images are not square {images_ds.shape[1:3]}; pass image_size")
    images = np.empty((n, size, size, 3), np.uint8)
    for start in range(0, n, _H5_CHUNK):
      stop = min(start + _H5_CHUNK, n)
      images[start:stop] = resize_images(images_ds[start:stop][..., ::-1], size)
  return FaceData(images=images, labels=labels, groups=np.full(n, ""))


def _binary_labels(values: np.ndarray, what: str) -> np.ndarray:
  """Checks that numeric labels are all 0 or 1; returns them as int32."""
  bad = ~np.isin(values, (0, 1))
  if bad.any():
    raise DataError(f"{what} must be 0 or 1, found {np.unique(values[bad])[:5].tolist()} "
                    f"({int(bad.sum())} bad value(s), first at index {int(np.flatnonzero(bad)[0])})")
  return values.astype(np.int32)


def load_folders(root: PathLike, faces_dir: str = "faces", non_faces_dir: str = "not_faces",
                 image_size: int = 64, skip_corrupt: bool = False) -> FaceData:
  """Loads ``root/faces_dir/**`` (label 1) and ``root/non_faces_dir/**`` (label 0).

  Args:
    root: the dataset folder.
    faces_dir: sub-folder of face images (searched recursively).
    non_faces_dir: sub-folder of non-face images.
    image_size: output height and width.
    skip_corrupt: skip unreadable images (logged, listed in ``skipped``) instead of raising.

  Returns:
    FaceData (faces, then non-faces, each sorted by path) with ``groups`` all ``''`` and a
    ``path`` attribute relative to ``root``.
  """
  root = pathlib.Path(root)
  _check_size(image_size)
  _require_dir(root, "dataset")
  faces_path, non_faces_path = root / faces_dir, root / non_faces_dir
  _require_dir(faces_path, "faces")
  _require_dir(non_faces_path, "non-faces")
  faces = _load_folder(faces_path, root, 1, "", image_size, skip_corrupt, "face")
  non_faces = _load_folder(non_faces_path, root, 0, "", image_size, skip_corrupt, "non-face")
  return concatenate([faces, non_faces])


def load_grouped_faces(root: PathLike, groups: Sequence[str] | None = None,
                       image_size: int = 64, skip_corrupt: bool = False) -> FaceData:
  """Loads faces stored in one sub-folder per demographic group (e.g. ``LF/ LM/ DF/ DM/``).

  Args:
    root: folder holding the group sub-folders.
    groups: group names to load; None loads every non-hidden sub-folder.
    image_size: output height and width.
    skip_corrupt: skip unreadable images instead of raising.

  Returns:
    FaceData, all labelled 1, with the sub-folder name as group, in group order.
  """
  root = pathlib.Path(root)
  _check_size(image_size)
  _require_dir(root, "grouped faces")
  if groups is None:
    groups = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not groups:
      raise DataError(f"{root}: no group sub-folders found (expected e.g. LF/ LM/ DF/ DM/)")
  parts = []
  for group in groups:
    folder = root / group
    _require_dir(folder, f"group {group!r}")
    parts.append(_load_folder(folder, root, 1, group, image_size, skip_corrupt, "face"))
  return concatenate(parts)


def read_csv_rows(csv_path: pathlib.Path,
                  what: str) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
  """Column names and (line number, row) pairs of a CSV file; DataError naming ``what``."""
  if not csv_path.is_file():
    raise DataError(f"{csv_path}: {what} not found")
  try:
    with open(csv_path, newline="", encoding="utf-8") as f:
      reader = csv.DictReader(f)
      columns = list(reader.fieldnames or [])
      rows = [(reader.line_num, row) for row in reader]
  except (UnicodeDecodeError, csv.Error) as e:
    raise DataError(f"{csv_path}: not a readable CSV file ({e})") from None
  return columns, rows


def _read_manifest(csv_path: pathlib.Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
  """Column names and (line number, row) pairs of a CSV manifest."""
  columns, rows = read_csv_rows(csv_path, "manifest file")
  missing = [c for c in ("split", "path", "label") if c not in columns]
  if missing:
    raise DataError(f"{csv_path}: missing column(s) {missing} (found {columns})")
  return columns, rows


def manifest_splits(csv_path: PathLike) -> list[str]:
  """The sorted split names used in a CSV manifest."""
  _, rows = _read_manifest(pathlib.Path(csv_path))
  return sorted({row["split"] for _, row in rows})


def load_manifest(csv_path: PathLike, split: str, image_size: int = 64,
                  skip_corrupt: bool = False) -> FaceData:
  """Loads the images of one split listed in a CSV manifest.

  The CSV has a header with at least ``split``, ``path`` (relative to the CSV's folder, or
  absolute) and ``label`` (0 or 1); an optional ``group`` column (empty for non-faces), and any
  other columns become attributes: integer columns as int64, numeric columns with blanks as
  float64 with NaN for the blanks, others as str.

  Args:
    csv_path: the manifest.
    split: which rows to load (e.g. ``'train'``, ``'test'``).
    image_size: output height and width.
    skip_corrupt: skip unreadable images instead of raising (missing files always raise).

  Returns:
    FaceData in manifest order, with the manifest columns besides ``split``, ``label`` and
    ``group`` as attributes (``path`` included).
  """
  csv_path = pathlib.Path(csv_path)
  _check_size(image_size)
  columns, rows = _read_manifest(csv_path)
  selected = [(line, row) for line, row in rows if row["split"] == split]
  if not selected:
    present = sorted({row["split"] for _, row in rows})
    raise DataError(f"{csv_path}: no rows with split {split!r} (splits present: {present})")

  base = csv_path.parent
  labels = np.empty(len(selected), np.int32)
  files = []
  for i, (line, row) in enumerate(selected):
    value = (row["label"] or "").strip()
    if value not in ("0", "1", "0.0", "1.0"):
      raise DataError(f"{csv_path} line {line}: label {value!r} is not 0 or 1")
    labels[i] = int(float(value))
    if not row["path"]:
      raise DataError(f"{csv_path} line {line}: empty path")
    files.append(base / row["path"])
  absent = [(line, p) for (line, _), p in zip(selected, files) if not p.is_file()]
  if absent:
    raise DataError(f"{csv_path} line {absent[0][0]}: image {absent[0][1]} not found "
                    f"({len(absent)} of {len(files)} listed {split!r} images are missing)")

  images, ok, skipped = read_images(files, image_size, skip_corrupt)
  if not len(images):
    raise DataError(f"{csv_path}: none of the {len(files)} {split!r} images could be read")
  kept = [row for (_, row), keep in zip(selected, ok) if keep]
  groups = np.array([(row.get("group") or "").strip() for row in kept], dtype=str)
  attributes = {name: _parse_column([row.get(name) or "" for row in kept])
                for name in columns if name not in ("split", "label", "group")}
  return FaceData(images=images, labels=labels[ok], groups=groups, attributes=attributes,
                  skipped=tuple(skipped))


def _parse_column(values: list[str]) -> np.ndarray:
  """Manifest column -> int64, float64 (NaN for blanks) or str array."""
  present = [v for v in values if v != ""]
  try:
    as_int = [int(v) for v in present]
    if len(present) == len(values):
      return np.array(as_int, dtype=np.int64)
  except ValueError:
    pass
  try:
    return np.array([float(v) if v != "" else np.nan for v in values], dtype=np.float64)
  except ValueError:
    return np.array(values, dtype=str)


# ----------------------------------------------------------------------------- download


def default_cache_dir() -> pathlib.Path:
  """``$JAXFACE_CACHE``, else ``$XDG_CACHE_HOME/jaxface``, else ``~/.cache/jaxface``."""
  if os.environ.get("JAXFACE_CACHE"):
    return pathlib.Path(os.environ["JAXFACE_CACHE"])
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return pathlib.Path(base) / "jaxface"


def download_train_face_h5(url: str = DEFAULT_URL,
                           cache_dir: PathLike | None = None) -> pathlib.Path:
  """Downloads the MIT 6.S191 ``train_face.h5`` (or another HDF5 file) once into a cache.

  Args:
    url: where to get it (http(s):// or file://).
    cache_dir: target folder; None uses :func:`default_cache_dir`.

  Returns:
    Path of the cached file (named after the URL's last path component).

  Raises:
    DataError: the download failed (e.g. offline) or the result is not an HDF5 file.
  """
  cache = pathlib.Path(cache_dir) if cache_dir is not None else default_cache_dir()
  name = pathlib.PurePosixPath(urllib.parse.urlparse(url).path).name or "train_face.h5"
  dest = cache / name
  if dest.is_file() and h5py.is_hdf5(dest):
    return dest
  try:
    cache.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=cache)
  except OSError as e:
    raise DataError(f"cannot write to the cache folder {cache}: {e}") from None
  try:
    logging.info("downloading %s to %s", url, dest)
    with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
      shutil.copyfileobj(response, out, length=1 << 20)
    if not h5py.is_hdf5(tmp):
      raise DataError(f"downloaded {url} but it is not an HDF5 file; download it by hand to {dest}")
    os.replace(tmp, dest)
  except DataError:
    raise
  except (urllib.error.URLError, OSError, ValueError) as e:
    reason = " ".join(str(getattr(e, "reason", None) or e).split())  # One line.
    raise DataError(f"could not download {url} ({reason}); if offline, copy train_face.h5 to "
                    f"{dest} or set config.data.path to a local copy") from None
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return dest
