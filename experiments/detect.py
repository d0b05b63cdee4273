"""Finds faces in whole photos with a trained model and draws them.

    python experiments/detect.py --workdir=RUN --images=PHOTO_OR_FOLDER [MORE ...] --out=DIR

Every photo is scanned with square windows (see jaxface/detect.py), in the run's dtype and model
implementation; the windows above the threshold go through non-maximum suppression (--nms_iou),
which leaves one box per face. DIR gets one PNG per photo (the best window thick: green when it
is a detection, red when not; the other boxes left by NMS thin, yellow) and detections.json with
every photo's best window, its boxes and scores after NMS, and every window above the threshold
(``detections``). A bad input (unreadable, empty, too small, an empty folder) gets a one-line
message on stderr and the other photos are still processed.

Whole-image evaluation on PPB portraits and non-face photos (threshold calibrated so that at
most --max_false_rate of the non-face photos have a detection), written to DIR/evaluation.json:

    python experiments/detect.py --workdir=RUN --out=DIR \\
        --ppb=DATA/ppb-faces --nonface=DATA/nonface-photos/images

With ``--val_nonface=DATA/nonface-photos/train_images`` the threshold is chosen on the part of
those photos that --val_nonface_rule selects, the false detections on --nonface are measured at
it, and the portraits that --val_faces_rule selects are validation portraits, left out of the
test figures (jaxface.eval.whole_photos).

(DATA: the data sets' folder, e.g. ``$JAXFACE_SHARED_DATA``.)
"""

import json
import sys
from pathlib import Path

import jax
import numpy as np
from absl import app, flags, logging
from jax.sharding import Mesh
from PIL import Image, ImageDraw

from jaxface import detect
from jaxface.checkpoints import load_run
from jaxface.eval import whole_photos

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Run directory of a trained model.")
flags.DEFINE_multi_string("images", [], "Photo files or folders (repeatable; further "
                          "positional arguments are photos too).")
flags.DEFINE_string("out", None, "Output folder for the drawings and JSON.")
flags.DEFINE_float("threshold", detect.ScanOptions().threshold, "Detection threshold.")
flags.DEFINE_integer("batch_size", detect.ScanOptions().batch_size, "Windows per model call.")
flags.DEFINE_float("stride_frac", detect.ScanOptions().stride_frac,
                   "Step between windows, as a fraction of the window side.")
flags.DEFINE_integer("n_scales", detect.ScanOptions().n_scales, "Number of window sides.")
flags.DEFINE_integer("max_drawn", 50, "Most detections drawn per photo (highest first).")
flags.DEFINE_string("ppb", None, "ppb-faces folder (portraits/ and faces.csv) to evaluate on.")
flags.DEFINE_string("nonface", None, "Folder of non-face photos (calibrates the threshold).")
flags.DEFINE_float("max_false_rate", 0.05, "Largest share of non-face photos with a detection.")
_DEFAULTS = whole_photos.default_whole_images_config()
flags.DEFINE_float("nms_iou", _DEFAULTS.nms_iou, "Non-maximum suppression: overlap (IoU) above "
                   "which a lower-scoring box is dropped, in (0, 1].")
flags.DEFINE_string("min_neighbours", _DEFAULTS.min_neighbours,
                    "Windows needed above the threshold around a detection, itself included "
                    "(overlap above --nms_iou); several ('1,2,3') are chosen on the validation "
                    "portraits of --val_nonface.")
flags.DEFINE_string("val_nonface", "", "Folder of non-face photos whose --val_nonface_rule part "
                    "chooses the threshold (not test photos).")
flags.DEFINE_string("val_nonface_rule", _DEFAULTS.val_non_face_rule,
                    "Validation part of --val_nonface by sorted position.")
flags.DEFINE_string("val_faces_rule", _DEFAULTS.val_faces_rule,
                    "Validation portraits by PPB image id ('' for none), with --val_nonface.")


def _error(message: str) -> None:
  print(f"error: {message}", file=sys.stderr)


