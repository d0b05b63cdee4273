"""The report's findings: predictions, metrics and summaries of a run as plain data.

Everything here returns JSON-serialisable values, NumPy arrays or NamedTuples of them, and
imports no plotting library, so the findings can be tested and reused without matplotlib.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from jaxface import evaluation, inference, models
from jaxface.data import GROUPS
from jaxface.eval import operating_point as op_lib

PyTree = Any

KIND_LABELS = {"cnn": "standard CNN", "ssvae": "SS-VAE", "dbvae": "DB-VAE"}
# The usual order of the skin x gender groups; other groups follow, sorted.
CANONICAL_GROUPS = GROUPS
SCORE_TEXT = {
    "bias": ("bias score", "log latent density: low = rare"),
    "epistemic": ("epistemic score", "reconstruction error: high = unfamiliar"),
    "aleatoric": ("aleatoric score", "predictive entropy: high = ambiguous"),
}
RECON_LABELS = {"l1": "L1", "l2": "L2"}


@dataclasses.dataclass
class RunArtifacts:
  """Everything the report needs about one trained model.

  Attributes:
    name: display name (e.g. ``'standard CNN'``, ``'DB-VAE'``).
    kind: ``'cnn'``, ``'ssvae'`` or ``'dbvae'``.
    variables: model variables.
    images: (N, H, W, 3) test images, uint8 or float in [0, 1].
    labels: (N,) 1 = face.
    groups: (N,) group names, ``''`` for non-faces.
    reference_images: optional (M, H, W, 3) training faces the bias score's latent density is
      estimated from; None estimates it on the test faces.
    reference_groups: optional (M,) group names of those faces (the latent-bias figure).
    train_metrics: optional final training metrics (``metrics.json`` of the run).
    bins: histogram bins per latent dimension for the bias score.
    batch_size: evaluation batch size.
    dtype: compute dtype name (the run's ``config.dtype``).
    recon: reconstruction error kind of the epistemic score (the run's ``config.loss.recon``).
    test_note: how the test set was chosen, shown in the report.
    log: the run's ``metrics.jsonl`` records (training curves), or None.
    resampling: the per-epoch resampling records of ``metrics.json`` (``epoch``,
      ``mass_by_group``, ``share_by_group``, ``ess_fraction``), or None.
    config: the run's configuration as a plain dict, or None.
    val_non_faces: optional (M, H, W, 3) non-faces of the run's validation split, on which the
      operating point's threshold is chosen; None chooses it on the test non-faces.
    operating_fpr: the false positive rate of the operating point (``config.operating_fpr``).
  """
  name: str
  kind: str
  variables: PyTree
  images: np.ndarray
  labels: np.ndarray
  groups: np.ndarray
  reference_images: np.ndarray | None = None
  train_metrics: dict | None = None
  bins: int = 10
  batch_size: int = 256
  dtype: str = "float32"
  recon: str = "l1"
  test_note: str = ""
  log: list[dict] | None = None
  resampling: list[dict] | None = None
  config: dict | None = None
  val_non_faces: np.ndarray | None = None
  operating_fpr: float = op_lib.OPERATING_FPR
  reference_groups: np.ndarray | None = None


# ------------------------------------------------------------------------------- formatting


def order_groups(names: Sequence[str]) -> list[str]:
  """Non-empty group names, the canonical LF, LM, DF, DM first, then the rest sorted."""
  names = {str(n) for n in names if str(n)}
  return [g for g in CANONICAL_GROUPS if g in names] + sorted(names - set(CANONICAL_GROUPS))


def json_safe(value: Any) -> Any:
  """Converts NumPy values, tuples and non-finite floats (to None) for ``json.dumps``."""
  if isinstance(value, dict):
    return {str(k): json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [json_safe(v) for v in value]
  if isinstance(value, np.ndarray):
    return json_safe(value.tolist())
  if isinstance(value, (np.integer,)):
    return int(value)
  if isinstance(value, (float, np.floating)):
    return float(value) if math.isfinite(value) else None
  if isinstance(value, (np.bool_,)):
    return bool(value)
  return value


def distinct_decimals(values: Sequence[float] | np.ndarray, min_decimals: int = 2,
                      max_decimals: int = 8) -> int:
  """Fewest decimals (at least ``min_decimals``) at which distinct values get distinct labels.

  Values equal at ``max_decimals`` decimals count as one value, so genuine ties stay ties.

  Args:
    values: the numbers to label (non-finite ones are ignored).
    min_decimals: the fewest decimals to use.
    max_decimals: the most decimals to use.

  Returns:
    The number of decimals, in ``[min_decimals, max(min_decimals, max_decimals)]``.
  """
  values = np.asarray(values, np.float64).ravel()
  values = values[np.isfinite(values)]
  target = len({f"{v:.{max_decimals}f}" for v in values})
  for decimals in range(min_decimals, max_decimals):
    if len({f"{v:.{decimals}f}" for v in values}) == target:
      return decimals
  return max(min_decimals, max_decimals)


def format_fixed(value: float, decimals: int) -> str:
  """``value`` with ``decimals`` decimals, without a minus sign on a rounded zero ('-0.00')."""
  text = f"{value:.{decimals}f}"
  return text[1:] if text.startswith("-") and float(text) == 0.0 else text


def composition(groups: np.ndarray, order: Sequence[str]) -> str:
  """'DF 9, DM 5, LF 2' (most frequent first) for a set of group names."""
  counts = collections.Counter(str(g) for g in groups)
  ranked = sorted(counts.items(), key=lambda kv: (-kv[1], list(order).index(kv[0])
                                                  if kv[0] in order else len(order)))
  return ", ".join(f"{g or 'unknown'} {n}" for g, n in ranked)


def face_captions(groups: np.ndarray, values: np.ndarray, decimals: int,
                  prefix: str = "") -> list[str]:
  """'GROUP\\nPREFIXVALUE' under each face, the value with ``decimals`` decimals."""
  return [f"{g or '?'}\n{prefix}{format_fixed(v, decimals)}" for g, v in zip(groups, values)]


def display_name(name: str, kind: str) -> str:
  """The run name, with the model kind's label after it when the name does not say it."""
  label = KIND_LABELS.get(kind, kind)
  return name if label.lower() in name.lower() or not label else f"{name} ({label})"


# --------------------------------------------------------------------------------- analysis


def analyse_run(run: RunArtifacts, order: Sequence[str]) -> dict:
  """Predictions, metrics and scores of one run on its test set, in the run's dtype.

  Args:
    run: the run; its ``dtype`` and ``recon`` set the compute dtype and the epistemic score.
    order: group order of the metrics.

  Returns:
    A dict with ``pred`` (:class:`~jaxface.evaluation.Predictions` of all test images),
    ``face_pred`` (of the faces), ``metrics`` (group metrics, with ``operating_point`` at
    ``threshold``), ``threshold`` (:func:`jaxface.eval.operating_point.validation_threshold`
    of the run's validation and test non-faces, or None), ``faces`` (indices of test faces),
    ``scores`` (per-face risk scores on the faces), ``reference`` (whether a training
    reference set was used), ``reference_pred`` (its predictions, or None) and ``vae``.
  """
  import jax.numpy as jnp
  dtype = jnp.dtype(run.dtype)
  pred = evaluation.predict(run.variables, run.images, run.batch_size, dtype=dtype,
                            recon=run.recon)
  metrics = evaluation.group_metrics(pred.face_prob, run.labels, run.groups, group_order=order)
  labels = np.asarray(run.labels)
  faces, non_face_prob = np.flatnonzero(labels == 1), pred.face_prob[labels == 0]
  val_prob = None if run.val_non_faces is None or not len(run.val_non_faces) else inference.infer(
      run.variables, run.val_non_faces, ("face_prob",), batch_size=run.batch_size, dtype=dtype)
  threshold = op_lib.validation_threshold(None if val_prob is None else val_prob["face_prob"],
                                          non_face_prob, run.operating_fpr)
  metrics["operating_point"] = op_lib.operating_point_at(threshold, pred.face_prob, labels,
                                                         run.groups, non_face_prob, order)
  vae = models.latent_dim_of(run.variables["params"]) > 0
  face_pred = evaluation.Predictions(*(None if a is None else a[faces] for a in pred))
  ref = None
  if vae and run.reference_images is not None and len(run.reference_images):
    ref = evaluation.predict(run.variables, run.reference_images, run.batch_size, dtype=dtype,
                             recon=run.recon)
  scores = evaluation.risk_scores_from_predictions(face_pred, run.bins,
                                                   None if ref is None else ref.z_mean)
  return {"pred": pred, "face_pred": face_pred, "metrics": metrics, "threshold": threshold,
          "faces": faces, "scores": scores, "reference": ref is not None,
          "reference_pred": ref, "vae": vae}


def latent_accuracy_band(curve: evaluation.LatentAccuracy,
                         percentiles: tuple[float, float] = (10.0, 90.0)
                         ) -> tuple[np.ndarray, np.ndarray]:
  """The spread of the per-dimension curves of :func:`jaxface.evaluation.accuracy_vs_latent`.

  Args:
    curve: its output, ``per_dim`` (k, bins).
    percentiles: lower and upper percentile over the dimensions, per bin.

  Returns:
    ``(low (bins,), high (bins,))``; NaN in a bin no dimension has faces in.
  """
  per_dim = np.asarray(curve.per_dim, np.float64)
  low = np.full(per_dim.shape[1], np.nan)
  high = np.full(per_dim.shape[1], np.nan)
  for b in range(per_dim.shape[1]):
    column = per_dim[:, b][np.isfinite(per_dim[:, b])]
    if column.size:
      low[b], high[b] = np.percentile(column, percentiles)
  return low, high


def traversal_change(traversal: evaluation.Traversal) -> np.ndarray:
  """How much the decoded face changes along each walked dimension.

  Args:
    traversal: :func:`jaxface.evaluation.latent_traversal` output, images (D, steps, H, W, 3).

  Returns:
    (D,) mean absolute pixel difference (0-1 scale) between the first and last decoded image.
  """
  images = np.asarray(traversal.images, np.float64)
  return np.abs(images[:, -1] - images[:, 0]).mean(axis=(1, 2, 3))


# ------------------------------------------------------------------------- training history


class SamplingMass(NamedTuple):
  """The share of the training sampling mass each group gets, per resampling epoch.

  Attributes:
    epochs: (E,) epochs the probabilities were computed at (start of the epoch).
    groups: the G group names, in report order.
    mass: (E, G) fraction of the sampling mass on each group's faces (rows sum to 1 over
      labelled groups).
    share: (G,) fraction of the training faces in each group (uniform sampling's mass); NaN
      when the records do not give it.
    ess_fraction: (E,) effective sample size over the number of faces; NaN when not given.
  """
  epochs: np.ndarray
  groups: list[str]
  mass: np.ndarray
  share: np.ndarray
  ess_fraction: np.ndarray


def sampling_mass(records: Sequence[dict], order: Sequence[str] = ()) -> SamplingMass | None:
  """The sampling mass per group over epochs, from the run's resampling records.

  Args:
    records: dicts with ``epoch``, ``mass_by_group`` and optionally ``share_by_group`` and
      ``ess_fraction`` (``metrics.json['resampling']`` or :func:`resampling_from_log`).
    order: preferred group order; other groups follow (:func:`order_groups`).

  Returns:
    :class:`SamplingMass`, or None when no record has a mass by group (e.g. a CNN run, or
    resampling on unlabelled faces).
  """
  records = [r for r in records if r.get("mass_by_group")]
  if not records:
    return None
  names = {g for r in records for g in r["mass_by_group"]}
  groups = [g for g in order if g in names] + [g for g in order_groups(names) if g not in order]
  mass = np.array([[float(r["mass_by_group"].get(g, 0.0)) for g in groups] for r in records])
  last_share = next((r["share_by_group"] for r in reversed(records)
                     if r.get("share_by_group")), {})
  share = np.array([float(last_share.get(g, np.nan)) for g in groups])
  ess = np.array([float(r.get("ess_fraction", np.nan)) for r in records])
  epochs = np.array([int(r.get("epoch", i)) for i, r in enumerate(records)], np.int64)
  return SamplingMass(epochs, groups, mass, share, ess)


def resampling_from_log(log: Sequence[dict]) -> list[dict]:
  """The resampling records of a ``metrics.jsonl`` log, in the ``metrics.json`` format.

  Args:
    log: records with ``resampling_mass_<GROUP>`` and ``resampling_ess_fraction`` keys on the
      lines written at each resampling.

  Returns:
    ``[{'epoch', 'mass_by_group', 'ess_fraction'}]``, one per resampling line.
  """
  prefix = "resampling_mass_"
  out = []
  for record in log:
    if "resampling_ess_fraction" not in record:
      continue
    out.append({"epoch": record.get("epoch", len(out)),
                "ess_fraction": record["resampling_ess_fraction"],
                "mass_by_group": {k[len(prefix):]: v for k, v in record.items()
                                  if k.startswith(prefix)}})
  return out


class TrainingCurves(NamedTuple):
  """Training loss and accuracy over steps, validation accuracy over epochs.

  Attributes:
    step: (S,) global step of each logged training window.
    loss: (S, L) mean of each loss term over the window (NaN where a term is not logged).
    loss_names: the L loss terms, ``'loss'`` (the total) first; terms logged as zero
      throughout are left out.
    accuracy: (S,) mean training batch accuracy over the window.
    epoch: (V,) epoch of each end-of-epoch evaluation.
    epoch_step: (V,) global step at that evaluation.
    val_accuracy: (V,) validation accuracy (NaN where not logged).
  """
  step: np.ndarray
  loss: np.ndarray
  loss_names: list[str]
  accuracy: np.ndarray
  epoch: np.ndarray
  epoch_step: np.ndarray
  val_accuracy: np.ndarray


def training_curves(log: Sequence[dict]) -> TrainingCurves | None:
  """The training curves of a ``metrics.jsonl`` log.

  Args:
    log: its records: training windows carry ``loss`` (and loss terms ending in ``_loss`` or
      starting with ``vae_loss``) and ``accuracy``; epoch ends carry ``val_accuracy``.

  Returns:
    :class:`TrainingCurves`, or None when the log has neither training nor validation lines.
  """
  train = [r for r in log if "loss" in r]
  evals = [r for r in log if "val_accuracy" in r]
  if not train and not evals:
    return None
  # Loss terms, without those that are zero throughout (the CNN logs a zero VAE loss).
  terms = sorted({k for r in train for k in r if k != "loss"
                  and (k.endswith("_loss") or k.startswith("vae_loss"))})
  terms = [k for k in terms if any(float(r.get(k, 0.0)) != 0.0 for r in train)]
  names = ["loss", *terms]
  nan = float("nan")
  loss = np.array([[float(r.get(k, nan)) for k in names] for r in train]).reshape(-1, len(names))
  return TrainingCurves(
      step=np.array([int(r.get("step", i)) for i, r in enumerate(train)], np.int64),
      loss=loss, loss_names=names,
      accuracy=np.array([float(r.get("accuracy", nan)) for r in train]),
      epoch=np.array([int(r.get("epoch", i)) for i, r in enumerate(evals)], np.int64),
      epoch_step=np.array([int(r.get("step", 0)) for r in evals], np.int64),
      val_accuracy=np.array([float(r["val_accuracy"]) for r in evals]))


# ------------------------------------------------------------------------------- comparison


def side_by_side(metrics_list: Sequence[dict], order: Sequence[str],
                 train_metrics: Sequence[dict | None] = ()) -> list[tuple[str, list, int]]:
  """The rows of a table with one column per run: detection per group, then the aggregates.

  Args:
    metrics_list: :func:`jaxface.evaluation.group_metrics` of each run, on the same faces
      (with the ``operating_point`` of :func:`analyse_run`, shown where present).
    order: the groups, in order.
    train_metrics: each run's final ``metrics.json`` (for its validation accuracy), optional.

  Returns:
    ``[(label, values (one per run, float or None), decimals)]``; rates in percent.
  """
  def scaled(m, key, scale=100.0):
    value = m.get(key)
    return None if value is None else scale * value

  ops = [m.get("operating_point") or {} for m in metrics_list]
  tag = next((op_lib.fpr_tag(op) for op in ops if op), "")
  rows = []
  for g in order:  # each group's rate at 0.5, and at the operating point beside it
    rows.append((f"{g} detected %", [scaled(m["groups"].get(g, {}), "detection_rate")
                                     for m in metrics_list], 2))
    if tag:
      rows.append((f"{g} detected {tag} %", [scaled(op.get("groups", {}).get(g, {}),
                                                    "detection_rate") for op in ops], 2))
  if tag:
    rows += [(f"E_A {tag} %", [op.get("E_A") for op in ops], 2),
             (f"worst rate {tag} %", [op.get("worst_rate") for op in ops], 2)]
  rows += [
      ("E_A %", [m["E_A"] for m in metrics_list], 2),
      ("Var_A %²", [m["Var_A"] for m in metrics_list], 2),
      ("Var_A noise %²", [m.get("Var_A_noise") for m in metrics_list], 2),
      ("worst rate %", [m["worst_rate"] for m in metrics_list], 2),
      ("gap (points)", [m["gap"] for m in metrics_list], 2),
      ("non-faces correct %", [scaled(m, "non_face_accuracy") for m in metrics_list], 2),
      ("accuracy %", [scaled(m, "accuracy") for m in metrics_list], 2),
  ]
  if any(train_metrics):
    val = [None if not t else scaled(t.get("eval") or {}, "val_accuracy")
           for t in train_metrics]
    rows.append(("validation accuracy %", val, 2))
  return rows
