r"""Finished runs at the operating point: the threshold giving a chosen false-positive rate.

A run's p = 0.5 rates say little of a detector used at a threshold that lets few non-faces
through, and a method that moves sampling mass to some faces can shift where the faces and the
non-faces meet without separating them better. This reads each run (``WORKDIR/<config>/seed<k>/``,
e.g. the folders of ``experiments/study.py``; read only), scores its validation and test splits
again and reports, per config (runs grouped by their parent folder's name), the figures at one
threshold per run: the one at which ``--fpr`` of the validation non-faces are detected
(``--threshold_from val``, the default and the rule of the trainer's own evaluation,
:func:`jaxface.eval.operating_point.validation_threshold`; the test non-faces where the
validation split has none), or of the test non-faces (``--threshold_from test``). At it: the
test split's per-group detection rates, E[A], Var[A], the worst group, the false positives on
the test non-faces and each group's ROC AUC, the validation split's E[A] and worst group beside
them (for choosing settings), and the worst group and the non-face accuracy at p = 0.5 (all by
the one rule: detected when p > threshold). Runs of earlier studies can so be read at the rule
without retraining. Measured results: experiments/results/README.md.

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
from jaxface.eval import operating_point as op_lib

GROUPS = data_lib.GROUPS
SPLITS = ("val", "test")


def _face_prob(variables, data: data_lib.FaceData) -> np.ndarray:
  """(N,) face probabilities of a split's images ((0,) for an empty split)."""
  if not len(data):
    return np.zeros(0, np.float32)
  return np.asarray(inference.infer(variables, data.images, ("face_prob",))["face_prob"]
                    ).reshape(-1)


def _split_record(op: dict[str, Any] | None) -> dict[str, Any] | None:
  """A split's figures at the threshold, rates in percent; None without faces."""
  if op is None:
    return None
  return {"fpr": op["fpr"], "E_A": op["E_A"], "Var_A": op["Var_A"],
          "worst_group": op["worst_group"], "worst_rate": op["worst_rate"],
          "rates": {g: 100 * v["detection_rate"] for g, v in op["groups"].items()},
          "auc": {g: v["auc"] for g, v in op["groups"].items()}}


def run_figures(run: str | Path, fpr: float, cache: dict | None = None,
                threshold_from: str = "val") -> dict[str, Any]:
  """The figures of one run at its operating point and at 0.5 (see the module docstring).

  Args:
    run: a finished run directory.
    fpr: the false positive rate of the operating point, in (0, 1).
    cache: data config -> the splits, shared by the runs of one study.
    threshold_from: 'val' (the validation non-faces, the test split's where it has none) or
      'test' (the test non-faces).

  Returns:
    One JSON-ready record: the test split's figures at the threshold (``E_A``, ``Var_A``,
    ``worst_group``, ``worst_rate``, ``rates``, ``auc``, ``fpr`` on the test non-faces),
    ``threshold``, ``threshold_from``, ``val`` (the validation split's, or None) and the
    figures at 0.5.
  """
  config, variables = load_run(run)
  cache = {} if cache is None else cache
  key = json.dumps(config.data.to_dict(), sort_keys=True, default=str)
  if key not in cache:  # runs of one study share their data: load it once
    datasets = data_lib.load_datasets(config.data)
    cache[key] = {name: datasets[name] for name in SPLITS}
  splits = cache[key]
  prob = {name: _face_prob(variables, d) for name, d in splits.items()}
  non_faces = {name: prob[name][splits[name].labels == 0] for name in SPLITS}
  threshold = op_lib.validation_threshold(non_faces["val"] if threshold_from == "val" else None,
                                          non_faces["test"], fpr)
  if threshold is None:
    raise SystemExit(f"{run}: the {'validation and ' * (threshold_from == 'val')}test "
                     "splits have no non-faces to set the threshold on")
  ops = {name: op_lib.operating_point_at(threshold, prob[name], splits[name].labels,
                                         splits[name].groups, non_faces[name], GROUPS)
         for name in SPLITS}
  test = splits["test"]
  at_half = evaluation.group_metrics(prob["test"], test.labels, test.groups, group_order=GROUPS)
  return {"run": str(run), "config": Path(run).parent.name, "fpr_target": fpr,
          "threshold": threshold.value, "threshold_from": threshold.source,
          **_split_record(ops["test"]), "val": _split_record(ops["val"]),
          "worst_rate_at_0.5": at_half["worst_rate"],
          "non_face_accuracy_at_0.5": (None if at_half["non_face_accuracy"] is None
                                       else 100 * at_half["non_face_accuracy"])}


def _cell(values: Sequence[float | None], digits: int = 1) -> str:
  """Mean ± sample std of the values given ('-' for none; the value alone for one)."""
  values = [v for v in values if v is not None]
  if not values:
    return "-"
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
  head = (["config", "runs", "threshold from", f"E[A] {tag}", f"Var[A] {tag}", f"worst {tag}"]
          + [f"{g} {tag}" for g in GROUPS] + [f"{g} AUC" for g in GROUPS]
          + [f"test FP % {tag}", f"val E[A] {tag}", f"val worst {tag}", "worst @0.5",
             "non-face @0.5"])
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for name, rs in rows.items():
    val = [r["val"] or {} for r in rs]
    cells = [name, str(len(rs)), "/".join(sorted({r["threshold_from"] for r in rs})),
             _cell([r["E_A"] for r in rs]), _cell([r["Var_A"] for r in rs]),
             _cell([r["worst_rate"] for r in rs])]
    cells += [_cell([r["rates"].get(g) for r in rs]) for g in GROUPS]
    cells += [_cell([r["auc"].get(g) for r in rs], 3) for g in GROUPS]
    cells += [_cell([None if r["fpr"] is None else 100 * r["fpr"] for r in rs], 2),
              _cell([v.get("E_A") for v in val]), _cell([v.get("worst_rate") for v in val]),
              _cell([r["worst_rate_at_0.5"] for r in rs]),
              _cell([r["non_face_accuracy_at_0.5"] for r in rs])]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("runs", nargs="+", help="run directories")
  parser.add_argument("--fpr", type=float, default=op_lib.OPERATING_FPR,
                      help="false-positive rate of the threshold, in [0, 1) (default 0.01)")
  parser.add_argument("--threshold_from", choices=("val", "test"), default="val",
                      help="the non-faces the threshold is chosen on: 'val' (the validation "
                      "split's, the test split's where it has none; default) or 'test'")
  parser.add_argument("--json", default="", help="also write one JSON line per run here")
  args = parser.parse_args(argv)
  if not 0 <= args.fpr < 1:
    raise SystemExit(f"--fpr must be in [0, 1), got {args.fpr}")
  for run in args.runs:
    if not (Path(run) / "metrics.json").is_file():
      raise SystemExit(f"{run}: not a finished run (no metrics.json)")
  cache: dict = {}
  records = [run_figures(run, args.fpr, cache, args.threshold_from) for run in args.runs]
  if args.json:
    with open(args.json, "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in records)
  print(table(records))
  return records


if __name__ == "__main__":
  main()
