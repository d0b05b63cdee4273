"""Deterministic half-face / half-non-face training batches with per-face sampling weights.

Every batch is half faces, drawn with replacement according to per-face probabilities (uniform
by default; the DB-VAE re-weights them each epoch), and half non-faces drawn uniformly. The
indices of batch ``(epoch, step)`` come from a random generator seeded with
``(seed, epoch, step)`` only, so a run killed mid-epoch and resumed with the same probabilities
sees exactly the same batches, in any order and with or without prefetching.

A batch is a :class:`Batch`: its faces and its non-faces as two arrays, so a consumer knows
which rows are faces without labels. The batch does not depend on the number of devices; a
data-parallel step splits each half over the devices (``jaxface.train.train_step``).

Images stay uint8 in memory; a batch is gathered and converted to float32 in [0, 1] in two
vectorised numpy passes (throughput: ``python experiments/bench_batcher.py``, recorded in
``experiments/results/``).
"""

from __future__ import annotations

import copy
import queue
import threading
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from jaxface.data.container import DataError, FaceData, to_float


class Batch(NamedTuple):
  """One training batch of B images, half faces and half non-faces (a pytree of two arrays).

  Attributes:
    faces: (B / 2, H, W, 3) float32 in [0, 1].
    non_faces: (B / 2, H, W, 3) float32 in [0, 1].
  """
  faces: np.ndarray
  non_faces: np.ndarray


