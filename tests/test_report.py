"""Tests of jaxface.report: the findings (without matplotlib), every figure written and referenced,
metrics.json complete, run directories read but never written, and the command-line script."""

import html
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import ml_collections
import numpy as np
import pytest
from PIL import Image

from jaxface import evaluation, models, report, resampling
from jaxface.report import figures

from helpers import tiny_config
# The architecture and variables of test_evaluation.py, so the compiled functions are shared.
from test_evaluation import IMAGE_SIZE, LATENT_DIM, make_variables
from test_report_findings import RESAMPLING, _log

GROUPS = ("LF", "LM", "DF", "DM")
VAE_FIGURES = ("groups", "reconstruction", "latent_traversal", "accuracy_vs_latent",
               "latent_bias", "latent_bias_traversal", "faces_bias", "faces_epistemic", "faces_aleatoric", "scores_by_group", "deciles",
               "percentile_faces")
CNN_FIGURES = ("groups", "faces_aleatoric", "scores_by_group")
TRAINING_FIGURES = ("training", "sampling_mass")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def variables():
  return {"vae": make_variables(LATENT_DIM, seed=0), "cnn": make_variables(0, seed=1)}


def _spread_latent(variables: dict, scale: float = 30.0) -> dict:
  """The VAE's variables with its latent means scaled up, so that random weights give latent
  dimensions that vary over the faces (active ones) as a trained encoder does."""
  params = jax.tree.map(np.array, variables["params"])
  params["encoder"]["Dense_1"]["kernel"][:, 1:LATENT_DIM + 1] *= scale
  return {**variables, "params": params}


