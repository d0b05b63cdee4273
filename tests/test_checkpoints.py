"""Checkpoints and run directories: corrupt checkpoints, read-only reading, the metrics log."""

from __future__ import annotations

import json
import logging
import shutil
import stat
from pathlib import Path

import jax
import numpy as np
import pytest
from absl import logging as absl_logging

from jaxface import checkpoints, train

from helpers import tiny_config

# 2 epochs of 6 steps; checkpoints at steps 4, 6 (epoch end), 8 and 12; the CNN with
# group-balanced resampling logs a resampling line at every epoch start (steps 0 and 6).
CONFIG = dict(kind="cnn", **{"resampling.signal": "groups"})


def _config():
  kind = CONFIG["kind"]
  return tiny_config(kind, **{k: v for k, v in CONFIG.items() if k != "kind"})


def flat(variables) -> np.ndarray:
  return np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree.leaves(variables)])


def metric_lines(workdir: Path) -> list[dict]:
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  """An uninterrupted run: its result and its run directory."""
  workdir = tmp_path_factory.mktemp("full") / "run"
  return train.train_and_evaluate(_config(), workdir)


def _same_run(result: train.TrainResult, full: train.TrainResult) -> None:
  assert result.metrics["steps"] == full.metrics["steps"] == 12
  np.testing.assert_allclose(flat(result.variables), flat(full.variables), rtol=1e-6, atol=1e-7)
  got, want = result.metrics["eval"], full.metrics["eval"]
  assert got["val_accuracy"] == want["val_accuracy"]
  assert (got["test"]["E_A"], got["test"]["Var_A"]) == pytest.approx(
      (want["test"]["E_A"], want["test"]["Var_A"]))
  _, from_disk = checkpoints.load_run(result.workdir)
  np.testing.assert_allclose(flat(from_disk), flat(full.variables), rtol=1e-6, atol=1e-7)


def _remove_meta_metadata(step_dir: Path) -> None:
  (step_dir / "meta" / "metadata").unlink()


