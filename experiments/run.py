"""Trains and evaluates a model: ``python experiments/run.py --config=configs/dbvae.py``.

Any config field can be overridden, e.g. ``--config.resampling.alpha=0.01``. With
``config.write_report`` (the default) the bias report is written to ``WORKDIR/report/`` at the
end of the run.
"""

from __future__ import annotations

import logging as py_logging
import os
import sys
from pathlib import Path

import jax
import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from jaxface import report, train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file (optionally ':smoke').",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and the report "
                    "(default: ./workdirs/<config name>).")


class _QuietLibraries(py_logging.Filter):
  """Keeps Orbax's per-save INFO chatter out of the run's log (its warnings still show)."""

  def filter(self, record: py_logging.LogRecord) -> bool:
    return record.levelno >= py_logging.WARNING or "/orbax/" not in record.pathname


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing, with a one-line error for a ``--config.FIELD=`` naming no field."""
  try:
    return FLAGS(argv)
  except (AttributeError, KeyError) as err:  # ml_collections' answer to an unknown field
    overrides = [a.split("=", 1)[0] for a in argv[1:] if a.startswith("--config.")]
    sys.exit(f"error: unknown config field {str(err).strip(chr(34))} in "
             f"{' '.join(overrides)}; the fields are listed in jaxface/config.py")


def run(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> Path | None:
  """Trains, then (process 0, with ``config.write_report``) writes the report.

  Every process of a multi-host run trains; the report is written by process 0 from the
  datasets already loaded while the others wait at one barrier, so all processes leave
  together.

  Args:
    config: the run config.
    workdir: the run directory.

  Returns:
    The report's ``index.html``, or None when no report was written (by this process).
  """
  result = train.train_and_evaluate(config, workdir)
  path = None
  if config.write_report and jax.process_index() == 0:
    path = report.write_report(result.workdir, datasets=result.datasets)
    print(f"report: {path}", flush=True)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("jaxface:run_finished")
  return path


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = FLAGS.config
  workdir = FLAGS.workdir or os.path.join("workdirs", config.name)
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_QuietLibraries())
  run(config, workdir)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main, flags_parser=parse_flags)
