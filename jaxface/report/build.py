"""Assembles the report: findings of each run, their figures and the HTML page.

:func:`build_report` works from in-memory :class:`~jaxface.report.findings.RunArtifacts`;
:func:`write_report` reads run directories (without writing to them) and calls it.

The page tells the story in this order: the runs' configuration and training (curves, and for
a resampling run the sampling mass per group over epochs), the detection rate per group (and
across runs, side by side), then for each VAE what its latent space learned (faces it
reconstructs best and worst, latent traversals), how detection varies with latent density,
where skin tone lives in the latent (a dimension, a principal axis or a direction), which faces
the risk scores flag, how detection falls off with the scores, and the average face
per score percentile. Each extra test set of the main run's ``config.data.extra_test_sets`` gets
a section of its own after the comparison: every run side by side (rates per group and per
attribute such as the Fitzpatrick type, at 0.5 and at 1% false positives, ROC AUCs) and a ROC
figure per run with a curve per group. The sections of one run are
:mod:`jaxface.report.run_sections`, those of the extra test sets and whole-photo sets
:mod:`jaxface.report.set_sections`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from jaxface.eval import operating_point as op_lib
from jaxface.eval.formatting import frac_pct, pct
from jaxface.report import figures as fig_lib
from jaxface.report import findings as fnd
from jaxface.report import page as page_lib
from jaxface.report import run_sections, set_sections
from jaxface.report.findings import RunArtifacts


def _load_run(directory: Path):
  """``(config, variables)`` of a run directory: the one place the report loads a run."""
  from jaxface import checkpoints
  return checkpoints.load_run(directory)


def _slug(name: str, taken: set[str]) -> str:
  base = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "run"
  slug, i = base, 2
  while slug in taken:
    slug, i = f"{base}-{i}", i + 1
  taken.add(slug)
  return slug


def _summary_section(page: page_lib.Page, runs: Sequence[RunArtifacts], metrics: list[dict],
                     order: list[str]) -> None:
  """The main run's test set, how the figures read, and the summary table of every run."""
  main = runs[0]
  labels = np.asarray(main.labels)
  groups = np.asarray(main.groups)
  comp = ", ".join(f"{g} {int(np.sum((groups == g) & (labels == 1)))}" for g in order)
  page.para(f"Test set: {len(labels)} images, {int(np.sum(labels == 1))} faces ({comp}) and "
            f"{int(np.sum(labels == 0))} non-faces. {main.test_note}".strip())
  page.para("A face counts as detected when its face probability is above the threshold: at the "
            "operating point (e.g. @1%FP), the threshold at which that share of the run's "
            "validation non-faces is detected (of the test non-faces where the validation split "
            "has none), as a deployed detector is used; at p = 0.5 beside it. E_A is the mean "
            "of the group detection rates and Var_A their variance (population variance, in "
            "percent squared): a fair detector has a high E_A and a low Var_A. Var_A noise is "
            "the part of Var_A that the finite number of test faces alone contributes (binomial "
            "sampling of each group's rate): a Var_A near it is within the test set's noise.")
  page.heading("Summary")
  header, rows = page_lib.summary_table([r.name for r in runs], [r.kind for r in runs], metrics)
  page.raw(page_lib.table(header, rows))


