"""The report's figures: each ``plot_*`` function draws one PNG from plain arrays.

Figures are drawn with matplotlib's object API (``matplotlib.figure.Figure``, rendered by
Agg), so no pyplot state or global backend is touched.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter

from jaxface import evaluation
from jaxface.eval.operating_point import fpr_tag
from jaxface.report.findings import (SCORE_TEXT, SamplingMass, TrainingCurves, distinct_decimals,
                                     format_fixed, latent_accuracy_band, order_groups)

_DPI = 100


def _to_float01(images: np.ndarray) -> np.ndarray:
  images = np.asarray(images)
  if images.dtype == np.uint8:
    return images.astype(np.float32) / 255.0
  return np.clip(images.astype(np.float32), 0.0, 1.0)


def tile(images: np.ndarray, cols: int, pad: int = 2, pad_value: float = 1.0) -> np.ndarray:
  """Lays out images (M, H, W, 3) in a grid with ``pad`` pixels between them.

  Returns:
    (rows * (H + pad) - pad, cols * (W + pad) - pad, 3) float32 in [0, 1]; missing cells are
    ``pad_value``.
  """
  images = _to_float01(images)
  m, h, w, c = images.shape
  rows = max(1, -(-m // cols))
  out = np.full((rows * (h + pad) - pad, cols * (w + pad) - pad, c), pad_value, np.float32)
  for i in range(m):
    r, q = divmod(i, cols)
    out[r * (h + pad):r * (h + pad) + h, q * (w + pad):q * (w + pad) + w] = images[i]
  return out


def _save(fig: Figure, path: Path) -> Path:
  FigureCanvasAgg(fig)  # rendered by Agg whatever matplotlib's global backend
  fig.savefig(path, dpi=_DPI, facecolor="white")
  return path


def _group_colors(order: Sequence[str]) -> dict[str, Any]:
  cmap = colormaps["tab10"]
  return {g: cmap(i % 10) for i, g in enumerate(order)}


# ------------------------------------------------------------------------------------ figures


def plot_group_bars(metrics: dict, path: str | os.PathLike, title: str) -> Path:
  """Detection rate (%) and mean face probability per group, with values on the bars.

  With an ``operating_point`` in ``metrics``, each group's detection rate at it stands as a
  hatched bar beside the rate at p = 0.5.

  Args:
    metrics: :func:`jaxface.evaluation.group_metrics` output, optionally with the
      ``operating_point`` of :func:`jaxface.report.findings.analyse_run`.
    path: PNG path.
    title: figure title.

  Returns:
    The path written.
  """
  order = metrics["group_order"]
  groups = metrics["groups"]
  op = metrics.get("operating_point")
  colors = [_group_colors(order)[g] for g in order]
  fig = Figure(figsize=(max(7.0, (2.2 if op else 1.6) * len(order) + 3.5), 3.8),
               layout="constrained")
  axes = fig.subplots(1, 2)
  ticks = [f"{g}\nn={groups[g]['n']}" for g in order]
  x = np.arange(len(order))
  detected = [([groups[g]["detection_rate"] for g in order], None)]  # (rates, hatch)
  if op:
    detected.append(([op["groups"].get(g, {}).get("detection_rate") for g in order], "//"))
  width = 0.65 / len(detected)
  decimals = distinct_decimals([100 * v for values, _ in detected for v in values
                                if v is not None], 1, 1)
  for i, (values, hatch) in enumerate(detected):
    bars = axes[0].bar(x + (i - (len(detected) - 1) / 2) * width,
                       [0.0 if v is None else 100 * v for v in values], width * 0.95,
                       color=colors, hatch=hatch, edgecolor="white" if hatch else None)
    axes[0].bar_label(bars, labels=["no faces" if v is None else format_fixed(100 * v, decimals)
                                    for v in values], padding=2, fontsize=8 if op else 9)
  means = [groups[g]["mean_face_prob"] for g in order]
  decimals = distinct_decimals([v for v in means if v is not None], 3, 5)
  bars = axes[1].bar(x, [0.0 if v is None else v for v in means], color=colors, width=0.65)
  axes[1].bar_label(bars, labels=["no faces" if v is None else format_fixed(v, decimals)
                                  for v in means], padding=2, fontsize=9)
  for ax, scale, ylabel in ((axes[0], 100.0, "detection rate (%)"),
                            (axes[1], 1.0, "mean face probability")):
    ax.set_xticks(x, ticks)
    ax.set_ylim(0, 1.15 * scale)
    ax.set_ylabel(ylabel)
    ax.set_xlabel("group")
    ax.grid(axis="y", alpha=0.3)
  detected_title = f"Faces detected ({'solid: ' if op else ''}p > {metrics['threshold']:.2g}" + (
      f"; hatched: {fpr_tag(op)}, p > {op['threshold']:.4f})" if op else ")")
  if metrics.get("E_A") is not None:
    axes[0].axhline(metrics["E_A"], color="black", ls="--", lw=1)
    detected_title += f"\ndashed line: mean over groups E_A = {metrics['E_A']:.1f}%"
  if op and op.get("E_A") is not None:
    axes[0].axhline(op["E_A"], color="black", ls=":", lw=1)
    detected_title += f"; dotted: {op['E_A']:.1f}% {fpr_tag(op)}"
  axes[0].set_title(detected_title, fontsize=10)
  axes[1].set_title("Mean face probability", fontsize=10)
  fig.suptitle(title)
  return _save(fig, Path(path))


def plot_group_comparison(names: Sequence[str], metrics_list: Sequence[dict],
                          path: str | os.PathLike) -> Path:
  """Grouped bars of the per-group detection rate and mean face probability of several runs.

  Args:
    names: run names, one per metrics dict.
    metrics_list: :func:`jaxface.evaluation.group_metrics` outputs.
    path: PNG path.

  Returns:
    The path written.
  """
  order = order_groups([g for m in metrics_list for g in m["group_order"]])
  n_runs = len(names)
  width = 0.8 / max(n_runs, 1)
  cmap = colormaps["Set2"]
  per_group_w = max(1.4, 0.55 * n_runs)
  fig = Figure(figsize=(max(8.0, 2 * per_group_w * len(order) + 2.5), 4.4), layout="constrained")
  axes = fig.subplots(1, 2)
  x = np.arange(len(order))
  fontsize = 8 if n_runs <= 3 else 7
  # (axis, key, scale, y label, fewest and most decimals on the bars)
  for ax, key, scale, ylabel, digits in (
      (axes[0], "detection_rate", 100.0, "detection rate (%)", (1, 1)),
      (axes[1], "mean_face_prob", 1.0, "mean face probability", (3, 5))):
    table = [[m["groups"].get(g, {}).get(key) for g in order] for m in metrics_list]
    decimals = distinct_decimals([v * scale for row in table for v in row if v is not None],
                                 *digits)
    for r, (name, values) in enumerate(zip(names, table)):
      heights = [0.0 if v is None else v * scale for v in values]
      bars = ax.bar(x + (r - (n_runs - 1) / 2) * width, heights, width * 0.95, color=cmap(r % 8),
                    label=name if ax is axes[0] else None)
      ax.bar_label(bars, labels=["no faces" if v is None else format_fixed(v * scale, decimals)
                                 for v in values],
                   padding=2, fontsize=fontsize, rotation=90 if n_runs > 2 else 0)
    ax.set_xticks(x, order)
    ax.set_xlabel("group")
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, (1.25 if n_runs > 2 else 1.15) * scale)
    ax.grid(axis="y", alpha=0.3)
  axes[0].set_title("Faces detected")
  axes[1].set_title("Mean face probability")
  fig.suptitle("Detection per group: " + " vs ".join(names))
  # Below the axes: constrained layout puts an 'outside upper' legend on top of the suptitle.
  fig.legend(loc="outside lower center", ncols=min(n_runs, 4), frameon=False,
             title="run", title_fontsize=9)
  return _save(fig, Path(path))


def _grid_canvas(images: np.ndarray, cols: int, recon: np.ndarray | None,
                 captioned: bool) -> tuple[np.ndarray, tuple[int, int, int, int]]:
  """Tiles faces (each optionally above its reconstruction), leaving room for captions.

  Returns:
    ``(canvas (Hc, Wc, 3), (cell_h, cell_w, pad_x, pad_y))`` in canvas pixels.
  """
  images = _to_float01(images)
  h, w = images.shape[1:3]
  if recon is not None:
    gap = np.ones((images.shape[0], max(1, h // 32), w, 3), np.float32)
    images = np.concatenate([images, gap, _to_float01(recon)], axis=1)
    h = images.shape[1]
  pad_x = max(2, w // 16)
  pad_y = max(2, w // 16) + (int(0.34 * w) if captioned else 0)
  rows = max(1, -(-images.shape[0] // cols))
  canvas = np.ones((rows * (h + pad_y), cols * (w + pad_x) - pad_x, 3), np.float32)
  for i in range(images.shape[0]):
    r, q = divmod(i, cols)
    canvas[r * (h + pad_y):r * (h + pad_y) + h, q * (w + pad_x):q * (w + pad_x) + w] = images[i]
  return canvas, (h, w, pad_x, pad_y)


def plot_face_panels(panels: Sequence[dict], path: str | os.PathLike, title: str,
                     cols: int = 8) -> Path:
  """One or more labelled grids of faces, stacked vertically.

  Args:
    panels: dicts with ``title``, ``images`` (M, H, W, 3), optional ``captions`` (M strings
      shown under the faces) and optional ``recon`` (M, H, W, 3) drawn under each face.
    path: PNG path.
    title: figure title.
    cols: faces per row.

  Returns:
    The path written.
  """
  width, title_h, panel_title_h = 1.15 * cols, 0.45, 0.3
  canvases = [_grid_canvas(p["images"], cols, p.get("recon"), bool(p.get("captions")))
              if len(p["images"]) else None for p in panels]
  heights = [panel_title_h + (0.2 if c is None else width * c[0].shape[0] / c[0].shape[1])
             for c in canvases]
  total = title_h + sum(heights)
  fig = Figure(figsize=(width, total))
  top = total - title_h
  for p, c, h in zip(panels, canvases, heights):
    ax = fig.add_axes((0.012, (top - h) / total, 0.976, (h - panel_title_h) / total))
    top -= h
    ax.set_axis_off()
    if c is None:
      ax.set_title(p["title"] + " (none)", fontsize=10, loc="left")
      continue
    canvas, (cell_h, cell_w, pad_x, pad_y) = c
    ax.imshow(canvas, interpolation="nearest")
    ax.set_title(p["title"], fontsize=10, loc="left")
    for i, text in enumerate(p.get("captions") or ()):
      r, q = divmod(i, cols)
      ax.text(q * (cell_w + pad_x) + cell_w / 2, r * (cell_h + pad_y) + cell_h + 0.5, text,
              ha="center", va="top", fontsize=7, linespacing=1.0)
  fig.suptitle(title, y=1 - 0.12 / total, va="top")
  return _save(fig, Path(path))


def plot_latent_traversal(z_mean: np.ndarray, traversal: evaluation.Traversal,
                          path: str | os.PathLike, hist_bins: int = 40, *,
                          names: Sequence[tuple[str, str]] | None = None,
                          classes: dict[str, np.ndarray] | None = None,
                          title: str = "Latent traversals: decoded mean face with one dimension "
                          "walked") -> Path:
  """For each walked dimension, its density histogram above the decoded faces along it.

  The faces are centred on the latent values they were decoded from, on the histogram's x
  axis (dotted lines).

  Args:
    z_mean: (N, k) latent means of the test faces (or their coordinates along walked axes).
    traversal: :func:`jaxface.evaluation.latent_traversal` output.
    path: PNG path.
    hist_bins: histogram bins.
    names: ``(histogram title, x label)`` of each walked dimension; default the dimension's
      number and variance.
    classes: ``{label: (N,) bool}``: a density histogram of each class of faces instead of
      one histogram of counts.
    title: figure title.

  Returns:
    The path written.
  """
  dims, values, images = traversal.dims, traversal.values, traversal.images
  n_dims, steps = values.shape
  z = np.asarray(z_mean)
  strips = [tile(images[i], cols=steps, pad=1) for i in range(n_dims)]
  # Manual layout in inches, so each strip's faces stay square and line up with the histogram.
  width, left, right, top_h = 9.0, 0.75, 0.25, 0.5
  hist_h, hist_title_h, label_h, gap_h = 0.85, 0.3, 0.45, 0.1
  axes_w = width - left - right
  strip_h = axes_w * strips[0].shape[0] / strips[0].shape[1]
  block = hist_title_h + hist_h + 0.06 + strip_h + label_h + gap_h
  total = top_h + n_dims * block
  fig = Figure(figsize=(width, total))
  for i, d in enumerate(dims):
    y_hist = total - top_h - i * block - hist_title_h - hist_h
    y_strip = y_hist - 0.06 - strip_h
    hist_ax = fig.add_axes((left / width, y_hist / total, axes_w / width, hist_h / total))
    strip_ax = fig.add_axes((left / width, y_strip / total, axes_w / width, strip_h / total))
    v = values[i]
    step = (v[-1] - v[0]) / max(steps - 1, 1) or 1.0
    lo, hi = v[0] - step / 2, v[-1] + step / 2
    if classes:
      for (label, mask), color in zip(classes.items(), ("tab:brown", "tab:orange", "tab:blue")):
        hist_ax.hist(z[mask, d], bins=hist_bins, range=(v[0], v[-1]), color=color, alpha=0.55,
                     density=True, label=f"{label} ({int(np.sum(mask))})")
      hist_ax.legend(fontsize=7, frameon=False, loc="upper left")
    else:
      hist_ax.hist(z[:, d], bins=hist_bins, range=(v[0], v[-1]), color="tab:blue", alpha=0.8)
    for value in v:
      hist_ax.axvline(value, color="grey", ls=":", lw=0.8)
    hist_ax.set_xlim(lo, hi)
    hist_ax.set_xticks([])
    hist_ax.set_ylabel("density" if classes else "faces", fontsize=8)
    hist_ax.tick_params(labelsize=7)
    hist_title, x_label = names[i] if names else (
        f"latent dimension {int(d)} (variance of z_mean {np.var(z[:, d]):.3g})",
        f"z[{int(d)}] (others at the mean code)")
    hist_ax.set_title(hist_title, fontsize=9, loc="left")
    strip_ax.imshow(strips[i], extent=(lo, hi, 0, 1), aspect="auto", interpolation="nearest")
    strip_ax.set_xlim(lo, hi)
    strip_ax.set_yticks([])
    # Enough decimals to show the even spacing (rounding under a fifth of a step) and to keep
    # the labels of a narrow range distinct ('-0.03, -0.03' at two decimals).
    fine = int(np.clip(np.ceil(-np.log10(step / 5)), 2, 8)) if step > 0 else 2
    decimals = distinct_decimals(v, fine)
    strip_ax.set_xticks(v, [format_fixed(x, decimals) for x in v], fontsize=7)
    strip_ax.set_xlabel(x_label, fontsize=8)
  fig.suptitle(title, y=1 - 0.12 / total, va="top")
  return _save(fig, Path(path))


def plot_latent_accuracy(curve: evaluation.LatentAccuracy, path: str | os.PathLike,
                         percentiles: tuple[float, float] = (5.0, 95.0),
                         band: tuple[float, float] = (10.0, 90.0)) -> Path:
  """Mean face probability along the latent dimensions, with the latent density behind it.

  The curve is the mean over dimensions; the shaded band spans the ``band`` percentiles of the
  per-dimension curves in each bin.

  Args:
    curve: :func:`jaxface.evaluation.accuracy_vs_latent` output.
    path: PNG path.
    percentiles: the binned range, for the axis label.
    band: percentiles over the dimensions of the shaded band.

  Returns:
    The path written.
  """
  bins = curve.mean_curve.shape[0]
  x = np.arange(1, bins + 1)
  low, high = latent_accuracy_band(curve, band)
  fig = Figure(figsize=(7.5, 4.2), layout="constrained")
  ax = fig.subplots()
  density_ax = ax.twinx()
  density_ax.bar(x, curve.share * 100, color="lightgrey", width=0.8, zorder=0)
  density_ax.set_ylabel("share of faces in bin (%)", color="grey")
  density_ax.tick_params(axis="y", colors="grey")
  ax.set_zorder(density_ax.get_zorder() + 1)
  ax.patch.set_visible(False)
  ax.fill_between(x, low, high, color="tab:red", alpha=0.2, lw=0,
                  label=f"{band[0]:g}th to {band[1]:g}th percentile over dimensions")
  ax.plot(x, curve.mean_curve, "-o", color="tab:red", lw=2, label="mean over latent dimensions")
  ax.set_xticks(x)
  ax.set_xlabel(f"latent bin ({percentiles[0]:g}th to {percentiles[1]:g}th percentile of each "
                "dimension; outer bins = rarer values)")
  ax.set_ylabel("mean face probability")
  finite = low[np.isfinite(low)]
  floor = float(np.min(finite)) if finite.size else 0.0
  ax.set_ylim(max(0.0, floor - 0.05), 1.02)
  handles, _ = ax.get_legend_handles_labels()
  handles.append(Patch(color="lightgrey", label="share of faces in bin"))
  fig.legend(handles=handles, loc="outside lower center", ncols=3, fontsize=8, frameon=False)
  ax.set_title(f"Face probability vs position in latent space ({curve.per_dim.shape[0]} "
               "dimensions)")
  return _save(fig, Path(path))


def plot_score_by_group(scores: dict[str, np.ndarray], groups: np.ndarray, order: Sequence[str],
                        path: str | os.PathLike) -> Path:
  """Box plots of each risk score per group (faces only).

  Args:
    scores: score name -> (N,) values (None entries are skipped).
    groups: (N,) group of each face.
    order: groups to show.
    path: PNG path.

  Returns:
    The path written.
  """
  names = [k for k, v in scores.items() if v is not None]
  groups = np.asarray(groups)
  order = [g for g in order if np.any(groups == g)]
  colors = _group_colors(order)
  fig = Figure(figsize=(max(5.0, 3.4 * len(names)), 4.0), layout="constrained")
  axes = fig.subplots(1, len(names), squeeze=False)[0]
  for ax, name in zip(axes, names):
    data = [np.asarray(scores[name])[groups == g] for g in order]
    box = ax.boxplot(data, tick_labels=order, patch_artist=True, showfliers=False, widths=0.6,
                     medianprops={"color": "black"})
    for patch, g in zip(box["boxes"], order):
      patch.set_facecolor(colors[g])
      patch.set_alpha(0.7)
    means = [d.mean() for d in data]
    ax.plot(np.arange(1, len(order) + 1), means, "kD", ms=4)
    label, meaning = SCORE_TEXT.get(name, (name, ""))
    ax.set_title(f"{label}\n({meaning})", fontsize=9)
    ax.set_xlabel("group")
    ax.grid(axis="y", alpha=0.3)
    # Scores like the entropy sit in a narrow band (0.69314...): print them in full rather
    # than as an offset ('1e-5+6.931e-1') above the axis.
    ax.ticklabel_format(axis="y", useOffset=False)
  fig.suptitle("Risk scores per group (test faces)\nboxes: quartiles, whiskers: 1.5 IQR, "
               "diamonds: means", fontsize=10)
  return _save(fig, Path(path))


def plot_quantile_rates(rates: dict[str, evaluation.QuantileRates],
                        path: str | os.PathLike) -> Path:
  """Detection rate per decile of each score, with values on the bars.

  Args:
    rates: score name -> :func:`jaxface.evaluation.rate_by_quantile` output.
    path: PNG path.

  Returns:
    The path written.
  """
  names = list(rates)
  fig = Figure(figsize=(max(5.0, 5.6 * len(names)), 4.0), layout="constrained")
  axes = fig.subplots(1, len(names), squeeze=False)[0]
  for ax, name in zip(axes, names):
    q = rates[name]
    n = len(q.rate)
    x = np.arange(1, n + 1)
    heights = np.nan_to_num(q.rate * 100)
    bars = ax.bar(x, heights, color="tab:purple" if name == "bias" else "tab:orange", width=0.75)
    ax.bar_label(bars, labels=["–" if not np.isfinite(r) else f"{100 * r:.0f}" for r in q.rate],
                 padding=2, fontsize=8)
    ax.set_xticks(x)
    ax.set_ylim(0, 112)
    label, meaning = SCORE_TEXT.get(name, (name, ""))
    ax.set_xlabel(f"{'decile' if n == 10 else 'band'} of {label}, 1 = lowest\n({meaning})")
    ax.set_ylabel("detection rate (%)")
    ax.set_title(f"Faces detected per {'decile' if n == 10 else 'band'} of the {label}",
                 fontsize=10)
    ax.grid(axis="y", alpha=0.3)
  return _save(fig, Path(path))


def plot_percentile_faces(rows: dict[str, tuple[np.ndarray, np.ndarray]],
                          path: str | os.PathLike) -> Path:
  """Mean face per percentile band of each score, one row per score.

  Args:
    rows: score name -> ``(means (B, H, W, 3), counts (B,))`` from
      :func:`jaxface.evaluation.percentile_faces`.
    path: PNG path.

  Returns:
    The path written.
  """
  names = list(rows)
  n_bands = max(len(rows[k][0]) for k in names)
  fig = Figure(figsize=(1.0 * n_bands + 1.0, 1.25 * len(names) + 0.45), layout="constrained")
  axes = fig.subplots(len(names), n_bands, squeeze=False)
  for r, name in enumerate(names):
    means, counts = rows[name]
    label, _ = SCORE_TEXT.get(name, (name, ""))
    for b in range(n_bands):
      ax = axes[r, b]
      ax.set_xticks([])
      ax.set_yticks([])
      for spine in ax.spines.values():
        spine.set_visible(False)
      if b < len(means):
        ax.imshow(np.clip(means[b], 0, 1), interpolation="nearest")
        lo, hi = 100 * b / len(means), 100 * (b + 1) / len(means)
        ax.set_xlabel(f"{lo:.0f}–{hi:.0f}%", fontsize=7)
      if b == 0:
        ax.set_ylabel(label.replace(" score", "\nscore"), fontsize=8)
  fig.suptitle("Mean test face per percentile band of the score (left = lowest)", fontsize=10)
  return _save(fig, Path(path))




def plot_training_curves(curves: dict[str, TrainingCurves], path: str | os.PathLike) -> Path:
  """Training loss, training batch accuracy and validation accuracy of one or more runs.

  Args:
    curves: run name -> :func:`jaxface.report.findings.training_curves` output.
    path: PNG path.

  Returns:
    The path written.
  """
  several = len(curves) > 1
  fig = Figure(figsize=(11.0, 3.9), layout="constrained")
  loss_ax, acc_ax = fig.subplots(1, 2)
  cmap = colormaps["tab10"]
  for r, (name, c) in enumerate(curves.items()):
    prefix = f"{name}: " if several else ""
    for t, term in enumerate(c.loss_names):
      color = cmap(r) if several else cmap(t)
      loss_ax.plot(c.step, c.loss[:, t], color=color, lw=1.6 if t == 0 else 1.0,
                   ls="-" if t == 0 else (":", "--", "-.")[(t - 1) % 3],
                   label=f"{prefix}{'total loss' if term == 'loss' else term}")
    acc_ax.plot(c.step, 100 * c.accuracy, color=cmap(r), lw=1.0, alpha=0.6,
                label=f"{prefix}training batches")
    if c.val_accuracy.size:
      acc_ax.plot(c.epoch_step, 100 * c.val_accuracy, "o-", color=cmap(r), lw=1.8,
                  label=f"{prefix}validation (epoch end)")
  loss_ax.set_xlabel("step")
  loss_ax.set_ylabel("loss (mean over the logging window)")
  loss_ax.set_title("Training loss", fontsize=10)
  acc_ax.set_xlabel("step")
  acc_ax.set_ylabel("accuracy (%)")
  acc_ax.set_title("Accuracy: training batches and validation set", fontsize=10)
  for ax in (loss_ax, acc_ax):
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=7, frameon=False)
  return _save(fig, Path(path))


def plot_sampling_mass(mass: SamplingMass, path: str | os.PathLike) -> Path:
  """The share of the training sampling mass on each group at every resampling epoch.

  Args:
    mass: :func:`jaxface.report.findings.sampling_mass` output.
    path: PNG path.

  Returns:
    The path written.
  """
  colors = _group_colors(mass.groups)
  fig = Figure(figsize=(max(7.0, 0.35 * len(mass.epochs) + 5.5), 3.9), layout="constrained")
  ax = fig.subplots()
  for g, name in enumerate(mass.groups):
    ax.plot(mass.epochs, 100 * mass.mass[:, g], "o-", color=colors[name], lw=1.8, label=name)
    if np.isfinite(mass.share[g]):
      ax.axhline(100 * mass.share[g], color=colors[name], ls="--", lw=1)
  ax.set_xticks(mass.epochs, [str(int(e)) for e in mass.epochs])
  ax.set_xlabel("epoch (probabilities computed at its start)")
  ax.set_ylabel("share of the sampling mass (%)")
  ax.set_yscale("log")
  plain = FuncFormatter(lambda value, _: f"{value:g}")
  ax.yaxis.set_major_formatter(plain)
  ax.yaxis.set_minor_formatter(plain)
  ax.tick_params(axis="y", which="minor", labelsize=7)
  ax.grid(axis="y", alpha=0.3, which="both")
  title = "Training sampling mass per group"
  if np.isfinite(mass.share).any():
    title += "\ndashed: the group's share of the training faces (uniform sampling)"
  ax.set_title(title, fontsize=10)
  ax.legend(title="group", fontsize=8, frameon=False, loc="center left",
            bbox_to_anchor=(1.0, 0.5))
  return _save(fig, Path(path))


def plot_group_roc(panels: Sequence[tuple[str, dict[str, tuple[np.ndarray, np.ndarray]]]],
                   path: str | os.PathLike, title: str, fpr_mark: float = 0.01) -> Path:
  """ROC curves of each group's faces against the same non-faces, one panel per grouping.

  Args:
    panels: ``[(panel title, {group: (false_positive_rate (K,), detection_rate (K,))})]``,
      e.g. the set's folder groups and the Fitzpatrick types.
    path: PNG path.
    title: figure title.
    fpr_mark: false positive rate marked by a dotted line (the operating point).

  Returns:
    The path written.
  """
  fig = Figure(figsize=(5.2 * len(panels), 4.2), layout="constrained")
  axes = np.atleast_1d(fig.subplots(1, len(panels)))
  for ax, (panel_title, curves) in zip(axes, panels):
    colors = _group_colors(list(curves))
    for group, (fpr, tpr) in curves.items():
      ax.plot(100 * np.asarray(fpr), 100 * np.asarray(tpr), color=colors[group], lw=1.4,
              label=group)
    ax.axvline(100 * fpr_mark, color="black", ls=":", lw=1)
    ax.set_xscale("symlog", linthresh=1.0)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 101)
    ax.set_xlabel("non-faces detected (false positives, %; log above 1%)")
    ax.set_ylabel("faces detected (%)")
    ax.set_title(panel_title, fontsize=10)
    ax.grid(alpha=0.3)
    if curves:
      ax.legend(fontsize=8, frameon=False, loc="lower right")
  fig.suptitle(title)
  return _save(fig, Path(path))


def plot_whole_image_examples(rows: Sequence[tuple[str, Sequence[dict]]],
                              path: str | os.PathLike, title: str) -> Path:
  """Whole photos of each group with their best window drawn on them.

  Args:
    rows: ``[(group, [{'photo': (H, W, 3) uint8, 'box': (x0, y0, side), 'prob': float,
      'found': bool}, ...])]``, one row of photos per group.
    path: PNG path.
    title: figure title.

  Returns:
    The path written. The box is green where the face was found, red where it was missed.
  """
  from matplotlib.patches import Rectangle
  cols = max(1, max((len(photos) for _, photos in rows), default=1))
  fig = Figure(figsize=(2.0 * cols + 0.6, 2.3 * max(1, len(rows))), layout="constrained")
  axes = np.array(fig.subplots(max(1, len(rows)), cols, squeeze=False))
  for r, (group, photos) in enumerate(rows):
    for c in range(cols):
      ax = axes[r, c]
      ax.set_xticks([])
      ax.set_yticks([])
      if c == 0:
        ax.set_ylabel(group, fontsize=11)
      if c >= len(photos):
        ax.axis("off")
        continue
      entry = photos[c]
      ax.imshow(entry["photo"])
      x0, y0, side = entry["box"]
      color = "limegreen" if entry["found"] else "red"
      ax.add_patch(Rectangle((x0, y0), side, side, fill=False, edgecolor=color, lw=2))
      ax.set_title(f"p {entry['prob']:.3f}", fontsize=8, color=color)
  fig.suptitle(title)
  return _save(fig, Path(path))