def _truncate_state_file(step_dir: Path) -> None:
  largest = max((p for p in (step_dir / "state").rglob("*") if p.is_file()),
                key=lambda p: p.stat().st_size)
  largest.write_bytes(largest.read_bytes()[:largest.stat().st_size // 2])


@pytest.mark.parametrize("corrupt", [_remove_meta_metadata, _truncate_state_file],
                         ids=["missing-meta-metadata", "truncated-state-file"])
def test_a_corrupt_latest_checkpoint_is_set_aside_and_the_run_finishes(tmp_path, uninterrupted,
                                                                       corrupt, caplog):
  workdir = tmp_path / "run"
  train.train_and_evaluate(_config(), workdir, stop_at_step=9)  # checkpoints 4, 6 and 8
  corrupt(workdir / "checkpoints" / "8")
  with caplog.at_level(logging.WARNING):
    result = train.train_and_evaluate(_config(), workdir)  # from step 6, saving 8 again
  _same_run(result, uninterrupted)
  warned = [r.getMessage() for r in caplog.records if "could not be restored" in r.getMessage()]
  assert len(warned) == 1 and "\n" not in warned[0], warned
  assert "step 8" in warned[0] and str(workdir / "checkpoints" / "corrupt" / "8") in warned[0]
  assert (workdir / "checkpoints" / "corrupt" / "8").is_dir()
  assert (workdir / "checkpoints" / "8").is_dir()  # written again by the resumed run
  # A second run on the same directory (nothing left to set aside) finds the finished run.
  again = train.train_and_evaluate(_config(), workdir)
  assert again.metrics["steps"] == 12


def _listing(root: Path) -> dict[str, tuple[int, int]]:
  """Every path under ``root`` with its size and modification time (ns)."""
  return {str(p.relative_to(root)): (p.stat().st_size if p.is_file() else -1,
                                     p.stat().st_mtime_ns)
          for p in sorted(root.rglob("*"))}


def test_load_run_leaves_a_running_run_untouched(tmp_path, uninterrupted, caplog):
  workdir = tmp_path / "run"
  shutil.copytree(uninterrupted.workdir, workdir)
  # A save in progress: Orbax writes a step under a temporary name and renames it when done.
  in_progress = workdir / "checkpoints" / "16.orbax-checkpoint-tmp-1764000000000000"
  (in_progress / "state").mkdir(parents=True)
  (in_progress / "state" / "_METADATA").write_text("{}")
  before = _listing(workdir)
  absl_logging.set_verbosity(absl_logging.INFO)
  try:
    with caplog.at_level(logging.INFO):
      config, variables = checkpoints.load_run(workdir)
  finally:
    absl_logging.set_verbosity(absl_logging.WARNING)
  assert _listing(workdir) == before
  assert config.model.kind == "cnn"
  np.testing.assert_allclose(flat(variables), flat(uninterrupted.variables))  # step 12
  orbax_info = [r.getMessage() for r in caplog.records
                if "/orbax/" in r.pathname and r.levelno < logging.WARNING]
  assert not orbax_info, orbax_info[:3]


def test_load_run_reads_a_read_only_copy(tmp_path, uninterrupted):
  workdir = tmp_path / "run"
  shutil.copytree(uninterrupted.workdir, workdir)
  paths = [workdir, *workdir.rglob("*")]
  for p in paths:
    p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
  before = _listing(workdir)  # as root the copy stays writable: then nothing is written to it
  try:
    _, variables = checkpoints.load_run(workdir)
    assert _listing(workdir) == before
  finally:
    for p in paths:
      p.chmod(p.stat().st_mode | stat.S_IWUSR)
  np.testing.assert_allclose(flat(variables), flat(uninterrupted.variables))


def test_rewound_lines_keep_one_line_per_step_and_kind():
  def line(step, kind, **extra):
    return json.dumps({"step": step, "kind": kind, **extra})

  lines = [line(0, "resampling"), line(2, "train"), line(4, "train"), line(6, "train"),
           line(6, "eval"), line(6, "resampling"), line(8, "train"), line(8, "train"),
           json.dumps({"step": 6, "resampling_ess_fraction": 0.5})]  # a line written without kind
  kept = [json.loads(text) for text in train.rewound_lines(lines, 6, ("resampling",))]
  assert [(d["step"], train.line_kind(d)) for d in kept] == [
      (0, "resampling"), (2, "train"), (4, "train"), (6, "train"), (6, "eval")]
  kept = [json.loads(text) for text in train.rewound_lines(lines, 8, ())]
  assert [(d["step"], d["kind"]) for d in kept][-3:] == [(6, "eval"), (6, "resampling"),
                                                         (8, "train")]


def test_metrics_log_has_one_line_per_step_and_kind_after_kills(tmp_path, uninterrupted):
  workdir = tmp_path / "run"
  # 1: before any checkpoint (the next start is fresh); 7: after the epoch-1 resampling line,
  # before the next logged step; 9: mid-epoch, after the checkpoint at 8; 12: the last step,
  # before the epoch-end evaluation and checkpoint.
  for stop in (1, 7, 9, 12):
    assert train.train_and_evaluate(_config(), workdir, stop_at_step=stop).metrics == {
        "stopped_at_step": stop}
  result = train.train_and_evaluate(_config(), workdir)
  _same_run(result, uninterrupted)
  got, want = metric_lines(workdir), metric_lines(uninterrupted.workdir)
  keys = [(d["step"], d["kind"]) for d in got]
  assert len(keys) == len(set(keys)), keys
  assert keys == [(d["step"], d["kind"]) for d in want]
  assert ("resampling" in {k for _, k in keys}) and keys.count((6, "resampling")) == 1
  for a, b in zip(got, want):
    assert set(a) == set(b)
    for field in set(a) - {"kind", "images_per_s"}:
      assert a[field] == pytest.approx(b[field], rel=1e-5), (field, a, b)


def test_ctrl_c_during_checkpoint_io_is_held_until_it_ends():
  import os
  import signal

  from jaxface.checkpoints import sigint_deferred
  # Python's own handler, as in an interactive run (a shell's background job starts with
  # SIGINT ignored).
  outer = signal.signal(signal.SIGINT, signal.default_int_handler)
  try:
    finished = []
    with pytest.raises(KeyboardInterrupt):
      with sigint_deferred():
        os.kill(os.getpid(), signal.SIGINT)
        finished.append(True)  # reached: the interrupt waited for the block
    assert finished == [True]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
  finally:
    signal.signal(signal.SIGINT, outer)


def test_augment_identity_of_runs_before_and_after_non_face_scale_min():
  from jaxface import config as config_lib

  key = jax.random.key(0)
  before = config_lib.get_base_config()
  before.augment.unlock()
  del before.augment["non_face_scale_min"]  # a run written before the field existed
  identity = checkpoints.run_identity(before, 10, 100, key)
  config = config_lib.get_base_config()
  for no_effect in (0.0, config.augment.scale_min, 1.0):  # the same draws as before
    config.augment.non_face_scale_min = no_effect
    assert checkpoints.run_identity(config, 10, 100, key) == identity
  config.augment.non_face_scale_min = 0.5
  changed = checkpoints.run_identity(config, 10, 100, key)
  assert changed["augment"]["non_face_scale_min"] == 0.5
  with pytest.raises(ValueError, match="augment: checkpoint has"):
    checkpoints.check_resume(identity, changed, "/ckpt")


def test_identity_of_runs_before_the_exposure_and_input_norm_fields():
  from jaxface import config as config_lib

  key = jax.random.key(0)
  before = config_lib.get_base_config()
  before.augment.unlock()
  del before.augment["exposure_min"], before.augment["exposure_max"]
  meta = checkpoints.run_identity(before, 10, 100, key)
  del meta["model.input_norm"]  # a checkpoint written before the field: not compared
  config = config_lib.get_base_config()
  checkpoints.check_resume(meta, checkpoints.run_identity(config, 10, 100, key), "/ckpt")
  config.augment.exposure_min = 0.5
  with pytest.raises(ValueError, match="augment: checkpoint has"):
    checkpoints.check_resume(meta, checkpoints.run_identity(config, 10, 100, key), "/ckpt")
  plain = checkpoints.run_identity(config_lib.get_base_config(), 10, 100, key)
  config = config_lib.get_base_config()
  config.model.input_norm = True
  with pytest.raises(ValueError, match="model.input_norm: checkpoint has False"):
    checkpoints.check_resume(plain, checkpoints.run_identity(config, 10, 100, key), "/ckpt")
