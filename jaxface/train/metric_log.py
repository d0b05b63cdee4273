"""The run's metric log: ``WORKDIR/metrics.jsonl``, TensorBoard, the progress bar.

:class:`MetricWriter` writes the lines; a resumed run keeps one line per (step, kind)
(:func:`rewound_lines`). :class:`StepLog` keeps the train steps' metrics on the device until a
log step, checks them, writes their mean and counts the training throughput.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from absl import logging


def line_kind(line: dict[str, Any]) -> str:
  """The kind of a ``metrics.jsonl`` line: 'train', 'eval' or 'resampling'.

  Lines carry it as ``kind``; for lines written without it, it is read from their fields.
  """
  if "kind" in line:
    return str(line["kind"])
  if "resampling_ess_fraction" in line:
    return "resampling"
  return "train" if "loss" in line else "eval"


def rewound_lines(lines: list[str], step: int, redo_at_step: tuple[str, ...]) -> list[str]:
  """The ``metrics.jsonl`` lines a run resumed at ``step`` keeps: one per (step, kind).

  Args:
    lines: the file's lines (JSON objects with a ``step``).
    step: the restored checkpoint's step; lines of later steps are dropped.
    redo_at_step: kinds the resumed run logs again at ``step`` itself (the epoch-start
      resampling pass), dropped there.

  Returns:
    The kept lines in file order; of two lines with the same (step, kind), the first.
  """
  kept, seen = [], set()
  for text in lines:
    if not text.strip():
      continue
    line = json.loads(text)
    key = (int(line.get("step", 0)), line_kind(line))
    if key[0] > step or (key[0] == step and key[1] in redo_at_step) or key in seen:
      continue
    seen.add(key)
    kept.append(text)
  return kept


class MetricWriter:
  """Writes metrics to ``metrics.jsonl`` and TensorBoard event files (process 0 only).

  Every line is a JSON object with ``step``, ``kind`` ('train', 'eval' or 'resampling') and
  the metrics; a run that starts fresh or resumes keeps exactly one line per (step, kind).
  """

  def __init__(self, workdir: Path, active: bool):
    self.active = active
    self.path = workdir / "metrics.jsonl"
    self.tb = None
    if active:
      try:
        from tensorboardX import SummaryWriter
        self.tb = SummaryWriter(str(workdir / "tensorboard"))
      except ImportError:  # TensorBoard files are optional; the jsonl log is not
        logging.warning("tensorboardX is not installed: writing metrics.jsonl only")

  def reset(self) -> None:
    """Empties the log (a fresh start: lines of an earlier attempt are stale)."""
    if self.active:
      self.path.write_text("")

  def rewind(self, step: int) -> None:
    """Keeps what a run resumed at ``step`` does not log again (:func:`rewound_lines`)."""
    if not self.active or not self.path.exists():
      return
    lines = rewound_lines(self.path.read_text().splitlines(), step, ("resampling",))
    self.path.write_text("".join(line + "\n" for line in lines))

  def write(self, step: int, kind: str, metrics: dict[str, Any]) -> None:
    """Appends one line (and the numeric metrics to TensorBoard)."""
    if not self.active:
      return
    with self.path.open("a") as f:
      f.write(json.dumps({"step": step, "kind": kind, **metrics}) + "\n")
    if self.tb is not None:
      for key, value in metrics.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
          self.tb.add_scalar(key, value, step)
      self.tb.flush()

  def close(self) -> None:
    if self.tb is not None:
      self.tb.close()


class StepLog:
  """The train steps' metrics until they are logged, the training throughput, the progress bar.

  The step metrics stay on the device until :meth:`flush` fetches them with one device sync,
  checks their losses and writes their mean as one 'train' line; the throughput counts the time
  between flushes (from :meth:`start_window` on) and the images trained in it.

  Args:
    writer: the run's :class:`MetricWriter`.
    batch_size: images per step.
    checkpoint_dir: the run's checkpoint directory (named when a loss is not finite).
    bar: a tqdm progress bar over the steps, or None.
  """

  def __init__(self, writer: MetricWriter, batch_size: int, checkpoint_dir: Path, bar=None):
    self.writer, self.batch_size, self.checkpoint_dir, self.bar = (
        writer, batch_size, checkpoint_dir, bar)
    self.pending: list[tuple[int, dict[str, jax.Array]]] = []
    self.window_start = time.perf_counter()
    self.train_time, self.trained_images = 0.0, 0

  def start_window(self) -> None:
    """Times the next steps from now (after work that is not training)."""
    self.window_start = time.perf_counter()

  def add(self, step: int, metrics: dict[str, jax.Array]) -> None:
    """Keeps the metrics of global step ``step`` (device arrays, not fetched)."""
    self.pending.append((step, metrics))
    if self.bar is not None:
      self.bar.update(1)

  def flush(self, epoch: int) -> None:
    """Fetches the pending step metrics (one device sync), checks them, logs their mean."""
    if not self.pending:
      return
    fetched = jax.device_get([m for _, m in self.pending])
    for (step, _), m in zip(self.pending, fetched):
      if not math.isfinite(float(m["loss"])):
        raise FloatingPointError(
            f"non-finite loss ({float(m['loss'])}) at step {step}: stopping; the last good "
            f"checkpoint is kept in {self.checkpoint_dir}")
    elapsed = time.perf_counter() - self.window_start
    n_images = len(self.pending) * self.batch_size
    self.train_time += elapsed
    self.trained_images += n_images
    mean = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
    mean.update(epoch=epoch, images_per_s=n_images / max(elapsed, 1e-9))
    self.writer.write(self.pending[-1][0], "train", mean)
    if self.bar is not None:
      self.bar.set_postfix(loss=f"{mean['loss']:.4f}", acc=f"{mean['accuracy']:.3f}",
                           img_s=f"{mean['images_per_s']:.0f}", epoch=epoch)
    self.pending.clear()
    self.window_start = time.perf_counter()

  @property
  def images_per_s(self) -> float:
    """Images trained per second of training time so far (0 before the first flush)."""
    return self.trained_images / self.train_time if self.train_time else 0.0

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()


def progress_bar(total: int, initial: int, active: bool):
  """A tqdm bar over the run's ``total`` steps from ``initial`` on; None when not ``active``."""
  if not active:
    return None
  from tqdm.auto import tqdm
  return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, smoothing=0.1)


