"""CPU benchmark of jaxface: train steps, a DB-VAE epoch, resampling, batcher, devices, XLA options.

    python experiments/benchmark.py [--quick] [--sections train xla epoch ...] [--out FILE]
        [--torch_python PYTHON] [--peer_script PATH/peer_torch_dbvae.py]

Prints one JSON line per measurement (``"section"`` says which), each with the 1-minute load
average taken just before it, since absolute numbers on a shared machine drift:

* ``train``: train images/s of the standard CNN and the DB-VAE at batch 32 and 256
  (``jaxface.train.make_train_step`` on random data, compiled and warmed up first, timed with
  ``block_until_ready``); the variants of a batch size are timed in interleaved rounds and the
  best round is reported, with the median beside it.
* ``xla``: the DB-VAE step under XLA:CPU options (passed as per-compile debug options, the same
  fields ``XLA_FLAGS`` sets), bfloat16 compute, uint8 input batches converted in the step, each
  network implementation (``config.model.impl``; ``impl_flax``: stock Linen layers, what
  accelerators run; ``impl_cpu_fast``: ``jaxface.cpu_fast``; the default step is ``'auto'``),
  and the decoder run on every image of the batch (``decode_every_row``, what the PyTorch
  reference does; by default it runs on the batch's faces only, whose VAE loss is the only one
  that counts); each as a ratio to the default step timed in the same rounds. A variant whose
  implementation the train step ignores (the same program as the default's although
  ``impl`` resolves differently) is reported as an error row, not timed.
* ``augment``: the train step with on-device augmentation (``config.augment``, the default)
  against the same step without it, timed in the same interleaved rounds, with their ratio
  (``ratio_augment_vs_plain``; the ``train`` and ``xla`` sections time the default step, which
  augments).
* ``data_path``: the train loop fed by ``jaxface.data.Batcher`` (float32 batches, prefetched,
  as in ``train_and_evaluate``) against a batch already on the device.
* ``epoch``: one DB-VAE epoch on ``--epoch_images`` random images (half faces), including the
  epoch-start resampling pass (``jaxface.train.resampling_probabilities``).
* ``resampling``: ``jaxface.resampling.sampling_probabilities`` against the lab's NumPy loop
  versus N (``experiments/bench_resampling.py``'s timer).
* ``batcher``: ``jaxface.data.Batcher`` throughput (``experiments/bench_batcher.py``'s
  helpers).
* ``devices``: the DB-VAE (and CNN) step on N = 1, 2, 4 forced host devices, each in a
  subprocess with ``XLA_FLAGS=--xla_force_host_platform_device_count=N``.
* ``reference``: ``peer_torch_dbvae.py`` (PyTorch) at batch 32 and 256 in the same run, and the
  ratios ours / reference (of the default step and of the ``xla`` variants
  ``decode_every_row``, the same work as the reference, and ``impl_flax``). The script is
  ``--peer_script`` (default ``$JAXFACE_SHARED_BENCH/peer_torch_dbvae.py``, else
  ``../shared/bench/`` beside the repository), run by ``--torch_python`` (default
  ``$JAXFACE_TORCH_PYTHON``, else this Python); where that Python cannot import torch or the
  script is missing, one ``{"section": "reference", "skipped": REASON}`` line says so.
* ``memory``: peak resident memory of this process (``ru_maxrss`` and VmHWM); each
  ``devices`` worker reports its own.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
  sys.path.insert(0, str(HERE))

from bench_resampling import best_time, lab_sampling_probabilities_numpy  # noqa: E402
from shared_paths import shared_bench_dir, torch_python  # noqa: E402
from jaxface import config as config_lib  # noqa: E402
from jaxface import data as data_lib  # noqa: E402
from jaxface import resampling, sharding, train  # noqa: E402
from jaxface import models  # noqa: E402

SECTIONS = ("train", "xla", "augment", "data_path", "epoch", "resampling", "batcher", "devices",
            "reference", "memory")
REFERENCE_SCRIPT = "peer_torch_dbvae.py"  # in the shared bench folder

# name -> (per-compile XLA options, config.dtype, input kind, config.model.impl, decoded rows);
# input kind 'float32' feeds [0, 1] floats, 'uint8' feeds bytes that the step converts; impl is
# one of jaxface.models.IMPLS ('auto' is the default step); decoded rows 'faces' decodes the
# batch's faces only (the default), 'every_row' every image (as the PyTorch reference does; the
# non-faces' VAE loss is masked to zero either way).
XLA_VARIANTS: dict[str, tuple[dict[str, Any], str, str, str, str]] = {
    "default": ({}, "float32", "float32", "auto", "faces"),
    "fast_math": ({"xla_cpu_enable_fast_math": True}, "float32", "float32", "auto", "faces"),
    "no_fusion_emitters": ({"xla_cpu_use_fusion_emitters": False}, "float32", "float32", "auto",
                           "faces"),
    "xnn_graph_fusion_greedy": (
        {"xla_cpu_experimental_xnn_graph_fusion_mode": "XNN_GRAPH_FUSION_MODE_GREEDY"},
        "float32", "float32", "auto", "faces"),
    "onednn": ({"xla_cpu_use_onednn": True}, "float32", "float32", "auto", "faces"),
    # XLA:CPU hands convolutions to YNNPACK by default; '' keeps them on its Eigen path.
    "ynn_convolutions_off": ({"xla_cpu_experimental_ynn_fusion_type": ""}, "float32", "float32",
                             "auto", "faces"),
    "ynn_conv_eltwise_reduce": (
        {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION,"
                                                 "LIBRARY_FUSION_TYPE_ELTWISE,"
                                                 "LIBRARY_FUSION_TYPE_REDUCE"},
        "float32", "float32", "auto", "faces"),
    "single_thread_eigen": ({"xla_cpu_multi_thread_eigen": False}, "float32", "float32", "auto",
                            "faces"),
    "bfloat16": ({}, "bfloat16", "float32", "auto", "faces"),
    "uint8_batch": ({}, "float32", "uint8", "auto", "faces"),
    "impl_flax": ({}, "float32", "float32", "flax", "faces"),
    "impl_cpu_fast": ({}, "float32", "float32", "cpu_fast", "faces"),
    "decode_every_row": ({}, "float32", "float32", "auto", "every_row"),
}
QUICK_XLA_VARIANTS = ("default", "fast_math", "bfloat16", "impl_flax", "impl_cpu_fast",
                      "decode_every_row")


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def peak_rss_mib() -> float:
  """Peak resident memory of this process (VmHWM; ``ru_maxrss`` where /proc is missing).

  VmHWM starts afresh at ``exec``, whereas ``ru_maxrss`` of a subprocess also counts the
  parent image it was forked from.
  """
  try:
    for line in Path("/proc/self/status").read_text().splitlines():
      if line.startswith("VmHWM:"):
        return round(int(line.split()[1]) / 1024, 1)
  except OSError:
    pass
  return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def load_average() -> float:
  """The 1-minute load average."""
  return round(os.getloadavg()[0], 2)


def emit(row: dict[str, Any], out: list[dict[str, Any]]) -> None:
  """Prints a result as one JSON line and keeps it."""
  out.append(row)
  print(json.dumps(row), flush=True)


def model_config(kind: str, batch_size: int, dtype: str = "float32", impl: str = "auto",
                 augment: bool = True):
  """The default config of the CNN ('cnn') or the DB-VAE ('dbvae') at a batch size."""
  config = config_lib.get_base_config()
  config.batch_size = batch_size
  config.dtype = dtype
  config.model.impl = impl
  config.augment.enabled = augment
  if kind == "cnn":
    config.model.kind, config.model.latent_dim, config.resampling.signal = "cnn", 0, "none"
  return config


def shard(mesh, batch: data_lib.Batch) -> data_lib.Batch:
  """Both halves of a host batch placed on the mesh, split over its ``data`` axis."""
  return jax.tree.map(lambda half: sharding.shard_batch(mesh, half), batch)


class Step:
  """A compiled train step with its own state and a resident random batch."""

  def __init__(self, config, mesh, options: dict[str, Any] | None = None,
               input_kind: str = "float32", decode_every_row: bool = False, seed: int = 0):
    optimizer = train.make_optimizer(config)
    state = train.create_train_state(jax.random.key(seed), config, optimizer)
    self.state = sharding.replicate(mesh, state)
    step_fn = train.make_train_step(
        config, optimizer, mesh, step_fn=(train.train_step_decoding_every_row
                                          if decode_every_row else train.train_step))
    rng = np.random.default_rng(seed)
    shape = (config.batch_size, config.data.image_size, config.data.image_size, 3)
    if input_kind == "uint8":
      images = rng.integers(0, 256, shape, dtype=np.uint8)
      inner = step_fn
      to_unit = lambda x: x.astype(jnp.float32) * (1.0 / 255.0)
      step_fn = jax.jit(lambda s, b, k: inner(s, jax.tree.map(to_unit, b), k),
                        donate_argnums=(0,))
    else:
      images = rng.random(shape, dtype=np.float32)
    half = config.batch_size // 2
    batch = data_lib.Batch(faces=images[:half], non_faces=images[half:])
    self.args = (shard(mesh, batch), sharding.replicate(mesh, jax.random.key(seed + 1)))
    self.batch_size = config.batch_size
    self.impl = models.resolve_impl(config.model.impl)
    start = time.perf_counter()
    lowered = step_fn.lower(self.state, *self.args)
    self.program = lowered.as_text()
    self.compiled = lowered.compile(options or None)
    self.compile_s = time.perf_counter() - start
    self.run(2)  # warm-up, excluded from timings

  def run(self, steps: int) -> float:
    """Runs ``steps`` steps; returns the wall time (blocked on the result)."""
    start = time.perf_counter()
    state = self.state
    for _ in range(steps):
      state, metrics = self.compiled(state, *self.args)
    jax.block_until_ready((state, metrics))
    self.state = state
    return time.perf_counter() - start


def interleaved_rates(runners: dict[str, Callable[[], float]], images_per_call: dict[str, int],
                      rounds: int) -> dict[str, dict[str, float]]:
  """Times each runner once per round, in turn; best and median images/s of each."""
  rates: dict[str, list[float]] = {name: [] for name in runners}
  for _ in range(rounds):
    for name, run in runners.items():
      rates[name].append(images_per_call[name] / max(run(), 1e-9))
  return {name: {"images_per_s": round(max(r), 1), "median_images_per_s":
                 round(statistics.median(r), 1)} for name, r in rates.items()}


def steps_for(batch_size: int, quick: bool) -> int:
  """Steps per timed round: about 320-1280 images."""
  if quick:
    return 2 if batch_size >= 256 else 5
  return 5 if batch_size >= 256 else 20


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


def bench_train(mesh, batch_sizes: Sequence[int], kinds: Sequence[str], rounds: int,
                quick: bool, out: list) -> None:
  for batch_size in batch_sizes:
    steps = {kind: Step(model_config(kind, batch_size), mesh) for kind in kinds}
    n = steps_for(batch_size, quick)
    load = load_average()
    rates = interleaved_rates({k: (lambda s=s: s.run(n)) for k, s in steps.items()},
                              {k: n * batch_size for k in steps}, rounds)
    for kind, rate in rates.items():
      emit({"section": "train", "model": kind, "batch": batch_size, **rate,
            "ms_per_step": round(1000 * batch_size / rate["images_per_s"], 2),
            "compile_s": round(steps[kind].compile_s, 1), "devices": mesh.devices.size,
            "backend": jax.default_backend(), "load": load}, out)


def bench_xla(mesh, batch_sizes: Sequence[int], variants: Sequence[str], rounds: int,
              quick: bool, out: list) -> None:
  for batch_size in batch_sizes:
    steps = {}
    for name in variants:
      options, dtype, input_kind, impl, rows = XLA_VARIANTS[name]
      try:
        steps[name] = Step(model_config("dbvae", batch_size, dtype, impl), mesh, options,
                           input_kind, decode_every_row=rows == "every_row")
      except Exception as err:  # noqa: BLE001 -- an option this XLA build rejects
        emit({"section": "xla", "variant": name, "batch": batch_size,
              "error": f"{type(err).__name__}: {str(err)[:200]}"}, out)
    for name in list(steps):
      default = steps["default"]
      if steps[name].impl != default.impl and steps[name].program == default.program:
        del steps[name]
        emit({"section": "xla", "variant": name, "batch": batch_size,
              "error": "the train step ignores config.model.impl (same program as the "
                       "default's)"}, out)
    n = steps_for(batch_size, quick)
    load = load_average()
    rates = interleaved_rates({k: (lambda s=s: s.run(n)) for k, s in steps.items()},
                              {k: n * batch_size for k in steps}, rounds)
    base = rates["default"]
    for name, rate in rates.items():
      emit({"section": "xla", "model": "dbvae", "variant": name, "batch": batch_size, **rate,
            "ratio_vs_default": round(rate["images_per_s"] / base["images_per_s"], 3),
            "median_ratio_vs_default": round(rate["median_images_per_s"]
                                             / base["median_images_per_s"], 3),
            "options": XLA_VARIANTS[name][0], "impl": steps[name].impl,
            "compile_s": round(steps[name].compile_s, 1),
            "load": load}, out)


def bench_augment(mesh, batch_sizes: Sequence[int], kinds: Sequence[str], rounds: int,
                  quick: bool, out: list) -> None:
  """The step with and without augmentation, interleaved; the ratio of their images/s."""
  for batch_size in batch_sizes:
    for kind in kinds:
      steps = {name: Step(model_config(kind, batch_size, augment=name == "augment"), mesh)
               for name in ("plain", "augment")}
      n = steps_for(batch_size, quick)
      load = load_average()
      rates = interleaved_rates({k: (lambda s=s: s.run(n)) for k, s in steps.items()},
                                {k: n * batch_size for k in steps}, rounds)
      plain, augmented = rates["plain"], rates["augment"]
      emit({"section": "augment", "model": kind, "batch": batch_size,
            "plain_images_per_s": plain["images_per_s"],
            "augment_images_per_s": augmented["images_per_s"],
            "ratio_augment_vs_plain": round(augmented["images_per_s"] / plain["images_per_s"],
                                            3),
            "median_ratio_augment_vs_plain": round(augmented["median_images_per_s"]
                                                   / plain["median_images_per_s"], 3),
            "compile_s": {k: round(s.compile_s, 1) for k, s in steps.items()}, "load": load},
           out)


def random_face_data(n: int, image_size: int = 64, seed: int = 0) -> data_lib.FaceData:
  """``n`` random uint8 images, half faces (in groups LF/LM/DF/DM, 5% dark), half not."""
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (n, image_size, image_size, 3), dtype=np.uint8)
  labels = (np.arange(n) % 2 == 0).astype(np.int32)
  groups = rng.choice(["LF", "LM", "DF", "DM"], n, p=[0.475, 0.475, 0.025, 0.025])
  return data_lib.FaceData(images, labels, np.where(labels == 1, groups, ""))


def bench_data_path(mesh, batch_sizes: Sequence[int], kinds: Sequence[str], rounds: int,
                    quick: bool, out: list) -> None:
  dataset = random_face_data(4096 if quick else 20_000)
  for batch_size in batch_sizes:
    n = steps_for(batch_size, quick)
    for kind in kinds:
      step = Step(model_config(kind, batch_size), mesh)
      batcher = data_lib.Batcher(dataset, batch_size, seed=0, steps_per_epoch=n,
                                   num_devices=mesh.devices.size)
      epoch = iter(range(10**9))

      def fed(step=step, batcher=batcher):
        start = time.perf_counter()
        state = step.state
        for batch in batcher.epoch_batches(next(epoch)):
          state, metrics = step.compiled(state, shard(mesh, batch), step.args[-1])
        jax.block_until_ready((state, metrics))
        step.state = state
        return time.perf_counter() - start

      load = load_average()
      rates = interleaved_rates({"resident_batch": lambda s=step: s.run(n), "batcher": fed},
                                {"resident_batch": n * batch_size, "batcher": n * batch_size},
                                rounds)
      emit({"section": "data_path", "model": kind, "batch": batch_size,
            "resident_images_per_s": rates["resident_batch"]["images_per_s"],
            "batcher_images_per_s": rates["batcher"]["images_per_s"],
            "ratio_batcher_vs_resident": round(rates["batcher"]["images_per_s"]
                                               / rates["resident_batch"]["images_per_s"], 3),
            "load": load}, out)


def bench_epoch(mesh, n_images: int, batch_size: int, out: list) -> None:
  """One DB-VAE epoch as ``train_and_evaluate`` runs it: resampling pass, then the steps."""
  dataset = random_face_data(n_images)
  faces = dataset.subset(dataset.face_indices())
  config = model_config("dbvae", batch_size)
  step = Step(config, mesh)
  batcher = data_lib.Batcher(dataset, batch_size, seed=0, num_devices=mesh.devices.size)
  # Compile the encoding pass and the resampling outside the timing.
  train.resampling_probabilities(config, step.state.variables, faces.subset(np.arange(256)), mesh)
  jax.block_until_ready(resampling.sampling_probabilities(
      np.zeros((len(faces), config.model.latent_dim), np.float32), config.resampling.bins,
      config.resampling.alpha, config.resampling.combine))
  load = load_average()
  start = time.perf_counter()
  probs, info = train.resampling_probabilities(config, step.state.variables, faces, mesh)
  batcher.set_face_probabilities(probs)
  resample_s = time.perf_counter() - start
  state = step.state
  for batch in batcher.epoch_batches(0):
    state, metrics = step.compiled(state, shard(mesh, batch), step.args[-1])
  jax.block_until_ready((state, metrics))
  train_s = time.perf_counter() - start - resample_s
  emit({"section": "epoch", "model": "dbvae", "n_images": n_images, "n_faces": len(faces),
        "batch": batch_size, "steps": batcher.steps_per_epoch,
        "resampling_pass_s": round(resample_s, 2), "train_steps_s": round(train_s, 2),
        "epoch_s": round(resample_s + train_s, 2),
        "images_per_s": round(batcher.steps_per_epoch * batch_size / train_s, 1),
        "ess_fraction": round(info["ess_fraction"], 4), "load_before": load,
        "load_after": load_average()}, out)


def bench_resampling(sizes: Sequence[int], dims: int, bins: int, repeats: int,
                     out: list) -> None:
  rng = np.random.default_rng(0)
  for n in sizes:
    z_np = rng.standard_normal((n, dims), dtype=np.float32)
    z = jax.device_put(z_np)
    load = load_average()
    row: dict[str, Any] = {"section": "resampling", "n": n, "dims": dims, "bins": bins}
    for combine in ("max", "product"):
      fn = lambda c=combine: resampling.sampling_probabilities(z, bins, 1e-3, c)  # noqa: E731
      jax.block_until_ready(fn())  # compile
      row[f"jax_{combine}_s"] = round(best_time(fn, repeats), 5)
    row["numpy_lab_loop_s"] = round(best_time(
        lambda: lab_sampling_probabilities_numpy(z_np, bins, 1e-3),
        max(1, repeats // 2)), 5)
    row["speedup_max_vs_numpy"] = round(row["numpy_lab_loop_s"] / row["jax_max_s"], 2)
    row["speedup_product_vs_numpy"] = round(row["numpy_lab_loop_s"] / row["jax_product_s"], 2)
    p = np.asarray(resampling.sampling_probabilities(z, bins, 1e-3, "max"))
    ref = lab_sampling_probabilities_numpy(z_np, bins, 1e-3)
    row["max_rel_diff_vs_numpy"] = float(np.max(np.abs(p - ref)) / np.max(ref))
    row["load"] = load
    emit(row, out)


def bench_batcher(n_images: int, batch_sizes: Sequence[int], steps: int, repeats: int,
                  out: list) -> None:
  import bench_batcher as bb  # experiments/bench_batcher.py

  dataset = bb.synthetic(n_images, 64)
  for batch_size in batch_sizes:
    batcher = data_lib.Batcher(dataset, batch_size, seed=0, steps_per_epoch=steps)
    n = batch_size * steps
    load = load_average()

    def direct():
      for step in range(steps):
        batcher.batch(0, step)

    def prefetched():
      for _ in batcher.epoch_batches(0):
        pass

    row = {"section": "batcher", "batch": batch_size, "n_images": n_images,
           "batch_images_per_s": round(bb.best_rate(direct, n, repeats)),
           "prefetch_images_per_s": round(bb.best_rate(prefetched, n, repeats))}
    batcher.set_face_probabilities(np.random.default_rng(1).exponential(size=batcher.num_faces))
    row["weighted_batch_images_per_s"] = round(bb.best_rate(direct, n, repeats))
    row["load"] = load
    emit(row, out)


def device_worker(batch_sizes: Sequence[int], kinds: Sequence[str], rounds: int,
                  quick: bool) -> None:
  """Runs in a subprocess with forced host devices: the step sharded over all of them."""
  mesh = sharding.make_mesh()
  for batch_size in batch_sizes:
    for kind in kinds:
      step = Step(model_config(kind, batch_size), mesh)
      n = steps_for(batch_size, quick)
      load = load_average()
      rate = interleaved_rates({kind: lambda: step.run(n)}, {kind: n * batch_size}, rounds)[kind]
      print(json.dumps({"model": kind, "batch": batch_size, "devices": len(jax.devices()),
                        **rate, "load": load, "peak_rss_mib": peak_rss_mib()}), flush=True)


def bench_devices(counts: Sequence[int], batch_sizes: Sequence[int], kinds: Sequence[str],
                  rounds: int, quick: bool, out: list) -> None:
  base: dict[tuple[str, int], float] = {}
  for count in counts:
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                        f" --xla_force_host_platform_device_count={count}").strip()
    env["JAX_PLATFORMS"] = "cpu"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "devices", "--rounds",
           str(rounds), "--batch_sizes", *map(str, batch_sizes), "--kinds", *kinds]
    if quick:
      cmd.append("--quick")
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if result.returncode:
      emit({"section": "devices", "devices": count, "error": result.stderr[-500:]}, out)
      continue
    for line in result.stdout.splitlines():
      if not line.startswith("{"):
        continue
      row = json.loads(line)
      key = (row["model"], row["batch"])
      base.setdefault(key, row["images_per_s"])
      emit({"section": "devices", **row,
            "ratio_vs_first": round(row["images_per_s"] / base[key], 3)}, out)


def reference_unavailable(python: str, script: str) -> str:
  """Why the PyTorch reference cannot run ('' when it can): no script, or no torch in python."""
  if not Path(script).is_file():
    return f"no reference script {script} (set --peer_script or $JAXFACE_SHARED_BENCH)"
  try:
    result = subprocess.run([python, "-c", "import torch"], capture_output=True, text=True,
                            check=False)
  except OSError as error:
    return f"cannot run {python}: {error} (set --torch_python or $JAXFACE_TORCH_PYTHON)"
  if result.returncode:
    last = (result.stderr.strip().splitlines() or ["import failed"])[-1]
    return f"{python} cannot import torch: {last} (set --torch_python or $JAXFACE_TORCH_PYTHON)"
  return ""


def bench_reference(python: str, script: str, batch_steps: Sequence[tuple[int, int]], n: int,
                    repeats: int, out: list) -> None:
  """Runs the PyTorch reference ``script`` with ``python`` and puts ours / reference ratios
  beside it."""
  ours = {(r["model"], r["batch"]): r for r in out if r.get("section") == "train"}
  variants = {(r["variant"], r["batch"]): r for r in out if r.get("section") == "xla"}
  resampled = {r["n"]: r for r in out if r.get("section") == "resampling"}
  for batch_size, steps in batch_steps:
    runs = []
    for _ in range(repeats):
      load = load_average()
      result = subprocess.run([python, script, "--batch", str(batch_size),
                               "--steps", str(steps), "--n", str(n)],
                              capture_output=True, text=True, check=False)
      if result.returncode:
        emit({"section": "reference", "batch": batch_size, "error": result.stderr[-500:]}, out)
        return
      run = json.loads(result.stdout.strip().splitlines()[-1])
      run["load"] = load
      runs.append(run)
    best = max(runs, key=lambda r: r["train_images_per_s"])
    row = {"section": "reference", "batch": batch_size, "steps": steps,
           "torch": best["torch"], "threads": best["threads"],
           "torch_train_images_per_s": round(best["train_images_per_s"], 1),
           "torch_runs_images_per_s": [round(r["train_images_per_s"], 1) for r in runs],
           "torch_resample_s": round(min(r["resample_s"] for r in runs), 4),
           "resample_n": n, "load": [r["load"] for r in runs]}
    if ("dbvae", batch_size) in ours:
      mine = ours[("dbvae", batch_size)]["images_per_s"]
      row["ours_dbvae_images_per_s"] = mine
      row["ratio_ours_vs_torch"] = round(mine / row["torch_train_images_per_s"], 3)
    for variant in ("decode_every_row", "impl_flax"):
      if (variant, batch_size) in variants:
        mine = variants[(variant, batch_size)]["images_per_s"]
        row[f"ours_{variant}_images_per_s"] = mine
        row[f"ratio_{variant}_vs_torch"] = round(mine / row["torch_train_images_per_s"], 3)
    if n in resampled:
      row["ours_resample_max_s"] = resampled[n]["jax_max_s"]
      row["resample_speedup_vs_torch_script"] = round(row["torch_resample_s"]
                                                      / resampled[n]["jax_max_s"], 2)
    emit(row, out)


def bench_memory(out: list) -> None:
  """Peak memory of this process (the device workers report their own)."""
  emit({"section": "memory", "peak_rss_mib": peak_rss_mib(),
        "ru_maxrss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)},
       out)


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="small sizes, few rounds")
  parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
  parser.add_argument("--batch_sizes", type=int, nargs="+", default=[32, 256])
  parser.add_argument("--kinds", nargs="+", default=["cnn", "dbvae"], choices=["cnn", "dbvae"])
  parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
  parser.add_argument("--xla_variants", nargs="+", default=None, choices=list(XLA_VARIANTS))
  parser.add_argument("--epoch_images", type=int, default=20_000)
  parser.add_argument("--resampling_sizes", type=int, nargs="+",
                      default=[10_000, 100_000, 200_000])
  parser.add_argument("--device_counts", type=int, nargs="+", default=[1, 2, 4])
  parser.add_argument("--torch_python", "--reference_python", default=torch_python(),
                      help="python with torch for the reference script ('' skips it; default: "
                           "$JAXFACE_TORCH_PYTHON, else this python)")
  parser.add_argument("--peer_script", default=str(shared_bench_dir() / REFERENCE_SCRIPT),
                      help="the PyTorch reference (default: $JAXFACE_SHARED_BENCH/"
                           f"{REFERENCE_SCRIPT}, else ../shared/bench/ beside the repository)")
  parser.add_argument("--reference_repeats", type=int, default=2)
  parser.add_argument("--out", default="", help="also write the JSON lines here")
  parser.add_argument("--worker", choices=["devices"], default=None, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.quick:
    args.rounds = min(args.rounds, 2)
    args.epoch_images = min(args.epoch_images, 2_000)
    args.resampling_sizes = [n for n in args.resampling_sizes if n <= 10_000] or [10_000]
    args.device_counts = [c for c in args.device_counts if c <= 2]
    args.reference_repeats = 1
  if args.xla_variants is None:
    args.xla_variants = list(QUICK_XLA_VARIANTS if args.quick else XLA_VARIANTS)
  if "default" not in args.xla_variants:
    args.xla_variants = ["default", *args.xla_variants]
  return args


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
  args = parse_args(argv)
  if args.worker == "devices":
    device_worker(args.batch_sizes, args.kinds, args.rounds, args.quick)
    return []
  out: list[dict[str, Any]] = []
  emit({"section": "setup", "jax": jax.__version__, "backend": jax.default_backend(),
        "devices": jax.device_count(), "cpus": os.cpu_count(), "quick": args.quick,
        "xla_flags": os.environ.get("XLA_FLAGS", ""), "load": load_average()}, out)
  mesh = sharding.make_mesh()
  sections = set(args.sections)
  if "train" in sections:
    bench_train(mesh, args.batch_sizes, args.kinds, args.rounds, args.quick, out)
  if "xla" in sections:
    bench_xla(mesh, args.batch_sizes, args.xla_variants, args.rounds, args.quick, out)
  if "augment" in sections:
    bench_augment(mesh, args.batch_sizes, args.kinds, args.rounds, args.quick, out)
  if "data_path" in sections:
    bench_data_path(mesh, args.batch_sizes, args.kinds, args.rounds, args.quick, out)
  if "epoch" in sections:
    bench_epoch(mesh, args.epoch_images, 32, out)
  if "resampling" in sections:
    bench_resampling(args.resampling_sizes, 100, 10, 2 if args.quick else 5, out)
  if "batcher" in sections:
    bench_batcher(4_096 if args.quick else 20_000, args.batch_sizes, 20 if args.quick else 200,
                  2 if args.quick else 3, out)
  if "devices" in sections:
    bench_devices(args.device_counts, args.batch_sizes, args.kinds, args.rounds, args.quick,
                  out)
  if "reference" in sections and args.torch_python:
    skipped = reference_unavailable(args.torch_python, args.peer_script)
    batch_steps = [(b, 60 if b < 256 else 20) for b in args.batch_sizes]
    if args.quick:
      batch_steps = [(b, max(2, s // 10)) for b, s in batch_steps]
    if skipped:
      emit({"section": "reference", "skipped": skipped}, out)
    else:
      bench_reference(args.torch_python, args.peer_script, batch_steps,
                      10_000 if args.quick else 100_000, args.reference_repeats, out)
  if "memory" in sections:
    bench_memory(out)
  if args.out:
    Path(args.out).write_text("".join(json.dumps(r) + "\n" for r in out))
  return out


if __name__ == "__main__":
  main()
