"""Trains and evaluates a model: ``python experiments/run.py --config=configs/dbvae.py``.

Any config field can be overridden, e.g. ``--config.resampling.alpha=0.01``. With
``config.write_report`` (the default) the bias report is written to ``WORKDIR/report/`` at the
end of the run. A bad flag, config value, data file or workdir stops with one line on stderr and
exit status 2 (see jaxface/cli.py); Ctrl-C stops with the last checkpoint's step, and the same
command resumes from it.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import jax
import ml_collections
from absl import app, flags
from ml_collections import config_flags

from jaxface import cli, data, report, train
from jaxface import config as config_lib

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file (optionally ':smoke').",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and the report "
                    "(default: ./workdirs/<config name>).")


def run(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> Path | None:
  """Trains, then (process 0, with ``config.write_report``) writes the report.

  The data are loaded once, here, for the training and the report. Every process of a
  multi-host run trains; the report is written by process 0 while the others wait at one
  barrier, so all processes leave together.

  Args:
    config: the run config.
    workdir: the run directory.

  Returns:
    The report's ``index.html``, or None when no report was written (by this process).
  """
  # A bad config value fails before the data are loaded; the trainer checks the config again
  # against its device mesh.
  config_lib.validate_config(config, num_devices=1)
  datasets = data.load_datasets(config.data)
  result = train.train_and_evaluate(config, workdir, datasets)
  path = None
  if config.write_report and jax.process_index() == 0:
    path = report.write_report(result.workdir, datasets=datasets)
    print(f"report: {path}", flush=True)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("jaxface:run_finished")
  return path


def main(argv):
  del argv  # cli.parse_flags refuses positional arguments
  config = FLAGS.config
  workdir = FLAGS.workdir or os.path.join("workdirs", config.name)
  cli.setup_logging()
  with cli.exit_on_error(workdir=workdir):
    run(config, workdir)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main, flags_parser=functools.partial(cli.parse_flags, config_flag="config"))
