"""Checkpoints of a training run, the run's identity, and reading a finished or running run.

A run directory ``WORKDIR`` holds ``config.json``, ``run_info.json`` and Orbax checkpoints under
``WORKDIR/checkpoints/<step>``, each with three items: ``state`` (the train state), ``probs``
(the batcher's face probabilities) and ``meta`` (epoch, step within the epoch, per-epoch
history and the :func:`run_identity` fields). :class:`Checkpoints` is the training side (it
writes, and moves a checkpoint that cannot be restored aside to
``WORKDIR/checkpoints/corrupt/<step>``); :func:`load_run` is the reading side and never writes
to the run directory, so it can read a run that is still training.
"""

from __future__ import annotations

import contextlib
import json
import logging as py_logging
import os
import shutil
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from jaxface import augment, hard_negatives

PyTree = Any
CORRUPT_DIR = "corrupt"
ITEMS = ("state", "probs", "meta")


# --------------------------------------------------------------------------------------------
# Run identity
# --------------------------------------------------------------------------------------------


def run_identity(config: ml_collections.ConfigDict, steps_per_epoch: int, n_train_faces: int,
                 step_key: jax.Array) -> dict[str, Any]:
  """What a resumed run must share with the run that wrote the checkpoint (JSON-ready).

  The augmentation settings are part of it, and with hard-negative rounds their settings but
  ``rounds`` and ``photos`` (a run without rounds has no such field, so older runs resume).
  ``num_epochs`` is not, so a finished run may be resumed with more epochs (or rounds), except
  on a learning-rate schedule that spans the run (``lr_schedule`` other than 'constant'):
  ``schedule_steps`` is then its length, hard-negative epochs included (0 for a constant rate).

  Args:
    config: the run config.
    steps_per_epoch: the resolved number of steps per epoch.
    n_train_faces: the number of training faces (after the validation split).
    step_key: the run's base step key (host or replicated).

  Returns:
    A flat dict keyed by field name; ``step_key`` is ``jax.random.key_data`` as a list.
  """
  identity = {
      "seed": int(config.seed),
      "batch_size": int(config.batch_size),
      "steps_per_epoch": int(steps_per_epoch),
      "model.kind": str(config.model.kind),
      "model.latent_dim": int(config.model.latent_dim),
      "model.n_filters": int(config.model.n_filters),
      "model.input_norm": bool(config.model.get("input_norm", False)),
      "data.image_size": int(config.data.image_size),
      "n_train_faces": int(n_train_faces),
      "augment": _augment_identity(config),
      "lr_schedule": str(config.get("lr_schedule", "constant")),
      "schedule_steps": (0 if config.get("lr_schedule", "constant") == "constant"
                         else int(steps_per_epoch) * hard_negatives.total_epochs(config)),
      "step_key": np.asarray(jax.device_get(jax.random.key_data(step_key))).ravel().tolist(),
  }
  hn = config.get("hard_negatives")
  if hn is not None and hn.get("rounds", 0):
    identity["hard_negatives"] = {key: int(hn[key]) for key in
                                  ("windows_per_round", "windows_per_photo", "epochs_per_round")}
  return identity


def _augment_identity(config: ml_collections.ConfigDict) -> dict[str, Any] | bool:
  """The augmentation settings a resumed run must share (False when augmentation is off).

  ``non_face_scale_min`` is left out where it changes nothing (0, or at or above
  ``scale_min``), and the exposure range where it is 1, 1, so a run written before these
  fields existed (with its augmentation) still resumes.
  """
  aug = config.get("augment")
  if aug is None or not aug.get("enabled", False):
    return False
  identity = {key: aug[key] for key in sorted(aug.keys())}
  if augment.non_face_scale_min(aug) == aug.scale_min:
    identity.pop("non_face_scale_min", None)
  if augment.exposure_range(aug) == (1.0, 1.0):
    identity.pop("exposure_min", None)
    identity.pop("exposure_max", None)
  return identity


def check_resume(meta: dict[str, Any], current: dict[str, Any],
                 checkpoint_dir: str | os.PathLike) -> None:
  """Raises ValueError when a checkpoint's run identity differs from the current run's.

  Fields the checkpoint lacks (one written before these checks) are not compared.

  Args:
    meta: the checkpoint's meta (run-identity fields at its top level).
    current: :func:`run_identity` of the current run.
    checkpoint_dir: the checkpoint directory (for the message).
  """
  differ = [field for field, value in current.items() if field in meta and meta[field] != value]
  if "seed" in differ and "step_key" in differ:
    differ.remove("step_key")  # another seed gives another key: name the cause only
  mismatches = [f"{field}: checkpoint has {meta[field]!r}, config has {current[field]!r}"
                for field in differ]
  if mismatches:
    hint = (" (the same seed gave another PRNG key: a different JAX version or PRNG "
            "implementation)" if "step_key" in differ else "")
    raise ValueError(
        f"cannot resume from the checkpoints in {checkpoint_dir}: the run that wrote them "
        f"differs from this one in {'; '.join(mismatches)}{hint}. Use a fresh --workdir for "
        "the new settings, or run again with the checkpoint's values to resume.")


