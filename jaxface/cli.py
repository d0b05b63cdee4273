"""Shared helpers of the command-line entry points: flag parsing, logging, error messages.

Library functions raise exceptions that name the field or file at fault; the entry points in
``experiments/`` turn the expected ones into a line on stderr and an exit status:

* 2: a bad command line, config value, data file or workdir (:data:`EXIT_USAGE`);
* 1: a run that could not go on (disk full, a non-finite loss) (:data:`EXIT_FAILURE`);
* 130: interrupted with Ctrl-C (:data:`EXIT_INTERRUPTED`).

Unexpected exceptions keep their traceback; ``JAXFACE_TRACEBACK=1`` shows it for all of them.

Typical use in an entry point::

  def main(argv):
    cli.setup_logging()
    with cli.exit_on_error(workdir=workdir):
      train.train_and_evaluate(config, workdir)

  app.run(main, flags_parser=cli.parse_flags)
"""

from __future__ import annotations

import contextlib
import difflib
import errno
import logging as py_logging
import os
import re
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NoReturn

import ml_collections
from absl import flags
from absl import logging

from jaxface import config as config_lib

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

_PACKAGE_DIR = Path(__file__).resolve().parent
_TYPE_NAMES = {int: "an integer", float: "a number", bool: "True or False", str: "a string"}
_WRITE_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST,
                 errno.EISDIR)


# ------------------------------------------------------------------------------ messages


def _one_line(text: str) -> str:
  """Joins the non-empty lines of ``text`` with '; ' (messages must fit on one line)."""
  return "; ".join(line.strip() for line in str(text).splitlines() if line.strip())


def _last_line(text: str) -> str:
  """The last non-empty line of ``text`` (the exception line of an embedded traceback)."""
  lines = [line.strip() for line in str(text).splitlines() if line.strip()]
  return lines[-1] if lines else ""


def last_checkpoint_step(workdir: str | os.PathLike) -> int | None:
  """The newest finished checkpoint's step: the largest integer-named folder under checkpoints/.

  Args:
    workdir: a run directory.

  Returns:
    The step, or None when there is no finished checkpoint (in-progress saves have other names).
  """
  directory = Path(workdir) / "checkpoints"
  try:
    steps = [int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit()]
  except OSError:
    return None
  return max(steps) if steps else None


def _find_os_error(err: BaseException, codes: Sequence[int]) -> OSError | None:
  """The first OSError with an errno in ``codes`` in ``err``'s cause / context chain.

  An exception of another type whose message quotes such an OSError (``[Errno 28] ...``, as a
  library re-raising a background thread's error may write it) counts as one.
  """
  seen = set()
  while err is not None and id(err) not in seen:
    seen.add(id(err))
    if isinstance(err, OSError) and err.errno in codes:
      return err
    quoted = re.search(r"\[Errno (\d+)\]", str(err))
    if quoted and int(quoted[1]) in codes:
      return OSError(int(quoted[1]), os.strerror(int(quoted[1])))
    err = err.__cause__ or err.__context__
  return None


def error_message(err: BaseException, workdir: str | os.PathLike | None = None,
                  workdir_flag: str = "--workdir") -> tuple[str, int] | None:
  """The one-line message and exit status for an expected error, None for any other.

  Args:
    err: the exception an entry point caught.
    workdir: the output directory, named in messages about writing and checkpoints.
    workdir_flag: the flag that chose ``workdir`` (for the hint of a write error).

  Returns:
    ``(message, exit_status)`` or None (a bug: let the traceback show).
  """
  workdir = None if workdir is None else Path(workdir).absolute()
  has_checkpoints = workdir is not None and (workdir / "checkpoints").is_dir()
  step = last_checkpoint_step(workdir) if has_checkpoints else None
  if isinstance(err, KeyboardInterrupt):
    if not has_checkpoints:
      return "interrupted", EXIT_INTERRUPTED
    if step is None:
      return ("interrupted before the first checkpoint: the same command starts the run again",
              EXIT_INTERRUPTED)
    return (f"interrupted: the last checkpoint is step {step} in {workdir / 'checkpoints'}; "
            "the same command resumes from it", EXIT_INTERRUPTED)
  full = _find_os_error(err, (errno.ENOSPC, errno.EDQUOT))
  if full is not None:
    where = workdir if workdir is not None else (full.filename or "the output folder")
    kept = ("" if not has_checkpoints else "; no checkpoint was written yet" if step is None
            else f"; the last good checkpoint, step {step} in {workdir / 'checkpoints'}, is kept")
    return f"error: no space left on the device writing {where}{kept}", EXIT_FAILURE
  if isinstance(err, OSError) and err.errno in _WRITE_ERRNOS:
    path = err.filename or "?"
    reason = (err.strerror or str(err)).lower()
    hint = ""
    if workdir is not None and Path(path).absolute().is_relative_to(workdir.parent):
      hint = f"; {workdir_flag}={workdir} must be a folder this user can write"
    return f"error: cannot write {path}: {reason}{hint}", EXIT_USAGE
  if isinstance(err, FileNotFoundError):
    if err.filename is None:  # raised with a message of its own
      return f"error: {_one_line(err)}", EXIT_USAGE
    return f"error: {err.filename}: no such file or folder", EXIT_USAGE
  if isinstance(err, FloatingPointError):
    return f"error: {_one_line(err)}", EXIT_FAILURE
  if isinstance(err, ValueError):  # config, data (DataError) and resume checks
    return f"error: {_one_line(err)}", EXIT_USAGE
  return None


