"""Hard negatives by bootstrapping: windows of non-face photos the model takes for faces.

After the configured ``num_epochs``, each of ``config.hard_negatives.rounds`` rounds scans the
mining photos with the whole-photo scanner (:mod:`jaxface.detect`, the scan options of
``config.whole_images``, in the run's dtype and model implementation), keeps the
``windows_per_round`` highest-scoring windows (at most ``windows_per_photo`` per photo after
non-maximum suppression at ``config.whole_images.nms_iou``; windows of earlier rounds are not
taken again; equal scores go by photo, then by rank), adds them to the training non-faces as
``image_size`` crops and trains ``epochs_per_round`` more epochs. A run trains
:func:`total_epochs` epochs; a learning-rate schedule spans them all.

Fields of ``config.hard_negatives`` (:func:`default_hard_negatives_config`):

* ``rounds`` (0): mining rounds; 0 trains as without this module.
* ``windows_per_round`` (1000), ``windows_per_photo`` (8): windows added per round, and the
  most taken from one photo.
* ``photos`` (``''``): a folder of non-face photos to mine (e.g. nonface-photos'
  ``train_images/``); its validation photos (``config.whole_images.val_non_face_photos`` under
  ``val_non_face_rule``) are left out, and none may be a test photo.
* ``epochs_per_round`` (1): epochs trained after each round.

Each round's crops, with their photos, boxes and scores, are written to
``WORKDIR/hard_negatives/round<k>.npz`` before training on them; a resumed run reads them
again, so it ends as an uninterrupted one. ``metrics.json`` gets one summary per round under
``hard_negatives``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh
from PIL import Image

from jaxface import data as data_lib
from jaxface import detect
from jaxface.data import DataError
from jaxface.eval.photo_splits import folder_photos, shared_photos, validation_non_face_photos
from jaxface.eval.whole_photos import check_settings, scan_options

PyTree = Any
ROUND_DIR = "hard_negatives"


def default_hard_negatives_config() -> ml_collections.ConfigDict:
  """The ``config.hard_negatives`` fields and their defaults (see the module docstring)."""
  return ml_collections.ConfigDict({
      "rounds": 0,
      "windows_per_round": 1000,
      "windows_per_photo": 8,
      "photos": "",
      "epochs_per_round": 1,
  })


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the ``config.hard_negatives`` field of a bad value."""
  hn = config.get("hard_negatives")
  if hn is None:
    return
  for field, low in (("rounds", 0), ("windows_per_round", 1), ("windows_per_photo", 1),
                     ("epochs_per_round", 1)):
    value = hn[field]
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
      raise ValueError(f"config.hard_negatives.{field} = {value!r}: must be an integer >= {low}")
  if not isinstance(hn.photos, str):
    raise ValueError(f"config.hard_negatives.photos = {hn.photos!r}: must be a folder name")
  if hn.rounds and not hn.photos:
    raise ValueError("config.hard_negatives.photos = '': a folder of non-face photos to mine "
                     f"is needed for config.hard_negatives.rounds = {hn.rounds}")


def total_epochs(config: ml_collections.ConfigDict) -> int:
  """The epochs a run trains: ``num_epochs``, then ``epochs_per_round`` per mining round."""
  hn = config.get("hard_negatives")
  if hn is None or not hn.get("rounds", 0):
    return int(config.num_epochs)
  return int(config.num_epochs) + int(hn.rounds) * int(hn.epochs_per_round)


def round_start(config: ml_collections.ConfigDict, k: int) -> int:
  """The first epoch that trains on the crops of round ``k`` (1-based)."""
  return int(config.num_epochs) + (k - 1) * int(config.hard_negatives.epochs_per_round)


