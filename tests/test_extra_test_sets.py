"""Tests of the named extra test sets: config, loading at set-up, evaluation, summary, report."""

import csv
import json
import re

import numpy as np
import pytest
from PIL import Image

from jaxface import data as data_lib
from jaxface import evaluation, train
from jaxface.data import DataError
from jaxface.eval import operating_point as op_lib

from helpers import load_experiment, report_of_two_runs, shared_data_dir, tiny_config

PPB = shared_data_dir() / "ppb-faces"


def _save(path, seed=0, size=32, value=None):
  path.parent.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  image = (np.full((size, size, 3), value, np.uint8) if value is not None
           else rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
  Image.fromarray(image).save(path)


def _grouped_set(root, groups=("A", "B"), n=3):
  """ROOT/<group>/<group>_<i>.png, and a faces.csv beside ROOT with a fitzpatrick column."""
  rows = []
  for k, g in enumerate(groups):
    for i in range(n):
      _save(root / g / f"{g}_{i}.png", seed=10 * k + i)
      rows.append([f"{g}_{i}.png", 1 + (k * n + i) % 6])
  table = root.parent / f"{root.name}_faces.csv"
  with open(table, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["file", "fitzpatrick"])
    writer.writerows(rows)
  return root, table


def _mixed_set(root, n_faces=4, n_non=5, groups=()):
  """ROOT/faces/[<group>/]*.png (groups taken in turn) and ROOT/not_faces/*.png."""
  for i in range(n_faces):
    sub = groups[i % len(groups)] if groups else ""
    _save(root / "faces" / sub / f"f{i}.png", seed=100 + i)
  for i in range(n_non):
    _save(root / "not_faces" / f"n{i}.png", seed=200 + i)
  return root


def _data_config(**fields):
  config = data_lib.default_data_config()
  config.image_size = 32
  config.update(fields)
  return config


# ------------------------------------------------------------------------------ config parsing


def test_parse_named_paths_keeps_order_and_strips():
  assert data_lib.parse_named_paths(" b=/y , a=/x,", "extra_test_sets") == {"b": "/y", "a": "/x"}
  assert data_lib.parse_named_paths("", "extra_test_sets") == {}


@pytest.mark.parametrize("text, why", [
    ("test=/x", "clashes with the 'test' split"),
    ("val=/x", "clashes with the 'val' split"),
    ("a=/x,a=/y", "'a' given twice"),
    ("a", "must be NAME=PATH"),
    ("a=", "must be NAME=PATH"),
    ("a b=/x", "must be letters"),
])
def test_parse_named_paths_rejects_bad_entries_naming_the_field(text, why):
  with pytest.raises(DataError, match="config.data.extra_test_sets: .*" + why):
    data_lib.parse_named_paths(text, "extra_test_sets")


def test_extra_fields_pass_config_validation():
  config = tiny_config("cnn")
  config.data.extra_test_sets = "a=/x"
  config.data.extra_test_attributes = "a=/x.csv"
  from jaxface import config as config_lib
  config_lib.validate_config(config, 1)


# ----------------------------------------------------------------------------------- loading


def test_load_extra_test_sets_with_attributes(tmp_path):
  grouped, table = _grouped_set(tmp_path / "grouped")
  mixed = _mixed_set(tmp_path / "mixed")
  config = _data_config(extra_test_sets=f"g={grouped},m={mixed}",
                        extra_test_attributes=f"g={table}")
  sets = data_lib.load_extra_test_sets(config)
  assert list(sets) == ["g", "m"]
  assert sets["g"].groups.tolist() == ["A"] * 3 + ["B"] * 3
  assert sets["g"].attributes["fitzpatrick"].tolist() == [1, 2, 3, 4, 5, 6]
  assert sets["m"].labels.tolist() == [1] * 4 + [0] * 5
  assert "fitzpatrick" not in sets["m"].attributes
  # load_datasets returns them beside the splits
  config.n_train_faces = config.n_train_non_faces = 8
  config.n_test_per_group, config.n_test_non_faces = 2, 4
  assert list(data_lib.load_datasets(config)) == ["train", "val", "test", "g", "m"]


def test_missing_set_names_field_and_path(tmp_path):
  config = _data_config(extra_test_sets=f"gone={tmp_path / 'nowhere'}")
  with pytest.raises(DataError, match=r"config.data.extra_test_sets: test set 'gone': .*nowhere"):
    data_lib.load_extra_test_sets(config)


def test_empty_set_and_empty_group_folder(tmp_path):
  (tmp_path / "empty").mkdir()
  with pytest.raises(DataError, match=r"extra_test_sets: test set 'e': .*empty.*empty test set"):
    data_lib.load_extra_test_sets(_data_config(extra_test_sets=f"e={tmp_path / 'empty'}"))
  grouped, _ = _grouped_set(tmp_path / "grouped")
  (grouped / "C").mkdir()
  with pytest.raises(DataError, match=r"extra_test_sets: test set 'g': .*C.*no .*images"):
    data_lib.load_extra_test_sets(_data_config(extra_test_sets=f"g={grouped}"))


def test_set_of_non_faces_only_has_no_faces(tmp_path):
  root = tmp_path / "nf"
  for i in range(2):
    _save(root / "not_faces" / f"n{i}.png", seed=i)
  (root / "faces").mkdir()  # empty
  with pytest.raises(DataError, match=r"extra_test_sets: test set 'nf': .*faces"):
    data_lib.load_extra_test_sets(_data_config(extra_test_sets=f"nf={root}"))


def test_unreadable_image_fails_or_is_counted(tmp_path):
  grouped, _ = _grouped_set(tmp_path / "grouped")
  (grouped / "A" / "broken.png").write_bytes(b"not a png")
  with pytest.raises(DataError, match=r"extra_test_sets: test set 'g': .*broken.png"):
    data_lib.load_extra_test_sets(_data_config(extra_test_sets=f"g={grouped}"))
  sets = data_lib.load_extra_test_sets(_data_config(extra_test_sets=f"g={grouped}",
                                                    skip_corrupt=True))
  assert sets["g"].num_faces == 6 and sets["g"].num_skipped == 1


def test_attribute_table_errors_name_their_field(tmp_path):
  grouped, table = _grouped_set(tmp_path / "grouped")
  with pytest.raises(DataError, match=r"config.data.extra_test_attributes: 'x' is not a set"):
    data_lib.load_extra_test_sets(_data_config(extra_test_sets=f"g={grouped}",
                                               extra_test_attributes=f"x={table}"))
  with pytest.raises(DataError, match=r"config.data.extra_test_attributes: test set 'g': "
                                      r".*missing column"):
    data_lib.load_extra_test_sets(_data_config(
        extra_test_sets=f"g={grouped}", extra_test_attributes=f"g={table}",
        extra_test_attribute_groups="skin"))
  with pytest.raises(DataError, match=r"config.data.extra_test_attributes: test set 'g': "
                                      r".*nope.csv"):
    data_lib.load_extra_test_sets(_data_config(extra_test_sets=f"g={grouped}",
                                               extra_test_attributes=f"g={tmp_path}/nope.csv"))


# -------------------------------------------------------------------------------- evaluation


def _faces_only(groups, fitz=None):
  n = len(groups)
  attributes = {} if fitz is None else {"fitzpatrick": np.asarray(fitz, np.int64)}
  return data_lib.FaceData(images=np.zeros((n, 16, 16, 3), np.uint8), labels=np.ones(n, np.int64),
                           groups=np.asarray(groups), attributes=attributes)


def test_test_set_metrics_scores_a_faces_only_set_against_the_fallback_non_faces():
  rng = np.random.default_rng(0)
  groups = ["A"] * 50 + ["B"] * 50
  fitz = [1, 2] * 50
  data = _faces_only(groups, fitz)
  face_prob = np.concatenate([rng.uniform(0.3, 1, 50), rng.uniform(0, 0.8, 50)])
  non_face_prob = rng.uniform(0, 0.6, 200)
  val_non_face_prob = rng.uniform(0, 0.9, 300)  # the threshold's non-faces: not these
  threshold = op_lib.validation_threshold(val_non_face_prob, non_face_prob, 0.01)
  m = train.test_set_metrics(face_prob, data, non_face_prob, ("fitzpatrick", "absent"),
                             threshold=threshold)
  assert m["non_faces_from"] == "test" and m["n_skipped"] == 0
  assert m["E_A"] == evaluation.group_metrics(face_prob, data.labels, data.groups)["E_A"]
  op = m["operating_point"]
  assert op["threshold"] == np.sort(val_non_face_prob)[-4] and op["threshold_from"] == "val"
  assert op["fpr"] == np.mean(non_face_prob > op["threshold"])
  assert op["groups"]["A"]["auc"] == evaluation.roc_auc(face_prob[:50], non_face_prob)
  assert op["groups"]["B"]["detection_rate"] == np.mean(face_prob[50:] > op["threshold"])
  assert list(m["by_attribute"]) == ["fitzpatrick"]
  by_fitz = m["by_attribute"]["fitzpatrick"]
  assert by_fitz["groups"]["1"]["n"] == 50
  assert by_fitz["groups"]["1"]["detection_rate"] == np.mean(face_prob[0::2] > 0.5)
  assert by_fitz["operating_point"]["groups"]["2"]["auc"] == evaluation.roc_auc(
      face_prob[1::2], non_face_prob)
  # No threshold: rates, but no operating point.
  alone = train.test_set_metrics(face_prob, data, None)
  assert alone["operating_point"] is None and alone["non_faces_from"] is None
  no_threshold = train.test_set_metrics(face_prob, data, non_face_prob, threshold=None)
  assert no_threshold["operating_point"] is None and no_threshold["non_faces_from"] == "test"


def test_test_set_metrics_prefers_the_sets_own_non_faces():
  data = data_lib.FaceData(images=np.zeros((4, 16, 16, 3), np.uint8),
                           labels=np.array([1, 1, 0, 0]), groups=np.array(["A", "A", "", ""]))
  threshold = op_lib.Threshold(0.25, 0.01, "val", 0.0)
  m = train.test_set_metrics(np.array([0.9, 0.2, 0.1, 0.3]), data, np.array([0.95]),
                             threshold=threshold)
  assert m["non_faces_from"] == "own"
  op = m["operating_point"]
  assert op["threshold"] == 0.25 and op["groups"]["A"]["detection_rate"] == 0.5
  assert op["fpr"] == 0.5  # measured on its own non-faces (0.3 of 0.1, 0.3), not on 0.95
  assert op["groups"]["A"]["auc"] == 0.75  # 0.9 above both, 0.2 above 0.1 only
  assert m["non_face_accuracy"] == 1.0


def _tiny_run_config(tmp_path, kind="cnn"):
  grouped, table = _grouped_set(tmp_path / "sets" / "grouped")
  mixed = _mixed_set(tmp_path / "sets" / "mixed", groups=("X", "Y"))
  config = tiny_config(kind, num_epochs=1, steps_per_epoch=3)
  config.data.extra_test_sets = f"grp={grouped},mix={mixed}"
  config.data.extra_test_attributes = f"grp={table}"
  return config


def test_tiny_run_reports_every_extra_set(tmp_path, capsys):
  config = _tiny_run_config(tmp_path)
  datasets = data_lib.load_datasets(config.data)
  result = train.train_and_evaluate(config, tmp_path / "run", datasets)
  final = json.loads((tmp_path / "run" / "metrics.json").read_text())
  sets = final["eval"]["test_sets"]
  assert list(sets) == ["grp", "mix"]
  grp, mix = sets["grp"], sets["mix"]
  assert grp["non_faces_from"] == "test" and mix["non_faces_from"] == "own"
  assert set(grp["groups"]) == {"A", "B"} and grp["n_faces"] == 6
  assert mix["n_faces"] == 4 and mix["n_non_faces"] == 5
  # One threshold, chosen on the validation non-faces, for the test split and every set.
  val = datasets["val"]
  val_prob = evaluation.predict(result.variables, val.images).face_prob
  threshold = final["eval"]["test"]["operating_point"]["threshold"]
  assert threshold == pytest.approx(evaluation.threshold_at_fpr(val_prob[val.labels == 0],
                                                                0.01)[0], abs=1e-6)
  for m in (grp, mix, grp["by_attribute"]["fitzpatrick"]):
    assert m["operating_point"]["threshold"] == threshold
    assert m["operating_point"]["threshold_from"] == "val"
    assert m["E_A"] is not None and m["Var_A"] is not None
  assert set(grp["by_attribute"]["fitzpatrick"]["groups"]) == {"1", "2", "3", "4", "5", "6"}
  assert set(grp["operating_point"]["groups"]) == {"A", "B"}
  # Recomputed from the returned model: the same figures.
  variables = result.variables
  prob = evaluation.predict(variables, datasets["grp"].images).face_prob
  again = evaluation.group_metrics(prob, datasets["grp"].labels, datasets["grp"].groups)
  assert again["groups"]["A"]["detection_rate"] == grp["groups"]["A"]["detection_rate"]
  # every epoch's evaluation has them, and the log line has their E[A]
  assert all("test_sets" in e for e in final["epochs"])
  log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
         if line]
  assert any("grp_E_A" in r and "mix_Var_A" in r for r in log if r["kind"] == "eval")
  out = capsys.readouterr().out
  assert "-- test set grp: 6 faces" in out and "-- test set mix: 4 faces, 5 non-faces" in out
  assert re.search(r"\n  by fitzpatrick +n +@1%FP +AUC +p>0.5 ", out)
  assert re.search(r"\n  1 +\d+ +", out) and re.search(r"\n  X +2 +", out)
  assert "  by group " in out and "all faces detected" in out
  assert re.search(r"\n  @1%FP: E\[A\] .*\n  p > 0.5: E\[A\]", out)
  assert out.count("-- test set grp") == 1


