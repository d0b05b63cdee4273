"""Tests of jaxface.report.findings and the page's tables: plain data, no matplotlib needed.

Nothing here imports matplotlib (test_findings_import_without_matplotlib checks the module in a
fresh interpreter); the figures and the assembled page are tested in test_report.py.
"""

import math
import subprocess
import sys
from pathlib import Path

import numpy as np

from jaxface import evaluation
from jaxface.report import findings, page

GROUPS = ("LF", "LM", "DF", "DM")
REPO = Path(__file__).resolve().parents[1]

# Two epochs of the trainer's resampling records (metrics.json) of a four-group run.
RESAMPLING = [
    {"epoch": 0, "ess_fraction": 0.5, "mass_by_group": {"DF": 0.04, "DM": 0.02, "LF": 0.5,
                                                          "LM": 0.44},
     "share_by_group": {"DF": 0.03, "DM": 0.02, "LF": 0.47, "LM": 0.48}},
    {"epoch": 1, "ess_fraction": 0.4, "mass_by_group": {"DF": 0.08, "DM": 0.07, "LF": 0.45,
                                                          "LM": 0.40},
     "share_by_group": {"DF": 0.03, "DM": 0.02, "LF": 0.47, "LM": 0.48}},
]


def _log(acc_shift: float = 0.0) -> list[dict]:
  """metrics.jsonl records of two epochs of four steps: resampling, training and epoch ends."""
  log = []
  for epoch in range(2):
    log.append({"step": 4 * epoch, "epoch": epoch, "resampling_ess_fraction":
                RESAMPLING[epoch]["ess_fraction"],
                **{f"resampling_mass_{g}": m
                   for g, m in RESAMPLING[epoch]["mass_by_group"].items()}})
    for step in (2, 4):
      log.append({"step": 4 * epoch + step, "epoch": epoch, "loss": 1.0 / (4 * epoch + step),
                  "classification_loss": 0.5 / (4 * epoch + step), "accuracy": 0.6 + 0.05 * step,
                  "images_per_s": 100.0})
    log.append({"step": 4 * epoch + 4, "epoch": epoch, "val_accuracy": 0.7 + 0.1 * epoch
                + acc_shift, "test_E_A": 60.0})
  return log


def test_json_safe_and_group_order():
  value = {"a": np.float32(1.5), "b": [np.nan, math.inf, 2], "c": np.arange(2), 3: (True,)}
  assert findings.json_safe(value) == {"a": 1.5, "b": [None, None, 2], "c": [0, 1], "3": [True]}
  assert findings.order_groups(["DM", "", "X", "LF", "A"]) == ["LF", "DM", "A", "X"]


def test_distinct_decimals_keeps_labels_apart():
  # A narrow traversal range: two decimals would print '-0.03, -0.03, ...'.
  values = np.linspace(-0.034, -0.026, 5)
  decimals = findings.distinct_decimals(values)
  labels = [findings.format_fixed(v, decimals) for v in values]
  assert len(set(labels)) == len(labels)
  assert decimals == 3
  assert findings.distinct_decimals([1.0, 2.0, 3.0]) == 2  # never fewer than min_decimals
  assert findings.distinct_decimals([0.5, 0.5, np.nan], 3) == 3  # ties and NaN are fine
  entropies = [0.6931412, 0.6931457, 0.6931471]
  assert len({f"{v:.{findings.distinct_decimals(entropies, 3, 6)}f}" for v in entropies}) == 3
  assert findings.format_fixed(-0.001, 2) == "0.00"
  assert findings.format_fixed(-0.01, 2) == "-0.01"


def test_findings_import_without_matplotlib():
  code = ("import sys\n"
          "from jaxface.report import findings, page\n"
          "mass = findings.sampling_mass(findings.resampling_from_log([\n"
          "    {'epoch': 0, 'resampling_ess_fraction': 0.5, 'resampling_mass_DF': 0.25,\n"
          "     'resampling_mass_LF': 0.75}]))\n"
          "assert mass.groups == ['LF', 'DF'], mass\n"
          "assert 'matplotlib' not in sys.modules, 'matplotlib was imported'\n")
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        timeout=300, cwd=REPO)
  assert proc.returncode == 0, proc.stderr[-2000:]


def test_sampling_mass_per_group_over_epochs():
  mass = findings.sampling_mass(RESAMPLING, order=GROUPS)
  assert mass.groups == list(GROUPS)
  np.testing.assert_array_equal(mass.epochs, [0, 1])
  np.testing.assert_allclose(mass.mass, [[0.5, 0.44, 0.04, 0.02], [0.45, 0.40, 0.08, 0.07]])
  np.testing.assert_allclose(mass.share, [0.47, 0.48, 0.03, 0.02])
  np.testing.assert_allclose(mass.ess_fraction, [0.5, 0.4])
  # The metrics.jsonl lines carry the same masses (without the face shares).
  from_log = findings.sampling_mass(findings.resampling_from_log(_log()), order=GROUPS)
  np.testing.assert_allclose(from_log.mass, mass.mass)
  assert np.isnan(from_log.share).all()
  assert findings.sampling_mass([]) is None
  assert findings.sampling_mass([{"epoch": 0, "ess_fraction": 0.9}]) is None  # no groups


