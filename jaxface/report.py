"""HTML bias report of one or more trained runs: figures, captions and machine-readable metrics.

:func:`write_report` loads run directories; :func:`build_report` does the work from in-memory
:class:`RunArtifacts`; the ``plot_*`` functions each draw one figure from plain arrays. Figures
are drawn with matplotlib's object API (``matplotlib.figure.Figure``, rendered by Agg), so no
pyplot state or global backend is touched.

The report tells the story in this order: detection rate per group (and across runs), then for
each VAE what its latent space learned (faces it reconstructs best and worst, latent
traversals), how detection varies with latent density, which faces the risk scores flag, how
detection falls off with the scores, and the average face per score percentile.
"""

from __future__ import annotations

import collections
import dataclasses
import html
import json
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from jaxface import evaluation, models

PyTree = Any

KIND_LABELS = {"cnn": "standard CNN", "ssvae": "SS-VAE", "dbvae": "DB-VAE"}
# The usual order of the skin x gender groups; other groups follow, sorted.
CANONICAL_GROUPS = ("LF", "LM", "DF", "DM")
SCORE_TEXT = {
    "bias": ("bias score", "log latent density: low = rare"),
    "epistemic": ("epistemic score", "reconstruction error: high = unfamiliar"),
    "aleatoric": ("aleatoric score", "predictive entropy: high = ambiguous"),
}
_DPI = 100


@dataclasses.dataclass
class RunArtifacts:
  """Everything the report needs about one trained model.

  Attributes:
    name: display name (e.g. ``'standard CNN'``, ``'DB-VAE'``).
    kind: ``'cnn'``, ``'ssvae'`` or ``'dbvae'``.
    variables: model variables.
    images: (N, H, W, 3) test images, uint8 or float in [0, 1].
    labels: (N,) 1 = face.
    groups: (N,) group names, ``''`` for non-faces.
    reference_images: optional (M, H, W, 3) training faces the bias score's latent density is
      estimated from; None estimates it on the test faces.
    train_metrics: optional final training metrics (``metrics.json`` of the run).
    bins: histogram bins per latent dimension for the bias score.
    batch_size: evaluation batch size.
    dtype: compute dtype name.
    test_note: how the test set was chosen, shown in the report.
  """
  name: str
  kind: str
  variables: PyTree
  images: np.ndarray
  labels: np.ndarray
  groups: np.ndarray
  reference_images: np.ndarray | None = None
  train_metrics: dict | None = None
  bins: int = 10
  batch_size: int = 256
  dtype: str = "float32"
  test_note: str = ""


# ------------------------------------------------------------------------------------ helpers


def order_groups(names: Sequence[str]) -> list[str]:
  """Non-empty group names, the canonical LF, LM, DF, DM first, then the rest sorted."""
  names = {str(n) for n in names if str(n)}
  return [g for g in CANONICAL_GROUPS if g in names] + sorted(names - set(CANONICAL_GROUPS))


