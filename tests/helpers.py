"""Helpers shared by the test modules (pytest puts this folder on ``sys.path``)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from jaxface import config as config_lib

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
  """The shared data folder: ``$JAXFACE_SHARED_DATA``, else ``../shared/data`` beside the repo.

  Tests that need a data set in it skip when the set is missing.
  """
  return load_experiment("shared_paths", "shared_paths").shared_data_root()


def tiny_config(kind: str = "dbvae", **overrides):
  """A config that trains in seconds: 32x32 images, a few steps, small sets."""
  config = config_lib.get_base_config()
  config.name = kind
  config.model.kind = kind
  config.model.latent_dim = {"cnn": 0, "ssvae": 8, "dbvae": 16}[kind]
  config.model.n_filters = 4
  config.resampling.signal = "latent" if kind == "dbvae" else "none"
  config.data.image_size = 32
  config.data.n_train_faces = 96
  config.data.n_train_non_faces = 96
  config.data.n_test_per_group = 8
  config.data.n_test_non_faces = 32
  config.batch_size = 16
  config.num_epochs = 2
  config.steps_per_epoch = 6
  config.log_every_steps = 2
  config.checkpoint_every_steps = 4
  config.eval_batch_size = 64
  config.progress_bar = False
  config.write_report = False
  for key, value in overrides.items():
    target = config
    *parents, leaf = key.split(".")
    for p in parents:
      target = target[p]
    target[leaf] = value
  return config


# XLA:CPU flags of the test session (tests/conftest.py): faster compiles of small programs.
FAST_COMPILE_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def forced_devices_flags(n: int) -> str:
  """``XLA_FLAGS`` for a subprocess on ``n`` forced CPU devices, at XLA's default optimisation."""
  flags = os.environ.get("XLA_FLAGS", "").replace(FAST_COMPILE_FLAGS, "")
  return f"{flags} --xla_force_host_platform_device_count={n}".strip()


def run_on_four_devices(script: str, timeout: int = 600) -> dict:
  """Runs a Python script on 4 forced CPU devices; returns the JSON it prints after 'RESULT'."""
  env = dict(os.environ, XLA_FLAGS=forced_devices_flags(4), JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                        timeout=timeout)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.split("RESULT", 1)[1])


def assert_one_and_four_devices_agree(result: dict) -> None:
  """Checks the '1' and '4' runs of a :func:`run_on_four_devices` result: the same number of
  logged losses, losses and the first parameters within float32 reduction-order noise, and
  validation accuracies within 2 points."""
  one, four = result["1"], result["4"]
  assert len(one["losses"]) == len(four["losses"]) > 0
  np.testing.assert_allclose(four["losses"], one["losses"], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(four["params"], one["params"], rtol=1e-3, atol=1e-5)
  if "acc" in one:
    assert abs(four["acc"] - one["acc"]) < 0.02


def load_experiment(name: str, module_name: str):
  """Imports ``experiments/<name>.py`` as ``module_name`` (registered in ``sys.modules``)."""
  import importlib.util
  spec = importlib.util.spec_from_file_location(module_name, REPO / "experiments" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  sys.modules[module_name] = module
  spec.loader.exec_module(module)
  return module


def report_of_two_runs(tmp_path: Path, config, other):
  """Trains ``config`` in ``tmp_path/run`` and ``other`` in ``tmp_path/run_other``, then writes
  the report of the first compared with the second; returns (the first's TrainResult, index)."""
  from jaxface import data, report, train
  datasets = data.load_datasets(config.data)
  result = train.train_and_evaluate(config, tmp_path / "run", datasets)
  train.train_and_evaluate(other, tmp_path / "run_other")
  index = report.write_report(tmp_path / "run", compare=[tmp_path / "run_other"],
                              datasets=datasets)
  return result, index


def last_checkpoint(workdir: Path, config, n_faces: int):
  """A run's latest checkpoint as ``(flat parameters, face probabilities, meta)``."""
  import jax
  import numpy as np

  from jaxface import checkpoints, train

  ckpts = checkpoints.Checkpoints(Path(workdir) / "checkpoints", keep=config.keep_checkpoints)
  abstract = jax.eval_shape(lambda: train.create_train_state(
      jax.random.key(0), config, train.make_optimizer(config)))
  state, probs, meta = ckpts.restore_latest(abstract, n_faces)
  ckpts.close()
  return np.concatenate([np.ravel(x) for x in jax.tree.leaves(state.params)]), probs, meta
