"""The whole-photo scanner: windows, pyramid levels, on-device crops, batching, the model's
dtype and implementation, photos on disk and the CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from helpers import forced_devices_flags, tiny_config
from PIL import Image

from jaxface import detect, inference, models, pyramid
from jaxface.data import DataError

REPO = Path(__file__).resolve().parents[1]

# A small model and scan: 32-pixel inputs, 4 base filters.
TINY = detect.ScanOptions(input_size=32, batch_size=16)


@pytest.fixture(scope="module")
def tiny_variables():
  return models.init_variables(jax.random.key(0), latent_dim=0, n_filters=4, image_size=32)


def _photo(height: int, width: int, seed: int = 0) -> np.ndarray:
  """A smooth random photo (uint8), so a window's crop depends on where it is."""
  rng = np.random.default_rng(seed)
  coarse = rng.random((height // 8 + 2, width // 8 + 2, 3))
  up = np.kron(coarse, np.ones((8, 8, 1)))[:height, :width]
  return np.clip(255 * (0.7 * up + 0.3 * rng.random((height, width, 3))), 0, 255).astype(np.uint8)


def reference_windows(photo: np.ndarray, options: detect.ScanOptions) -> np.ndarray:
  """Every window of the photo, sliced from the whole photo resized in NumPy.

  The resize is the dense ``level_matrix`` product along each axis (the matrices themselves
  are checked against ``jax.image.scale_and_translate`` below).
  """
  size = options.input_size
  image = photo.astype(np.float64) / 255.0 if photo.dtype == np.uint8 else photo
  boxes, cells = detect.window_grid(photo.shape[0], photo.shape[1], options)
  levels, crops = {}, []
  for (_, _, side), (lx, ly) in zip(boxes, cells):
    if side not in levels:
      rows = pyramid.level_matrix(photo.shape[0], side, size, options.method)
      cols = pyramid.level_matrix(photo.shape[1], side, size, options.method)
      levels[side] = np.einsum("yh,hwc,xw->yxc", rows, image, cols)
    crops.append(levels[side][ly:ly + size, lx:lx + size])
  return np.stack(crops).astype(np.float32)


# ------------------------------------------------------------------------------------ windows


@pytest.mark.parametrize("height,width", [(480, 320), (240, 320), (64, 64), (97, 33)])
def test_windows_of_every_side_cover_the_photo_and_stay_inside(height, width):
  boxes, cells = detect.window_grid(height, width)
  sides = detect.window_sides(height, width)
  assert sorted(set(boxes[:, 2].tolist())) == sides
  assert sides[-1] == min(height, width)  # the largest window is the full shorter side
  assert sides[0] <= max(detect.ScanOptions().min_side, round(0.2 * min(height, width)) + 4)
  assert (boxes[:, :2] >= 0).all()
  assert (boxes[:, 0] + boxes[:, 2] <= width).all() and (boxes[:, 1] + boxes[:, 2] <= height).all()
  # A box is its level position scaled by side / input_size, rounded.
  np.testing.assert_allclose(boxes[:, :2], cells * boxes[:, 2:] / 64, atol=0.5)
  for side in sides:
    covered = np.zeros((height, width), bool)
    for x0, y0, s in boxes[boxes[:, 2] == side]:
      covered[y0:y0 + s, x0:x0 + s] = True
    # The level keeps the level pixels wholly inside the photo: the last one may leave less
    # than one level pixel (side / 64 photo pixels) at the far edges.
    margin = int(np.ceil(side / 64))
    assert covered[:height - margin, :width - margin].all(), f"side {side} leaves a gap"


def test_window_boxes_are_the_expected_grid():
  options = detect.ScanOptions(min_frac=0.5, max_frac=1.0, n_scales=2, stride_frac=0.5)
  boxes = detect.window_boxes(64, 80, options)
  side32 = [(x, y, 32) for y in (0, 16, 32) for x in (0, 16, 32, 48)]
  side64 = [(0, 0, 64), (16, 0, 64)]  # stride 32 would leave the last 16 columns: flush end
  assert boxes.tolist() == [list(b) for b in side32 + side64]


def test_a_photo_smaller_than_the_smallest_window_raises():
  with pytest.raises(ValueError, match="30x20 image is smaller than the smallest window"):
    detect.window_boxes(20, 30)


@pytest.mark.parametrize("field,value", [("min_frac", 0.0), ("max_frac", 1.5), ("n_scales", 0),
                                         ("stride_frac", 0.0), ("input_size", 40),
                                         ("method", "nearest")])
def test_invalid_options_raise_naming_the_field(field, value):
  with pytest.raises(ValueError, match=field if field != "input_size" else "image_size"):
    detect.check_options(detect.ScanOptions()._replace(**{field: value}))


# ------------------------------------------------------------------------------ pyramid levels


@pytest.mark.parametrize("method", detect.RESIZE_METHODS)
@pytest.mark.parametrize("length,side,size", [(75, 20, 32), (90, 70, 32), (460, 96, 64),
                                              (97, 33, 64), (320, 320, 64), (50, 64, 64)])
def test_level_matrix_is_jax_scale_and_translate(method, length, side, size):
  matrix = pyramid.level_matrix(length, side, size, method)
  n_out = pyramid.level_length(length, side, size)
  assert matrix.shape == (n_out, length)
  reference = jax.image.scale_and_translate(np.eye(length, dtype=np.float32), (n_out, length),
                                            (0,), np.array([size / side], np.float32),
                                            np.zeros(1, np.float32), method)
  np.testing.assert_allclose(matrix, np.asarray(reference), atol=2e-6)


def _device_windows(photos, options):
  """The layout of one scan call of ``photos`` and all its windows, cut on the device."""
  layout = pyramid.scan_layout([p.shape[:2] for p in photos], options)
  atlas = pyramid.make_atlas(jax.numpy.asarray(pyramid.pad_to_canvas(photos)), layout, options)
  idx = np.arange(len(layout.boxes))
  size = options.input_size
  return layout, np.asarray(pyramid.cut_windows(atlas, pyramid.window_starts(layout, idx, size,
                                                                           len(idx))))


@pytest.mark.parametrize("method", ["lanczos3", "linear"])
def test_device_windows_equal_slices_of_the_resized_photo(method):
  options = detect.ScanOptions(input_size=32, method=method, min_frac=0.3, n_scales=4)
  photos = [_photo(75, 90, seed=1), _photo(40, 123, seed=2)]  # two sizes on one canvas
  layout, crops = _device_windows(photos, options)
  start = 0
  for photo, boxes in zip(photos, layout.per_image):
    np.testing.assert_allclose(crops[start:start + len(boxes)], reference_windows(photo, options),
                               atol=2e-5)
    start += len(boxes)


def test_windows_of_a_flat_photo_are_flat_up_to_its_edges():
  # Filter weights sum to one and stop at the photo's edge: no zero padding leaks in.
  options = detect.ScanOptions(input_size=32, min_frac=0.25, n_scales=5, method="lanczos3")
  photos = [np.full((70, 50, 3), 200, np.uint8), np.full((130, 97, 3), 200, np.uint8)]
  layout, crops = _device_windows(photos, options)
  assert len(np.unique(layout.boxes[:, 2])) >= 4
  np.testing.assert_allclose(crops, 200 / 255, atol=1e-5)


def test_windows_of_the_input_size_are_the_photo_s_own_pixels():
  options = detect.ScanOptions(input_size=32, min_frac=1.0, max_frac=1.0, n_scales=1)
  photo = _photo(32, 48, seed=3)
  layout, crops = _device_windows([photo], options)
  for crop, (x0, y0, side) in zip(crops, layout.boxes):
    np.testing.assert_allclose(crop, photo[y0:y0 + side, x0:x0 + side] / 255.0, atol=1e-7)


def test_an_atlas_refuses_a_canvas_of_other_photos():
  options = detect.ScanOptions(input_size=32)
  layout = pyramid.scan_layout([(70, 50)], options)
  with pytest.raises(ValueError, match="layout was made for"):
    pyramid.make_atlas(jax.numpy.zeros((1, 64, 64, 3), jax.numpy.uint8), layout, options)


# --------------------------------------------------------------------------------------- scans


def test_scan_probabilities_are_those_of_each_box_s_reference_window(tiny_variables):
  photo = _photo(70, 100, seed=1)
  result = detect.scan_image(tiny_variables, photo, TINY)
  assert result.boxes.tolist() == detect.window_boxes(70, 100, TINY).tolist()
  crops = reference_windows(photo, TINY)
  expected = np.asarray(detect.window_probabilities(tiny_variables, crops))
  np.testing.assert_allclose(result.probs, expected, atol=1e-5)
  best = int(np.argmax(expected))
  assert result.best_box.tolist() == result.boxes[best].tolist()
  assert result.best_prob == pytest.approx(float(expected[best]), abs=1e-5)


def test_photos_of_different_sizes_in_one_call_score_as_alone(tiny_variables):
  photos = [_photo(48, 80, 2), _photo(101, 60, 3), _photo(64, 64, 4).astype(np.float32) / 255]
  together = detect.scan_images(tiny_variables, photos, TINY._replace(batch_size=7))
  for photo, result in zip(photos, together):
    alone = detect.scan_image(tiny_variables, photo, TINY)
    assert result.boxes.tolist() == alone.boxes.tolist()
    np.testing.assert_allclose(result.probs, alone.probs, atol=1e-5)


def test_best_box_decision_and_detections_follow_the_threshold(tiny_variables):
  photo = _photo(64, 96, seed=5)
  probe = detect.scan_image(tiny_variables, photo, TINY)
  cut = float(np.median(probe.probs))
  result = detect.scan_image(tiny_variables, photo, TINY._replace(threshold=cut))
  boxes, probs = detect.detections(result)
  assert len(probs) == int((result.probs > cut).sum()) and (np.diff(probs) <= 0).all()
  assert result.face_present and boxes[0].tolist() == result.best_box.tolist()
  above_all = detect.scan_image(tiny_variables, photo, TINY._replace(threshold=1.5))
  assert not above_all.face_present and len(detect.detections(above_all)[0]) == 0


# ------------------------------------------------------------------------ non-maximum suppression


def reference_nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, max_out: int,
                  valid: np.ndarray | None = None) -> list[int]:
  """Greedy NMS in plain NumPy: the best box left, drop what overlaps it, repeat."""
  boxes = np.asarray(boxes, np.float32)
  if boxes.shape[1] == 3:
    boxes = np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)
  left = [i for i in np.argsort(-scores, kind="stable") if valid is None or valid[i]]
  kept = []
  while left and len(kept) < max_out:
    best = left.pop(0)
    kept.append(int(best))
    still = []
    for j in left:
      iw = max(0.0, min(boxes[best, 2], boxes[j, 2]) - max(boxes[best, 0], boxes[j, 0]))
      ih = max(0.0, min(boxes[best, 3], boxes[j, 3]) - max(boxes[best, 1], boxes[j, 1]))
      inter = np.float32(iw * ih)
      area = lambda b: (b[2] - b[0]) * (b[3] - b[1])
      union = np.float32(area(boxes[best]) + area(boxes[j]) - inter)
      if not (union > 0 and np.float32(inter / union) > np.float32(iou_threshold)):
        still.append(j)
    left = still
  return kept + [-1] * (max_out - len(kept))


