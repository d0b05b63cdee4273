"""The one-screen summary the trainer prints at the end of a run.

Its headline is the operating point (the threshold at ``config.operating_fpr`` false positives
on the validation non-faces, :mod:`jaxface.eval.operating_point`): per group the detection rate
at it and the ROC AUC, with the rate at p = 0.5 beside them; E[A], Var[A] and the worst group
at the operating point first, at p = 0.5 second.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from jaxface.eval import whole_photos
from jaxface.eval.formatting import percent
from jaxface.eval.operating_point import fpr_tag

_SOURCES = {"val": "the validation non-faces",
            "test": "the test split's non-faces (the validation split has none)"}


def format_summary(config: ml_collections.ConfigDict, final: dict[str, Any]) -> str:
  """The one-screen end-of-run summary."""
  lines = [f"== {config.name} ({config.model.kind}) finished in {final['wall_time_s']:.1f} s, "
           f"{final['images_per_s']:.0f} train images/s, {final['steps']} steps =="]
  ev = final.get("eval", {})
  if "val_accuracy" in ev:
    lines.append(f"validation accuracy {100 * ev['val_accuracy']:.2f}%")
  test = ev.get("test")
  if test:
    op = test.get("operating_point")
    lines.append(_threshold_line(op))
    lines.extend(group_table(test, op))
    lines.extend(aggregate_lines(test, op, "test-set sampling alone"))
    if test.get("non_face_accuracy") is not None:
      lines.append(f"non-face accuracy {100 * test['non_face_accuracy']:.2f}% at p = 0.5")
    val_op = (ev.get("val") or {}).get("operating_point")
    if val_op and val_op.get("E_A") is not None:
      rates = "  ".join(f"{g} {percent(v['detection_rate'], 2)}"
                        for g, v in val_op["groups"].items())
      lines.append(f"validation {fpr_tag(val_op)}: {rates}  worst {val_op['worst_group']} "
                   f"{val_op['worst_rate']:.2f}%")
  for name, figures in ev.get("test_sets", {}).items():
    lines.extend(_test_set_lines(name, figures))
  for name, figures in ev.get("whole_images", {}).items():
    lines.extend(whole_photos.summary_lines(name, figures))
  return "\n".join(lines)


def _threshold_line(op: dict[str, Any] | None) -> str:
  """Where the operating point's threshold comes from, and the test false positives at it."""
  if not op:
    return "no operating point: neither the validation nor the test split has non-faces"
  measured = ("" if op.get("fpr") is None else
              f"; test non-faces detected at it: {percent(op['fpr'], 2)}")
  source = _SOURCES.get(op["threshold_from"], op["threshold_from"])
  return (f"operating point {fpr_tag(op)}: threshold {op['threshold']:.4f}, chosen at "
          f"{100 * op['fpr_target']:g}% false positives on {source}{measured}")


def group_table(m: dict[str, Any], op: dict[str, Any] | None, label: str = "group",
                indent: str = "") -> list[str]:
  """Per group: n, the rate at the operating point, the ROC AUC, the rate and p(face) at 0.5.

  Args:
    m: :func:`jaxface.evaluation.group_metrics` of a set (by group or by an attribute).
    op: its ``operating_point`` (None: those columns read '-').
    label: the first column's title.
    indent: put before every line.

  Returns:
    The header and one line per group.
  """
  tag = fpr_tag(op) or "@FP"
  lines = [f"{indent}{label:<12}{'n':>6}{tag:>10}{'AUC':>8}{'p>0.5':>10}{'mean p(face)':>14}"]
  for name, g in m["groups"].items():
    at = (op or {}).get("groups", {}).get(name)
    auc = "-" if at is None or at["auc"] is None else f"{at['auc']:.3f}"
    prob = "-" if g["mean_face_prob"] is None else f"{g['mean_face_prob']:.3f}"
    lines.append(f"{indent}{name:<12}{g['n']:>6}"
                 f"{percent(None if at is None else at['detection_rate'], 2):>10}{auc:>8}"
                 f"{percent(g['detection_rate'], 2):>10}{prob:>14}")
  return lines


def aggregate_lines(m: dict[str, Any], op: dict[str, Any] | None, noise_label: str,
                    indent: str = "") -> list[str]:
  """E[A], Var[A] and the worst group at the operating point, then at p = 0.5."""
  lines = []
  if op and op.get("E_A") is not None:
    lines.append(f"{indent}{fpr_tag(op)}: E[A] {op['E_A']:.2f}%  Var[A] {op['Var_A']:.2f}%²  "
                 f"worst group {op['worst_group']} {op['worst_rate']:.2f}%")
  if m.get("E_A") is not None:
    noise = m.get("Var_A_noise")
    lines.append(f"{indent}p > 0.5: E[A] {m['E_A']:.2f}%  Var[A] {m['Var_A']:.2f}%²"
                 + ("" if noise is None else f" ({noise_label}: ~{noise:.2f}%²)")
                 + f"  worst group {m['worst_group']} {m['worst_rate']:.2f}%")
  return lines


def _test_set_lines(name: str, figures: dict[str, Any]) -> list[str]:
  """The summary lines of one extra test set (see :func:`jaxface.eval.splits.test_set_metrics`)."""
  source = {"own": "its own", "test": "the test split's"}.get(figures.get("non_faces_from"))
  skipped = (f", {figures['n_skipped']} unreadable images skipped"
             if figures.get("n_skipped") else "")
  lines = [f"-- test set {name}: {figures['n_faces']} faces, {figures['n_non_faces']} non-faces"
           f"{skipped}" + (f"; false positives and AUC on {source} non-faces" if source else "")]
  op = figures.get("operating_point")
  lines.append(f"  all faces detected {percent(figures['face_detection_rate'])} at p > 0.5"
               + ("" if op is None else f", {percent(op['detection_rate'])} {fpr_tag(op)}"
                  + ("" if op["fpr"] is None else
                     f" (non-faces detected {percent(op['fpr'], 2)})")
                  + ("" if op["auc"] is None else f", AUC {op['auc']:.3f}"))
               + ("" if figures.get("non_face_accuracy") is None else
                  f"; non-face accuracy {percent(figures['non_face_accuracy'])} at p > 0.5"))
  for label, m in [("group", figures)] + [(c, by) for c, by in
                                          figures.get("by_attribute", {}).items()]:
    if not m["groups"]:
      continue
    op = m.get("operating_point")
    lines.extend(group_table(m, op, f"by {label}", indent="  "))
    lines.extend(aggregate_lines(m, op, "sampling", indent="  "))
  return lines