def test_bad_extra_set_fails_before_anything_is_written(tmp_path):
  config = _tiny_run_config(tmp_path)
  train.train_and_evaluate(config, tmp_path / "run")
  before = {p: p.read_bytes() for p in (tmp_path / "run").glob("*.json")}
  config.data.extra_test_sets += f",gone={tmp_path / 'nowhere'}"
  with pytest.raises(DataError, match=r"config.data.extra_test_sets: test set 'gone'"):
    train.train_and_evaluate(config, tmp_path / "run")
  assert {p: p.read_bytes() for p in (tmp_path / "run").glob("*.json")} == before


@pytest.mark.skipif(not (PPB / "tight").is_dir() or not (PPB / "faces.csv").is_file(),
                    reason="PPB faces not in the shared data folder")
def test_ppb_tight_through_load_and_evaluate_with_random_variables():
  config = tiny_config("cnn")
  config.data.extra_test_sets = f"ppb_tight={PPB / 'tight'}"
  config.data.extra_test_attributes = f"ppb_tight={PPB / 'faces.csv'}"
  sets = data_lib.load_extra_test_sets(config.data)
  ppb = sets["ppb_tight"]
  assert ppb.num_faces > 0 and ppb.num_non_faces == 0
  assert set(ppb.groups.tolist()) == {"LF", "LM", "DF", "DM"}
  import jax
  from jaxface import models, sharding
  variables = models.init_variables(jax.random.key(0), latent_dim=0, n_filters=4, image_size=32)
  test = data_lib.make_planted_bias(n_per_group=4, n_non_faces=100, image_size=32, seed=0)
  ev = train.evaluate(variables, {"test": test, **sets}, sharding.make_mesh(), config)
  m = ev["test_sets"]["ppb_tight"]
  assert m["non_faces_from"] == "test" and m["n_faces"] == ppb.num_faces
  assert sum(g["n"] for g in m["groups"].values()) == ppb.num_faces
  fitz = m["by_attribute"]["fitzpatrick"]
  assert set(fitz["groups"]) == {str(k) for k in range(1, 7)}
  assert sum(g["n"] for g in fitz["groups"].values()) == ppb.num_faces
  op = fitz["operating_point"]
  assert op["fpr"] <= 0.01 and all(0 <= g["auc"] <= 1 for g in op["groups"].values())
  prob = evaluation.predict(variables, ppb.images).face_prob
  assert m["face_detection_rate"] == pytest.approx(np.mean(prob > 0.5))


