"""The resampling signals by name, and the epoch-start computation of the faces' probabilities.

A signal turns what the current model says about the training faces (inference outputs such as
``face_prob``, ``z_mean`` and ``recon_error``) or the faces' group labels into ``(n_faces,)``
sampling weights. :data:`SIGNALS` maps each name ``config.resampling.signal`` may take to a
:class:`Signal`: its function and what it needs. :func:`needed_outputs` names the inference
outputs a signal reads; :func:`face_probabilities` computes the signal (``'a+b'`` blends
several), tempers and caps it as ``config.resampling`` says, mixes in the probabilities of the
previous epoch (``resampling.momentum``) and returns the probabilities the batcher draws from.

A new signal is one function ``fn(inputs, resampling, seed) -> (n_faces,)`` and one entry in
:data:`SIGNALS`; ``jaxface.config`` takes the names it accepts, and which of them can be
blended or need a VAE, from there.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections
import numpy as np

from jaxface.resampling import error_axes, histograms, latent_axes, weights

Inputs = Mapping[str, Any]  # name -> (n_faces, ...) array: inference outputs and 'groups'


@dataclasses.dataclass(frozen=True)
class Signal:
  """A resampling signal and what it needs.

  Attributes:
    probabilities: ``fn(inputs, resampling, seed) -> (n_faces,)`` non-negative weights (a
      ``jax.Array``, normalised or not) from ``inputs`` (``{name: (n_faces, ...) array}`` with
      every name of ``outputs``, and ``'groups'`` when ``needs_groups``), the
      ``config.resampling`` fields and the run's seed.
    outputs: the inference outputs it reads (names of ``jaxface.inference.OUTPUTS``).
    needs_groups: whether it reads the faces' group labels (``inputs['groups']``, (n_faces,)
      str).
    needs_latent: whether it needs a VAE's latent space (the standard CNN is refused).
    blendable: whether it can be one part of a blend ``'a+b'``.
    uniform_in_first_epoch: whether epoch 0 samples uniformly instead, because the signal
      reads a model that has not learnt anything yet. These signals read the classifier's
      errors, and can read them on faces held out of that epoch
      (``resampling.heldout_fraction``: ``inputs['held_out']``, (n_faces,) bool, at the second
      epoch's start).
  """
  probabilities: Callable[[Inputs, ml_collections.ConfigDict, int], Any]
  outputs: tuple[str, ...] = ()
  needs_groups: bool = False
  needs_latent: bool = False
  blendable: bool = True
  uniform_in_first_epoch: bool = False


def _groups(inputs: Inputs, rs: ml_collections.ConfigDict, seed: int):
  return weights.group_balanced_probabilities(inputs["groups"], rs.group_power)


def _latent(inputs: Inputs, rs: ml_collections.ConfigDict, seed: int):
  return histograms.sampling_probabilities(inputs["z_mean"], rs.bins, rs.alpha, rs.combine,
                                           histogram_impl=rs.histogram_impl)


def _epistemic(inputs: Inputs, rs: ml_collections.ConfigDict, seed: int):
  return weights.epistemic_probabilities(inputs["recon_error"])


def _latent_pca(inputs: Inputs, rs: ml_collections.ConfigDict, seed: int):
  return latent_axes.latent_pca_probabilities(inputs["z_mean"], rs.components, rs.bins, rs.alpha,
                                              rs.active_variance)


def _clusters(inputs: Inputs, rs: ml_collections.ConfigDict, seed: int):
  return latent_axes.cluster_probabilities(inputs["z_mean"], rs.clusters, rs.components,
                                           rs.active_variance, seed=seed)


# The error signals read inputs.get(HELD_OUT): the faces held out of the first epoch
# (resampling.heldout_fraction; only at the second epoch's start), whose errors they read alone.
HELD_OUT = "held_out"


def _errors(inputs: Inputs, rs: ml_collections.ConfigDict, seed: int):
  return weights.error_probabilities(inputs["face_prob"], rs.error_upweight, rs.error_kind,
                                     inputs.get(HELD_OUT))


def _error_axis(inputs: Inputs, rs: ml_collections.ConfigDict, seed: int):
  return error_axes.error_axis_probabilities(inputs["z_mean"], inputs["face_prob"], rs.error_axes,
                                             rs.bins, rs.alpha, rs.combine, rs.error_kind,
                                             rs.active_variance, inputs.get(HELD_OUT))


def _shift_errors(inputs: Inputs, rs: ml_collections.ConfigDict, seed: int):
  return weights.error_probabilities(inputs["face_prob_shifted"], rs.error_upweight,
                                     rs.error_kind, inputs.get(HELD_OUT))


def _shift_error_axis(inputs: Inputs, rs: ml_collections.ConfigDict, seed: int):
  return error_axes.error_axis_probabilities(inputs["z_mean"], inputs["face_prob_shifted"],
                                             rs.error_axes, rs.bins, rs.alpha, rs.combine,
                                             rs.error_kind, rs.active_variance,
                                             inputs.get(HELD_OUT))


SIGNALS: Mapping[str, Signal] = types.MappingProxyType({
    # Mass by labelled group (group_power): a known-groups baseline, not a latent method.
    "groups": Signal(_groups, needs_groups=True, blendable=False),
    # The lab's per-dimension latent histograms (bins, alpha, combine, histogram_impl).
    "latent": Signal(_latent, ("z_mean",), needs_latent=True),
    # The capsa lab's reconstruction error.
    "epistemic": Signal(_epistemic, ("recon_error",), needs_latent=True),
    # Density of the whitened top principal components (components, active_variance).
    "latent_pca": Signal(_latent_pca, ("z_mean",), needs_latent=True),
    # Equal mass per k-means cluster of those components (clusters).
    "clusters": Signal(_clusters, ("z_mean",), needs_latent=True),
    # The classifier's mistakes at the end of the previous epoch (error_kind, error_upweight).
    "errors": Signal(_errors, ("face_prob",), uniform_in_first_epoch=True),
    # Density along the whitened latent directions that predict those mistakes (error_axes,
    # error_kind, bins, alpha, combine, active_variance).
    "error_axis": Signal(_error_axis, ("z_mean", "face_prob"), needs_latent=True,
                         uniform_in_first_epoch=True),
    # The same two read the classifier's errors under strong photometric shifts (the lowest
    # p(face) over jaxface.inference.PHOTOMETRIC_SHIFTS): the faces whose detection does not
    # carry over to other lighting, which the training errors alone do not show.
    "shift_errors": Signal(_shift_errors, ("face_prob_shifted",), uniform_in_first_epoch=True),
    "shift_error_axis": Signal(_shift_error_axis, ("z_mean", "face_prob_shifted"),
                               needs_latent=True, uniform_in_first_epoch=True),
})


def signal_parts(signal: str) -> list[str]:
  """``'latent_pca+errors'`` -> ``['latent_pca', 'errors']``."""
  return [part.strip() for part in str(signal).split("+")]


def blend_weights(resampling: ml_collections.ConfigDict) -> list[float]:
  """The blend's weights, one per signal of ``resampling.signal`` (equal when unset)."""
  if not resampling.blend_weights:
    return [1.0] * len(signal_parts(resampling.signal))
  return [float(w) for w in str(resampling.blend_weights).split(",")]


def _parts(signal: str, registry: Mapping[str, Signal]) -> list[Signal]:
  """The registry entries of ``signal``'s parts; ValueError for an unknown name or a bad blend."""
  parts = signal_parts(signal)
  unknown = [part for part in parts if part not in registry]
  if unknown:
    raise ValueError(f"resampling signal {signal!r}: unknown {unknown}; known: {list(registry)}")
  if len(parts) > 1 and not all(registry[part].blendable for part in parts):
    raise ValueError(f"resampling signal {signal!r}: only "
                     f"{[name for name, s in registry.items() if s.blendable]} can be blended")
  return [registry[part] for part in parts]


def needed_outputs(signal: str, registry: Mapping[str, Signal] = SIGNALS) -> tuple[str, ...]:
  """The inference outputs ``signal`` reads, each once, in the order its parts name them.

  Args:
    signal: a value of ``config.resampling.signal`` (``'a+b'`` for a blend).
    registry: the signals by name.

  Returns:
    Names of ``jaxface.inference.OUTPUTS``; empty when no part reads the model.
  """
  return tuple(dict.fromkeys(name for s in _parts(signal, registry) for name in s.outputs))


def _n_faces(inputs: Inputs, signals: list[Signal]) -> int:
  """Checks that ``inputs`` hold what ``signals`` read, finite and of one length; returns it."""
  outputs = tuple(dict.fromkeys(name for s in signals for name in s.outputs))
  needed = outputs + (("groups",) if any(s.needs_groups for s in signals) else ())
  missing = [name for name in needed if name not in inputs]
  if missing:
    raise ValueError(f"the resampling signal reads {missing}, missing from its inputs "
                     f"{sorted(inputs)}")
  for name in outputs:
    if not np.isfinite(np.asarray(inputs[name])).all():
      what = "the encoder produced non-finite latent means (z_mean)" if name == "z_mean" else (
          f"the model produced non-finite {name}")
      raise FloatingPointError(f"{what} for the training faces; cannot compute resampling "
                               "probabilities")
  lengths = {name: int(np.shape(value)[0]) for name, value in inputs.items()}
  if not lengths:
    raise ValueError("the resampling signal has no inputs to count the faces by")
  if len(set(lengths.values())) != 1:
    raise ValueError(f"resampling inputs must have one length (n_faces), got {lengths}")
  return next(iter(lengths.values()))


def _normalised(p: Any, signal: str) -> np.ndarray:
  """``p`` as float64 NumPy summing to 1; FloatingPointError naming ``signal`` if it cannot be."""
  p = np.asarray(p, np.float64)
  if not np.isfinite(p).all():
    raise FloatingPointError(f"resampling signal {signal!r} gave non-finite probabilities")
  if (p < 0).any() or p.sum() <= 0:
    raise FloatingPointError(f"resampling signal {signal!r} gave negative probabilities or no "
                             "positive sampling mass")
  return p / p.sum()


def _with_momentum(p: np.ndarray, previous: Any, momentum: float) -> np.ndarray:
  """``normalize(momentum * previous + (1 - momentum) * p)``, float64; None is uniform."""
  if not 0 <= momentum < 1:
    raise ValueError(f"resampling.momentum must be in [0, 1), got {momentum!r}")
  if previous is None:
    previous = np.full(p.shape, 1.0 / p.size)
  previous = np.asarray(previous, np.float64)
  if previous.shape != p.shape:
    raise ValueError(f"the previous face probabilities have shape {previous.shape}, the "
                     f"signal's {p.shape}")
  return _normalised(momentum * _normalised(previous, "previous probabilities")
                     + (1.0 - momentum) * p, "momentum")


def _mistakes(inputs: Inputs, read: set[str], faces: np.ndarray, prefix: str) -> dict[str, Any]:
  """For the record: how many of ``faces`` ((n,) bool) each p(face) input in ``read`` mistakes
  (p <= 0.5), under ``prefix + 'mistakes_' + name``, and, when the faces carry group labels
  (read for the record only, as the mass by group is), by group."""
  groups = np.asarray(inputs.get("groups", np.array([""] * len(faces))))
  labelled = np.unique(groups[groups != ""])
  record: dict[str, Any] = {}
  for name in ("face_prob", "face_prob_shifted"):
    if name in read:
      mistaken = faces & (np.reshape(np.asarray(inputs[name]), -1) <= 0.5)
      record[f"{prefix}mistakes_{name}"] = int(mistaken.sum())
      if len(labelled):
        record[f"{prefix}mistakes_{name}_by_group"] = {
            str(g): int(np.sum(mistaken & (groups == g))) for g in labelled}
  return record


def face_probabilities(resampling: ml_collections.ConfigDict, inputs: Inputs, *, epoch: int,
                       seed: int, registry: Mapping[str, Signal] = SIGNALS,
                       previous: Any = None) -> tuple[np.ndarray, dict[str, Any]]:
  """The faces' sampling probabilities for an epoch: signal, blend, tempering, cap, momentum.

  Each part of ``resampling.signal`` is computed (uniform in epoch 0 for a signal that is
  :attr:`Signal.uniform_in_first_epoch`), the parts are blended with
  ``resampling.blend_weights`` (:func:`jaxface.resampling.blend`), tempered to
  ``resampling.target_ess`` (:func:`jaxface.resampling.temper_to_ess`) and capped at
  ``resampling.max_weight`` (:func:`jaxface.resampling.cap_weights`) when those are set.
  With ``resampling.heldout_fraction`` f > 0 (error signals only), epoch 0 draws none of the
  faces :func:`jaxface.resampling.held_out_faces` holds out (uniform over the others) and at
  epoch 1 the signals read those faces' errors alone. With
  ``resampling.momentum`` m > 0 the result is ``normalize(m * previous + (1 - m) * p)``: the
  mixture keeps the cap (both sides are under it) but not the tempering's exact ESS.

  Args:
    resampling: ``config.resampling``.
    inputs: ``{name: (n_faces, ...) array}``: the inference outputs of
      :func:`needed_outputs` for the training faces and, for a signal that needs them, their
      group labels under ``'groups'``.
    epoch: the epoch about to start.
    seed: the run's seed (signals with a random initialisation, e.g. k-means).
    registry: the signals by name.
    previous: ``(n_faces,)`` the probabilities the batcher draws from now (read only when
      ``resampling.momentum`` > 0); None is uniform (no resampling yet).

  Returns:
    ``(n_faces,)`` float64 probabilities summing to 1 (float64 NumPy: the batcher draws from
    them on the host, and the group and uniform signals are exact in float64), and details:
    ``'power'``, the tempering power, when ``target_ess`` is set; with
    ``resampling.heldout_fraction`` (epochs 0 and 1), ``'held_out_faces'`` and, at epoch 1,
    the held-out faces' mistakes (``'held_out_mistakes_face_prob'``, p(face) <= 0.5); after
    epoch 0, for a signal that reads p(face), every face's (``'mistakes_face_prob'``); each by
    group (``'..._by_group'``) when ``inputs`` hold labelled ``'groups'``.

  Raises:
    ValueError: an unknown signal, a blend of a signal that cannot be blended, inputs that
      miss what the signal reads, or ``previous`` of another length.
    FloatingPointError: non-finite inputs (e.g. ``z_mean`` of a diverged encoder), or a signal
      that gives non-finite probabilities or no positive mass.
  """
  signals = _parts(resampling.signal, registry)
  n = _n_faces(inputs, signals)
  details: dict[str, Any] = {}
  fraction = resampling.get("heldout_fraction", 0.0)  # runs configured before it have none
  held_out = weights.held_out_faces(n, fraction, seed) if fraction and epoch <= 1 else None
  if held_out is not None:
    details["held_out_faces"] = int(held_out.sum())
    if epoch == 0 and all(s.uniform_in_first_epoch for s in signals):
      # The first epoch trains on the other faces only: no tempering, cap or momentum, which
      # would hand the held-out faces some mass.
      return _normalised(np.where(held_out, 0.0, 1.0), resampling.signal), details
  read = {name for s in signals for name in s.outputs}
  if held_out is not None and epoch == 1:
    inputs = {**inputs, HELD_OUT: held_out}
    details.update(_mistakes(inputs, read, held_out, "held_out_"))
  if epoch > 0:
    details.update(_mistakes(inputs, read, np.ones(n, bool), ""))
  per_signal = [np.full(n, 1.0 / n) if epoch == 0 and s.uniform_in_first_epoch
                else s.probabilities(inputs, resampling, seed) for s in signals]
  p = (per_signal[0] if len(per_signal) == 1 else
       weights.blend(np.stack([np.asarray(q) for q in per_signal]), blend_weights(resampling)))
  if resampling.target_ess:
    p, power = weights.temper_to_ess(p, resampling.target_ess)
    details["power"] = float(power)
  if resampling.max_weight:
    p = weights.cap_weights(p, resampling.max_weight)
  p = _normalised(p, resampling.signal)
  momentum = resampling.get("momentum", 0.0)  # runs configured before it have none
  return (_with_momentum(p, previous, momentum) if momentum else p), details
