"""The real entry point, ``experiments/run.py``, run as a subprocess with flag overrides."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Shrinks configs/dbvae.py:smoke to a few steps on tiny data and a small model.
TINY_FLAGS = (
    "--config.steps_per_epoch=3", "--config.num_epochs=1", "--config.log_every_steps=3",
    "--config.data.n_train_faces=64", "--config.data.n_train_non_faces=64",
    "--config.data.n_test_per_group=8", "--config.data.n_test_non_faces=16",
    "--config.data.image_size=32", "--config.model.n_filters=4", "--config.model.latent_dim=8",
    "--config.batch_size=16", "--config.eval_batch_size=64",
    "--config.write_report=False", "--config.progress_bar=False",
)


def run_script(workdir: Path, *flags: str,
               probe_backends: bool = False) -> subprocess.CompletedProcess:
  """Runs ``experiments/run.py --config=configs/dbvae.py:smoke`` with extra flags.

  ``probe_backends`` lets JAX look for every backend (as a plain run does) unless the caller's
  environment sets ``JAX_PLATFORMS``; otherwise the run uses the CPU.
  """
  env = dict(os.environ, PYTHONPATH=str(REPO))
  if not probe_backends:
    env["JAX_PLATFORMS"] = os.environ.get("JAX_PLATFORMS", "cpu")
  return subprocess.run(
      [sys.executable, "experiments/run.py", "--config=configs/dbvae.py:smoke",
       f"--workdir={workdir}", *flags],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_run_script_trains_and_writes_outputs(tmp_path):
  workdir = tmp_path / "run"
  proc = run_script(workdir, *TINY_FLAGS, "--config.progress_bar=True",
                    "--config.checkpoint_every_steps=2", probe_backends=True)
  assert proc.returncode == 0, proc.stderr[-3000:]
  # No INFO noise from other libraries (JAX's backend probe, Orbax's saves), and every log line
  # starts a line of its own rather than following the progress bar.
  assert "Unable to initialize backend" not in proc.stderr
  own = {p.name for p in [*(REPO / "jaxface").rglob("*.py"), *(REPO / "experiments").glob("*.py")]}
  info = re.findall(r"(.?)I\d{4} [\d:.]+ +\d+ ([\w.]+):\d+\]", proc.stderr)
  assert info, proc.stderr[-3000:]
  for before, source in info:
    assert before in ("", "\n", "\r"), proc.stderr[-3000:]
    assert source in own and "orbax" not in source, source
  assert "%|" in proc.stderr  # the bar was drawn
  metrics = json.loads((workdir / "metrics.json").read_text())
  assert metrics["steps"] == 3 and metrics["kind"] == "dbvae"
  assert 0.0 <= metrics["eval"]["val_accuracy"] <= 1.0
  config = json.loads((workdir / "config.json").read_text())
  assert config["steps_per_epoch"] == 3 and config["name"] == "dbvae-smoke"
  assert config["data"]["n_train_faces"] == 64
  assert "dbvae-smoke (dbvae) finished" in proc.stdout


@pytest.mark.parametrize("flag,message", [
    ("--config.nope=1", "unknown config field config.nope"),
    ("--config.resampling.bins=0", "config.resampling.bins = 0: must be >= 1"),
])
def test_run_script_rejects_bad_flags_naming_the_field(tmp_path, flag, message):
  workdir = tmp_path / "run"
  proc = run_script(workdir, *TINY_FLAGS, flag)
  assert proc.returncode != 0
  assert message in proc.stderr, proc.stderr[-3000:]
  assert not (workdir / "checkpoints").exists() and not (workdir / "metrics.json").exists()
