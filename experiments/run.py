"""Trains and evaluates a model: ``python experiments/run.py --config=configs/dbvae.py``.

Any config field can be overridden, e.g. ``--config.resampling.alpha=0.01``.
"""

import logging as py_logging
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from jaxface import train

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


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = FLAGS.config
  workdir = FLAGS.workdir or os.path.join("workdirs", config.name)
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_QuietLibraries())
  train.train_and_evaluate(config, workdir)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main, flags_parser=parse_flags)