def _test_set(per_group=10, non_faces=12, seed=0):
  """Smooth random images (so the PNGs compress like pictures) with labels and groups."""
  rng = np.random.default_rng(seed)
  n = per_group * len(GROUPS) + non_faces
  coarse = rng.uniform(0, 255, (n, 4, 4, 3))
  images = np.repeat(np.repeat(coarse, IMAGE_SIZE // 4, axis=1), IMAGE_SIZE // 4, axis=2)
  images = np.clip(images + rng.normal(0, 12, images.shape), 0, 255).astype(np.uint8)
  labels = np.r_[np.ones(n - non_faces, np.int32), np.zeros(non_faces, np.int32)]
  groups = np.r_[np.repeat(GROUPS, per_group), np.full(non_faces, "")]
  return images, labels, groups


def _check_report(index: Path, expected_pngs: set[str]) -> dict:
  """Common checks; returns the parsed metrics.json."""
  out = index.parent
  pngs = {p.name for p in out.glob("*.png")}
  assert pngs == expected_pngs
  page = index.read_text(encoding="utf-8")
  referenced = re.findall(r'<img src="([^"]+)"', page)
  assert sorted(referenced) == sorted(pngs)  # every figure shown exactly once
  assert page.count("<figcaption>") == len(pngs)
  for name in pngs:
    path = out / name
    assert path.stat().st_size > 8_000, name
    with Image.open(path) as im:
      w, h = im.size
      assert 300 <= w <= 2000 and 150 <= h <= 2000, (name, im.size)
  metrics = json.loads((out / "metrics.json").read_text())
  assert sorted(f["file"] for f in metrics["figures"]) == sorted(pngs)
  assert all(f["caption"] for f in metrics["figures"])
  json.dumps(metrics, allow_nan=False)
  return metrics


def test_build_report_two_runs(tmp_path, variables):
  images, labels, groups = _test_set()
  ref, _, _ = _test_set(per_group=8, non_faces=0, seed=1)
  runs = [
      report.RunArtifacts("DB-VAE", "dbvae", _spread_latent(variables["vae"]), images, labels,
                          groups, reference_images=ref, train_metrics={"steps": 3}, log=_log(),
                          resampling=RESAMPLING, config={"seed": 7, "model": {"kind": "dbvae"}}),
      report.RunArtifacts("standard CNN", "cnn", variables["cnn"], images, labels, groups,
                          log=_log(acc_shift=-0.1)),
  ]
  index = report.build_report(tmp_path / "report", runs, n_grid=8)
  expected = ({f"db-vae_{f}.png" for f in VAE_FIGURES + TRAINING_FIGURES}
              | {f"standard-cnn_{f}.png" for f in CNN_FIGURES + ("training",)}
              | {"comparison.png", "comparison_training.png"})
  metrics = _check_report(index, expected)

  page = index.read_text(encoding="utf-8")
  # The story in order: comparison, training, per-group rates, then the latent diagnostics.
  order = (["comparison.png", "comparison_training.png", "db-vae_training.png",
            "db-vae_sampling_mass.png"] + [f"db-vae_{f}.png" for f in VAE_FIGURES]
           + ["standard-cnn_training.png", "standard-cnn_groups"])
  positions = [page.index(name) for name in order]
  assert positions == sorted(positions)
  # Summary, side-by-side comparison, sampling-mass and latent-bias tables.
  assert page.count("<table>") == 4
  for name in ("DB-VAE", "standard CNN", *GROUPS):
    assert name in page

  assert [r["name"] for r in metrics["runs"]] == ["DB-VAE", "standard CNN"]
  vae, cnn = metrics["runs"]
  assert vae["density_reference"] == "train" and cnn["density_reference"] == "test"
  assert vae["train_metrics"] == {"steps": 3}
  assert set(vae["test"]["groups"]) == set(GROUPS)
  assert set(vae["scores_by_group"]) == {"bias", "epistemic", "aleatoric"}
  assert set(cnn["scores_by_group"]) == {"aleatoric"}
  assert len(vae["deciles"]["bias"]["rate"]) == 10
  assert len(vae["accuracy_vs_latent"]["mean_curve"]) == 10
  assert len(vae["traversal_dims"]) == 5
  assert vae["seed"] == 7 and "seed" not in cnn
  assert vae["sampling_mass"]["groups"] == list(GROUPS) and "sampling_mass" not in cnn
  # Where the bias lives in the latent: the test faces (the training faces have no groups
  # here), and for the CNN a line saying why not.
  bias = vae["latent_bias"]
  assert bias["faces"] == "test faces" and (bias["n_darker"], bias["n_lighter"]) == (20, 20)
  assert len(bias["dim_auc"]) == LATENT_DIM and 0.5 <= min(bias["dim_auc"])
  assert 0 <= bias["best_axis"] < len(bias["axis_auc"]) <= 10
  assert html.escape(bias["text"]) in page and "Where the bias lives in the latent" in page
  assert cnn["latent_bias"] == {"skipped": "the standard CNN has no latent space"}
  assert "Not shown: the standard CNN has no latent space." in page
  assert vae["training"]["val_accuracy"] == pytest.approx([0.7, 0.8])
  # The report's per-group rates are group_metrics on the model's predictions.
  prob = evaluation.predict(variables["cnn"], images).face_prob
  expected_metrics = evaluation.group_metrics(prob, labels, groups, group_order=GROUPS)
  assert cnn["test"]["E_A"] == pytest.approx(expected_metrics["E_A"])
  # Without validation non-faces the operating point comes from the test non-faces, and the
  # summary table, comparison table and captions show it beside p = 0.5.
  op = cnn["test"]["operating_point"]
  assert op["threshold_from"] == "test"
  assert op["threshold"] == pytest.approx(evaluation.threshold_at_fpr(prob[labels == 0])[0])
  assert op["groups"]["DF"]["detection_rate"] == pytest.approx(
      np.mean(prob[groups == "DF"] > op["threshold"]))
  assert "<th>worst group @1%FP</th>" in page and "<th>E_A %² @0.5</th>" not in page
  assert "<th>E_A % @0.5</th>" in page and "DF detected @1%FP %" in page
  assert "At the operating point @1%FP (threshold" in page


def test_build_report_single_cnn_with_missing_group(tmp_path, variables):
  images, labels, groups = _test_set(per_group=6, non_faces=0)
  keep = groups != "DM"  # no DM faces and no non-faces at all
  run = report.RunArtifacts("my cnn", "cnn", variables["cnn"], images[keep], labels[keep],
                            groups[keep])
  index = report.build_report(tmp_path, [run])
  metrics = _check_report(index, {f"my-cnn_{f}.png" for f in CNN_FIGURES})
  test = metrics["runs"][0]["test"]
  assert test["group_order"] == ["LF", "LM", "DF"]
  assert test["non_face_accuracy"] is None


def test_the_operating_point_is_chosen_on_the_validation_non_faces(tmp_path, variables):
  images, labels, groups = _test_set(per_group=6, non_faces=8)
  val_images, _, _ = _test_set(per_group=0, non_faces=40, seed=3)
  run = report.RunArtifacts("my cnn", "cnn", variables["cnn"], images, labels, groups,
                            val_non_faces=val_images, operating_fpr=0.05)
  index = report.build_report(tmp_path, [run])
  metrics = _check_report(index, {f"my-cnn_{f}.png" for f in CNN_FIGURES})
  op = metrics["runs"][0]["test"]["operating_point"]
  val_prob = evaluation.predict(variables["cnn"], val_images).face_prob
  threshold, achieved = evaluation.threshold_at_fpr(val_prob, 0.05)  # 2 of the 40 may pass
  assert op["threshold_from"] == "val" and op["fpr_target"] == 0.05
  assert op["threshold"] == pytest.approx(threshold, abs=1e-6)
  assert op["threshold_fpr"] == achieved
  prob = evaluation.predict(variables["cnn"], images).face_prob
  assert op["fpr"] == np.mean(prob[labels == 0] > op["threshold"])
  for g in GROUPS:
    assert op["groups"][g]["detection_rate"] == np.mean(prob[groups == g] > op["threshold"])
  page = index.read_text(encoding="utf-8")
  assert f"At the operating point @5%FP (threshold {op['threshold']:.4f} on the validation " in page
  assert f"<td>{op['worst_group']}</td><td>{op['worst_rate']:.2f}</td>" in page


def test_plot_group_bars_shows_groups_without_faces(tmp_path):
  m = evaluation.group_metrics(np.array([0.9, 0.2, 0.7]), np.array([1, 1, 0]),
                               np.array(["LF", "DF", ""]), group_order=GROUPS)
  path = report.plot_group_bars(m, tmp_path / "bars.png", "test")
  assert path.stat().st_size > 8_000
  m["operating_point"] = evaluation.operating_point(np.array([0.9, 0.2]), np.array(["LF", "DF"]),
                                                    np.array([0.7]), 0.0, GROUPS)
  path = report.plot_group_bars(m, tmp_path / "bars_op.png", "test")  # with a bar beside
  assert path.stat().st_size > 8_000
  path = report.plot_group_comparison(["a", "b", "c"], [m, m, m], tmp_path / "cmp.png")
  assert path.stat().st_size > 8_000


def _fake_config(name: str, kind: str, recon: str = "l1") -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      "name": name, "seed": 3, "model": {"kind": kind}, "resampling": {"bins": 10},
      "loss": {"recon": recon}, "eval_batch_size": 64, "dtype": "float32",
      "data": {"source": "fake", "seed": 0}})


