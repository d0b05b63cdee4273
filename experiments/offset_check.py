r"""How a finished run scores its training faces at the whole-photo scan's window offsets.

The scan (:mod:`jaxface.detect`) steps its windows by ``stride_frac`` of their side, so a face
sits up to ``stride_frac / 2`` of a window side off the nearest window's centre along each axis.
This reads each run (read only), takes ``--n_faces`` of its training faces (the faces it was
trained on: a check of what the augmentation taught, not a test) and scores them shifted
diagonally by each offset of ``--offsets`` (fractions of the chip's side; the image is mirrored
at its edges, as ``augment.fill='reflect'`` does), with no other change. It prints, per offset,
the median face logit and the share of faces at or above 0.5 and at or above ``--threshold``
(the whole-photo evaluation's thresholds are about 0.99). Measured figures:
experiments/results/detect_whole_images.md.

Usage::

  python experiments/offset_check.py /tmp/final_cnn/cnn/seed0 /tmp/scan/cnn/seed0 \
      --json /tmp/offsets.jsonl
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from jaxface import data as data_lib
from jaxface import inference
from jaxface.checkpoints import load_run


def shift_images(images: np.ndarray, shift: float) -> np.ndarray:
  """(N, S, S, 3) images moved by ``round(shift * S)`` pixels down and right, mirrored at the
  edges (the edge pixel repeated), same shape."""
  size = images.shape[1]
  pixels = int(round(abs(shift) * size))
  if pixels == 0:
    return images
  if pixels >= size:
    raise ValueError(f"offset {shift} is a whole image side or more")
  padded = np.pad(images, ((0, 0), (pixels, pixels), (pixels, pixels), (0, 0)),
                  mode="symmetric")
  start = pixels - pixels * int(np.sign(shift))  # content moves by +shift
  return padded[:, start:start + size, start:start + size]


def offset_figures(variables: Any, faces: np.ndarray, offsets: Sequence[float],
                   threshold: float) -> list[dict[str, float]]:
  """Median logit and shares at 0.5 and ``threshold`` of ``faces`` at each diagonal offset."""
  logit_threshold = float(np.log(threshold / (1 - threshold)))
  rows = []
  for offset in offsets:
    logits = inference.infer(variables, shift_images(faces, offset), ("y_logit",))["y_logit"]
    logits = np.asarray(logits).reshape(-1)
    rows.append({"offset": float(offset), "median_logit": float(np.median(logits)),
                 "at_0.5": float(np.mean(logits >= 0)),
                 f"at_{threshold:g}": float(np.mean(logits >= logit_threshold))})
  return rows


def training_faces(config, n_faces: int, seed: int) -> np.ndarray:
  """``n_faces`` of the run's training faces (uint8), drawn with ``seed``."""
  data_config = ml_collections.ConfigDict(config.data.to_dict())  # the run's, extra sets off
  data_config.extra_test_sets = ""
  data_config.extra_test_attributes = ""
  train = data_lib.load_datasets(data_config)["train"]
  faces = train.images[train.labels == 1]
  rng = np.random.default_rng(seed)
  return faces[rng.choice(len(faces), min(n_faces, len(faces)), replace=False)]


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("runs", nargs="+", help="run directories (read only)")
  parser.add_argument("--offsets", type=float, nargs="+", default=[0.0, 0.0625, 0.125])
  parser.add_argument("--threshold", type=float, default=0.99)
  parser.add_argument("--n_faces", type=int, default=1000)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--json", default="", help="append one JSON line per run here")
  args = parser.parse_args(argv)
  if not 0 < args.threshold < 1:
    raise SystemExit(f"--threshold {args.threshold}: must be in (0, 1)")
  records = []
  for run in args.runs:
    if not (Path(run) / "config.json").exists():
      raise SystemExit(f"{run}: not a finished run (no config.json)")
    config, variables = load_run(run)
    faces = training_faces(config, args.n_faces, args.seed)
    rows = offset_figures(variables, faces, args.offsets, args.threshold)
    records.append({"run": str(run), "n_faces": int(len(faces)), "offsets": rows})
    print(f"{run} ({len(faces)} training faces)")
    print("| diagonal offset | median logit | >= 0.5 | >= " + f"{args.threshold:g} |")
    print("|---|---|---|---|")
    for row in rows:
      print(f"| {row['offset']:.4f} | {row['median_logit']:.2f} | {100 * row['at_0.5']:.1f}% | "
            f"{100 * row[f'at_{args.threshold:g}']:.1f}% |")
  if args.json:
    with open(args.json, "a") as f:
      for record in records:
        f.write(json.dumps(record) + "\n")
  return records


if __name__ == "__main__":
  main()
