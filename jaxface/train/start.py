"""A run's start: devices, data, train state and step, and the resume from a checkpoint.

:func:`start_run` returns the parts that stay fixed through the run (:class:`Run`) and where
the run starts (:class:`Position`): step 0, or the latest readable checkpoint of the run
directory, after checking the run's identity against the checkpoint's.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxface import checkpoints
from jaxface import config as config_lib
from jaxface import data as data_lib
from jaxface import hard_negatives, resampling
from jaxface.eval import whole_photos
from jaxface.sharding import make_mesh, replicate
from jaxface.train.metric_log import MetricWriter
from jaxface.train.state import TrainState, create_train_state, make_optimizer
from jaxface.train.step import make_train_step


@dataclasses.dataclass
class Position:
  """Where a run is: its state, the epoch and the step in it, and the history so far.

  Attributes:
    state: the train state (replicated on the mesh).
    epoch: the current epoch.
    step_in_epoch: steps of ``epoch`` taken.
    history: ``{'epochs': [evaluation per epoch], 'resampling': [pass summary per epoch]}``.
  """
  state: TrainState
  epoch: int
  step_in_epoch: int
  history: dict[str, list[dict[str, Any]]]


class Run(NamedTuple):
  """The parts of a run that stay fixed from its start to its end.

  Attributes:
    config: the run config.
    workdir: the absolute run directory.
    mesh: the device mesh.
    is_main: whether this process writes the run's files (process 0).
    datasets: the data sets (:func:`jaxface.data.load_datasets`).
    whole_image_sets: the whole-photo test sets, or None.
    train_faces: the training faces (resampled at every epoch start).
    batcher: the training batches.
    step_fn: the jitted train step ``(state, batch, key) -> (state, metrics)``.
    step_key: the run's base step key (replicated).
    checkpoints: the run's checkpoints.
    identity: :func:`jaxface.checkpoints.run_identity` of the run.
    writer: the metric log.
    mining_photos: the photos of the hard-negative rounds (:mod:`jaxface.hard_negatives`).
    mined_rounds: the rounds whose crops ``datasets['train']`` and ``batcher`` hold.
  """
  config: ml_collections.ConfigDict
  workdir: Path
  mesh: Mesh
  is_main: bool
  datasets: dict[str, data_lib.FaceData]
  whole_image_sets: Any
  train_faces: data_lib.FaceData
  batcher: data_lib.Batcher
  step_fn: Callable[..., Any]
  step_key: jax.Array
  checkpoints: checkpoints.Checkpoints
  identity: dict[str, Any]
  writer: MetricWriter
  mining_photos: tuple[Path, ...] = ()
  mined_rounds: int = 0

  def save(self, position: Position) -> None:
    """Checkpoints ``position`` with the batcher's face probabilities and the run identity."""
    self.checkpoints.save(position.state, self.batcher.face_probabilities,
                          {"epoch": position.epoch, "step_in_epoch": position.step_in_epoch,
                           "history": position.history, **self.identity})


def _devices_and_workdir(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
                         mesh: Mesh | None) -> tuple[Mesh, Path, bool]:
  """Starts JAX (multi-host if configured), checks the config, creates the run directory."""
  if config.get("distributed", False) and not jax.distributed.is_initialized():
    jax.distributed.initialize()
  mesh = make_mesh() if mesh is None else mesh
  config_lib.validate_config(config, mesh.devices.size)
  workdir = Path(workdir).absolute()
  is_main = jax.process_index() == 0
  if is_main:
    workdir.mkdir(parents=True, exist_ok=True)
  logging.info("devices: %d x %s; mesh %s", mesh.devices.size, jax.devices()[0].platform,
               dict(mesh.shape))
  return mesh, workdir, is_main


def _training_faces(config: ml_collections.ConfigDict,
                    train_data: data_lib.FaceData) -> data_lib.FaceData:
  """The training faces; with signal 'groups', unlabelled faces fail here, before any compile."""
  train_faces = train_data.subset(train_data.face_indices())
  if config.resampling.signal == "groups":
    try:
      resampling.group_balanced_probabilities(train_faces.groups, config.resampling.group_power)
    except ValueError as err:
      raise ValueError(f"config.resampling.signal = 'groups': {err}") from None
  return train_faces


def _restore(ckpts: checkpoints.Checkpoints, abstract_state: TrainState, n_train_faces: int,
             identity: dict[str, Any]) -> tuple[TrainState, np.ndarray, dict[str, Any]] | None:
  """The latest readable checkpoint ``(state, face probabilities, meta)``, or None.

  The checkpoint's run identity is checked before its state is read: a run with other settings
  raises ValueError (and closes ``ckpts``).
  """
  try:
    restored = ckpts.restore_latest(
        abstract_state, n_train_faces,
        check_meta=functools.partial(checkpoints.check_resume, current=identity,
                                     checkpoint_dir=ckpts.directory))
  except ValueError:
    ckpts.close()
    raise
  missing = [] if restored is None else [f for f in identity if f not in restored[2]]
  if missing:
    logging.warning("the checkpoint in %s predates run-identity checks (it lacks %s): resuming "
                    "without checking that these settings match", ckpts.directory,
                    ", ".join(missing))
  return restored


