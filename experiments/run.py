"""Trains and evaluates a model: ``python experiments/run.py --config=configs/dbvae.py``.

Any config field can be overridden, e.g. ``--config.resampling.alpha=0.01``. A bad flag, config
value, data file or workdir stops with one line on stderr and exit status 2 (see jaxface/cli.py);
Ctrl-C stops with the last checkpoint's step, and the same command resumes from it.
"""

import functools
import os

from absl import app, flags
from ml_collections import config_flags

from jaxface import cli, train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file (optionally ':smoke').",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and the report "
                    "(default: ./workdirs/<config name>).")


def main(argv):
  del argv  # parse_flags refuses positional arguments
  config = FLAGS.config
  workdir = FLAGS.workdir or os.path.join("workdirs", config.name)
  cli.setup_logging()
  with cli.exit_on_error(workdir=workdir):
    train.train_and_evaluate(config, workdir)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main, flags_parser=functools.partial(cli.parse_flags, config_flag="config"))
