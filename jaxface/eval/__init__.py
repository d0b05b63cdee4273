"""Evaluation of a trained model, one module per kind of figure.

* :mod:`jaxface.eval.splits`: the per-epoch evaluators of the data splits (validation, test,
  the extra test sets), run by :func:`evaluate` as ``config.evaluators`` lists them;
* :mod:`jaxface.eval.summary`: the end-of-run summary printed by the trainer.

Names are imported from their modules on first use, so that importing one module of this
package (e.g. from :mod:`jaxface.evaluation`) does not import the others.
"""

import importlib
from typing import Any

_LAZY = {
    **{name: "splits" for name in ("EVALUATORS", "OPERATING_FPR", "FaceScores", "evaluate",
                                   "test_set_metrics")},
    "format_summary": "summary",
}

__all__ = [*_LAZY]


def __getattr__(name: str) -> Any:
  """The evaluators and the summary, imported on first use."""
  if name in _LAZY:
    return getattr(importlib.import_module(f"jaxface.eval.{_LAZY[name]}"), name)
  raise AttributeError(f"module 'jaxface.eval' has no attribute {name!r}")
