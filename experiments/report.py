"""Writes the bias report of a trained run (figures, index.html, metrics.json).

    python experiments/report.py --workdir=/tmp/jaxface/dbvae --compare=/tmp/jaxface/cnn

The run directories are only read; the report goes to WORKDIR/report/ unless --out is given.
"""

import sys

from absl import app, flags

from jaxface import report

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Run directory to report on.")
flags.DEFINE_multi_string("compare", [], "Other run directories to compare with (repeatable).")
flags.DEFINE_string("out_dir", None, "Output directory (default: WORKDIR/report).")
flags.DEFINE_alias("out", "out_dir")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    path = report.write_report(FLAGS.workdir, FLAGS.compare, FLAGS.out_dir)
  except (FileNotFoundError, ValueError) as err:
    sys.exit(f"error: {err}")
  print(f"report: {path}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir"])
  app.run(main)
