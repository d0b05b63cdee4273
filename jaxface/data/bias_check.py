r"""Checks that the planted bias is real: a standard CNN trained on the skewed planted set.

Trains the standard classifier of :mod:`jaxface.models` (adam, batch of half faces and half
non-faces) on :func:`jaxface.data.make_planted_bias` training data and prints, as JSON, the
detection rate of each group of the balanced planted test set, the darker-vs-lighter gap, the
accuracy on non-faces and the generation speed.

Usage::

  python -m jaxface.data.bias_check --epochs=2
  python -m jaxface.data.bias_check --epochs=2 --dark_fraction=0.5   # balanced skin tones
"""

from __future__ import annotations

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

from jaxface import losses, models
from jaxface.data.batcher import Batcher
from jaxface.data.container import FaceData
from jaxface.data.planted import make_planted_bias

_EPOCHS = flags.DEFINE_integer("epochs", 2, "Training epochs.")
_N_FACES = flags.DEFINE_integer("n_faces", 6000, "Training faces (and as many non-faces).")
_N_PER_GROUP = flags.DEFINE_integer("n_per_group", 250, "Test faces per group.")
_DARK = flags.DEFINE_float("dark_fraction", 0.05, "Fraction of darker training faces.")
_ACCESSORY = flags.DEFINE_float("accessory_fraction", 0.1, "Fraction of training faces with "
                                "glasses.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Batch size.")
_LR = flags.DEFINE_float("learning_rate", 5e-4, "Adam learning rate.")
_SEED = flags.DEFINE_integer("seed", 0, "Data and model seed.")


def train_standard_cnn(train: FaceData, epochs: int, batch_size: int, learning_rate: float,
                       seed: int) -> dict:
  """Trains the standard CNN; returns its variables."""
  variables = models.init_variables(jax.random.PRNGKey(seed), latent_dim=0,
                                    image_size=train.image_shape[0])
  tx = optax.adam(learning_rate)
  opt_state = tx.init(variables["params"])

  @jax.jit
  def step(variables, opt_state, x, y):
    def loss_fn(params):
      out = models.encode({"params": params, "batch_stats": variables["batch_stats"]}, x,
                          train=True)
      return jnp.mean(losses.classification_loss(out.y_logit, y)), out.batch_stats

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
    updates, opt_state = tx.update(grads, opt_state, variables["params"])
    params = optax.apply_updates(variables["params"], updates)
    return {"params": params, "batch_stats": batch_stats}, opt_state, loss

  batcher = Batcher(train, batch_size, seed)
  for epoch in range(epochs):
    for x, y in batcher.epoch_batches(epoch):
      variables, opt_state, _ = step(variables, opt_state, x, y)
  return variables


def detection_rates(variables: dict, test: FaceData, batch_size: int = 500) -> dict[str, float]:
  """Per-group face detection rates, glasses / no-glasses rates and non-face accuracy."""
  predict = jax.jit(lambda x: models.encode(variables, x, train=False).y_logit)
  logits = np.concatenate([np.asarray(predict(test.float_images(np.arange(i, min(i + batch_size,
                                                                                  len(test))))))
                           for i in range(0, len(test), batch_size)])
  said_face = logits > 0
  rates = {g: float(said_face[test.groups == g].mean()) for g in test.group_names}
  faces = test.labels == 1
  skin, accessory = test.attributes["skin"], test.attributes["accessory"]
  rates["lighter"] = float(said_face[faces & (skin == 0)].mean())
  rates["darker"] = float(said_face[faces & (skin == 1)].mean())
  rates["glasses"] = float(said_face[faces & (accessory == 1)].mean())
  rates["no_glasses"] = float(said_face[faces & (accessory == 0)].mean())
  rates["non_face_accuracy"] = float((~said_face[~faces]).mean())
  return rates


def main(argv):
  del argv
  t0 = time.perf_counter()
  data = make_planted_bias(_N_FACES.value, seed=_SEED.value, dark_fraction=_DARK.value,
                           accessory_fraction=_ACCESSORY.value)
  gen_rate = len(data) / (time.perf_counter() - t0)
  test = make_planted_bias(n_per_group=_N_PER_GROUP.value, seed=_SEED.value,
                           accessory_fraction=0.5)
  t0 = time.perf_counter()
  variables = train_standard_cnn(data, _EPOCHS.value, _BATCH.value, _LR.value, _SEED.value)
  train_s = time.perf_counter() - t0
  rates = detection_rates(variables, test)
  print(json.dumps({
      "dark_fraction": _DARK.value, "epochs": _EPOCHS.value, "n_train_faces": data.num_faces,
      "rates": {k: round(v, 4) for k, v in rates.items()},
      "gap_lighter_minus_darker": round(rates["lighter"] - rates["darker"], 4),
      "generation_images_per_s": round(gen_rate), "train_s": round(train_s, 1),
  }, indent=1))


if __name__ == "__main__":
  app.run(main)
