"""The device mesh and the placement of batches and parameters on it.

Training and inference use a one-axis mesh named ``data``: batches are split along their first
dimension over it and parameters are replicated. Every process of a multi-host run holds the
same global host batch and contributes the rows of its own devices.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

PyTree = Any
DATA_AXIS = "data"


def make_mesh(devices: list | None = None) -> Mesh:
  """A one-axis mesh named ``data`` over ``devices`` (default: every device of every host)."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def shard_batch(mesh: Mesh, array: np.ndarray) -> jax.Array:
  """Places a global host batch on the mesh, split along its first axis over ``data``.

  Args:
    mesh: the device mesh.
    array: (B, ...) with B a multiple of the mesh's device count; the same on every process.

  Returns:
    The (B, ...) global array, each device holding its rows.
  """
  sharding = NamedSharding(mesh, P(DATA_AXIS))
  return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def replicate(mesh: Mesh, tree: PyTree) -> PyTree:
  """Copies every leaf of ``tree`` (the same on every process) to every device of ``mesh``.

  Args:
    mesh: the device mesh; on several processes, each places its own devices' copies.
    tree: host or device arrays, PRNG keys included.

  Returns:
    The tree of replicated global arrays.
  """
  sharding = NamedSharding(mesh, P())
  if not mesh.is_multi_process:
    return jax.device_put(tree, sharding)

  def leaf(x):
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      return jax.random.wrap_key_data(leaf(jax.random.key_data(x)),
                                      impl=jax.random.key_impl(x))
    host = np.asarray(jax.device_get(x))
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

  return jax.tree.map(leaf, tree)