def _random_boxes(rng, n: int, corners: bool) -> np.ndarray:
  xy = rng.integers(0, 60, (n, 2))
  if corners:
    return np.concatenate([xy, xy + rng.integers(4, 30, (n, 2))], axis=1).astype(np.float32)
  return np.concatenate([xy, rng.integers(8, 30, (n, 1))], axis=1).astype(np.int32)


@pytest.mark.parametrize("corners", [False, True])
@pytest.mark.parametrize("iou_threshold", [0.1, 0.3, 0.5, 1.0])
def test_nms_is_the_greedy_reference(corners, iou_threshold):
  rng = np.random.default_rng(int(10 * iou_threshold) + corners)
  for n, max_out in ((1, 3), (7, 7), (40, 12), (60, 80)):
    boxes = _random_boxes(rng, n, corners)
    scores = rng.integers(0, 6, n).astype(np.float32) / 5  # many ties: they go by index
    kept = np.asarray(detect.nms(boxes, scores, iou_threshold, max_out))
    assert kept.dtype == np.int32 and kept.shape == (max_out,)
    assert kept.tolist() == reference_nms(boxes, scores, iou_threshold, max_out), (n, max_out)


def test_nms_vmapped_over_padded_photos_is_nms_of_each():
  rng = np.random.default_rng(7)
  sizes, pad, max_out = (5, 23, 40, 1), 40, 10
  boxes = np.zeros((len(sizes), pad, 3), np.int32)
  scores = np.zeros((len(sizes), pad), np.float32)
  valid = np.zeros((len(sizes), pad), bool)
  for i, n in enumerate(sizes):
    boxes[i, :n], scores[i, :n] = _random_boxes(rng, n, False), rng.random(n)
    valid[i, :n] = scores[i, :n] > 0.3  # a detection threshold
  batched = jax.jit(jax.vmap(lambda b, s, v: detect.nms(b, s, 0.3, max_out, v)))
  kept = np.asarray(batched(boxes, scores, valid))
  for i, n in enumerate(sizes):
    want = reference_nms(boxes[i, :n], scores[i, :n], 0.3, max_out, valid[i, :n])
    assert kept[i].tolist() == want


