"""One check of jaxface on an accelerator, written to one JSON file with a short table.

    bash experiments/device_check.sh [--tiny] [--out DIR]    # the wrapper: docs/device_check.md
    python experiments/device_check.py [--tiny] [--out DIR] [--peer_script PATH]

Rows (each ``measured``, or ``skipped`` with its reason; docs/device_check.md has the details):
``smoke_train`` (``configs/dbvae.py:smoke`` through :func:`jaxface.train.train_and_evaluate` on
the default device), ``train_step`` (the DB-VAE step per batch size and ``config.dtype``:
``faces_only``, what training runs, and ``every_row``, the PyTorch reference's work, without
augmentation; median images/s of interleaved rounds after a warm-up), ``peer_torch``
(``peer_torch_dbvae.py`` on the same device, with our ratios to it), ``bandwidth`` (``x + 1``
over a large float32 array), ``resampling`` (:func:`jaxface.resampling.sampling_probabilities`
per ``histogram_impl`` against two passes over the codes at that bandwidth) and ``scan`` (the
whole-photo scan against plain inference on the same windows).

``--budget_s`` bounds the whole check: rows not started when it is spent are skipped. The JSON
is rewritten after every row, so a run stopped early leaves what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(HERE) not in sys.path:
  sys.path.insert(0, str(HERE))

import bench_detect  # noqa: E402  (defines absl flags, never parsed here)
from benchmark import interleaved_rates, reference_unavailable, shard  # noqa: E402
from shared_paths import shared_bench_dir, torch_python  # noqa: E402
from jaxface import config as config_lib  # noqa: E402
from jaxface import data as data_lib  # noqa: E402
from jaxface import detect, models, resampling, sharding, train  # noqa: E402
from jaxface.train import equal_work  # noqa: E402

PEER_SCRIPT = "peer_torch_dbvae.py"
CARRIED_PEER = REPO / ".device" / PEER_SCRIPT  # where the device runner carries the script
SECTIONS = ("smoke", "steps", "resampling", "scan")
VERSIONED = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "ml-collections", "numpy",
             "jax-cuda13-plugin", "jax-cuda12-plugin", "torch")
# Sizes of a full check (about 6 minutes on one H100) and of --tiny (seconds on a CPU).
SIZES = {
    "full": dict(batch_sizes=[256, 1024, 4096], steps=10, rounds=5, peer_steps=30,
                 bandwidth_mib=1024, resample_n=1_000_000, scan_batch_sizes=[256, 1024],
                 scan_photos=8, scan_photo_shape=[480, 320], budget_s=420.0),
    "tiny": dict(batch_sizes=[8], steps=1, rounds=2, peer_steps=2, bandwidth_mib=8,
                 resample_n=4096, scan_batch_sizes=[32], scan_photos=1,
                 scan_photo_shape=[96, 64], budget_s=0.0),
}
# --tiny: a small model on 32x32 images for the timed steps and the smoke run, and a smoke run
# of a few steps on small sets.
TINY_MODEL = {"model.n_filters": 4, "model.latent_dim": 8, "data.image_size": 32}
TINY_SMOKE = {**TINY_MODEL, "num_epochs": 1, "steps_per_epoch": 3, "batch_size": 16,
              "eval_batch_size": 64, "bn_recalibration_batches": 1, "data.n_train_faces": 64,
              "data.n_train_non_faces": 64, "data.n_test_per_group": 8,
              "data.n_test_non_faces": 32}
HEADLINE = ("E_A", "worst_rate", "images_per_s", "torch_images_per_s", "gb_per_s", "seconds",
            "scan_windows_per_s", "plain_windows_per_s")


def measured(name: str, label: str, **fields: Any) -> dict[str, Any]:
  return {"name": name, "label": label, "status": "measured", **fields}


def skipped(name: str, label: str, reason: str, status: str = "skipped") -> dict[str, Any]:
  return {"name": name, "label": label, "status": status, "reason": reason}


class Report:
  """The environment and the rows so far, rewritten to one JSON file after every row."""

  def __init__(self, path: Path, environment: dict[str, Any], settings: dict[str, Any]):
    self.path, self.environment, self.settings = path, environment, settings
    self.rows: list[dict[str, Any]] = []
    self.start = time.monotonic()
    self.write()

  def add(self, row: dict[str, Any]) -> None:
    row["finished_at_s"] = round(time.monotonic() - self.start, 1)
    self.rows.append(row)
    self.write()
    print(table_line(row), flush=True)

  def attempt(self, name: str, label: str, measure: Callable[[], Any]) -> None:
    """Runs ``measure`` (which adds its own rows) while the time budget lasts.

    A spent budget adds a ``skipped`` row instead; an error, a ``failed`` row with its message
    (the traceback goes to stderr), and the check goes on.
    """
    budget = self.settings["budget_s"]
    if budget and time.monotonic() - self.start > budget:
      self.add(skipped(name, label, f"time budget of {budget:.0f} s spent (--budget_s)"))
      return
    try:
      measure()
    except Exception as error:  # noqa: BLE001 -- recorded; the other rows still run
      traceback.print_exc()
      self.add(skipped(name, label, f"{type(error).__name__}: {str(error)[:300]}", "failed"))

  def write(self) -> None:
    record = {"environment": self.environment, "settings": self.settings, "rows": self.rows,
              "elapsed_s": round(time.monotonic() - self.start, 1)}
    self.path.write_text(json.dumps(record, indent=2) + "\n")


def table_line(row: dict[str, Any]) -> str:
  """One line of the printed table: name, label, status, then the headline figures."""
  if row["status"] != "measured":
    figures = row["reason"]
  else:
    keys = [k for k in row if k in HEADLINE or k.startswith("ratio")]
    figures = "  ".join(f"{k} {row[k]:.4g}" if isinstance(row[k], float) else f"{k} {row[k]}"
                        for k in keys)
  return f"{row['name']:<12} {row['label']:<28} {row['status']:<9} {figures}"


def environment() -> dict[str, Any]:
  """Versions, backend, the first device's kind and memory (bytes; None where not reported)."""
  device = jax.devices()[0]
  stats = device.memory_stats() or {}
  versions = {}
  for name in VERSIONED:
    try:
      versions[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      versions[name] = None
  return {"versions": versions, "python": platform.python_version(),
          "backend": jax.default_backend(), "device_kind": device.device_kind,
          "device_count": jax.device_count(), "device_memory_bytes": stats.get("bytes_limit"),
          "model_impl_auto": models.resolve_impl("auto"),
          "histogram_impl_auto": resampling.resolve_histogram_impl("auto")}


def device_slug(device_kind: str) -> str:
  """A file-name part for a device kind: 'NVIDIA H100 80GB HBM3' -> 'nvidia_h100_80gb_hbm3'."""
  return re.sub(r"[^a-z0-9]+", "_", device_kind.lower()).strip("_") or "device"


def median_seconds(fn: Callable[[], Any], rounds: int, calls: int = 1) -> float:
  """Median wall time of one call of ``fn`` over ``rounds`` rounds of ``calls`` calls, each
  round blocked on its last result (after one call to compile and warm up)."""
  jax.block_until_ready(fn())
  times = []
  for _ in range(rounds):
    start = time.perf_counter()
    for _ in range(calls):
      result = fn()
    jax.block_until_ready(result)
    times.append((time.perf_counter() - start) / calls)
  return float(np.median(times))


def load_config(spec: str, overrides: dict[str, Any]):
  """``get_config(option)`` of a config file given as ``configs/x.py[:option]``, with the
  dotted fields of ``overrides`` set."""
  config = config_lib.load_config_file(str(REPO / spec))
  config.update_from_flattened_dict(overrides)
  return config


def check_smoke(args: argparse.Namespace, report: Report, label: str) -> None:
  overrides = TINY_SMOKE if args.tiny else {}
  config = load_config("configs/dbvae.py:smoke", overrides)
  config.progress_bar = False
  with tempfile.TemporaryDirectory(prefix="jaxface-device-check-") as workdir:
    metrics = train.train_and_evaluate(config, workdir).metrics
  test = metrics["eval"]["test"]
  report.add(measured("smoke_train", label, impl=models.resolve_impl(config.model.impl),
                      overrides=overrides, steps=metrics["steps"], E_A=test["E_A"],
                      worst_group=test["worst_group"], worst_rate=test["worst_rate"],
                      non_face_accuracy=test["non_face_accuracy"],
                      wall_time_s=round(metrics["wall_time_s"], 2),
                      images_per_s=round(metrics["images_per_s"], 1)))


def compiled_step(config, mesh, every_row: bool,
                  seed: int = 0) -> tuple[Callable[[int], float], float]:
  """A compiled DB-VAE step on a resident random batch.

  Returns:
    ``run(steps) -> seconds`` (blocked on the last state; warmed up already) and the compile
    time in seconds.
  """
  optimizer = train.make_optimizer(config, total_steps=1000)
  state = sharding.replicate(mesh, train.create_train_state(jax.random.key(seed), config,
                                                            optimizer))
  step_fn = equal_work.train_step_decoding_every_row if every_row else train.train_step
  step = train.make_train_step(config, optimizer, mesh, step_fn=step_fn)
  size = config.data.image_size
  images = np.random.default_rng(seed).random((config.batch_size, size, size, 3), np.float32)
  half = config.batch_size // 2
  inputs = (shard(mesh, data_lib.Batch(faces=images[:half], non_faces=images[half:])),
            sharding.replicate(mesh, jax.random.key(seed + 1)))
  start = time.perf_counter()
  executable = step.lower(state, *inputs).compile()
  compile_s = time.perf_counter() - start
  held = [state]

  def run(steps: int) -> float:
    begin, state = time.perf_counter(), held[0]
    for _ in range(steps):
      state, metrics = executable(state, *inputs)
    held[0] = jax.block_until_ready((state, metrics))[0]
    return time.perf_counter() - begin

  run(2)
  return run, compile_s


def time_steps(args: argparse.Namespace, report: Report, mesh, batch: int, dtype: str,
               rates: dict[tuple, float]) -> None:
  """The two ``train_step`` rows of a batch size and dtype, timed in interleaved rounds."""
  runners, compile_s, augmented = {}, {}, {}
  for variant in ("faces_only", "every_row"):
    config = load_config("configs/dbvae.py", TINY_MODEL if args.tiny else {})
    config.batch_size, config.dtype = batch, dtype
    config.augment.enabled = augmented[variant] = (config.augment.enabled
                                                   and variant == "faces_only")
    runners[variant], compile_s[variant] = compiled_step(config, mesh, variant == "every_row")
  model = (f"{config.model.n_filters} filters, latent {config.model.latent_dim}, "
           f"{config.data.image_size}x{config.data.image_size}")
  timed = interleaved_rates({k: (lambda r=r: r(args.steps)) for k, r in runners.items()},
                            dict.fromkeys(runners, args.steps * batch), args.rounds)
  for variant, rate in timed.items():
    rates[(variant, dtype, batch)] = rate["median_images_per_s"]
    report.add(measured("train_step", f"batch {batch} {dtype} {variant}", batch=batch,
                        dtype=dtype, variant=variant, augment=augmented[variant], model=model,
                        impl=models.resolve_impl(config.model.impl),
                        images_per_s=rate["median_images_per_s"],
                        best_images_per_s=rate["images_per_s"],
                        ms_per_step=round(1e3 * batch / rate["median_images_per_s"], 3),
                        compile_s=round(compile_s[variant], 2), steps=args.steps,
                        rounds=args.rounds))


def run_peer(args: argparse.Namespace, report: Report, batch: int, rates: dict[tuple, float],
             reason: str) -> None:
  """The PyTorch reference at one batch size, with our steps' ratios to it; a skipped row
  with ``reason`` instead where that is not empty."""
  label = f"batch {batch}"
  if not reason and jax.default_backend() not in ("cpu", "gpu"):
    reason = f"no PyTorch device for the {jax.default_backend()} backend"
  if reason:
    report.add(skipped("peer_torch", label, reason))
    return
  device = "cuda" if jax.default_backend() == "gpu" else "cpu"
  cmd = [args.torch_python, args.peer_script, "--batch", str(batch), "--steps",
         str(args.peer_steps), "--n", "1000", "--device", device]
  result = subprocess.run(cmd + ["--compile"] * args.peer_compile, capture_output=True,
                          text=True, check=False, timeout=300)
  if result.returncode:
    raise RuntimeError("the reference failed: "
                       + (result.stderr.strip().splitlines() or ["no output"])[-1])
  peer = json.loads(result.stdout.strip().splitlines()[-1])
  torch_rate = round(peer["train_images_per_s"], 1)
  ratios = {f"ratio_{variant}_{dtype}_vs_torch": round(rate / torch_rate, 3)
            for (variant, dtype, b), rate in rates.items() if b == batch}
  report.add(measured("peer_torch", label, batch=batch, device=device, torch=peer["torch"],
                      compiled=peer["compiled"], steps=args.peer_steps,
                      torch_images_per_s=torch_rate, **ratios))


def check_steps(args: argparse.Namespace, report: Report) -> None:
  mesh, rates = sharding.make_mesh(), {}
  unavailable = "" if args.no_peer else reference_unavailable(args.torch_python, args.peer_script)
  for batch in args.batch_sizes:
    for dtype in args.dtypes:
      report.attempt("train_step", f"batch {batch} {dtype}",
                     lambda: time_steps(args, report, mesh, batch, dtype, rates))
    if not args.no_peer:
      report.attempt("peer_torch", f"batch {batch}",
                     lambda: run_peer(args, report, batch, rates, unavailable))


def check_resampling(args: argparse.Namespace, report: Report) -> None:
  """The ``bandwidth`` row, then a ``resampling`` row per histogram path against its bound."""
  bandwidth: dict[str, float] = {}

  def copy_pass():
    x = jnp.ones((args.bandwidth_mib * 2**18,), jnp.float32)  # MiB of float32
    add_one = jax.jit(lambda a: a + 1.0)
    seconds = median_seconds(lambda: add_one(x), args.rounds, calls=5)
    bandwidth["bytes_per_s"] = 2 * x.nbytes / seconds  # read and written
    report.add(measured("bandwidth", f"{args.bandwidth_mib} MiB x + 1", bytes=2 * x.nbytes,
                        seconds=seconds, gb_per_s=round(bandwidth["bytes_per_s"] / 1e9, 2)))

  def resample(z: jax.Array, impl: str, label: str):
    seconds = median_seconds(lambda: resampling.sampling_probabilities(
        z, 10, 1e-3, "max", histogram_impl=impl), args.rounds)
    row = measured("resampling", label, n=z.shape[0], dims=z.shape[1], histogram_impl=impl,
                   seconds=seconds)
    if bandwidth:  # two passes over the codes at the measured bandwidth
      row["bound_s"] = 2 * z.nbytes / bandwidth["bytes_per_s"]
      row["ratio_to_bound"] = round(seconds / row["bound_s"], 2)
    report.add(row)

  report.attempt("bandwidth", f"{args.bandwidth_mib} MiB x + 1", copy_pass)
  z = jax.random.normal(jax.random.key(0), (args.resample_n, args.resample_dims), jnp.float32)
  for impl in ("vmap", "scatter"):
    label = f"{args.resample_n} x {args.resample_dims} {impl}"
    report.attempt("resampling", label, lambda: resample(z, impl, label))


def check_scan(args: argparse.Namespace, report: Report) -> None:
  variables = jax.device_put(models.init_variables(jax.random.key(0), latent_dim=0))
  rng = np.random.default_rng(0)
  photos = [rng.integers(0, 256, (*args.scan_photo_shape, 3), dtype=np.uint8)
            for _ in range(args.scan_photos)]

  def scan_rates(batch: int, label: str):
    options = detect.ScanOptions(batch_size=batch)
    crops = bench_detect._precut(photos, options)  # noqa: SLF001
    n_windows = sum(len(detect.window_boxes(*p.shape[:2], options)) for p in photos)
    best = bench_detect._best_times({  # noqa: SLF001
        "plain": lambda: jax.block_until_ready(
            [detect.window_probabilities(variables, c) for c in crops]),
        "scan": lambda: detect.scan_images(variables, photos, options)}, args.rounds)
    report.add(measured("scan", label, batch=batch, n_windows=n_windows,
                        scan_windows_per_s=round(n_windows / best["scan"], 1),
                        plain_windows_per_s=round(n_windows / best["plain"], 1),
                        ratio_scan_vs_plain=round(best["plain"] / best["scan"], 3)))

  for batch in args.scan_batch_sizes:
    label = f"batch {batch} {len(photos)} photos"
    report.attempt("scan", label, lambda: scan_rates(batch, label))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--tiny", action="store_true", help="CPU sizes (the test suite's run)")
  parser.add_argument("--out", default=os.environ.get("OUT") or str(HERE / "results"),
                      help="folder of the JSON (default: $OUT, else experiments/results)")
  parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
  parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
  parser.add_argument("--batch_sizes", type=int, nargs="+")
  parser.add_argument("--steps", type=int, help="timed steps per round")
  parser.add_argument("--rounds", type=int, help="timed rounds (median)")
  parser.add_argument("--bandwidth_mib", type=int)
  parser.add_argument("--resample_n", type=int)
  parser.add_argument("--resample_dims", type=int, default=100)
  parser.add_argument("--scan_batch_sizes", type=int, nargs="+")
  parser.add_argument("--scan_photos", type=int)
  parser.add_argument("--scan_photo_shape", type=int, nargs=2, metavar=("HEIGHT", "WIDTH"))
  parser.add_argument("--peer_script", help="the PyTorch reference (default: in "
                      "$JAXFACE_SHARED_BENCH, else .device/, else ../shared/bench/)")
  parser.add_argument("--torch_python", default=torch_python(), help="a Python with torch "
                      "(default: $JAXFACE_TORCH_PYTHON, else this one)")
  parser.add_argument("--peer_steps", type=int)
  parser.add_argument("--peer_compile", action="store_true", help="torch.compile the reference")
  parser.add_argument("--no_peer", action="store_true", help="no PyTorch reference rows")
  parser.add_argument("--budget_s", type=float, help="rows not started by then are skipped "
                      "(0: no limit)")
  args = parser.parse_args(argv)
  for name, value in SIZES["tiny" if args.tiny else "full"].items():
    if getattr(args, name) is None:
      setattr(args, name, value)
  if args.peer_script is None:
    carried = CARRIED_PEER.is_file() and not os.environ.get("JAXFACE_SHARED_BENCH")
    args.peer_script = str(CARRIED_PEER if carried else shared_bench_dir() / PEER_SCRIPT)
  return args


def main(argv: Sequence[str] | None = None) -> Path:
  """Runs the check; returns the JSON file's path."""
  args = parse_args(argv)
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # room for the reference
  env = environment()
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  path = out / f"device_check_{device_slug(env['device_kind'])}.json"
  settings = {k: v for k, v in vars(args).items() if k != "out"}
  report = Report(path, env, settings)
  print(f"{env['backend']} x {env['device_count']} ({env['device_kind']}), jax "
        f"{env['versions']['jax']}, flax {env['versions']['flax']} -> {path}", flush=True)
  smoke_label = "configs/dbvae.py:smoke" + (" (tiny)" if args.tiny else "")
  checks = {"smoke": lambda: report.attempt("smoke_train", smoke_label,
                                            lambda: check_smoke(args, report, smoke_label)),
            "steps": lambda: check_steps(args, report),
            "resampling": lambda: check_resampling(args, report),
            "scan": lambda: check_scan(args, report)}
  for section in args.sections:
    report.attempt(f"{section} (section)", "", checks[section])
  report.write()
  return path


if __name__ == "__main__":
  main()
