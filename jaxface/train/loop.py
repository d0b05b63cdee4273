"""Training and evaluation of the standard CNN, the SS-VAE and the DB-VAE.

``train_and_evaluate(config, workdir)`` reads top to bottom:

1. the start (:func:`jaxface.train.start.start_run`): validate the config, build the device
   mesh (:mod:`jaxface.sharding`), load the data (unless given), the train state and one
   jitted, data-parallel train step (:mod:`jaxface.train.step`), and the resume from the latest
   checkpoint (:mod:`jaxface.checkpoints`, under ``WORKDIR/checkpoints``) after checking the
   run's identity against the checkpoint's;
2. every epoch (:func:`_train_epoch`): DB-VAE resampling at its start (all training faces
   encoded by :func:`jaxface.train.resample.resampling_probabilities`, the batcher's face
   probabilities replaced), then its steps, with metrics every ``log_every_steps`` steps to
   ``WORKDIR/metrics.jsonl`` and TensorBoard (:mod:`jaxface.train.metric_log`) and a checkpoint
   every ``checkpoint_every_steps``; after ``num_epochs``, the hard-negative rounds
   (:func:`jaxface.hard_negatives.prepare_epoch`: mined non-face windows join the training set
   at a round's first epoch, ``epochs_per_round`` epochs each);
3. every epoch's end (:func:`_end_epoch`): batch-norm recalibration, the evaluators of
   ``config.evaluators`` (:func:`jaxface.eval.evaluate`) and a checkpoint;
4. the whole-photo scan, the summary and ``WORKDIR/metrics.json`` (:func:`_finish`). The report
   is written by the caller (``experiments/run.py``).
"""

from __future__ import annotations

import functools
import json
import os
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh

from jaxface import data as data_lib
from jaxface import hard_negatives
from jaxface.eval import splits as eval_splits
from jaxface.eval import summary as eval_summary
from jaxface.eval import whole_photos
from jaxface.sharding import shard_batch
from jaxface.train import metric_log
from jaxface.train.batch_norm import recalibrate_batch_norm
from jaxface.train.resample import (hard_non_faces, non_face_weights, probability_summary,
                                    resampling_probabilities)
from jaxface.train.start import Position, Run, start_run

PyTree = Any


class TrainResult(NamedTuple):
  """What :func:`train_and_evaluate` returns.

  Attributes:
    metrics: the final metrics (as in ``WORKDIR/metrics.json``); for a run stopped by
      ``stop_at_step``, ``{'stopped_at_step': step}``.
    variables: the final model variables (``params``, ``batch_stats``) as host arrays.
    workdir: the absolute run directory.
  """
  metrics: dict[str, Any]
  variables: PyTree
  workdir: Path


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
                       datasets: dict[str, data_lib.FaceData] | None = None, *,
                       mesh: Mesh | None = None,
                       stop_at_step: int | None = None) -> TrainResult:
  """Trains the configured model, checkpointing as it goes, and evaluates it.

  A run started again on the same ``workdir`` resumes from the latest readable checkpoint (one
  that cannot be restored is moved to ``checkpoints/corrupt/``) and ends with the same
  parameters and metrics as an uninterrupted run; ``num_epochs`` may grow, but a run whose
  :func:`jaxface.checkpoints.run_identity` (seed, batch size, steps per epoch, model, number of
  training faces, PRNG key) differs from the checkpoint's raises ValueError. The report is not
  written here (``experiments/run.py`` writes it).

  Args:
    config: the run configuration (see ``jaxface.config.get_base_config``).
    workdir: output directory (created if needed).
    datasets: the data sets of ``config.data`` as :func:`jaxface.data.load_datasets` returns
      them, already loaded; None loads them.
    mesh: the device mesh (default: a ``data`` axis over every device,
      :func:`jaxface.sharding.make_mesh`).
    stop_at_step: stop right after this global step without writing a checkpoint there, as if
      the process had been killed (for testing resumption). None trains to the end.

  Returns:
    A :class:`TrainResult`; its metrics are also written to ``WORKDIR/metrics.json``.
  """
  run, position = start_run(config, workdir, datasets, mesh)
  num_epochs = hard_negatives.total_epochs(config)  # with the hard-negative rounds
  total_steps = run.batcher.steps_per_epoch * num_epochs
  done_steps = position.epoch * run.batcher.steps_per_epoch + position.step_in_epoch
  log = metric_log.StepLog(
      run.writer, config.batch_size, run.workdir / "checkpoints",
      metric_log.progress_bar(total_steps, done_steps, run.is_main and config.progress_bar))
  start_time = time.perf_counter()
  try:
    while position.epoch < num_epochs:
      run = hard_negatives.prepare_epoch(run, position)  # mines or reloads a round when due
      stopped_at = _train_epoch(run, position, log, stop_at_step)
      if stopped_at is not None:
        return TrainResult({"stopped_at_step": stopped_at},
                           jax.device_get(position.state.variables), run.workdir)
      _end_epoch(run, position)
  finally:
    log.close()
    run.checkpoints.close()  # waits for the last save; every process reaches it
    run.writer.close()
  final = _finish(run, position, log, start_time)
  return TrainResult(final, jax.device_get(position.state.variables), run.workdir)


