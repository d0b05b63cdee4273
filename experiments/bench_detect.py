"""Speed of the whole-photo scan against plain inference on the same, already cut windows.

    python experiments/bench_detect.py [--workdir=RUN] [--images=FOLDER] [--n_photos=8]

For each batch size, the scan (:func:`jaxface.detect.scan_images`: window enumeration, upload,
the pyramid levels and the window cuts on the device, classification) and the model alone on
the same windows cut beforehand (the same batches, already on the device) are timed in the
same run, in ``--repeats`` interleaved rounds, best of each; both rates (windows per second)
and their ratio are printed. Without ``--workdir`` the model is a randomly initialised
standard CNN (the speed does not depend on the weights). Without ``--images`` the PPB
portraits of the data folder (``$JAXFACE_SHARED_DATA``, else ``../shared/data`` beside the
repository) are used if present, else random photos of 480x320 pixels.
"""

import json
import math
import time
from pathlib import Path

import jax
import numpy as np
from absl import app, flags

from jaxface import detect, models, pyramid
from shared_paths import shared_data_root

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Run directory of a trained model (default: random CNN).")
flags.DEFINE_string("images", str(shared_data_root() / "ppb-faces" / "portraits"),
                    "Folder of photos.")
flags.DEFINE_integer("n_photos", 8, "Photos scanned per timing.")
flags.DEFINE_list("batch_sizes", ["256", "1024"], "Window batch sizes.")
flags.DEFINE_integer("repeats", 5, "Interleaved timing rounds (the best of each is kept).")
flags.DEFINE_integer("min_neighbours", 3, "Overlapping windows a detection needs in the "
                     "timed decision (jaxface.detect.support_scores).")
flags.DEFINE_string("json", None, "Append the results as one JSON line to this file.")


def _photos(n: int) -> tuple[list[np.ndarray], str]:
  folder = Path(FLAGS.images)
  if folder.is_dir():
    files = detect.photo_files(folder)[:n]
    return [detect.read_photo(p) for p in files], str(folder)
  rng = np.random.default_rng(0)
  return [rng.integers(0, 256, (480, 320, 3), dtype=np.uint8) for _ in range(n)], "random"


def _best_times(fns: dict, repeats: int) -> dict[str, float]:
  """Best wall time of each function over ``repeats`` interleaved rounds (after a warm-up)."""
  for fn in fns.values():
    fn()  # compile and warm up
  best = dict.fromkeys(fns, math.inf)
  for _ in range(repeats):
    for name, fn in fns.items():  # interleaved: a slow spell of the machine hits both
      start = time.perf_counter()
      fn()
      best[name] = min(best[name], time.perf_counter() - start)
  return best


def _precut(photos: list[np.ndarray], options: detect.ScanOptions) -> list[jax.Array]:
  """The scan's batches of windows, cut beforehand (the same levels, batches and padding)."""
  layout = pyramid.scan_layout([p.shape[:2] for p in photos], options)
  atlas = pyramid.make_atlas(jax.device_put(pyramid.pad_to_canvas(photos)), layout, options)
  batches = [pyramid.cut_windows(atlas, starts) for starts in
             pyramid.window_batches(layout, options.input_size, options.batch_size)]
  return jax.block_until_ready(batches)


def main(argv):
  del argv
  if FLAGS.workdir:
    from jaxface.checkpoints import load_run
    config, variables = load_run(FLAGS.workdir)
    input_size = int(config.data.image_size)
  else:
    variables = models.init_variables(jax.random.key(0), latent_dim=0)
    input_size = 64
  variables = jax.device_put(variables)
  photos, source = _photos(FLAGS.n_photos)
  print(f"{jax.devices()[0].platform} x {jax.device_count()}; {len(photos)} photos from "
        f"{source}")
  rows = []
  for batch_size in (int(b) for b in FLAGS.batch_sizes):
    options = detect.ScanOptions(batch_size=batch_size, input_size=input_size)
    n_windows = sum(len(detect.window_boxes(p.shape[0], p.shape[1], options)) for p in photos)
    crops = _precut(photos, options)

    def plain():
      jax.block_until_ready([detect.window_probabilities(variables, c) for c in crops])

    def scan():
      detect.scan_images(variables, photos, options)  # returns host arrays: synchronous

    def decide():
      scored = detect.with_support(detect.scan_images(variables, photos, options), 0.3,
                                   FLAGS.min_neighbours)
      detect.nms_detections(scored, 0.3)

    best = _best_times({"plain": plain, "scan": scan, "decide": decide}, FLAGS.repeats)
    plain_rate, scan_rate = n_windows / best["plain"], n_windows / best["scan"]
    decide_rate = n_windows / best["decide"]
    row = {"batch_size": batch_size, "n_windows": n_windows,
           "scan_windows_per_s": round(scan_rate, 1), "plain_windows_per_s": round(plain_rate, 1),
           "ratio": round(scan_rate / plain_rate, 3), "min_neighbours": FLAGS.min_neighbours,
           "decision_windows_per_s": round(decide_rate, 1),
           "decision_ratio": round(decide_rate / plain_rate, 3)}
    rows.append(row)
    print(f"batch {batch_size}: scan {scan_rate:.0f} windows/s, plain inference "
          f"{plain_rate:.0f} windows/s on the same {n_windows} windows, ratio "
          f"{scan_rate / plain_rate:.2f}x; with {FLAGS.min_neighbours} overlapping windows and "
          f"NMS {decide_rate:.0f} windows/s ({decide_rate / plain_rate:.2f}x)")
  if FLAGS.json:
    record = {"platform": jax.devices()[0].platform, "devices": jax.device_count(),
              "photos": len(photos), "source": source, "rows": rows}
    with open(FLAGS.json, "a") as f:
      f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
  app.run(main)
