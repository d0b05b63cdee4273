"""Whole-photo evaluation: the figures from scans, the PPB table, the sets of a run (checks
before training, figures in metrics.json, summary, report, study)."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from jaxface import data, detect, models, train
from jaxface.data import DataError
from jaxface.data.ppb import portrait_id
from jaxface.eval import operating_point, whole_photos
from jaxface.report import set_sections

from helpers import load_experiment, report_of_two_runs, shared_data_dir, tiny_config

PPB = shared_data_dir() / "ppb-faces"
NON_FACE = shared_data_dir() / "nonface-photos" / "images"
TRAIN_PHOTOS = shared_data_dir() / "nonface-photos" / "train_images"

PORTRAITS = ("0001_1_f_AA.jpg", "0002_2_m_AA.jpg", "0003_5_f_BB.jpg", "0004_6_m_BB.jpg",
             "0005_6_m_CC.jpg")


def _write_photo(path, height, width, seed):
  rng = np.random.default_rng(seed)
  Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)


def _sets(root):
  """Five PPB-named portraits (one unreadable), a box table for three, four non-face photos."""
  portraits, non_faces = root / "portraits", root / "nonface"
  portraits.mkdir(parents=True)
  non_faces.mkdir()
  for i, name in enumerate(PORTRAITS[:-1]):
    _write_photo(portraits / name, 72, 64 + 8 * i, seed=i)
  (portraits / PORTRAITS[-1]).write_bytes(b"not a jpeg")
  for i in range(4):
    _write_photo(non_faces / f"photo{i}.png", 64, 80, seed=10 + i)
  table = root / "faces.csv"
  table.write_text("file,portrait,group,box_cx,box_cy,box_side\n"
                   "a.png,0001_1_f_AA.jpg,LF,32,36,40\n"
                   "b.png,0002_2_m_AA.jpg,LM,36,36,48\n"
                   "c.png,0003_5_f_BB.jpg,DF,40,30,30\n")
  return portraits, table, non_faces


def _config(root, **fields):
  portraits, table, non_faces = _sets(root)
  config = tiny_config("cnn", num_epochs=1, steps_per_epoch=3)
  config.whole_images.sets = f"portraits={portraits}"
  config.whole_images.boxes = f"portraits={table}"
  config.whole_images.non_face_photos = str(non_faces)
  config.whole_images.batch_size = 64
  for key, value in fields.items():
    config.whole_images[key] = value
  return config


def test_group_figures_over_the_groups_only():
  found = {"DF": {"n": 4, "found": 2, "rate": 0.5}, "LF": {"n": 2, "found": 2, "rate": 1.0},
           "unknown": {"n": 1, "found": 0, "rate": 0.0},
           "overall": {"n": 7, "found": 4, "rate": 4 / 7}}
  g = whole_photos.group_figures(found)
  assert g["group_order"] == ["LF", "DF"]
  assert g["E_A"] == pytest.approx(75.0) and g["Var_A"] == pytest.approx(625.0)
  assert g["worst_group"] == "DF" and g["worst_rate"] == pytest.approx(50.0)
  assert whole_photos.group_figures({})["E_A"] is None


def test_iou_of_squares():
  boxes = np.array([(0, 0, 10), (5, 0, 10), (20, 20, 5), (0, 0, 20), (2, 2, 5)])
  np.testing.assert_allclose(whole_photos.iou((0, 0, 10), boxes),
                             [1.0, 50 / 150, 0.0, 0.25, 0.25])


@pytest.mark.parametrize("n", [10, 20, 40, 112])
def test_threshold_keeps_at_most_the_allowed_share_of_photos_with_a_detection(n):
  max_probs = np.random.default_rng(n).random(n)
  t = whole_photos.whole_image_figures({}, {}, dict(enumerate(max_probs)), 0.5, 0.05)["threshold"]
  assert t == operating_point.threshold_at_fpr(max_probs, 0.05)[0]  # the crops' rule
  hits = int(operating_point.detected(max_probs, t).sum())
  assert hits == int(np.floor(0.05 * n))
  lower = max_probs[max_probs < t].max()  # the next lower threshold lets one more through
  assert int(operating_point.detected(max_probs, lower).sum()) > 0.05 * n


def test_threshold_with_tied_probabilities_stays_under_the_share():
  max_probs = [0.9] * 3 + [0.1] * 37  # 5% of 40 is 2, but three photos tie at 0.9
  figures = whole_photos.whole_image_figures({}, {}, dict(enumerate(max_probs)), 0.5, 0.05)
  assert figures["threshold"] == 0.9
  assert figures["false_detections"]["n_with_detection"] == 0


def test_false_detections_counts_photos_above_the_threshold():
  out = whole_photos.false_detections({"a.jpg": 0.2, "b.jpg": 0.7, "c.jpg": 0.5}, 0.5)
  assert out["n_with_detection"] == 1 and out["rate"] == pytest.approx(1 / 3)
  assert out["photos_with_detection"] == ["b.jpg"]  # 0.5 is not above 0.5
  json.dumps(out)


def test_portrait_group_from_the_table_or_the_file_name():
  assert data.portrait_group("0612_6_f_RW.jpg") == "DF"
  assert data.portrait_group("x/0002_1_m_FL.jpg") == "LM"
  assert data.portrait_group("0800_4_M_SE.jpg") == "DM"
  assert data.portrait_group("0003_3_f_SW.jpg") == "LF"
  assert data.portrait_group("n01498041_stingray.jpg") is None
  faces = {"0612_6_f_RW.jpg": {"group": "LM", "box": None}}
  assert data.group_of_portrait("p/0612_6_f_RW.jpg", faces) == "LM"  # the table wins
  assert data.group_of_portrait("0800_4_M_SE.jpg", faces) == "DM"
  assert data.group_of_portrait("stingray.jpg", faces) == "unknown"


def _result(boxes, probs) -> detect.ScanResult:
  boxes, probs = np.asarray(boxes, np.int32), np.asarray(probs, np.float32)
  best = int(np.argmax(probs))
  return detect.ScanResult(boxes, probs, boxes[best], float(probs[best]), True, 0.5)


def test_faces_found_needs_the_overlap_where_there_is_a_box():
  faces = {"0001_1_f_FL.jpg": {"group": "LF", "box": (10.0, 10.0, 40.0)},
           "0002_2_m_FL.jpg": {"group": "LM", "box": (10.0, 10.0, 40.0)},
           "0003_5_f_RW.jpg": {"group": "DF", "box": None}}
  scans = {
      "p/0001_1_f_FL.jpg": _result([(12, 12, 40), (100, 100, 40)], [0.9, 0.1]),  # found
      "p/0002_2_m_FL.jpg": _result([(12, 12, 40), (100, 100, 40)], [0.1, 0.9]),  # wrong place
      "p/0003_5_f_RW.jpg": _result([(0, 0, 40)], [0.6]),  # no box: any window
      "p/0004_6_m_SE.jpg": _result([(0, 0, 40)], [0.4]),  # not in the CSV, below threshold
      "p/0005_5_m_SE.jpg": _result([(0, 0, 40)], [0.7]),  # not in the CSV, found
  }
  out = whole_photos.faces_found(scans, faces, threshold=0.5)
  assert out["with_box"]["LF"] == {"n": 1, "found": 1, "rate": 1.0}
  assert out["with_box"]["LM"] == {"n": 1, "found": 0, "rate": 0.0}
  assert out["without_box"]["DF"]["found"] == 1
  assert out["without_box"]["DM"] == {"n": 2, "found": 1, "rate": 0.5}
  assert out["all"]["overall"] == {"n": 5, "found": 3, "rate": 0.6}
  assert out["missed"] == ["0002_2_m_FL.jpg", "0004_6_m_SE.jpg"]
  json.dumps(out)
  assert whole_photos.faces_found(scans, faces, 0.5, min_iou=0.95)["with_box"]["LF"]["found"] == 0


def test_load_face_boxes_turns_centres_into_corners(tmp_path):
  csv_path = tmp_path / "faces.csv"
  csv_path.write_text("file,portrait,group,box_cx,box_cy,box_side\n"
                      "a.png,a.jpg,LF,50,60,20\nb.png,b.jpg,DM,,,\n")
  faces = data.load_face_boxes(csv_path)
  assert faces["a.jpg"] == {"group": "LF", "box": (40.0, 50.0, 20.0)}
  assert faces["b.jpg"] == {"group": "DM", "box": None}
  (tmp_path / "bad.csv").write_text("portrait,group\na.jpg,LF\n")
  with pytest.raises(DataError, match="bad.csv: missing column"):
    data.load_face_boxes(tmp_path / "bad.csv")
  with pytest.raises(DataError, match="absent.csv: face-box CSV not found"):
    data.load_face_boxes(tmp_path / "absent.csv")


def test_run_scans_the_sets_once_at_the_end(tmp_path, capsys):
  config = _config(tmp_path)
  result = train.train_and_evaluate(config, tmp_path / "run")
  final = json.loads((tmp_path / "run" / "metrics.json").read_text())
  figures = final["eval"]["whole_images"]["portraits"]
  assert "whole_images" not in final["epochs"][-1]  # the per-epoch evaluations stay as they were
  # the unreadable portrait is named and skipped; the four others are scanned
  assert list(figures["errors"]) == [str(tmp_path / "portraits" / PORTRAITS[-1])]
  assert sorted(figures["portraits"]) == sorted(PORTRAITS[:-1])
  assert figures["n_photos"] == 5
  fd = figures["false_detections"]
  assert fd["n_photos"] == 4 and fd["n_with_detection"] <= 0.05 * 4
  # the boxed portraits are in 'with_box', the box-less one takes its group from its name
  assert {g for g in figures["faces_found"]["with_box"] if g != "overall"} == {"LF", "LM", "DF"}
  assert figures["faces_found"]["without_box"]["DM"]["n"] == 1
  # Recomputed from the returned model with the library function: the same figures.
  sets = whole_photos.WholeImageSets(
      {"portraits": detect.photo_files(tmp_path / "portraits")},
      {"portraits": data.load_face_boxes(tmp_path / "faces.csv")},
      detect.photo_files(tmp_path / "nonface"),
      whole_photos.scan_options(config.whole_images, config.data.image_size))
  again = whole_photos.evaluate_sets(result.variables, sets, config.whole_images,
                                     dtype=config.dtype, impl=config.model.impl)["portraits"]
  assert again["threshold"] == pytest.approx(figures["threshold"], rel=1e-6)
  assert again["faces_found"]["all"] == figures["faces_found"]["all"]
  for name, entry in figures["portraits"].items():
    assert entry["best_prob"] == pytest.approx(again["portraits"][name]["best_prob"], abs=1e-6)
    assert entry["found"] == (name not in figures["faces_found"]["missed"])
  summary = figures["summary"]
  rates = [100 * v["rate"] for g, v in figures["faces_found"]["all"].items() if g != "overall"]
  assert summary["E_A"] == pytest.approx(np.mean(rates))
  out = capsys.readouterr().out
  assert "-- whole images portraits: 4 photos scanned, 2 unreadable skipped" not in out
  assert "-- whole images portraits: 4 photos scanned, 1 unreadable skipped" in out
  assert "non-face photos with a detection" in out and "found at p > 0.5" in out


def test_evaluation_scans_in_the_given_dtype(tmp_path):
  portraits, table, non_faces = _sets(tmp_path)
  variables = models.init_variables(jax.random.key(0), latent_dim=0, n_filters=4, image_size=32)
  options = detect.ScanOptions(input_size=32, batch_size=64)
  sets = whole_photos.WholeImageSets({"pp": detect.photo_files(portraits)},
                                     {"pp": data.load_face_boxes(table)},
                                     detect.photo_files(non_faces), options)
  settings = whole_photos.default_whole_images_config()
  best = {}
  for dtype in ("float32", "bfloat16"):
    figures = whole_photos.evaluate_sets(variables, sets, settings, dtype=dtype)["pp"]
    scans, _ = detect.scan_files(variables, sets.photos["pp"], options, dtype=dtype)
    best[dtype] = {name: entry["best_prob"] for name, entry in figures["portraits"].items()}
    assert best[dtype] == {Path(k).name: r.best_prob for k, r in scans.items()}
  assert best["float32"] != best["bfloat16"]


@pytest.mark.parametrize("field, value, message", [
    ("sets", "portraits=/nowhere/at/all", r"config.whole_images.sets: set 'portraits': "
     r"/nowhere/at/all: no such folder"),
    ("boxes", "other=/x.csv", r"config.whole_images.boxes: 'other' is not a set"),
    ("non_face_photos", "", r"config.whole_images.non_face_photos: a folder of photos"),
    ("max_false_rate", 1.5, r"config.whole_images.max_false_rate = 1.5"),
    ("stride_frac", 0.0, r"config.whole_images: ScanOptions.stride_frac"),
    ("sets", "test=/x", r"config.whole_images.sets: name 'test' clashes"),
    ("nms_iou", 0.0, r"config.whole_images.nms_iou = 0.0: must be in \(0, 1\]"),
    ("val_non_face_photos", "/nowhere", r"config.whole_images.val_non_face_photos: /nowhere: "
     r"no such folder"),
])
def test_bad_whole_image_settings_fail_before_training(tmp_path, field, value, message):
  config = _config(tmp_path, **{field: value})
  with pytest.raises(DataError, match=message):
    train.train_and_evaluate(config, tmp_path / "run")
  assert not (tmp_path / "run" / "checkpoints").exists()


def _validation_config(root, **fields):
  """The sets of ``_sets`` plus nine training photos (one unreadable) to validate on; the
  portraits with an even image id (2 and 4) are validation portraits."""
  config = _config(root)
  train_photos = root / "train_photos"
  train_photos.mkdir()
  for i in range(8):
    _write_photo(train_photos / f"train{i}.png", 64, 72, seed=20 + i)
  (train_photos / "zz_broken.jpg").write_bytes(b"")
  config.whole_images.val_non_face_photos = str(train_photos)
  config.whole_images.val_non_face_rule = "index % 2 == 0"
  config.whole_images.val_faces_rule = "image_id % 2 == 0"
  for key, value in fields.items():
    config.whole_images[key] = value
  return config


def test_validation_photos_choose_the_threshold_and_the_test_photos_measure_it(tmp_path):
  config = _validation_config(tmp_path)
  sets = whole_photos.load_whole_image_sets(config.whole_images, 32)
  assert [p.name for p in sets.photos["portraits"]] == [PORTRAITS[0], PORTRAITS[2],
                                                        PORTRAITS[4]]
  assert [p.name for p in sets.val_photos["portraits"]] == [PORTRAITS[1], PORTRAITS[3]]
  assert [p.name for p in sets.val_non_face_photos] == [
      "train0.png", "train2.png", "train4.png", "train6.png", "zz_broken.jpg"]
  variables = models.init_variables(jax.random.key(1), latent_dim=0, n_filters=4, image_size=32)
  figures = whole_photos.evaluate_sets(variables, sets, config.whole_images)["portraits"]
  val_max, _ = whole_photos.non_face_max_probs(variables, sets.val_non_face_photos,
                                               sets.options)
  test_max, _ = whole_photos.non_face_max_probs(variables, sets.non_face_photos, sets.options)
  threshold = operating_point.threshold_at_fpr(list(val_max.values()), 0.05)[0]
  assert figures["threshold"] == threshold  # chosen on the validation photos ...
  assert figures["false_detections"] == whole_photos.false_detections(test_max, threshold)
  assert figures["val"]["false_detections"]["n_photos"] == 4  # ... the unreadable one skipped
  rule = figures["decision_rule"]
  assert rule["threshold_photos"] == "val_non_face_photos" and rule["n_threshold_photos"] == 5
  assert rule["val_faces_rule"] == "image_id % 2 == 0" and rule["nms_iou"] == 0.3
  # the test figures leave the validation portraits out; they are reported apart
  assert sorted(figures["portraits"]) == [PORTRAITS[0], PORTRAITS[2]]
  assert figures["faces_found"]["all"]["overall"]["n"] == 2 and figures["n_photos"] == 3
  assert figures["val"]["faces_found"]["all"]["overall"]["n"] == 2
  assert set(figures["errors"]) == {str(tmp_path / "train_photos" / "zz_broken.jpg"),
                                    str(tmp_path / "portraits" / PORTRAITS[4])}
  assert all(entry["n_boxes"] >= int(entry["best_prob"] > threshold)
             for entry in figures["portraits"].values())
  assert figures["boxes_per_portrait"] == np.mean(
      [e["n_boxes"] for e in figures["portraits"].values()])
  json.dumps(figures)
  line = whole_photos.summary_lines("portraits", figures)[0]
  assert "set on 5 validation non-face photos" in line and "non-face photos with a detection" \
      in line


@pytest.mark.parametrize("fields, message", [
    ({"val_non_face_rule": "index % 4 == 7"}, r"config.whole_images.val_non_face_rule = "
     r"'index % 4 == 7': must read 'index % M == R'"),
    ({"val_non_face_rule": "every 4th"}, r"val_non_face_rule = 'every 4th': must read"),
    ({"val_non_face_rule": "index % 20 == 9"}, r"config.whole_images.val_non_face_rule = "
     r"'index % 20 == 9' selects none of the 9 photos .*the validation split is empty"),
    ({"val_non_face_photos": "NONFACE"}, r"config.whole_images.val_non_face_photos: 2 "
     r"validation photo\(s\) are also test photos of config.whole_images.non_face_photos"),
    ({"val_non_face_photos": "/nowhere/at/all"}, r"config.whole_images.val_non_face_photos: "
     r"/nowhere/at/all: no such folder"),
    ({"val_faces_rule": "image_id % 10 == 9"}, r"config.whole_images.val_faces_rule: set "
     r"'portraits': the rule leaves 0 validation and 5 test portraits of 5"),
    ({"val_faces_rule": "id % 2 == 0"}, r"val_faces_rule = 'id % 2 == 0': must read "
     r"'image_id % M == R'"),
    ({"nms_iou": 0.0}, r"config.whole_images.nms_iou = 0.0: must be in \(0, 1\]"),
    ({"nms_iou": 1.5}, r"config.whole_images.nms_iou = 1.5"),
    ({"min_neighbours": "0"}, r"config.whole_images.min_neighbours = '0': must be distinct "
     r"integers >= 1"),
    ({"min_neighbours": "1,two"}, r"config.whole_images.min_neighbours = '1,two'"),
    ({"min_neighbours": "2,2"}, r"config.whole_images.min_neighbours = '2,2'"),
    ({"min_neighbours": "1,2", "val_faces_rule": ""}, r"config.whole_images.min_neighbours = "
     r"'1,2': several candidates are chosen on validation portraits"),
])
def test_bad_validation_splits_name_the_field(tmp_path, fields, message):
  fields = {k: str(tmp_path / "nonface") if v == "NONFACE" else v for k, v in fields.items()}
  config = _validation_config(tmp_path, **fields)
  with pytest.raises(DataError, match=message):
    whole_photos.load_whole_image_sets(config.whole_images, 32)


def test_min_neighbours_candidates_are_chosen_on_the_validation_portraits(tmp_path):
  config = _validation_config(tmp_path, min_neighbours="1,2,40")
  sets = whole_photos.load_whole_image_sets(config.whole_images, 32)
  variables = models.init_variables(jax.random.key(1), latent_dim=0, n_filters=4, image_size=32)
  figures = whole_photos.evaluate_sets(variables, sets, config.whole_images)["portraits"]
  rule = figures["decision_rule"]
  candidates = rule["candidates"]
  assert sorted(candidates) == ["1", "2", "40"]
  worst = {k: c["val_summary"]["worst_rate"] for k, c in candidates.items()}
  best = max(worst.values())
  assert rule["min_neighbours"] == min(int(k) for k, w in worst.items() if w == best)
  # Each candidate is the single-rule evaluation of the same scans.
  for k, candidate in candidates.items():
    config.whole_images.min_neighbours = k
    alone = whole_photos.evaluate_sets(variables, sets, config.whole_images)["portraits"]
    assert alone["threshold"] == candidate["threshold"]
    assert alone["val"]["summary"] == candidate["val_summary"]
    assert "candidates" not in alone["decision_rule"]
    assert alone["decision_rule"]["min_neighbours"] == int(k)
    if k == str(rule["min_neighbours"]):
      assert alone["summary"] == figures["summary"]
  # No photo holds 40 overlapping windows above a threshold: nothing is ever detected.
  assert candidates["40"]["threshold"] == 0.0
  assert candidates["40"]["val_false_detections"]["n_with_detection"] == 0
  json.dumps(figures)
  line = whole_photos.summary_lines("portraits", figures)[0]
  assert ("overlapping detections (chosen on the validation portraits)" in line) == (
      rule["min_neighbours"] > 1)
  # The study reads the chosen rule and the plain threshold rule beside it.
  row = load_experiment("study", "_experiments_study_rules").whole_image_summary(figures)
  assert row["min_neighbours"] == rule["min_neighbours"]
  assert row["false_photos_k1"] == 100 * candidates["1"]["false_detections"]["rate"]
  assert row.get("worst_rate_k1") == candidates["1"]["summary"]["worst_rate"]


def test_a_portrait_without_an_image_id_is_named(tmp_path):
  config = _validation_config(tmp_path)
  _write_photo(tmp_path / "portraits" / "stingray.jpg", 64, 64, seed=3)
  with pytest.raises(DataError, match=r"config.whole_images.val_faces_rule: set 'portraits': "
                     r".*stingray.jpg: no image id"):
    whole_photos.load_whole_image_sets(config.whole_images, 32)
  config.whole_images.val_faces_rule = ""  # every portrait for the test
  sets = whole_photos.load_whole_image_sets(config.whole_images, 32)
  assert sets.val_photos is None and len(sets.photos["portraits"]) == 6
  assert len(sets.val_non_face_photos) == 5


def test_empty_folder_and_name_clash_with_an_extra_test_set(tmp_path):
  (tmp_path / "empty").mkdir()
  config = _config(tmp_path, sets=f"portraits={tmp_path / 'empty'}", boxes="")
  with pytest.raises(DataError, match=r"config.whole_images.sets: set 'portraits': .*holds no "
                     r"image"):
    whole_photos.load_whole_image_sets(config.whole_images, 32)
  config.whole_images.sets = f"ppb={tmp_path / 'portraits'}"
  with pytest.raises(DataError, match=r"name 'ppb' is already a test set"):
    whole_photos.load_whole_image_sets(config.whole_images, 32, taken={"train", "ppb"})


def test_report_has_a_whole_image_section_with_examples(tmp_path):
  config = _config(tmp_path)
  config.name = "cnn-a"
  other = _config(tmp_path / "b")
  other.name, other.seed = "cnn-b", 1
  result, index = report_of_two_runs(tmp_path, config, other)
  html = index.read_text()
  assert "Whole images portraits" in html and "DM: found at p &gt; 0.5 %" in html
  found = json.loads((index.parent / "metrics.json").read_text())
  section = found["whole_images"]["portraits"]
  assert list(section) == ["cnn-a", "cnn-b"]
  mine = result.metrics["eval"]["whole_images"]["portraits"]
  assert section["cnn-a"]["faces_found"] == mine["faces_found"]
  assert section["cnn-a"]["threshold"] == mine["threshold"]
  # The test non-face photos scoring highest, highest first, marked where one is a detection.
  worst = mine["false_windows"]
  assert 0 < len(worst) <= whole_photos.FALSE_WINDOWS
  probs = [w["best_prob"] for w in worst]
  assert probs == sorted(probs, reverse=True)
  assert [w["detected"] for w in worst] == [p > mine["threshold"] for p in probs]
  assert {Path(w["file"]).name for w in worst if w["detected"]} == set(
      mine["false_detections"]["photos_with_detection"])
  rows = set_sections._example_portraits(mine, 3)
  assert rows[-1][0] == "non-face" and len(rows[-1][1]) == min(3, len(worst))
  assert [e["found"] for e in rows[-1][1]] == [not w["detected"] for w in worst[:3]]
  for slug in ("cnn-a", "cnn-b"):
    png = index.parent / f"{slug}_portraits_examples.png"
    assert png.stat().st_size > 0
    assert png.name in [f["file"] for f in found["figures"]]


def test_study_has_a_table_per_whole_image_set(tmp_path):
  study = load_experiment("study", "_experiments_study_whole")
  portraits, table, non_faces = _sets(tmp_path)
  argv = ["--planted", "--workdir", str(tmp_path / "runs"), "--seeds", "2", "--combines",
          "--steps_per_epoch", "2", "--epochs", "1", "--xla_cache", "", "--no_test_sets",
          "--set", "data.n_train_faces=48", "data.n_train_non_faces=48",
          "data.n_test_per_group=4", "data.n_test_non_faces=16", "data.image_size=32",
          "model.n_filters=4", "bn_recalibration_batches=1", "eval_batch_size=32",
          "batch_size=16", f"whole_images.sets=pp={portraits}", f"whole_images.boxes=pp={table}",
          f"whole_images.non_face_photos={non_faces}", "whole_images.batch_size=64"]
  result = study.main(argv)
  pp = result["whole_images"]["summary"]["pp"]["cnn"]
  per_seed = [json.loads((tmp_path / "runs" / "cnn" / f"seed{s}" / "metrics.json").read_text())
              ["eval"]["whole_images"]["pp"] for s in (0, 1)]
  assert pp["found_DM"]["n"] == 2
  assert pp["found_LF"]["mean"] == pytest.approx(
      np.mean([100 * m["faces_found"]["all"]["LF"]["rate"] for m in per_seed]))
  assert pp["false_photos"]["mean"] == pytest.approx(
      np.mean([100 * m["false_detections"]["rate"] for m in per_seed]))
  md = (tmp_path / "runs" / "study.md").read_text()
  assert "Whole images `pp`:" in md and "DM found @0.5 %" in md


def test_study_scans_the_runs_of_scan_rows_after_training_as_a_run_would(tmp_path):
  study = load_experiment("study", "_experiments_study_scan")
  root = tmp_path / "data"
  portraits, table, non_faces = _sets(tmp_path / "made")
  (root / "ppb-faces").mkdir(parents=True)
  portraits.rename(root / "ppb-faces" / "portraits")
  table.rename(root / "ppb-faces" / "faces.csv")
  (root / "nonface-photos").mkdir()
  non_faces.rename(root / "nonface-photos" / "images")
  common = ["--planted", "--seeds", "1", "--combines", "--steps_per_epoch", "2", "--epochs",
            "1", "--xla_cache", "", "--no_test_sets", "--data_root", str(root)]
  tiny = ["data.n_train_faces=48", "data.n_train_non_faces=48", "data.n_test_per_group=4",
          "data.n_test_non_faces=16", "data.image_size=32", "model.n_filters=4",
          "bn_recalibration_batches=1", "eval_batch_size=32", "batch_size=16"]
  with pytest.raises(SystemExit, match="--scan_rows dbvae: no study row"):
    study.main(common + ["--workdir", str(tmp_path / "x"), "--scan_rows", "dbvae"])
  after = study.main(common + ["--workdir", str(tmp_path / "after"), "--scan_rows", "cnn",
                               "--set", *tiny])
  assert (tmp_path / "after" / "cnn" / "seed0" / "whole_images.json").is_file()
  during = study.main(common + ["--workdir", str(tmp_path / "during"), "--whole_images",
                                "--set", *tiny])
  scanned = after["whole_images"]["summary"]["ppb_portraits"]["cnn"]
  in_run = during["whole_images"]["summary"]["ppb_portraits"]["cnn"]
  assert scanned == in_run  # the last checkpoint is the state the run ended with
  # A later study of the same runs reads the scan, with or without --scan_rows.
  again = study.main(common + ["--workdir", str(tmp_path / "after"), "--aggregate_only",
                               "--set", *tiny])
  assert again["whole_images"]["summary"]["ppb_portraits"]["cnn"] == scanned
  assert {"found_LF", "false_photos", "threshold"} <= set(scanned)
  # A scan made with the fields asked for is read; one made with others is scanned again.
  saved = tmp_path / "after" / "cnn" / "seed0" / "whole_images.json"
  figures = json.loads(saved.read_text())
  assert figures["ppb_portraits"]["scan_fields"]["non_face_photos"] == str(
      root / "nonface-photos" / "images")
  before = saved.stat().st_mtime_ns
  study.main(common + ["--workdir", str(tmp_path / "after"), "--scan_rows", "cnn", "--set",
                       *tiny])
  assert saved.stat().st_mtime_ns == before
  figures["ppb_portraits"]["scan_fields"]["min_iou"] = 0.9
  figures["ppb_portraits"]["threshold"] = -1.0
  saved.write_text(json.dumps(figures))
  rescanned = study.main(common + ["--workdir", str(tmp_path / "after"), "--scan_rows", "cnn",
                                   "--set", *tiny])
  assert rescanned["whole_images"]["summary"]["ppb_portraits"]["cnn"] == scanned


# ------------------------------------------------------------------------------ PPB and photos
# ------------------------------------------------------------------------------ PPB and photos


needs_ppb = pytest.mark.skipif(not (PPB / "faces.csv").exists() or not NON_FACE.exists()
                               or not TRAIN_PHOTOS.exists(),
                               reason="ppb-faces / nonface-photos data not available")


@needs_ppb
def test_ppb_groups_in_the_csv_agree_with_the_file_names():
  faces = data.load_face_boxes(PPB / "faces.csv")
  assert all(data.portrait_group(name) == f["group"] for name, f in faces.items())
  portraits = detect.photo_files(PPB / "portraits")
  absent = [p.name for p in portraits if p.name not in faces]
  assert absent and all(data.portrait_group(name) for name in absent)


@needs_ppb
def test_ppb_validation_portraits_by_image_id_and_photos_every_fourth():
  settings = whole_photos.default_whole_images_config()
  settings.update({"sets": f"ppb={PPB / 'portraits'}", "boxes": f"ppb={PPB / 'faces.csv'}",
                   "non_face_photos": str(NON_FACE), "val_non_face_photos": str(TRAIN_PHOTOS)})
  sets = whole_photos.load_whole_image_sets(settings, 64)
  test, val = sets.photos["ppb"], sets.val_photos["ppb"]
  assert len(test) + len(val) == len(detect.photo_files(PPB / "portraits"))
  assert all(portrait_id(p.name) % 4 == 0 for p in val)
  assert all(portrait_id(p.name) % 4 == 2 for p in test)  # PPB's ids here are even
  every = detect.photo_files(TRAIN_PHOTOS)
  assert sets.val_non_face_photos == every[::4]
  assert not {p.name for p in sets.val_non_face_photos} & {p.name for p in sets.non_face_photos}


@needs_ppb
def test_whole_image_evaluation_on_a_few_portraits_and_photos():
  variables = models.init_variables(jax.random.key(0), latent_dim=0, n_filters=4, image_size=32)
  faces = data.load_face_boxes(PPB / "faces.csv")
  portraits = detect.photo_files(PPB / "portraits")
  absent = [p for p in portraits if p.name not in faces]
  options = detect.ScanOptions(input_size=32, batch_size=256, stride_frac=0.5, n_scales=3)
  sets = whole_photos.WholeImageSets({"ppb": portraits[:2] + absent[:1]}, {"ppb": faces},
                                     detect.photo_files(NON_FACE)[:4], options)
  out = whole_photos.evaluate_sets(variables, sets, whole_photos.default_whole_images_config())
  out = out["ppb"]
  json.dumps(out)
  assert out["false_detections"]["n_photos"] == 4
  assert out["false_detections"]["n_with_detection"] == 0  # 5% of 4 photos allows none
  found = out["faces_found"]
  assert found["with_box"]["overall"]["n"] == 2 and found["without_box"]["overall"]["n"] == 1
  assert found["all"]["overall"]["n"] == 3
