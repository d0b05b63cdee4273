"""The train state, the optimizer and the compute dtype of a run."""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxface import config as config_lib
from jaxface import models

PyTree = Any


def compute_dtype(config: ml_collections.ConfigDict) -> Any:
  """The jnp dtype named by ``config.dtype``."""
  return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[config.dtype]


@flax.struct.dataclass
class TrainState:
  """Everything the step updates. ``step`` is the global step (int32 scalar)."""
  step: jax.Array
  params: PyTree
  batch_stats: PyTree
  opt_state: PyTree

  @property
  def variables(self) -> PyTree:
    return {"params": self.params, "batch_stats": self.batch_stats}


def make_optimizer(config: ml_collections.ConfigDict,
                   total_steps: int | None = None) -> optax.GradientTransformation:
  """Adam at ``config.learning_rate``, constant or on ``config.lr_schedule``.

  Args:
    config: the run config (``learning_rate``, ``lr_schedule``).
    total_steps: the run's number of steps; needed by ``lr_schedule='cosine'``, which decays
      the rate to 0 along a half cosine over them.

  Returns:
    The optax transformation.
  """
  schedule = config.get("lr_schedule", "constant")
  if schedule == "constant":
    return optax.adam(config.learning_rate)
  if schedule == "cosine":
    if not total_steps:
      raise ValueError("config.lr_schedule = 'cosine' needs the run's total number of steps")
    return optax.adam(optax.cosine_decay_schedule(config.learning_rate, int(total_steps)))
  raise ValueError(f"config.lr_schedule = {schedule!r}: must be one of {config_lib.LR_SCHEDULES}")


def create_train_state(key: jax.Array, config: ml_collections.ConfigDict,
                       optimizer: optax.GradientTransformation) -> TrainState:
  """A fresh state: the model initialised from ``key``, step 0, the optimizer's initial state."""
  variables = models.init_variables(key, latent_dim=config.model.latent_dim,
                                    n_filters=config.model.n_filters,
                                    image_size=config.data.image_size,
                                    input_norm=config.model.get("input_norm", False))
  return TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                    batch_stats=variables["batch_stats"],
                    opt_state=optimizer.init(variables["params"]))