def test_nms_detections_leave_one_box_per_face():
  # Two faces, each found by a cluster of shifted windows, and a weak window elsewhere.
  boxes = np.array([(10, 10, 40), (12, 10, 40), (10, 14, 40), (100, 20, 30), (102, 22, 30),
                    (60, 70, 20)], np.int32)
  probs = np.array([0.9, 0.95, 0.8, 0.7, 0.75, 0.2], np.float32)
  result = detect.ScanResult(boxes, probs, boxes[1], 0.95, True, 0.5)
  other = detect.ScanResult(boxes[:1], np.array([0.1], np.float32), boxes[0], 0.1, False, 0.5)
  (kept, kept_probs), (none, _) = detect.nms_detections([result, other], 0.3)
  assert kept.tolist() == [[12, 10, 40], [102, 22, 30]]
  np.testing.assert_allclose(kept_probs, [0.95, 0.75])
  assert none.shape == (0, 3)
  everything, _ = detect.nms_detections([result], 0.3, threshold=-np.inf)[0]
  assert everything.tolist() == [[12, 10, 40], [102, 22, 30], [60, 70, 20]]
  assert len(detect.nms_detections([result], 0.3, max_out=1)[0][0]) == 1


def reference_support(boxes: np.ndarray, probs: np.ndarray, iou_threshold: float,
                      k: int) -> np.ndarray:
  """Support scores in plain NumPy: min(p, k-th highest p among the window's neighbours)."""
  corners = np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1).astype(np.float64)
  out = np.zeros(len(probs), np.float32)
  for i in range(len(probs)):
    x0, y0, x1, y1 = corners[i]
    iw = np.clip(np.minimum(x1, corners[:, 2]) - np.maximum(x0, corners[:, 0]), 0, None)
    ih = np.clip(np.minimum(y1, corners[:, 3]) - np.maximum(y0, corners[:, 1]), 0, None)
    inter = iw * ih
    union = boxes[i, 2] ** 2 + boxes[:, 2].astype(np.float64) ** 2 - inter
    neighbours = inter / union > iou_threshold
    neighbours[i] = True
    ranked = np.sort(probs[neighbours])[::-1]
    if len(ranked) >= k:
      out[i] = min(probs[i], ranked[k - 1])
  return out


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_support_scores_are_the_neighbour_reference(k):
  rng = np.random.default_rng(k)
  for n in (1, 4, 30, 60):
    boxes = _random_boxes(rng, n, False)
    probs = rng.random(n).astype(np.float32)
    got = np.asarray(detect.support_scores(boxes, probs, 0.3, k))
    np.testing.assert_array_equal(got, reference_support(boxes, probs, 0.3, k))
  np.testing.assert_array_equal(detect.support_scores(boxes, probs, 0.3, 1), probs)
  with pytest.raises(ValueError, match="min_neighbours"):
    detect.support_scores(boxes, probs, 0.3, 0)


