"""Where the experiments find what lives outside the repository: data sets and reference scripts.

Each location is a command-line flag of the script that needs it; its default comes from an
environment variable, else a folder beside the repository:

* ``$JAXFACE_SHARED_DATA``, else ``../shared/data``: the real data sets (``utkface-bias/``,
  ``ppb-faces/``, ``nonface-photos/``); the tests read the same variable.
* ``$JAXFACE_SHARED_BENCH``, else ``../shared/bench``: the PyTorch reference scripts
  (``peer_torch_dbvae.py``, ``peer_torch_study.py``).
* ``$JAXFACE_TORCH_PYTHON``, else this interpreter: a Python that can import torch.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _from_env(name: str, default: Path) -> Path:
  return Path(os.environ.get(name) or default)


def shared_data_root() -> Path:
  """The data sets' folder: ``$JAXFACE_SHARED_DATA``, else ``../shared/data`` beside the repo."""
  return _from_env("JAXFACE_SHARED_DATA", REPO.parent / "shared" / "data")


def shared_bench_dir() -> Path:
  """The reference scripts' folder: ``$JAXFACE_SHARED_BENCH``, else ``../shared/bench``."""
  return _from_env("JAXFACE_SHARED_BENCH", REPO.parent / "shared" / "bench")


def torch_python() -> str:
  """The Python that runs the PyTorch reference: ``$JAXFACE_TORCH_PYTHON``, else this one."""
  return os.environ.get("JAXFACE_TORCH_PYTHON") or sys.executable