def test_write_report_loads_run_directories(tmp_path, variables, monkeypatch):
  import jaxface.data
  import jaxface.checkpoints
  images, labels, groups = _test_set()
  test = jaxface.data.FaceData(images, labels, groups)
  train_images, _, _ = _test_set(per_group=20, non_faces=0, seed=2)
  train = jaxface.data.FaceData(train_images, np.ones(80, np.int32), np.repeat(GROUPS, 20))
  runs = {"vae_dir": (_fake_config("dbvae", "dbvae", recon="l2"), variables["vae"]),
          "cnn_dir": (_fake_config("cnn", "cnn"), variables["cnn"])}
  loads = []

  def load_run(workdir):
    return runs[Path(workdir).name]

  def load_datasets(data_config):
    loads.append(data_config.to_json())
    return {"train": train, "val": test, "test": test}

  monkeypatch.setattr(jaxface.checkpoints, "load_run", load_run)
  monkeypatch.setattr(jaxface.data, "load_datasets", load_datasets)
  (tmp_path / "vae_dir").mkdir()
  (tmp_path / "vae_dir" / "metrics.json").write_text(json.dumps(
      {"steps": 7, "epochs": [{"big": 1}], "resampling": RESAMPLING}))
  # The CNN run's log has no resampling lines; the DB-VAE's metrics.jsonl is its only curve.
  (tmp_path / "vae_dir" / "metrics.jsonl").write_text(
      "".join(json.dumps(r) + "\n" for r in _log()))
  index = report.write_report(tmp_path / "vae_dir", compare=[tmp_path / "cnn_dir"])
  assert index == tmp_path / "vae_dir" / "report" / "index.html"
  assert len(loads) == 1  # the same data config is loaded once
  metrics = json.loads(index.with_name("metrics.json").read_text())
  assert [r["name"] for r in metrics["runs"]] == ["DB-VAE", "standard CNN"]
  assert metrics["runs"][0]["train_metrics"] == {"steps": 7}
  assert metrics["runs"][0]["density_reference"] == "train"
  assert (index.parent / "comparison.png").exists()
  vae, cnn = metrics["runs"]
  assert (vae["recon"], cnn["recon"]) == ("l2", "l1")  # each run's config.loss.recon
  assert vae["reconstruction"]["kind"] == "l2"
  assert vae["seed"] == 3 and vae["sampling_mass"]["mass"][1] == [0.45, 0.40, 0.08, 0.07]
  assert vae["test"]["operating_point"]["threshold_from"] == "val"  # the loaded 'val' split
  assert (index.parent / "db-vae_training.png").exists()
  assert not (index.parent / "standard-cnn_training.png").exists()  # no metrics.jsonl


