"""The bias-level study: every row of ``experiments/study.py`` trained on each training
manifest of ``--train_sets``, read against the darker share of its training faces.

``write`` turns the per-set studies into ``WORKDIR/skew.md`` (one table per test set with the
darker share as a column, each row's worst-group gain over the CNN paired by seed, and the
exchange rate), ``WORKDIR/skew.json`` and ``WORKDIR/skew.png`` (worst group and Var[A] at the
operating point against the darker share, one line per row, the seed spread as a band).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

DARK = ("DF", "DM")
GROUP_ORDER = ("DF", "DM", "LF", "LM")
UTK_TEST = "utkface_test"
REFERENCE = "cnn"  # the row the others are measured against


def train_counts(manifest: str | Path) -> dict[str, float]:
  """Training faces of a manifest CSV (columns split, label, group).

  Returns:
    ``{'n_faces', 'n_dark', 'share_dark'}`` (share in percent).
  """
  n_faces = n_dark = 0
  with open(manifest, newline="") as f:
    for row in csv.DictReader(f):
      if row["split"] == "train" and row["label"] == "1":
        n_faces += 1
        n_dark += row["group"] in DARK
  if n_faces == 0:
    raise SystemExit(f"--train_sets: {manifest} has no training faces")
  return {"n_faces": n_faces, "n_dark": n_dark, "share_dark": 100.0 * n_dark / n_faces}


def _crop_fields(groups: list[str], fitzpatrick: bool) -> list[tuple[str, str, int]]:
  """(column header, summary key, decimals) of a crop test set's skew table."""
  fields = [("worst @1%FP", "op_worst_rate", 1), ("Var[A] @1%FP", "op_Var_A", 1)]
  fields += [(f"{g} @1%FP", f"op_rate_{g}", 1) for g in groups]
  if fitzpatrick:
    fields += [("type 6 @1%FP", "fitzpatrick_op_rate_6", 1),
               ("types 1-3 - type 6 @1%FP", "type6_gap", 1)]
  fields += [("worst @0.5", "worst_rate", 1)]
  if fitzpatrick:
    fields += [("type 6 @0.5", "fitzpatrick_rate_6", 1)]
  return fields + [(f"{g} AUC", f"auc_{g}", 3) for g in DARK if g in groups]


def _photo_fields(groups: list[str]) -> list[tuple[str, str, int]]:
  """(column header, summary key, decimals) of a whole-photo set's skew table."""
  return ([("worst found", "worst_rate", 1), ("Var[A]", "Var_A", 1)]
          + [(f"{g} found", f"found_{g}", 1) for g in groups]
          + [("test false photos %", "false_photos", 1), ("threshold", "threshold", 4)]
          + [(f"{g} found @0.5", f"found05_{g}", 1) for g in DARK if g in groups]
          + [("false photos @0.5 %", "false_photos05", 1)])


def per_seed(results: Mapping[str, dict[str, Any]], test_set: str, kind: str
             ) -> dict[str, dict[str, list[dict[str, Any]]]]:
  """Each training set's and row's per-seed summaries on one test set.

  Args:
    results: ``{train set: study.json content}``.
    test_set: ``'utkface_test'``, an extra test set or a whole-photo set.
    kind: ``'test'``, ``'test_sets'`` or ``'whole_images'``.

  Returns:
    ``{row: {train set: [summary per seed]}}``.
  """
  out: dict[str, dict[str, list[dict[str, Any]]]] = {}
  for set_name, result in results.items():
    for row, runs in result["runs"].items():
      summaries = (list(runs) if kind == "test" else
                   [_with_type6_gap({**r[kind][test_set], "seed": r["seed"]}) for r in runs
                    if test_set in r.get(kind, {})])
      if summaries:
        out.setdefault(row, {})[set_name] = summaries
  return out


def _with_type6_gap(summary: dict[str, Any]) -> dict[str, Any]:
  """``summary`` with ``type6_gap``: the mean rate of Fitzpatrick types 1-3 minus type 6's at
  the operating point (points), where the set has them."""
  lighter = [summary.get(f"fitzpatrick_op_rate_{t}") for t in (1, 2, 3)]
  darkest = summary.get("fitzpatrick_op_rate_6")
  if darkest is not None and None not in lighter:
    summary["type6_gap"] = float(np.mean(lighter)) - darkest
  return summary


def _stats(summaries: list[dict[str, Any]], key: str) -> tuple[float, float, int] | None:
  values = [s[key] for s in summaries if s.get(key) is not None]
  if not values:
    return None
  arr = np.asarray(values, np.float64)
  return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0, int(arr.size)


def _cell(stat: tuple[float, float, int] | None, digits: int) -> str:
  return "-" if stat is None else f"{stat[0]:.{digits}f} ± {stat[1]:.{digits}f}"


