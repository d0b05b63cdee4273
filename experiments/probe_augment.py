"""Probe: does augmentation make the UTKFace-trained CNN detect the PPB faces better?

    python experiments/probe_augment.py probe [--seeds 0 1] [--epochs 2]
        [--conditions none reflect background] [--out FILE.json]
    python experiments/probe_augment.py bench [--batch_sizes 32 256]

The data come from ``$JAXFACE_SHARED_DATA`` (default: ``../shared/data`` beside the repository).
``probe`` trains ``configs/cnn.py`` on the UTKFace bias set (``--manifest``) once per condition
and seed with a minimal loop built from ``jaxface.train``'s public pieces
(``create_train_state``, ``make_optimizer``, ``train_step``, ``recalibrate_batch_norm``); the
condition says whether each batch goes through ``jaxface.augment.augment_for_step`` first
(``none``: no augmentation; ``reflect`` / ``background``: the default augmentation with that
fill) before the step. It then evaluates the UTKFace test set and the PPB ``tight/`` and
``loose/`` crops (faces; the non-faces are the UTKFace test non-faces) at p > 0.5 (E[A],
worst group, Var[A], non-face accuracy) and at the threshold giving 1% false positives on the
non-faces (``jaxface.evaluation.operating_point``), plus the detection rate by Fitzpatrick
type, and prints one table row per condition and set (mean and standard deviation over
seeds). ``table FILE.json`` prints the table of a saved ``--out`` file again.

``bench`` times ``augment_for_step`` (``augment_batch`` with its keys and, for the
background fill, ``background_from_batch``; both fills) at each batch size against the
encoder's train-mode forward pass (``jaxface.models.encode(train=True)``) and a whole CNN train
step on the same batch, in the same run: best wall time and best process CPU time of
``--repeats`` calls, and the CPU-time ratios (steadier than wall time on a shared machine).
"""

from __future__ import annotations

import argparse
import functools
import json
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from jaxface import augment, evaluation, models, train  # noqa: E402
from jaxface import data as data_lib  # noqa: E402
from jaxface.data import GROUPS, test_sets  # noqa: E402
from shared_paths import shared_data_root  # noqa: E402

DATA = shared_data_root()


def _config(seed: int, epochs: int, manifest: str, steps_per_epoch: int = -1):
  sys.path.insert(0, str(REPO / "configs"))
  import cnn  # configs/cnn.py
  config = cnn.get_config()
  config.seed = seed
  config.num_epochs = epochs
  config.steps_per_epoch = steps_per_epoch
  config.data.source = "manifest"
  config.data.path = manifest
  return config


def _augment_config(condition: str):
  config = augment.default_augment_config()
  config.enabled = condition != "none"
  if config.enabled:
    config.fill = condition
  return config


def make_step(config, optimizer, aug_config):
  """A jitted step: augment the batch (if enabled), then ``train.train_step``."""
  step_fn = functools.partial(train.train_step, optimizer=optimizer,
                              kl_weight=config.loss.kl_weight, recon=config.loss.recon,
                              vae_weight=config.loss.vae_weight,
                              dtype=train.compute_dtype(config))

  def step(state, images, labels, key):
    # The trainer's key derivation: fold_in(fold_in(key, step), AUG_STREAM), apart from the
    # step's own fold_in(key, step).
    images = augment.augment_for_step(key, state.step, images, labels, aug_config)
    return step_fn(state, images, labels, key)

  return jax.jit(step, donate_argnums=(0,))


def train_one(config, datasets, condition: str) -> train.TrainState:
  """Trains the CNN with the trainer's batches, keys and batch-norm recalibration."""
  mesh = train.make_mesh(jax.devices()[:1])
  optimizer = train.make_optimizer(config)
  init_key, step_key = jax.random.split(jax.random.key(config.seed))
  state = train.create_train_state(init_key, config, optimizer)
  batcher = data_lib.Batcher(datasets["train"], config.batch_size, seed=config.seed,
                             steps_per_epoch=(None if config.steps_per_epoch == -1
                                              else config.steps_per_epoch))
  step = make_step(config, optimizer, _augment_config(condition))
  for epoch in range(config.num_epochs):
    for images, labels in batcher.epoch_batches(epoch):
      state, _ = step(state, images, labels, step_key)
    if config.bn_recalibration_batches:
      state = train.recalibrate_batch_norm(state, datasets["train"], mesh, config, epoch)
  jax.block_until_ready(state)
  return state