def json_safe(value: Any) -> Any:
  """Converts NumPy values, tuples and non-finite floats (to None) for ``json.dumps``."""
  if isinstance(value, dict):
    return {str(k): json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [json_safe(v) for v in value]
  if isinstance(value, np.ndarray):
    return json_safe(value.tolist())
  if isinstance(value, (np.integer,)):
    return int(value)
  if isinstance(value, (float, np.floating)):
    return float(value) if math.isfinite(value) else None
  if isinstance(value, (np.bool_,)):
    return bool(value)
  return value


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
  fig.savefig(path, dpi=_DPI, facecolor="white")
  return path


def _pct(x: float | None, digits: int = 1) -> str:
  return "–" if x is None else f"{x:.{digits}f}"


def _frac_pct(x: float | None, digits: int = 1) -> str:
  """A fraction in [0, 1] as a percentage string, '–' for None."""
  return _pct(None if x is None else 100 * x, digits)


def distinct_decimals(values: Sequence[float] | np.ndarray, min_decimals: int = 2,
                      max_decimals: int = 8) -> int:
  """Fewest decimals (at least ``min_decimals``) at which distinct values get distinct labels.

  Values equal at ``max_decimals`` decimals count as one value, so genuine ties stay ties.

  Args:
    values: the numbers to label (non-finite ones are ignored).
    min_decimals: the fewest decimals to use.
    max_decimals: the most decimals to use.

  Returns:
    The number of decimals, in ``[min_decimals, max(min_decimals, max_decimals)]``.
  """
  values = np.asarray(values, np.float64).ravel()
  values = values[np.isfinite(values)]
  target = len({f"{v:.{max_decimals}f}" for v in values})
  for decimals in range(min_decimals, max_decimals):
    if len({f"{v:.{decimals}f}" for v in values}) == target:
      return decimals
  return max(min_decimals, max_decimals)


def format_fixed(value: float, decimals: int) -> str:
  """``value`` with ``decimals`` decimals, without a minus sign on a rounded zero ('-0.00')."""
  text = f"{value:.{decimals}f}"
  return text[1:] if text.startswith("-") and float(text) == 0.0 else text


def _composition(groups: np.ndarray, order: Sequence[str]) -> str:
  """'DF 9, DM 5, LF 2' (most frequent first) for a set of group names."""
  counts = collections.Counter(str(g) for g in groups)
  ranked = sorted(counts.items(), key=lambda kv: (-kv[1], list(order).index(kv[0])
                                                  if kv[0] in order else len(order)))
  return ", ".join(f"{g or 'unknown'} {n}" for g, n in ranked)


def _group_colors(order: Sequence[str]) -> dict[str, Any]:
  from matplotlib import colormaps
  cmap = colormaps["tab10"]
  return {g: cmap(i % 10) for i, g in enumerate(order)}


# ------------------------------------------------------------------------------------ figures


def plot_group_bars(metrics: dict, path: str | os.PathLike, title: str) -> Path:
  """Detection rate (%) and mean face probability per group, with values on the bars.

  Args:
    metrics: :func:`jaxface.evaluation.group_metrics` output.
    path: PNG path.
    title: figure title.

  Returns:
    The path written.
  """
  order = metrics["group_order"]
  groups = metrics["groups"]
  colors = _group_colors(order)
  fig = Figure(figsize=(max(7.0, 1.6 * len(order) + 3.5), 3.8), layout="constrained")
  axes = fig.subplots(1, 2)
  ticks = [f"{g}\nn={groups[g]['n']}" for g in order]
  x = np.arange(len(order))
  # (axis, key, scale, y label, fewest and most decimals on the bars)
  for ax, key, scale, ylabel, digits in (
      (axes[0], "detection_rate", 100.0, "detection rate (%)", (1, 1)),
      (axes[1], "mean_face_prob", 1.0, "mean face probability", (3, 5))):
    values = [groups[g][key] for g in order]
    heights = [0.0 if v is None else v * scale for v in values]
    decimals = distinct_decimals([v * scale for v in values if v is not None], *digits)
    bars = ax.bar(x, heights, color=[colors[g] for g in order], width=0.65)
    ax.bar_label(bars, labels=["no faces" if v is None else format_fixed(v * scale, decimals)
                               for v in values], padding=2, fontsize=9)
    ax.set_xticks(x, ticks)
    ax.set_ylim(0, 1.15 * scale)
    ax.set_ylabel(ylabel)
    ax.set_xlabel("group")
    ax.grid(axis="y", alpha=0.3)
  detected_title = f"Faces detected (p > {metrics['threshold']:.2g})"
  if metrics.get("E_A") is not None:
    axes[0].axhline(metrics["E_A"], color="black", ls="--", lw=1)
    detected_title += f"\ndashed line: mean over groups E_A = {metrics['E_A']:.1f}%"
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
  from matplotlib import colormaps
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
                          path: str | os.PathLike, hist_bins: int = 40) -> Path:
  """For each walked dimension, its density histogram above the decoded faces along it.

  The faces are centred on the latent values they were decoded from, on the histogram's x
  axis (dotted lines).

  Args:
    z_mean: (N, k) latent means of the test faces.
    traversal: :func:`jaxface.evaluation.latent_traversal` output.
    path: PNG path.
    hist_bins: histogram bins.

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
    hist_ax.hist(z[:, d], bins=hist_bins, range=(v[0], v[-1]), color="tab:blue", alpha=0.8)
    for value in v:
      hist_ax.axvline(value, color="grey", ls=":", lw=0.8)
    hist_ax.set_xlim(lo, hi)
    hist_ax.set_xticks([])
    hist_ax.set_ylabel("faces", fontsize=8)
    hist_ax.tick_params(labelsize=7)
    hist_ax.set_title(f"latent dimension {int(d)} (variance of z_mean "
                      f"{np.var(z[:, d]):.3g})", fontsize=9, loc="left")
    strip_ax.imshow(strips[i], extent=(lo, hi, 0, 1), aspect="auto", interpolation="nearest")
    strip_ax.set_xlim(lo, hi)
    strip_ax.set_yticks([])
    # Enough decimals to show the even spacing (rounding under a fifth of a step) and to keep
    # the labels of a narrow range distinct ('-0.03, -0.03' at two decimals).
    fine = int(np.clip(np.ceil(-np.log10(step / 5)), 2, 8)) if step > 0 else 2
    decimals = distinct_decimals(v, fine)
    strip_ax.set_xticks(v, [format_fixed(x, decimals) for x in v], fontsize=7)
    strip_ax.set_xlabel(f"z[{int(d)}] (others at the mean code)", fontsize=8)
  fig.suptitle("Latent traversals: decoded mean face with one dimension walked",
               y=1 - 0.12 / total, va="top")
  return _save(fig, Path(path))


def plot_latent_accuracy(curve: evaluation.LatentAccuracy, path: str | os.PathLike,
                         percentiles: tuple[float, float] = (5.0, 95.0)) -> Path:
  """Mean face probability along the latent dimensions, with the latent density behind it.

  Args:
    curve: :func:`jaxface.evaluation.accuracy_vs_latent` output.
    path: PNG path.
    percentiles: the binned range, for the axis label.

  Returns:
    The path written.
  """
  bins = curve.mean_curve.shape[0]
  x = np.arange(1, bins + 1)
  fig = Figure(figsize=(7.5, 4.2), layout="constrained")
  ax = fig.subplots()
  density_ax = ax.twinx()
  density_ax.bar(x, curve.share * 100, color="lightgrey", width=0.8, zorder=0)
  density_ax.set_ylabel("share of faces in bin (%)", color="grey")
  density_ax.tick_params(axis="y", colors="grey")
  ax.set_zorder(density_ax.get_zorder() + 1)
  ax.patch.set_visible(False)
  for row in curve.per_dim:
    ax.plot(x, row, color="tab:blue", alpha=0.25, lw=0.8)
  ax.plot(x, curve.mean_curve, "-o", color="tab:red", lw=2, label="mean over latent dimensions")
  ax.plot([], [], color="tab:blue", alpha=0.5, label="single latent dimension")
  ax.set_xticks(x)
  ax.set_xlabel(f"latent bin ({percentiles[0]:g}th to {percentiles[1]:g}th percentile of each "
                "dimension; outer bins = rarer values)")
  ax.set_ylabel("mean face probability")
  finite = curve.per_dim[np.isfinite(curve.per_dim)]
  low = float(np.min(finite)) if finite.size else 0.0
  ax.set_ylim(max(0.0, low - 0.05), 1.02)
  handles, _ = ax.get_legend_handles_labels()
  handles.append(Patch(color="lightgrey", label="share of faces in bin"))
  fig.legend(handles=handles, loc="outside lower center", ncols=3, fontsize=8, frameon=False)
  ax.set_title("Face probability vs position in latent space")
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


# ----------------------------------------------------------------------------------- analysis


def _face_captions(groups: np.ndarray, values: np.ndarray, decimals: int,
                   prefix: str = "") -> list[str]:
  """'GROUP\\nPREFIXVALUE' under each face, the value with ``decimals`` decimals."""
  return [f"{g or '?'}\n{prefix}{format_fixed(v, decimals)}" for g, v in zip(groups, values)]


def analyse_run(run: RunArtifacts, order: Sequence[str]) -> dict:
  """Predictions, metrics and scores of one run on its test set.

  Returns:
    A dict with ``pred`` (:class:`~jaxface.evaluation.Predictions`), ``metrics``
    (group metrics), ``faces`` (indices of test faces), ``scores`` (per-face risk scores on
    the faces), ``reference`` (whether a training reference set was used) and ``vae``.
  """
  import jax.numpy as jnp
  dtype = jnp.dtype(run.dtype)
  pred = evaluation.predict(run.variables, run.images, run.batch_size, dtype=dtype)
  metrics = evaluation.group_metrics(pred.face_prob, run.labels, run.groups, group_order=order)
  faces = np.flatnonzero(np.asarray(run.labels) == 1)
  vae = models.latent_dim_of(run.variables["params"]) > 0
  face_pred = evaluation.Predictions(*(None if a is None else a[faces] for a in pred))
  ref_z = None
  if vae and run.reference_images is not None and len(run.reference_images):
    ref_z = evaluation.predict(run.variables, run.reference_images, run.batch_size,
                               dtype=dtype).z_mean
  scores = evaluation.risk_scores_from_predictions(face_pred, run.bins, ref_z)
  return {"pred": pred, "face_pred": face_pred, "metrics": metrics, "faces": faces,
          "scores": scores, "reference": ref_z is not None, "vae": vae}


def _slug(name: str, taken: set[str]) -> str:
  base = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "run"
  slug, i = base, 2
  while slug in taken:
    slug, i = f"{base}-{i}", i + 1
  taken.add(slug)
  return slug


class _Page:
  """Collects the report's HTML blocks and figure list."""

  def __init__(self, out_dir: Path):
    self.out_dir = out_dir
    self.blocks: list[str] = []
    self.figures: list[dict] = []

  def heading(self, text: str, level: int = 2) -> None:
    self.blocks.append(f"<h{level}>{html.escape(text)}</h{level}>")

  def para(self, text: str) -> None:
    self.blocks.append(f"<p>{html.escape(text)}</p>")

  def raw(self, markup: str) -> None:
    self.blocks.append(markup)

  def figure(self, path: Path, caption: str, run: str | None) -> None:
    name = path.name
    self.blocks.append(f'<figure><img src="{html.escape(name)}" alt="{html.escape(name)}">'
                       f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    self.figures.append({"file": name, "caption": caption, "run": run})


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
  body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
                 for row in rows)
  return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _summary_rows(names: Sequence[str], kinds: Sequence[str], metrics: Sequence[dict]) -> list:
  rows = []
  for name, kind, m in zip(names, kinds, metrics):
    rows.append([name, KIND_LABELS.get(kind, kind), _frac_pct(m.get("accuracy"), 2),
                 _frac_pct(m.get("face_detection_rate"), 2),
                 _frac_pct(m.get("non_face_accuracy"), 2), _pct(m["E_A"], 2),
                 _pct(m["Var_A"], 2), _pct(m.get("Var_A_noise"), 2), m["worst_group"] or "–",
                 _pct(m["worst_rate"], 2), _pct(m["gap"], 2)])
  return rows