def rounds_due(config: ml_collections.ConfigDict, epoch: int) -> int:
  """How many rounds' crops the training of ``epoch`` uses."""
  hn = config.get("hard_negatives")
  if hn is None or not hn.get("rounds", 0) or epoch < config.num_epochs:
    return 0
  return min(int(hn.rounds), (epoch - int(config.num_epochs)) // int(hn.epochs_per_round) + 1)


def round_path(workdir: str | os.PathLike, k: int) -> Path:
  """``WORKDIR/hard_negatives/round<k>.npz``."""
  return Path(workdir) / ROUND_DIR / f"round{k}.npz"


def mining_photos(config: ml_collections.ConfigDict) -> list[Path]:
  """The photos to mine (``[]`` without rounds), checked before any training.

  Raises:
    DataError: naming the field: a missing or empty folder, photos shared with the test
      photos, or fewer photos than ``windows_per_round / windows_per_photo``.
  """
  hn = config.get("hard_negatives")
  if hn is None or not hn.rounds:
    return []
  check_settings(config.whole_images, config.data.image_size)
  files = folder_photos(hn.photos, "hard_negatives.photos")
  held_out = {str(p.resolve()) for p in validation_non_face_photos(config.whole_images)}
  files = [f for f in files if str(f.resolve()) not in held_out]
  test = config.whole_images.non_face_photos
  shared = shared_photos(files, detect.photo_files(test)) if test and Path(test).is_dir() else []
  if shared:
    raise DataError(f"config.hard_negatives.photos: {len(shared)} photo(s) are also test photos "
                    f"of config.whole_images.non_face_photos, e.g. {shared[0]}")
  needed = math.ceil(hn.windows_per_round / hn.windows_per_photo)
  if len(files) < needed:
    raise DataError(
        f"config.hard_negatives.photos: {hn.photos} has {len(files)} photo(s) to mine "
        f"({len(held_out)} validation photo(s) left out), fewer than the {needed} needed for "
        f"config.hard_negatives.windows_per_round = {hn.windows_per_round} at "
        f"windows_per_photo = {hn.windows_per_photo}")
  return files


# ------------------------------------------------------------------------------ mining


def window_crop(photo: np.ndarray, box: Sequence[int], size: int) -> np.ndarray:
  """The ``(x0, y0, side)`` window of a photo as a (size, size, 3) uint8 crop (antialiased
  bilinear, as the image loaders resize)."""
  x0, y0, side = (int(v) for v in box)
  image = Image.fromarray(photo).resize((size, size), Image.Resampling.BILINEAR,
                                        box=(x0, y0, x0 + side, y0 + side))
  return np.asarray(image, np.uint8)


def _top_windows(scans: Mapping[str, detect.ScanResult], exclude: set[tuple],
                 per_photo: int, n: int, nms_iou: float) -> list[tuple[str, np.ndarray, float]]:
  """The ``n`` highest-scoring windows, ``per_photo`` at most from a photo after NMS.

  Windows in ``exclude`` (``(file name, x0, y0, side)``) are never taken. Equal scores go by
  the photos' order, then by rank within the photo.
  """
  results = []
  for key, scan in scans.items():
    probs = scan.probs.copy()
    name = Path(key).name
    probs[[i for i, b in enumerate(scan.boxes.tolist()) if (name, *b) in exclude]] = -np.inf
    results.append(scan._replace(probs=probs))
  kept = detect.nms_detections(results, nms_iou, threshold=-np.inf, max_out=per_photo)
  windows = [(key, box, float(p)) for key, (boxes, probs) in zip(scans, kept)
             for box, p in zip(boxes, probs)]
  order = np.argsort(-np.asarray([w[2] for w in windows], np.float64), kind="stable")
  return [windows[i] for i in order[:n]]


def mine_round(variables: PyTree, photos: Sequence[Path], config: ml_collections.ConfigDict,
               mesh: Mesh | None = None, exclude: set[tuple] = frozenset()
               ) -> dict[str, np.ndarray]:
  """Scans the photos and cuts the top windows (see the module docstring).

  Args:
    variables: model variables.
    photos: the mining photos (:func:`mining_photos`).
    config: the run config (``hard_negatives``, ``whole_images``, ``data.image_size``,
      ``dtype``, ``model.impl``).
    mesh: the device mesh the scan is sharded over.
    exclude: ``(file name, x0, y0, side)`` of windows taken before.

  Returns:
    ``crops`` (n, S, S, 3) uint8, ``photos`` (n,) file names, ``boxes`` (n, 3) int32,
    ``scores`` (n,) float32, ``error_files`` and ``error_messages`` (unreadable photos: they
    are skipped) and ``n_photos_scanned``.
  """
  hn, size = config.hard_negatives, int(config.data.image_size)
  scans, errors = detect.scan_files(variables, photos, scan_options(config.whole_images, size),
                                    mesh, dtype=config.dtype, impl=config.model.impl)
  for message in errors.values():
    logging.warning("config.hard_negatives.photos: skipped %s", message)
  windows = _top_windows(scans, exclude, hn.windows_per_photo, hn.windows_per_round,
                         float(config.whole_images.nms_iou))
  if len(windows) < hn.windows_per_round:
    logging.warning("config.hard_negatives: %d windows mined, fewer than windows_per_round = %d",
                    len(windows), hn.windows_per_round)
  crops = np.zeros((len(windows), size, size, 3), np.uint8)
  rows: dict[str, list[int]] = {}
  for i, (key, _, _) in enumerate(windows):
    rows.setdefault(key, []).append(i)
  for key, indices in rows.items():
    photo = detect.read_photo(key)
    for i in indices:
      crops[i] = window_crop(photo, windows[i][1], size)
  return {"crops": crops, "photos": np.asarray([Path(w[0]).name for w in windows], str),
          "boxes": np.asarray([w[1] for w in windows], np.int32).reshape(-1, 3),
          "scores": np.asarray([w[2] for w in windows], np.float32),
          "error_files": np.asarray(list(errors), str),
          "error_messages": np.asarray(list(errors.values()), str),
          "n_photos_scanned": np.asarray(len(scans), np.int64)}


def save_round(path: Path, mined: Mapping[str, np.ndarray]) -> None:
  """Writes a round's arrays to ``path`` (through a temporary file: never half written)."""
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.stem + ".tmp.npz")
  np.savez(tmp, **mined)
  os.replace(tmp, path)