def eval_fields(epoch: int, ev: dict[str, Any]) -> dict[str, Any]:
  """The 'eval' line of an epoch's evaluation (:func:`jaxface.eval.evaluate`): its figures
  without the test and validation splits' per-group ones, plus E[A] and Var[A] of the test
  split (``test_E_A``, ``test_Var_A``) and of each extra test set (``<name>_E_A``, ...), and
  E[A], Var[A] and the worst rate of the test split at the operating point (``test_op_E_A``,
  ``test_op_Var_A``, ``test_op_worst_rate``)."""
  op = (ev.get("test") or {}).get("operating_point") or {}
  return {"epoch": epoch, **{k: v for k, v in ev.items() if k not in ("test", "val")},
          **({"test_E_A": ev["test"]["E_A"], "test_Var_A": ev["test"]["Var_A"]}
             if ev.get("test") and ev["test"].get("E_A") is not None else {}),
          **{f"test_op_{key}": op[key] for key in ("E_A", "Var_A", "worst_rate")
             if op.get(key) is not None},
          **{f"{name}_{key}": m[key] for name, m in ev.get("test_sets", {}).items()
             for key in ("E_A", "Var_A") if m.get(key) is not None}}


def resampling_fields(epoch: int, info: dict[str, Any]) -> dict[str, Any]:
  """The 'resampling' line of an epoch-start pass's summary (see ``resampling_probabilities``)."""
  return {"resampling_ess_fraction": info["ess_fraction"], "epoch": epoch,
          **{f"resampling_mass_{g}": m for g, m in info.get("mass_by_group", {}).items()}}


def json_default(value):
  """``json.dumps``' ``default`` for the NumPy scalars in the final metrics."""
  if isinstance(value, (np.floating, np.integer)):
    return value.item()
  raise TypeError(f"not JSON-serialisable: {type(value)}")
