"""HTML bias report of one or more trained runs: figures, captions and machine-readable metrics.

* :mod:`jaxface.report.findings`: the findings as plain data (no plotting library);
* :mod:`jaxface.report.figures`: one matplotlib figure per ``plot_*`` function;
  :mod:`jaxface.report.figures_latent` those of where skin tone lives in the latent space
  (from :mod:`jaxface.eval.latent_bias`);
* :mod:`jaxface.report.page`: the HTML page;
* :mod:`jaxface.report.build`: :func:`build_report` (from in-memory runs) and
  :func:`write_report` (from run directories, which it only reads), with the sections of
  :mod:`jaxface.report.run_sections` (one run's training and diagnostics) and
  :mod:`jaxface.report.set_sections` (the extra test sets and whole-photo sets, runs side by
  side).

The names of the figure modules and of :mod:`~jaxface.report.build` are imported on
first use, so ``jaxface.report.findings`` works without matplotlib.
"""

import importlib
from typing import Any

from jaxface.report.findings import (CANONICAL_GROUPS, KIND_LABELS, SCORE_TEXT, RunArtifacts,
                                     SamplingMass, TrainingCurves, analyse_run, distinct_decimals,
                                     format_fixed, json_safe, latent_accuracy_band, order_groups,
                                     resampling_from_log, sampling_mass, side_by_side,
                                     training_curves)

_LAZY = {
    **{name: "figures" for name in (
        "plot_face_panels", "plot_group_bars", "plot_group_roc", "plot_group_comparison",
        "plot_latent_accuracy",
        "plot_latent_traversal", "plot_percentile_faces", "plot_quantile_rates",
        "plot_sampling_mass", "plot_score_by_group", "plot_training_curves", "tile")},
    **{name: "figures_latent" for name in ("plot_axis_traversal", "plot_latent_bias")},
    **{name: "build" for name in ("build_report", "read_jsonl", "write_report")},
}

__all__ = [
    "CANONICAL_GROUPS", "KIND_LABELS", "SCORE_TEXT", "RunArtifacts", "SamplingMass",
    "TrainingCurves", "analyse_run", "distinct_decimals", "format_fixed", "json_safe",
    "latent_accuracy_band", "order_groups", "resampling_from_log", "sampling_mass",
    "side_by_side", "training_curves", *_LAZY,
]


def __getattr__(name: str) -> Any:
  """The figure and page-building names, imported on first use."""
  if name in _LAZY:
    return getattr(importlib.import_module(f"jaxface.report.{_LAZY[name]}"), name)
  raise AttributeError(f"module 'jaxface.report' has no attribute {name!r}")
