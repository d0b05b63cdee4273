r"""Checks that the planted bias is real: a standard CNN trained on the skewed planted set.

Trains the standard classifier with the runner's step (:mod:`jaxface.train`: adam, batches of
half faces and half non-faces) on :func:`jaxface.data.make_planted_bias` training data and
prints, as JSON, the detection rate of each group of the balanced planted test set, the
darker-vs-lighter gap, the accuracy on non-faces and the generation speed. Measured results:
experiments/results/README.md.

Usage::

  python experiments/bias_check.py --epochs=2
  python experiments/bias_check.py --epochs=2 --dark_fraction=0.5   # balanced skin tones
"""

from __future__ import annotations

import argparse
import functools
import json
import time

import jax
import ml_collections
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxface import config as config_lib
from jaxface import inference, sharding
from jaxface import train as train_lib
from jaxface.data.batcher import Batcher
from jaxface.data.container import FaceData
from jaxface.data.planted import make_planted_bias


def cnn_config(image_size: int, batch_size: int, learning_rate: float,
               seed: int) -> ml_collections.ConfigDict:
  """The run config of the standard CNN that :func:`train_standard_cnn` trains."""
  config = config_lib.get_base_config()
  config.name = "bias-check"
  config.seed = seed
  config.model.kind = "cnn"
  config.model.latent_dim = 0
  config.resampling.signal = "none"
  config.data.image_size = image_size
  config.batch_size = batch_size
  config.learning_rate = learning_rate
  return config


def train_standard_cnn(train: FaceData, epochs: int, batch_size: int, learning_rate: float,
                       seed: int) -> dict:
  """Trains the standard CNN with :func:`jaxface.train.make_train_step`; returns its variables.

  Args:
    train: training faces and non-faces.
    epochs: passes of :class:`jaxface.data.Batcher` over the faces.
    batch_size: global batch (half faces, half non-faces).
    learning_rate: adam's learning rate.
    seed: model and batch seed.

  Returns:
    ``{'params', 'batch_stats'}`` of the trained CNN.
  """
  config = cnn_config(train.image_shape[0], batch_size, learning_rate, seed)
  mesh = sharding.make_mesh()
  config_lib.validate_config(config, mesh.devices.size)
  optimizer = train_lib.make_optimizer(config)
  init_key, step_key = jax.random.split(jax.random.key(seed))
  state = jax.jit(lambda key: train_lib.create_train_state(key, config, optimizer),
                  out_shardings=NamedSharding(mesh, P()))(init_key)
  step_key = sharding.replicate(mesh, step_key)
  step = train_lib.make_train_step(config, optimizer, mesh)
  batcher = Batcher(train, batch_size, seed, num_devices=mesh.devices.size)
  for epoch in range(epochs):
    for batch in batcher.epoch_batches(epoch):
      batch = jax.tree.map(functools.partial(sharding.shard_batch, mesh), batch)
      state, _ = step(state, batch, step_key)
  return jax.device_get(state.variables)


def detection_rates(variables: dict, test: FaceData, batch_size: int = 500) -> dict[str, float]:
  """Per-group face detection rates, glasses / no-glasses rates and non-face accuracy."""
  mesh = sharding.make_mesh()
  prob = inference.infer(sharding.replicate(mesh, variables), test.images, ("face_prob",),
                         mesh=mesh, batch_size=batch_size)["face_prob"]
  said_face = prob > 0.5
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
  parser.add_argument("--image_size", type=int, default=64, help="a multiple of 16")
  args = parser.parse_args()

  start = time.perf_counter()
  train = make_planted_bias(args.n_faces, seed=args.seed, dark_fraction=args.dark_fraction,
                            accessory_fraction=args.accessory_fraction,
                            image_size=args.image_size)
  gen_rate = len(train) / (time.perf_counter() - start)
  test = make_planted_bias(n_per_group=args.n_per_group, seed=args.seed, accessory_fraction=0.5,
                           image_size=args.image_size)
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
