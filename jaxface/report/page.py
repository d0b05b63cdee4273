"""The report's HTML: a page of headings, paragraphs, tables and captioned figures."""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jaxface.eval.formatting import frac_pct, pct
from jaxface.eval.operating_point import fpr_tag
from jaxface.report import findings as fnd

CSS = """
body { font-family: sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.45; }
figure { margin: 1.5em 0; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.92em; color: #333; margin-top: 0.4em; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
td { white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; }
details { margin: 1em 0; }
details pre { background: #f7f7f7; padding: 0.6em; font-size: 0.85em; overflow-x: auto; }
"""


SUMMARY_HEADER = ("run", "accuracy %", "faces detected %", "non-faces correct %", "E_A %",
                  "Var_A %²", "Var_A noise %²", "worst group", "worst rate %", "gap (points)")


class Page:
  """Collects the report's HTML blocks and its list of figures.

  Attributes:
    out_dir: the directory the figures are written to.
    blocks: HTML fragments, in page order.
    figures: ``{'file', 'caption', 'run'}`` of every figure shown.
  """

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

  def render(self, title: str) -> str:
    """The whole HTML document."""
    body = "\n".join(self.blocks)
    return (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title><style>{CSS}</style></head><body>\n<h1>{html.escape(title)}</h1>\n{body}\n"
            "</body></html>\n")


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  """An HTML table; cells are escaped text."""
  head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
  body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
                 for row in rows)
  return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def config_details(config: dict, summary: str) -> str:
  """A collapsed ``<details>`` block with the run's configuration as indented JSON.

  Args:
    config: the configuration as a plain dict.
    summary: the text of the always-visible line.

  Returns:
    The HTML fragment.
  """
  text = json.dumps(config, indent=2, sort_keys=False, default=str)
  return (f"<details><summary>{html.escape(summary)}</summary><pre>{html.escape(text)}</pre>"
          "</details>")


def summary_rows(names: Sequence[str], kinds: Sequence[str], metrics: Sequence[dict]) -> list:
  """Cells of the summary table (:data:`SUMMARY_HEADER`): one row per run, named once.

  Args:
    names: run names.
    kinds: their model kinds (``'cnn'``, ``'ssvae'``, ``'dbvae'``).
    metrics: their :func:`jaxface.evaluation.group_metrics`.

  Returns:
    One list of strings per run.
  """
  rows = []
  for name, kind, m in zip(names, kinds, metrics):
    rows.append([fnd.display_name(name, kind), frac_pct(m.get("accuracy"), 2),
                 frac_pct(m.get("face_detection_rate"), 2),
                 frac_pct(m.get("non_face_accuracy"), 2), pct(m["E_A"], 2),
                 pct(m["Var_A"], 2), pct(m.get("Var_A_noise"), 2),
                 m["worst_group"] or "–", pct(m["worst_rate"], 2), pct(m["gap"], 2)])
  return rows


def summary_table(names: Sequence[str], kinds: Sequence[str],
                  metrics: Sequence[dict]) -> tuple[list[str], list[list[str]]]:
  """The summary table: each run's worst group, E_A and Var_A at the operating point first,
  then the columns of :data:`SUMMARY_HEADER` at p = 0.5 (:func:`summary_rows`).

  Args:
    names: run names.
    kinds: their model kinds.
    metrics: their :func:`jaxface.evaluation.group_metrics`, with the ``operating_point`` of
      :func:`jaxface.report.findings.analyse_run` (where no run has one, the table is
      :data:`SUMMARY_HEADER`'s alone).

  Returns:
    ``(header, rows)``.
  """
  rows = summary_rows(names, kinds, metrics)
  ops = [m.get("operating_point") or {} for m in metrics]
  tag = next((fpr_tag(op) for op in ops if op), "")
  if not tag:
    return list(SUMMARY_HEADER), rows
  header = [SUMMARY_HEADER[0], f"worst group {tag}", f"worst rate {tag} %", f"E_A {tag} %",
            f"Var_A {tag} %²", *(f"{h} @0.5" for h in SUMMARY_HEADER[1:])]
  return header, [[row[0], op.get("worst_group") or "–", pct(op.get("worst_rate"), 2),
                   pct(op.get("E_A"), 2), pct(op.get("Var_A"), 2), *row[1:]]
                  for row, op in zip(rows, ops)]
