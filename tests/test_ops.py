"""Sub-pixel stride-2 layers against the Flax layers they replace: values and gradients."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxface import models, ops


def _rel(a, b):
  return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(a)))


def _flax_fn(layer, features, k):
  module = layer(features, (k, k), strides=(2, 2), padding="SAME", use_bias=False)
  return lambda x, w: module.apply({"params": {"kernel": w}}, x)


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 7])
@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("chunk", [32, 2], ids=["one_chunk", "chunks_2_2_1"])
def test_matches_flax_layer_and_its_gradients(k, transpose, chunk, monkeypatch):
  monkeypatch.setattr(ops, "CPU_BATCH_CHUNK", chunk)
  c_in, c_out, side, batch = 5, 7, 8, 5
  key_x, key_w, key_g = jax.random.split(jax.random.key(k), 3)
  x = jax.random.normal(key_x, (batch, side // 2 if transpose else side, side // 2 if transpose
                                else side, c_in))
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


def test_batch_chunks_cover_the_batch_on_cpu(monkeypatch):
  monkeypatch.setattr(ops, "CPU_BATCH_CHUNK", 32)
  expected = [(0, 32), (32, 64), (64, 70)] if jax.default_backend() == "cpu" else [(0, 70)]
  assert ops._chunks(70) == expected  # noqa: SLF001


def test_conv_s2_gradient_rejects_odd_sizes():
  x, w = jnp.ones((1, 7, 7, 2)), jnp.ones((3, 3, 2, 4))
  with pytest.raises(ValueError, match="even height and width"):
    jax.grad(lambda x: jnp.sum(ops.conv_s2(x, w)))(x)


def test_model_with_sub_pixel_layers_equals_flax_layers():
  """Same parameter tree and, to float rounding, the same outputs and gradients."""
  variables = models.init_variables(jax.random.key(0), latent_dim=6, image_size=32)
  params = variables["params"]
  x = jax.random.uniform(jax.random.key(1), (4, 32, 32, 3))
  enc_vars = {"params": params["encoder"], "batch_stats": variables["batch_stats"]["encoder"]}

  def loss(params, plain):
    encoder = models.Encoder(n_outputs=13, plain_layers=plain)
    decoder = models.Decoder(image_size=32, plain_layers=plain)
    out, _ = encoder.apply({**enc_vars, "params": params["encoder"]}, x, train=True,
                           mutable=["batch_stats"])
    recon = decoder.apply({"params": params["decoder"]}, out[:, 1:7])
    return jnp.mean(out ** 2) + jnp.mean(recon ** 2), (out, recon)

  (l_ops, (out_ops, rec_ops)), g_ops = jax.value_and_grad(loss, has_aux=True)(params, False)
  (l_ref, (out_ref, rec_ref)), g_ref = jax.value_and_grad(loss, has_aux=True)(params, True)
  assert _rel(out_ref, out_ops) < 1e-4 and _rel(rec_ref, rec_ops) < 1e-4
  assert np.isclose(float(l_ref), float(l_ops), rtol=1e-5)
  assert jax.tree.structure(g_ref) == jax.tree.structure(g_ops)
  for a, b in zip(jax.tree.leaves(g_ref), jax.tree.leaves(g_ops)):
    assert float(jnp.max(jnp.abs(a - b))) <= 1e-4 * (float(jnp.max(jnp.abs(a))) + 1e-6)
  # Flax's own initialisation of the plain layers gives the same parameter tree.
  plain_enc = models.Encoder(n_outputs=13, plain_layers=True).init(
      jax.random.key(0), x, train=False)["params"]
  assert jax.tree.map(jnp.shape, plain_enc) == jax.tree.map(jnp.shape, params["encoder"])


def test_decode_runs_batch_chunks_and_matches_the_plain_decoder(monkeypatch):
  """The decoder runs the batch as chunks (2, 2, 1 codes here) and gives the plain decoder's
  output and gradients."""
  monkeypatch.setattr(ops, "CPU_BATCH_CHUNK", 2)
  params = models.init_variables(jax.random.key(0), latent_dim=6, image_size=32)["params"]
  z = jax.random.normal(jax.random.key(1), (5, 6))
  seen = []
  original = ops.conv_transpose_s2_chunks

  def spy(chunks, kernel):
    seen.append([c.shape[0] for c in chunks])
    return original(chunks, kernel)

  monkeypatch.setattr(ops, "conv_transpose_s2_chunks", spy)
  chunked = models.decode(params, z)
  if jax.default_backend() == "cpu":
    assert seen == [[2, 2, 1]] * 4  # every layer, one call for all chunks
  plain = models.Decoder(image_size=32, plain_layers=True)
  reference = plain.apply({"params": params["decoder"]}, z)
  assert chunked.shape == reference.shape == (5, 32, 32, 3)
  assert _rel(reference, chunked) < 1e-5
  g_ours = jax.grad(lambda p: jnp.sum(models.decode(p, z) ** 2))(params)["decoder"]
  g_ref = jax.grad(lambda p: jnp.sum(plain.apply({"params": p["decoder"]}, z) ** 2))(params)
  for a, b in zip(jax.tree.leaves(g_ref["decoder"]), jax.tree.leaves(g_ours)):
    assert float(jnp.max(jnp.abs(a - b))) <= 1e-4 * float(jnp.max(jnp.abs(a)))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_chunked_batch_norm_equals_flax_batch_norm_on_the_whole_batch(dtype):
  x = 3.0 + 2.0 * jax.random.normal(jax.random.key(0), (5, 4, 4, 6))
  chunks = [x[:2], x[2:4], x[4:]]
  ours = models.ChunkedBatchNorm(use_running_average=False, dtype=dtype)
  flax_bn = nn.BatchNorm(use_running_average=False, momentum=models.BN_MOMENTUM, dtype=dtype)
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
  eval_ours = models.ChunkedBatchNorm(use_running_average=True, dtype=dtype)
  eval_ref = nn.BatchNorm(use_running_average=True, dtype=dtype)
  np.testing.assert_allclose(
      np.asarray(jnp.concatenate(eval_ours.apply(variables, chunks)), np.float32),
      np.asarray(eval_ref.apply(variables, x), np.float32), atol=tol, rtol=tol)


def test_encoder_on_batch_chunks_equals_the_whole_batch(monkeypatch):
  """Same outputs, batch statistics and gradients whether the batch is split or not."""
  variables = models.init_variables(jax.random.key(0), latent_dim=6, image_size=32)
  x = jax.random.uniform(jax.random.key(1), (5, 32, 32, 3))

  def loss(params):
    out = models.encode({**variables, "params": params}, x, train=True)
    return jnp.mean(out.z_mean ** 2) + jnp.mean(out.y_logit), out

  results = {}
  for chunk in (2, 1000):
    monkeypatch.setattr(ops, "CPU_BATCH_CHUNK", chunk)
    assert len(ops.split_batch(x)) == (3 if chunk == 2 and jax.default_backend() == "cpu" else 1)
    (value, out), grads = jax.value_and_grad(loss, has_aux=True)(variables["params"])
    results[chunk] = (value, out, grads)
  (v_a, out_a, g_a), (v_b, out_b, g_b) = results[2], results[1000]
  assert np.isclose(float(v_a), float(v_b), rtol=1e-5)
  assert _rel(out_b.z_mean, out_a.z_mean) < 1e-5
  for a, b in zip(jax.tree.leaves(out_b.batch_stats), jax.tree.leaves(out_a.batch_stats)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  for a, b in zip(jax.tree.leaves(g_b), jax.tree.leaves(g_a)):
    assert float(jnp.max(jnp.abs(a - b))) <= 1e-4 * (float(jnp.max(jnp.abs(a))) + 1e-6)
