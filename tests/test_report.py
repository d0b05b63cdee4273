"""Tests of jaxface.report: every figure is written and referenced, metrics.json is complete, run
directories are loaded, and the command-line script runs."""

import json
import math
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

from jaxface import evaluation, models, report

from helpers import tiny_config

# The architecture of test_evaluation.py, so the compiled functions are shared.
IMAGE_SIZE = 32
LATENT_DIM = 8
N_FILTERS = 4
GROUPS = ("LF", "LM", "DF", "DM")
VAE_FIGURES = ("groups", "reconstruction", "latent_traversal", "accuracy_vs_latent",
               "faces_bias", "faces_epistemic", "faces_aleatoric", "scores_by_group", "deciles",
               "percentile_faces")
CNN_FIGURES = ("groups", "faces_aleatoric", "scores_by_group")
REPO = Path(__file__).resolve().parents[1]


def make_variables(latent_dim: int, seed: int) -> dict:
  """Model variables with LeCun-normal kernels drawn in NumPy.

  ``models.init_variables`` is traced only for its shapes (``jax.eval_shape``), which spares
  each test session an XLA compile of the initialisers.
  """
  shapes = jax.eval_shape(lambda: models.init_variables(
      jax.random.key(0), latent_dim=latent_dim, n_filters=N_FILTERS, image_size=IMAGE_SIZE))
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if name == "kernel":
      fan_in = int(np.prod(leaf.shape[:-1]))
      return rng.normal(0.0, 1.0 / np.sqrt(fan_in), leaf.shape).astype(np.float32)
    return np.full(leaf.shape, 1.0 if name in ("scale", "var") else 0.0, np.float32)

  return jax.tree.map_with_path(fill, shapes)


@pytest.fixture(scope="module")
def variables():
  return {"vae": make_variables(LATENT_DIM, seed=0), "cnn": make_variables(0, seed=1)}


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
      report.RunArtifacts("DB-VAE", "dbvae", variables["vae"], images, labels, groups,
                          reference_images=ref, train_metrics={"steps": 3}),
      report.RunArtifacts("standard CNN", "cnn", variables["cnn"], images, labels, groups),
  ]
  index = report.build_report(tmp_path / "report", runs, n_grid=8)
  expected = ({f"db-vae_{f}.png" for f in VAE_FIGURES}
              | {f"standard-cnn_{f}.png" for f in CNN_FIGURES} | {"comparison.png"})
  metrics = _check_report(index, expected)

  page = index.read_text(encoding="utf-8")
  # The story in order: comparison, per-group rates, then the latent diagnostics.
  order = ["comparison.png"] + [f"db-vae_{f}.png" for f in VAE_FIGURES] + ["standard-cnn_groups"]
  positions = [page.index(name) for name in order]
  assert positions == sorted(positions)
  # Summary and comparison tables name both runs and every group.
  assert page.count("<table>") == 2
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
  # The report's per-group rates are group_metrics on the model's predictions.
  prob = evaluation.predict(variables["cnn"], images).face_prob
  expected_metrics = evaluation.group_metrics(prob, labels, groups, group_order=GROUPS)
  assert cnn["test"]["E_A"] == pytest.approx(expected_metrics["E_A"])


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


def test_plot_group_bars_shows_groups_without_faces(tmp_path):
  m = evaluation.group_metrics(np.array([0.9, 0.2, 0.7]), np.array([1, 1, 0]),
                               np.array(["LF", "DF", ""]), group_order=GROUPS)
  path = report.plot_group_bars(m, tmp_path / "bars.png", "test")
  assert path.stat().st_size > 8_000
  path = report.plot_group_comparison(["a", "b", "c"], [m, m, m], tmp_path / "cmp.png")
  assert path.stat().st_size > 8_000


def test_json_safe_and_group_order():
  value = {"a": np.float32(1.5), "b": [np.nan, math.inf, 2], "c": np.arange(2), 3: (True,)}
  assert report.json_safe(value) == {"a": 1.5, "b": [None, None, 2], "c": [0, 1], "3": [True]}
  assert report.order_groups(["DM", "", "X", "LF", "A"]) == ["LF", "DM", "A", "X"]


def _fake_config(name: str, kind: str) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      "name": name, "model": {"kind": kind}, "resampling": {"bins": 10},
      "eval_batch_size": 64, "dtype": "float32", "data": {"source": "fake", "seed": 0}})


