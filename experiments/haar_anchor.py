"""OpenCV's Haar cascade on the whole-photo test split, under the networks' validated rule.

The classical anchor of the whole-photo figures: the frontal-face cascade
(``haarcascade_frontalface_default``) on the histogram-equalised grey photo, the smallest face a
sixth of the photo's width. Each detection's score is the number of raw cascade windows merged
into it (what OpenCV's ``minNeighbors`` thresholds). The photos and the rule are those of
``config.whole_images`` (jaxface.eval.whole_photos): the threshold leaves ``max_false_rate``
(5%) of the validation non-face photos (every 4th of ``train_images``) with a detection; the
faces found are counted on the portraits the validation rule leaves for the test (PPB
``image_id % 4 != 0``), a detection overlapping the face box with IoU >= 0.3; the test non-face
photos' false-photo rate is measured at that threshold. The figures come from
jaxface.eval.photo_figures, as for the networks' ``whole_images.json``.

    pip install 'opencv-python-headless<5'  # not a dependency of jaxface; 5.1 has no cascade
    python experiments/haar_anchor.py --data_root=$JAXFACE_SHARED_DATA \\
        --out=experiments/results/haar_anchor.json
"""

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from jaxface import detect
from jaxface.data import DataError, load_face_boxes
from jaxface.eval import photo_figures, photo_splits, whole_photos
from jaxface.eval.operating_point import threshold_at_fpr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shared_paths import shared_data_root  # noqa: E402

CASCADE = "haarcascade_frontalface_default.xml"
OPENCV_MIN_NEIGHBOURS = 3  # detectMultiScale's default: keeps detections of more than 3 windows


def cascade_scan(rects: np.ndarray, neighbours: np.ndarray) -> detect.ScanResult:
  """A cascade's detections of one photo as a :class:`jaxface.detect.ScanResult`.

  Args:
    rects: (N, 4) ``(x, y, w, h)`` detections (the cascade's are square; a non-square one is
      centred in a square of side ``max(w, h)``).
    neighbours: (N,) how many raw cascade windows each detection merges: its score.

  Returns:
    The detections as windows ``(x0, y0, side)`` scored by ``neighbours``; with none, an empty
    result whose best score is 0.
  """
  rects = np.asarray(rects, np.float64).reshape(-1, 4)
  scores = np.asarray(neighbours, np.float32).reshape(-1)
  if len(rects) != len(scores):
    raise ValueError(f"{len(rects)} detections but {len(scores)} neighbour counts")
  side = np.maximum(rects[:, 2], rects[:, 3])
  boxes = np.stack([rects[:, 0] + (rects[:, 2] - side) / 2,
                    rects[:, 1] + (rects[:, 3] - side) / 2, side], axis=1).round().astype(np.int32)
  if not len(scores):
    return detect.ScanResult(np.zeros((0, 3), np.int32), scores, np.zeros(3, np.int32), 0.0,
                             False, 0.0)
  best = int(np.argmax(scores))
  return detect.ScanResult(boxes, scores, boxes[best], float(scores[best]), True, 0.0)


def scan_with_cascade(cascade, path: Path, min_frac: float) -> detect.ScanResult:
  """The cascade's detections of one photo (equalised grey, smallest face ``min_frac`` wide)."""
  import cv2
  grey = cv2.equalizeHist(cv2.cvtColor(detect.read_photo(path), cv2.COLOR_RGB2GRAY))
  side = max(1, int(round(min_frac * grey.shape[1])))
  rects, neighbours = cascade.detectMultiScale2(grey, scaleFactor=1.1, minNeighbors=1,
                                                minSize=(side, side))
  return cascade_scan(np.asarray(rects).reshape(-1, 4), np.asarray(neighbours).reshape(-1))


