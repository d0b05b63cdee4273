"""experiments/device_check.py at its --tiny sizes on the CPU: one JSON file, every row measured
or skipped with a reason, every figure finite."""

from __future__ import annotations

import argparse
import json
import math
import subprocess
from pathlib import Path

import jax
import pytest
from helpers import REPO, load_experiment

ROW_NAMES = {"smoke_train", "train_step", "peer_torch", "bandwidth", "resampling", "scan"}


@pytest.fixture(scope="module")
def device_check():
  return load_experiment("device_check", "_experiments_device_check")


def _numbers(value, path=""):
  """(path, number) for every int or float inside a JSON value (bools excluded)."""
  if isinstance(value, dict):
    for key, item in value.items():
      yield from _numbers(item, f"{path}.{key}")
  elif isinstance(value, list):
    for i, item in enumerate(value):
      yield from _numbers(item, f"{path}[{i}]")
  elif isinstance(value, (int, float)) and not isinstance(value, bool):
    yield path, value


def _is_timing(key: str) -> bool:
  return key.endswith(("_s", "_per_s", "seconds")) or key.startswith("ratio")


def test_tiny_check_writes_one_complete_json(device_check, tmp_path):
  path = device_check.main(["--tiny", "--out", str(tmp_path)])
  assert path.parent == tmp_path and list(tmp_path.iterdir()) == [path]
  record = json.loads(path.read_text())
  env = record["environment"]
  assert path.name == f"device_check_{device_check.device_slug(env['device_kind'])}.json"
  assert env["backend"] == jax.default_backend() == "cpu"
  assert env["versions"]["jax"] == jax.__version__
  assert all(env["versions"][name] for name in ("jaxlib", "flax", "optax"))
  assert record["settings"]["tiny"] is True
  rows = record["rows"]
  assert {row["name"] for row in rows} == ROW_NAMES
  for row in rows:
    assert row["status"] in ("measured", "skipped"), row
    if row["status"] == "skipped":
      assert isinstance(row["reason"], str) and row["reason"], row
  for key, number in _numbers(record):
    assert math.isfinite(number) and number >= 0, (key, number)
  measured = [row for row in rows if row["status"] == "measured"]
  for row in measured:
    for key, number in _numbers(row):
      if _is_timing(key.rsplit(".", 1)[-1]):
        assert number > 0, (row["name"], key, number)
  names = {row["name"] for row in measured}
  assert names >= ROW_NAMES - {"peer_torch"}, "only the PyTorch reference may be skipped here"
  steps = [row for row in measured if row["name"] == "train_step"]
  assert {(row["variant"], row["dtype"]) for row in steps} == {
      (v, d) for v in ("faces_only", "every_row") for d in ("float32", "bfloat16")}
  assert {row["histogram_impl"] for row in measured if row["name"] == "resampling"} == {
      "vmap", "scatter"}
  smoke = next(row for row in rows if row["name"] == "smoke_train")
  assert 0 <= smoke["E_A"] <= 100 and smoke["worst_group"] in ("LF", "LM", "DF", "DM")


def test_missing_peer_script_is_a_skip_with_its_path(device_check, tmp_path):
  report = device_check.Report(tmp_path / "check.json", {}, {"budget_s": 0})
  missing = str(tmp_path / "nowhere" / "peer_torch_dbvae.py")
  args = argparse.Namespace(torch_python="python3", peer_script=missing, peer_steps=2,
                            peer_compile=False)
  reason = device_check.reference_unavailable(args.torch_python, missing)
  device_check.run_peer(args, report, 8, {}, reason)
  (row,) = json.loads((tmp_path / "check.json").read_text())["rows"]
  assert row["status"] == "skipped" and missing in row["reason"]


def test_spent_budget_skips_and_errors_fail_with_their_message(device_check, tmp_path):
  report = device_check.Report(tmp_path / "check.json", {}, {"budget_s": 0})

  def broken():
    raise ValueError("no such device")

  report.attempt("scan", "batch 8", broken)
  report.settings["budget_s"] = 1e-9
  report.attempt("scan", "batch 16", lambda: pytest.fail("ran past the time budget"))
  rows = json.loads((tmp_path / "check.json").read_text())["rows"]
  assert [(row["label"], row["status"]) for row in rows] == [("batch 8", "failed"),
                                                              ("batch 16", "skipped")]
  assert rows[0]["reason"] == "ValueError: no such device"
  assert "--budget_s" in rows[1]["reason"]


def test_device_slug_and_wrapper_syntax(device_check):
  assert device_check.device_slug("NVIDIA H100 80GB HBM3") == "nvidia_h100_80gb_hbm3"
  assert device_check.device_slug("cpu") == "cpu"
  subprocess.run(["bash", "-n", str(Path(REPO) / "experiments" / "device_check.sh")], check=True)
