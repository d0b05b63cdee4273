"""The report's figures of where skin tone lives in a VAE's latent space.

Drawn from :class:`jaxface.eval.latent_bias.LatentBias`; the traversal along a principal axis
is drawn by :func:`jaxface.report.figures.plot_latent_traversal`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from jaxface import evaluation
from jaxface.eval.latent_bias import LatentBias
from jaxface.report.figures import _save, plot_latent_traversal


def _reference_lines(ax: Axes, found: LatentBias) -> None:
  """The probe's and the error axis's AUC as horizontal lines, and chance."""
  ax.axhline(found.probe_auc, color="black", ls="--", lw=1.2,
             label=f"linear probe, held-out half ({found.probe_auc:.3f})")
  if np.isfinite(found.error_axis_auc):
    ax.axhline(found.error_axis_auc, color="tab:red", ls=":", lw=1.5,
               label=f"error axis, darker towards the errors ({found.error_axis_auc:.3f})")
  ax.axhline(0.5, color="grey", lw=0.8)


def plot_latent_bias(found: LatentBias, path: str | os.PathLike, title: str) -> Path:
  """AUC of darker vs lighter faces per principal axis and per latent dimension.

  Left: each principal axis's AUC (bars) with the share of the variance it explains beside it
  (hatched bars, right-hand scale). Right: every latent dimension's AUC, sorted (grey:
  inactive dimensions). Both panels show the linear probe's and the error axis's AUC as lines.

  Args:
    found: :func:`jaxface.eval.latent_bias.latent_bias` output.
    path: PNG path.
    title: figure title.

  Returns:
    The path written.
  """
  m, k = len(found.axis_auc), len(found.dim_auc)
  fig = Figure(figsize=(12.0, 4.6), layout="constrained")
  axis_ax, dim_ax = fig.subplots(1, 2, width_ratios=(max(m, 3), max(min(k, 60) / 2.5, 4)))
  x = np.arange(1, m + 1)
  axis_ax.bar(x - 0.2, found.axis_auc, 0.4, color="tab:purple", label="AUC of the axis")
  variance_ax = axis_ax.twinx()
  variance_ax.bar(x + 0.2, 100 * found.axis_variance_share, 0.4, color="tab:grey", alpha=0.5,
                  hatch="//", edgecolor="white")
  variance_ax.set_ylabel("variance explained (%, hatched)", color="tab:grey")
  variance_ax.tick_params(axis="y", colors="tab:grey")
  axis_ax.set_zorder(variance_ax.get_zorder() + 1)
  axis_ax.patch.set_visible(False)
  axis_ax.set_xticks(x)
  axis_ax.set_xlabel("principal axis of the active dimensions (1 = most variance)")
  axis_ax.set_title("Principal axes", fontsize=10)
  rank = np.argsort(-found.dim_auc, kind="stable")
  colors = np.where(found.active[rank], "tab:blue", "lightgrey")
  dim_ax.bar(np.arange(k), found.dim_auc[rank], 0.8, color=colors)
  dim_ax.set_xticks(np.arange(k), [str(int(d)) for d in rank], fontsize=6,
                    rotation=90 if k > 12 else 0)
  dim_ax.set_xlabel("latent dimension, by AUC (grey: inactive)")
  dim_ax.set_title(f"Single latent dimensions (best {found.dim_auc.max():.3f})", fontsize=10)
  low = min(0.45, float(np.nanmin([found.error_axis_auc, 1.0])) - 0.03)
  for ax in (axis_ax, dim_ax):
    _reference_lines(ax, found)
    ax.set_ylim(low, 1.02)
    ax.set_ylabel("AUC darker vs lighter (max(AUC, 1 - AUC))")
    ax.grid(axis="y", alpha=0.3)
  handles, labels = axis_ax.get_legend_handles_labels()
  fig.legend(handles, labels, loc="outside lower center", ncols=3, fontsize=8, frameon=False)
  fig.suptitle(title)
  return _save(fig, Path(path))


def plot_axis_traversal(projection: np.ndarray, darker: np.ndarray,
                        traversal: evaluation.Traversal, path: str | os.PathLike,
                        title: str) -> Path:
  """The mean face decoded along one principal axis, under the faces' histogram along it.

  Args:
    projection: (N,) the faces' offsets from the mean code along the axis.
    darker: (N,) bool, the darker faces.
    traversal: :func:`jaxface.eval.latent_bias.axis_traversal` output.
    path: PNG path.
    title: figure title.

  Returns:
    The path written.
  """
  axis = int(traversal.dims[0])
  names = [(f"principal axis {axis + 1} (darker faces on its positive side)",
            f"offset along principal axis {axis + 1} (-2 to 2 std of the faces)")]
  return plot_latent_traversal(np.asarray(projection)[:, None], traversal._replace(
      dims=np.array([0])), path, names=names, title=title,
      classes={"darker": np.asarray(darker), "lighter": ~np.asarray(darker)})
