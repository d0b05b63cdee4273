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

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxface import losses, models
from jaxface.data.batcher import Batcher
from jaxface.data.container import FaceData
from jaxface.data.planted import make_planted_bias


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
    for batch in batcher.epoch_batches(epoch):
      x = np.concatenate([batch.faces, batch.non_faces])
      y = np.repeat(np.array([1.0, 0.0], np.float32), len(batch.faces))
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


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--epochs", type=int, default=2)
  parser.add_argument("--n_faces", type=int, default=6000,
                      help="training faces (and as many non-faces)")
  parser.add_argument("--n_per_group", type=int, default=250, help="test faces per group")
  parser.add_argument("--dark_fraction", type=float, default=0.05)
  parser.add_argument("--accessory_fraction", type=float, default=0.1)
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--learning_rate", type=float, default=5e-4)
  parser.add_argument("--seed", type=int, default=0, help="data and model seed")
  args = parser.parse_args()

  start = time.perf_counter()
  train = make_planted_bias(args.n_faces, seed=args.seed, dark_fraction=args.dark_fraction,
                            accessory_fraction=args.accessory_fraction)
  gen_rate = len(train) / (time.perf_counter() - start)
  test = make_planted_bias(n_per_group=args.n_per_group, seed=args.seed, accessory_fraction=0.5)
  start = time.perf_counter()
  variables = train_standard_cnn(train, args.epochs, args.batch_size, args.learning_rate,
                                 args.seed)
  train_s = time.perf_counter() - start
  rates = detection_rates(variables, test)
  print(json.dumps({
      "dark_fraction": args.dark_fraction, "epochs": args.epochs, "seed": args.seed,
      "n_train_faces": train.num_faces, "rates": {k: round(v, 4) for k, v in rates.items()},
      "gap_lighter_minus_darker": round(rates["lighter"] - rates["darker"], 4),
      "generation_images_per_s": round(gen_rate), "train_s": round(train_s, 1),
  }, indent=1))


if __name__ == "__main__":
  main()