def _write_run_files(workdir: Path, config: ml_collections.ConfigDict, n_train_faces: int,
                     n_train: int, steps_per_epoch: int, mesh: Mesh) -> None:
  """``config.json`` and ``run_info.json`` (rewritten by a resumed run)."""
  (workdir / "config.json").write_text(config.to_json(indent=2))
  (workdir / "run_info.json").write_text(json.dumps({
      "n_train_faces": n_train_faces, "n_train": n_train, "steps_per_epoch": steps_per_epoch,
      "devices": int(mesh.devices.size), "platform": jax.devices()[0].platform}, indent=2))


def _start_position(run: Run,
                    restored: tuple[TrainState, np.ndarray, dict[str, Any]] | None,
                    init_key: jax.Array, optimizer: optax.GradientTransformation) -> Position:
  """Step 0 of a fresh run, or the restored checkpoint's position (the log rewound to it)."""
  config = run.config
  if restored is None:
    state = jax.jit(lambda key: create_train_state(key, config, optimizer),
                    out_shardings=NamedSharding(run.mesh, P()))(init_key)
    run.batcher.set_face_probabilities(None)
    run.writer.reset()
    return Position(state, 0, 0, {"epochs": [], "resampling": []})
  state, probs, meta = restored
  state = replicate(run.mesh, state)
  # Without resampling the batcher samples uniformly (None); the checkpoint's uniform
  # probabilities would switch it to its weighted sampler and draw other batches.
  run.batcher.set_face_probabilities(None if config.resampling.signal == "none" else probs)
  run.writer.rewind(int(jax.device_get(state.step)))
  logging.info("resuming from step %d (epoch %d, step %d of the epoch)",
               int(jax.device_get(state.step)), meta["epoch"], meta["step_in_epoch"])
  return Position(state, meta["epoch"], meta["step_in_epoch"], meta["history"])


def start_run(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
              datasets: dict[str, data_lib.FaceData] | None = None,
              mesh: Mesh | None = None) -> tuple[Run, Position]:
  """Sets a run up and finds where it starts (see :func:`jaxface.train.train_and_evaluate`).

  Args:
    config: the run config (validated here).
    workdir: the run directory (created if needed).
    datasets: the data sets of ``config.data`` (:func:`jaxface.data.load_datasets`); None
      loads them.
    mesh: the device mesh (default: a ``data`` axis over every device).

  Returns:
    The run and its starting position.
  """
  mesh, workdir, is_main = _devices_and_workdir(config, workdir, mesh)
  datasets = data_lib.load_datasets(config.data) if datasets is None else datasets
  whole_image_sets = whole_photos.load_whole_image_sets(
      config.whole_images, config.data.image_size, taken=datasets)
  mining_photos = tuple(hard_negatives.mining_photos(config))
  train_faces = _training_faces(config, datasets["train"])
  # The batches do not depend on the device count; the step splits each half over the devices
  # and its loss, batch-norm statistics and latent noise do not depend on how, so runs on 1 and
  # on N devices take the same steps.
  batcher = data_lib.Batcher(datasets["train"], config.batch_size, seed=config.seed,
                             num_devices=mesh.devices.size,
                             steps_per_epoch=(None if config.steps_per_epoch == -1
                                              else config.steps_per_epoch))
  steps_per_epoch = batcher.steps_per_epoch
  optimizer = make_optimizer(config, steps_per_epoch * hard_negatives.total_epochs(config))
  init_key, step_key = jax.random.split(jax.random.key(config.seed))
  n_faces = len(train_faces)
  identity = checkpoints.run_identity(config, steps_per_epoch, n_faces, step_key)
  abstract_state = jax.eval_shape(lambda: create_train_state(init_key, config, optimizer))
  step_fn = make_train_step(config, optimizer, mesh)
  # The identity is checked before config.json is rewritten: a run with other settings fails
  # here and leaves the workdir as it was.
  ckpts = checkpoints.Checkpoints(workdir / "checkpoints", config.keep_checkpoints)
  restored = _restore(ckpts, abstract_state, n_faces, identity)
  meta = {} if restored is None else restored[2]
  if "step_key" in meta:  # the checkpoint's key (checked equal to the re-derived one)
    step_key = jax.random.wrap_key_data(np.asarray(meta["step_key"], np.uint32).reshape(
        jax.random.key_data(step_key).shape))
  if is_main:
    _write_run_files(workdir, config, n_faces, len(datasets["train"]), steps_per_epoch, mesh)
  run = Run(config, workdir, mesh, is_main, datasets, whole_image_sets, train_faces, batcher,
            step_fn, replicate(mesh, step_key), ckpts, identity, MetricWriter(workdir, is_main),
            mining_photos)
  return run, _start_position(run, restored, init_key, optimizer)
