"""Shared test set-up: a persistent XLA compilation cache for the session.

Many tests compile the same small models; caching the compiled executables on disk keeps the
suite fast on a 2-core CPU. The cache is also given, through the environment, to the Python
subprocesses that tests start (the scripts, several devices, several processes).
"""

import os
import tempfile

import jax
import pytest

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
