"""Stride-2 convolutions whose forward and backward passes are stride-1 convolutions.

XLA:CPU runs plain stride-1 (and stride-2) convolutions on its fast path, but a convolution of a
zero-dilated input (``lhs_dilation=2``) falls off it. Such a convolution appears twice in the
lab networks: every decoder layer is a stride-2 transposed convolution (a convolution of the
dilated input), and the gradient of every stride-2 encoder convolution with respect to its
input is one too. On a 2-core CPU these dominate the DB-VAE train step (several times the
cost of the forward pass).

Both are rewritten here as *sub-pixel* convolutions: the output pixel ``2m + r`` of one
spatial dimension (phase ``r`` in {0, 1}) sees the input pixels ``m + d`` for a few offsets
``d``, each through one kernel tap. A stride-1 convolution of the undilated input with a
*phase kernel* (the taps gathered, ``4 * C_out`` output channels, one block per phase pair)
followed by a depth-to-space shuffle gives the same result up to float rounding. The phase
kernel is a static gather of the ordinary ``(k, k, C_in, C_out)`` kernel, so parameters and
checkpoints are those of ``flax.linen.Conv`` / ``flax.linen.ConvTranspose``.

* :func:`conv_transpose_s2`: ``ConvTranspose(strides=2, padding='SAME')``, computed sub-pixel
  (its gradients are then stride-1 convolutions as well).
* :func:`conv_s2`: ``Conv(strides=2, padding='SAME')``; the forward pass is XLA's own stride-2
  convolution, the input gradient a sub-pixel transposed convolution (``jax.custom_vjp``).

:func:`conv_s2` also takes an odd height or width (giving SAME's ``ceil(H / 2)`` rows).
:mod:`jaxface.cpu_fast` builds the networks' stride-2 layers on these functions.

Speed-ups are measured by ``experiments/benchmark.py`` (section ``xla``, see
experiments/results/).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jax.Array
_DIMS = ("NHWC", "HWIO", "NHWC")


def _phase_taps(k: int, tap_of: Callable[[int, int], int]) -> tuple[np.ndarray, int, int]:
  """Kernel tap used by each (output phase ``r``, input offset ``d``) of one dimension.

  Args:
    k: kernel size.
    tap_of: ``(r, t) -> 2 * d`` for the offset ``d`` at which tap ``t`` serves phase ``r``
      (only even results are valid pairs).

  Returns:
    ``taps (2, L)`` (``k`` where no tap serves that pair), the lowest offset ``d_min`` and the
    highest ``d_max`` (``L = d_max - d_min + 1``).
  """
  offsets = {r: {tap_of(r, t) // 2: t for t in range(k) if tap_of(r, t) % 2 == 0}
             for r in (0, 1)}
  used = [d for table in offsets.values() for d in table]
  d_min, d_max = min(used), max(used)
  taps = np.full((2, d_max - d_min + 1), k, np.int32)
  for r, table in offsets.items():
    for d, t in table.items():
      taps[r, d - d_min] = t
  return taps, d_min, d_max


def _subpixel(chunks: list[Array], kernel: Array,
              tap_of: Callable[[int, int], int]) -> list[Array]:
  """``y[2m + r] = sum_d x[m + d] @ kernel[tap(r, d)]`` in both spatial dimensions, per chunk.

  The phase kernel is gathered once for all chunks (and its gradient scattered back once).

  Args:
    chunks: (b_i, h, w, C_in) each.
    kernel: (k, k, C_in, C_out).
    tap_of: see :func:`_phase_taps`.

  Returns:
    (b_i, 2h, 2w, C_out) each.
  """
  k, _, c_in, c_out = kernel.shape
  taps, d_min, d_max = _phase_taps(k, tap_of)
  length = taps.shape[1]
  padded = jnp.pad(kernel, ((0, 1), (0, 1), (0, 0), (0, 0)))  # tap k is zero
  phase = padded[taps][:, :, taps]  # (r_h, j_h, r_w, j_w, C_in, C_out)
  phase = phase.transpose(1, 3, 4, 0, 2, 5).reshape(length, length, c_in, 4 * c_out)
  pad = ((-d_min, d_max), (-d_min, d_max))
  out = []
  for x in chunks:
    y = lax.conv_general_dilated(x, phase, (1, 1), pad, dimension_numbers=_DIMS)
    b, h, w = y.shape[:3]
    out.append(y.reshape(b, h, w, 2, 2, c_out).transpose(0, 1, 3, 2, 4, 5).reshape(
        b, 2 * h, 2 * w, c_out))
  return out


def _same_pad_transpose(k: int) -> int:
  """Low padding of the dilated input in ``lax.conv_transpose(..., strides=2, 'SAME')``."""
  return k - 1 if 2 > k - 1 else -(-k // 2)


def _same_pad_conv(k: int) -> tuple[int, int]:
  """(low, high) padding of a stride-2 'SAME' convolution of an even-sized input."""
  total = max(k - 2, 0)
  return total // 2, total - total // 2


def conv_transpose_s2(x: Array, kernel: Array) -> Array:
  """``flax.linen.ConvTranspose(strides=(2, 2), padding='SAME')`` without the bias.

  Args:
    x: (B, h, w, C_in) NHWC input.
    kernel: (k, k, C_in, C_out), the ConvTranspose kernel (not flipped).

  Returns:
    (B, 2h, 2w, C_out).
  """
  return conv_transpose_s2_chunks([x], kernel)[0]


def conv_transpose_s2_chunks(chunks: list[Array], kernel: Array) -> list[Array]:
  """:func:`conv_transpose_s2` of every array of a list (one phase kernel for all of them)."""
  pad_lo = _same_pad_transpose(kernel.shape[0])
  # y[2m + r] sums x[m + d] @ kernel[t] over the taps with t = 2d + pad_lo - r.
  return _subpixel(chunks, kernel, lambda r, t: r + t - pad_lo)


def _conv_s2_plain(x: Array, kernel: Array) -> Array:
  lo, hi = _same_pad_conv(kernel.shape[0])
  return lax.conv_general_dilated(x, kernel, (2, 2), ((lo, hi), (lo, hi)),
                                  dimension_numbers=_DIMS)


def _even_size_pad(size: int, k: int) -> tuple[int, int]:
  """(before, after) zero rows that make ``size`` even and keep the stride-2 SAME output.

  SAME pads an odd size with ``k - 1`` rows in all, ``(k - 1) // 2`` before, an even one with
  ``k - 2``, ``(k - 2) // 2`` before; one zero row before (odd ``k``) or after (even ``k``)
  makes up the difference, so the convolution of the even input reads the same pixels.
  """
  if size % 2 == 0:
    return 0, 0
  return (1, 0) if max(k - 1, 0) // 2 > max(k - 2, 0) // 2 else (0, 1)


def conv_s2(x: Array, kernel: Array) -> Array:
  """``flax.linen.Conv(strides=2, padding='SAME')`` without the bias.

  The forward pass is XLA's stride-2 convolution; the input gradient is computed as a
  sub-pixel transposed convolution (stride 1) and the kernel gradient by XLA's own rule. An odd
  height or width is first padded to an even one with a zero row (the same output as SAME).

  Args:
    x: (B, H, W, C_in) NHWC input.
    kernel: (k, k, C_in, C_out).

  Returns:
    (B, ceil(H / 2), ceil(W / 2), C_out).
  """
  k = kernel.shape[0]
  pad_h, pad_w = _even_size_pad(x.shape[1], k), _even_size_pad(x.shape[2], k)
  if pad_h != (0, 0) or pad_w != (0, 0):
    x = jnp.pad(x, ((0, 0), pad_h, pad_w, (0, 0)))
  return _conv_s2_even(x, kernel)


@jax.custom_vjp
def _conv_s2_even(x: Array, kernel: Array) -> Array:
  """:func:`conv_s2` of an input of even height and width."""
  return _conv_s2_plain(x, kernel)


def _conv_s2_fwd(x, kernel):
  # The kernel gradient reads the input batch-minor; transposed here, while x is in cache.
  return _conv_s2_plain(x, kernel), (jnp.transpose(x, (3, 1, 2, 0)), kernel)


def _kernel_grad(x_t: Array, y_grad: Array, k: int) -> Array:
  """``dL/dkernel`` of :func:`conv_s2` from the batch-minor input ``x_t`` (C_in, H, W, B)."""
  lo, _ = _same_pad_conv(k)
  pad = ((lo, k - 2 - lo), (lo, k - 2 - lo))  # output k taps; -1 (cut) for k = 1
  # kernel[t, c, o] = sum_{b, m} x[b, 2m + t - lo, c] y_grad[b, m, o]: a convolution over the
  # spatial positions with the input channels as its batch and the images as its features.
  grad = lax.conv_general_dilated(x_t, y_grad.astype(x_t.dtype), (1, 1), pad,
                                  rhs_dilation=(2, 2),
                                  dimension_numbers=("NHWC", "IHWO", "NHWC"))
  return jnp.transpose(grad, (1, 2, 0, 3))


def _conv_s2_bwd(residuals, y_grad):
  x_t, kernel = residuals
  lo, _ = _same_pad_conv(kernel.shape[0])
  kernel_t = jnp.swapaxes(kernel, 2, 3)
  # y[o] = sum_t x[2o + t - lo] k[t], so x[2m + r] receives y[m + d] through t = r + lo - 2d.
  x_grad = _subpixel([y_grad], kernel_t, lambda r, t: r + lo - t)[0]
  kernel_grad = _kernel_grad(x_t, y_grad, kernel.shape[0]).astype(kernel.dtype)
  return x_grad.astype(x_t.dtype), kernel_grad


_conv_s2_even.defvjp(_conv_s2_fwd, _conv_s2_bwd)