# --------------------------------------------------------------------------------------------
# Writing: the trainer's checkpoints
# --------------------------------------------------------------------------------------------


def _first_line(err: Exception) -> str:
  text = str(err).strip()
  return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"


def _sync(name: str) -> None:
  """A barrier over every process of a multi-process run; nothing on one process."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def move_aside(directory: Path, step: int) -> Path:
  """Moves the checkpoint of ``step`` to ``directory/corrupt/<step>`` (``<step>.N`` if taken).

  Args:
    directory: the checkpoint directory.
    step: the step whose checkpoint directory ``directory/<step>`` is moved.

  Returns:
    The new path.
  """
  target = directory / CORRUPT_DIR / str(step)
  n = 0
  while target.exists():
    n += 1
    target = directory / CORRUPT_DIR / f"{step}.{n}"
  target.parent.mkdir(parents=True, exist_ok=True)
  shutil.move(str(directory / str(step)), str(target))
  return target


@contextlib.contextmanager
def sigint_deferred() -> Iterator[None]:
  """Holds back Ctrl-C (SIGINT) until the block ends, then raises KeyboardInterrupt.

  A KeyboardInterrupt raised inside an Orbax save or wait can leave Orbax's writer threads
  waiting on each other, so the process never exits; checkpoint I/O runs in this block.
  Off the main thread (where no handler can be set) the block runs as it is.
  """
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  received = []
  previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
  try:
    yield
  finally:
    signal.signal(signal.SIGINT, previous)
  if received:
    raise KeyboardInterrupt


class Checkpoints:
  """The trainer's Orbax checkpoints (every process of a run creates one).

  Args:
    directory: the checkpoint directory (created).
    keep: the number of checkpoints kept.
  """

  def __init__(self, directory: str | os.PathLike, keep: int):
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           cleanup_tmp_directories=True,
                                           enable_async_checkpointing=False)
    self.directory = Path(directory).absolute()
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

  def save(self, state: PyTree, probs: np.ndarray, meta: dict[str, Any]) -> None:
    """Saves the state, the face probabilities and the meta at the state's step.

    Saves are synchronous and hold Ctrl-C back until they end (:func:`sigint_deferred`): an
    interrupt during Orbax's asynchronous writes could leave its threads waiting on each other.

    Args:
      state: the TrainState (its ``step`` names the checkpoint).
      probs: (n_faces,) face probabilities.
      meta: JSON-ready loop position, history and run identity.
    """
    # A host copy: the device buffers are donated to the next step while Orbax writes.
    host_state = jax.device_get(state)
    step = int(host_state.step)
    with sigint_deferred():
      self.manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(host_state),
          probs=ocp.args.StandardSave({"face_probs": np.asarray(probs, np.float64)}),
          meta=ocp.args.JsonSave(meta)), force=True)

  def restore_latest(self, abstract_state: PyTree, n_faces: int,
                     check_meta: Callable[[dict[str, Any]], Any] | None = None,
                     ) -> tuple[PyTree, np.ndarray, dict[str, Any]] | None:
    """The newest readable checkpoint as ``(state, probs, meta)``, or None when there is none.

    A checkpoint that fails to restore (corrupt or partial) is moved to
    ``corrupt/<step>`` with one warning line, and the previous one is tried: the run then
    writes that step again as if it had never been saved.

    Args:
      abstract_state: the TrainState's shapes and dtypes.
      n_faces: the length of the face probabilities.
      check_meta: called with each checkpoint's meta before its state is read; the errors it
        raises (e.g. :func:`check_resume`'s ValueError) are not caught.

    Returns:
      The restored state (host arrays), (n_faces,) float64 probabilities and the meta.
    """
    abstract_probs = {"face_probs": jax.ShapeDtypeStruct((n_faces,), np.float64)}
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        meta = self.manager.restore(step, args=ocp.args.Composite(
            meta=ocp.args.JsonRestore())).meta
      except Exception as err:  # noqa: BLE001 -- any failure means: try the previous one
        self._set_aside(step, err)
        continue
      if check_meta is not None:
        check_meta(meta)
      try:
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            probs=ocp.args.StandardRestore(abstract_probs)))
        return restored.state, np.asarray(restored.probs["face_probs"]), meta
      except Exception as err:  # noqa: BLE001
        self._set_aside(step, err)
    return None

  def _set_aside(self, step: int, err: Exception) -> None:
    """Moves an unreadable step to ``corrupt/`` (process 0) and forgets it (every process)."""
    target = self.directory / CORRUPT_DIR / str(step)
    if jax.process_index() == 0:
      target = move_aside(self.directory, step)
    _sync(f"jaxface:checkpoint_set_aside:{step}")
    self.manager.reload()
    logging.warning("checkpoint at step %d in %s could not be restored (%s): moved it to %s; "
                    "falling back to the previous checkpoint", step, self.directory,
                    _first_line(err), target)

  def wait(self) -> None:
    """Blocks until a pending save is written (saves are synchronous; kept for callers)."""
    with sigint_deferred():
      self.manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and releases the manager."""
    with sigint_deferred():
      self.manager.close()


# --------------------------------------------------------------------------------------------
# Reading a run
# --------------------------------------------------------------------------------------------


class _QuietOrbax(py_logging.Filter):
  """Drops Orbax's INFO lines and its notice that a directory is opened read-only."""

  def filter(self, record: py_logging.LogRecord) -> bool:
    if "/orbax/" not in record.pathname:
      return True
    return record.levelno >= py_logging.WARNING and "read only" not in record.getMessage()


@contextlib.contextmanager
def _quiet_orbax() -> Iterator[None]:
  quiet = _QuietOrbax()
  loggers = [py_logging.getLogger("absl"), py_logging.getLogger()]
  for logger in loggers:
    logger.addFilter(quiet)
  try:
    yield
  finally:
    for logger in loggers:
      logger.removeFilter(quiet)


def _read_only_manager(directory: Path) -> ocp.CheckpointManager:
  """A manager that writes nothing and waits for no other process."""
  me = jax.process_index()
  options = ocp.CheckpointManagerOptions(
      read_only=True, create=False, cleanup_tmp_directories=False, save_interval_steps=0,
      enable_async_checkpointing=False,
      multiprocessing_options=ocp.options.MultiprocessingOptions(primary_host=me,
                                                                 active_processes={me}))
  return ocp.CheckpointManager(directory, options=options, item_handlers={
      "state": ocp.StandardCheckpointHandler(), "probs": ocp.StandardCheckpointHandler(),
      "meta": ocp.JsonCheckpointHandler()})


def _host_target(metadata: PyTree) -> PyTree:
  """NumPy arrays of a saved tree's shapes and dtypes: restores to host arrays."""
  return jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), metadata)