def test_support_needs_k_windows_above_the_threshold_around_a_face():
  # A face found by three overlapping windows; a lone false window scoring higher elsewhere.
  boxes = np.array([(10, 10, 40), (12, 10, 40), (10, 14, 40), (100, 20, 30)], np.int32)
  probs = np.array([0.9, 0.95, 0.8, 0.99], np.float32)
  scan = detect.ScanResult(boxes, probs, boxes[3], 0.99, True, 0.5)
  lone = detect.ScanResult(boxes[:1], np.array([0.97], np.float32), boxes[0], 0.97, True, 0.5)
  assert all(a is b for a, b in zip(detect.with_support([scan, lone], 0.3, 1), [scan, lone]))
  two, lone_two = detect.with_support([scan, lone], 0.3, 2)
  np.testing.assert_allclose(two.probs, [0.9, 0.9, 0.8, 0.0])
  assert two.best_box.tolist() == [10, 10, 40] and two.best_prob == pytest.approx(0.9)
  assert lone_two.best_prob == 0.0 and not lone_two.face_present
  three, = detect.with_support([scan], 0.3, 3)
  np.testing.assert_allclose(three.probs, [0.8, 0.8, 0.8, 0.0])
  # Padded, chunked photos score as each alone.
  many = detect.with_support([scan, lone] * 5, 0.3, 2, chunk=3)
  for got, want in zip(many, [two, lone_two] * 5):
    np.testing.assert_array_equal(got.probs, want.probs)
  # Several rules in one pass are each rule alone.
  rules = detect.with_support_rules([lone, scan, lone], 0.3, (3, 1, 2), chunk=2)
  assert sorted(rules) == [1, 2, 3] and rules[1][1] is scan
  for k in (2, 3):
    for got, want in zip(rules[k], detect.with_support([lone, scan, lone], 0.3, k)):
      np.testing.assert_array_equal(got.probs, want.probs)
      assert got.best_prob == want.best_prob


