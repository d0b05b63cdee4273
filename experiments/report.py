"""Writes the bias report of a trained run (figures, index.html, metrics.json).

    python experiments/report.py --workdir=/tmp/jaxface/dbvae --compare=/tmp/jaxface/cnn

The run directories are only read; the report goes to WORKDIR/report/ unless --out is given.
"""

import functools

from absl import app, flags

from jaxface import cli, report

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Run directory to report on.")
flags.DEFINE_multi_string("compare", [], "Other run directories to compare with (repeatable).")
flags.DEFINE_string("out_dir", None, "Output directory (default: WORKDIR/report).")
flags.DEFINE_alias("out", "out_dir")


def main(argv):
  del argv  # cli.parse_flags refuses positional arguments
  cli.setup_logging()
  with cli.exit_on_error(workdir=FLAGS.out_dir or FLAGS.workdir,
                         workdir_flag="--out_dir" if FLAGS.out_dir else "--workdir"):
    path = report.write_report(FLAGS.workdir, FLAGS.compare, FLAGS.out_dir)
  print(f"report: {path}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir"])
  app.run(main, flags_parser=functools.partial(cli.parse_flags, config_flag=None))
