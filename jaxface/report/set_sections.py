"""The report's sections of the extra test sets and of the whole-photo sets, every run side by
side.

An extra test set (``config.data.extra_test_sets``) is scored by each run here, with the
figures of :func:`jaxface.eval.splits.test_set_metrics`; a whole-photo set is shown from the
figures each run wrote to its ``metrics.json`` (:mod:`jaxface.eval.whole_photos`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jaxface import detect, evaluation
from jaxface.eval import splits
from jaxface.eval.formatting import frac_pct, pct
from jaxface.eval.operating_point import fpr_tag
from jaxface.report import figures as fig_lib
from jaxface.report import findings as fnd
from jaxface.report import page as page_lib
from jaxface.report.findings import RunArtifacts


def _group_rows(prefix: str, order: Sequence[str], ms: Sequence[dict], ops: Sequence[dict],
                fpr: float) -> list[tuple[str, list]]:
  """Per group: n, the detection rate at 0.5 and at the operating point, the ROC AUC."""
  rows = []
  for g in order:
    rows.append((f"{prefix}{g}: n", [str(m["groups"].get(g, {}).get("n", "–")) for m in ms]))
    rows.append((f"{prefix}{g}: detected %", [frac_pct(m["groups"].get(g, {})
                                                       .get("detection_rate"), 2) for m in ms]))
    rows.append((f"{prefix}{g}: detected at {fpr:g}% false positives %",
                 [frac_pct(op.get("groups", {}).get(g, {}).get("detection_rate"), 2)
                  for op in ops]))
    rows.append((f"{prefix}{g}: ROC AUC", [pct(op.get("groups", {}).get(g, {}).get("auc"), 3)
                                          for op in ops]))
  return rows


def _worst(m: dict) -> str:
  return f"{m['worst_group']} {m['worst_rate']:.2f}%" if m.get("worst_group") else "–"


def test_set_rows(metrics_list: Sequence[dict]) -> list[tuple[str, list]]:
  """The rows of an extra test set's table, one column per run.

  Args:
    metrics_list: :func:`jaxface.eval.splits.test_set_metrics` of each run on the set.

  Returns:
    ``[(label, cells)]``: per group (the set's, then each attribute's) the detection rate at
    0.5, at the operating point and the ROC AUC; then E_A, Var_A, worst group and threshold.
  """
  rows = []
  groupings = [("", None)] + [(f"{c} ", c) for c in metrics_list[0].get("by_attribute", {})]
  for prefix, column in groupings:
    ms = [m if column is None else m["by_attribute"].get(column, {}) for m in metrics_list]
    ops = [m.get("operating_point") or {} for m in ms]
    order = list(dict.fromkeys(g for m in ms for g in m.get("group_order", [])))
    fpr = 100 * next((op["fpr_target"] for op in ops if op), 0.01)
    rows += _group_rows(prefix, order, ms, ops, fpr)
    label = column or "groups"
    rows += [
        (f"E_A % ({label})", [pct(m.get("E_A"), 2) for m in ms]),
        (f"Var_A %² ({label})", [pct(m.get("Var_A"), 2) for m in ms]),
        (f"Var_A noise %² ({label})", [pct(m.get("Var_A_noise"), 2) for m in ms]),
        (f"worst group ({label})", [_worst(m) for m in ms]),
        (f"E_A at {fpr:g}% false positives % ({label})", [pct(op.get("E_A"), 2) for op in ops]),
        (f"worst group at {fpr:g}% false positives ({label})", [_worst(op) for op in ops]),
    ]
  ops = [m.get("operating_point") or {} for m in metrics_list]
  rows += [
      ("all faces detected %", [frac_pct(m.get("face_detection_rate"), 2)
                                for m in metrics_list]),
      ("threshold at the operating point", [pct(op.get("threshold"), 4) for op in ops]),
      ("threshold chosen on the non-faces of", [op.get("threshold_from", "–") for op in ops]),
      ("false positives on the set's non-faces %", [frac_pct(op.get("fpr"), 2) for op in ops]),
      ("ROC AUC, all faces", [pct(op.get("auc"), 3) for op in ops]),
  ]
  return rows


def _roc_figure(page: page_lib.Page, name: str, data, run: RunArtifacts, slug: str,
                m: dict, prob: np.ndarray, non_face_prob: np.ndarray) -> None:
  """One run's ROC curves per group (and per attribute) on an extra test set."""
  labels = np.asarray(data.labels)
  op = m["operating_point"]
  prob_faces = np.asarray(prob).reshape(-1)[labels == 1]
  panels = []
  for column in [None, *m["by_attribute"]]:
    m_by = m if column is None else m["by_attribute"][column]
    face_groups = (np.asarray(data.groups) if column is None else
                   np.asarray(data.attributes[column]).astype(str))[labels == 1]
    curves = {g: evaluation.roc_curve(prob_faces[face_groups == g], non_face_prob)[:2]
              for g in m_by["operating_point"]["groups"]}
    panels.append((f"by {column or 'group'}", curves))
  path = fig_lib.plot_group_roc(panels, page.out_dir / f"{slug}_{name}_roc.png",
                                f"{run.name} on {name}: ROC per group", op["fpr"])
  aucs = ", ".join(f"{g} {v['auc']:.3f}" for g, v in op["groups"].items())
  page.figure(path, f"{run.name} on {name}: share of each group's faces detected against "
              f"the share of the non-faces detected, as the threshold falls (dotted: the "
              f"operating point {fpr_tag(op)}, threshold {op['threshold']:.4f} chosen on the "
              f"run's {'validation' if op['threshold_from'] == 'val' else 'test'} non-faces, "
              f"which detects {frac_pct(op['fpr'], 2)}% of these). ROC AUC per group: "
              f"{aucs or 'no groups'}.", run.name)


