"""Detection at a threshold: the one rule, per-group figures, operating points and ROC curves.

The rule (:func:`detected`): a score ``p`` is a detection at threshold ``t`` when ``p > t``,
strictly. It holds everywhere a probability is compared with a threshold: a test crop at 0.5
(:func:`group_metrics`), a crop at the threshold of a chosen false-positive rate
(:func:`threshold_at_fpr`, :func:`operating_point`), a window of the whole-photo scan and a
whole photo with a window above the threshold calibrated on non-face photos
(:mod:`jaxface.eval.whole_photos`).

An evaluation has one operating point (:func:`validation_threshold`): the threshold at which
``config.operating_fpr`` of the validation split's non-faces are detected (the test split's
where the validation split has none), applied to the test split and to every extra test set
(:func:`operating_point_at`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from jaxface import losses
from jaxface.eval.metrics import rate_figures, var_a_sampling_noise

# The false positive rate of the operating point: config.operating_fpr's default, and the rate
# of a run written before that field.
OPERATING_FPR = 0.01


def detected(prob: np.ndarray | float, threshold: float) -> np.ndarray:
  """Whether each score is a detection at ``threshold``: ``prob > threshold``.

  Args:
    prob: a score or an array of scores (face probabilities).
    threshold: the decision threshold.

  Returns:
    Booleans of ``prob``'s shape (a NumPy bool for a scalar).
  """
  return np.asarray(prob) > threshold


def group_metrics(face_prob: np.ndarray, labels: np.ndarray, groups: np.ndarray,
                  threshold: float = 0.5, group_order: Sequence[str] | None = None) -> dict:
  """Detection rate per demographic group and the aggregate bias figures.

  A sample counts as detected by :func:`detected` (``face_prob > threshold``).

  Args:
    face_prob: (N,) or (N, 1) face probabilities.
    labels: (N,) or (N, 1), 1 = face, 0 = non-face.
    groups: (N,) or (N, 1) group name per sample, ``''`` for non-faces and faces of unknown
      group.
    threshold: decision threshold.
    group_order: groups to report, in this order; a listed group with no faces is reported
      with ``n = 0`` and ``None`` rates and left out of the aggregates. Groups present in the
      data but not listed are appended in sorted order. None: the sorted groups present.

  Returns:
    A JSON-serialisable dict: ``groups`` ``{name: {'n', 'detection_rate' (fraction),
    'mean_face_prob'}}``; ``group_order``; over the groups with faces ``E_A`` (mean rate, %),
    ``Var_A`` (``np.var`` of the rates in %, i.e. %²), ``Var_A_noise`` (its part expected from
    the test set's size alone, :func:`~jaxface.eval.metrics.var_a_sampling_noise`; None unless
    every group has >= 2 faces), ``worst_group``, ``worst_rate`` (%),
    ``gap`` (max - min rate, %); ``face_detection_rate`` (all faces, fraction),
    ``non_face_accuracy`` (fraction of non-faces not detected, None without non-faces),
    ``accuracy`` (all samples), ``n_faces``, ``n_non_faces`` and ``threshold``. Aggregates over
    no groups are None.
  """
  face_prob = losses.flat_per_sample(np.asarray(face_prob, np.float64), "face_prob")
  labels = losses.flat_per_sample(np.asarray(labels), "labels")
  groups = losses.flat_per_sample(np.asarray(groups, dtype=str), "groups")
  if not face_prob.shape == labels.shape == groups.shape:
    raise ValueError(f"face_prob {face_prob.shape}, labels {labels.shape} and groups "
                     f"{groups.shape} must have the same length")
  hit = detected(face_prob, threshold)
  is_face = labels == 1
  present = sorted({g for g in groups[is_face].tolist() if g})
  order = list(group_order) if group_order is not None else []
  order += [g for g in present if g not in order]

  per_group = {}
  rates = []
  for g in order:
    mask = is_face & (groups == g)
    n = int(mask.sum())
    if n:
      rate = float(hit[mask].mean())
      rates.append((g, rate))
      per_group[g] = {"n": n, "detection_rate": rate,
                      "mean_face_prob": float(face_prob[mask].mean())}
    else:
      per_group[g] = {"n": 0, "detection_rate": None, "mean_face_prob": None}

  result = {"threshold": float(threshold), "group_order": order, "groups": per_group,
            "E_A": None, "Var_A": None, "Var_A_noise": None, "worst_group": None,
            "worst_rate": None, "gap": None}
  if rates:
    result.update(rate_figures(rates))
    counts = [per_group[g]["n"] for g, _ in rates]
    if min(counts) >= 2:
      result["Var_A_noise"] = var_a_sampling_noise([r for _, r in rates], counts)
  n_faces, n_non = int(is_face.sum()), int((labels == 0).sum())
  result["n_faces"], result["n_non_faces"] = n_faces, n_non
  result["face_detection_rate"] = float(hit[is_face].mean()) if n_faces else None
  result["non_face_accuracy"] = float((~hit[labels == 0]).mean()) if n_non else None
  result["accuracy"] = float((hit == is_face).mean()) if labels.size else None
  return result


def _scores(x, what: str) -> np.ndarray:
  x = np.asarray(x, np.float64).reshape(-1)
  if not np.all(np.isfinite(x)):
    raise ValueError(f"{what} must be finite")
  return x


def roc_auc(face_prob: np.ndarray, non_face_prob: np.ndarray) -> float:
  """Rank-based ROC AUC of faces against non-faces (Mann-Whitney U over all pairs).

  The probability that a random face scores above a random non-face, a tie counting 1/2.

  Args:
    face_prob: (N,) scores of the faces.
    non_face_prob: (M,) scores of the non-faces.

  Returns:
    The AUC in [0, 1].
  """
  pos = _scores(face_prob, "face_prob")
  neg = _scores(non_face_prob, "non_face_prob")
  if not pos.size or not neg.size:
    raise ValueError(f"roc_auc needs faces and non-faces, got {pos.size} and {neg.size}")
  values, inverse, counts = np.unique(np.concatenate([pos, neg]), return_inverse=True,
                                      return_counts=True)
  # Average 1-based rank of each distinct value: the ranks its ties span, averaged.
  average_rank = np.cumsum(counts) - (counts - 1) / 2.0
  rank_sum = average_rank[inverse[:pos.size]].sum()
  return float((rank_sum - pos.size * (pos.size + 1) / 2.0) / (pos.size * neg.size))


def roc_curve(face_prob: np.ndarray,
              non_face_prob: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """ROC points of the rule :func:`detected`, one per distinct score, from (0, 0) to (1, 1).

  The thresholds are the distinct scores, highest first, then -inf; the trapezoidal area under
  the points equals :func:`roc_auc`.

  Args:
    face_prob: (N,) scores of the faces.
    non_face_prob: (M,) scores of the non-faces.

  Returns:
    ``(false_positive_rate, detection_rate, thresholds)``, each (K,), K = distinct scores + 1.
  """
  pos = _scores(face_prob, "face_prob")
  neg = _scores(non_face_prob, "non_face_prob")
  if not pos.size or not neg.size:
    raise ValueError(f"roc_curve needs faces and non-faces, got {pos.size} and {neg.size}")
  thresholds = np.concatenate([np.unique(np.concatenate([pos, neg]))[::-1], [-np.inf]])
  # Number of scores detected at each threshold, i.e. strictly above it (thresholds descend).
  above = lambda s: s.size - np.searchsorted(np.sort(s), thresholds, side="right")
  return above(neg) / neg.size, above(pos) / pos.size, thresholds


def threshold_at_fpr(non_face_prob: np.ndarray, fpr: float = 0.01) -> tuple[float, float]:
  """The lowest threshold at which at most ``fpr`` of the non-faces are :func:`detected`.

  That is the ``(floor(fpr * M) + 1)``-th highest non-face score: any lower threshold would
  detect more than ``floor(fpr * M)`` non-faces.

  Args:
    non_face_prob: (M,) scores of the non-faces (of crops, or the highest window score of
      each non-face photo).
    fpr: the largest allowed false positive rate, in [0, 1).

  Returns:
    ``(threshold, achieved false positive rate)``; the rate is below ``fpr`` where scores tie.
  """
  neg = _scores(non_face_prob, "non_face_prob")
  if not neg.size:
    raise ValueError("threshold_at_fpr needs at least one non-face score")
  if not 0.0 <= fpr < 1.0:
    raise ValueError(f"fpr must be in [0, 1), got {fpr}")
  allowed = int(np.floor(fpr * neg.size + 1e-9))
  threshold = float(np.sort(neg)[neg.size - 1 - allowed])
  return threshold, float(np.mean(detected(neg, threshold)))


def rates_at_threshold(face_prob: np.ndarray, groups: np.ndarray, threshold: float,
                       non_face_prob: np.ndarray | None = None,
                       group_order: Sequence[str] | None = None) -> dict:
  """Per-group detection rates at ``threshold`` and each group's ROC AUC against non-faces.

  Args:
    face_prob: (N,) face probabilities of the faces, N >= 1.
    groups: (N,) their groups (``''`` for none: counted in the overall rate only).
    threshold: the decision threshold (:func:`detected`).
    non_face_prob: (M,) face probabilities of the non-faces to measure the false positive rate
      and the AUCs on; None (or M = 0) for none.
    group_order: groups listed first, in this order (e.g. ``('LF', 'LM', 'DF', 'DM')``); the
      other groups follow sorted.

  Returns:
    ``{'threshold', 'fpr', 'detection_rate', 'auc', 'groups': {g: {'n', 'detection_rate',
    'auc'}}, 'E_A', 'Var_A', 'worst_group', 'worst_rate'}``: ``fpr`` is the share of the
    non-faces detected; rates in [0, 1] except ``E_A``, ``Var_A`` (%²) and ``worst_rate`` in
    percent, as in :func:`group_metrics`. Without non-faces ``fpr`` and the AUCs are None.
  """
  pos = _scores(face_prob, "face_prob")
  groups = np.asarray(groups, dtype=str).reshape(-1)
  if groups.shape != pos.shape:
    raise ValueError(f"face_prob {pos.shape} and groups {groups.shape} differ in length")
  if not pos.size:
    raise ValueError("an operating point needs at least one face score")
  neg = None if non_face_prob is None else _scores(non_face_prob, "non_face_prob")
  neg = neg if neg is not None and neg.size else None
  auc = (lambda p: None) if neg is None else (lambda p: roc_auc(p, neg))
  hit = detected(pos, threshold)
  order = [g for g in (group_order or []) if g in set(groups.tolist())]
  order += sorted({g for g in groups.tolist() if g} - set(order))
  per_group = {}
  for g in order:
    mask = groups == g
    per_group[g] = {"n": int(mask.sum()), "detection_rate": float(np.mean(hit[mask])),
                    "auc": auc(pos[mask])}
  result = {"threshold": float(threshold),
            "fpr": None if neg is None else float(np.mean(detected(neg, threshold))),
            "detection_rate": float(np.mean(hit)), "auc": auc(pos), "groups": per_group,
            "E_A": None, "Var_A": None, "worst_group": None, "worst_rate": None}
  if per_group:
    figures = rate_figures([(g, v["detection_rate"]) for g, v in per_group.items()])
    result.update({k: figures[k] for k in ("E_A", "Var_A", "worst_group", "worst_rate")})
  return result


def operating_point(face_prob: np.ndarray, groups: np.ndarray, non_face_prob: np.ndarray,
                    fpr: float = OPERATING_FPR,
                    group_order: Sequence[str] | None = None) -> dict:
  """Per-group detection rates at the threshold giving ``fpr`` false positives, and ROC AUCs.

  The threshold comes from the non-faces alone (:func:`threshold_at_fpr`), so every group is
  compared at the same operating point; each group's AUC (:func:`roc_auc`) ranks its faces
  against all non-faces, free of any threshold.

  Args:
    face_prob: (N,) face probabilities of the faces.
    groups: (N,) their groups (``''`` for none: counted in the overall rate only).
    non_face_prob: (M,) face probabilities of the non-faces.
    fpr: the false positive rate, in [0, 1).
    group_order: groups listed first, in this order; the other groups follow sorted.

  Returns:
    ``{'fpr_target', **rates_at_threshold(...)}`` (:func:`rates_at_threshold`) at that
    threshold, ``fpr`` the rate achieved on these non-faces.
  """
  threshold, _ = threshold_at_fpr(non_face_prob, fpr)
  return {"fpr_target": float(fpr),
          **rates_at_threshold(face_prob, groups, threshold, non_face_prob, group_order)}


def operating_fpr(config: Mapping[str, Any]) -> float:
  """A run config's ``operating_fpr``; :data:`OPERATING_FPR` for a run written before the field."""
  return float(config.get("operating_fpr", OPERATING_FPR))