def test_write_report_uses_the_given_datasets(tmp_path, variables, monkeypatch):
  import jaxface.data
  import jaxface.checkpoints
  images, labels, groups = _test_set(per_group=4, non_faces=4)
  test = jaxface.data.FaceData(images, labels, groups)
  monkeypatch.setattr(jaxface.checkpoints, "load_run",
                      lambda workdir: (_fake_config("cnn", "cnn"), variables["cnn"]))

  def load_datasets(data_config):
    raise AssertionError("the data was loaded a second time")

  monkeypatch.setattr(jaxface.data, "load_datasets", load_datasets)
  (tmp_path / "run").mkdir()
  index = report.write_report(tmp_path / "run", compare=[tmp_path / "run"],
                              datasets={"train": test, "test": test})
  metrics = json.loads(index.with_name("metrics.json").read_text())
  assert metrics["runs"][0]["test"]["n_faces"] == 16
  assert [r["name"] for r in metrics["runs"]] == ["standard CNN", "standard CNN (run)"]
  with pytest.raises(ValueError, match="'test'"):
    report.write_report(tmp_path / "run", datasets={"train": test})


def test_experiments_script_reports_a_missing_run(tmp_path):
  proc = subprocess.run(
      [sys.executable, str(REPO / "experiments" / "report.py"),
       f"--workdir={tmp_path / 'no_such_run'}", f"--out={tmp_path / 'out'}"],
      capture_output=True, text=True, timeout=300, cwd=REPO)
  assert proc.returncode != 0
  assert "config.json" in proc.stderr
  assert not (tmp_path / "out").exists() and not (tmp_path / "no_such_run").exists()
  assert "Traceback" not in proc.stderr  # a one-line error, not a stack trace


def test_score_axes_have_no_offset(tmp_path, monkeypatch):
  drawn = []
  save = figures._save
  monkeypatch.setattr(figures, "_save", lambda fig, path: drawn.append(fig) or save(fig, path))
  groups = np.repeat(np.array(GROUPS), 5)
  entropy = 0.69312 + np.linspace(0, 3e-5, len(groups))  # a near-chance classifier's scores
  bias = -20 + np.linspace(0, 1e-4, len(groups))
  path = report.plot_score_by_group({"bias": bias, "aleatoric": entropy}, groups, GROUPS,
                                    tmp_path / "s.png")
  assert path.stat().st_size > 8_000
  (fig,) = drawn
  for ax in fig.axes:  # no '1e-5+6.931e-1' above the axis
    assert ax.yaxis.get_offset_text().get_text() == ""


def test_latent_traversal_ticks_are_distinct(tmp_path, monkeypatch):
  drawn = []
  save = figures._save
  monkeypatch.setattr(figures, "_save", lambda fig, path: drawn.append(fig) or save(fig, path))
  rng = np.random.default_rng(0)
  values = np.stack([np.linspace(-0.034, -0.026, 7), np.linspace(-0.01, 0.01, 7)])
  traversal = evaluation.Traversal(np.array([0, 1]), values.astype(np.float32),
                                   rng.uniform(0, 1, (2, 7, 16, 16, 3)).astype(np.float32))
  z_mean = rng.uniform(-0.035, 0.01, (50, 2))
  report.plot_latent_traversal(z_mean, traversal, tmp_path / "t.png")
  (fig,) = drawn
  strips = [ax for ax in fig.axes if ax.get_xticklabels()]
  assert len(strips) == 2
  for ax in strips:
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert len(set(labels)) == 7, labels
    assert not any(label.startswith("-0.00") and float(label) == 0 for label in labels)


