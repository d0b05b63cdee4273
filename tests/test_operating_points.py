"""Tests of the operating-point metrics of jaxface.evaluation against brute-force references,
and of the evaluation's one operating point (chosen on the validation non-faces)."""

import json

import numpy as np
import pytest

from jaxface import config as config_lib
from jaxface import data as data_lib
from jaxface import evaluation, inference, sharding
from jaxface.eval import operating_point as op_lib
from jaxface.eval import splits, summary

from helpers import load_experiment, tiny_config


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


# ------------------------------------------------------ the evaluation's one operating point


def test_validation_threshold_and_its_fallback():
  val = np.linspace(0.0, 0.99, 100)  # 1% of 100: one non-face may pass, the 2nd highest stops
  test = np.array([0.2, 0.3])
  t = op_lib.validation_threshold(val, test, 0.01)
  assert t == op_lib.Threshold(0.98, 0.01, "val", 0.01)
  for empty in (None, np.zeros(0)):
    assert op_lib.validation_threshold(empty, test, 0.01) == op_lib.Threshold(0.3, 0.01, "test",
                                                                              0.0)
    assert op_lib.validation_threshold(empty, empty, 0.01) is None


def _scored_set(face_values, groups, non_face_values):
  """A FaceData whose images are filled with a value v each: ``_infer_by_value`` scores v / 255."""
  values = np.r_[face_values, non_face_values].astype(np.uint8)
  return data_lib.FaceData(
      images=np.broadcast_to(values[:, None, None, None], (len(values), 4, 4, 3)).copy(),
      labels=np.r_[np.ones(len(face_values), np.int64), np.zeros(len(non_face_values), np.int64)],
      groups=np.r_[np.asarray(groups, str), np.full(len(non_face_values), "")])


def _infer_by_value(variables, images, outputs, **kwargs):
  del variables, outputs, kwargs
  return {"face_prob": np.asarray(images)[:, 0, 0, 0].astype(np.float32) / 255.0}


@pytest.fixture
def by_value(monkeypatch):
  """``evaluate(datasets, **config fields)`` scoring an image v / 255 for its pixel value v."""
  monkeypatch.setattr(inference, "infer", _infer_by_value)

  def evaluate(datasets, **fields):
    return splits.evaluate(None, datasets, sharding.make_mesh(), tiny_config("cnn", **fields))
  return evaluate