def test_training_curves_from_the_log():
  log = [dict(r, vae_loss_faces=0.0) if "loss" in r else r for r in _log()]  # a CNN's zero term
  curves = findings.training_curves(log)
  np.testing.assert_array_equal(curves.step, [2, 4, 6, 8])
  assert curves.loss_names == ["loss", "classification_loss"]
  np.testing.assert_allclose(curves.loss[:, 0], [1 / 2, 1 / 4, 1 / 6, 1 / 8])
  np.testing.assert_allclose(curves.loss[:, 1], [0.5 / 2, 0.5 / 4, 0.5 / 6, 0.5 / 8])
  np.testing.assert_allclose(curves.accuracy, [0.7, 0.8, 0.7, 0.8])
  np.testing.assert_array_equal(curves.epoch, [0, 1])
  np.testing.assert_array_equal(curves.epoch_step, [4, 8])
  np.testing.assert_allclose(curves.val_accuracy, [0.7, 0.8])
  assert findings.training_curves([{"step": 0, "resampling_ess_fraction": 1.0}]) is None


def test_latent_accuracy_band_spans_the_dimensions():
  per_dim = np.array([[0.0, 1.0, np.nan], [0.5, 1.0, np.nan], [1.0, 0.0, np.nan]] +
                     [[np.nan, np.nan, np.nan]])
  curve = evaluation.LatentAccuracy(np.array([0.5, 2 / 3, np.nan]), per_dim,
                                    np.ones_like(per_dim), np.ones(3) / 3)
  low, high = findings.latent_accuracy_band(curve, (10.0, 90.0))
  np.testing.assert_allclose(low[:2], [0.1, 0.2])  # NaN rows (no faces) are left out
  np.testing.assert_allclose(high[:2], [0.9, 1.0])
  assert np.isnan(low[2]) and np.isnan(high[2])


def test_traversal_change_between_the_ends():
  images = np.zeros((2, 3, 2, 2, 3), np.float32)
  images[0, -1] = 0.5  # the first dimension brightens the face by 0.5
  images[1, 1] = 1.0  # the second changes only in the middle
  traversal = evaluation.Traversal(np.array([4, 1]), np.zeros((2, 3), np.float32), images)
  np.testing.assert_allclose(findings.traversal_change(traversal), [0.5, 0.0])


def test_side_by_side_and_summary_name_each_run_once():
  prob = np.array([0.9, 0.8, 0.2, 0.7, 0.1, 0.6])
  labels = np.array([1, 1, 1, 1, 0, 0])
  groups = np.array(["LF", "LF", "DF", "DF", "", ""])
  a = evaluation.group_metrics(prob, labels, groups)
  b = evaluation.group_metrics(np.ones(6), labels, groups)
  rows = findings.side_by_side([a, b], ["LF", "DF"], [{"eval": {"val_accuracy": 0.75}}, None])
  table = {label: values for label, values, _ in rows}
  assert table["LF detected %"] == [100.0, 100.0]
  assert table["DF detected %"] == [50.0, 100.0]
  assert table["E_A %"] == [75.0, 100.0]
  assert table["non-faces correct %"] == [50.0, 0.0]
  assert table["validation accuracy %"] == [75.0, None]
  summary = page.summary_rows(["DB-VAE", "my cnn"], ["dbvae", "cnn"], [a, b])
  assert [row[0] for row in summary] == ["DB-VAE", "my cnn (standard CNN)"]
  assert all("DB-VAE" not in str(c) for row in summary for c in row[1:])
  assert "model" not in page.SUMMARY_HEADER
  assert "td { white-space: nowrap; }" in page.CSS
  assert page.summary_table(["my cnn"], ["cnn"], [b]) == (list(page.SUMMARY_HEADER), summary[1:])
  # With an operating point: its rates beside each group's rate at 0.5, its figures first.
  a["operating_point"] = evaluation.operating_point(prob[:4], groups[:4], prob[4:], 0.4)
  rows = findings.side_by_side([a, b], ["LF", "DF"])
  labels = [label for label, _, _ in rows]
  assert labels[:4] == ["LF detected %", "LF detected @40%FP %", "DF detected %",
                        "DF detected @40%FP %"]
  table = {label: values for label, values, _ in rows}
  assert table["DF detected @40%FP %"] == [50.0, None]  # at 0.6, the highest non-face
  assert table["LF detected @40%FP %"] == [100.0, None]
  assert table["worst rate @40%FP %"] == [50.0, None]
  header, cells = page.summary_table(["DB-VAE", "my cnn"], ["dbvae", "cnn"], [a, b])
  assert header[:5] == ["run", "worst group @40%FP", "worst rate @40%FP %", "E_A @40%FP %",
                        "Var_A @40%FP %²"] and header[5] == "accuracy % @0.5"
  assert cells[0][:5] == ["DB-VAE", "DF", "50.00", "75.00", "625.00"]
  assert cells[1][1:5] == ["–"] * 4