# ------------------------------------------------------------------------------------ report


def test_report_has_a_section_per_set_with_runs_side_by_side(tmp_path):
  config = _tiny_run_config(tmp_path)
  config.name = "base"
  other = _tiny_run_config(tmp_path)
  other.name, other.seed = "base-seed1", 1
  result, index = report_of_two_runs(tmp_path, config, other)
  html = index.read_text()
  assert "Test set grp" in html and "Test set mix" in html
  assert "main test set&#x27;s non-faces (the set has none)" in html
  assert "fitzpatrick 3: ROC AUC" in html and "X: detected at 1% false positives %" in html
  found = json.loads((index.parent / "metrics.json").read_text())
  assert list(found["test_sets"]) == ["grp", "mix"]
  assert list(found["test_sets"]["grp"]) == ["base", "base-seed1"]
  # The report's figures are those of the run's own evaluation of the same model.
  run_figures = result.metrics["eval"]["test_sets"]
  for name in ("grp", "mix"):
    mine, theirs = found["test_sets"][name]["base"], run_figures[name]
    assert mine["groups"] == theirs["groups"]
    assert mine["operating_point"]["threshold"] == pytest.approx(
        theirs["operating_point"]["threshold"], abs=1e-6)
  figures = [f["file"] for f in found["figures"]]
  for slug in ("base", "base-seed1"):
    for name in ("grp", "mix"):
      assert f"{slug}_{name}_roc.png" in figures
      assert (index.parent / f"{slug}_{name}_roc.png").stat().st_size > 0