def fpr_tag(op: dict | None) -> str:
  """The label of an operating point's figures, e.g. '@1%FP'; '' for None."""
  return "" if not op else f"@{100 * op['fpr_target']:g}%FP"


class Threshold(NamedTuple):
  """The one threshold of an evaluation and where it was chosen (:func:`validation_threshold`).

  Attributes:
    value: the threshold (a score ``p`` is a detection when ``p > value``).
    fpr_target: the false positive rate it was chosen for.
    source: the split whose non-faces it was chosen on: ``'val'``, or ``'test'`` where the
      validation split has no non-faces.
    source_fpr: the share of those non-faces detected at it (at most ``fpr_target``).
  """
  value: float
  fpr_target: float
  source: str
  source_fpr: float


def validation_threshold(val_non_face_prob: np.ndarray | None,
                         test_non_face_prob: np.ndarray | None,
                         fpr: float = OPERATING_FPR) -> Threshold | None:
  """The evaluation's operating point: the threshold at ``fpr`` on the validation non-faces.

  The threshold is chosen on validation data (:func:`threshold_at_fpr`) and applied unchanged
  to the test split and every extra test set. Where the validation split has no non-faces it
  is chosen on the test split's (``source`` 'test').

  Args:
    val_non_face_prob: (M,) face probabilities of the validation non-faces, or None.
    test_non_face_prob: (K,) face probabilities of the test split's non-faces, or None.
    fpr: the false positive rate, in (0, 1) (``config.operating_fpr``).

  Returns:
    The :class:`Threshold`; None when neither split has non-faces.
  """
  for source, prob in (("val", val_non_face_prob), ("test", test_non_face_prob)):
    if prob is not None and np.size(prob):
      value, achieved = threshold_at_fpr(prob, fpr)
      return Threshold(value, float(fpr), source, achieved)
  return None


