"""Shared test set-up: cheap XLA:CPU compiles and a persistent compilation cache.

Most tests compile small models and run them a few steps, so compiling dominates: XLA's
backend optimisation level 0 (set in ``XLA_FLAGS`` before JAX starts its backend, and inherited
by the subprocesses tests start, except those on forced devices, which compare 1 and N devices
to a tolerance tuned at the default level) compiles faster, and caching the compiled
executables on disk lets tests and subprocesses share them.
"""

import os
import tempfile

import jax
import pytest
from helpers import FAST_COMPILE_FLAGS

os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE_FLAGS}".strip()

_CACHE_ENV = ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
              "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES")


@pytest.fixture(scope="session", autouse=True)
def _compilation_cache():
  saved = {name: os.environ.get(name) for name in _CACHE_ENV}
  with tempfile.TemporaryDirectory(prefix="jaxface-xla-cache-") as cache_dir:
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    os.environ.update(dict(zip(_CACHE_ENV, (cache_dir, "0", "0"))))
    yield
  for name, value in saved.items():
    if value is None:
      os.environ.pop(name, None)
    else:
      os.environ[name] = value