@pytest.mark.parametrize("impl", ["flax", "cpu_fast"])
def test_scan_classifies_in_the_run_s_dtype_and_impl_as_inference_does(tiny_variables, impl):
  photos = [_photo(70, 100, seed=6)]
  _, crops = _device_windows(photos, TINY)
  probs = {}
  for dtype in ("float32", "bfloat16"):
    probs[dtype] = detect.scan_images(tiny_variables, photos, TINY, dtype=dtype, impl=impl)[0].probs
    expected = inference.infer(tiny_variables, crops, ("face_prob",), batch_size=TINY.batch_size,
                               dtype=dtype, impl=impl)["face_prob"]
    np.testing.assert_allclose(probs[dtype], expected, atol=1e-6)
  assert not np.allclose(probs["float32"], probs["bfloat16"], atol=1e-6)  # bfloat16 honoured
  default = detect.scan_images(tiny_variables, photos, TINY)[0].probs
  same_impl = detect.scan_images(tiny_variables, photos, TINY,
                                 impl=models.resolve_impl("auto"))[0].probs
  np.testing.assert_array_equal(default, same_impl)  # float32 and the run's impl: unchanged


def test_scan_on_a_two_device_mesh_matches_one_device(tmp_path):
  script = f"""
import jax, numpy as np
from jax.sharding import Mesh
from jaxface import detect, models
assert jax.device_count() == 2
v = models.init_variables(jax.random.key(0), latent_dim=0, n_filters=4, image_size=32)
rng = np.random.default_rng(0)
photos = [rng.integers(0, 255, (70, 90, 3), dtype=np.uint8), rng.integers(0, 255, (50, 64, 3),
          dtype=np.uint8)]
opts = detect.ScanOptions(input_size=32, batch_size=15)
mesh = Mesh(np.asarray(jax.devices()), ('data',))
a = detect.scan_images(v, photos, opts, mesh)
b = detect.scan_images(v, photos, opts)
for x, y in zip(a, b):
  np.testing.assert_allclose(x.probs, y.probs, atol=1e-5)
print('ok', sum(len(x.probs) for x in a))
"""
  env = dict(os.environ, XLA_FLAGS=forced_devices_flags(2),
             JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.startswith("ok")


# --------------------------------------------------------------------------------- bad inputs


def _bad_inputs(folder: Path) -> dict[str, Path]:
  """Photos a user may pass: good, greyscale, RGBA, palette, empty, garbage, too small."""
  folder.mkdir(parents=True, exist_ok=True)
  rgb = _photo(60, 80, 7)
  paths = {name: folder / name for name in
           ("rgb.png", "grey.png", "rgba.png", "palette.gif", "zero.jpg", "garbage.jpg",
            "tiny.png")}
  Image.fromarray(rgb).save(paths["rgb.png"])
  Image.fromarray(rgb[..., 0]).save(paths["grey.png"])
  Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)])).save(paths["rgba.png"])
  Image.fromarray(rgb).convert("P").save(paths["palette.gif"])
  paths["zero.jpg"].write_bytes(b"")
  paths["garbage.jpg"].write_bytes(b"not an image at all")
  Image.fromarray(rgb[:20, :30]).save(paths["tiny.png"])
  return paths


