"""Figures as text: the one formatter of percentages and numbers for the run summary and report.

Rates are fractions in [0, 1] (``detection_rate``, ``rate``, ``non_face_accuracy``); the
aggregates ``E_A``, ``Var_A``, ``worst_rate`` and ``gap`` are already in percent.
"""

from __future__ import annotations

MISSING = "–"  # a table cell without a value


def pct(x: float | None, digits: int = 1, *, missing: str = MISSING) -> str:
  """A number (e.g. a figure already in percent) with ``digits`` decimals; ``missing`` for None."""
  return missing if x is None else f"{x:.{digits}f}"


def frac_pct(x: float | None, digits: int = 1, *, missing: str = MISSING) -> str:
  """A fraction in [0, 1] as a number of percent with ``digits`` decimals (no '%' sign)."""
  return pct(None if x is None else 100 * x, digits, missing=missing)


def percent(x: float | None, digits: int = 1) -> str:
  """A fraction in [0, 1] as a percentage with its sign, e.g. '12.5%'; '-' for None."""
  return "-" if x is None else f"{frac_pct(x, digits)}%"
