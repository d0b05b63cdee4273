"""Error messages of the entry points: one or two lines on stderr, an exit status, no traceback.

The scripts run as subprocesses; each bad command line fails before anything is compiled.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from jaxface import cli

REPO = Path(__file__).resolve().parents[1]

# A small dbvae:smoke run (see tests/test_run_script.py), before any override under test.
TINY_FLAGS = (
    "--config.data.n_train_faces=64", "--config.data.n_train_non_faces=64",
    "--config.data.n_test_per_group=8", "--config.data.n_test_non_faces=16",
    "--config.data.image_size=32", "--config.model.n_filters=4", "--config.model.latent_dim=8",
    "--config.batch_size=16", "--config.eval_batch_size=64", "--config.write_report=False",
    "--config.progress_bar=False", "--config.bn_recalibration_batches=0",
)


def _env() -> dict[str, str]:
  return dict(os.environ, PYTHONPATH=str(REPO),
              JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))


def run(script: str, *flags: str, timeout: float = 120) -> subprocess.CompletedProcess:
  """Runs ``experiments/SCRIPT`` with ``flags`` from the repository root."""
  return subprocess.run([sys.executable, f"experiments/{script}", *flags], cwd=REPO, env=_env(),
                        capture_output=True, text=True, timeout=timeout)


def assert_short_error(proc: subprocess.CompletedProcess, *words: str, status: int = 2) -> str:
  """Checks the exit status, at most two stderr lines, no traceback; returns the last line."""
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == status, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  assert 1 <= len(lines) <= 2, proc.stderr[-3000:]
  for word in words:
    assert word in lines[-1], lines[-1]
  return lines[-1]


@pytest.mark.parametrize("flags,words", [
    (["--config.batch_size=abc"], ["--config.batch_size=abc", "an integer"]),
    (["--config.resampling.alhpa=0.01"],
     ["config.resampling.alhpa", "did you mean config.resampling.alpha?"]),
    (["--config.batch_size=7"], ["config.batch_size = 7", "even"]),
    (["--config.resampling.alpha=-1"], ["config.resampling.alpha", ">= 0"]),
    (["batch_size=7"], ["unexpected arguments", "--config.batch_size="]),
    (["--config.model.kind=cnn"], ["config.model", "latent_dim"]),
])
def test_bad_overrides_give_one_line(tmp_path, flags, words):
  proc = run("run.py", "--config=configs/dbvae.py:smoke", f"--workdir={tmp_path / 'w'}", *flags)
  line = assert_short_error(proc, *words)
  assert "\\n" not in line and "--config.resampling.alhpa --" not in line
  assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("config,words", [
    ("configs/dbvae.py:smok", ["--config=configs/dbvae.py:smok", "'smok'", "'smoke'"]),
    ("configs/nope.py", ["--config=configs/nope.py", "No such file"]),
])
def test_bad_config_file_gives_one_line(tmp_path, config, words):
  assert_short_error(run("run.py", f"--config={config}", f"--workdir={tmp_path}"), *words)


def test_missing_config_flag():
  assert_short_error(run("run.py"), "--config")


def _data_run(tmp_path, *flags):
  return run("run.py", "--config=configs/dbvae.py:smoke", f"--workdir={tmp_path / 'w'}",
             *TINY_FLAGS, *flags)


def _write_manifest(tmp_path, rows):
  lines = ["split,path,label,group"] + [",".join(map(str, r)) for r in rows]
  (tmp_path / "manifest.csv").write_text("\n".join(lines) + "\n")
  return tmp_path / "manifest.csv"


def _image(path, seed=0):
  pixels = np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)
  Image.fromarray(pixels).save(path)


def test_missing_manifest(tmp_path):
  proc = _data_run(tmp_path, "--config.data.source=manifest",
                   f"--config.data.path={tmp_path / 'none.csv'}")
  assert_short_error(proc, "none.csv", "not found")


def test_missing_and_corrupt_images(tmp_path):
  _image(tmp_path / "a.png")
  (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
  manifest = _write_manifest(tmp_path, [("train", "a.png", 1, "LF"), ("train", "bad.png", 0, ""),
                                        ("test", "a.png", 1, "LF")])
  proc = _data_run(tmp_path, "--config.data.source=manifest", f"--config.data.path={manifest}")
  assert_short_error(proc, "bad.png", "skip_corrupt")
  manifest = _write_manifest(tmp_path, [("train", "a.png", 1, "LF"), ("train", "gone.png", 0, "")])
  proc = _data_run(tmp_path, "--config.data.source=manifest", f"--config.data.path={manifest}")
  assert_short_error(proc, "gone.png", "not found")


def test_wrong_hdf5_keys(tmp_path):
  path = tmp_path / "faces.h5"
  with h5py.File(path, "w") as f:
    f.create_dataset("x", data=np.zeros((4, 32, 32, 3), np.uint8))
    f.create_dataset("y", data=np.ones(4))
  proc = _data_run(tmp_path, "--config.data.source=h5", f"--config.data.path={path}")
  assert_short_error(proc, "faces.h5", "'images'", "['x', 'y']")


def test_unwritable_workdir(tmp_path):
  (tmp_path / "file").write_text("")
  workdir = tmp_path / "file" / "run"  # below a regular file: cannot be created
  proc = run("run.py", "--config=configs/dbvae.py:smoke", f"--workdir={workdir}", *TINY_FLAGS)
  assert_short_error(proc, "cannot write", str(workdir), "--workdir")


def test_report_on_a_missing_run(tmp_path):
  proc = run("report.py", f"--workdir={tmp_path / 'none'}")
  assert_short_error(proc, str(tmp_path / "none"))


def test_ctrl_c_then_resume_with_another_seed(tmp_path):
  """Ctrl-C names the last checkpoint; another seed on its workdir is refused by name."""
  workdir = tmp_path / "w"
  flags = ("--config=configs/dbvae.py:smoke", f"--workdir={workdir}", *TINY_FLAGS,
           "--config.num_epochs=1", "--config.steps_per_epoch=100000",
           "--config.checkpoint_every_steps=1", "--config.log_every_steps=1")
  proc = subprocess.Popen([sys.executable, "experiments/run.py", *flags], cwd=REPO, env=_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.monotonic() + 240
    while cli.last_checkpoint_step(workdir) is None and proc.poll() is None:
      assert time.monotonic() < deadline, "no checkpoint written"
      time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
  finally:
    proc.kill()
  step = cli.last_checkpoint_step(workdir)
  done = subprocess.CompletedProcess(proc.args, proc.returncode, "", stderr)
  assert done.returncode == cli.EXIT_INTERRUPTED, stderr[-3000:]
  assert "Traceback" not in stderr, stderr[-3000:]
  last = stderr.strip().splitlines()[-1]
  assert last.startswith("interrupted") and f"step {step}" in last and "resumes" in last, last

  again = run("run.py", *flags, "--config.seed=1")
  assert_short_error(again, "seed", "checkpoint has 0", "config has 1")


# ------------------------------------------------------------------------------ in process


def _checkpoints(tmp_path, *names):
  for name in names:
    (tmp_path / "checkpoints" / name).mkdir(parents=True)
  return tmp_path


def test_last_checkpoint_step_ignores_unfinished_saves(tmp_path):
  assert cli.last_checkpoint_step(tmp_path) is None
  _checkpoints(tmp_path, "4", "8", "12.orbax-checkpoint-tmp-3")
  (tmp_path / "checkpoints" / "16").write_text("")  # a file, not a checkpoint
  assert cli.last_checkpoint_step(tmp_path) == 8


def test_disk_full_names_workdir_and_kept_checkpoint(tmp_path, capsys):
  workdir = _checkpoints(tmp_path, "4", "8")
  full = OSError(errno.ENOSPC, "No space left on device", str(workdir / "metrics.jsonl"))
  with pytest.raises(SystemExit) as exit_info:
    with cli.exit_on_error(workdir=workdir):
      try:
        raise full
      except OSError as err:
        raise RuntimeError("async save failed") from err  # as a checkpointer may wrap it
  assert exit_info.value.code == cli.EXIT_FAILURE
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1
  assert "no space left" in lines[0] and str(workdir) in lines[0]
  assert "step 8" in lines[0] and "kept" in lines[0]


def test_disk_full_quoted_by_another_exception(tmp_path):
  err = RuntimeError("save failed: [Errno 28] No space left on device: '/x'")
  message, status = cli.error_message(err, _checkpoints(tmp_path, "3"))
  assert status == cli.EXIT_FAILURE and "no space left" in message and "step 3" in message


def test_permission_error_names_path_and_workdir(tmp_path):
  err = PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "config.json"))
  message, status = cli.error_message(err, tmp_path)
  assert status == cli.EXIT_USAGE
  assert str(tmp_path / "config.json") in message and "permission denied" in message
  assert f"--workdir={tmp_path}" in message


def test_unexpected_errors_keep_their_traceback():
  assert cli.error_message(TypeError("a bug")) is None
  with pytest.raises(TypeError, match="a bug"):
    with cli.exit_on_error():
      raise TypeError("a bug")


def test_unknown_field_message_suggests_closest(tmp_path):
  from jaxface import config as config_lib
  schema = config_lib.get_base_config()
  assert cli.unknown_field_message("resampling.alpha", schema) is None
  assert "did you mean config.resampling.alpha?" in cli.unknown_field_message(
      "resampling.alhpa", schema)
  assert cli.unknown_field_message("seed.x", schema) == (
      "config.seed is a value, not a group of fields")
  assert "did you mean" not in cli.unknown_field_message("zzzzzz", schema)


# ------------------------------------------------------------------------------ config


@pytest.mark.parametrize("kind,overrides,words", [
    ("cnn", {"model.latent_dim": 8}, ["config.model.latent_dim = 8", "'cnn'"]),
    ("ssvae", {"model.latent_dim": 0}, ["config.model.latent_dim = 0", "'ssvae'"]),
    ("dbvae", {"model.latent_dim": 0}, ["config.model.latent_dim = 0", "'dbvae'"]),
    ("ssvae", {"resampling.signal": "latent"}, ["config.resampling.signal = 'latent'", "'ssvae'"]),
    ("dbvae", {"resampling.signal": "none"}, ["config.resampling.signal = 'none'", "'dbvae'"]),
])
def test_model_kind_must_agree_with_latent_dim_and_signal(kind, overrides, words):
  from helpers import tiny_config

  from jaxface import config as config_lib
  config_lib.validate_config(tiny_config(kind), 1)
  with pytest.raises(ValueError) as err:
    config_lib.validate_config(tiny_config(kind, **overrides), 1)
  for word in words:
    assert word in str(err.value)


# ------------------------------------------------------------------------------ logging, threads


def test_finish_background_work_waits_for_saves_not_pool_workers():
  import threading
  saved, release = threading.Event(), threading.Event()
  save = threading.Thread(target=lambda: (time.sleep(0.3), saved.set()), name="save_finalize")
  idle_worker = threading.Thread(target=release.wait, name="metadata_store_0")
  save.start()
  idle_worker.start()
  try:
    start = time.monotonic()
    cli.finish_background_work(timeout_s=30)
    assert saved.is_set() and time.monotonic() - start < 10
  finally:
    release.set()
    idle_worker.join()


def test_log_filter_keeps_own_info_and_everyone_s_warnings():
  import logging

  own = REPO / "jaxface" / "train.py"
  keep = cli._OwnInfoOnly([REPO / "jaxface"])  # noqa: SLF001

  def record(path, level, exc=None):
    exc_info = None if exc is None else (type(exc), exc, None)
    return logging.LogRecord("absl", level, str(path), 1, "m", None, exc_info)

  assert keep.filter(record(own, logging.INFO))
  assert not keep.filter(record("/site-packages/orbax/checkpoint/x.py", logging.INFO))
  assert not keep.filter(record("/site-packages/jax/_src/xla_bridge.py", logging.INFO))
  assert keep.filter(record("/site-packages/orbax/x.py", logging.WARNING))
  assert keep.filter(record("/site-packages/orbax/x.py", logging.ERROR, ValueError("e")))
  assert not keep.filter(record("/site-packages/orbax/x.py", logging.ERROR, KeyboardInterrupt()))
