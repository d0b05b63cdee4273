"""Benchmark: jitted latent resampling against the MIT lab's NumPy per-dimension loop.

    python experiments/bench_resampling.py [--sizes 10000 100000 200000] [--dims 100]

Prints one JSON line per N with the best-of-``--repeats`` wall time of
``jaxface.resampling.sampling_probabilities`` (both ``combine`` modes) and of
``lab_sampling_probabilities_numpy`` on the same codes, and their ratio (measured in the same
run, since absolute times on shared machines drift).
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np

from jaxface import resampling


def best_time(fn, repeats: int) -> float:
  """Best wall time of ``repeats`` calls of ``fn`` (results blocked on)."""
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return min(times)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 200_000])
  parser.add_argument("--dims", type=int, default=100)
  parser.add_argument("--bins", type=int, default=10)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  for n in args.sizes:
    z_np = rng.standard_normal((n, args.dims), dtype=np.float32)
    z = jax.device_put(z_np)
    row = {"n": n, "dims": args.dims, "bins": args.bins, "backend": jax.default_backend()}
    for combine in ("max", "product"):
      fn = lambda: resampling.sampling_probabilities(z, args.bins, 1e-3, combine)  # noqa: E731
      jax.block_until_ready(fn())  # compile
      row[f"jax_{combine}_s"] = round(best_time(fn, args.repeats), 5)
    row["numpy_lab_loop_s"] = round(best_time(
        lambda: resampling.lab_sampling_probabilities_numpy(z_np, args.bins, 1e-3),
        max(1, args.repeats // 2)), 5)
    row["speedup_max_vs_numpy"] = round(row["numpy_lab_loop_s"] / row["jax_max_s"], 2)
    row["speedup_product_vs_numpy"] = round(row["numpy_lab_loop_s"] / row["jax_product_s"], 2)
    p = np.asarray(resampling.sampling_probabilities(z, args.bins, 1e-3, "max"))
    ref = resampling.lab_sampling_probabilities_numpy(z_np, args.bins, 1e-3)
    row["max_rel_diff_vs_numpy"] = float(np.max(np.abs(p - ref)) / np.max(ref))
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
  main()