def _comparison_section(page: page_lib.Page, runs: Sequence[RunArtifacts], metrics: list[dict],
                        order: list[str]) -> None:
  """The runs side by side: a table, the per-group rates and the training curves."""
  names = [r.name for r in runs]
  page.heading("Comparison of the runs")
  rows = fnd.side_by_side(metrics, order, [r.train_metrics for r in runs])
  header = ["", *(fnd.display_name(r.name, r.kind) for r in runs)]
  if len(runs) == 2:
    header.append(f"{names[0]} minus {names[1]}")
  cells = []
  for label, values, decimals in rows:
    row = [label, *(pct(v, decimals) for v in values)]
    if len(runs) == 2:
      both = None not in values
      row.append(pct(values[0] - values[1], decimals) if both else "–")
    cells.append(row)
  page.raw(page_lib.table(header, cells))
  path = fig_lib.plot_group_comparison(names, metrics, page.out_dir / "comparison.png")
  best = min(range(len(runs)), key=lambda i: (metrics[i]["Var_A"] is None,
                                              metrics[i]["Var_A"] or 0.0))
  page.figure(path, "Detection rate (left) and mean face probability (right) per group for "
              f"each run, on the same test faces. Lowest variance across groups: {names[best]} "
              f"(Var_A {pct(metrics[best]['Var_A'], 2)} %², worst group "
              f"{metrics[best]['worst_group']} at {pct(metrics[best]['worst_rate'])}%).",
              None)
  curves = {r.name: c for r in runs if (c := fnd.training_curves(r.log or [])) is not None}
  if len(curves) > 1:
    path = fig_lib.plot_training_curves(curves, page.out_dir / "comparison_training.png")
    page.figure(path, "Training loss (left) and accuracy (right; thin: training batches, "
                "dots: validation set at each epoch end) of " + " and ".join(curves) + ".",
                None)


def _rates_text(m: dict) -> str:
  """'LF 95.0%, DF 80.0%': each group's detection rate in ``m`` (None: '–')."""
  return ", ".join(f"{g} {frac_pct(v['detection_rate'])}%" for g, v in m["groups"].items())


def _operating_point_text(op: dict | None) -> str:
  """The run's figures at the operating point, for a caption ('' without one)."""
  if not op:
    return ""
  source = {"val": "validation", "test": "test"}.get(op["threshold_from"], op["threshold_from"])
  return (f"At the operating point {op_lib.fpr_tag(op)} (threshold {op['threshold']:.4f} on the "
          f"{source} non-faces, {frac_pct(op['fpr'], 2)}% of the test non-faces detected): "
          f"{_rates_text(op)}, E_A {pct(op['E_A'], 2)}%, Var_A {pct(op['Var_A'], 2)} %², worst "
          f"group {op['worst_group']}; ROC AUC "
          + ", ".join(f"{g} {pct(v['auc'], 3)}" for g, v in op["groups"].items()) + ". ")


def _run_section(page: page_lib.Page, run: RunArtifacts, res: dict, slug: str,
                 order: list[str], n_grid: int, note: bool) -> dict:
  """One run's section (training, detection per group, diagnostics); returns its findings."""
  m = res["metrics"]
  page.heading(fnd.display_name(run.name, run.kind))
  if run.test_note and note:
    page.para(run.test_note)
  training = run_sections.training_section(page, run, slug, order)
  path = fig_lib.plot_group_bars(m, page.out_dir / f"{slug}_groups.png",
                                 f"{run.name}: detection per group")
  page.figure(path, f"{run.name}: share of each group's test faces detected (left) and their "
              f"mean face probability (right). {_operating_point_text(m['operating_point'])}"
              f"At p = 0.5: {_rates_text(m)}, E_A {pct(m['E_A'], 2)}%, Var_A "
              f"{pct(m['Var_A'], 2)} %², worst group {m['worst_group']}, gap {pct(m['gap'])} "
              f"points; non-faces correctly rejected: {frac_pct(m['non_face_accuracy'])}%.",
              run.name)
  if res["vae"]:
    page.para("What the latent space learned, where the model is unsure, and whether its "
              "mistakes concentrate on faces that its latent space marks as rare:")
  else:
    page.para("The standard CNN has no latent space; only its aleatoric score (predictive "
              "entropy) can be shown.")
  diag = run_sections.diagnostics_section(page, run, res, slug, order, n_grid)
  return {"name": run.name, "kind": run.kind, "dtype": run.dtype, "recon": run.recon,
          "test": m, "density_reference": "train" if res["reference"] else "test",
          "train_metrics": run.train_metrics, **training, **diag}


