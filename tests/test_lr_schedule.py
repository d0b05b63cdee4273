"""The learning-rate schedule: cosine decay over the run, checked on resume."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxface import config as config_lib
from jaxface import train

from helpers import tiny_config


def _updates(optimizer, steps):
  """The update of one parameter under a constant gradient, step by step."""
  params = {"w": jnp.zeros(())}
  state = optimizer.init(params)
  out = []
  for _ in range(steps):
    updates, state = optimizer.update({"w": jnp.ones(())}, state, params)
    out.append(float(updates["w"]))
  return np.array(out)


def test_cosine_decays_adams_step_to_zero_over_the_run():
  config = tiny_config("cnn")
  constant = _updates(train.make_optimizer(config), 6)
  config.lr_schedule = "cosine"
  cosine = _updates(train.make_optimizer(config, total_steps=6), 6)
  # Adam's normalised step under a constant gradient is -lr; the schedule scales it.
  np.testing.assert_allclose(constant, -config.learning_rate, rtol=1e-4)
  expected = [-float(optax.cosine_decay_schedule(config.learning_rate, 6)(i)) for i in range(6)]
  np.testing.assert_allclose(cosine, expected, rtol=1e-4)
  assert cosine[0] == pytest.approx(-config.learning_rate, rel=1e-4)
  assert abs(cosine[-1]) < 0.1 * config.learning_rate
  with pytest.raises(ValueError, match="needs the run's total number of steps"):
    train.make_optimizer(config)


def test_bad_schedule_is_rejected_by_name():
  config = tiny_config("cnn", lr_schedule="linear")
  with pytest.raises(ValueError, match=r"config.lr_schedule = 'linear': must be one of"):
    config_lib.validate_config(config, 1)


def test_cosine_run_resumes_exactly_and_refuses_another_length(tmp_path):
  config = tiny_config("cnn", lr_schedule="cosine", num_epochs=2, steps_per_epoch=3,
                       checkpoint_every_steps=2)
  whole = train.train_and_evaluate(config, tmp_path / "whole")
  train.train_and_evaluate(config, tmp_path / "split", stop_at_step=4)
  resumed = train.train_and_evaluate(config, tmp_path / "split")
  for a, b in zip(jax.tree.leaves(whole.variables), jax.tree.leaves(resumed.variables)):
    np.testing.assert_array_equal(a, b)
  longer = tiny_config("cnn", lr_schedule="cosine", num_epochs=3, steps_per_epoch=3,
                       checkpoint_every_steps=2)
  with pytest.raises(ValueError, match="schedule_steps: checkpoint has 6, config has 9"):
    train.train_and_evaluate(longer, tmp_path / "split")
