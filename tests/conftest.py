"""Shared test set-up: a persistent XLA compilation cache for the session.

Many tests compile the same small models; caching the compiled executables on disk keeps the
suite fast on a 2-core CPU.
"""

import tempfile

import jax
import pytest


@pytest.fixture(scope="session", autouse=True)
def _compilation_cache():
  with tempfile.TemporaryDirectory(prefix="jaxface-xla-cache-") as cache_dir:
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    yield