def build_report(out_dir: str | os.PathLike, runs: Sequence[RunArtifacts], *,
                 title: str | None = None, n_grid: int = 16, test_sets: dict | None = None,
                 attribute_columns: Sequence[str] = ("fitzpatrick",)) -> Path:
  """Writes the figures, ``index.html`` and ``metrics.json`` of a report.

  The first run is the main one; every run gets a training and a per-group section and, for
  VAEs, the latent diagnostics; with several runs a side-by-side comparison comes first.

  Args:
    out_dir: output directory (created).
    runs: the runs to report.
    title: page title (default from the run names).
    n_grid: faces per lowest / highest grid.
    test_sets: extra named test sets ``{name: FaceData}``, each given a section with every
      run side by side (:func:`~jaxface.report.set_sections.test_set_rows`) and ROC curves per
      group; a set without non-faces is scored against each run's test non-faces.
    attribute_columns: attributes of the extra sets to also group their faces by.

  Returns:
    Path of ``index.html``.
  """
  if not runs:
    raise ValueError("build_report needs at least one run")
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  order = fnd.order_groups([g for r in runs
                            for g in np.asarray(r.groups)[np.asarray(r.labels) == 1]])
  results = [fnd.analyse_run(r, order) for r in runs]
  names = [r.name for r in runs]
  metrics = [res["metrics"] for res in results]
  title = title or "Bias report: " + " vs ".join(names)
  page = page_lib.Page(out)
  taken: set[str] = set()
  slugs = [_slug(n, taken) for n in names]

  _summary_section(page, runs, metrics, order)
  if len(runs) > 1:
    _comparison_section(page, runs, metrics, order)
  set_findings = {name: set_sections.test_set_section(page, name, data, runs, results, slugs,
                                                      attribute_columns)
                  for name, data in (test_sets or {}).items()}
  whole_names = list(dict.fromkeys(
      name for r in runs
      for name in ((r.train_metrics or {}).get("eval", {}).get("whole_images") or {})))
  whole_findings = {name: set_sections.whole_image_section(page, name, runs, slugs)
                    for name in whole_names}
  run_findings = [_run_section(page, run, res, slug, order, n_grid, note=run is not runs[0])
                  for run, res, slug in zip(runs, results, slugs)]

  (out / "index.html").write_text(page.render(title), encoding="utf-8")
  (out / "metrics.json").write_text(json.dumps(fnd.json_safe(
      {"title": title, "group_order": order, "runs": run_findings, "test_sets": set_findings,
       "whole_images": {name: {run: {k: v for k, v in f.items() if k != "portraits"}
                               for run, f in per_run.items()}
                        for name, per_run in whole_findings.items()},
       "figures": page.figures}),
      indent=2))
  return out / "index.html"


# ---------------------------------------------------------------------------------- run dirs


def _run_name(config, workdir: Path, taken: set[str]) -> str:
  """The config's name (the model kind's label for a default name like 'dbvae'), made unique."""
  name = str(config.get("name", "") or "") or workdir.name
  if name in fnd.KIND_LABELS:
    name = fnd.KIND_LABELS[name]
  if name in taken:
    name = f"{name} ({workdir.name})"
  taken.add(name)
  return name


def _reference_faces(train, max_faces: int,
                     seed: int = 0) -> tuple[np.ndarray | None, np.ndarray | None]:
  """Up to ``max_faces`` training faces (drawn by ``seed``) and their groups; Nones without."""
  if train is None:
    return None, None
  idx = np.flatnonzero(np.asarray(train.labels) == 1)
  if len(idx) > max_faces:
    idx = np.sort(np.random.default_rng(seed).choice(idx, max_faces, replace=False))
  return (train.images[idx], np.asarray(train.groups)[idx]) if len(idx) else (None, None)


def read_jsonl(path: Path) -> list[dict]:
  """The records of a JSON-lines file; [] when it does not exist.

  Raises:
    ValueError: a line is not valid JSON (naming the file and line).
  """
  if not path.exists():
    return []
  records = []
  for number, line in enumerate(path.read_text().splitlines(), 1):
    if line.strip():
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{number}: not a JSON line ({err.msg})") from None
  return records