class Batcher:
  """Samples balanced training batches from a FaceData.

  Attributes:
    data: the dataset.
    batch_size: images per batch (even, and a multiple of ``2 * num_devices``).
    seed: base seed of the batch index streams.
    num_devices: number of devices each half of a batch will be split over; only checked
      against ``batch_size`` (the batches do not depend on it).
    steps_per_epoch: batches per epoch; by default ``n_faces // (batch_size // 2)``, so an epoch
      draws about as many faces as the dataset holds.
  """

  def __init__(self, data: FaceData, batch_size: int, seed: int, num_devices: int = 1,
               steps_per_epoch: int | None = None):
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 2 or batch_size % 2:
      raise DataError(f"batch_size must be a positive even number (half faces, half non-faces), "
                      f"got {batch_size!r}")
    if not isinstance(num_devices, (int, np.integer)) or num_devices < 1:
      raise DataError(f"num_devices must be a positive integer, got {num_devices!r}")
    if batch_size % (2 * num_devices):
      raise DataError(
          f"batch_size {batch_size} must be divisible by num_devices {num_devices} into even "
          f"per-device batches (half faces, half non-faces each), i.e. a multiple of "
          f"{2 * num_devices}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
      raise DataError(f"seed must be a non-negative integer, got {seed!r}")
    self._faces = data.face_indices()
    self._non_faces = data.non_face_indices()
    if not len(self._faces):
      raise DataError(f"cannot build training batches: the dataset has no faces ({data!r})")
    if not len(self._non_faces):
      raise DataError(f"cannot build training batches: the dataset has no non-faces ({data!r})")
    self.data = data
    self.batch_size = int(batch_size)
    self.seed = int(seed)
    self.num_devices = int(num_devices)
    if steps_per_epoch is None:
      steps_per_epoch = max(1, len(self._faces) // (self.batch_size // 2))
    if not isinstance(steps_per_epoch, (int, np.integer)) or steps_per_epoch < 1:
      raise DataError(f"steps_per_epoch must be a positive integer, got {steps_per_epoch!r}")
    self.steps_per_epoch = int(steps_per_epoch)
    self._probs: np.ndarray | None = None
    self._cdf: np.ndarray | None = None
    self._non_face_probs: np.ndarray | None = None
    self._non_face_cdf: np.ndarray | None = None

  @property
  def num_faces(self) -> int:
    return len(self._faces)

  @property
  def num_non_faces(self) -> int:
    return len(self._non_faces)

  @property
  def face_probabilities(self) -> np.ndarray:
    """(n_faces,) float64 sampling probabilities of the faces, in ``data.face_indices()`` order."""
    if self._probs is None:
      return np.full(self.num_faces, 1.0 / self.num_faces)
    return self._probs.copy()

  @property
  def non_face_probabilities(self) -> np.ndarray:
    """(n_non_faces,) float64 sampling probabilities of the non-faces, in
    ``data.non_face_indices()`` order."""
    if self._non_face_probs is None:
      return np.full(self.num_non_faces, 1.0 / self.num_non_faces)
    return self._non_face_probs.copy()

  def set_face_probabilities(self, p: np.ndarray | None) -> None:
    """Sets the faces' sampling weights (normalised here); None restores uniform sampling.

    Args:
      p: (n_faces,) non-negative finite weights, in ``data.face_indices()`` order, not all zero.
    """
    self._probs, self._cdf = _normalised(p, self.num_faces, "face")

  def set_non_face_probabilities(self, p: np.ndarray | None) -> None:
    """Sets the non-faces' sampling weights (normalised here); None restores uniform sampling.

    Args:
      p: (n_non_faces,) non-negative finite weights, in ``data.non_face_indices()`` order, not
        all zero.
    """
    self._non_face_probs, self._non_face_cdf = _normalised(p, self.num_non_faces, "non-face")

  def batch_indices(self, epoch: int, step: int) -> np.ndarray:
    """Dataset indices of batch ``(epoch, step)``: (batch_size,) int64, the faces of
    :attr:`Batch.faces` then the non-faces of :attr:`Batch.non_faces`, in order."""
    if not 0 <= step < self.steps_per_epoch:
      raise DataError(f"step must be in [0, {self.steps_per_epoch}), got {step}")
    if epoch < 0:
      raise DataError(f"epoch must be >= 0, got {epoch}")
    rng = np.random.Generator(np.random.PCG64([self.seed, epoch, step]))
    half = self.batch_size // 2
    face_pos = _draw(rng, self._cdf, self.num_faces, half)
    non_face_pos = _draw(rng, self._non_face_cdf, self.num_non_faces, half)
    return np.concatenate([self._faces[face_pos], self._non_faces[non_face_pos]])

  def batch(self, epoch: int, step: int) -> Batch:
    """Batch ``step`` of ``epoch``.

    Returns:
      A :class:`Batch` of ``batch_size / 2`` faces and as many non-faces, float32 in [0, 1].
    """
    # One buffer for the batch, the halves views of it: two half-size buffers were slower at
    # large batches (glibc hands them back to the OS after every batch, then page-faults).
    images = to_float(np.take(self.data.images, self.batch_indices(epoch, step), axis=0))
    half = self.batch_size // 2
    return Batch(faces=images[:half], non_faces=images[half:])

  def epoch_batches(self, epoch: int, start_step: int = 0, prefetch: int = 2) -> Iterator[Batch]:
    """Yields the batches of ``epoch`` from ``start_step`` to ``steps_per_epoch - 1``.

    Args:
      epoch: epoch number.
      start_step: first step, to resume an interrupted epoch.
      prefetch: batches prepared ahead in a background thread; 0 prepares them inline. The
        face probabilities in force when iteration starts are used for the whole epoch.

    Yields:
      Batches as :meth:`batch` returns them.
    """
    if not 0 <= start_step <= self.steps_per_epoch:
      raise DataError(f"start_step must be in [0, {self.steps_per_epoch}], got {start_step}")
    steps = range(start_step, self.steps_per_epoch)
    if prefetch <= 0:
      for step in steps:
        yield self.batch(epoch, step)
      return
    snapshot = copy.copy(self)  # Later set_face_probabilities calls do not affect this epoch.
    out: queue.Queue = queue.Queue(maxsize=prefetch)
    stop = threading.Event()

    def put(item) -> bool:
      while not stop.is_set():
        try:
          out.put(item, timeout=0.05)
          return True
        except queue.Full:
          continue
      return False

    def work():
      try:
        for step in steps:
          if not put(("batch", snapshot.batch(epoch, step))):
            return
        put(("end", None))
      except BaseException as e:  # Re-raised in the consumer.
        put(("error", e))

    thread = threading.Thread(target=work, name="jaxface-batcher", daemon=True)
    thread.start()
    try:
      while True:
        kind, item = out.get()
        if kind == "end":
          return
        if kind == "error":
          raise item
        yield item
    finally:
      stop.set()
      thread.join()



def _normalised(p: np.ndarray | None, n: int, what: str
                ) -> tuple[np.ndarray, np.ndarray] | tuple[None, None]:
  """``(probabilities, cdf)`` of the weights ``p`` (n,), or ``(None, None)`` for None.

  Raises:
    DataError: a wrong shape, a NaN, infinite or negative weight, or all zero (the message
      names the ``what`` and the first offending position).
  """
  if p is None:
    return None, None
  p = np.asarray(p, dtype=np.float64)
  if p.shape != (n,):
    raise DataError(f"{what} probabilities must have shape ({n},) (one per {what}), "
                    f"got {p.shape}")
  if not np.isfinite(p).all():
    raise DataError(f"{what} probabilities contain {np.count_nonzero(~np.isfinite(p))} NaN or "
                    f"infinite values, e.g. at {what} {int(np.flatnonzero(~np.isfinite(p))[0])}")
  if (p < 0).any():
    raise DataError(f"{what} probabilities contain {np.count_nonzero(p < 0)} negative values, "
                    f"e.g. {p[p < 0][0]} at {what} {int(np.flatnonzero(p < 0)[0])}")
  total = p.sum()
  if not total > 0:
    raise DataError(f"{what} probabilities are all zero")
  probs = p / total
  cdf = np.cumsum(probs)
  cdf /= cdf[-1]
  return probs, cdf


def _draw(rng: np.random.Generator, cdf: np.ndarray | None, n: int, size: int) -> np.ndarray:
  """``size`` positions in [0, n): uniform without a cdf, else by inverting it."""
  if cdf is None:
    return rng.integers(n, size=size)
  pos = np.searchsorted(cdf, rng.random(size), side="right")
  return np.minimum(pos, n - 1, out=pos)
