"""The XLA:CPU fast-path machinery against the stock layers it replaces: the sub-pixel stride-2
convolutions of jaxface.ops and the batch chunks and chunked batch norm of jaxface.cpu_fast."""

import ast
import functools
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxface import cpu_fast, models, ops


def _rel(a, b):
  return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(a)))


def _flax_fn(layer, features, k):
  module = layer(features, (k, k), strides=(2, 2), padding="SAME", use_bias=False)
  return lambda x, w: module.apply({"params": {"kernel": w}}, x)


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 7])
@pytest.mark.parametrize("transpose", [False, True])
def test_matches_flax_layer_and_its_gradients(k, transpose):
  c_in, c_out, side, batch = 5, 7, 8, 5
  key_x, key_w, key_g = jax.random.split(jax.random.key(k), 3)
  n = side // 2 if transpose else side
  x = jax.random.normal(key_x, (batch, n, n + 2, c_in))  # not square
  w = jax.random.normal(key_w, (k, k, c_in, c_out))
  reference = _flax_fn(nn.ConvTranspose if transpose else nn.Conv, c_out, k)
  ours = ops.conv_transpose_s2 if transpose else ops.conv_s2
  y_ref, vjp_ref = jax.vjp(reference, x, w)
  y, vjp = jax.vjp(ours, x, w)
  assert y.shape == y_ref.shape
  assert _rel(y_ref, y) < 1e-5
  y_grad = jax.random.normal(key_g, y.shape)
  for g_ref, g in zip(vjp_ref(y_grad), vjp(y_grad)):
    assert g.shape == g_ref.shape
    assert _rel(g_ref, g) < 1e-5


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("height,width", [(7, 8), (8, 9), (5, 11)])
def test_conv_s2_odd_sizes_match_lax_same_forward_and_gradient(k, height, width):
  """An odd height or width gives SAME's ceil(H / 2) rows and its gradients (it gave
  floor(H / 2) rows without a gradient, and refused a gradient)."""
  key_x, key_w, key_g = jax.random.split(jax.random.key(10 * k + height), 3)
  x = jax.random.normal(key_x, (3, height, width, 4))
  w = jax.random.normal(key_w, (k, k, 4, 6))

  def reference(x, w):
    return lax.conv_general_dilated(x, w, (2, 2), "SAME",
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))

  y_ref, vjp_ref = jax.vjp(reference, x, w)
  assert y_ref.shape == (3, -(-height // 2), -(-width // 2), 6)
  y = ops.conv_s2(x, w)  # forward alone, no gradient taken
  assert y.shape == y_ref.shape
  assert _rel(y_ref, y) < 1e-5
  assert _rel(y_ref, jax.jit(ops.conv_s2)(x, w)) < 1e-5
  y_vjp, vjp = jax.vjp(ops.conv_s2, x, w)
  assert _rel(y_ref, y_vjp) < 1e-5
  y_grad = jax.random.normal(key_g, y_ref.shape)
  for g_ref, g in zip(vjp_ref(y_grad), vjp(y_grad)):
    assert g.shape == g_ref.shape
    assert _rel(g_ref, g) < 1e-5


def test_conv_transpose_s2_chunks_equals_each_array_on_its_own():
  key_x, key_w = jax.random.split(jax.random.key(3))
  x = jax.random.normal(key_x, (5, 4, 4, 3))
  w = jax.random.normal(key_w, (3, 3, 3, 2))
  chunks = ops.conv_transpose_s2_chunks([x[:2], x[2:]], w)
  assert [c.shape for c in chunks] == [(2, 8, 8, 2), (3, 8, 8, 2)]
  np.testing.assert_allclose(jnp.concatenate(chunks), ops.conv_transpose_s2(x, w), rtol=1e-6,
                             atol=1e-6)


# ----------------------------------------------------------------------------------------------
# jaxface.cpu_fast: batch chunks and the chunked batch norm.
# ----------------------------------------------------------------------------------------------


def test_cpu_fast_builds_on_ops_alone():
  """The layers know nothing of the networks they are injected into (no import cycle)."""
  tree = ast.parse(Path(cpu_fast.__file__).read_text())
  modules = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
  names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
           and node.module == "jaxface" for alias in node.names}
  assert names == {"ops"} and not any(m.startswith("jaxface.") for m in modules if m)


def test_batch_chunks_cover_the_batch(monkeypatch):
  monkeypatch.setattr(cpu_fast, "CPU_BATCH_CHUNK", 32)
  x = jnp.arange(70.0)[:, None]
  chunks = cpu_fast.split_batch(x)
  assert [c.shape[0] for c in chunks] == [32, 32, 6]
  np.testing.assert_array_equal(cpu_fast.join_batch(chunks), x)
  assert [c.shape[0] for c in cpu_fast.split_batch(x[:32])] == [32]


def test_strided_conv_on_chunks_equals_flax_layers():
  key_x, key_w = jax.random.split(jax.random.key(4))
  x = jax.random.normal(key_x, (5, 8, 8, 3))
  for ours_cls, layer in ((cpu_fast.StridedConv, nn.Conv),
                          (cpu_fast.StridedConvTranspose, nn.ConvTranspose)):
    # Built with the arguments the networks give the stock layer.
    kwargs = {"strides": (2, 2), "padding": "SAME"}
    ours = ours_cls(4, (3, 3), **kwargs)
    variables = ours.init(key_w, [x])
    ref_layer = layer(4, (3, 3), **kwargs)
    assert jax.tree.map(jnp.shape, variables) == jax.tree.map(
        jnp.shape, ref_layer.init(key_w, x))
    np.testing.assert_array_equal(variables["params"]["kernel"],
                                  ref_layer.init(key_w, x)["params"]["kernel"])
    variables = {"params": {**variables["params"], "bias": jnp.linspace(-1.0, 1.0, 4)}}
    out = ours.apply(variables, [x[:2], x[2:]])
    ref = ref_layer.apply(variables, x)
    assert [c.shape[0] for c in out] == [2, 3]
    assert _rel(ref, jnp.concatenate(out)) < 1e-5


@pytest.mark.parametrize("kwargs", [{"strides": (1, 1)}, {"padding": "VALID"},
                                    {"kernel_size": (3, 5)}])
def test_strided_conv_refuses_what_it_does_not_compute(kwargs):
  layer = cpu_fast.StridedConv(**{"features": 4, "kernel_size": (3, 3), **kwargs})
  with pytest.raises(ValueError, match="StridedConv computes"):
    layer.init(jax.random.key(0), [jnp.zeros((1, 8, 8, 3))])


def test_decoder_runs_batch_chunks(monkeypatch):
  """The cpu_fast decoder hands every layer the batch as chunks (2, 2, 1 codes here), in one
  call for all of them."""
  monkeypatch.setattr(cpu_fast, "CPU_BATCH_CHUNK", 2)
  params = models.init_variables(jax.random.key(0), latent_dim=6, image_size=32)["params"]
  z = jax.random.normal(jax.random.key(1), (5, 6))
  seen = []
  original = ops.conv_transpose_s2_chunks

  def spy(chunks, kernel):
    seen.append([c.shape[0] for c in chunks])
    return original(chunks, kernel)

  monkeypatch.setattr(ops, "conv_transpose_s2_chunks", spy)
  chunked = jax.jit(functools.partial(models.decode, impl="cpu_fast"))(params, z)
  assert seen == [[2, 2, 1]] * 4  # traced once
  reference = jax.jit(functools.partial(models.decode, impl="flax"))(params, z)
  assert chunked.shape == reference.shape == (5, 32, 32, 3)
  assert _rel(reference, chunked) < 1e-5


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_chunked_batch_norm_equals_flax_batch_norm_on_the_whole_batch(dtype):
  x = 3.0 + 2.0 * jax.random.normal(jax.random.key(0), (5, 4, 4, 6))
  chunks = [x[:2], x[2:4], x[4:]]
  # Built with the arguments the encoder gives the stock batch norm.
  kwargs = {"momentum": models.BN_MOMENTUM, "epsilon": models.BN_EPSILON, "dtype": dtype}
  ours = cpu_fast.ChunkedBatchNorm(use_running_average=False, **kwargs)
  flax_bn = nn.BatchNorm(use_running_average=False, **kwargs)
  variables = ours.init(jax.random.key(1), chunks)
  assert jax.tree.map(jnp.shape, variables) == jax.tree.map(
      jnp.shape, flax_bn.init(jax.random.key(1), x))
  variables = {"params": {"scale": jnp.linspace(0.5, 2.0, 6), "bias": jnp.linspace(-1, 1, 6)},
               "batch_stats": {"mean": jnp.full(6, 0.3), "var": jnp.full(6, 1.7)}}
  out, new = ours.apply(variables, chunks, mutable=["batch_stats"])
  ref, ref_new = flax_bn.apply(variables, x, mutable=["batch_stats"])
  assert [c.shape[0] for c in out] == [2, 2, 1] and out[0].dtype == dtype
  tol = 1e-5 if dtype == jnp.float32 else 2e-2
  np.testing.assert_allclose(np.asarray(jnp.concatenate(out), np.float32),
                             np.asarray(ref, np.float32), atol=tol, rtol=tol)
  for key in ("mean", "var"):
    np.testing.assert_allclose(new["batch_stats"][key], ref_new["batch_stats"][key], rtol=1e-5)
  eval_ours = cpu_fast.ChunkedBatchNorm(use_running_average=True, dtype=dtype)
  eval_ref = nn.BatchNorm(use_running_average=True, dtype=dtype)
  np.testing.assert_allclose(
      np.asarray(jnp.concatenate(eval_ours.apply(variables, chunks)), np.float32),
      np.asarray(eval_ref.apply(variables, x), np.float32), atol=tol, rtol=tol)


def test_encoder_on_batch_chunks_equals_the_whole_batch(monkeypatch):
  """Same outputs, batch statistics and gradients whether the cpu_fast batch is split or not."""
  variables = models.init_variables(jax.random.key(0), latent_dim=6, image_size=32)
  x = jax.random.uniform(jax.random.key(1), (5, 32, 32, 3))

  def loss(params):
    out = models.encode({**variables, "params": params}, x, train=True, impl="cpu_fast")
    return jnp.mean(out.z_mean ** 2) + jnp.mean(out.y_logit), out

  results = {}
  for chunk in (2, 1000):
    monkeypatch.setattr(cpu_fast, "CPU_BATCH_CHUNK", chunk)
    assert len(cpu_fast.split_batch(x)) == (3 if chunk == 2 else 1)
    # A new jitted function per setting: the chunk size is read when the step is traced.
    (value, out), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])
    results[chunk] = (value, out, grads)
  (v_a, out_a, g_a), (v_b, out_b, g_b) = results[2], results[1000]
  assert np.isclose(float(v_a), float(v_b), rtol=1e-5)
  assert _rel(out_b.z_mean, out_a.z_mean) < 1e-5
  for a, b in zip(jax.tree.leaves(out_b.batch_stats), jax.tree.leaves(out_a.batch_stats)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  for a, b in zip(jax.tree.leaves(g_b), jax.tree.leaves(g_a)):
    assert float(jnp.max(jnp.abs(a - b))) <= 1e-4 * (float(jnp.max(jnp.abs(a))) + 1e-6)