def test_read_photo_converts_greyscale_rgba_and_palette(tmp_path):
  paths = _bad_inputs(tmp_path)
  for name in ("grey.png", "rgba.png", "palette.gif"):
    photo = detect.read_photo(paths[name])
    assert photo.shape == (60, 80, 3) and photo.dtype == np.uint8
  grey = detect.read_photo(paths["grey.png"])
  assert (grey[..., 0] == grey[..., 2]).all()


@pytest.mark.parametrize("name,message", [("zero.jpg", "empty file"),
                                          ("garbage.jpg", "cannot read image")])
def test_read_photo_names_the_bad_file(tmp_path, name, message):
  path = _bad_inputs(tmp_path)[name]
  with pytest.raises(DataError, match=f"{name}: {message}"):
    detect.read_photo(path)


def test_photo_files_refuses_an_empty_folder_and_a_missing_path(tmp_path):
  (tmp_path / "empty").mkdir()
  (tmp_path / "empty" / "notes.txt").write_text("no photos here")
  with pytest.raises(DataError, match="empty: folder holds no image"):
    detect.photo_files(tmp_path / "empty")
  with pytest.raises(DataError, match="nowhere.jpg: no such file"):
    detect.photo_files(tmp_path / "nowhere.jpg")


def test_scan_files_reports_bad_files_and_scans_the_rest(tmp_path, tiny_variables):
  paths = _bad_inputs(tmp_path)
  results, errors = detect.scan_files(tiny_variables, sorted(paths.values()), TINY,
                                      images_per_call=3)
  assert sorted(Path(p).name for p in results) == ["grey.png", "palette.gif", "rgb.png",
                                                     "rgba.png"]
  assert sorted(Path(p).name for p in errors) == ["garbage.jpg", "tiny.png", "zero.jpg"]
  for path, message in errors.items():
    assert message.startswith(path) and "\n" not in message
  assert "smaller than the smallest window" in errors[str(paths["tiny.png"])]


def test_scan_files_splits_calls_by_canvas_pixels_with_the_same_results(tmp_path, tiny_variables,
                                                                       monkeypatch):
  paths = []
  for i, (h, w) in enumerate([(40, 60), (70, 50), (48, 48), (90, 120), (33, 40)]):
    paths.append(tmp_path / f"p{i}.png")
    Image.fromarray(_photo(h, w, seed=i)).save(paths[-1])
  together, _ = detect.scan_files(tiny_variables, paths, TINY)
  calls = []
  scan = detect.scan_images
  monkeypatch.setattr(detect, "scan_images", lambda v, photos, *a, **kw: calls.append(
      [p.shape[:2] for p in photos]) or scan(v, photos, *a, **kw))
  apart, _ = detect.scan_files(tiny_variables, paths, TINY, pixels_per_call=2 * 70 * 60)
  # Each call's canvas (photos x tallest x widest) stays within the budget, or holds one photo.
  assert len(calls) > 1 and sum(map(len, calls)) == len(paths)
  for shapes in calls:
    canvas = len(shapes) * max(h for h, _ in shapes) * max(w for _, w in shapes)
    assert len(shapes) == 1 or canvas <= 2 * 70 * 60
  for key, result in together.items():
    np.testing.assert_allclose(apart[key].probs, result.probs, atol=1e-5)


