"""A real two-process run on localhost (CPU collectives), to the end and the report."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 240

PROCESS_SCRIPT = textwrap.dedent("""
    import sys
    import jax
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    process_id, port, workdir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{{port}}", num_processes=2,
                               process_id=process_id, initialization_timeout=60)
    sys.path[:0] = [{tests!r}, {experiments!r}]
    from helpers import tiny_config
    import run as run_script
    config = tiny_config("cnn", num_epochs=1, steps_per_epoch=3, log_every_steps=1,
                         checkpoint_every_steps=2, write_report=True, distributed=True)
    assert jax.process_count() == 2 and len(jax.devices()) == 2, jax.devices()
    path = run_script.run(config, workdir)
    print(f"FINISHED process {{process_id}} report {{path}}", flush=True)
""")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_train_and_report_to_the_end(tmp_path):
  script = PROCESS_SCRIPT.format(tests=str(REPO / "tests"), experiments=str(REPO / "experiments"))
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
  env["JAX_PLATFORMS"] = "cpu"
  port, workdir = _free_port(), tmp_path / "run"
  logs = [(tmp_path / f"process{i}.log").open("w+") for i in range(2)]
  procs = [subprocess.Popen([sys.executable, "-c", script, str(i), str(port), str(workdir)],
                            stdout=logs[i], stderr=subprocess.STDOUT, env=env, cwd=REPO)
           for i in range(2)]
  deadline = time.monotonic() + TIMEOUT_S
  try:
    codes = [p.wait(timeout=max(1.0, deadline - time.monotonic())) for p in procs]
  except subprocess.TimeoutExpired:
    codes = None
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  out = []
  for log in logs:
    log.seek(0)
    out.append(log.read())
    log.close()
  if codes is None:
    pytest.fail(f"the two processes did not finish within {TIMEOUT_S} s:\n"
                + "\n".join(f"--- process {i}\n{text[-2000:]}" for i, text in enumerate(out)))
  assert codes == [0, 0], "\n".join(f"--- process {i}\n{t[-3000:]}" for i, t in enumerate(out))
  report = workdir / "report" / "index.html"
  assert f"FINISHED process 0 report {report}" in out[0]
  assert "FINISHED process 1 report None" in out[1]
  assert report.is_file()
  metrics = json.loads((workdir / "metrics.json").read_text())
  assert metrics["steps"] == 3 and metrics["devices"] == 2
