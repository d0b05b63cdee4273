"""The aggregate bias figures of per-group detection rates (the DB-VAE paper's E[A], Var[A]).

Rates are fractions in [0, 1]; the aggregates are in percent: ``E_A`` (mean of the group rates),
``Var_A`` (population variance of the group rates, percent squared), ``worst_rate`` and ``gap``
(best minus worst rate).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def var_a_sampling_noise(rates: Sequence[float], counts: Sequence[int]) -> float:
  """The part of Var[A] (%²) that the finite test set alone contributes.

  Each group's measured rate ``r_g`` is a binomial estimate from ``n_g`` faces, with sampling
  variance ``s_g² = r_g (1 - r_g) / (n_g - 1)`` (unbiased). Even groups with equal true rates
  then show a population variance of the G measured rates of, in expectation,
  ``(G - 1) / G² * sum_g s_g²``; that is returned. ``Var_A`` minus it estimates the variance of
  the true group rates, so a Var[A] near it cannot be told from a perfectly fair detector, and
  a cut below it cannot be measured on this test set.

  Args:
    rates: (G,) detection rates as fractions in [0, 1].
    counts: (G,) faces per group, each >= 2.

  Returns:
    The expected sampling part of Var[A] in percent squared.
  """
  rates = np.asarray(rates, np.float64)
  counts = np.asarray(counts, np.float64)
  if rates.shape != counts.shape or rates.ndim != 1 or rates.size == 0:
    raise ValueError(f"rates {rates.shape} and counts {counts.shape} must be the same (G,) shape")
  if not np.all(counts >= 2):
    raise ValueError(f"every group needs at least 2 faces, got counts {counts.tolist()}")
  if not np.all((rates >= 0) & (rates <= 1)):
    raise ValueError(f"rates must be fractions in [0, 1], got {rates.tolist()}")
  g = rates.size
  return float((g - 1) / g**2 * np.sum(rates * (1 - rates) / (counts - 1)) * 1e4)


def rate_figures(rates: Sequence[tuple[str, float]]) -> dict:
  """The aggregate bias figures of per-group detection rates.

  Args:
    rates: ``(group, detection rate as a fraction)`` pairs, at least one.

  Returns:
    ``{'E_A', 'Var_A', 'worst_group', 'worst_rate', 'gap'}``: the mean rate (%), ``np.var`` of
    the rates in % (%²), the group with the lowest rate and that rate (%), max - min rate (%).
  """
  pct = np.array([r for _, r in rates]) * 100.0
  worst = int(np.argmin(pct))
  return {"E_A": float(pct.mean()), "Var_A": float(np.var(pct)), "worst_group": rates[worst][0],
          "worst_rate": float(pct[worst]), "gap": float(pct.max() - pct.min())}
