"""The per-epoch evaluators: the validation split, the test split and the extra test sets.

An evaluator maps the face probabilities of a run's data sets (:class:`FaceScores`, each set
scored once), the run config and the evaluation's operating point to a dict of figures.
:func:`evaluate` chooses the operating point once (:func:`evaluation_threshold`: the threshold
at ``config.operating_fpr`` false positives on the validation non-faces, else on the test
split's), then runs the evaluators that ``config.evaluators`` names, in that order, and merges
their dicts:

* ``'val'``: ``val_accuracy``, ``val_face_accuracy``, ``val_non_face_accuracy`` and, when the
  validation faces carry groups, ``val`` (the per-group figures, with ``operating_point``);
* ``'test'``: ``test`` (:func:`jaxface.evaluation.group_metrics` of the test split, with
  ``operating_point``);
* ``'test_sets'``: ``test_sets``, ``{name: test_set_metrics(...)}`` of each extra test set.

Every ``operating_point`` is :func:`jaxface.eval.operating_point.operating_point_at` at that
one threshold (None without one); the figures at p = 0.5 stay beside it.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable, Mapping
from typing import Any

import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from jaxface import data as data_lib
from jaxface import evaluation, inference
from jaxface.eval import operating_point as op_lib
from jaxface.eval.operating_point import OPERATING_FPR, Threshold  # noqa: F401 (public here)

PyTree = Any


class FaceScores:
  """The face probabilities of a run's data sets, each set scored once by eval-mode inference.

  Args:
    variables: model variables.
    datasets: name -> data set (as :func:`jaxface.data.load_datasets` returns them).
    mesh: device mesh of the inference passes.
    config: the run config (``eval_batch_size``, ``dtype``, ``model.impl``).
  """

  def __init__(self, variables: PyTree, datasets: Mapping[str, data_lib.FaceData], mesh: Mesh,
               config: ml_collections.ConfigDict):
    self.datasets = datasets
    self._infer = functools.partial(
        inference.infer, variables, outputs=("face_prob",), mesh=mesh,
        batch_size=config.eval_batch_size, dtype=jnp.dtype(config.dtype),
        impl=config.model.impl)
    self._face_prob: dict[str, np.ndarray] = {}

  def has(self, name: str) -> bool:
    """Whether the run has a non-empty data set ``name``."""
    data = self.datasets.get(name)
    return data is not None and len(data) > 0

  def __call__(self, name: str) -> np.ndarray:
    """(N,) face probabilities of the images of data set ``name``."""
    if name not in self._face_prob:
      self._face_prob[name] = np.asarray(
          self._infer(self.datasets[name].images)["face_prob"]).reshape(-1)
    return self._face_prob[name]

  def non_faces(self, name: str) -> np.ndarray | None:
    """(M,) face probabilities of the non-faces of data set ``name``; None without the set."""
    if not self.has(name):
      return None
    return self(name)[self.datasets[name].labels == 0]


def evaluation_threshold(scores: FaceScores,
                         config: ml_collections.ConfigDict) -> Threshold | None:
  """The evaluation's one threshold (:func:`jaxface.eval.operating_point.validation_threshold`).

  Chosen on the validation non-faces at ``config.operating_fpr``, else on the test split's;
  None when neither has non-faces.
  """
  return op_lib.validation_threshold(scores.non_faces("val"), scores.non_faces("test"),
                                     op_lib.operating_fpr(config))


Evaluator = Callable[[FaceScores, ml_collections.ConfigDict, Threshold | None], dict[str, Any]]


def evaluate_val(scores: FaceScores, config: ml_collections.ConfigDict,
                 threshold: Threshold | None) -> dict[str, Any]:
  """Accuracy on the validation split (all, faces, non-faces) and its per-group figures, at
  0.5 and at the operating point (for choosing settings on validation data)."""
  del config
  if not scores.has("val"):
    return {}
  val = scores.datasets["val"]
  prob = scores("val")
  pred = op_lib.detected(prob, 0.5)
  result = {"val_accuracy": float(np.mean(pred == (val.labels == 1)))}
  faces = val.labels == 1
  if faces.any():
    result["val_face_accuracy"] = float(np.mean(pred[faces]))
  if (~faces).any():
    result["val_non_face_accuracy"] = float(np.mean(~pred[~faces]))
  if any(val.groups[faces]):  # per-group validation rates: for choosing settings
    result["val"] = _split_figures(scores, "val", threshold)
  return result


def _split_figures(scores: FaceScores, name: str, threshold: Threshold | None) -> dict[str, Any]:
  """A split's :func:`jaxface.evaluation.group_metrics` with its ``operating_point``."""
  data, prob = scores.datasets[name], scores(name)
  figures = evaluation.group_metrics(prob, data.labels, data.groups)
  figures["operating_point"] = op_lib.operating_point_at(
      threshold, prob, data.labels, data.groups, scores.non_faces(name), figures["group_order"])
  return figures


