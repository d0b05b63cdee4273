"""experiments/haar_anchor.py: the cascade's detections scored and evaluated like the networks'
(no OpenCV needed)."""

import numpy as np
import pytest

from helpers import load_experiment

haar = load_experiment("haar_anchor", "haar_anchor")


def test_cascade_scan_squares_boxes_and_scores_by_neighbours():
  scan = haar.cascade_scan(np.array([[10, 20, 30, 30], [0, 0, 10, 14]]), np.array([3, 7]))
  np.testing.assert_array_equal(scan.boxes, [[10, 20, 30], [-2, 0, 14]])
  np.testing.assert_array_equal(scan.probs, [3, 7])
  np.testing.assert_array_equal(scan.best_box, [-2, 0, 14])
  assert scan.best_prob == 7.0


def test_cascade_scan_without_detections_scores_zero():
  scan = haar.cascade_scan(np.zeros((0, 4)), np.zeros(0))
  assert scan.boxes.shape == (0, 3) and scan.probs.shape == (0,) and scan.best_prob == 0.0
  with pytest.raises(ValueError, match="2 detections but 1"):
    haar.cascade_scan(np.ones((2, 4)), np.ones(1))


def test_evaluate_thresholds_on_validation_photos_and_counts_test_faces():
  face = {"group": "DM", "box": (0.0, 0.0, 20.0)}
  faces = {"0001_6_m_SE.jpg": face, "0002_6_m_SE.jpg": face}
  on_face = haar.cascade_scan(np.array([[0, 0, 20, 20]]), np.array([4]))
  elsewhere = haar.cascade_scan(np.array([[100, 100, 20, 20]]), np.array([9]))
  weak = haar.cascade_scan(np.array([[0, 0, 20, 20]]), np.array([2]))
  # 20 validation non-face photos, the highest scoring 3: at 5% one may be detected, so the
  # threshold is the second highest score (3) and a face needs more than 3 merged windows.
  val_non_faces = {f"v{i}.jpg": haar.cascade_scan(np.zeros((0, 4)), np.zeros(0)) for i in range(18)}
  val_non_faces["v18.jpg"] = haar.cascade_scan(np.array([[0, 0, 9, 9]]), np.array([3]))
  val_non_faces["v19.jpg"] = haar.cascade_scan(np.array([[0, 0, 9, 9]]), np.array([8]))
  scans = {"test": {"0001_6_m_SE.jpg": on_face, "0002_6_m_SE.jpg": elsewhere},
           "val": {"0004_6_m_SE.jpg": weak},
           "non_face_photos": {"n0.jpg": elsewhere, "n1.jpg": weak},
           "val_non_face_photos": val_non_faces}
  figures = haar.evaluate(scans, faces, max_false_rate=0.05, min_iou=0.3)
  assert figures["threshold"] == 3.0 and figures["val"]["false_rate"] == 0.05
  dm = figures["faces_found"]["all"]["DM"]
  assert (dm["n"], dm["found"]) == (2, 1)  # the detection off the face box does not count
  assert figures["faces_found"]["missed"] == ["0002_6_m_SE.jpg"]
  assert figures["val"]["faces_found"]["all"]["DM"]["found"] == 0  # 2 windows: under it
  assert figures["false_detections"]["n_with_detection"] == 1