def operating_point_at(threshold: Threshold | None, face_prob: np.ndarray, labels: np.ndarray,
                       groups: np.ndarray, non_face_prob: np.ndarray | None = None,
                       group_order: Sequence[str] | None = None) -> dict | None:
  """:func:`rates_at_threshold` of a set's faces at an evaluation's :class:`Threshold`.

  Args:
    threshold: the evaluation's threshold (:func:`validation_threshold`); None gives None.
    face_prob: (N,) face probabilities of the set's images.
    labels: (N,) 1 = face; only the faces are counted.
    groups: (N,) the group of each image (the set's groups, or an attribute's).
    non_face_prob: (M,) the non-faces the false positive rate and the AUCs are measured on.
    group_order: groups listed first, in this order.

  Returns:
    ``{'fpr_target', 'threshold_from' ('val' or 'test'), 'threshold_fpr' (the rate on the
    non-faces it was chosen on), **rates_at_threshold(...)}``; None without a threshold or
    without faces.
  """
  faces = np.asarray(labels).reshape(-1) == 1
  if threshold is None or not faces.any():
    return None
  face_prob = np.asarray(face_prob).reshape(-1)[faces]
  groups = np.asarray(groups, dtype=str).reshape(-1)[faces]
  return {"fpr_target": threshold.fpr_target, "threshold_from": threshold.source,
          "threshold_fpr": threshold.source_fpr,
          **rates_at_threshold(face_prob, groups, threshold.value, non_face_prob, group_order)}
