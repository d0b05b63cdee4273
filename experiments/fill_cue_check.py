"""Does a detector trained with augmentation take the zoom-out fill for a face cue?

    python experiments/fill_cue_check.py [--config=configs/cnn.py:smoke] [--fill=reflect]
        [--scale=1.6] [--out=FILE.json]

Trains the configured model (augmentation on, ``--fill`` around zoomed-out images), then scores
the test set's non-faces and faces as they are and zoomed out by ``--scale`` with the same fill
(no shift, flip or colour jitter; with 'background', another non-face of the test set behind
each image). Training fills around non-faces exactly as around faces, so the zoomed-out
non-faces should not look more like faces than the plain ones: the script prints each set's
mean p(face) and rate called face, ``non_face_shift`` and ``face_shift`` (mean p(face) zoomed
minus plain) and ``fill_cue`` (= ``non_face_shift``). A fill learnt as a face cue raises both
shifts; a zoom that only makes images harder to tell apart moves them towards each other.
Measured figures: experiments/results/fill_cue_check.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from jaxface import augment, inference, sharding, train  # noqa: E402
from jaxface import config as config_lib  # noqa: E402
from jaxface import data as data_lib  # noqa: E402
from jaxface.data import to_float  # noqa: E402


def zoom_out(images: np.ndarray, labels: np.ndarray, scale: float, fill: str,
             seed: int = 0) -> np.ndarray:
  """Every image zoomed out by ``scale`` with ``fill`` around it, nothing else changed.

  Args:
    images: (N, H, W, 3) uint8 or float in [0, 1].
    labels: (N,) 1 = face; with 'background' each image's background is a non-face.
    scale: field-of-view side over the image's (> 1 zooms out).
    fill: 'reflect' or 'background'.
    seed: the key of the backgrounds' draw.

  Returns:
    (N, H, W, 3) float32 in [0, 1].
  """
  config = augment.default_augment_config()
  config.update(scale_min=scale, scale_max=scale, max_translate=0.0, flip=False,
                brightness=0.0, contrast=0.0, saturation=0.0, fill=fill,
                non_face_scale_min=0.0)  # the same zoom for faces and non-faces
  x = (np.asarray(to_float(images), np.float32) if images.dtype == np.uint8
       else np.asarray(images, np.float32))
  key = jax.random.key(seed)
  background = (augment.background_from_batch(key, x, labels) if fill == "background"
                else None)
  return np.asarray(augment.augment_batch(key, x, background, config))


def fill_cue(variables: Any, images: np.ndarray, labels: np.ndarray, scale: float,
             fill: str, mesh=None) -> dict[str, Any]:
  """p(face) of faces and non-faces as they are and zoomed out with the fill.

  Args:
    variables: model variables.
    images: (N, H, W, 3) test images, faces and non-faces.
    labels: (N,) 1 = face.
    scale: the zoom-out factor.
    fill: 'reflect' or 'background'.
    mesh: device mesh for inference (default: every device).

  Returns:
    ``{'plain': {...}, 'zoomed': {...}, 'non_face_shift', 'face_shift', 'fill_cue'}``, each
    set with ``non_face`` and ``face`` mean p(face) and rate called face; a shift is the mean
    p(face) zoomed minus plain, ``fill_cue`` the non-faces' shift.
  """
  mesh = sharding.make_mesh() if mesh is None else mesh
  labels = np.asarray(labels)
  result: dict[str, Any] = {}
  for name, x in (("plain", images), ("zoomed", zoom_out(images, labels, scale, fill))):
    prob = inference.infer(variables, x, ("face_prob",), mesh=mesh)["face_prob"]
    result[name] = {
        kind: {"mean_face_prob": float(np.mean(prob[mask])),
               "called_face": float(np.mean(prob[mask] > 0.5)), "n": int(mask.sum())}
        for kind, mask in (("non_face", labels == 0), ("face", labels == 1))}
  for kind in ("non_face", "face"):
    result[f"{kind}_shift"] = (result["zoomed"][kind]["mean_face_prob"]
                               - result["plain"][kind]["mean_face_prob"])
  result["fill_cue"] = result["non_face_shift"]
  return result


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/cnn.py:smoke")
  parser.add_argument("--fill", default="reflect", choices=augment.FILLS)
  parser.add_argument("--scale", type=float, default=1.6)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default="")
  args = parser.parse_args(argv)
  config = config_lib.load_config_file(args.config)
  config.augment.enabled = True
  config.augment.fill = args.fill
  config.seed = args.seed
  config.progress_bar = False
  datasets = data_lib.load_datasets(config.data)
  with tempfile.TemporaryDirectory() as workdir:
    run = train.train_and_evaluate(config, workdir, datasets)
  test = datasets["test"]
  result = fill_cue(run.variables, test.images, test.labels, args.scale, args.fill)
  result.update(config=args.config, fill=args.fill, scale=args.scale, seed=args.seed)
  print(json.dumps(result, indent=2))
  if args.out:
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
  return result


if __name__ == "__main__":
  main()
