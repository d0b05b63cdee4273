r"""Where each resampling signal puts the sampling mass on a finished run's training faces.

Reads a run directory (read only: :func:`jaxface.checkpoints.load_run`), encodes its training
faces with the latest variables (one inference pass for every output the signals read) and
computes each signal named on the command line as the trainer would at an epoch start after
the first (:func:`jaxface.resampling.face_probabilities`, with the run's ``resampling`` fields,
no momentum). A signal is a registry name or a blend (``latent+errors``), optionally with field
overrides after a colon: ``error_axis:error_axes=2,combine=max``. For each it prints the Kish
effective sample size as a fraction of the faces and, per group, the sampling mass and the
share of the group's faces given more than twice the uniform weight. The group labels are read
for this report only; no signal but the labelled baseline ``groups`` is given them.

Usage::

  python experiments/signal_probe.py /tmp/jf_sig/dbvae_s0 errors latent latent_pca \
      error_axis error_axis:error_axes=2,combine=max --json /tmp/probe.jsonl
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from jaxface import config as config_lib
from jaxface import data as data_lib
from jaxface import inference, resampling
from jaxface.checkpoints import load_run
from jaxface.train.state import compute_dtype

OVER = 2.0  # a face is favoured when its weight exceeds this many times the uniform weight


def probe_resampling(run_config: ml_collections.ConfigDict,
                     spec: str) -> ml_collections.ConfigDict:
  """The ``resampling`` fields of signal ``spec`` (``name[:field=value,...]``), validated.

  Args:
    run_config: the run's config (``config.json``; fields added since default to the base
      config's).
    spec: a signal, optionally with ``resampling`` field overrides after a colon.

  Returns:
    ``config.resampling`` with ``signal`` set, the overrides applied and ``momentum`` 0.

  Raises:
    SystemExit: an unknown field, a value of the wrong type, or a value the configuration
      refuses (its message names the field).
  """
  name, _, overrides = spec.partition(":")
  check = config_lib.get_base_config()
  check.model.latent_dim = int(run_config.model.latent_dim)
  check.model.kind = "dbvae" if check.model.latent_dim else "cnn"
  known = check.resampling
  known.update({k: v for k, v in run_config.resampling.items() if k in known})
  known.momentum = 0.0
  known.signal = name.strip()
  for item in filter(None, (part.strip() for part in overrides.split(","))):
    field, _, value = item.partition("=")
    field = field.strip()
    if field not in known or field == "signal":
      raise SystemExit(f"{spec}: unknown resampling field {field!r}")
    kind = type(known[field])
    try:
      known[field] = (value.strip().lower() in ("1", "true") if kind is bool
                      else kind(value.strip()))
    except ValueError:
      raise SystemExit(f"{spec}: resampling.{field} must be of type {kind.__name__}, got "
                       f"{value!r}") from None
  try:
    config_lib.validate_config(check, 1)
  except ValueError as err:
    raise SystemExit(f"{spec}: {err}") from None
  return known


def group_figures(p: np.ndarray, groups: np.ndarray,
                  group_names: Sequence[str]) -> dict[str, Any]:
  """The report's figures of one signal.

  Args:
    p: (n_faces,) sampling probabilities summing to 1.
    groups: (n_faces,) group label of each face.
    group_names: the groups to report, in order.

  Returns:
    ``ess_fraction`` (Kish ESS / n_faces) and, per group, ``mass`` (its sampling mass),
    ``share`` (its share of the faces) and ``over`` (the share of its faces with weight
    > ``OVER`` / n_faces).
  """
  over = p > OVER / p.size
  return {"ess_fraction": resampling.effective_sample_size(p) / p.size,
          "groups": {g: {"mass": float(p[groups == g].sum()),
                         "share": float(np.mean(groups == g)),
                         "over": float(np.mean(over[groups == g])) if (groups == g).any()
                         else float("nan")} for g in group_names}}


def probe(workdir: str | Path, specs: Sequence[str]) -> list[dict[str, Any]]:
  """The figures (:func:`group_figures`) of each signal of ``specs`` on a run's training faces."""
  if not (Path(workdir) / "metrics.json").is_file():
    raise SystemExit(f"{workdir}: not a finished run (no metrics.json)")
  config, variables = load_run(workdir)
  settings = {spec: probe_resampling(config, spec) for spec in specs}
  train = data_lib.load_datasets(config.data)["train"]
  faces = train.subset(train.face_indices())
  outputs = tuple(dict.fromkeys(name for rs in settings.values()
                                for name in resampling.needed_outputs(rs.signal)))
  inputs = inference.infer(variables, faces.images, outputs, batch_size=config.eval_batch_size,
                           dtype=compute_dtype(config), recon=config.loss.recon,
                           impl=config.model.impl) if outputs else {}
  records = []
  for spec, rs in settings.items():
    parts = resampling.signal_parts(rs.signal)
    labelled = any(resampling.SIGNALS[part].needs_groups for part in parts)
    signal_inputs = dict(inputs, groups=faces.groups) if labelled else dict(inputs)
    p, _ = resampling.face_probabilities(rs, signal_inputs, epoch=1, seed=int(config.seed))
    records.append({"run": str(workdir), "signal": spec,
                    **group_figures(p, faces.groups, faces.group_names)})
  return records


def table(records: Sequence[dict[str, Any]]) -> str:
  """A Markdown table: one row per signal, mass and favoured share per group, ESS fraction."""
  names = list(records[0]["groups"]) if records else []
  head = (["signal", "ESS"] + [f"{g} mass" for g in names]
          + [f"{g} >{OVER:g}x" for g in names])
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in records:
    cells = [r["signal"], f"{100 * r['ess_fraction']:.1f}%"]
    cells += [f"{100 * r['groups'][g]['mass']:.1f}%" for g in names]
    cells += [f"{100 * r['groups'][g]['over']:.1f}%" for g in names]
    lines.append("| " + " | ".join(cells) + " |")
  if records:
    shares = ", ".join(f"{g} {100 * v['share']:.1f}%" for g, v in records[0]["groups"].items())
    lines.append(f"\nShare of the training faces: {shares}.")
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("run", help="a finished run directory")
  parser.add_argument("signals", nargs="+",
                      help="signals, e.g. errors latent error_axis:error_axes=2,combine=max")
  parser.add_argument("--json", default="", help="also write one JSON line per signal here")
  args = parser.parse_args(argv)
  records = probe(args.run, args.signals)
  print(table(records))
  if args.json:
    Path(args.json).write_text("".join(json.dumps(r) + "\n" for r in records))
  return records


if __name__ == "__main__":
  main()