def evaluate(scans: dict[str, dict[str, detect.ScanResult]], faces: dict, max_false_rate: float,
             min_iou: float) -> dict:
  """The anchor's figures from its scans of ``'test'`` / ``'val'`` portraits and
  ``'non_face_photos'`` / ``'val_non_face_photos'``.

  The threshold leaves ``max_false_rate`` of the validation non-face photos with a detection;
  the test figures are :func:`jaxface.eval.photo_figures.whole_image_figures` at it (the
  networks' figures, with OpenCV's default ``minNeighbors`` as the default threshold), and
  ``'val'`` holds the validation portraits found and the validation photos' false rate.
  """
  best = {part: {Path(k).name: r.best_prob for k, r in photos.items()}
          for part, photos in scans.items()}
  threshold, val_rate = threshold_at_fpr(list(best["val_non_face_photos"].values()),
                                         max_false_rate)
  figures = photo_figures.whole_image_figures(scans["test"], faces, best["non_face_photos"],
                                              OPENCV_MIN_NEIGHBOURS, max_false_rate, min_iou,
                                              threshold=threshold)
  found = photo_figures.faces_found(scans["val"], faces, threshold, min_iou)
  figures["val"] = {"n_photos": len(scans["val"]), "faces_found": found,
                    "summary": photo_figures.group_figures(found["all"]),
                    "false_rate": val_rate}
  return figures


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--data_root", default=str(shared_data_root()),
                      help="holds ppb-faces/ and nonface-photos/ (default $JAXFACE_SHARED_DATA)")
  parser.add_argument("--min_frac", type=float, default=1 / 6,
                      help="the smallest face, as a share of the photo's width")
  parser.add_argument("--out", default="", help="a JSON file for the figures")
  args = parser.parse_args(argv)
  try:
    import cv2
  except ImportError:
    sys.exit("haar_anchor.py needs OpenCV: pip install 'opencv-python-headless<5'")
  if not hasattr(cv2, "CascadeClassifier"):
    sys.exit(f"haar_anchor.py: OpenCV {cv2.__version__} has no CascadeClassifier: "
             "pip install 'opencv-python-headless<5'")
  root = Path(args.data_root)
  config = whole_photos.default_whole_images_config()
  config.non_face_photos = str(root / "nonface-photos" / "images")
  config.val_non_face_photos = str(root / "nonface-photos" / "train_images")
  try:
    portraits = photo_splits.folder_photos(str(root / "ppb-faces" / "portraits"),
                                           "whole_images.sets")
    non_faces = photo_splits.folder_photos(config.non_face_photos, "whole_images.non_face_photos")
    test, val, val_non_faces = photo_splits.validation_split(config, {"ppb": portraits},
                                                             non_faces)
    faces = load_face_boxes(root / "ppb-faces" / "faces.csv")
  except DataError as e:
    sys.exit(f"haar_anchor.py: {e}")
  cascade = cv2.CascadeClassifier(str(Path(cv2.data.haarcascades) / CASCADE))
  parts = {"test": test["ppb"], "val": val["ppb"], "non_face_photos": non_faces,
           "val_non_face_photos": val_non_faces}
  scans: dict[str, dict[str, detect.ScanResult]] = {}
  for part, paths in parts.items():
    scans[part] = {}
    for path in tqdm(paths, desc=part, file=sys.stderr):
      try:
        scans[part][path.name] = scan_with_cascade(cascade, path, args.min_frac)
      except DataError as e:
        print(f"haar_anchor.py: skipped {e}", file=sys.stderr)
  figures = evaluate(scans, faces, float(config.max_false_rate), float(config.min_iou))
  figures["setting"] = {"cascade": CASCADE, "min_frac": args.min_frac, "scale_factor": 1.1,
                        "cv2": cv2.__version__, "max_false_rate": float(config.max_false_rate),
                        "min_iou": float(config.min_iou)}
  test_found = figures["faces_found"]["all"]
  print(f"threshold: more than {figures['threshold']:g} merged windows "
        f"({100 * figures['val']['false_rate']:.1f}% of {len(val_non_faces)} validation non-face "
        "photos with a detection)")
  print("test portraits found: " + ", ".join(
      f"{g} {100 * test_found[g]['rate']:.1f}% ({test_found[g]['found']}/{test_found[g]['n']})"
      for g in ("LF", "LM", "DF", "DM") if g in test_found))
  false = figures["false_detections"]
  print(f"test non-face photos with a detection: {false['n_with_detection']}/{false['n_photos']} "
        f"({100 * false['rate']:.1f}%)")
  if args.out:
    Path(args.out).write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
  main()