def test_set_section(page: page_lib.Page, name: str, data, runs: Sequence[RunArtifacts],
                     results: Sequence[dict], slugs: Sequence[str],
                     columns: Sequence[str]) -> dict:
  """Adds one extra test set's section (table side by side, ROC figures); returns figures."""
  import jax.numpy as jnp
  labels = np.asarray(data.labels)
  groups = np.asarray(data.groups)
  order = fnd.order_groups(groups[labels == 1].tolist())
  comp = ", ".join(f"{g} {int(np.sum((groups == g) & (labels == 1)))}" for g in order if g)
  page.heading(f"Test set {name}")
  own = bool(np.any(labels == 0))
  page.para(f"{int(np.sum(labels == 1))} faces ({comp or 'no groups'}) and "
            f"{int(np.sum(labels == 0))} non-faces"
            + (f"; {data.num_skipped} unreadable images skipped" if data.num_skipped else "")
            + f". The operating point is each run's threshold at which at most "
            f"{100 * runs[0].operating_fpr:g}% of its "
            "validation non-faces are detected (of its test non-faces where the validation "
            "split has none), the same for every group and every set; the false positives at "
            "it and each group's ROC AUC (free of any threshold) are measured on "
            + ("the set's own non-faces." if own else "the main test set's non-faces (the set "
               "has none)."))
  found, metrics_list, evaluated = {}, [], []
  for run, res, slug in zip(runs, results, slugs):
    if tuple(run.images.shape[1:]) != tuple(data.images.shape[1:]):
      page.para(f"{run.name}: not evaluated on {name} (its images are {run.images.shape[1]}x"
                f"{run.images.shape[2]}, the set's {data.images.shape[1]}x"
                f"{data.images.shape[2]}).")
      continue
    prob = evaluation.predict(run.variables, data.images, run.batch_size,
                              dtype=jnp.dtype(run.dtype), recon=run.recon).face_prob
    fallback = np.asarray(res["pred"].face_prob).reshape(-1)[np.asarray(run.labels) == 0]
    m = splits.test_set_metrics(prob, data, fallback, tuple(columns), threshold=res["threshold"])
    found[run.name] = m
    metrics_list.append(m)
    evaluated.append(run)
    if m["operating_point"] is not None and m["non_faces_from"] is not None:
      non_face_prob = np.asarray(prob).reshape(-1)[labels == 0] if own else fallback
      _roc_figure(page, name, data, run, slug, m, prob, non_face_prob)
  if metrics_list:
    header = ["", *(fnd.display_name(r.name, r.kind) for r in evaluated)]
    page.raw(page_lib.table(header, [[label, *cells]
                                     for label, cells in test_set_rows(metrics_list)]))
  return found