@contextlib.contextmanager
def exit_on_error(workdir: str | os.PathLike | None = None,
                  workdir_flag: str = "--workdir") -> Iterator[None]:
  """Turns expected errors (see :func:`error_message`) into one line on stderr and an exit.

  Args:
    workdir: the output directory, for messages about writing and checkpoints.
    workdir_flag: the flag that chose ``workdir``.

  Raises:
    SystemExit: with the error's exit status; other exceptions pass through unchanged.
  """
  try:
    yield
  except (Exception, KeyboardInterrupt) as err:
    if isinstance(err, KeyboardInterrupt):
      finish_background_work()  # a checkpoint save in flight completes (or is left unfinished)
    found = error_message(err, workdir, workdir_flag)
    if found is None or os.environ.get("JAXFACE_TRACEBACK"):
      raise
    message, status = found
    _flush_logs()
    print(message, file=sys.stderr, flush=True)
    raise SystemExit(status) from None


def finish_background_work(timeout_s: float = 120.0) -> None:
  """Joins the other non-daemon threads (e.g. a library's writer thread) for a while.

  Exiting while such a thread runs breaks it at interpreter shutdown, with a traceback; a
  second Ctrl-C stops the wait. Thread-pool workers (named ``PREFIX_N``) idle until shutdown
  and are not waited for.

  Args:
    timeout_s: the most seconds to wait in all.
  """
  deadline = time.monotonic() + timeout_s
  try:
    for thread in threading.enumerate():
      if (thread is not threading.current_thread() and not thread.daemon
          and not re.search(r"_\d+$", thread.name)):
        thread.join(max(0.0, deadline - time.monotonic()))
  except KeyboardInterrupt:
    pass


def fail(message: str, status: int = EXIT_USAGE) -> NoReturn:
  """Prints ``error: message`` on stderr and exits with ``status``."""
  print(f"error: {message}", file=sys.stderr, flush=True)
  raise SystemExit(status)


# ------------------------------------------------------------------------------ flags


def unknown_field_message(dotted: str, schema: ml_collections.ConfigDict) -> str | None:
  """Names the first part of ``dotted`` that ``schema`` lacks, with the closest valid field.

  Args:
    dotted: a config path such as ``'resampling.alpha'``.
    schema: the config that defines every field (``jaxface.config.get_base_config()``).

  Returns:
    The message, or None when every part of ``dotted`` is a field.
  """
  node, done = schema, []
  for part in dotted.split("."):
    if not isinstance(node, ml_collections.ConfigDict):
      return f"config.{'.'.join(done)} is a value, not a group of fields"
    if part not in node:
      prefix = "".join(f"{p}." for p in done)
      close = difflib.get_close_matches(part, list(node.keys()), n=1)
      hint = f" (did you mean config.{prefix}{close[0]}?)" if close else ""
      return f"unknown config field config.{prefix}{part}{hint}"
    node, done = node[part], [*done, part]
  return None


def _override_field(arg: str, config_flag: str) -> str | None:
  """``'resampling.alpha'`` for ``--config.resampling.alpha=0.1`` (or ``--noconfig.x``)."""
  name = arg.lstrip("-").split("=", 1)[0]
  for prefix in (f"{config_flag}.", f"no{config_flag}."):
    if arg.startswith("-") and name.startswith(prefix):
      return name[len(prefix):]
  return None