def _run_artifacts(directory: Path, config, variables, test, note: str,
                   reference: tuple[np.ndarray | None, np.ndarray | None], taken: set[str],
                   val=None) -> RunArtifacts:
  """A run directory's model, its test set and its records (``metrics.json``, the log); the
  training faces ``reference`` ``(images, groups)``; the non-faces of its validation split
  ``val`` (None: none) set its operating point."""
  train_metrics, resampling_records = None, None
  metrics_path = directory / "metrics.json"
  if metrics_path.exists():
    final = json.loads(metrics_path.read_text())
    train_metrics = {k: v for k, v in final.items() if k not in ("epochs", "resampling")}
    resampling_records = final.get("resampling")
  log = read_jsonl(directory / "metrics.jsonl")
  if not resampling_records:
    resampling_records = fnd.resampling_from_log(log)
  config_dict = config.to_dict()
  return RunArtifacts(
      name=_run_name(config, directory, taken), kind=config.model.kind, variables=variables,
      images=test.images, labels=test.labels, groups=test.groups,
      reference_images=reference[0], reference_groups=reference[1],
      train_metrics=train_metrics,
      bins=int(config.resampling.bins), batch_size=int(config.get("eval_batch_size", 256)),
      dtype=str(config.get("dtype", "float32")),
      recon=str(config_dict.get("loss", {}).get("recon", "l1")), test_note=note, log=log,
      resampling=resampling_records, config=config_dict,
      val_non_faces=None if val is None else val.images[np.asarray(val.labels) == 0],
      operating_fpr=op_lib.operating_fpr(config))


def write_report(workdir: str | os.PathLike, compare: Sequence[str | os.PathLike] = (),
                 out_dir: str | os.PathLike | None = None, *, datasets: dict | None = None,
                 max_reference_faces: int = 2000) -> Path:
  """Writes ``WORKDIR/report/`` (figures, ``index.html``, ``metrics.json``) for a run.

  The run directories are only read; the report is written to ``out_dir`` alone. Every run is
  evaluated on the main run's test set (a compared run with a different image size on its
  own), in its own ``config.dtype``, with its ``config.loss.recon`` as the epistemic score. The
  bias score's latent density is estimated on up to ``max_reference_faces`` training faces of
  each run's own data.

  Args:
    workdir: run directory (``config.json``, checkpoints, ``metrics.json``, ``metrics.jsonl``).
    compare: other run directories to compare with, e.g. the standard CNN.
    out_dir: output directory; default ``WORKDIR/report``.
    datasets: the main run's data as the trainer loaded it (``jaxface.data.load_datasets``:
      name -> ``FaceData``, with ``'train'`` and ``'test'``); used instead of loading it again,
      also for a compared run with the same data config. None loads it.
    max_reference_faces: training faces used as the latent-density reference.

  Returns:
    Path of ``index.html``.
  """
  from jaxface import data as data_lib

  workdir = Path(workdir)
  taken: set[str] = set()
  cache: dict[str, dict] = {}
  runs = []
  main_test = None
  for i, directory in enumerate([workdir, *map(Path, compare)]):
    config, variables = _load_run(directory)
    if i == 0:  # the main run's data config names the extra test sets
      main_key = config.data.to_json()
      main_columns = config.data.get("extra_test_attribute_groups", "fitzpatrick")
    key = config.data.to_json()
    if i == 0 and datasets is not None:
      if "test" not in datasets:
        raise ValueError("write_report: datasets has no 'test' set")
      cache[key] = datasets
    if key not in cache:
      cache[key] = data_lib.load_datasets(config.data)
    own = cache[key]
    test, note = own["test"], ""
    if main_test is None:
      main_test = test
    elif main_test.image_shape == test.image_shape:
      test = main_test
    else:
      note = (f"Evaluated on its own test set: its images are {test.image_shape[0]}x"
              f"{test.image_shape[1]}, the main run's {main_test.image_shape[0]}x"
              f"{main_test.image_shape[1]}.")
    runs.append(_run_artifacts(directory, config, variables, test, note,
                               _reference_faces(own.get("train"), max_reference_faces), taken,
                               own.get("val")))
  extra = {name: d for name, d in cache[main_key].items() if name not in data_lib.SPLITS}
  columns = [c.strip() for c in str(main_columns or "").split(",") if c.strip()]
  return build_report(out_dir or workdir / "report", runs, test_sets=extra,
                      attribute_columns=columns)