_SUMMARY_HEADER = ("run", "model", "accuracy %", "faces detected %", "non-faces correct %",
                   "E_A %", "Var_A %²", "Var_A noise %²", "worst group", "worst rate %",
                   "gap (points)")


def _run_diagnostics(page: _Page, run: RunArtifacts, result: dict, slug: str, order: list[str],
                     n_grid: int) -> dict:
  """Adds one run's diagnostic figures to the page; returns its machine-readable findings."""
  out = page.out_dir
  faces = result["faces"]
  images = run.images[faces]
  groups = np.asarray(run.groups)[faces]
  pred = result["face_pred"]
  scores = result["scores"]
  findings: dict[str, Any] = {}
  if not len(faces):
    page.para("The test set has no faces: no diagnostics.")
    return findings
  n_show = min(n_grid, len(faces))

  if result["vae"]:
    # --- Reconstruction: what the VAE finds easy and hard to reproduce.
    order_err = np.argsort(pred.recon_error, kind="stable")
    low, high = order_err[:n_show], order_err[::-1][:n_show]
    both = np.concatenate([low, high])
    recon = evaluation.reconstruct(run.variables, images[both], run.batch_size)
    decimals = distinct_decimals(pred.recon_error[both], 3, 6)
    path = plot_face_panels([
        {"title": "Lowest reconstruction loss (each face above its reconstruction)",
         "images": images[low], "recon": recon[:n_show],
         "captions": _face_captions(groups[low], pred.recon_error[low], decimals, "L1 ")},
        {"title": "Highest reconstruction loss", "images": images[high],
         "recon": recon[n_show:],
         "captions": _face_captions(groups[high], pred.recon_error[high], decimals, "L1 ")},
    ], out / f"{slug}_reconstruction.png", f"{run.name}: test faces by reconstruction loss")
    page.figure(path, f"{run.name}: the {n_show} test faces the VAE reconstructs best (top) and "
                f"worst (bottom), each above its reconstruction from the latent mean, with "
                f"group and L1 loss. Best: {_composition(groups[low], order)}. Worst: "
                f"{_composition(groups[high], order)}. Faces reconstructed badly are ones the "
                "latent space represents poorly; the L1 error also grows with image contrast, so "
                "dark, low-contrast faces can be easy to reproduce pixel by pixel.",
                run.name)
    findings["reconstruction"] = {
        "lowest_groups": dict(collections.Counter(groups[low].tolist())),
        "highest_groups": dict(collections.Counter(groups[high].tolist())),
        "mean_by_group": {g: float(pred.recon_error[groups == g].mean())
                          for g in order if np.any(groups == g)}}

    # --- Latent traversals of the highest-variance dimensions.
    traversal = evaluation.latent_traversal(run.variables, pred.z_mean, n_dims=5)
    path = plot_latent_traversal(pred.z_mean, traversal, out / f"{slug}_latent_traversal.png")
    page.figure(path, f"{run.name}: the {len(traversal.dims)} latent dimensions with the largest "
                "variance of the latent mean over the test faces. Above: the histogram of that "
                "dimension; below: the mean latent code decoded with only that dimension set to "
                "the value under each face (its observed range). These are the factors the VAE "
                "found most variable in the faces (skin tone, lighting, hair, pose...).",
                run.name)
    findings["traversal_dims"] = traversal.dims

    # --- Accuracy vs latent density.
    curve = evaluation.accuracy_vs_latent(pred.z_mean, pred.face_prob)
    path = plot_latent_accuracy(curve, out / f"{slug}_accuracy_vs_latent.png")
    mid = curve.mean_curve[len(curve.mean_curve) // 2 - 1:len(curve.mean_curve) // 2 + 1]
    ends = curve.mean_curve[[0, -1]]
    page.figure(path, f"{run.name}: mean face probability of the test faces per bin of each "
                "latent dimension (5th to 95th percentile, 10 bins; blue: single dimensions, "
                "red: their mean; grey bars: share of faces per bin, i.e. the latent density). "
                f"Mean over the two central bins {np.nanmean(mid):.3f}, over the two outer bins "
                f"{np.nanmean(ends):.3f}: a curve that drops towards the rare outer bins means "
                "faces with uncommon latent features are detected less reliably.", run.name)
    findings["accuracy_vs_latent"] = {"mean_curve": curve.mean_curve, "share": curve.share}

  # --- Faces ranked by each risk score.
  findings["scores_by_group"] = {}
  for name, values in scores.items():
    if values is None:
      continue
    label, meaning = SCORE_TEXT[name]
    rank = np.argsort(values, kind="stable")
    low, high = rank[:n_show], rank[::-1][:n_show]
    # Enough decimals that different scores read differently (the entropy of a near-chance
    # classifier differs only in the fifth decimal).
    decimals = distinct_decimals(values[np.concatenate([low, high])],
                                 2 if name == "bias" else 3, 6)
    path = plot_face_panels([
        {"title": f"Lowest {label}", "images": images[low],
         "captions": _face_captions(groups[low], values[low], decimals)},
        {"title": f"Highest {label}", "images": images[high],
         "captions": _face_captions(groups[high], values[high], decimals)},
    ], out / f"{slug}_faces_{name}.png", f"{run.name}: test faces by {label} ({meaning})")
    extra = ""
    if name == "bias":
      extra = (" The density is estimated on training faces, so low means rare in training."
               if result["reference"] else " The density is estimated on the test faces.")
    page.figure(path, f"{run.name}: the {n_show} test faces with the lowest (top) and highest "
                f"(bottom) {label} ({meaning}), with group and score.{extra} Lowest: "
                f"{_composition(groups[low], order)}. Highest: "
                f"{_composition(groups[high], order)}.", run.name)
    findings["scores_by_group"][name] = {g: float(np.mean(values[groups == g]))
                                         for g in order if np.any(groups == g)}

  present = [g for g in order if np.any(groups == g)]
  if present:
    path = plot_score_by_group(scores, groups, present, out / f"{slug}_scores_by_group.png")
    parts = []
    for name, by_group in findings["scores_by_group"].items():
      pick = min if name == "bias" else max
      worst = pick(by_group, key=by_group.get)
      parts.append(f"{SCORE_TEXT[name][0]}: {'lowest' if name == 'bias' else 'highest'} mean in "
                   f"{worst} ({by_group[worst]:.3g})")
    page.figure(path, f"{run.name}: distribution of each risk score per group over the test faces "
                "(boxes: quartiles, whiskers: 1.5 IQR, diamonds: means). "
                + "; ".join(parts) + ".", run.name)

  if result["vae"]:
    # --- Detection rate per decile of the bias and epistemic scores.
    rates = {name: evaluation.rate_by_quantile(scores[name], pred.face_prob)
             for name in ("bias", "epistemic")}
    path = plot_quantile_rates(rates, out / f"{slug}_deciles.png")
    b, e = rates["bias"].rate, rates["epistemic"].rate
    page.figure(path, f"{run.name}: detection rate of the test faces per decile of the bias score "
                f"(left, decile 1 = rarest) and of the epistemic score (right, decile 10 = "
                f"worst reconstructed). Rarest decile {100 * b[0]:.1f}% vs most common "
                f"{100 * b[-1]:.1f}%; best reconstructed decile {100 * e[0]:.1f}% vs worst "
                f"{100 * e[-1]:.1f}%. A model that is biased against rare faces shows rates "
                "rising with the bias score and falling with the epistemic score.", run.name)
    findings["deciles"] = {k: q._asdict() for k, q in rates.items()}

    # --- Percentile faces.
    rows = {name: evaluation.percentile_faces(images, scores[name])
            for name in ("bias", "epistemic")}
    path = plot_percentile_faces(rows, out / f"{slug}_percentile_faces.png")
    page.figure(path, f"{run.name}: the average test face in each 10% band of the bias score "
                "(top; left = rarest) and of the epistemic score (bottom; right = worst "
                "reconstructed). A trend in skin tone or hair across a row shows which "
                "appearance the score associates with rarity.", run.name)
  return findings


_CSS = """
body { font-family: sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.45; }
figure { margin: 1.5em 0; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.92em; color: #333; margin-top: 0.4em; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; }
"""


def build_report(out_dir: str | os.PathLike, runs: Sequence[RunArtifacts], *,
                 title: str | None = None, n_grid: int = 16) -> Path:
  """Writes the figures, ``index.html`` and ``metrics.json`` of a report.

  The first run is the main one; every run gets a per-group section and, for VAEs, the latent
  diagnostics; with several runs a comparison of their per-group rates comes first.

  Args:
    out_dir: output directory (created).
    runs: the runs to report.
    title: page title (default from the run names).
    n_grid: faces per lowest / highest grid.

  Returns:
    Path of ``index.html``.
  """
  if not runs:
    raise ValueError("build_report needs at least one run")
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  order = order_groups([g for r in runs for g in np.asarray(r.groups)[np.asarray(r.labels) == 1]])
  results = [analyse_run(r, order) for r in runs]
  names = [r.name for r in runs]
  metrics = [res["metrics"] for res in results]
  title = title or "Bias report: " + " vs ".join(names)
  page = _Page(out)
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
  page.raw(_table(_SUMMARY_HEADER, _summary_rows(names, [r.kind for r in runs], metrics)))

  if len(runs) > 1:
    page.heading("Comparison of the runs")
    path = plot_group_comparison(names, metrics, out / "comparison.png")
    best = min(range(len(runs)), key=lambda i: (metrics[i]["Var_A"] is None,
                                                metrics[i]["Var_A"] or 0.0))
    page.figure(path, "Detection rate (left) and mean face probability (right) per group for "
                f"each run, on the same test faces. Lowest variance across groups: {names[best]} "
                f"(Var_A {_pct(metrics[best]['Var_A'], 2)} %², worst group "
                f"{metrics[best]['worst_group']} at {_pct(metrics[best]['worst_rate'])}%).", None)
    rows = [[g] + [_frac_pct(m["groups"].get(g, {}).get("detection_rate"), 2) for m in metrics]
            for g in order]
    page.raw(_table(["group (detection %)"] + names, rows))

  findings = []
  for run, res, slug in zip(runs, results, slugs):
    m = res["metrics"]
    kind_label = KIND_LABELS.get(run.kind, run.kind)
    page.heading(run.name if run.name == kind_label else f"{run.name} ({kind_label})")
    if run.test_note and run is not main:
      page.para(run.test_note)
    path = plot_group_bars(m, out / f"{slug}_groups.png", f"{run.name}: detection per group")
    rate_text = ", ".join(f"{g} {_frac_pct(v['detection_rate'])}%" for g, v in m["groups"].items())
    page.figure(path, f"{run.name}: share of each group's test faces detected (left) and their "
                f"mean face probability (right). {rate_text}. E_A {_pct(m['E_A'], 2)}%, Var_A "
                f"{_pct(m['Var_A'], 2)} %², worst group {m['worst_group']}, gap "
                f"{_pct(m['gap'])} points; non-faces correctly rejected: "
                f"{_frac_pct(m['non_face_accuracy'])}%.",
                run.name)
    if res["vae"]:
      page.para("What the latent space learned, where the model is unsure, and whether its "
                "mistakes concentrate on faces that its latent space marks as rare:")
    else:
      page.para("The standard CNN has no latent space; only its aleatoric score (predictive "
                "entropy) can be shown.")
    diag = _run_diagnostics(page, run, res, slug, order, n_grid)
    findings.append({"name": run.name, "kind": run.kind, "test": m,
                     "density_reference": "train" if res["reference"] else "test",
                     "train_metrics": run.train_metrics, **diag})

  body = "\n".join(page.blocks)
  (out / "index.html").write_text(
      f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
      f"<style>{_CSS}</style></head><body>\n<h1>{html.escape(title)}</h1>\n{body}\n"
      "</body></html>\n", encoding="utf-8")
  (out / "metrics.json").write_text(json.dumps(json_safe(
      {"title": title, "group_order": order, "runs": findings, "figures": page.figures}),
      indent=2))
  return out / "index.html"


# ---------------------------------------------------------------------------------- run dirs


def _run_name(config, workdir: Path, taken: set[str]) -> str:
  """The config's name (the model kind's label for a default name like 'dbvae'), made unique."""
  name = str(config.get("name", "") or "") or workdir.name
  if name in KIND_LABELS:
    name = KIND_LABELS[name]
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


def write_report(workdir: str | os.PathLike, compare: Sequence[str | os.PathLike] = (),
                 out_dir: str | os.PathLike | None = None, *, datasets: dict | None = None,
                 max_reference_faces: int = 2000) -> Path:
  """Writes ``WORKDIR/report/`` (figures, ``index.html``, ``metrics.json``) for a run.

  Every run is evaluated on the main run's test set (a compared run with a different image
  size on its own). The bias score's latent density is estimated on up to
  ``max_reference_faces`` training faces of each run's own data.

  Args:
    workdir: run directory (``config.json``, checkpoints, ``metrics.json``).
    compare: other run directories to compare with, e.g. the standard CNN.
    out_dir: output directory; default ``WORKDIR/report``.
    datasets: the main run's ``{'train', 'val', 'test'}`` if already loaded.
    max_reference_faces: training faces used as the latent-density reference.

  Returns:
    Path of ``index.html``.
  """
  from jaxface import data as data_lib
  from jaxface import checkpoints

  workdir = Path(workdir)
  taken: set[str] = set()
  cache: dict[str, dict] = {}
  runs = []
  main_test = None
  for i, directory in enumerate([workdir, *map(Path, compare)]):
    config, variables = checkpoints.load_run(directory)
    key = config.data.to_json()
    if i == 0 and datasets is not None:
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
    train_metrics = None
    metrics_path = directory / "metrics.json"
    if metrics_path.exists():
      train_metrics = {k: v for k, v in json.loads(metrics_path.read_text()).items()
                       if k not in ("epochs", "resampling")}
    runs.append(RunArtifacts(
        name=_run_name(config, directory, taken), kind=config.model.kind, variables=variables,
        images=test.images, labels=test.labels, groups=test.groups,
        reference_images=_reference_faces(own.get("train"), max_reference_faces),
        train_metrics=train_metrics, bins=int(config.resampling.bins),
        batch_size=int(config.get("eval_batch_size", 256)), dtype=str(config.get("dtype",
                                                                                 "float32")),
        test_note=note))
  return build_report(out_dir or workdir / "report", runs)