def _mesh() -> Mesh | None:
  devices = jax.devices()
  return Mesh(np.asarray(devices), (detect.DATA_AXIS,)) if len(devices) > 1 else None


def _png_name(path: Path, taken: set[str]) -> str:
  name, i = f"{path.stem}.png", 1
  while name in taken:
    name, i = f"{path.stem}_{i}.png", i + 1
  taken.add(name)
  return name


def draw(photo: np.ndarray, result: detect.ScanResult, boxes: np.ndarray,
         max_drawn: int) -> Image.Image:
  """The photo with its boxes after NMS (thin, yellow) and the best window (thick) drawn on it."""
  canvas = Image.fromarray(photo)
  pen = ImageDraw.Draw(canvas)
  for x0, y0, side in boxes[:max_drawn].tolist():
    pen.rectangle((x0, y0, x0 + side - 1, y0 + side - 1), outline=(255, 220, 0), width=1)
  x0, y0, side = result.best_box.tolist()
  colour = (0, 200, 0) if result.face_present else (220, 0, 0)
  pen.rectangle((x0, y0, x0 + side - 1, y0 + side - 1), outline=colour, width=3)
  return canvas


def _photo_entry(result: detect.ScanResult, photo: np.ndarray, png: str,
                 kept: tuple[np.ndarray, np.ndarray]) -> dict:
  boxes, probs = detect.detections(result)
  return {"width": int(photo.shape[1]), "height": int(photo.shape[0]), "png": png,
          "face_present": result.face_present, "best_box": result.best_box.tolist(),
          "best_prob": result.best_prob, "n_windows": int(len(result.boxes)),
          "boxes": kept[0].tolist(), "scores": [float(p) for p in kept[1]],
          "detections": [{"box": b, "prob": float(p)} for b, p in zip(boxes.tolist(), probs)]}


def scan_and_draw(variables, paths: list[Path], options: detect.ScanOptions, out: Path,
                  mesh: Mesh | None, max_drawn: int, model: dict,
                  nms_iou: float = _DEFAULTS.nms_iou,
                  min_neighbours: int = 1) -> tuple[dict, dict]:
  """Scans the photos, writes a PNG for each; returns (JSON entries, errors) by path.

  ``model``: the run's ``dtype`` and ``impl`` (:func:`run_model`); ``nms_iou``: the overlap of
  the non-maximum suppression; ``min_neighbours`` > 1: windows are scored by
  :func:`jaxface.detect.support_scores` (the ``probs`` of the JSON are then those scores).
  """
  results, errors = detect.scan_files(variables, paths, options, mesh,
                                      progress=len(paths) > 20, **model)
  scanned = [str(path) for path in paths if str(path) in results]
  results = dict(zip(scanned, detect.with_support([results[key] for key in scanned], nms_iou,
                                                  min_neighbours)))
  kept = detect.nms_detections([results[key] for key in scanned], nms_iou,
                               max_out=max(1, max_drawn))
  entries, taken = {}, set()
  for key, boxes in zip(scanned, kept):
    photo = detect.read_photo(key)
    png = _png_name(Path(key), taken)
    draw(photo, results[key], boxes[0], max_drawn).save(out / png)
    entries[key] = _photo_entry(results[key], photo, png, boxes)
  return entries, errors


def run_model(config) -> dict:
  """The run's compute dtype and model implementation, as the scan's keyword arguments."""
  return {"dtype": config.get("dtype", "float32"), "impl": config.model.get("impl", "auto")}


def evaluate(variables, options: detect.ScanOptions, mesh: Mesh | None, model: dict) -> dict:
  """The whole-photo figures of --ppb and --nonface (:func:`whole_photos.evaluate_sets`)."""
  ppb = Path(FLAGS.ppb)
  settings = whole_photos.default_whole_images_config()
  settings.update({
      "sets": f"ppb={ppb / 'portraits'}", "boxes": f"ppb={ppb / 'faces.csv'}",
      "non_face_photos": FLAGS.nonface, "max_false_rate": FLAGS.max_false_rate,
      "nms_iou": FLAGS.nms_iou, "min_neighbours": FLAGS.min_neighbours,
      "val_non_face_photos": FLAGS.val_nonface,
      "val_non_face_rule": FLAGS.val_nonface_rule, "val_faces_rule": FLAGS.val_faces_rule,
      "stride_frac": options.stride_frac, "n_scales": options.n_scales,
      "batch_size": options.batch_size})
  sets = whole_photos.load_whole_image_sets(settings, options.input_size)._replace(
      options=options)
  return whole_photos.evaluate_sets(variables, sets, settings, mesh, progress=True,
                                    **model)["ppb"]


