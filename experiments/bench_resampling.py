"""Benchmark: jitted latent resampling (both histogram paths) against the lab's NumPy loop.

    python experiments/bench_resampling.py [--sizes 10000 100000 200000] [--dims 100]

Prints one JSON line per N with the best-of-``--repeats`` wall time (ms) of
``jaxface.resampling.sampling_probabilities`` for each ``histogram_impl`` (``vmap``: a vmap of
``jnp.histogram``; ``scatter``: arithmetic bins and a chunked scatter-add) and ``combine`` mode,
of ``bias_score`` for each path, and of the MIT 6.S191 lab's NumPy loop
(:func:`lab_sampling_probabilities_numpy`, kept here as the reference that
``experiments/benchmark.py`` and the tests compare with) on the same codes, with the ratios
(measured in the same run, since absolute times on shared machines drift) and the path
``histogram_impl="auto"`` picks on this backend.
"""

from __future__ import annotations

import argparse
import functools
import json
import time

import jax
import numpy as np

from jaxface import resampling


def lab_sampling_probabilities_numpy(z_mean: np.ndarray, bins: int = 10,
                                     smoothing_fac: float = 1e-3) -> np.ndarray:
  """The MIT 6.S191 lab's per-dimension NumPy loop: the reference of ``combine="max"``.

  Host-side (NumPy). Its bin edges are NumPy's, rounded differently from ``jnp.histogram``'s: a
  code within float rounding of an interior edge may fall in the neighbouring bin of
  ``jaxface.resampling.sampling_probabilities``'s.

  Args:
    z_mean: (N, k) latent means.
    bins: histogram bins per dimension.
    smoothing_fac: the lab's smoothing (``alpha``).

  Returns:
    (N,) float64 probabilities summing to 1.
  """
  z_mean = np.asarray(z_mean)
  if z_mean.ndim != 2 or 0 in z_mean.shape:
    raise ValueError(f"z_mean must be a non-empty (N, k) array, got shape {z_mean.shape}")
  p_max = np.zeros(z_mean.shape[0])
  for i in range(z_mean.shape[1]):
    dist = z_mean[:, i]
    density, edges = np.histogram(dist, density=True, bins=bins)
    edges[0], edges[-1] = -np.inf, np.inf
    bin_idx = np.digitize(dist, edges)
    smoothed = density + smoothing_fac
    smoothed = smoothed / np.sum(smoothed)
    p = 1.0 / smoothed[bin_idx - 1]
    p = p / np.sum(p)
    p_max = np.maximum(p, p_max)
  return p_max / np.sum(p_max)


def best_time(fn, repeats: int) -> float:
  """Best wall time in seconds of ``repeats`` calls of ``fn`` (results blocked on)."""
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return min(times)


def best_ms(fn, repeats: int) -> float:
  """:func:`best_time` in milliseconds, rounded to 0.01 ms."""
  return round(1e3 * best_time(fn, repeats), 2)


def main(argv: list[str] | None = None) -> list[dict]:
  """Runs the benchmark; prints and returns one row per size."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 200_000])
  parser.add_argument("--dims", type=int, default=100)
  parser.add_argument("--bins", type=int, default=10)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--skip-numpy", action="store_true", help="do not time the NumPy loop")
  args = parser.parse_args(argv)
  rows = []
  rng = np.random.default_rng(0)
  for n in args.sizes:
    z_np = rng.standard_normal((n, args.dims), dtype=np.float32)
    z = jax.device_put(z_np)
    row = {"n": n, "dims": args.dims, "bins": args.bins, "backend": jax.default_backend(),
           "auto_impl": resampling.resolve_histogram_impl("auto")}
    for impl in ("vmap", "scatter"):
      for combine in ("max", "product"):
        fn = functools.partial(resampling.sampling_probabilities, z, args.bins, 1e-3, combine,
                               histogram_impl=impl)
        jax.block_until_ready(fn())  # compile
        row[f"{impl}_{combine}_ms"] = best_ms(fn, args.repeats)
      fn = functools.partial(resampling.bias_score, z, args.bins, histogram_impl=impl)
      jax.block_until_ready(fn())
      row[f"{impl}_bias_score_ms"] = best_ms(fn, args.repeats)
    for name in ("max", "product", "bias_score"):
      row[f"scatter_speedup_{name}"] = round(row[f"vmap_{name}_ms"] / row[f"scatter_{name}_ms"], 2)
    if not args.skip_numpy:
      row["numpy_lab_loop_ms"] = best_ms(
          lambda: lab_sampling_probabilities_numpy(z_np, args.bins, 1e-3),
          max(1, args.repeats // 2))
      ref = lab_sampling_probabilities_numpy(z_np, args.bins, 1e-3)
      for impl in ("vmap", "scatter"):
        row[f"{impl}_max_speedup_vs_numpy"] = round(
            row["numpy_lab_loop_ms"] / row[f"{impl}_max_ms"], 2)
        p = np.asarray(resampling.sampling_probabilities(z, args.bins, 1e-3, "max",
                                                         histogram_impl=impl))
        row[f"{impl}_max_rel_diff_vs_numpy"] = float(np.max(np.abs(p - ref)) / np.max(ref))
    print(json.dumps(row), flush=True)
    rows.append(row)
  return rows


if __name__ == "__main__":
  main()