def evaluate_sets(variables, sets: dict, non_face_prob: np.ndarray, ref_faces: dict) -> dict:
  """p > 0.5 and 1%-FPR metrics of every set of faces against the shared non-faces."""
  out = {}
  for name, faces in sets.items():
    prob = evaluation.predict(variables, faces.images).face_prob
    labels = np.concatenate([np.ones(len(prob)), np.zeros(len(non_face_prob))])
    groups = np.concatenate([faces.groups, np.full(len(non_face_prob), "")])
    at_half = evaluation.group_metrics(np.concatenate([prob, non_face_prob]), labels, groups,
                                       group_order=GROUPS)
    at_fpr = evaluation.operating_point(prob, faces.groups, non_face_prob, 0.01, GROUPS)
    row = {"E_A": at_half["E_A"], "worst": at_half["worst_rate"],
           "worst_group": at_half["worst_group"], "Var_A": at_half["Var_A"],
           "non_face_acc": 100 * at_half["non_face_accuracy"],
           "E_A_1fpr": at_fpr["E_A"], "worst_1fpr": at_fpr["worst_rate"],
           "threshold_1fpr": at_fpr["threshold"], "auc": at_fpr["auc"],
           "groups": {g: 100 * v["detection_rate"] for g, v in at_half["groups"].items()
                      if v["detection_rate"] is not None}}
    if name in ref_faces:
      fitz = ref_faces[name]
      row["fitzpatrick"] = {str(t): 100 * float(np.mean(prob[fitz == t] > 0.5))
                            for t in range(1, 7) if np.any(fitz == t)}
    out[name] = row
  return out


def probe(args) -> None:
  t0 = time.perf_counter()
  manifest = str(args.manifest)
  datasets = data_lib.load_datasets(_config(0, 1, manifest).data)
  test = datasets["test"]
  non_faces = test.subset(test.non_face_indices())
  sets = {"utk_test": test.subset(test.face_indices())}
  fitz = {}
  for framing in ("tight", "loose"):
    ppb = test_sets.load_test_set(f"ppb_{framing}", args.ppb / framing)
    ppb = test_sets.attach_attributes(ppb, args.ppb / "faces.csv", ["fitzpatrick"])
    sets[f"ppb_{framing}"] = ppb
    fitz[f"ppb_{framing}"] = ppb.attributes["fitzpatrick"]
  print(f"data loaded in {time.perf_counter() - t0:.0f} s: train {datasets['train']}, "
        f"non-faces {len(non_faces)}", flush=True)
  results = []
  for condition in args.conditions:
    for seed in args.seeds:
      t = time.perf_counter()
      config = _config(seed, args.epochs, manifest, args.steps_per_epoch)
      state = train_one(config, datasets, condition)
      variables = state.variables
      non_face_prob = evaluation.predict(variables, non_faces.images).face_prob
      metrics = evaluate_sets(variables, sets, non_face_prob, fitz)
      results.append({"condition": condition, "seed": seed, "epochs": args.epochs,
                      "train_s": time.perf_counter() - t, "sets": metrics})
      print(json.dumps({k: results[-1][k] for k in ("condition", "seed", "train_s")})
            + " " + json.dumps({n: {k: round(v, 2) for k, v in m.items()
                                    if isinstance(v, float)} for n, m in metrics.items()}),
            flush=True)
  if args.out:
    pathlib.Path(args.out).write_text(json.dumps(results, indent=1))
  print_table(results)
  print(f"total {time.perf_counter() - t0:.0f} s", flush=True)


def _ms(values) -> str:
  """Mean ± sample standard deviation."""
  values = np.asarray(values, np.float64)
  std = values.std(ddof=1) if values.size > 1 else 0.0
  return f"{values.mean():6.1f} ± {std:4.1f}"