def _summary(result: dict) -> str:
  rule = result["decision_rule"]
  lines = [f"threshold {result['threshold']:.6f} (set on {rule['n_threshold_photos']} "
           f"{rule['threshold_photos']}): test non-face photos with a detection "
           f"{result['false_detections']['n_with_detection']}/"
           f"{result['false_detections']['n_photos']}"]
  for section in ("with_box", "without_box", "all"):
    rates = result["faces_found"][section]
    cells = [f"{g} {r['found']}/{r['n']}" for g, r in rates.items()]
    lines.append(f"faces found ({section}): " + ", ".join(cells))
  return "\n".join(lines)


def main(argv):
  logging.set_verbosity(logging.WARNING)  # keeps Orbax's restore chatter out of the output
  images = list(FLAGS.images) + list(argv[1:])
  if not FLAGS.workdir or not FLAGS.out:
    raise app.UsageError("--workdir and --out are required")
  if not images and not FLAGS.ppb:
    raise app.UsageError("give photos with --images (or --ppb and --nonface to evaluate)")
  if bool(FLAGS.ppb) != bool(FLAGS.nonface):
    raise app.UsageError("--ppb and --nonface go together")
  try:
    config, variables = load_run(FLAGS.workdir)
    options = detect.ScanOptions(threshold=FLAGS.threshold, batch_size=FLAGS.batch_size,
                                 stride_frac=FLAGS.stride_frac, n_scales=FLAGS.n_scales,
                                 input_size=int(config.data.image_size))
    detect.check_options(options)
    if not 0 < FLAGS.nms_iou <= 1:
      raise ValueError(f"--nms_iou = {FLAGS.nms_iou}: must be in (0, 1]")
    rules = whole_photos.min_neighbours_candidates({"min_neighbours": FLAGS.min_neighbours})
    if images and len(rules) > 1:
      raise ValueError(f"--min_neighbours = {FLAGS.min_neighbours!r}: photos given with "
                       "--images are scanned under one rule")
  except (OSError, ValueError) as e:
    _error(str(e))
    return 1
  out = Path(FLAGS.out)
  out.mkdir(parents=True, exist_ok=True)
  mesh = _mesh()
  status = 0
  if images:
    paths, errors = [], {}
    for item in images:
      try:
        paths.extend(detect.photo_files(item))
      except ValueError as e:
        errors[str(item)] = str(e)
    entries, scan_errors = scan_and_draw(variables, paths, options, out, mesh, FLAGS.max_drawn,
                                         run_model(config), FLAGS.nms_iou, rules[0])
    errors.update(scan_errors)
    for message in errors.values():
      _error(message)
    report = {"workdir": str(Path(FLAGS.workdir).absolute()), "threshold": options.threshold,
              "options": options._asdict(), "photos": entries, "errors": errors}
    (out / "detections.json").write_text(json.dumps(report, indent=1))
    n_faces = sum(e["face_present"] for e in entries.values())
    print(f"{len(entries)} photo(s) scanned, {n_faces} with a face, {len(errors)} error(s): "
          f"{out / 'detections.json'}")
    if not entries:
      status = 1
  if FLAGS.ppb:
    try:
      result = evaluate(variables, options, mesh, run_model(config))
    except (OSError, ValueError) as e:
      _error(str(e))
      return 1
    (out / "evaluation.json").write_text(json.dumps(result, indent=1))
    print(_summary(result))
    print(f"evaluation: {out / 'evaluation.json'}")
  return status


if __name__ == "__main__":
  app.run(main)