def _datasets(val_non_faces=tuple(range(0, 200)), test_non_faces=tuple(range(50, 250)),
              names=("A", "B")):
  """Validation and test splits whose non-faces score differently, and an extra faces-only set
  (40 faces each, in equal groups ``names``)."""
  rng = np.random.default_rng(0)
  faces = lambda n: rng.integers(100, 256, n)  # noqa: E731
  groups = np.repeat(names, 40 // len(names)).tolist()
  return {"val": _scored_set(faces(40), groups, val_non_faces),
          "test": _scored_set(faces(40), groups, test_non_faces),
          "extra": _scored_set(faces(40), groups, [])}


def test_the_threshold_comes_from_the_validation_non_faces(by_value):
  datasets = _datasets()
  ev = by_value(datasets)
  prob = {name: d.images[:, 0, 0, 0] / np.float32(255.0) for name, d in datasets.items()}
  val_nf = prob["val"][datasets["val"].labels == 0]
  test_nf = prob["test"][datasets["test"].labels == 0]
  # 200 validation non-faces at 1%: two may pass, the third highest (197 / 255) stops the rest.
  t = float(np.sort(val_nf)[-3])
  assert t == pytest.approx(197 / 255) and t != op_lib.threshold_at_fpr(test_nf, 0.01)[0]
  op = ev["test"]["operating_point"]
  assert op["threshold"] == t and op["threshold_from"] == "val" and op["fpr_target"] == 0.01
  assert op["threshold_fpr"] == 0.01
  assert op["fpr"] == np.mean(test_nf > t) == 52 / 200  # the test non-faces above 197
  test = datasets["test"]
  for g in ("A", "B"):
    face = (test.labels == 1) & (test.groups == g)
    assert op["groups"][g]["detection_rate"] == np.mean(prob["test"][face] > t)
    assert op["groups"][g]["auc"] == evaluation.roc_auc(prob["test"][face], test_nf)
  rates = [100 * op["groups"][g]["detection_rate"] for g in ("A", "B")]
  assert op["E_A"] == pytest.approx(np.mean(rates)) and op["Var_A"] == pytest.approx(np.var(rates))
  assert op["worst_rate"] == pytest.approx(min(rates))
  # The p = 0.5 figures are unchanged beside it.
  assert {k: v for k, v in ev["test"].items() if k != "operating_point"} == (
      evaluation.group_metrics(prob["test"], test.labels, test.groups))
  # The validation split's rates at the same threshold; the extra set's, against the test
  # split's non-faces (it has none of its own).
  val = datasets["val"]
  val_op = ev["val"]["operating_point"]
  assert val_op["threshold"] == t and val_op["fpr"] == np.mean(val_nf > t) == 0.01
  face = (val.labels == 1) & (val.groups == "B")
  assert val_op["groups"]["B"]["detection_rate"] == np.mean(prob["val"][face] > t)
  extra_op = ev["test_sets"]["extra"]["operating_point"]
  assert extra_op["threshold"] == t and extra_op["fpr"] == op["fpr"]
  assert extra_op["groups"]["A"]["detection_rate"] == np.mean(prob["extra"][:20] > t)
  assert extra_op["groups"]["A"]["auc"] == evaluation.roc_auc(prob["extra"][:20], test_nf)
  # One threshold whatever the evaluators' order.
  again = by_value(datasets, evaluators=("test_sets", "test", "val"))
  assert again["test"] == ev["test"] and again["test_sets"] == ev["test_sets"]
  assert by_value(datasets, evaluators=("test",)) == {"test": ev["test"]}
  assert by_value(datasets, operating_fpr=0.05)["test"]["operating_point"]["threshold"] == (
      float(np.sort(val_nf)[-11]))
  json.dumps(ev, allow_nan=False)


def test_without_validation_non_faces_the_test_split_sets_the_threshold(by_value):
  datasets = _datasets(val_non_faces=())
  ev = by_value(datasets)
  op = ev["test"]["operating_point"]
  test_nf = datasets["test"].images[datasets["test"].labels == 0, 0, 0, 0] / np.float32(255.0)
  assert op["threshold_from"] == "test"
  assert op["threshold"] == op_lib.threshold_at_fpr(test_nf, 0.01)[0]
  assert ev["val"]["operating_point"]["fpr"] is None  # no validation non-faces to measure on
  assert ev["val"]["operating_point"]["groups"]["A"]["auc"] is None
  text = summary.format_summary(tiny_config("cnn"), _final(ev))
  assert "on the test split's non-faces (the validation split has none)" in text
  # Neither split has non-faces: no operating point anywhere, never NaN.
  none = by_value(_datasets(val_non_faces=(), test_non_faces=()))
  assert none["test"]["operating_point"] is None and none["val"]["operating_point"] is None
  assert none["test_sets"]["extra"]["operating_point"] is None
  json.dumps(none, allow_nan=False)
  text = summary.format_summary(tiny_config("cnn"), _final(none))
  assert "no operating point" in text and "nan" not in text.lower()


def _final(ev):
  return {"wall_time_s": 1.0, "images_per_s": 2.0, "steps": 3, "eval": ev}


def test_summary_headlines_the_operating_point_beside_p_half(by_value):
  ev = by_value(_datasets())
  text = summary.format_summary(tiny_config("cnn"), _final(ev))
  lines = text.splitlines()
  op, test = ev["test"]["operating_point"], ev["test"]
  assert lines[1].startswith("validation accuracy")
  assert lines[2] == (f"operating point @1%FP: threshold {op['threshold']:.4f}, chosen at 1% "
                      "false positives on the validation non-faces; test non-faces detected at "
                      f"it: {100 * op['fpr']:.2f}%")
  assert lines[3].split() == ["group", "n", "@1%FP", "AUC", "p>0.5", "mean", "p(face)"]
  a = lines[4].split()
  assert a[:5] == ["A", "20", f"{100 * op['groups']['A']['detection_rate']:.2f}%",
                   f"{op['groups']['A']['auc']:.3f}",
                   f"{100 * test['groups']['A']['detection_rate']:.2f}%"]
  at_op = next(i for i, line in enumerate(lines) if line.startswith("@1%FP: E[A]"))
  at_half = next(i for i, line in enumerate(lines) if line.startswith("p > 0.5: E[A]"))
  assert at_op < at_half  # the operating point first, p = 0.5 second
  assert f"worst group {op['worst_group']} {op['worst_rate']:.2f}%" in lines[at_op]
  assert f"worst group {test['worst_group']} {test['worst_rate']:.2f}%" in lines[at_half]
  assert any(line.startswith("validation @1%FP: A ") for line in lines)
  assert "-- test set extra: 40 faces, 0 non-faces" in text


@pytest.mark.parametrize("value", [0.0, 1.0, 1.5, -0.01])
def test_operating_fpr_outside_zero_one_fails_naming_the_field(value):
  config = tiny_config("cnn", operating_fpr=value)
  with pytest.raises(ValueError, match=r"^config\.operating_fpr = .*: must be a false-positive "
                                       r"rate in \(0, 1\), e\.g\. 0\.01$"):
    config_lib.validate_config(config, 1)
  config_lib.validate_config(tiny_config("cnn", operating_fpr=0.05), 1)


def test_study_tables_lead_with_the_operating_point(by_value):
  study = load_experiment("study", "_experiments_study_op")
  ev = by_value(_datasets(names=("LF", "LM", "DF", "DM")))
  final = {**_final(ev), "eval": ev}
  rows = {"cnn": study.aggregate([study.run_summary(final)] * 2)}
  lines = study.markdown_table(rows).splitlines()
  header, cells = ([c.strip() for c in line.strip("|").split("|")] for line in (lines[0], lines[2]))
  assert header[:13] == ["config", "seeds", "worst @1%FP", "E[A] @1%FP", "Var[A] @1%FP",
                         "LF @1%FP", "LM @1%FP", "DF @1%FP", "DM @1%FP", "DF AUC", "DM AUC",
                         "val E[A] @1%FP", "val worst @1%FP"]
  assert header[13:19] == ["LF % @0.5", "LM % @0.5", "DF % @0.5", "DM % @0.5", "E[A] % @0.5",
                           "Var[A] %² @0.5"]
  op, val_op = ev["test"]["operating_point"], ev["val"]["operating_point"]
  assert cells[:3] == ["cnn", "2", f"{op['worst_rate']:.1f} ± 0.0"]
  assert cells[7] == f"{100 * op['groups']['DF']['detection_rate']:.1f} ± 0.0"
  assert cells[10] == f"{op['groups']['DM']['auc']:.3f} ± 0.000"
  assert cells[12] == f"{val_op['worst_rate']:.1f} ± 0.0"
  assert cells[13] == f"{100 * ev['test']['groups']['LF']['detection_rate']:.1f} ± 0.0"
  # A run written before the operating point: its columns read '-'.
  old = {"eval": {**ev, "test": {k: v for k, v in ev["test"].items() if k != "operating_point"},
                  "val": {k: v for k, v in ev["val"].items() if k != "operating_point"}}}
  cells = study.markdown_table({"old": study.aggregate([study.run_summary({**final, **old})])}
                               ).splitlines()[2].split("|")
  assert [c.strip() for c in cells[3:14]] == ["-"] * 11
  # An extra test set's table: the figures at the operating point first, too.
  summary = study.test_set_summary(ev["test_sets"]["extra"])
  table = study.test_set_table("extra", {"cnn": study.aggregate([summary])}, summary["groups"])
  header = [c.strip() for c in table.splitlines()[2].strip("|").split("|")]
  assert header[:6] == ["config", "seeds", "worst @1%FP", "E[A] @1%FP", "Var[A] @1%FP",
                        "DF % @1%FP"]  # the set's groups, sorted
  assert header.index("LM AUC") < header.index("DF % @0.5") < header.index("worst % @0.5")
