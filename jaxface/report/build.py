"""Assembles the report: findings of each run, their figures and the HTML page.

:func:`build_report` works from in-memory :class:`~jaxface.report.findings.RunArtifacts`;
:func:`write_report` reads run directories (without writing to them) and calls it.

The page tells the story in this order: the runs' configuration and training (curves, and for
a resampling run the sampling mass per group over epochs), the detection rate per group (and
across runs, side by side), then for each VAE what its latent space learned (faces it
reconstructs best and worst, latent traversals), how detection varies with latent density,
which faces the risk scores flag, how detection falls off with the scores, and the average face
per score percentile. Each extra test set of the main run's ``config.data.extra_test_sets`` gets
a section of its own after the comparison: every run side by side (rates per group and per
attribute such as the Fitzpatrick type, at 0.5 and at 1% false positives, ROC AUCs) and a ROC
figure per run with a curve per group.
"""

from __future__ import annotations

import collections
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxface import evaluation
from jaxface.report import figures as fig_lib
from jaxface.report import findings as fnd
from jaxface.report import page as page_lib
from jaxface.report.findings import RunArtifacts


def _finite(x: float) -> float | None:
  return float(x) if np.isfinite(x) else None


def _load_run(directory: Path):
  """``(config, variables)`` of a run directory: the one place the report loads a run."""
  from jaxface import checkpoints
  return checkpoints.load_run(directory)


def _slug(name: str, taken: set[str]) -> str:
  base = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "run"
  slug, i = base, 2
  while slug in taken:
    slug, i = f"{base}-{i}", i + 1
  taken.add(slug)
  return slug


def _training_section(page: page_lib.Page, run: RunArtifacts, slug: str,
                      order: Sequence[str]) -> dict:
  """Adds the run's configuration, training curves and sampling mass; returns their findings."""
  out = page.out_dir
  found: dict[str, Any] = {}
  if run.config is not None:
    seed = run.config.get("seed")
    found["seed"] = seed
    recon = (f", reconstruction loss {fnd.RECON_LABELS.get(run.recon, run.recon)}"
             if run.kind != "cnn" else "")
    page.raw(page_lib.config_details(
        run.config, f"Configuration of {run.name} (seed {seed}, dtype {run.dtype}{recon}): "
        "click to show"))
  curves = fnd.training_curves(run.log or [])
  if curves is not None:
    path = fig_lib.plot_training_curves({run.name: curves}, out / f"{slug}_training.png")
    val = ", ".join(f"epoch {int(e)} {100 * v:.1f}%" for e, v in
                    zip(curves.epoch, curves.val_accuracy))
    page.figure(path, f"{run.name}: training loss (left; the total and its terms, each the mean "
                "over a logging window of metrics.jsonl) and accuracy (right; thin: training "
                "batches, which a resampling run draws with its sampling weights; dots: the "
                f"validation set at each epoch end). Validation accuracy: {val or 'not logged'}.",
                run.name)
    found["training"] = {"step": curves.step, "loss": curves.loss,
                         "loss_names": curves.loss_names, "accuracy": curves.accuracy,
                         "epoch": curves.epoch, "val_accuracy": curves.val_accuracy}
  mass = fnd.sampling_mass(run.resampling or [], order)
  if mass is not None:
    path = fig_lib.plot_sampling_mass(mass, out / f"{slug}_sampling_mass.png")
    first, last = mass.mass[0], mass.mass[-1]
    change = ", ".join(f"{g} {100 * a:.1f}% → {100 * b:.1f}%"
                       for g, a, b in zip(mass.groups, first, last))
    page.figure(path, f"{run.name}: the share of the training sampling mass on each group's "
                f"faces, from the probabilities set at the start of every epoch (log scale); "
                f"the dashed lines are each group's share of the training faces, the mass "
                f"uniform sampling would give. First to last epoch: {change}.", run.name)
    header = ["epoch", *(f"{g} mass %" for g in mass.groups), "effective sample size %"]
    rows = [[int(epoch), *(f"{100 * v:.2f}" for v in row), fnd.frac_pct(_finite(ess), 1)]
            for epoch, row, ess in zip(mass.epochs, mass.mass, mass.ess_fraction)]
    if np.isfinite(mass.share).any():
      rows.append(["share of the training faces",
                   *(fnd.frac_pct(_finite(share), 2) for share in mass.share), "–"])
    page.raw(page_lib.table(header, rows))
    found["sampling_mass"] = mass._asdict()
  return found