def parse_flags(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS,
                config_flag: str | None = "config",
                schema: ml_collections.ConfigDict | None = None) -> list[str]:
  """absl flag parsing that exits with one line on stderr (status 2) on a bad command line.

  ``--config.FIELD=`` overrides are checked against ``schema`` first, so a misspelt field is
  named with the closest valid one; the config file is loaded here, so its errors show too.

  Args:
    argv: ``sys.argv``.
    flag_values: the flags to parse into.
    config_flag: the name of the ``config_flags`` flag, or None if the program has none.
    schema: the fields overrides may name (default: ``jaxface.config.get_base_config()``).

  Returns:
    The remaining positional arguments, program name first.
  """
  if config_flag is not None and config_flag in flag_values:
    schema = config_lib.get_base_config() if schema is None else schema
    for arg in argv[1:]:
      field = _override_field(arg, config_flag)
      if field is not None:
        message = unknown_field_message(field, schema)
        if message is not None:
          fail(f"{arg}: {message}")
  try:
    rest = flag_values(argv)
    if config_flag is not None and config_flag in flag_values:
      # A config file that failed to load is a proxy raising on any attribute access.
      getattr(flag_values[config_flag].value, "keys", None)
  except flags.Error as err:
    fail(_flag_error_message(err, schema))
  except (OSError, ValueError, SyntaxError, AttributeError, KeyError) as err:
    arg = next((a for a in argv if a.startswith(f"--{config_flag}=")), f"--{config_flag}")
    fail(f"{arg}: {_strip_type(_last_line(err)) or type(err).__name__}")
  if len(rest) > 1:
    fields = [a.split("=", 1)[0] for a in rest[1:] if "=" in a]
    hint = (f" (flags start with --, e.g. --{config_flag}.{fields[0]}=...)"
            if fields and config_flag is not None else "")
    fail(f"unexpected arguments {rest[1:]}{hint}")
  return rest


def _strip_type(line: str) -> str:
  """``'unknown option'`` for ``'ValueError: unknown option'``."""
  return re.sub(r"^[\w.]*(Error|Exception): ", "", line)


def _flag_error_message(err: flags.Error,
                        schema: ml_collections.ConfigDict | None) -> str:
  """absl's message, reduced to one line (a config file's traceback to its last line)."""
  text = str(err).strip()
  first = text.splitlines()[0] if text else type(err).__name__
  if "Error whilst parsing config file" in text:
    return f"{first.split(': Error whilst', 1)[0].removeprefix('flag ')}: " + _strip_type(
        _last_line(text))
  match = re.match(r"flag (--[\w.]+)=(.*?): ", first)
  if match and schema is not None and "." in match[1]:  # a --config.FIELD= override
    field = match[1].split(".", 1)[1]
    try:
      default = config_lib.config_get(schema, field)
    except (KeyError, AttributeError):
      default = None
    if default is not None and not isinstance(default, ml_collections.ConfigDict):
      kind = _TYPE_NAMES.get(type(default), type(default).__name__)
      return f"{match[1]}={match[2]}: config.{field} takes {kind} (default {default!r})"
  return _one_line(text.removeprefix("flag "))


# ------------------------------------------------------------------------------ logging


class _OwnInfoOnly(py_logging.Filter):
  """Keeps warnings from everywhere but INFO and below only from jaxface and the entry point.

  Other libraries' reports of a KeyboardInterrupt are dropped too (Orbax logs an interrupted
  wait as an error with its traceback).

  Orbax and absl log through the same ``absl`` logger as jaxface, and JAX reports the backends it
  could not start (``Unable to initialize backend 'tpu'``) at INFO, so the source file decides.
  """

  def __init__(self, own_dirs: Sequence[Path]):
    super().__init__()
    self.own_dirs = tuple(str(d) + os.sep for d in own_dirs)

  def filter(self, record: py_logging.LogRecord) -> bool:
    own = os.path.abspath(record.pathname).startswith(self.own_dirs)
    if record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt) and not own:
      return False  # a library reporting that Ctrl-C interrupted it: the entry point says so
    return own or record.levelno >= py_logging.WARNING


class _TqdmHandler(py_logging.Handler):
  """Writes records with ``tqdm.write``, so they never land on a progress bar's line."""

  def emit(self, record: py_logging.LogRecord) -> None:
    try:
      from tqdm import tqdm
      tqdm.write(self.format(record), file=sys.stderr)
    except Exception:  # noqa: BLE001 - logging must not raise
      self.handleError(record)


def setup_logging(verbosity: int = logging.INFO) -> None:
  """Logs jaxface's INFO lines (and everyone's warnings) to stderr, around any progress bar.

  Replaces absl's handler on the root logger by one that writes through ``tqdm.write`` with
  absl's line format, and drops INFO lines from other libraries (Orbax, JAX's backend probe).
  Call it in an entry point's ``main``, after flag parsing.

  Args:
    verbosity: absl verbosity (``absl.logging.INFO``, ``DEBUG``, ...).
  """
  own = [_PACKAGE_DIR, Path(sys.argv[0]).resolve().parent]
  root = py_logging.getLogger()
  for handler in list(root.handlers):
    if isinstance(handler, (logging.ABSLHandler, _TqdmHandler)):
      root.removeHandler(handler)
  handler = _TqdmHandler()
  handler.setFormatter(logging.PythonFormatter())
  handler.addFilter(_OwnInfoOnly(own))
  root.addHandler(handler)
  logging.set_verbosity(verbosity)


def _flush_logs() -> None:
  for handler in py_logging.getLogger().handlers:
    with contextlib.suppress(Exception):
      handler.flush()