def test_write_report_loads_run_directories(tmp_path, variables, monkeypatch):
  import jaxface.data
  import jaxface.checkpoints
  images, labels, groups = _test_set()
  test = jaxface.data.FaceData(images, labels, groups)
  train_images, _, _ = _test_set(per_group=20, non_faces=0, seed=2)
  train = jaxface.data.FaceData(train_images, np.ones(80, np.int32), np.repeat(GROUPS, 20))
  runs = {"vae_dir": (_fake_config("dbvae", "dbvae"), variables["vae"]),
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
      {"steps": 7, "epochs": [{"big": 1}], "resampling": [1, 2]}))
  index = report.write_report(tmp_path / "vae_dir", compare=[tmp_path / "cnn_dir"])
  assert index == tmp_path / "vae_dir" / "report" / "index.html"
  assert len(loads) == 1  # the same data config is loaded once
  metrics = json.loads(index.with_name("metrics.json").read_text())
  assert [r["name"] for r in metrics["runs"]] == ["DB-VAE", "standard CNN"]
  assert metrics["runs"][0]["train_metrics"] == {"steps": 7}
  assert metrics["runs"][0]["density_reference"] == "train"
  assert (index.parent / "comparison.png").exists()


def test_experiments_script_reports_a_missing_run(tmp_path):
  proc = subprocess.run(
      [sys.executable, str(REPO / "experiments" / "report.py"),
       f"--workdir={tmp_path / 'no_such_run'}"], capture_output=True, text=True, timeout=300,
      cwd=REPO)
  assert proc.returncode != 0
  assert "config.json" in proc.stderr


def test_distinct_decimals_keeps_labels_apart():
  # A narrow traversal range: two decimals would print '-0.03, -0.03, ...'.
  values = np.linspace(-0.034, -0.026, 5)
  decimals = report.distinct_decimals(values)
  labels = [report.format_fixed(v, decimals) for v in values]
  assert len(set(labels)) == len(labels)
  assert decimals == 3
  assert report.distinct_decimals([1.0, 2.0, 3.0]) == 2  # never fewer than min_decimals
  assert report.distinct_decimals([0.5, 0.5, np.nan], 3) == 3  # ties and NaN are fine
  entropies = [0.6931412, 0.6931457, 0.6931471]
  assert len({f"{v:.{report.distinct_decimals(entropies, 3, 6)}f}" for v in entropies}) == 3
  assert report.format_fixed(-0.001, 2) == "0.00"
  assert report.format_fixed(-0.01, 2) == "-0.01"


def test_score_axes_have_no_offset(tmp_path, monkeypatch):
  figures = []
  save = report._save
  monkeypatch.setattr(report, "_save", lambda fig, path: figures.append(fig) or save(fig, path))
  groups = np.repeat(np.array(GROUPS), 5)
  entropy = 0.69312 + np.linspace(0, 3e-5, len(groups))  # a near-chance classifier's scores
  bias = -20 + np.linspace(0, 1e-4, len(groups))
  path = report.plot_score_by_group({"bias": bias, "aleatoric": entropy}, groups, GROUPS,
                                    tmp_path / "s.png")
  assert path.stat().st_size > 8_000
  (fig,) = figures
  for ax in fig.axes:  # no '1e-5+6.931e-1' above the axis
    assert ax.yaxis.get_offset_text().get_text() == ""


def test_latent_traversal_ticks_are_distinct(tmp_path, monkeypatch):
  figures = []
  save = report._save
  monkeypatch.setattr(report, "_save", lambda fig, path: figures.append(fig) or save(fig, path))
  rng = np.random.default_rng(0)
  values = np.stack([np.linspace(-0.034, -0.026, 7), np.linspace(-0.01, 0.01, 7)])
  traversal = evaluation.Traversal(np.array([0, 1]), values.astype(np.float32),
                                   rng.uniform(0, 1, (2, 7, 16, 16, 3)).astype(np.float32))
  z_mean = rng.uniform(-0.035, 0.01, (50, 2))
  report.plot_latent_traversal(z_mean, traversal, tmp_path / "t.png")
  (fig,) = figures
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
  assert len(referenced) == len(set(referenced)) == len(VAE_FIGURES)
  metrics = json.loads((report_dir / "metrics.json").read_text())
  assert sorted(f["file"] for f in metrics["figures"]) == sorted(referenced)
  return referenced


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
  """The run directory of a real tiny training and its report (as experiments/run.py writes)."""
  from jaxface import train
  workdir = tmp_path_factory.mktemp("trained") / "dbvae"
  result = train.train_and_evaluate(_tiny_report_config(), workdir)
  report.write_report(workdir, datasets=result.datasets)
  return workdir


def test_training_writes_report(trained_run):
  assert (trained_run / "metrics.json").exists()
  _check_report_dir(trained_run / "report")


def test_experiments_script_writes_report(trained_run, tmp_path):
  # A copy of the run without its report, so the script's output is what is checked.
  workdir = tmp_path / "run"
  shutil.copytree(trained_run, workdir, ignore=shutil.ignore_patterns("report"))
  assert not (workdir / "report").exists()
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