def _run_diagnostics(page: page_lib.Page, run: RunArtifacts, result: dict, slug: str,
                     order: list[str], n_grid: int) -> dict:
  """Adds one run's diagnostic figures to the page; returns its machine-readable findings."""
  import jax.numpy as jnp
  out = page.out_dir
  dtype = jnp.dtype(run.dtype)
  faces = result["faces"]
  images = run.images[faces]
  groups = np.asarray(run.groups)[faces]
  pred = result["face_pred"]
  scores = result["scores"]
  found: dict[str, Any] = {}
  if not len(faces):
    page.para("The test set has no faces: no diagnostics.")
    return found
  n_show = min(n_grid, len(faces))
  comp = fnd.composition

  if result["vae"]:
    # --- Reconstruction: what the VAE finds easy and hard to reproduce.
    recon_label = fnd.RECON_LABELS.get(run.recon, run.recon)
    order_err = np.argsort(pred.recon_error, kind="stable")
    low, high = order_err[:n_show], order_err[::-1][:n_show]
    both = np.concatenate([low, high])
    recon = evaluation.reconstruct(run.variables, images[both], run.batch_size, dtype=dtype)
    decimals = fnd.distinct_decimals(pred.recon_error[both], 3, 6)
    path = fig_lib.plot_face_panels([
        {"title": "Lowest reconstruction loss (each face above its reconstruction)",
         "images": images[low], "recon": recon[:n_show],
         "captions": fnd.face_captions(groups[low], pred.recon_error[low], decimals,
                                       f"{recon_label} ")},
        {"title": "Highest reconstruction loss", "images": images[high],
         "recon": recon[n_show:],
         "captions": fnd.face_captions(groups[high], pred.recon_error[high], decimals,
                                       f"{recon_label} ")},
    ], out / f"{slug}_reconstruction.png", f"{run.name}: test faces by reconstruction loss")
    page.figure(path, f"{run.name}: the {n_show} test faces the VAE reconstructs best (top) and "
                f"worst (bottom), each above its reconstruction from the latent mean, with "
                f"group and {recon_label} loss (the run's reconstruction loss, also its "
                f"epistemic score). Best: {comp(groups[low], order)}. Worst: "
                f"{comp(groups[high], order)}. Faces reconstructed badly are ones the latent "
                "space represents poorly; the pixel error also grows with image contrast, so "
                "dark, low-contrast faces can be easy to reproduce pixel by pixel.", run.name)
    found["reconstruction"] = {
        "kind": run.recon,
        "lowest_groups": dict(collections.Counter(groups[low].tolist())),
        "highest_groups": dict(collections.Counter(groups[high].tolist())),
        "mean_by_group": {g: float(pred.recon_error[groups == g].mean())
                          for g in order if np.any(groups == g)}}

    # --- Latent traversals of the highest-variance dimensions.
    traversal = evaluation.latent_traversal(run.variables, pred.z_mean, n_dims=5, dtype=dtype)
    path = fig_lib.plot_latent_traversal(pred.z_mean, traversal,
                                         out / f"{slug}_latent_traversal.png")
    variances = np.var(np.asarray(pred.z_mean, np.float64), axis=0)
    top_share = float(variances[traversal.dims].sum() / max(variances.sum(), 1e-30))
    change = fnd.traversal_change(traversal)
    change_text = ", ".join(f"z[{int(d)}] {c:.3f}" for d, c in zip(traversal.dims, change))
    page.figure(path, f"{run.name}: the {len(traversal.dims)} latent dimensions with the largest "
                "variance of the latent mean over the test faces (together "
                f"{100 * top_share:.0f}% of the total variance of the "
                f"{pred.z_mean.shape[1]} dimensions). Above each strip: the histogram of that "
                "dimension over the test faces; below: the mean latent code of the test faces "
                "decoded with only that dimension changed, to the value on the axis, evenly "
                "spaced over its observed range. Mean absolute pixel difference between the "
                f"first and last image of each strip (0-1 scale): {change_text}; a small value "
                "means that dimension alone barely changes the decoded face.", run.name)
    found["traversal_dims"] = traversal.dims
    found["traversal_change"] = change
    found["traversal_variance_share"] = top_share

    # --- Accuracy vs latent density.
    curve = evaluation.accuracy_vs_latent(pred.z_mean, pred.face_prob)
    band_low, band_high = fnd.latent_accuracy_band(curve)
    path = fig_lib.plot_latent_accuracy(curve, out / f"{slug}_accuracy_vs_latent.png")
    mid = curve.mean_curve[len(curve.mean_curve) // 2 - 1:len(curve.mean_curve) // 2 + 1]
    ends = curve.mean_curve[[0, -1]]
    page.figure(path, f"{run.name}: mean face probability of the test faces per bin of each "
                "latent dimension (5th to 95th percentile of the dimension, 10 bins). Red line: "
                f"the mean over the {curve.per_dim.shape[0]} dimensions; shaded: the 10th to "
                "90th percentile of the single-dimension curves in each bin; grey bars: share of "
                "faces per bin, i.e. the latent density. Mean over the two central bins "
                f"{np.nanmean(mid):.3f}, over the two outer bins {np.nanmean(ends):.3f}: a curve "
                "that drops towards the rare outer bins means faces with uncommon latent "
                "values are detected less reliably.", run.name)
    found["accuracy_vs_latent"] = {"mean_curve": curve.mean_curve, "band_low": band_low,
                                   "band_high": band_high, "share": curve.share}

  # --- Faces ranked by each risk score.
  found["scores_by_group"] = {}
  for name, values in scores.items():
    if values is None:
      continue
    label, meaning = fnd.SCORE_TEXT[name]
    rank = np.argsort(values, kind="stable")
    low, high = rank[:n_show], rank[::-1][:n_show]
    # Enough decimals that different scores read differently (the entropy of a near-chance
    # classifier differs only in the fifth decimal).
    decimals = fnd.distinct_decimals(values[np.concatenate([low, high])],
                                     2 if name == "bias" else 3, 6)
    path = fig_lib.plot_face_panels([
        {"title": f"Lowest {label}", "images": images[low],
         "captions": fnd.face_captions(groups[low], values[low], decimals)},
        {"title": f"Highest {label}", "images": images[high],
         "captions": fnd.face_captions(groups[high], values[high], decimals)},
    ], out / f"{slug}_faces_{name}.png", f"{run.name}: test faces by {label} ({meaning})")
    extra = ""
    if name == "bias":
      extra = (" The density is estimated on training faces, so low means rare in training."
               if result["reference"] else " The density is estimated on the test faces.")
    elif name == "epistemic":
      extra = (f" The score is the {fnd.RECON_LABELS.get(run.recon, run.recon)} reconstruction "
               "error.")
    page.figure(path, f"{run.name}: the {n_show} test faces with the lowest (top) and highest "
                f"(bottom) {label} ({meaning}), with group and score.{extra} Lowest: "
                f"{comp(groups[low], order)}. Highest: {comp(groups[high], order)}.", run.name)
    found["scores_by_group"][name] = {g: float(np.mean(values[groups == g]))
                                      for g in order if np.any(groups == g)}

  present = [g for g in order if np.any(groups == g)]
  if present:
    path = fig_lib.plot_score_by_group(scores, groups, present,
                                       out / f"{slug}_scores_by_group.png")
    parts = []
    for name, by_group in found["scores_by_group"].items():
      pick = min if name == "bias" else max
      worst = pick(by_group, key=by_group.get)
      parts.append(f"{fnd.SCORE_TEXT[name][0]}: {'lowest' if name == 'bias' else 'highest'} "
                   f"mean in {worst} ({by_group[worst]:.3g})")
    page.figure(path, f"{run.name}: distribution of each risk score per group over the test faces "
                "(boxes: quartiles, whiskers: 1.5 IQR, diamonds: means). "
                + "; ".join(parts) + ".", run.name)

  if result["vae"]:
    # --- Detection rate per decile of the bias and epistemic scores.
    rates = {name: evaluation.rate_by_quantile(scores[name], pred.face_prob)
             for name in ("bias", "epistemic")}
    path = fig_lib.plot_quantile_rates(rates, out / f"{slug}_deciles.png")
    b, e = rates["bias"].rate, rates["epistemic"].rate
    page.figure(path, f"{run.name}: detection rate of the test faces per decile of the bias score "
                f"(left, decile 1 = rarest) and of the epistemic score (right, decile 10 = "
                f"worst reconstructed). Rarest decile {100 * b[0]:.1f}% vs most common "
                f"{100 * b[-1]:.1f}%; best reconstructed decile {100 * e[0]:.1f}% vs worst "
                f"{100 * e[-1]:.1f}%. A model that is biased against rare faces shows rates "
                "rising with the bias score and falling with the epistemic score.", run.name)
    found["deciles"] = {k: q._asdict() for k, q in rates.items()}

    # --- Percentile faces.
    rows = {name: evaluation.percentile_faces(images, scores[name])
            for name in ("bias", "epistemic")}
    path = fig_lib.plot_percentile_faces(rows, out / f"{slug}_percentile_faces.png")
    page.figure(path, f"{run.name}: the pixel-wise average of the test faces in each 10% band of "
                "the bias score (top; left = rarest) and of the epistemic score (bottom; right "
                "= worst reconstructed). A change in brightness or colour along a row shows "
                "what the faces the score ranks low and high have in common on average.",
                run.name)
  return found


def _pct(x: float | None, scale: float = 100.0, digits: int = 2) -> str:
  """``scale * x`` with ``digits`` decimals (a table cell), '–' for None."""
  return "–" if x is None else f"{scale * x:.{digits}f}"


def test_set_rows(metrics_list: Sequence[dict]) -> list[tuple[str, list]]:
  """The rows of an extra test set's table, one column per run.

  Args:
    metrics_list: :func:`jaxface.train.test_set_metrics` of each run on the set.

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
    for g in order:
      rows.append((f"{prefix}{g}: n", [str(m["groups"].get(g, {}).get("n", "–")) for m in ms]))
      rows.append((f"{prefix}{g}: detected %", [_pct(m["groups"].get(g, {}).get("detection_rate"))
                                                 for m in ms]))
      rows.append((f"{prefix}{g}: detected at {fpr:g}% false positives %",
                   [_pct(op.get("groups", {}).get(g, {}).get("detection_rate")) for op in ops]))
      rows.append((f"{prefix}{g}: ROC AUC", [_pct(op.get("groups", {}).get(g, {}).get("auc"),
                                                  1.0, 3) for op in ops]))
    label = column or "groups"
    rows += [
        (f"E_A % ({label})", [_pct(m.get("E_A"), 1.0) for m in ms]),
        (f"Var_A %² ({label})", [_pct(m.get("Var_A"), 1.0) for m in ms]),
        (f"Var_A noise %² ({label})", [_pct(m.get("Var_A_noise"), 1.0) for m in ms]),
        (f"worst group ({label})", [f"{m['worst_group']} {m['worst_rate']:.2f}%"
                                    if m.get("worst_group") else "–" for m in ms]),
        (f"E_A at {fpr:g}% false positives % ({label})", [_pct(op.get("E_A"), 1.0) for op in ops]),
        (f"worst group at {fpr:g}% false positives ({label})",
         [f"{op['worst_group']} {op['worst_rate']:.2f}%" if op.get("worst_group") else "–"
          for op in ops]),
    ]
  ops = [m.get("operating_point") or {} for m in metrics_list]
  rows += [
      ("all faces detected %", [_pct(m.get("face_detection_rate")) for m in metrics_list]),
      ("threshold at the operating point", [_pct(op.get("threshold"), 1.0, 4) for op in ops]),
      ("false positives achieved %", [_pct(op.get("fpr")) for op in ops]),
      ("ROC AUC, all faces", [_pct(op.get("auc"), 1.0, 3) for op in ops]),
  ]
  return rows


def _test_set_section(page: page_lib.Page, name: str, data, runs: Sequence[RunArtifacts],
                      results: Sequence[dict], slugs: Sequence[str],
                      columns: Sequence[str]) -> dict:
  """Adds one extra test set's section (table side by side, ROC figures); returns figures."""
  import jax.numpy as jnp

  from jaxface import train
  out = page.out_dir
  labels = np.asarray(data.labels)
  groups = np.asarray(data.groups)
  order = fnd.order_groups(groups[labels == 1].tolist())
  comp = ", ".join(f"{g} {int(np.sum((groups == g) & (labels == 1)))}" for g in order if g)
  page.heading(f"Test set {name}")
  own = bool(np.any(labels == 0))
  page.para(f"{int(np.sum(labels == 1))} faces ({comp or 'no groups'}) and "
            f"{int(np.sum(labels == 0))} non-faces"
            + (f"; {data.num_skipped} unreadable images skipped" if data.num_skipped else "")
            + ". The operating point is the threshold at which at most 1% of "
            + ("the set's own non-faces" if own else "the main test set's non-faces (the set has "
               "none)")
            + " are detected, the same for every group; each group's ROC AUC ranks its faces "
            "against those non-faces, free of any threshold.")
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
    m = train.test_set_metrics(prob, data, fallback, tuple(columns))
    found[run.name] = m
    metrics_list.append(m)
    evaluated.append(run)
    op = m["operating_point"]
    if op is None:
      continue
    non_face_prob = (np.asarray(prob).reshape(-1)[labels == 0] if own else fallback)
    prob_faces = np.asarray(prob).reshape(-1)[labels == 1]
    panels = []
    for column in [None, *m["by_attribute"]]:
      m_by = m if column is None else m["by_attribute"][column]
      face_groups = (groups if column is None else
                     np.asarray(data.attributes[column]).astype(str))[labels == 1]
      curves = {g: evaluation.roc_curve(prob_faces[face_groups == g], non_face_prob)[:2]
                for g in m_by["operating_point"]["groups"]}
      panels.append((f"by {column or 'group'}", curves))
    path = fig_lib.plot_group_roc(panels, out / f"{slug}_{name}_roc.png",
                                  f"{run.name} on {name}: ROC per group",
                                  op["fpr_target"])
    aucs = ", ".join(f"{g} {v['auc']:.3f}" for g, v in op["groups"].items())
    page.figure(path, f"{run.name} on {name}: share of each group's faces detected against "
                f"the share of the non-faces detected, as the threshold falls (dotted: "
                f"{100 * op['fpr_target']:g}% false positives, threshold "
                f"{op['threshold']:.4f}). ROC AUC per group: {aucs or 'no groups'}.", run.name)
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
    return lambda f: _pct(f[section]["all"].get(g, {}).get("rate"))

  rows = [(f"{g}: found %", cells(found("faces_found", g))) for g in groups]
  rows += [
      ("E_A %", cells(lambda f: _pct(f["summary"]["E_A"], 1.0))),
      ("Var_A %²", cells(lambda f: _pct(f["summary"]["Var_A"], 1.0, 2))),
      ("worst group", cells(lambda f: f"{f['summary']['worst_group']} "
                            f"{_pct(f['summary']['worst_rate'], 1.0)}")),
      ("threshold", cells(lambda f: f"{f['threshold']:.5f}")),
      ("non-face photos with a detection", cells(
          lambda f: f"{f['false_detections']['n_with_detection']}/"
                    f"{f['false_detections']['n_photos']}")),
  ]
  rows += [(f"{g}: found at p > 0.5 %", cells(found("faces_found_at_default", g)))
           for g in groups]
  rows += [("non-face photos with a detection at p > 0.5", cells(
      lambda f: f"{f['false_detections_at_default']['n_with_detection']}/"
                f"{f['false_detections_at_default']['n_photos']}"))]
  return rows


def _example_portraits(figures: dict, per_group: int) -> list[tuple[str, list[dict]]]:
  """Up to ``per_group`` portraits of each group, spread over the range of best scores."""
  from jaxface import detect
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
  return rows


def _whole_image_section(page: page_lib.Page, name: str, runs: Sequence[RunArtifacts],
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
                "probability.", run.name)
  return {r.name: f for r, f in zip(runs, figures_list) if f}


def build_report(out_dir: str | os.PathLike, runs: Sequence[RunArtifacts], *,
                 title: str | None = None, n_grid: int = 16, test_sets: dict | None = None,
                 attribute_columns: Sequence[str] = ("fitzpatrick",)) -> Path:
  """Writes the figures, ``index.html`` and ``metrics.json`` of a report.

  The first run is the main one; every run gets a training and a per-group section and, for
  VAEs, the latent diagnostics; with several runs a side-by-side comparison comes first.

  Args:
    out_dir: output directory (created).
    runs: the runs to report.
    title: page title (default from the run names).
    n_grid: faces per lowest / highest grid.
    test_sets: extra named test sets ``{name: FaceData}``, each given a section with every
      run side by side (:func:`test_set_rows`) and ROC curves per group; a set without
      non-faces is scored against each run's test non-faces.
    attribute_columns: attributes of the extra sets to also group their faces by.

  Returns:
    Path of ``index.html``.
  """
  if not runs:
    raise ValueError("build_report needs at least one run")
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  order = fnd.order_groups([g for r in runs
                            for g in np.asarray(r.groups)[np.asarray(r.labels) == 1]])
  results = [fnd.analyse_run(r, order) for r in runs]
  names = [r.name for r in runs]
  metrics = [res["metrics"] for res in results]
  title = title or "Bias report: " + " vs ".join(names)
  page = page_lib.Page(out)
  taken: set[str] = set()
  slugs = [_slug(n, taken) for n in names]

  main = runs[0]
  labels = np.asarray(main.labels)
  groups = np.asarray(main.groups)
  comp = ", ".join(f"{g} {int(np.sum((groups == g) & (labels == 1)))}" for g in order)
  page.para(f"Test set: {len(labels)} images, {int(np.sum(labels == 1))} faces ({comp}) and "
            f"{int(np.sum(labels == 0))} non-faces. {main.test_note}".strip())
  page.para("A face counts as detected when its face probability is above 0.5. E_A is the mean "
            "of the group detection rates and Var_A their variance (population variance, in "
            "percent squared): a fair detector has a high E_A and a low Var_A. Var_A noise is "
            "the part of Var_A that the finite number of test faces alone contributes (binomial "
            "sampling of each group's rate): a Var_A near it is within the test set's noise.")
  page.heading("Summary")
  page.raw(page_lib.table(page_lib.SUMMARY_HEADER,
                          page_lib.summary_rows(names, [r.kind for r in runs], metrics)))

  if len(runs) > 1:
    page.heading("Comparison of the runs")
    rows = fnd.side_by_side(metrics, order, [r.train_metrics for r in runs])
    header = ["", *(fnd.display_name(r.name, r.kind) for r in runs)]
    if len(runs) == 2:
      header.append(f"{names[0]} minus {names[1]}")
    cells = []
    for label, values, decimals in rows:
      row = [label, *(fnd.pct(v, decimals) for v in values)]
      if len(runs) == 2:
        both = None not in values
        row.append(fnd.pct(values[0] - values[1], decimals) if both else "–")
      cells.append(row)
    page.raw(page_lib.table(header, cells))
    path = fig_lib.plot_group_comparison(names, metrics, out / "comparison.png")
    best = min(range(len(runs)), key=lambda i: (metrics[i]["Var_A"] is None,
                                                metrics[i]["Var_A"] or 0.0))
    page.figure(path, "Detection rate (left) and mean face probability (right) per group for "
                f"each run, on the same test faces. Lowest variance across groups: {names[best]} "
                f"(Var_A {fnd.pct(metrics[best]['Var_A'], 2)} %², worst group "
                f"{metrics[best]['worst_group']} at {fnd.pct(metrics[best]['worst_rate'])}%).",
                None)
    curves = {r.name: c for r in runs if (c := fnd.training_curves(r.log or [])) is not None}
    if len(curves) > 1:
      path = fig_lib.plot_training_curves(curves, out / "comparison_training.png")
      page.figure(path, "Training loss (left) and accuracy (right; thin: training batches, "
                  "dots: validation set at each epoch end) of " + " and ".join(curves) + ".",
                  None)

  set_findings = {name: _test_set_section(page, name, data, runs, results, slugs,
                                         attribute_columns)
                  for name, data in (test_sets or {}).items()}

  whole_names = list(dict.fromkeys(
      name for r in runs
      for name in ((r.train_metrics or {}).get("eval", {}).get("whole_images") or {})))
  whole_findings = {name: _whole_image_section(page, name, runs, slugs) for name in whole_names}

  run_findings = []
  for run, res, slug in zip(runs, results, slugs):
    m = res["metrics"]
    page.heading(fnd.display_name(run.name, run.kind))
    if run.test_note and run is not main:
      page.para(run.test_note)
    training = _training_section(page, run, slug, order)
    path = fig_lib.plot_group_bars(m, out / f"{slug}_groups.png",
                                   f"{run.name}: detection per group")
    rate_text = ", ".join(f"{g} {fnd.frac_pct(v['detection_rate'])}%"
                          for g, v in m["groups"].items())
    page.figure(path, f"{run.name}: share of each group's test faces detected (left) and their "
                f"mean face probability (right). {rate_text}. E_A {fnd.pct(m['E_A'], 2)}%, "
                f"Var_A {fnd.pct(m['Var_A'], 2)} %², worst group {m['worst_group']}, gap "
                f"{fnd.pct(m['gap'])} points; non-faces correctly rejected: "
                f"{fnd.frac_pct(m['non_face_accuracy'])}%.", run.name)
    if res["vae"]:
      page.para("What the latent space learned, where the model is unsure, and whether its "
                "mistakes concentrate on faces that its latent space marks as rare:")
    else:
      page.para("The standard CNN has no latent space; only its aleatoric score (predictive "
                "entropy) can be shown.")
    diag = _run_diagnostics(page, run, res, slug, order, n_grid)
    run_findings.append({"name": run.name, "kind": run.kind, "dtype": run.dtype,
                         "recon": run.recon, "test": m,
                         "density_reference": "train" if res["reference"] else "test",
                         "train_metrics": run.train_metrics, **training, **diag})

  (out / "index.html").write_text(page.render(title), encoding="utf-8")
  (out / "metrics.json").write_text(json.dumps(fnd.json_safe(
      {"title": title, "group_order": order, "runs": run_findings, "test_sets": set_findings,
       "whole_images": {name: {run: {k: v for k, v in f.items() if k != "portraits"}
                               for run, f in per_run.items()}
                        for name, per_run in whole_findings.items()},
       "figures": page.figures}),
      indent=2))
  return out / "index.html"


# ---------------------------------------------------------------------------------- run dirs


def _run_name(config, workdir: Path, taken: set[str]) -> str:
  """The config's name (the model kind's label for a default name like 'dbvae'), made unique."""
  name = str(config.get("name", "") or "") or workdir.name
  if name in fnd.KIND_LABELS:
    name = fnd.KIND_LABELS[name]
  if name in taken:
    name = f"{name} ({workdir.name})"
  taken.add(name)
  return name


def _reference_faces(train, max_faces: int, seed: int = 0) -> np.ndarray | None:
  if train is None:
    return None
  idx = np.flatnonzero(np.asarray(train.labels) == 1)
  if len(idx) > max_faces:
    idx = np.sort(np.random.default_rng(seed).choice(idx, max_faces, replace=False))
  return train.images[idx] if len(idx) else None


def read_jsonl(path: Path) -> list[dict]:
  """The records of a JSON-lines file; [] when it does not exist.

  Raises:
    ValueError: a line is not valid JSON (naming the file and line).
  """
  if not path.exists():
    return []
  records = []
  for number, line in enumerate(path.read_text().splitlines(), 1):
    if line.strip():
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{number}: not a JSON line ({err.msg})") from None
  return records


def write_report(workdir: str | os.PathLike, compare: Sequence[str | os.PathLike] = (),
                 out_dir: str | os.PathLike | None = None, *, datasets: dict | None = None,
                 max_reference_faces: int = 2000) -> Path:
  """Writes ``WORKDIR/report/`` (figures, ``index.html``, ``metrics.json``) for a run.

  The run directories are only read; the report is written to ``out_dir`` alone. Every run is
  evaluated on the main run's test set (a compared run with a different image size on its
  own), in its own ``config.dtype``, with its ``config.loss.recon`` as the epistemic score. The
  bias score's latent density is estimated on up to ``max_reference_faces`` training faces of
  each run's own data.

  Args:
    workdir: run directory (``config.json``, checkpoints, ``metrics.json``, ``metrics.jsonl``).
    compare: other run directories to compare with, e.g. the standard CNN.
    out_dir: output directory; default ``WORKDIR/report``.
    datasets: the main run's data as the trainer loaded it (``jaxface.data.load_datasets``:
      name -> ``FaceData``, with ``'train'`` and ``'test'``); used instead of loading it again,
      also for a compared run with the same data config. None loads it.
    max_reference_faces: training faces used as the latent-density reference.

  Returns:
    Path of ``index.html``.
  """
  from jaxface import data as data_lib

  workdir = Path(workdir)
  taken: set[str] = set()
  cache: dict[str, dict] = {}
  runs = []
  main_test = None
  for i, directory in enumerate([workdir, *map(Path, compare)]):
    config, variables = _load_run(directory)
    if i == 0:  # the main run's data config names the extra test sets
      main_key = config.data.to_json()
      main_columns = config.data.get("extra_test_attribute_groups", "fitzpatrick")
    key = config.data.to_json()
    if i == 0 and datasets is not None:
      if "test" not in datasets:
        raise ValueError("write_report: datasets has no 'test' set")
      cache[key] = datasets
    if key not in cache:
      cache[key] = data_lib.load_datasets(config.data)
    own = cache[key]
    test, note = own["test"], ""
    if main_test is None:
      main_test = test
    elif main_test.image_shape == test.image_shape:
      test = main_test
    else:
      note = (f"Evaluated on its own test set: its images are {test.image_shape[0]}x"
              f"{test.image_shape[1]}, the main run's {main_test.image_shape[0]}x"
              f"{main_test.image_shape[1]}.")
    train_metrics, resampling_records = None, None
    metrics_path = directory / "metrics.json"
    if metrics_path.exists():
      final = json.loads(metrics_path.read_text())
      train_metrics = {k: v for k, v in final.items() if k not in ("epochs", "resampling")}
      resampling_records = final.get("resampling")
    log = read_jsonl(directory / "metrics.jsonl")
    if not resampling_records:
      resampling_records = fnd.resampling_from_log(log)
    config_dict = config.to_dict()
    runs.append(RunArtifacts(
        name=_run_name(config, directory, taken), kind=config.model.kind, variables=variables,
        images=test.images, labels=test.labels, groups=test.groups,
        reference_images=_reference_faces(own.get("train"), max_reference_faces),
        train_metrics=train_metrics, bins=int(config.resampling.bins),
        batch_size=int(config.get("eval_batch_size", 256)),
        dtype=str(config.get("dtype", "float32")),
        recon=str(config_dict.get("loss", {}).get("recon", "l1")), test_note=note, log=log,
        resampling=resampling_records, config=config_dict))
  extra = {name: d for name, d in cache[main_key].items() if name not in data_lib.SPLITS}
  columns = [c.strip() for c in str(main_columns or "").split(",") if c.strip()]
  return build_report(out_dir or workdir / "report", runs, test_sets=extra,
                      attribute_columns=columns)