def evaluate_test(scores: FaceScores, config: ml_collections.ConfigDict,
                  threshold: Threshold | None) -> dict[str, Any]:
  """The test split's per-group figures at 0.5 and at the operating point."""
  del config
  if not scores.has("test"):
    return {}
  return {"test": _split_figures(scores, "test", threshold)}


def evaluate_test_sets(scores: FaceScores, config: ml_collections.ConfigDict,
                       threshold: Threshold | None) -> dict[str, Any]:
  """:func:`test_set_metrics` of every data set that is not a split.

  A set without non-faces is scored against the test split's non-faces; the sets are also
  grouped by the attribute columns of ``config.data.extra_test_attribute_groups``.
  """
  extra = {name: d for name, d in scores.datasets.items() if name not in data_lib.SPLITS}
  if not extra:
    return {}
  columns = tuple(c.strip() for c in str(
      config.data.get("extra_test_attribute_groups", "") or "").split(",") if c.strip())
  return {"test_sets": {name: test_set_metrics(scores(name), d, scores.non_faces("test"),
                                               columns, threshold=threshold)
                        for name, d in extra.items()}}


EVALUATORS: Mapping[str, Evaluator] = types.MappingProxyType({
    "val": evaluate_val,
    "test": evaluate_test,
    "test_sets": evaluate_test_sets,
})


def evaluate(variables: PyTree, datasets: Mapping[str, data_lib.FaceData], mesh: Mesh,
             config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The figures of the evaluators ``config.evaluators`` names (see :data:`EVALUATORS`).

  Args:
    variables: model variables.
    datasets: ``'train'``, ``'val'``, ``'test'`` and each extra test set by name (as
      :func:`jaxface.data.load_datasets` returns them).
    mesh: device mesh of the inference passes.
    config: the run config (``evaluators``, ``operating_fpr``, ``eval_batch_size``, ``dtype``,
      ``model.impl``, ``data.extra_test_attribute_groups``).

  Returns:
    The evaluators' dicts merged in order; with the default evaluators ``val_accuracy``,
    ``val_face_accuracy``, ``val_non_face_accuracy``, ``val``, ``test`` and ``test_sets``, each
    where its data is present.
  """
  if not config.evaluators:
    return {}
  scores = FaceScores(variables, datasets, mesh, config)
  threshold = evaluation_threshold(scores, config)  # whatever the evaluators' order
  result: dict[str, Any] = {}
  for name in config.evaluators:
    result.update(EVALUATORS[name](scores, config, threshold))
  return result


def test_set_metrics(face_prob: np.ndarray, data: data_lib.FaceData,
                     fallback_non_face_prob: np.ndarray | None = None,
                     attribute_columns: tuple[str, ...] = ("fitzpatrick",), *,
                     threshold: Threshold | None = None) -> dict[str, Any]:
  """The figures of one extra test set: those of the test split plus an operating point.

  Args:
    face_prob: (N,) face probabilities of ``data``'s images.
    data: the test set (faces, and perhaps non-faces).
    fallback_non_face_prob: (M,) face probabilities of the non-faces to score the faces
      against when ``data`` has none (the main test split's); None for none.
    attribute_columns: attributes of ``data`` (e.g. ``'fitzpatrick'``) to also group the faces
      by; columns it lacks are left out.
    threshold: the evaluation's threshold (:func:`evaluation_threshold`, chosen on the
      validation non-faces); None: no operating point.

  Returns:
    :func:`jaxface.evaluation.group_metrics` by the set's groups, plus ``n_skipped``
    (unreadable images skipped), ``non_faces_from`` ('own', 'test' or None),
    ``operating_point`` (:func:`~jaxface.eval.operating_point.operating_point_at`: the
    per-group rates at ``threshold``, the
    false positive rate on those non-faces and each group's ROC AUC against them; None without
    a threshold) and ``by_attribute`` ``{column: the same figures grouped by that column}``.
  """
  face_prob = np.asarray(face_prob, np.float64).reshape(-1)
  is_face = data.labels == 1
  if (~is_face).any():
    non_face_prob, source = face_prob[~is_face], "own"
  elif fallback_non_face_prob is not None and np.size(fallback_non_face_prob):
    non_face_prob, source = np.asarray(fallback_non_face_prob).reshape(-1), "test"
  else:
    non_face_prob, source = None, None

  def figures(groups: np.ndarray) -> dict[str, Any]:
    out = evaluation.group_metrics(face_prob, data.labels, groups)
    out["operating_point"] = op_lib.operating_point_at(threshold, face_prob, data.labels, groups,
                                                       non_face_prob, out["group_order"])
    return out

  result = figures(data.groups)
  result.update(n_skipped=data.num_skipped, non_faces_from=source, by_attribute={})
  for column in attribute_columns:
    if column in data.attributes:
      regrouped = data_lib.groups_from_attribute(data, column)
      result["by_attribute"][column] = figures(regrouped.groups)
  return result