def _tiny_report_config(name: str = "dbvae") -> ml_collections.ConfigDict:
  """A DB-VAE run of a few steps on 32x32 planted faces that writes its report."""
  return tiny_config("dbvae", name=name, num_epochs=1, steps_per_epoch=4, write_report=True,
                     **{"model.latent_dim": 8, "data.n_train_faces": 64,
                        "data.n_train_non_faces": 64, "data.n_test_per_group": 6,
                        "data.n_test_non_faces": 16})


def _check_report_dir(report_dir: Path) -> list[str]:
  """index.html exists and every figure it references exists and is non-empty."""
  index = report_dir / "index.html"
  assert index.exists()
  referenced = re.findall(r'<img src="([^"]+)"', index.read_text(encoding="utf-8"))
  assert "db-vae_groups.png" in referenced and "db-vae_latent_traversal.png" in referenced
  for name in referenced:
    path = report_dir / name
    assert path.is_file() and path.stat().st_size > 0, name
  assert len(referenced) == len(set(referenced)) == len(VAE_FIGURES + TRAINING_FIGURES)
  metrics = json.loads((report_dir / "metrics.json").read_text())
  assert sorted(f["file"] for f in metrics["figures"]) == sorted(referenced)
  return referenced


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
  """The run directory of a real tiny training and its report (as experiments/run.py writes)."""
  from jaxface import data, train
  workdir = tmp_path_factory.mktemp("trained") / "dbvae"
  config = _tiny_report_config()
  datasets = data.load_datasets(config.data)
  train.train_and_evaluate(config, workdir, datasets)
  report.write_report(workdir, datasets=datasets)
  return workdir


def test_training_writes_report(trained_run):
  assert (trained_run / "metrics.json").exists()
  _check_report_dir(trained_run / "report")
  # The tiny run's training faces hold too few darker faces: the latent-bias section is shown
  # on the test faces and says why.
  bias = json.loads((trained_run / "report" / "metrics.json").read_text())["runs"][0][
      "latent_bias"]
  assert bias["faces"] == "test faces" and bias["n_darker"] == bias["n_lighter"] == 12
  (passed_over,) = bias["passed_over"]
  assert passed_over.startswith("training faces: it needs at least 4 faces of each skin tone")
  page = (trained_run / "report" / "index.html").read_text(encoding="utf-8")
  assert html.escape(f"Not on the {passed_over}.") in page


