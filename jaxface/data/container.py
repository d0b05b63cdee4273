"""The in-memory face / not-face dataset container and the data error type.

Images are kept as ``uint8`` RGB, channels last, so a 100k-image 64x64 set takes about 1.2 GB
instead of 4.9 GB as float32; :meth:`FaceData.float_images` (and the batcher) convert the
images they need to float32 in [0, 1].
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np


class DataError(ValueError):
  """A data file, folder, field or argument is missing or malformed.

  The message names the offending file, field or argument and what is wrong with it.
  """


@dataclasses.dataclass
class FaceData:
  """Face / not-face images with labels, demographic groups and optional attributes.

  Attributes:
    images: (N, H, W, 3) uint8 RGB.
    labels: (N,) int32, 1 for a face and 0 for anything else.
    groups: (N,) str, the demographic group of each face (e.g. ``'LF'``, ``'DM'``); ``''`` where
      unknown and for non-faces.
    attributes: extra per-image columns, each an array of length N (e.g. ``'skin'``,
      ``'accessory'``, ``'age'``, ``'path'``).
    skipped: paths of unreadable images that a loader skipped (``skip_corrupt=True``).
  """
  images: np.ndarray
  labels: np.ndarray
  groups: np.ndarray
  attributes: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
  skipped: tuple[str, ...] = ()

  def __post_init__(self):
    images = np.asarray(self.images)
    if images.ndim != 4 or images.shape[-1] != 3:
      raise DataError(f"FaceData.images must have shape (N, H, W, 3), got {images.shape}")
    if images.dtype != np.uint8:
      raise DataError(f"FaceData.images must be uint8, got {images.dtype}")
    n = images.shape[0]
    labels = np.asarray(self.labels)
    if labels.shape != (n,):
      raise DataError(f"FaceData.labels must have shape ({n},), got {labels.shape}")
    if labels.size and not np.isin(labels, (0, 1)).all():
      bad = np.unique(labels[~np.isin(labels, (0, 1))])[:5]
      raise DataError(f"FaceData.labels must be 0 or 1, found {bad.tolist()}")
    groups = np.asarray(self.groups, dtype=str)
    if groups.shape != (n,):
      raise DataError(f"FaceData.groups must have shape ({n},), got {groups.shape}")
    attributes = {}
    for name, values in self.attributes.items():
      values = np.asarray(values)
      if values.shape[:1] != (n,):
        raise DataError(f"FaceData.attributes[{name!r}] must have length {n}, "
                        f"got shape {values.shape}")
      attributes[name] = values
    self.images = images
    self.labels = labels.astype(np.int32)
    self.groups = groups
    self.attributes = attributes
    self.skipped = tuple(self.skipped)

  def __len__(self) -> int:
    return self.images.shape[0]

  def __repr__(self) -> str:
    shape = "x".join(str(s) for s in self.images.shape[1:])
    return (f"FaceData({len(self)} images {shape}, {self.num_faces} faces, "
            f"{self.num_non_faces} non-faces, groups={self.group_names}, "
            f"attributes={sorted(self.attributes)})")

  @property
  def image_shape(self) -> tuple[int, int, int]:
    """(H, W, 3)."""
    return tuple(self.images.shape[1:])

  @property
  def num_faces(self) -> int:
    return int(np.count_nonzero(self.labels == 1))

  @property
  def num_non_faces(self) -> int:
    return int(np.count_nonzero(self.labels == 0))

  @property
  def num_skipped(self) -> int:
    """How many unreadable images the loader skipped."""
    return len(self.skipped)

  @property
  def group_names(self) -> list[str]:
    """Sorted unique non-empty group names."""
    return sorted(g for g in np.unique(self.groups).tolist() if g)

  def face_indices(self) -> np.ndarray:
    """Indices of the faces, (n_faces,) int64, in dataset order."""
    return np.flatnonzero(self.labels == 1)

  def non_face_indices(self) -> np.ndarray:
    """Indices of the non-faces, (n_non_faces,) int64, in dataset order."""
    return np.flatnonzero(self.labels == 0)

  def group_indices(self, group: str) -> np.ndarray:
    """Indices of the images in ``group``, (n,) int64."""
    return np.flatnonzero(self.groups == group)

  def subset(self, idx: np.ndarray | Sequence[int]) -> FaceData:
    """A new FaceData with the rows ``idx`` (integer indices or a boolean mask), copied."""
    idx = np.asarray(idx)
    if idx.dtype == bool:
      if idx.shape != (len(self),):
        raise DataError(f"boolean subset mask must have shape ({len(self)},), got {idx.shape}")
      idx = np.flatnonzero(idx)
    idx = idx.astype(np.int64, copy=False)
    return FaceData(images=self.images[idx], labels=self.labels[idx], groups=self.groups[idx],
                    attributes={k: v[idx] for k, v in self.attributes.items()},
                    skipped=self.skipped)

  def float_images(self, idx: np.ndarray | Sequence[int] | None = None) -> np.ndarray:
    """Images as float32 in [0, 1].

    Args:
      idx: optional integer indices or boolean mask; None converts every image.

    Returns:
      (N or len(idx), H, W, 3) float32.
    """
    if idx is None:
      return to_float(self.images)
    idx = np.asarray(idx)
    if idx.dtype == bool:
      idx = np.flatnonzero(idx)
    return to_float(np.take(self.images, idx, axis=0))


def to_float(images: np.ndarray) -> np.ndarray:
  """uint8 images (..., 3) to float32 in [0, 1], in one pass."""
  return np.multiply(images, np.float32(1.0 / 255.0), dtype=np.float32)


def concatenate(parts: Sequence[FaceData]) -> FaceData:
  """Joins datasets with the same image shape.

  Attributes present in every part are kept; the others are dropped.

  Args:
    parts: one or more FaceData.

  Returns:
    A FaceData with the rows of ``parts`` in order.
  """
  if not parts:
    raise DataError("concatenate needs at least one FaceData")
  shapes = {p.image_shape for p in parts}
  if len(shapes) > 1:
    raise DataError(f"cannot concatenate datasets with different image shapes {sorted(shapes)}")
  keys = set(parts[0].attributes)
  for p in parts[1:]:
    keys &= set(p.attributes)
  return FaceData(
      images=np.concatenate([p.images for p in parts]),
      labels=np.concatenate([p.labels for p in parts]),
      groups=np.concatenate([p.groups for p in parts]),
      attributes={k: np.concatenate([p.attributes[k] for p in parts]) for k in sorted(keys)},
      skipped=sum((p.skipped for p in parts), ()))