def read_latest_state(directory: str | os.PathLike) -> tuple[int, PyTree]:
  """The train state of the latest finished, readable checkpoint, without writing anything.

  Checkpoints still being written (Orbax's temporary directories) are not seen; one that fails
  to restore is skipped with a warning. The call synchronises with no other process.

  Args:
    directory: a checkpoint directory (``WORKDIR/checkpoints``).

  Returns:
    ``(step, state)`` with the state as a dict of host NumPy arrays (``params``,
    ``batch_stats``, ``opt_state``, ``step``).
  """
  directory = Path(directory).absolute()
  if not directory.is_dir():
    raise FileNotFoundError(f"{directory} not found: the run has written no checkpoint")
  with _quiet_orbax():
    manager = _read_only_manager(directory)
    try:
      for step in sorted(manager.all_steps(), reverse=True):
        try:
          target = _host_target(manager.item_metadata(step)["state"])
          state = manager.restore(step, args=ocp.args.Composite(
              state=ocp.args.StandardRestore(target))).state
          return step, state
        except Exception as err:  # noqa: BLE001 -- any failure means: try the previous one
          logging.warning("checkpoint at step %d in %s could not be read (%s); reading the "
                          "previous one", step, directory, _first_line(err))
    finally:
      manager.close()
  raise FileNotFoundError(f"no readable checkpoint under {directory}")


def load_run(workdir: str | os.PathLike) -> tuple[ml_collections.ConfigDict, PyTree]:
  """The config and the latest model variables of a run directory, read-only.

  Safe on a run that is still training (or on a read-only copy): nothing under ``workdir`` is
  created, deleted or rewritten, and a checkpoint still being saved is not read.

  Args:
    workdir: a directory written by :func:`jaxface.train.train_and_evaluate`.

  Returns:
    ``(config, variables)`` with variables (``params``, ``batch_stats``) as host NumPy arrays.
  """
  workdir = Path(workdir).absolute()
  config_path = workdir / "config.json"
  if not config_path.exists():
    raise FileNotFoundError(f"{config_path} not found: is {workdir} a jaxface run directory?")
  config = ml_collections.ConfigDict(json.loads(config_path.read_text()))
  _, state = read_latest_state(workdir / "checkpoints")
  return config, {"params": state["params"], "batch_stats": state["batch_stats"]}
