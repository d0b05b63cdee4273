"""experiments/signal_probe.py on a tiny planted run: the signals' figures, their settings, and
that no signal but 'groups' reads the group labels."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import load_experiment, tiny_config

from jaxface import data as data_lib
from jaxface import inference, resampling, train
from jaxface.checkpoints import load_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("probe") / "dbvae"
  config = tiny_config("dbvae", **{"resampling.signal": "errors",
                                   "resampling.error_upweight": 10.0})
  train.train_and_evaluate(config, workdir)
  return workdir


@pytest.fixture(scope="module")
def probe():
  return load_experiment("signal_probe", "_experiments_signal_probe")


def test_the_figures_are_the_signals_on_the_runs_training_faces(run, probe, tmp_path, capsys,
                                                                monkeypatch):
  seen = []
  face_probabilities = resampling.face_probabilities

  def recording(rs, inputs, **kwargs):
    seen.append((rs.signal, sorted(inputs)))
    return face_probabilities(rs, inputs, **kwargs)

  monkeypatch.setattr(resampling, "face_probabilities", recording)
  before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
  records = probe.main([str(run), "errors", "latent", "error_axis:error_axes=2,bins=6",
                        "groups", "--json", str(tmp_path / "probe.jsonl")])
  assert {p: p.stat().st_mtime_ns for p in before} == before  # the run is only read
  assert [r["signal"] for r in records] == ["errors", "latent", "error_axis:error_axes=2,bins=6",
                                            "groups"]
  assert seen == [("errors", ["face_prob", "z_mean"]), ("latent", ["face_prob", "z_mean"]),
                  ("error_axis", ["face_prob", "z_mean"]),
                  ("groups", ["face_prob", "groups", "z_mean"])]
  assert [json.loads(line) for line in (tmp_path / "probe.jsonl").read_text().splitlines()] == (
      json.loads(json.dumps(records)))
  # Recomputed here: the run's settings (error_upweight 10), the overrides, epoch 1.
  config, variables = load_run(run)
  train_data = data_lib.load_datasets(config.data)["train"]
  faces = train_data.subset(train_data.face_indices())
  out = inference.infer(variables, faces.images, ("z_mean", "face_prob"))
  expected = {
      "errors": resampling.error_probabilities(out["face_prob"], 10.0),
      "error_axis:error_axes=2,bins=6": resampling.error_axis_probabilities(
          out["z_mean"], out["face_prob"], 2, 6),
      "groups": resampling.group_balanced_probabilities(faces.groups),
  }
  by_signal = {r["signal"]: r for r in records}
  for spec, p in expected.items():
    p = np.asarray(p, np.float64)
    p = p / p.sum()
    figures = by_signal[spec]
    assert figures["ess_fraction"] == pytest.approx(
        resampling.effective_sample_size(p) / p.size, rel=1e-5)
    for g in faces.group_names:
      in_g = faces.groups == g
      assert figures["groups"][g]["mass"] == pytest.approx(p[in_g].sum(), rel=1e-5), (spec, g)
      assert figures["groups"][g]["share"] == pytest.approx(in_g.mean())
      assert figures["groups"][g]["over"] == pytest.approx(np.mean(p[in_g] > 2 / p.size))
  assert by_signal["groups"]["groups"]["DF"]["mass"] == pytest.approx(0.25)
  printed = capsys.readouterr().out
  assert "| signal | ESS | DF mass |" in printed and "| error_axis:error_axes=2,bins=6 |" in printed
  assert "Share of the training faces: DF" in printed


@pytest.mark.parametrize("spec,words", [
    ("error_axis:erorr_axes=2", "unknown resampling field 'erorr_axes'"),
    ("error_axis:error_axes=two", "resampling.error_axes must be of type int"),
    ("error_axis:error_axes=0", "config.resampling.error_axes = 0: must be an integer >= 1"),
    ("latnet", "config.resampling.signal = 'latnet'"),
])
def test_bad_signals_are_refused_by_name(run, probe, spec, words):
  with pytest.raises(SystemExit, match=words):
    probe.main([str(run), spec])


def test_an_unfinished_run_is_refused(tmp_path, probe):
  with pytest.raises(SystemExit, match="not a finished run"):
    probe.main([str(tmp_path), "errors"])