# ------------------------------------------------------------------------------------- study


def test_study_has_a_table_per_test_set(tmp_path):
  study = load_experiment("study", "_experiments_study_sets")
  grouped, table = _grouped_set(tmp_path / "sets" / "grouped")
  mixed = _mixed_set(tmp_path / "sets" / "mixed", groups=("X", "Y"))
  argv = ["--planted", "--workdir", str(tmp_path / "runs"), "--seeds", "2", "--combines",
          "--steps_per_epoch", "2", "--epochs", "1", "--xla_cache", "",
          "--test_set", f"grp={grouped}", "--test_set", f"mix={mixed}",
          "--test_attributes", f"grp={table}",
          "--set", "data.n_train_faces=48", "data.n_train_non_faces=48",
          "data.n_test_per_group=4", "data.n_test_non_faces=16", "data.image_size=32",
          "model.n_filters=4", "bn_recalibration_batches=1", "eval_batch_size=32",
          "batch_size=16"]
  result = study.main(argv)
  summary = result["test_sets"]["summary"]
  assert list(summary) == ["grp", "mix"] and list(summary["grp"]) == ["cnn"]
  grp = summary["grp"]["cnn"]
  assert grp["E_A"]["n"] == 2  # both seeds
  per_seed = [json.loads((tmp_path / "runs" / "cnn" / f"seed{s}" / "metrics.json").read_text())
              ["eval"]["test_sets"]["grp"] for s in (0, 1)]
  assert grp["E_A"]["mean"] == pytest.approx(np.mean([m["E_A"] for m in per_seed]))
  assert grp["fitzpatrick_auc_4"]["mean"] == pytest.approx(np.mean(
      [m["by_attribute"]["fitzpatrick"]["operating_point"]["groups"]["4"]["auc"]
       for m in per_seed]))
  md = (tmp_path / "runs" / "study.md").read_text()
  assert "Test set `grp`:" in md and "Test set `mix`:" in md
  assert "fitzpatrick 6 AUC" in md
  assert "X % @1%FP" in md
  with pytest.raises(SystemExit, match="--test_set wants NAME=PATH"):
    study.main(argv + ["--test_set", "broken"])
