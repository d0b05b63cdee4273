"""The per-epoch evaluators: the validation split, the test split and the extra test sets.

An evaluator maps the face probabilities of a run's data sets (:class:`FaceScores`, each set
scored once) and the run config to a dict of figures. :func:`evaluate` runs the evaluators
that ``config.evaluators`` names, in that order, and merges their dicts:

* ``'val'``: ``val_accuracy``, ``val_face_accuracy``, ``val_non_face_accuracy`` and, when the
  validation faces carry groups, ``val`` (the per-group figures);
* ``'test'``: ``test`` (:func:`jaxface.evaluation.group_metrics` of the test split);
* ``'test_sets'``: ``test_sets``, ``{name: test_set_metrics(...)}`` of each extra test set.
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

PyTree = Any

OPERATING_FPR = 0.01  # the false positive rate of the extra test sets' operating point


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
      self._face_prob[name] = self._infer(self.datasets[name].images)["face_prob"]
    return self._face_prob[name]


Evaluator = Callable[[FaceScores, ml_collections.ConfigDict], dict[str, Any]]


def evaluate_val(scores: FaceScores, config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Accuracy on the validation split (all, faces, non-faces) and its per-group figures."""
  del config
  if not scores.has("val"):
    return {}
  val = scores.datasets["val"]
  prob = scores("val")
  pred = prob > 0.5
  result = {"val_accuracy": float(np.mean(pred == (val.labels == 1)))}
  faces = val.labels == 1
  if faces.any():
    result["val_face_accuracy"] = float(np.mean(pred[faces]))
  if (~faces).any():
    result["val_non_face_accuracy"] = float(np.mean(~pred[~faces]))
  if any(val.groups[faces]):  # per-group validation rates: for choosing settings
    result["val"] = evaluation.group_metrics(prob, val.labels, val.groups)
  return result


def evaluate_test(scores: FaceScores, config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The test split's per-group figures (:func:`jaxface.evaluation.group_metrics`)."""
  del config
  if not scores.has("test"):
    return {}
  test = scores.datasets["test"]
  return {"test": evaluation.group_metrics(scores("test"), test.labels, test.groups)}


def evaluate_test_sets(scores: FaceScores,
                           config: ml_collections.ConfigDict) -> dict[str, Any]:
  """:func:`test_set_metrics` of every data set that is not a split.

  A set without non-faces is scored against the test split's non-faces; the sets are also
  grouped by the attribute columns of ``config.data.extra_test_attribute_groups``.
  """
  extra = {name: d for name, d in scores.datasets.items() if name not in data_lib.SPLITS}
  if not extra:
    return {}
  test_non_face_prob = None
  if scores.has("test"):
    test_non_face_prob = np.asarray(scores("test")).reshape(-1)[
        scores.datasets["test"].labels == 0]
  columns = tuple(c.strip() for c in str(
      config.data.get("extra_test_attribute_groups", "") or "").split(",") if c.strip())
  return {"test_sets": {name: test_set_metrics(scores(name), d, test_non_face_prob, columns)
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
    config: the run config (``evaluators``, ``eval_batch_size``, ``dtype``, ``model.impl``,
      ``data.extra_test_attribute_groups``).

  Returns:
    The evaluators' dicts merged in order; with the default evaluators ``val_accuracy``,
    ``val_face_accuracy``, ``val_non_face_accuracy``, ``val``, ``test`` and ``test_sets``, each
    where its data is present.
  """
  scores = FaceScores(variables, datasets, mesh, config)
  result: dict[str, Any] = {}
  for name in config.evaluators:
    result.update(EVALUATORS[name](scores, config))
  return result


def test_set_metrics(face_prob: np.ndarray, data: data_lib.FaceData,
                     fallback_non_face_prob: np.ndarray | None = None,
                     attribute_columns: tuple[str, ...] = ("fitzpatrick",),
                     fpr: float = OPERATING_FPR) -> dict[str, Any]:
  """The figures of one extra test set: those of the test split plus an operating point.

  Args:
    face_prob: (N,) face probabilities of ``data``'s images.
    data: the test set (faces, and perhaps non-faces).
    fallback_non_face_prob: (M,) face probabilities of the non-faces to score the faces
      against when ``data`` has none (the main test split's); None for none.
    attribute_columns: attributes of ``data`` (e.g. ``'fitzpatrick'``) to also group the faces
      by; columns it lacks are left out.
    fpr: the false positive rate of the operating point.

  Returns:
    :func:`jaxface.evaluation.group_metrics` by the set's groups, plus ``n_skipped``
    (unreadable images skipped), ``non_faces_from`` ('own', 'test' or None),
    ``operating_point`` (:func:`jaxface.evaluation.operating_point` at ``fpr`` on those
    non-faces: the per-group rates at one threshold and each group's ROC AUC; None without
    non-faces) and ``by_attribute`` ``{column: the same figures grouped by that column}``.
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
    out["operating_point"] = (None if non_face_prob is None else evaluation.operating_point(
        face_prob[is_face], groups[is_face], non_face_prob, fpr, group_order=out["group_order"]))
    return out

  result = figures(data.groups)
  result.update(n_skipped=data.num_skipped, non_faces_from=source, by_attribute={})
  for column in attribute_columns:
    if column in data.attributes:
      regrouped = data_lib.groups_from_attribute(data, column)
      result["by_attribute"][column] = figures(regrouped.groups)
  return result