def load_round(path: Path) -> dict[str, np.ndarray]:
  """A round's arrays as :func:`mine_round` returns them."""
  with np.load(path, allow_pickle=False) as f:
    return {key: f[key] for key in f.files}


def round_summary(k: int, epoch: int, mined: Mapping[str, np.ndarray],
                  top: int = 10) -> dict[str, Any]:
  """What ``metrics.json`` says of round ``k`` (JSON-ready)."""
  scores, names = mined["scores"], mined["photos"].tolist()
  by_photo: dict[str, int] = {}
  for name in names:
    by_photo[name] = by_photo.get(name, 0) + 1
  return {
      "round": k, "first_epoch": epoch, "n_windows": len(scores),
      "n_photos_scanned": int(mined["n_photos_scanned"]), "n_photos_with_windows": len(by_photo),
      "score_min": float(scores.min()) if len(scores) else None,
      "score_mean": float(scores.mean()) if len(scores) else None,
      "score_max": float(scores.max()) if len(scores) else None,
      "top_windows": [{"photo": n, "box": b, "score": float(s)} for n, b, s in
                      zip(names[:top], mined["boxes"][:top].tolist(), scores[:top])],
      "photos_with_most_windows": [[name, count] for name, count in
                                   sorted(by_photo.items(), key=lambda kv: -kv[1])[:top]],
      "errors": dict(zip(mined["error_files"].tolist(), mined["error_messages"].tolist())),
  }


def as_non_faces(mined: Mapping[str, np.ndarray], like: data_lib.FaceData) -> data_lib.FaceData:
  """A round's crops as non-faces with the attributes of ``like`` (``path``: the window)."""
  n = len(mined["scores"])
  attributes = {}
  for key, values in like.attributes.items():
    attributes[key] = np.zeros((n,) + values.shape[1:], values.dtype)
  if "path" in like.attributes:
    attributes["path"] = np.asarray([f"{name}#{x0},{y0},{side}" for name, (x0, y0, side)
                                     in zip(mined["photos"].tolist(), mined["boxes"].tolist())])
  return data_lib.FaceData(images=mined["crops"], labels=np.zeros(n, np.int32),
                           groups=np.full(n, "", dtype="<U1"), attributes=attributes)


# ------------------------------------------------------------------------------ the trainer


def _round_arrays(run: Any, position: Any, k: int) -> dict[str, np.ndarray]:
  """Round ``k``'s arrays: read from the workdir, or mined now at the round's first step."""
  path = round_path(run.workdir, k)
  if path.exists():
    return load_round(path)
  start = round_start(run.config, k)
  if (position.epoch, position.step_in_epoch) != (start, 0):
    raise DataError(f"{path} is missing: round {k} of config.hard_negatives was mined at the "
                    f"start of epoch {start} and its crops are needed to resume epoch "
                    f"{position.epoch}; restore the file or start in a fresh workdir")
  exclude = set()
  for j in range(1, k):
    earlier = load_round(round_path(run.workdir, j))
    exclude |= {(n, *b) for n, b in zip(earlier["photos"].tolist(), earlier["boxes"].tolist())}
  logging.info("hard negatives: mining round %d on %d photos", k, len(run.mining_photos))
  mined = mine_round(position.state.variables, run.mining_photos, run.config, run.mesh, exclude)
  if run.is_main:
    save_round(path, mined)
  return mined


def prepare_epoch(run: Any, position: Any) -> Any:
  """The run with the crops of every round due at ``position``'s epoch among its non-faces.

  Args:
    run: the :class:`jaxface.train.start.Run` (``mined_rounds``: the rounds it holds).
    position: the :class:`jaxface.train.start.Position`; a round's summary is added to its
      ``history['hard_negatives']``.

  Returns:
    ``run`` itself when no round is due, else a copy with the training set and its batcher
    replaced (the same batches but for the non-faces drawn; the face probabilities kept).
  """
  config = run.config
  due = rounds_due(config, position.epoch)
  if due <= run.mined_rounds:
    return run
  train = run.datasets["train"]
  history = position.history.setdefault("hard_negatives", [])
  for k in range(run.mined_rounds + 1, due + 1):
    mined = _round_arrays(run, position, k)
    if len(history) < k:
      history.append(round_summary(k, round_start(config, k), mined))
    train = data_lib.concatenate([train, as_non_faces(mined, train)])
  old = run.batcher
  batcher = data_lib.Batcher(train, old.batch_size, seed=old.seed, num_devices=old.num_devices,
                             steps_per_epoch=old.steps_per_epoch)
  batcher.set_face_probabilities(None if config.resampling.signal == "none"
                                 else old.face_probabilities)
  return run._replace(datasets={**run.datasets, "train": train}, batcher=batcher,
                      mined_rounds=due)