# ------------------------------------------------------------------------------------------ CLI


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
  """A few steps of a tiny CNN (32-pixel inputs), trained and saved by the trainer."""
  from jaxface import train
  workdir = tmp_path_factory.mktemp("cnn_run")
  train.train_and_evaluate(tiny_config("cnn", num_epochs=1, steps_per_epoch=2), workdir)
  return workdir


def _cli(*args: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  return subprocess.run([sys.executable, str(REPO / "experiments" / "detect.py"), *args],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_cli_draws_and_writes_detections_and_reports_bad_inputs(tmp_path, smoke_run):
  paths = _bad_inputs(tmp_path / "photos")
  (tmp_path / "empty").mkdir()
  out = tmp_path / "out"
  proc = _cli(f"--workdir={smoke_run}", f"--out={out}", "--threshold=0.0",
              f"--images={tmp_path / 'photos'}", str(tmp_path / "empty"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 4
  for name in ("zero.jpg", "garbage.jpg", "tiny.png", "empty"):
    assert any(name in line for line in errors), name
  report = json.loads((out / "detections.json").read_text())
  assert sorted(Path(p).name for p in report["photos"]) == ["grey.png", "palette.gif",
                                                              "rgb.png", "rgba.png"]
  assert report["options"]["input_size"] == 32  # read from the run's config
  entry = report["photos"][str(paths["rgb.png"])]
  assert entry["face_present"] and len(entry["detections"]) == entry["n_windows"]  # threshold 0
  assert entry["best_box"] == entry["detections"][0]["box"]
  # After NMS: the best window first, no two boxes overlapping by more than --nms_iou.
  assert entry["boxes"][0] == entry["best_box"] and len(entry["scores"]) == len(entry["boxes"])
  assert 1 <= len(entry["boxes"]) < entry["n_windows"]
  corners = [(x, y, x + s, y + s) for x, y, s in entry["boxes"]]
  for i, box in enumerate(corners):
    assert (detect.corner_iou(np.array(box), np.array(corners[i + 1:]).reshape(-1, 4))
            <= 0.3).all()
  drawing = np.asarray(Image.open(out / entry["png"]))
  assert drawing.shape == (60, 80, 3)
  x0, y0, side = entry["best_box"]
  assert tuple(drawing[y0, x0 + side // 2]) == (0, 200, 0)  # the best box's top edge, green
  assert not np.array_equal(drawing, _photo(60, 80, 7))


def test_cli_with_only_bad_inputs_fails_with_messages(tmp_path, smoke_run):
  (tmp_path / "empty").mkdir()
  proc = _cli(f"--workdir={smoke_run}", f"--out={tmp_path / 'out'}",
              f"--images={tmp_path / 'empty'}")
  assert proc.returncode == 1
  assert "error: " in proc.stderr and "folder holds no image" in proc.stderr


def test_cli_min_neighbours_scores_windows_by_their_support(tmp_path, smoke_run):
  photos = tmp_path / "photos"
  photos.mkdir()
  Image.fromarray(_photo(60, 80, 7)).save(photos / "rgb.png")
  proc = _cli(f"--workdir={smoke_run}", f"--out={tmp_path / 'bad'}", "--min_neighbours=1,2",
              f"--images={photos}")
  assert proc.returncode == 1
  assert "--min_neighbours = '1,2': photos given with --images are scanned under one rule" \
      in proc.stderr
  entries = {}
  for k in (1, 3):
    out = tmp_path / f"k{k}"
    proc = _cli(f"--workdir={smoke_run}", f"--out={out}", f"--min_neighbours={k}",
                "--threshold=0.0", f"--images={photos}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    entries[k] = json.loads((out / "detections.json").read_text())["photos"]
  plain, support = (entries[k][str(photos / "rgb.png")] for k in (1, 3))
  assert len(plain["detections"]) == plain["n_windows"] == support["n_windows"]  # threshold 0
  boxes = np.array([d["box"] for d in plain["detections"]], np.int32)
  probs = np.array([d["prob"] for d in plain["detections"]], np.float32)
  want = reference_support(boxes, probs, 0.3, 3)
  got = {tuple(d["box"]): d["prob"] for d in support["detections"]}
  assert got == pytest.approx({tuple(b): p for b, p in zip(boxes.tolist(), want) if p > 0})
  assert support["best_prob"] == pytest.approx(want.max())