def whole_image_rows(figures_list: Sequence[dict]) -> list[tuple[str, list]]:
  """Rows of a whole-image set's side-by-side table, one cell per run (``None``: not run)."""
  groups = fnd.order_groups([g for f in figures_list if f
                             for g in f["faces_found"]["all"] if g != "overall"])

  def cells(fn):
    return [("–" if f is None else fn(f)) for f in figures_list]

  def found(section, g):
    return lambda f: frac_pct(f[section]["all"].get(g, {}).get("rate"), 2)

  def photos(section):
    return lambda f: f"{f[section]['n_with_detection']}/{f[section]['n_photos']}"

  rows = [(f"{g}: found %", cells(found("faces_found", g))) for g in groups]
  rows += [
      ("E_A %", cells(lambda f: pct(f["summary"]["E_A"], 2))),
      ("Var_A %²", cells(lambda f: pct(f["summary"]["Var_A"], 2))),
      ("worst group", cells(lambda f: f"{f['summary']['worst_group']} "
                            f"{pct(f['summary']['worst_rate'], 2)}")),
      ("threshold", cells(lambda f: f"{f['threshold']:.5f}")),
      ("non-face photos with a detection", cells(photos("false_detections"))),
  ]
  rows += [(f"{g}: found at p > 0.5 %", cells(found("faces_found_at_default", g)))
           for g in groups]
  rows += [("non-face photos with a detection at p > 0.5",
            cells(photos("false_detections_at_default")))]
  return rows


def _example_portraits(figures: dict, per_group: int) -> list[tuple[str, list[dict]]]:
  """Up to ``per_group`` portraits of each group, spread over the range of best scores."""
  by_group: dict[str, list[dict]] = {}
  for entry in figures["portraits"].values():
    by_group.setdefault(entry["group"], []).append(entry)
  rows = []
  for group in fnd.order_groups(list(by_group)):
    entries = sorted(by_group[group], key=lambda e: e["best_prob"])
    picks = sorted(set(np.linspace(0, len(entries) - 1, per_group).round().astype(int)))
    photos = []
    for i in picks:
      try:
        photo = detect.read_photo(entries[i]["file"])
      except ValueError:  # moved or deleted since the run: shown without it
        continue
      photos.append({"photo": photo, "box": entries[i]["best_box"],
                     "prob": entries[i]["best_prob"], "found": entries[i]["found"]})
    if photos:
      rows.append((group, photos))
  false_photos = []  # the non-face photos scoring highest: red where one is a detection
  for entry in figures.get("false_windows", [])[:per_group]:
    try:
      photo = detect.read_photo(entry["file"])
    except ValueError:
      continue
    false_photos.append({"photo": photo, "box": entry["best_box"], "prob": entry["best_prob"],
                         "found": not entry["detected"]})
  if false_photos:
    rows.append(("non-face", false_photos))
  return rows


def whole_image_section(page: page_lib.Page, name: str, runs: Sequence[RunArtifacts],
                        slugs: Sequence[str], per_group: int = 5) -> dict:
  """One whole-image set's section from the runs' own figures (``metrics.json``)."""
  figures_list = [((r.train_metrics or {}).get("eval", {}).get("whole_images") or {}).get(name)
                  for r in runs]
  first = next(f for f in figures_list if f)
  page.heading(f"Whole images {name}")
  options = first["options"]
  page.para(f"{first['n_photos']} photos scanned with square windows ({options['n_scales']} "
            f"sides from {options['min_frac']:g} to {options['max_frac']:g} "
            f"of the shorter side, stride {options['stride_frac']:g} of the side, about "
            f"{first['n_windows_per_portrait']:.0f} windows per photo). The threshold is set "
            f"so that at most {100 * first['max_false_rate']:g}% of the "
            f"{first['false_detections']['n_photos']} non-face photos have a window above it "
            "(a detection); a portrait counts as found when such a window overlaps its face box "
            f"with IoU >= {first['faces_found']['min_iou']:g} (any window where it has no box).")
  header = ["", *(fnd.display_name(r.name, r.kind) for r in runs)]
  page.raw(page_lib.table(header, [[label, *cells]
                                   for label, cells in whole_image_rows(figures_list)]))
  for run, figures, slug in zip(runs, figures_list, slugs):
    if not figures:
      page.para(f"{run.name}: not evaluated on {name}.")
      continue
    if figures.get("errors"):
      page.para(f"{run.name}: {len(figures['errors'])} unreadable photos skipped, e.g. "
                f"{next(iter(figures['errors'].values()))}")
    rows = _example_portraits(figures, per_group)
    if not rows:
      page.para(f"{run.name}: the photos of {name} are no longer where the run read them.")
      continue
    path = fig_lib.plot_whole_image_examples(rows, page.out_dir / f"{slug}_{name}_examples.png",
                                             f"{run.name} on {name}: best window per photo")
    page.figure(path, f"{run.name} on {name}: photos of each group, from its lowest to its "
                "highest best-window score, with the best window (green: the face is found at "
                f"the threshold {figures['threshold']:.5f}; red: missed) and its face "
                "probability; last row: the test non-face photos with the highest-scoring "
                "windows (red: a false detection).", run.name)
  return {r.name: f for r, f in zip(runs, figures_list) if f}