def _resample(run: Run, position: Position) -> None:
  """The epoch-start pass: new face probabilities for the batcher (or, after
  ``resampling.last_update_epoch``, the ones it holds), logged and kept."""
  epoch = position.epoch
  if _updates_signal(run.config.resampling, epoch):
    probs, info = resampling_probabilities(run.config, position.state.variables,
                                           run.train_faces, run.mesh, epoch,
                                           previous=run.batcher.face_probabilities)
    run.batcher.set_face_probabilities(probs)
  else:
    info = probability_summary(run.batcher.face_probabilities, run.train_faces)
    info["kept_from_epoch"] = run.config.resampling.last_update_epoch
  info["epoch"] = epoch
  position.history["resampling"].append(info)
  held_out = ("" if "held_out_faces" not in info else
              f"; {info['held_out_faces']} faces held out of epoch 0" + (
                  f", {info['held_out_mistakes_face_prob']} of them mistaken"
                  if "held_out_mistakes_face_prob" in info else ""))
  logging.info("epoch %d resampling: effective sample size %.0f of %d (%.1f%%)%s%s", epoch,
               info["ess"], info["n_faces"], 100 * info["ess_fraction"], held_out,
               "".join(f"; {g} {100 * m:.1f}% of mass ({100 * info['share_by_group'][g]:.1f}%"
                       " of faces)" for g, m in info.get("mass_by_group", {}).items()))
  run.writer.write(int(jax.device_get(position.state.step)), "resampling",
                   metric_log.resampling_fields(epoch, info))


def _resample_non_faces(run: Run, position: Position) -> None:
  """The non-faces' sampling weights for the epoch: scored afresh at its first step and kept in
  ``position.history['non_face_hard']`` (so a resumed epoch draws the same batches)."""
  config, history = run.config, position.history
  if position.step_in_epoch == 0:
    hard, info = hard_non_faces(config, position.state.variables, run.batcher.data, run.mesh,
                                position.epoch)
    history["non_face_hard"] = hard.tolist()
    history.setdefault("non_face_resampling", []).append(info)
    if info["n_hard"]:
      logging.info("epoch %d non-faces: the %d scored most face-like (p >= %.3f) hold %.1f%% of "
                   "the mass", position.epoch, info["n_hard"], info["min_face_prob_hard"],
                   100 * info["mass_hard"])
  run.batcher.set_non_face_probabilities(non_face_weights(
      run.batcher.num_non_faces, np.asarray(history.get("non_face_hard", []), np.int64),
      config.resampling.non_face_upweight))


def _updates_signal(resampling: ml_collections.ConfigDict, epoch: int) -> bool:
  """Whether the faces' probabilities are computed afresh at ``epoch``'s start (else the batcher
  keeps those of ``resampling.last_update_epoch``, checkpointed with the state)."""
  last = resampling.last_update_epoch  # validated by start_run: -1 or >= 1
  return last == -1 or epoch <= last


