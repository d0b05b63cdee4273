r"""Finished runs on their own test split at the threshold giving a chosen false-positive rate.

A run's summary rates use the threshold 0.5; a method that moves sampling mass to some faces can
shift where the faces and the non-faces meet without separating them better. This reads each
run (``WORKDIR/<config>/seed<k>/``, e.g. the folders of ``experiments/study.py``; read only),
scores its test split again and reports, per config (runs grouped by their parent folder's
name), the per-group detection rates at the threshold that lets ``--fpr`` of the test
non-faces through (:func:`jaxface.eval.operating_point.operating_point`), E[A], Var[A], the
worst group and each group's ROC AUC, beside the worst group and the non-face accuracy at 0.5
(both by the one rule: detected when p > 0.5). Measured results: experiments/results/README.md.

Usage::

  python experiments/operating_point.py /tmp/study_planted4/*/seed* --fpr 0.01 \
      --json /tmp/op.jsonl
"""

from __future__ import annotations

import argparse
import collections
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxface import data as data_lib
from jaxface import evaluation, inference
from jaxface.checkpoints import load_run

GROUPS = data_lib.GROUPS


def run_figures(run: str | Path, fpr: float, cache: dict | None = None) -> dict[str, Any]:
  """The figures of one run at the ``fpr`` threshold and at 0.5 (see the module docstring)."""
  config, variables = load_run(run)
  cache = {} if cache is None else cache
  key = json.dumps(config.data.to_dict(), sort_keys=True, default=str)
  if key not in cache:  # runs of one study share their data: load it once
    cache[key] = data_lib.load_datasets(config.data)["test"]
  test = cache[key]
  prob = np.asarray(inference.infer(variables, test.images, ("face_prob",))["face_prob"])
  prob = prob.reshape(-1)
  face = test.labels == 1
  if not (~face).any():
    raise SystemExit(f"{run}: the test split has no non-faces to set the threshold on")
  op = evaluation.operating_point(prob[face], test.groups[face], prob[~face], fpr,
                                  group_order=GROUPS)
  at_half = evaluation.group_metrics(prob, test.labels, test.groups, group_order=GROUPS)
  return {"run": str(run), "config": Path(run).parent.name, "fpr_target": fpr,
          "threshold": op["threshold"], "fpr": op["fpr"], "E_A": op["E_A"],
          "Var_A": op["Var_A"], "worst_group": op["worst_group"], "worst_rate": op["worst_rate"],
          "rates": {g: 100 * v["detection_rate"] for g, v in op["groups"].items()},
          "auc": {g: v["auc"] for g, v in op["groups"].items()},
          "worst_rate_at_0.5": at_half["worst_rate"],
          "non_face_accuracy_at_0.5": 100 * at_half["non_face_accuracy"]}


def _cell(values: Sequence[float], digits: int = 1) -> str:
  if len(values) == 1:
    return f"{values[0]:.{digits}f}"
  return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


def table(records: Sequence[dict[str, Any]]) -> str:
  """A Markdown table: one row per config, mean ± sample std over its runs."""
  rows = collections.defaultdict(list)
  for r in records:
    rows[r["config"]].append(r)
  fpr = records[0]["fpr_target"] if records else 0.0
  tag = f"@{100 * fpr:g}%FP"
  head = (["config", "runs", f"E[A] {tag}", f"Var[A] {tag}", f"worst {tag}"]
          + [f"{g} {tag}" for g in GROUPS] + [f"{g} AUC" for g in GROUPS]
          + ["worst @0.5", "non-face @0.5"])
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for name, rs in rows.items():
    cells = [name, str(len(rs)), _cell([r["E_A"] for r in rs]), _cell([r["Var_A"] for r in rs]),
             _cell([r["worst_rate"] for r in rs])]
    cells += [_cell([r["rates"].get(g, np.nan) for r in rs]) for g in GROUPS]
    cells += [_cell([r["auc"].get(g, np.nan) for r in rs], 3) for g in GROUPS]
    cells += [_cell([r["worst_rate_at_0.5"] for r in rs]),
              _cell([r["non_face_accuracy_at_0.5"] for r in rs])]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("runs", nargs="+", help="run directories")
  parser.add_argument("--fpr", type=float, default=0.01,
                      help="false-positive rate of the threshold, in [0, 1) (default 0.01)")
  parser.add_argument("--json", default="", help="also write one JSON line per run here")
  args = parser.parse_args(argv)
  if not 0 <= args.fpr < 1:
    raise SystemExit(f"--fpr must be in [0, 1), got {args.fpr}")
  for run in args.runs:
    if not (Path(run) / "metrics.json").is_file():
      raise SystemExit(f"{run}: not a finished run (no metrics.json)")
  cache: dict = {}
  records = [run_figures(run, args.fpr, cache) for run in args.runs]
  if args.json:
    with open(args.json, "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in records)
  print(table(records))
  return records


if __name__ == "__main__":
  main()
