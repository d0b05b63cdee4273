"""Benchmark: throughput of jaxface.data.Batcher, and of the planted-data generator.

    python experiments/bench_batcher.py [--n_images 100000] [--batch_sizes 32 256]

Builds a synthetic uint8 dataset (half faces, half non-faces) and prints one JSON object with,
per batch size, the images/s of ``Batcher.batch`` called in a loop, of ``epoch_batches`` with
background prefetching (the consumer does nothing), and of ``batch`` with non-uniform face
probabilities; plus the images/s of ``make_planted_bias`` (wall clock and CPU time, since shared
machines slow wall clock down). Each figure is the best of ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

import numpy as np

from jaxface import data


def best_rate(fn, n_images: int, repeats: int, clock=time.perf_counter) -> float:
  """Best images/s over ``repeats`` calls of ``fn``, which processes ``n_images`` images."""
  best = 0.0
  for _ in range(repeats):
    start = clock()
    fn()
    best = max(best, n_images / max(clock() - start, 1e-9))
  return best


def synthetic(n: int, size: int, seed: int = 0) -> data.FaceData:
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
  labels = (np.arange(n) % 2).astype(np.int32)
  return data.FaceData(images, labels, np.full(n, ""))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--n_images", type=int, default=100_000)
  parser.add_argument("--image_size", type=int, default=64)
  parser.add_argument("--batch_sizes", type=int, nargs="+", default=[32, 256])
  parser.add_argument("--steps", type=int, default=200, help="batches per timed run")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--planted", type=int, default=2000,
                      help="images to generate for the planted-data figure (0 skips it)")
  args = parser.parse_args()

  dataset = synthetic(args.n_images, args.image_size)
  result = {"n_images": args.n_images, "image_size": args.image_size, "batcher": {}}
  for batch_size in args.batch_sizes:
    batcher = data.Batcher(dataset, batch_size, seed=0, steps_per_epoch=args.steps)
    n = batch_size * args.steps

    def direct():
      for step in range(args.steps):
        batcher.batch(0, step)

    def prefetched():
      for _ in batcher.epoch_batches(0):
        pass

    entry = {"batch_images_per_s": best_rate(direct, n, args.repeats),
             "epoch_batches_prefetch_images_per_s": best_rate(prefetched, n, args.repeats)}
    weights = np.random.default_rng(1).exponential(size=batcher.num_faces)
    batcher.set_face_probabilities(weights)
    entry["weighted_batch_images_per_s"] = best_rate(direct, n, args.repeats)
    result["batcher"][str(batch_size)] = {k: round(v) for k, v in entry.items()}

  if args.planted:
    seeds = itertools.count()
    make = lambda: data.make_planted_bias(args.planted // 2, seed=next(seeds),
                                          image_size=args.image_size)
    make()  # Warm up.
    result["planted"] = {
        "images": args.planted,
        "wall_images_per_s": round(best_rate(make, args.planted, args.repeats)),
        "cpu_images_per_s": round(best_rate(make, args.planted, args.repeats,
                                            clock=time.process_time)),
    }
  print(json.dumps(result))


if __name__ == "__main__":
  main()
