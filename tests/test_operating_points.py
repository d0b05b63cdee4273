"""Tests of the operating-point metrics of jaxface.evaluation against brute-force references."""

import numpy as np
import pytest

from jaxface import evaluation


def _brute_auc(pos, neg):
  return np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg])


def _brute_threshold(neg, fpr):
  """The lowest candidate t (all scores and their midpoints) with mean(neg > t) <= fpr."""
  candidates = np.unique(np.concatenate([neg, (neg[:, None] + neg[None, :]).ravel() / 2]))
  ok = [t for t in candidates if np.mean(neg > t) <= fpr + 1e-12]
  return min(ok)


def _scores(seed, n, m, ties=False):
  rng = np.random.default_rng(seed)
  pos, neg = rng.beta(4, 2, n), rng.beta(2, 4, m)
  if ties:  # coarse scores: many ties within and across the classes
    pos, neg = np.round(pos, 1), np.round(neg, 1)
  return pos, neg


@pytest.mark.parametrize("seed,ties", [(0, False), (1, True), (2, True)])
def test_roc_auc_matches_all_pairs(seed, ties):
  pos, neg = _scores(seed, 37, 53, ties)
  assert evaluation.roc_auc(pos, neg) == pytest.approx(_brute_auc(pos, neg), abs=1e-12)


def test_roc_auc_extremes_and_errors():
  assert evaluation.roc_auc([0.9, 0.8], [0.1, 0.2]) == 1.0
  assert evaluation.roc_auc([0.1], [0.9, 0.95]) == 0.0
  assert evaluation.roc_auc([0.5, 0.5], [0.5]) == 0.5
  with pytest.raises(ValueError, match="faces and non-faces"):
    evaluation.roc_auc([0.5], [])
  with pytest.raises(ValueError, match="face_prob must be finite"):
    evaluation.roc_auc([np.nan], [0.5])


@pytest.mark.parametrize("ties", [False, True])
def test_roc_curve_points_and_area(ties):
  pos, neg = _scores(3, 29, 41, ties)
  fpr, tpr, thresholds = evaluation.roc_curve(pos, neg)
  assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
  assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
  for f, t, th in zip(fpr, tpr, thresholds):
    assert f == np.mean(neg > th) and t == np.mean(pos > th)
  area = np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2)
  assert area == pytest.approx(evaluation.roc_auc(pos, neg), abs=1e-12)


@pytest.mark.parametrize("seed,m,fpr,ties", [(0, 1200, 0.01, False), (1, 112, 0.01, False),
                                             (2, 100, 0.29, False), (3, 300, 0.05, True),
                                             (4, 50, 0.0, False)])
def test_threshold_at_fpr_is_the_lowest_allowed(seed, m, fpr, ties):
  _, neg = _scores(seed, 1, m, ties)
  threshold, achieved = evaluation.threshold_at_fpr(neg, fpr)
  assert threshold == pytest.approx(_brute_threshold(neg, fpr), abs=1e-12)
  assert achieved == np.mean(neg > threshold) and achieved <= fpr + 1e-12


def test_threshold_at_fpr_errors():
  with pytest.raises(ValueError, match="fpr must be in"):
    evaluation.threshold_at_fpr([0.1, 0.2], 1.0)
  with pytest.raises(ValueError, match="at least one non-face"):
    evaluation.threshold_at_fpr([], 0.01)


def test_operating_point_per_group():
  rng = np.random.default_rng(7)
  groups = np.array(["LF"] * 40 + ["DM"] * 30 + ["DF"] * 20)
  shift = {"LF": 3.0, "DM": 1.0, "DF": 2.0}
  face_prob = 1 / (1 + np.exp(-(rng.normal(size=90) + np.array([shift[g] for g in groups]))))
  non_face_prob = 1 / (1 + np.exp(-rng.normal(size=300)))
  out = evaluation.operating_point(face_prob, groups, non_face_prob, fpr=0.01,
                                   group_order=("LF", "LM", "DF", "DM"))
  t = _brute_threshold(non_face_prob, 0.01)
  assert out["threshold"] == pytest.approx(t)
  assert list(out["groups"]) == ["LF", "DF", "DM"]  # LM has no faces: left out
  rates = []
  for g in ("LF", "DF", "DM"):
    mask = groups == g
    rate = np.mean(face_prob[mask] > t)
    rates.append(100 * rate)
    assert out["groups"][g]["n"] == mask.sum()
    assert out["groups"][g]["detection_rate"] == pytest.approx(rate)
    assert out["groups"][g]["auc"] == pytest.approx(_brute_auc(face_prob[mask], non_face_prob))
  assert out["worst_group"] == "DM"
  assert out["E_A"] == pytest.approx(np.mean(rates))
  assert out["Var_A"] == pytest.approx(np.var(rates))
  assert out["worst_rate"] == pytest.approx(min(rates))
  assert out["detection_rate"] == pytest.approx(np.mean(face_prob > t))
  assert out["fpr"] <= 0.01


def test_operating_point_errors():
  with pytest.raises(ValueError, match="differ in length"):
    evaluation.operating_point([0.5, 0.6], ["LF"], [0.1])