def skew_table(title: str, seeds: dict[str, dict[str, list[dict[str, Any]]]],
               counts: Mapping[str, dict[str, float]],
               fields: list[tuple[str, str, int]]) -> str:
  """A Markdown table: one line per (row, training set), mean ± std over seeds."""
  header = ["row", "train set", "darker %", "darker faces", "seeds", *(f[0] for f in fields)]
  lines = [title, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for row, by_set in seeds.items():
    for set_name in counts:
      summaries = by_set.get(set_name)
      if not summaries:
        continue
      cells = [row, set_name, f"{counts[set_name]['share_dark']:.1f}",
               str(counts[set_name]["n_dark"]), str(len(summaries))]
      cells += [_cell(_stats(summaries, key), digits) for _, key, digits in fields]
      lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def paired_gains(seeds: dict[str, dict[str, list[dict[str, Any]]]], key: str
                 ) -> dict[str, dict[str, tuple[float, float, int]]]:
  """Each row's ``key`` minus the CNN's, paired by seed, per training set.

  Returns:
    ``{row: {train set: (mean, sample std, seeds)}}`` (rows other than the CNN).
  """
  reference = seeds.get(REFERENCE, {})
  out: dict[str, dict[str, tuple[float, float, int]]] = {}
  for row, by_set in seeds.items():
    if row == REFERENCE:
      continue
    for set_name, summaries in by_set.items():
      base = {s["seed"]: s[key] for s in reference.get(set_name, []) if s.get(key) is not None}
      diffs = [s[key] - base[s["seed"]] for s in summaries
               if s.get(key) is not None and s["seed"] in base]
      if diffs:
        arr = np.asarray(diffs, np.float64)
        out.setdefault(row, {})[set_name] = (
            float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0, int(arr.size))
  return out


def exchange_rate(cnn_curve: list[tuple[float, float]], target: float) -> tuple[str, float | None]:
  """How many darker training faces the CNN needs to reach ``target``, relative to the first
  point of its curve.

  Args:
    cnn_curve: ``[(darker training faces, worst group %)]`` sorted by the count.
    target: the worst group (%) to reach.

  Returns:
    ``(text, ratio)``: the ratio read by linear interpolation between the curve's points
    ('<= 1x' when the CNN is already there, '> Nx' when it never gets there; ratio None then).
  """
  n0 = cnn_curve[0][0]
  if cnn_curve[0][1] >= target:
    return "<= 1x", None
  for (n_a, w_a), (n_b, w_b) in zip(cnn_curve, cnn_curve[1:]):
    if w_b >= target:
      n = n_a + (target - w_a) / (w_b - w_a) * (n_b - n_a) if w_b != w_a else n_b
      return f"{n / n0:.1f}x", n / n0
  return f"> {cnn_curve[-1][0] / n0:.1f}x", None


def _test_sets(results: Mapping[str, dict[str, Any]]) -> list[tuple[str, str]]:
  """(test set, kind) of the study: the UTKFace test split, the crops, the whole photos."""
  names = [(UTK_TEST, "test")]
  for kind in ("test_sets", "whole_images"):
    for result in results.values():
      for name in result[kind]["summary"]:
        if (name, kind) not in names:
          names.append((name, kind))
  return names


def _groups(seeds: dict[str, dict[str, list[dict[str, Any]]]], prefix: str) -> list[str]:
  present = {k[len(prefix):] for by_set in seeds.values() for ss in by_set.values()
             for s in ss for k in s if k.startswith(prefix)}
  return [g for g in GROUP_ORDER if g in present]


def plot(path: Path, curves: dict[str, dict[str, dict[str, list[list[float]]]]]) -> None:
  """Worst group and Var[A] against the darker share, one panel column per test set.

  Args:
    curves: ``{test set: {"worst": {row: [[share, mean, std]]}, "var": {...}}}``.
  """
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  names = list(curves)
  fig, axes = plt.subplots(2, len(names), figsize=(4.2 * len(names), 7), squeeze=False)
  for col, name in enumerate(names):
    for r, (metric, label) in enumerate((("worst", "worst group %"), ("var", "Var[A] %²"))):
      ax = axes[r][col]
      for row, points in curves[name][metric].items():
        x, mean, std = (np.asarray(v, np.float64) for v in zip(*points))
        line, = ax.plot(x, mean, marker="o", label=row)
        ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.15)
      ax.set_xlabel("darker share of the training faces (%)")
      ax.set_ylabel(label)
      if r == 0:
        ax.set_title(name)
      ax.grid(alpha=0.3)
  axes[0][0].legend(fontsize=8)
  fig.suptitle("Worst group and Var[A] at the operating point (mean ± std over seeds)")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write(root: Path, train_sets: Mapping[str, str], results: Mapping[str, dict[str, Any]],
          argv_text: str = "") -> dict[str, Any]:
  """Writes ``root/skew.md``, ``root/skew.json`` and ``root/skew.png``.

  Args:
    root: the study's work folder.
    train_sets: ``{name: manifest}`` in the study's order.
    results: ``{name: study.json content}`` of each training set.
    argv_text: the study's command-line arguments, quoted in the Markdown.

  Returns:
    The skew.json content.
  """
  counts = {name: train_counts(path) for name, path in train_sets.items()}
  order = sorted(counts, key=lambda n: counts[n]["n_dark"])
  counts = {name: counts[name] for name in order}
  shares = ", ".join(f"{n}: {c['share_dark']:.1f}% darker" for n, c in counts.items())
  sections = [f"Bias-level study: every row trained on {len(counts)} training sets ({shares})"
              ", mean ± sample std over seeds; rates in %, Var[A] in %². @1%FP = at the "
              "threshold letting 1% of the run's validation non-faces through; whole photos: "
              "threshold from the validation photos, the test photos' false-photo rate measured.",
              f"    python experiments/study.py {argv_text}"]
  curves: dict[str, Any] = {}
  gains_out: dict[str, Any] = {}
  rates_out: dict[str, Any] = {}
  for test_set, kind in _test_sets(results):
    seeds = per_seed(results, test_set, kind)
    if kind == "whole_images":
      fields, worst, var = _photo_fields(_groups(seeds, "found_")), "worst_rate", "Var_A"
    else:
      fitz = any("fitzpatrick_op_rate_6" in s for by_set in seeds.values()
                 for ss in by_set.values() for s in ss)
      fields, worst, var = (_crop_fields(_groups(seeds, "op_rate_"), fitz), "op_worst_rate",
                            "op_Var_A")
    sections.append(skew_table(f"Test set `{test_set}`:", seeds, counts, fields))
    gains = paired_gains(seeds, worst)
    gains_out[test_set] = gains
    if gains:
      header = ["row", *(f"{n} ({c['share_dark']:.0f}%)" for n, c in counts.items())]
      lines = [f"Worst-group gain over the CNN on `{test_set}`, paired by seed (points, "
               "mean ± std):", "", "| " + " | ".join(header) + " |",
               "|" + "---|" * len(header)]
      for row, by_set in gains.items():
        lines.append("| " + " | ".join([row, *(_cell(by_set.get(n), 1) for n in counts)]) + " |")
      sections.append("\n".join(lines))
    cnn = seeds.get(REFERENCE, {})
    cnn_curve = [(counts[n]["n_dark"], _stats(cnn[n], worst)[0]) for n in counts
                 if n in cnn and _stats(cnn[n], worst) is not None]
    first = next(iter(counts))
    rates = {}
    if len(cnn_curve) > 1:
      for row, by_set in seeds.items():
        stat = _stats(by_set.get(first, []), worst)
        if row != REFERENCE and stat is not None:
          rates[row] = exchange_rate(cnn_curve, stat[0])[0]
    rates_out[test_set] = rates
    if rates:
      sections.append(
          f"Exchange rate on `{test_set}`: the CNN needs this many times the {first} set's "
          f"{counts[first]['n_dark']} darker training faces to reach each row's worst group "
          f"at {first} (linear between the sets): "
          + "; ".join(f"{row} {text}" for row, text in rates.items()) + ".")
    curves[test_set] = {
        metric: {row: [[counts[n]["share_dark"], *_stats(by_set[n], key)[:2]]
                       for n in counts if n in by_set and _stats(by_set[n], key) is not None]
                 for row, by_set in seeds.items()}
        for metric, key in (("worst", worst), ("var", var))}
  cost = {row: _stats([r for result in results.values() for r in result["runs"].get(row, [])],
                      "wall_time_s") for row in next(iter(results.values()))["runs"]}
  sections.append("CPU cost (2-core CPU, s per run including evaluation, mean ± std): "
                  + "; ".join(f"{row} {_cell(stat, 0)}" for row, stat in cost.items()
                              if stat is not None) + ".")
  sections.append("![worst group against the darker share](skew.png)")
  root.mkdir(parents=True, exist_ok=True)
  plot(root / "skew.png", curves)
  out = {"train_sets": {n: {"manifest": train_sets[n], **counts[n]} for n in counts},
         "gains_over_cnn": gains_out, "exchange_rate": rates_out, "curves": curves,
         "cost_s": cost}
  (root / "skew.json").write_text(json.dumps(out, indent=2))
  md = "\n\n".join(sections) + "\n"
  (root / "skew.md").write_text(md)
  print(md, flush=True)
  return out
