"""The DB-VAE decoder with its stride-2 transposed convolutions computed as sub-pixel convolutions.

``lax.conv_transpose`` with stride 2 is a convolution of the zero-dilated input
(``lhs_dilation=2``). XLA:CPU runs the forward pass of such a convolution acceptably, but the
gradient with respect to its kernel (a convolution between a dilated input and the output
gradient) falls off the fast convolution path and dominates the DB-VAE train step.

The same layer is a stride-1 convolution of the undilated input that produces the four output
phases ``(r_h, r_w)`` as ``4 * C_out`` channels, followed by a depth-to-space shuffle: output
pixel ``2m + r`` only sees the input pixels ``m + d`` whose dilated position meets a kernel tap,
``t = 2d + pad_lo - r``. Building that phase kernel from the ``(k, k, C_in, C_out)`` kernel with a
static gather keeps the parameters (and checkpoints) of :class:`jaxface.models.Decoder`
unchanged and gives the same outputs up to float rounding; forward and backward passes are
then plain stride-1 convolutions.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxface import models

Array = jax.Array
PyTree = Any


def _phase_taps(k: int, pad_lo: int) -> tuple[np.ndarray, int, int]:
  """Kernel tap of each (phase r, offset j) of one spatial dimension, ``k`` where none.

  Returns:
    ``taps (2, L)`` int, the lowest offset ``d_min`` and the highest ``d_max``.
  """
  offsets = {r: {(r + t - pad_lo) // 2: t for t in range(k) if (r + t - pad_lo) % 2 == 0}
             for r in (0, 1)}
  d_min = min(min(o) for o in offsets.values())
  d_max = max(max(o) for o in offsets.values())
  taps = np.full((2, d_max - d_min + 1), k, np.int32)
  for r, table in offsets.items():
    for d, t in table.items():
      taps[r, d - d_min] = t
  return taps, d_min, d_max


def _same_pad_lo(k: int, stride: int) -> int:
  """Low padding of the dilated input in ``lax.conv_transpose(..., padding='SAME')``."""
  return k - 1 if stride > k - 1 else -(-(k + stride - 2) // 2)


def conv_transpose_s2(x: Array, kernel: Array, bias: Array) -> Array:
  """``flax.linen.ConvTranspose(strides=2, padding='SAME')`` as a sub-pixel convolution.

  Args:
    x: (B, n, n, C_in) NHWC input.
    kernel: (k, k, C_in, C_out), the ConvTranspose kernel (not flipped).
    bias: (C_out,).

  Returns:
    (B, 2n, 2n, C_out).
  """
  k, _, c_in, c_out = kernel.shape
  pad_lo = _same_pad_lo(k, 2)
  taps, d_min, d_max = _phase_taps(k, pad_lo)
  length = taps.shape[1]
  padded = jnp.pad(kernel, ((0, 1), (0, 1), (0, 0), (0, 0)))  # tap k is zero
  phase = padded[taps][:, :, taps]  # (r_h, j_h, r_w, j_w, C_in, C_out)
  phase = phase.transpose(1, 3, 4, 0, 2, 5).reshape(length, length, c_in, 4 * c_out)
  y = lax.conv_general_dilated(x, phase, (1, 1), ((-d_min, d_max), (-d_min, d_max)),
                               dimension_numbers=("NHWC", "HWIO", "NHWC"))
  b, n = y.shape[0], y.shape[1]
  y = y.reshape(b, n, n, 2, 2, c_out).transpose(0, 1, 3, 2, 4, 5).reshape(b, 2 * n, 2 * n, c_out)
  return y + bias.astype(y.dtype)


def decode(params: PyTree, z: Array, *, dtype: Any = jnp.float32) -> Array:
  """Same inputs, outputs and parameters as :func:`jaxface.models.decode`."""
  p = params["decoder"]
  n_filters = models.n_filters_of(params)
  side = models.image_size_of_decoder(params) // 16
  x = z.astype(dtype) @ p["Dense_0"]["kernel"].astype(dtype) + p["Dense_0"]["bias"].astype(dtype)
  x = jax.nn.relu(x).reshape((z.shape[0], side, side, 6 * n_filters))
  names = sorted((n for n in p if n.startswith("ConvTranspose_")), key=lambda n: int(n[14:]))
  for i, name in enumerate(names):
    x = conv_transpose_s2(x, p[name]["kernel"].astype(dtype), p[name]["bias"].astype(dtype))
    if i < len(names) - 1:
      x = jax.nn.relu(x)
  return x.astype(jnp.float32)


@contextlib.contextmanager
def patched_decoder() -> Iterator[None]:
  """Inside the block, ``jaxface.models.decode`` (so anything traced then) is :func:`decode`."""
  original = models.decode
  models.decode = decode
  try:
    yield
  finally:
    models.decode = original
