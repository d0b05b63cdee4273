"""experiments/bias_check.py: the planted-bias check trains with the runner's step."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_bias_check_prints_group_rates():
  env = dict(os.environ, PYTHONPATH=str(REPO),
             JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
  proc = subprocess.run(
      [sys.executable, "experiments/bias_check.py", "--epochs=1", "--n_faces=64",
       "--n_per_group=8", "--batch_size=16", "--image_size=32"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout)
  rates = result["rates"]
  assert set(rates) >= {"LF", "LM", "DF", "DM", "lighter", "darker", "non_face_accuracy"}
  assert all(0.0 <= r <= 1.0 for r in rates.values())
  assert result["n_train_faces"] == 64 and result["epochs"] == 1
  assert abs(result["gap_lighter_minus_darker"] - (rates["lighter"] - rates["darker"])) < 1e-3
