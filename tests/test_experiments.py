"""Smoke tests of the quick modes of experiments/benchmark.py and experiments/study.py."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from helpers import REPO, load_experiment, shared_data_dir

from jaxface import config as config_lib

DATA = shared_data_dir() / "utkface-bias"


def _load(name: str):
  return load_experiment(name, f"_experiments_{name}")


def test_benchmark_quick_sections():
  benchmark = _load("benchmark")
  rows = benchmark.main(["--quick", "--sections", "train", "resampling", "batcher", "memory",
                         "--kinds", "cnn", "--batch_sizes", "32", "--rounds", "1",
                         "--resampling_sizes", "2000"])
  by_section = {}
  for row in rows:
    json.dumps(row)  # every row is one JSON line
    by_section.setdefault(row["section"], []).append(row)
  assert by_section["train"][0]["model"] == "cnn"
  assert by_section["train"][0]["images_per_s"] > 0
  assert "load" in by_section["train"][0]
  resampled = by_section["resampling"][0]
  assert resampled["n"] == 2000 and resampled["max_rel_diff_vs_numpy"] < 1e-4
  assert by_section["batcher"][0]["batch_images_per_s"] > 0
  assert by_section["memory"][0]["peak_rss_mib"] > 0


def _tiny_manifest(path: Path, per_group_train: int = 8, per_group_test: int = 4) -> Path:
  """A manifest of a few rows of each (split, label, group) of the real one, absolute paths."""
  with open(DATA / "manifest.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  quota = {"train": per_group_train, "test": per_group_test}
  counts: dict[tuple, int] = {}
  kept = []
  for row in rows:
    key = (row["split"], row["label"], row["group"])
    limit = quota.get(row["split"], 0) * (4 if row["label"] == "0" else 1)
    if counts.get(key, 0) < limit:
      counts[key] = counts.get(key, 0) + 1
      kept.append({**row, "path": str(DATA / row["path"])})
  return _write_manifest(path, kept)


def _write_manifest(path: Path, rows: list[dict[str, str]]) -> Path:
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  return path


needs_utkface = pytest.mark.skipif(not (DATA / "manifest.csv").is_file(),
                                   reason=f"{DATA} is not present (set JAXFACE_SHARED_DATA)")


@needs_utkface
def test_study_quick_is_resumable(tmp_path):
  study = _load("study")
  manifest = _tiny_manifest(tmp_path / "manifest.csv")
  # Without the PPB sets (test_default_test_sets_are_the_ppb_crops_where_present; the study's
  # extra-test-set tables: tests/test_extra_test_sets.py).
  argv = ["--quick", "--manifest", str(manifest), "--workdir", str(tmp_path / "runs"),
          "--steps_per_epoch", "3", "--xla_cache", "", "--group_balanced", "--group_powers",
          "1", "0.5", "--no_test_sets"]
  result = study.main(argv)
  assert set(result["summary"]) == {"cnn", "dbvae-product-a0.01", "cnn-groups",
                                    "cnn-groups-p0.5"}
  config = json.loads((tmp_path / "runs" / "quick" / "cnn-groups-p0.5" / "seed0" /
                       "config.json").read_text())
  assert config["resampling"]["group_power"] == 0.5
  cnn = result["summary"]["cnn"]
  assert {"rate_LF", "rate_DM", "E_A", "Var_A", "Var_A_noise", "worst_rate",
          "non_face_accuracy"} <= set(cnn)
  assert "mass_dark" in result["summary"]["dbvae-product-a0.01"]
  # Group-balanced sampling: each of the 4 groups (8 training faces each) gets a quarter.
  assert result["summary"]["cnn-groups"]["mass_dark"]["mean"] == pytest.approx(50.0)
  assert [c["config"] for c in result["checks"]] == ["dbvae-product-a0.01", "cnn-groups",
                                                     "cnn-groups-p0.5"]
  table = (tmp_path / "runs" / "quick" / "study.md").read_text()
  assert "| cnn | 1 |" in table
  metrics = tmp_path / "runs" / "quick" / "cnn" / "seed0" / "metrics.json"
  stamp = metrics.stat().st_mtime_ns
  again = study.main(argv)  # finished runs are skipped
  assert metrics.stat().st_mtime_ns == stamp
  assert again["summary"]["cnn"]["E_A"] == cnn["E_A"]


def _more_darker_faces(tiny: Path, path: Path, extra: int = 8) -> Path:
  """``tiny`` plus ``extra`` further DF and DM training faces of the real manifest."""
  with open(tiny, newline="") as f:
    rows = list(csv.DictReader(f))
  kept = {row["path"] for row in rows}
  added = {"DF": 0, "DM": 0}
  with open(DATA / "manifest.csv", newline="") as f:
    for row in csv.DictReader(f):
      full = str(DATA / row["path"])
      group = row["group"]
      if (row["split"] == "train" and group in added and added[group] < extra
          and full not in kept):
        rows.append({**row, "path": full})
        added[group] += 1
  return _write_manifest(path, rows)


@needs_utkface
def test_study_train_sets_axis_tables_figure_and_resume(tmp_path):
  study = _load("study")
  few = _tiny_manifest(tmp_path / "few.csv")
  more = _more_darker_faces(few, tmp_path / "more.csv")
  argv = ["--quick", "--train_sets", f"more={more}", f"few={few}",
          "--workdir", str(tmp_path / "runs"), "--steps_per_epoch", "2", "--xla_cache", "",
          "--no_test_sets"]
  result = study.main(argv)
  root = tmp_path / "runs" / "quick"
  # Ordered by the darker share: 16 of 32 training faces, then 32 of 48.
  assert list(result["train_sets"]) == ["few", "more"]
  assert result["train_sets"]["few"]["share_dark"] == pytest.approx(50.0)
  assert result["train_sets"]["more"]["n_dark"] == 32
  for name in ("few", "more"):  # every row on every set, each set its own study
    assert (root / name / "cnn" / "seed0" / "metrics.json").is_file()
    assert "| cnn | 1 |" in (root / name / "study.md").read_text()
  table = (root / "skew.md").read_text()
  assert "Test set `utkface_test`:" in table
  assert f"    python experiments/study.py --quick --train_sets more={more} few={few}" in table
  assert "| cnn | few | 50.0 | 16 | 1 |" in table
  assert "| dbvae-product-a0.01 | more | 66.7 | 32 | 1 |" in table
  assert set(result["gains_over_cnn"]["utkface_test"]) == {"dbvae-product-a0.01"}
  assert (root / "skew.png").stat().st_size > 0
  curve = result["curves"]["utkface_test"]["worst"]["cnn"]
  assert [point[0] for point in curve] == pytest.approx([50.0, 200 / 3])
  metrics = root / "few" / "cnn" / "seed0" / "metrics.json"
  stamp = metrics.stat().st_mtime_ns
  again = study.main(argv)  # finished runs are skipped
  assert metrics.stat().st_mtime_ns == stamp
  assert again["curves"] == json.loads(json.dumps(result["curves"]))


def test_study_train_sets_bad_input(tmp_path):
  study = _load("study")
  with pytest.raises(SystemExit, match="--train_sets replaces"):
    study.main(["--planted", "--train_sets", f"a={tmp_path / 'a.csv'}"])
  with pytest.raises(SystemExit, match="--train_sets a: no manifest"):
    study.main(["--train_sets", f"a={tmp_path / 'a.csv'}", "--workdir", str(tmp_path)])
  with pytest.raises(SystemExit, match="NAME=PATH"):
    study.main(["--train_sets", "a", "--workdir", str(tmp_path)])


def test_skew_exchange_rate_interpolates_the_cnn_curve():
  skew = _load("study_skew")
  curve = [(100, 80.0), (200, 90.0), (500, 96.0)]
  assert skew.exchange_rate(curve, 79.0) == ("<= 1x", None)
  assert skew.exchange_rate(curve, 85.0) == ("1.5x", pytest.approx(1.5))
  assert skew.exchange_rate(curve, 93.0) == ("3.5x", pytest.approx(3.5))
  assert skew.exchange_rate(curve, 97.0) == ("> 5.0x", None)


def test_default_test_sets_are_the_ppb_crops_where_present(tmp_path):
  study = _load("study")
  assert study.default_test_sets(tmp_path / "nowhere") == ({}, {})
  ppb = tmp_path / "ppb-faces"
  (ppb / "tight").mkdir(parents=True)
  assert study.default_test_sets(ppb) == ({"ppb_tight": str(ppb / "tight")}, {})
  (ppb / "loose").mkdir()
  (ppb / "faces.csv").write_text("file\n")
  sets, tables = study.default_test_sets(ppb)
  assert sets == {"ppb_tight": str(ppb / "tight"), "ppb_loose": str(ppb / "loose")}
  assert tables == {name: str(ppb / "faces.csv") for name in sets}


def test_missing_ppb_crops_are_named_not_skipped_silently(tmp_path, capsys):
  study = _load("study")
  args = study.parse_args(["--data_root", str(tmp_path)])
  assert study.resolve_test_sets(args, tmp_path) == ({}, {})
  notice = capsys.readouterr().err.strip().splitlines()
  assert len(notice) == 1 and str(tmp_path / study.PPB) in notice[0]
  assert "--data_root" in notice[0] and "--no_test_sets" in notice[0]
  quiet = study.parse_args(["--data_root", str(tmp_path), "--no_test_sets"])
  assert study.resolve_test_sets(quiet, tmp_path) == ({}, {})
  (tmp_path / study.PPB / "tight").mkdir(parents=True)
  found = study.resolve_test_sets(study.parse_args([]), tmp_path)
  assert found == ({"ppb_tight": str(tmp_path / study.PPB / "tight")}, {})
  assert capsys.readouterr().err == ""


def test_study_rows_ablation_and_planted_data(tmp_path):
  study = _load("study")
  argv = ["--planted", "--workdir", str(tmp_path / "runs"), "--seeds", "1", "--combines",
          "--steps_per_epoch", "3", "--epochs", "1", "--xla_cache", "", "--ablation",
          "--no_test_sets",
          "--set", "data.n_train_faces=64", "data.n_train_non_faces=64",
          "data.n_test_per_group=8", "data.n_test_non_faces=16", "data.image_size=32",
          "model.n_filters=4", "bn_recalibration_batches=1",
          "eval_batch_size=32", "batch_size=16",
          "--row", "dbvae-pca", "dbvae", "model.latent_dim=8", "resampling.signal=latent_pca",
          "resampling.components=2", "resampling.active_variance=0",
          "resampling.target_ess=0.5"]
  result = study.main(argv)
  assert list(result["summary"]) == ["cnn", "vae-no-resampling", "dbvae-pca"]
  runs = tmp_path / "runs"
  ablation = json.loads((runs / "vae-no-resampling" / "seed0" / "config.json").read_text())
  assert ablation["resampling"]["signal"] == "none" and ablation["model"]["kind"] == "ssvae"
  pca = json.loads((runs / "dbvae-pca" / "seed0" / "config.json").read_text())
  assert pca["resampling"]["signal"] == "latent_pca" and pca["model"]["latent_dim"] == 8
  assert pca["data"]["source"] == "planted" and pca["data"]["val_fraction"] == 0.2
  # A named row keeps the base config's histogram settings unless it sets them.
  base = config_lib.get_base_config().resampling
  assert (pca["resampling"]["alpha"], pca["resampling"]["combine"]) == (base.alpha, base.combine)
  row = result["summary"]["dbvae-pca"]
  assert row["ess_pct"]["mean"] == pytest.approx(50.0, rel=1e-2)
  assert {"val_E_A", "val_worst_rate", "mass_dark"} <= set(row)
  assert "| dbvae-pca | 1 |" in (runs / "study.md").read_text()


def test_study_row_starts_from_a_config_file():
  study = _load("study")
  shipped = config_lib.load_config_file(str(REPO / "configs" / "dbvae.py"))
  spec = study.parse_row(["mine", str(REPO / "configs" / "dbvae.py"), "resampling.bins=20"])
  assert (spec.kind, spec.config_file) == ("dbvae", str(REPO / "configs" / "dbvae.py"))
  config = study.run_config(spec, 3, None, epochs=1, batch_size=16, learning_rate=1e-3,
                            steps_per_epoch=5, val_fraction=0.2)
  # the file's model, resampling and recipe, one field changed, the study's budget and seed
  assert config.model.input_norm and config.lr_schedule == shipped.lr_schedule
  assert config.resampling.signal == shipped.resampling.signal == "error_axis"
  assert config.resampling.target_ess == shipped.resampling.target_ess
  assert config.resampling.bins == 20 and shipped.resampling.bins == 10
  assert (config.num_epochs, config.steps_per_epoch, config.seed) == (1, 5, 3)
  assert config.name == "mine-s3"
  config_lib.validate_config(config, 1)
  # a kind row still starts from the base config
  base = study.run_config(study.parse_row(["b", "dbvae"]), 0, None, epochs=1, batch_size=16,
                          learning_rate=1e-3, steps_per_epoch=5, val_fraction=0.2)
  assert base.resampling.signal == "latent" and not base.model.input_norm
  assert study.parse_row(["c", str(REPO / "configs" / "cnn.py")]).kind == "cnn"
  with pytest.raises(SystemExit, match="--row x: config file not found"):
    study.parse_row(["x", "configs/nope.py"])


def test_operating_point_script_rescores_runs_at_a_false_positive_rate(tmp_path, capsys):
  import numpy as np
  from helpers import tiny_config

  from jaxface import data as data_lib
  from jaxface import evaluation, inference, train
  from jaxface.checkpoints import load_run

  script = _load("operating_point")
  runs = []
  for seed in (0, 1):
    run = tmp_path / "cnn" / f"seed{seed}"
    train.train_and_evaluate(tiny_config("cnn", num_epochs=1, steps_per_epoch=2, seed=seed), run)
    runs.append(run)
  before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
  records = script.main([str(r) for r in runs] + ["--fpr", "0.1", "--threshold_from", "test",
                                                  "--json", str(tmp_path / "op.jsonl")])
  assert {p: p.stat().st_mtime_ns for p in before} == before  # the runs are only read
  # The figures are operating_point's on the run's own test split, recomputed here.
  config, variables = load_run(runs[1])
  datasets = data_lib.load_datasets(config.data)
  test = datasets["test"]
  prob = inference.infer(variables, test.images, ("face_prob",))["face_prob"]
  prob = np.asarray(prob).reshape(-1)
  face = test.labels == 1
  op = evaluation.operating_point(prob[face], test.groups[face], prob[~face], 0.1,
                                  group_order=("LF", "LM", "DF", "DM"))
  assert records[1]["E_A"] == pytest.approx(op["E_A"])
  assert records[1]["worst_rate"] == pytest.approx(op["worst_rate"])
  assert records[1]["fpr"] <= 0.1 and records[1]["threshold_from"] == "test"
  # By default the threshold comes from the validation non-faces, as in the run's evaluation.
  val = datasets["val"]
  val_prob = np.asarray(inference.infer(variables, val.images, ("face_prob",))["face_prob"])
  threshold = evaluation.threshold_at_fpr(val_prob.reshape(-1)[val.labels == 0], 0.1)[0]
  at_val = script.main([str(runs[1]), "--fpr", "0.1"])[0]
  assert at_val["threshold_from"] == "val" and at_val["threshold"] == threshold
  df_prob = prob[test.groups == "DF"]
  assert at_val["rates"]["DF"] == pytest.approx(100 * np.mean(df_prob > threshold))
  assert at_val["fpr"] == np.mean(prob[~face] > threshold)
  assert at_val["val"]["worst_rate"] is not None and at_val["val"]["fpr"] <= 0.1
  run_op = json.loads((runs[1] / "metrics.json").read_text())["eval"]["test"]["operating_point"]
  at_default = script.main([str(runs[1])])[0]  # at 1%: the run's own operating point
  assert at_default["threshold"] == pytest.approx(run_op["threshold"], abs=1e-6)
  assert at_default["worst_rate"] == pytest.approx(run_op["worst_rate"])
  # At 0.5 they are the run's own summary figures.
  summary = json.loads((runs[1] / "metrics.json").read_text())["eval"]["test"]
  assert records[1]["worst_rate_at_0.5"] == pytest.approx(summary["worst_rate"])
  assert records[1]["non_face_accuracy_at_0.5"] == pytest.approx(
      100 * summary["non_face_accuracy"])
  lines = (tmp_path / "op.jsonl").read_text().splitlines()
  assert [json.loads(line)["run"] for line in lines] == [str(r) for r in runs]
  out = capsys.readouterr().out
  assert "| cnn | 2 | test |" in out and "worst @10%FP" in out and "val worst @10%FP" in out
  with pytest.raises(SystemExit, match="not a finished run"):
    script.main([str(tmp_path / "nowhere")])


def test_offset_check_scores_the_training_faces_shifted_and_reads_only(tmp_path, capsys):
  import numpy as np
  from helpers import tiny_config

  from jaxface import inference, train

  script = _load("offset_check")
  images = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
  shifted = script.shift_images(images, 0.25)  # one pixel down and right, mirrored at the edge
  np.testing.assert_array_equal(shifted[:, 1:, 1:], images[:, :-1, :-1])
  np.testing.assert_array_equal(shifted[:, 0, 1:], images[:, 0, :-1])
  np.testing.assert_array_equal(script.shift_images(images, -0.25)[:, :-1, :-1], images[:, 1:, 1:])
  np.testing.assert_array_equal(script.shift_images(images, 0.0), images)
  with pytest.raises(ValueError, match="whole image side"):
    script.shift_images(images, 1.0)

  run = tmp_path / "cnn" / "seed0"
  train.train_and_evaluate(tiny_config("cnn", num_epochs=1, steps_per_epoch=2), run)
  before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
  records = script.main([str(run), "--offsets", "0", "0.25", "--n_faces", "16",
                         "--threshold", "0.9", "--json", str(tmp_path / "off.jsonl")])
  assert {p: p.stat().st_mtime_ns for p in before} == before
  (record,) = records
  assert record["n_faces"] == 16 and [r["offset"] for r in record["offsets"]] == [0.0, 0.25]
  # Offset 0 is the model's own logits on those faces.
  from jaxface.checkpoints import load_run
  config, variables = load_run(run)
  faces = script.training_faces(config, 16, 0)
  logits = np.asarray(inference.infer(variables, faces, ("y_logit",))["y_logit"]).reshape(-1)
  assert record["offsets"][0]["median_logit"] == pytest.approx(float(np.median(logits)), abs=1e-5)
  assert record["offsets"][0]["at_0.9"] == pytest.approx(np.mean(logits >= np.log(9.0)))
  assert json.loads((tmp_path / "off.jsonl").read_text())["run"] == str(run)
  assert "| 0.2500 |" in capsys.readouterr().out
  with pytest.raises(SystemExit, match="not a finished run"):
    script.main([str(tmp_path / "nowhere")])


def test_skew_type6_gap_is_types_1_to_3_minus_type_6_where_present():
  skew = _load("study_skew")
  rates = {f"fitzpatrick_op_rate_{t}": r for t, r in ((1, 100.0), (2, 98.0), (3, 99.0),
                                                      (6, 80.0))}
  assert skew._with_type6_gap(dict(rates))["type6_gap"] == pytest.approx(19.0)
  del rates["fitzpatrick_op_rate_2"]
  assert "type6_gap" not in skew._with_type6_gap(dict(rates))
