"""The one-screen summary the trainer prints at the end of a run."""

from __future__ import annotations

from typing import Any

import ml_collections

from jaxface.eval import whole_photos
from jaxface.eval.formatting import frac_pct, percent


def format_summary(config: ml_collections.ConfigDict, final: dict[str, Any]) -> str:
  """The one-screen end-of-run summary."""
  lines = [f"== {config.name} ({config.model.kind}) finished in {final['wall_time_s']:.1f} s, "
           f"{final['images_per_s']:.0f} train images/s, {final['steps']} steps =="]
  ev = final.get("eval", {})
  if "val_accuracy" in ev:
    lines.append(f"validation accuracy {100 * ev['val_accuracy']:.2f}%")
  test = ev.get("test")
  if test:
    lines.append(f"{'group':<10}{'n':>6}{'detection %':>14}{'mean p(face)':>14}")
    for name, g in test["groups"].items():
      rate = frac_pct(g["detection_rate"], 2, missing="-")
      prob = "-" if g["mean_face_prob"] is None else f"{g['mean_face_prob']:.3f}"
      lines.append(f"{name:<10}{g['n']:>6}{rate:>14}{prob:>14}")
    if test.get("E_A") is not None:
      noise = test.get("Var_A_noise")
      lines.append(f"E[A] {test['E_A']:.2f}%  Var[A] {test['Var_A']:.2f}%²"
                   + ("" if noise is None else f" (test-set sampling alone: ~{noise:.2f}%²)")
                   + f"  worst group {test['worst_group']} {test['worst_rate']:.2f}%")
    if test.get("non_face_accuracy") is not None:
      lines.append(f"non-face accuracy {100 * test['non_face_accuracy']:.2f}%")
  for name, figures in ev.get("test_sets", {}).items():
    lines.extend(_test_set_lines(name, figures))
  for name, figures in ev.get("whole_images", {}).items():
    lines.extend(whole_photos.summary_lines(name, figures))
  return "\n".join(lines)


def _test_set_lines(name: str, figures: dict[str, Any]) -> list[str]:
  """The summary lines of one extra test set (see :func:`jaxface.eval.splits.test_set_metrics`)."""
  source = {"own": "its own", "test": "the test split's"}.get(figures.get("non_faces_from"))
  skipped = (f", {figures['n_skipped']} unreadable images skipped"
             if figures.get("n_skipped") else "")
  lines = [f"-- test set {name}: {figures['n_faces']} faces, {figures['n_non_faces']} non-faces"
           f"{skipped}" + (f"; operating point on {source} non-faces" if source else "")]
  op = figures.get("operating_point")
  lines.append(f"  all faces detected {percent(figures['face_detection_rate'])}"
               + ("" if op is None else f" ({percent(op['detection_rate'])} at "
                  f"{100 * op['fpr_target']:g}% false positives, AUC {op['auc']:.3f})")
               + ("" if figures.get("non_face_accuracy") is None else
                  f"; non-face accuracy {percent(figures['non_face_accuracy'])}"))
  for label, m in [("group", figures)] + [(c, by) for c, by in
                                          figures.get("by_attribute", {}).items()]:
    op = m.get("operating_point")
    rates = "  ".join(
        f"{g} {percent(v['detection_rate'])}"
        + ("" if op is None or g not in op["groups"] else
           f" ({percent(op['groups'][g]['detection_rate'])} @{100 * op['fpr_target']:g}%FP, "
           f"AUC {op['groups'][g]['auc']:.3f})")
        for g, v in m["groups"].items())
    if not rates:
      continue
    lines.append(f"  by {label}: {rates}")
    if m.get("E_A") is not None:
      noise = m.get("Var_A_noise")
      lines.append(f"  E[A] {m['E_A']:.2f}%  Var[A] {m['Var_A']:.2f}%²"
                   + ("" if noise is None else f" (sampling ~{noise:.2f}%²)")
                   + f"  worst {m['worst_group']} {m['worst_rate']:.2f}%"
                   + ("" if op is None else f"; at {100 * op['fpr_target']:g}% false positives "
                      f"(threshold {op['threshold']:.4f}) E[A] {op['E_A']:.2f}%  worst "
                      f"{op['worst_group']} {op['worst_rate']:.2f}%"))
  return lines