def print_table(results: list[dict]) -> None:
  """One row per condition and set: mean ± sample std over seeds."""
  cols = ("E_A", "worst", "Var_A", "non_face_acc", "E_A_1fpr", "worst_1fpr")
  head = f"{'condition':<11}{'set':<11}" + "".join(f"{c:>16}" for c in cols) + f"{'auc':>8}"
  print(head)
  conditions = list(dict.fromkeys(r["condition"] for r in results))
  names = list(results[0]["sets"])
  for condition in conditions:
    rows = [r for r in results if r["condition"] == condition]
    for name in names:
      cells = "".join(f"{_ms([r['sets'][name][c] for r in rows]):>16}" for c in cols)
      auc = np.mean([r["sets"][name]["auc"] for r in rows])
      print(f"{condition:<11}{name:<11}{cells}{auc:>8.4f}")
  print("detection % by Fitzpatrick type (p > 0.5), mean over seeds:")
  for condition in conditions:
    rows = [r for r in results if r["condition"] == condition]
    for name in names:
      if "fitzpatrick" not in rows[0]["sets"][name]:
        continue
      types = rows[0]["sets"][name]["fitzpatrick"]
      cells = "  ".join(f"{t}: {np.mean([r['sets'][name]['fitzpatrick'][t] for r in rows]):5.1f}"
                        for t in types)
      print(f"{condition:<11}{name:<11}{cells}")


def _best(fn, repeats: int) -> tuple[float, float]:
  """Best wall and best process CPU time (ms) of ``repeats`` calls (the CPU is shared)."""
  jax.block_until_ready(fn())
  wall, cpu = [], []
  for _ in range(repeats):
    start, start_cpu = time.perf_counter(), time.process_time()
    jax.block_until_ready(fn())
    wall.append(time.perf_counter() - start)
    cpu.append(time.process_time() - start_cpu)
  return 1e3 * min(wall), 1e3 * min(cpu)


def bench(args) -> None:
  config = _config(0, 1, "")
  optimizer = train.make_optimizer(config)
  state = train.create_train_state(jax.random.key(0), config, optimizer)
  step_fn = jax.jit(functools.partial(train.train_step, optimizer=optimizer,
                                      kl_weight=config.loss.kl_weight, recon=config.loss.recon,
                                      vae_weight=config.loss.vae_weight,
                                      dtype=jnp.float32))
  encode = jax.jit(lambda v, x: models.encode(v, x, train=True).y_logit)
  for batch in args.batch_sizes:
    images = jax.random.uniform(jax.random.key(1), (batch, 64, 64, 3))
    labels = jnp.asarray(data_lib.batch_labels(batch))
    row = {"backend": jax.default_backend(), "batch": batch}
    timed = {}
    for fill in augment.FILLS:
      aug_config = augment.default_augment_config()
      aug_config.fill = fill
      fn = jax.jit(lambda k, x, y, c=aug_config: augment.augment_for_step(k, 0, x, y, c))
      timed[f"augment_{fill}"] = _best(lambda: fn(jax.random.key(2), images, labels),
                                       args.repeats)
    timed["encode_train"] = _best(lambda: encode(state.variables, images), args.repeats)
    timed["train_step"] = _best(
        lambda: step_fn(state, images, labels, jax.random.key(3))[1]["loss"], args.repeats)
    for name, (wall, cpu) in timed.items():
      row[f"{name}_ms"], row[f"{name}_cpu_ms"] = wall, cpu
    for fill in augment.FILLS:
      for ref in ("encode_train", "train_step"):
        row[f"augment_{fill}_over_{ref}_cpu"] = (timed[f"augment_{fill}"][1] / timed[ref][1])
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}),
          flush=True)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("mode", choices=("probe", "bench", "table"))
  parser.add_argument("results", nargs="?", default="", help="table: the --out JSON file")
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
  parser.add_argument("--epochs", type=int, default=2)
  parser.add_argument("--conditions", nargs="+", default=["none", "reflect", "background"],
                      choices=("none",) + augment.FILLS)
  parser.add_argument("--manifest", type=pathlib.Path,
                      default=DATA / "utkface-bias" / "manifest.csv")
  parser.add_argument("--ppb", type=pathlib.Path, default=DATA / "ppb-faces")
  parser.add_argument("--steps_per_epoch", type=int, default=-1,
                      help="-1: every training face about once per epoch")
  parser.add_argument("--out", default="")
  parser.add_argument("--batch_sizes", type=int, nargs="+", default=[32, 256])
  parser.add_argument("--repeats", type=int, default=20)
  args = parser.parse_args()
  if args.mode == "table":
    print_table(json.loads(pathlib.Path(args.results).read_text()))
  else:
    probe(args) if args.mode == "probe" else bench(args)


if __name__ == "__main__":
  main()
