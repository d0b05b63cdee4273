"""Non-faces resampled by their own errors: the other side of the decision boundary.

A detector is used at a threshold that lets only a few non-faces through, so what decides
whether a face is found there is how far the highest-scoring non-faces sit below it. At every
epoch start after the first, the ``top`` share of the training non-faces that the classifier
scores most face-like are drawn ``upweight`` times as often as the others (no labels beyond
face / not face). ``config.resampling.non_face_upweight`` (1: uniform, off) and
``config.resampling.non_face_top`` set them.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp


def hard_count(n: int, top: float) -> int:
  """How many of ``n`` non-faces are up-weighted: ``ceil(top * n)``, at least 1.

  Raises:
    ValueError: ``n`` < 1 or ``top`` outside (0, 1].
  """
  if n < 1:
    raise ValueError(f"no non-faces to resample (n = {n})")
  if not 0 < top <= 1:
    raise ValueError(f"top must be in (0, 1], got {top}")
  return max(1, math.ceil(top * n))


@functools.partial(jax.jit, static_argnames=("k",))
def hard_non_face_weights(face_prob: jax.Array, k: int, upweight: float
                          ) -> tuple[jax.Array, jax.Array]:
  """The ``k`` non-faces scored most face-like, and every non-face's sampling probability.

  Args:
    face_prob: (N,) the classifier's p(face) (or logit: only the order matters) per non-face.
    k: the number up-weighted, in [1, N] (:func:`hard_count`).
    upweight: their weight relative to the others' (>= 1).

  Returns:
    ``(hard, p)``: (k,) int32 positions of the up-weighted non-faces, highest score first (ties
    to the lower position), and (N,) float32 probabilities summing to 1.
  """
  _, hard = jax.lax.top_k(face_prob, k)
  weights = jnp.ones_like(face_prob, jnp.float32).at[hard].set(upweight)
  return hard.astype(jnp.int32), weights / weights.sum()
