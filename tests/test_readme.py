"""Every ```python block of README.md runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(text: str) -> list[str]:
  """The bodies of the fenced ```python blocks of a Markdown text, in order."""
  return re.findall(r"^```python\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)


def test_python_blocks_are_found():
  blocks = python_blocks("intro\n```python\nx = 1\n```\n```\nnot python\n```\n```python\ny\n```\n")
  assert blocks == ["x = 1\n", "y\n"]
  assert python_blocks(README.read_text()), "README.md has no python block"


@pytest.mark.parametrize("index", range(len(python_blocks(README.read_text()))))
def test_readme_python_block_runs(index):
  code = python_blocks(README.read_text())[index]
  namespace: dict = {"__name__": f"readme_block_{index}"}
  exec(compile(code, f"README.md python block {index}", "exec"), namespace)  # noqa: S102
  arrays = {name: np.asarray(value) for name, value in namespace.items()
            if hasattr(value, "shape") and hasattr(value, "dtype")}
  assert arrays, "the block defines no arrays"
  for name, value in arrays.items():
    if np.issubdtype(value.dtype, np.floating):
      assert np.isfinite(value).all(), name
  if "p" in arrays:  # sampling probabilities
    np.testing.assert_allclose(arrays["p"].sum(), 1.0, rtol=1e-5)


SET_UP_COMMANDS = (
    "pip install -e . && python experiments/run.py --config=configs/dbvae.py "
    "--workdir=/tmp/jaxface/dbvae",
    'pip install -e ".[test]" && python -m pytest -q',
)


def section(text: str, title: str) -> str:
  """The body of the ``## title`` section of a Markdown text ('' when there is none)."""
  match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text,
                    flags=re.MULTILINE | re.DOTALL)
  return match.group(1) if match else ""


def test_set_up_holds_the_commands_ci_runs():
  commands = [line.strip() for line in section(README.read_text(), "Set up").splitlines()
              if line.startswith("    ")]
  assert commands == list(SET_UP_COMMANDS)
  ci = (README.parent / ".ci" / "run").read_text()
  assert SET_UP_COMMANDS[1] in ci.splitlines()


def anchor(heading: str) -> str:
  """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces -> '-'."""
  return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
  """The anchors of the headings of a Markdown file (code blocks skipped)."""
  text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.MULTILINE | re.DOTALL)
  return {anchor(h) for h in re.findall(r"^#+ (.*)$", text, flags=re.MULTILINE)}


def markdown_links(path: Path) -> list[str]:
  """The relative link targets of a Markdown file (web addresses and mail skipped)."""
  targets = re.findall(r"\]\(([^)\s]+)\)", path.read_text())
  return [t for t in targets if not re.match(r"[a-z]+:", t)]


DOCS = [README, *sorted((README.parent / "docs").glob("*.md")),
        README.parent / "experiments" / "results" / "README.md"]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(README.parent)))
def test_relative_links_resolve(doc):
  for target in markdown_links(doc):
    file, _, fragment = target.partition("#")
    linked = (doc.parent / file).resolve() if file else doc
    assert linked.exists(), f"{doc.name}: {target} does not exist"
    if fragment:
      assert fragment in anchors(linked), f"{doc.name}: no heading for #{fragment} in {file}"


def test_anchor_follows_github():
  assert anchor("Cost of the augmentation (`bench_augment_cpu.jsonl`)") == (
      "cost-of-the-augmentation-bench_augment_cpujsonl")