def _train_epoch(run: Run, position: Position, log: metric_log.StepLog,
                 stop_at_step: int | None) -> int | None:
  """The rest of the current epoch's steps; the global step it stopped at, or None.

  Resamples the faces first at an epoch's start (after ``resampling.last_update_epoch``, logs
  the probabilities kept); checkpoints every
  ``config.checkpoint_every_steps`` steps (but not at the epoch's last step, which
  :func:`_end_epoch` saves after the evaluation).
  """
  config, steps_per_epoch = run.config, run.batcher.steps_per_epoch
  if position.step_in_epoch == 0 and config.resampling.signal != "none":
    _resample(run, position)
  if config.resampling.non_face_upweight > 1:
    _resample_non_faces(run, position)
  log.start_window()
  for batch in run.batcher.epoch_batches(position.epoch, position.step_in_epoch):
    global_step = position.epoch * steps_per_epoch + position.step_in_epoch + 1
    batch = jax.tree.map(functools.partial(shard_batch, run.mesh), batch)
    position.state, metrics = run.step_fn(position.state, batch, run.step_key)
    log.add(global_step, metrics)
    position.step_in_epoch += 1
    if global_step % config.log_every_steps == 0:
      log.flush(position.epoch)
    if stop_at_step is not None and global_step >= stop_at_step:
      return global_step
    if (config.checkpoint_every_steps and global_step % config.checkpoint_every_steps == 0
        and position.step_in_epoch < steps_per_epoch):
      log.flush(position.epoch)  # never checkpoint a state whose loss has not been checked
      run.save(position)
  log.flush(position.epoch)
  return None


def _end_epoch(run: Run, position: Position) -> None:
  """Recalibrates the batch norms, evaluates, logs, moves to the next epoch and saves."""
  config, epoch = run.config, position.epoch
  if config.bn_recalibration_batches:
    position.state = recalibrate_batch_norm(position.state, run.datasets["train"], run.mesh,
                                            config, epoch)
  ev = eval_splits.evaluate(position.state.variables, run.datasets, run.mesh, config)
  ev["epoch"] = epoch
  position.history["epochs"].append(ev)
  run.writer.write(int(jax.device_get(position.state.step)), "eval",
                   metric_log.eval_fields(epoch, ev))
  logging.info("epoch %d: %s", epoch,
               {k: v for k, v in ev.items() if k not in ("test", "val", "test_sets")})
  position.epoch, position.step_in_epoch = epoch + 1, 0
  run.save(position)


def _finish(run: Run, position: Position, log: metric_log.StepLog,
            start_time: float) -> dict[str, Any]:
  """The final metrics (with the whole-photo scan), written and summarised by process 0."""
  config, history = run.config, position.history
  final_eval = dict(history["epochs"][-1]) if history["epochs"] else {}
  if run.whole_image_sets is not None:
    logging.info("scanning the whole-image test sets %s", list(run.whole_image_sets.photos))
    final_eval["whole_images"] = whole_photos.evaluate_sets(
        position.state.variables, run.whole_image_sets, config.whole_images, run.mesh,
        progress=run.is_main and config.progress_bar, dtype=config.dtype,
        impl=config.model.impl)
  final = {
      "name": config.name, "kind": config.model.kind,
      "steps": int(jax.device_get(position.state.step)),
      "wall_time_s": time.perf_counter() - start_time, "images_per_s": log.images_per_s,
      "eval": final_eval, "epochs": history["epochs"], "resampling": history["resampling"],
      "devices": int(run.mesh.devices.size),
  }
  if "hard_negatives" in history:
    final["hard_negatives"] = history["hard_negatives"]
  if "non_face_resampling" in history:
    final["non_face_resampling"] = history["non_face_resampling"]
  if run.is_main:
    (run.workdir / "metrics.json").write_text(
        json.dumps(final, indent=2, default=metric_log.json_default))
    print(eval_summary.format_summary(config, final), flush=True)
  return final
