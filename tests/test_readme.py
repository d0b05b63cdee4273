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