def test_experiments_script_writes_report(trained_run, tmp_path):
  # A copy of the run without its report, so the script's output is what is checked.
  workdir = tmp_path / "run"
  shutil.copytree(trained_run, workdir, ignore=shutil.ignore_patterns("report"))
  assert not (workdir / "report").exists()
  before = _snapshot(workdir)
  env = dict(os.environ)
  cache = jax.config.jax_compilation_cache_dir  # reuse this session's compiled executables
  if cache:
    env.update(JAX_COMPILATION_CACHE_DIR=str(cache),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  proc = subprocess.run(
      [sys.executable, str(REPO / "experiments" / "report.py"), f"--workdir={workdir}"],
      capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"report: {workdir / 'report' / 'index.html'}" in proc.stdout
  _check_report_dir(workdir / "report")
  # Reading the run wrote nothing outside WORKDIR/report/.
  after = {k: v for k, v in _snapshot(workdir).items() if k.split(os.sep)[0] != "report"}
  assert after == before


def test_write_report_reads_the_run_directory_only(trained_run, tmp_path):
  before = _snapshot(trained_run)
  index = report.write_report(trained_run, out_dir=tmp_path / "out")
  assert index == tmp_path / "out" / "index.html"
  _check_report_dir(tmp_path / "out")
  assert _snapshot(trained_run) == before


# ------------------------------------------------------------------ dtype and epistemic score


def test_report_inference_runs_in_the_run_dtype(tmp_path, variables, monkeypatch):
  import jax.numpy as jnp
  from jaxface import inference
  dtypes = []

  def spy(original):
    def call(*args, dtype=jnp.float32, **kwargs):
      dtypes.append(jnp.dtype(dtype))
      return original(*args, dtype=dtype, **kwargs)
    return call

  monkeypatch.setattr(inference, "infer", spy(inference.infer))
  monkeypatch.setattr(inference, "decode", spy(inference.decode))
  images, labels, groups = _test_set(per_group=3, non_faces=2)
  run = report.RunArtifacts("DB-VAE", "dbvae", variables["vae"], images, labels, groups,
                            dtype="bfloat16")
  report.build_report(tmp_path, [run], n_grid=4)
  # predict, reconstruct and the traversal's decoding all ran, all in bfloat16.
  assert len(dtypes) >= 3
  assert set(dtypes) == {jnp.dtype(jnp.bfloat16)}


@pytest.mark.parametrize("kind", ["l1", "l2"])
def test_epistemic_score_is_the_runs_reconstruction_loss(tmp_path, variables, kind):
  import jax.numpy as jnp
  images, labels, groups = _test_set(per_group=3, non_faces=0)
  x = images.astype(np.float32) / 255.0
  z_mean = evaluation.predict(variables["vae"], images).z_mean
  x_recon = models.decode(variables["vae"]["params"], jnp.asarray(z_mean))  # not clipped
  expected = np.asarray(resampling.epistemic_score(jnp.asarray(x), x_recon, kind))
  # evaluation.predict's recon_error is the resampling's epistemic score ...
  pred = evaluation.predict(variables["vae"], images, recon=kind)
  np.testing.assert_allclose(pred.recon_error, expected, rtol=1e-4, atol=1e-6)
  # ... the trainer's inference (the resampling pass) gives the same ...
  from jaxface import inference, sharding
  out = inference.infer(variables["vae"], images, ("recon_error",), mesh=sharding.make_mesh(),
                        batch_size=64, recon=kind)
  np.testing.assert_allclose(out["recon_error"], expected, rtol=1e-4, atol=1e-6)
  # ... and it is what the report ranks and averages by group.
  run = report.RunArtifacts("DB-VAE", "dbvae", variables["vae"], images, labels, groups,
                            recon=kind)
  index = report.build_report(tmp_path, [run], n_grid=4)
  by_group = json.loads(index.with_name("metrics.json").read_text())["runs"][0][
      "scores_by_group"]["epistemic"]
  for g in GROUPS:
    assert by_group[g] == pytest.approx(float(expected[groups == g].mean()), rel=1e-4)
  page = index.read_text(encoding="utf-8")
  assert f"{kind.upper()} reconstruction error" in page
  with pytest.raises(ValueError, match="recon"):
    evaluation.predict(variables["vae"], images, recon="l3")


# ---------------------------------------------------------------------------- the page itself


def test_page_shows_training_config_and_comparison(tmp_path, variables):
  images, labels, groups = _test_set(per_group=4, non_faces=4)
  runs = [
      report.RunArtifacts("DB-VAE", "dbvae", variables["vae"], images, labels, groups,
                          log=_log(), resampling=RESAMPLING,
                          config={"seed": 11, "loss": {"recon": "l1"}},
                          train_metrics={"eval": {"val_accuracy": 0.8}}),
      report.RunArtifacts("standard CNN", "cnn", variables["cnn"], images, labels, groups,
                          log=_log(acc_shift=-0.2), train_metrics={"eval": {"val_accuracy": 0.6}}),
  ]
  index = report.build_report(tmp_path, runs, n_grid=4)
  page = index.read_text(encoding="utf-8")
  # The config, collapsed, with the seed.
  assert page.count("<details>") == 1 and "seed 11" in page and '&quot;seed&quot;: 11' in page
  # The sampling mass per group over epochs: figure and table (epoch 1's DM mass 7.00%).
  assert "db-vae_sampling_mass.png" in page and "DM mass %" in page and "7.00" in page
  # Training curves of each run, and of both together in the comparison.
  assert "db-vae_training.png" in page and "comparison_training.png" in page
  # The baseline beside the DB-VAE: one column per run and their difference.
  assert "<th>DB-VAE minus standard CNN</th>" in page and "validation accuracy %" in page
  assert "<td>validation accuracy %</td><td>80.00</td><td>60.00</td><td>20.00</td>" in page
  # Captions describe the figures and claim no factors; the latent curves are a band.
  assert "skin tone, lighting" not in page
  assert "largest variance" in page and "mean latent code" in page
  assert "Mean absolute pixel difference between the first and last image" in page
  assert "10th to 90th percentile" in page and "blue: single dimensions" not in page
  # The summary table names each run once ('DB-VAE' in its row, not a second 'model' cell).
  summary = page[page.index("<h2>Summary</h2>"):page.index("</table>")]
  assert "<th>model</th>" not in summary and summary.count("DB-VAE") == 1


def _snapshot(directory: Path) -> dict:
  return {str(p.relative_to(directory)): (p.stat().st_size, p.stat().st_mtime_ns)
          for p in sorted(directory.rglob("*"))}
