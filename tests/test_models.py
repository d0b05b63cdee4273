"""Tests of jaxface.models: architecture (filters, kernels, strides), shapes for the standard
CNN and the VAE, batch-norm state, reparameterisation, dtype path and argument checks.

Speed: random initialisation compiles one truncated-normal program per parameter shape, which
is slow on CPU. Shapes and structure are therefore checked with ``jax.eval_shape`` of
:func:`models.init_variables` (no compilation), the numerical tests run on variables of exactly
that structure filled from NumPy, and one test runs the real initialiser on a tiny model.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxface import config as config_lib
from jaxface import cpu_fast, models, train

# One jitted forward for the whole module (one compilation per input shape / mode). XLA's
# backend optimisations are turned down for these test-only jits: compilation, not execution,
# dominates on CPU, and this halves it.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
_forward = jax.jit(models.forward, static_argnames=("train", "dtype", "impl"),
                   compiler_options=FAST_COMPILE)
_decode = jax.jit(models.decode, static_argnames=("impl",), compiler_options=FAST_COMPILE)


def _abstract_variables(latent_dim, n_filters=12, image_size=64):
  return jax.eval_shape(
      functools.partial(models.init_variables, latent_dim=latent_dim, n_filters=n_filters,
                        image_size=image_size), jax.random.PRNGKey(0))


def _shapes(tree):
  return jax.tree_util.tree_map(lambda a: tuple(a.shape), tree)


@functools.lru_cache(maxsize=None)
def _variables(latent_dim, n_filters=12, image_size=64, seed=0):
  """Variables with init_variables' exact structure, filled with LeCun-scaled NumPy noise."""
  abstract = _abstract_variables(latent_dim, n_filters, image_size)
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if name == "kernel":
      fan_in = int(np.prod(leaf.shape[:-1]))
      value = rng.normal(size=leaf.shape) / np.sqrt(fan_in)
    elif name == "bias":
      value = 0.05 * rng.normal(size=leaf.shape)
    elif name in ("scale", "var"):
      value = np.ones(leaf.shape)
    else:  # batch-norm running mean
      value = np.zeros(leaf.shape)
    return jnp.asarray(value, jnp.float32)

  return jax.tree_util.tree_map_with_path(fill, abstract)


def _images(batch, size, seed=0):
  return jnp.asarray(np.random.default_rng(seed).uniform(size=(batch, size, size, 3)),
                     jnp.float32)


def _allclose_tree(a, b):
  return all(np.array_equal(np.asarray(x), np.asarray(y))
             for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


# ----------------------------------------------------------------------------------------------
# Architecture: parameter shapes, strides.
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("image_size", [64, 128])
@pytest.mark.parametrize("latent_dim", [0, 5])
def test_encoder_parameter_shapes(latent_dim, image_size):
  enc = _shapes(_abstract_variables(latent_dim, image_size=image_size)["params"]["encoder"])
  # Filters 12/24/48/72, kernels 5, 5, 3, 3 (HWIO).
  assert enc["Conv_0"] == {"kernel": (5, 5, 3, 12), "bias": (12,)}
  assert enc["Conv_1"] == {"kernel": (5, 5, 12, 24), "bias": (24,)}
  assert enc["Conv_2"] == {"kernel": (3, 3, 24, 48), "bias": (48,)}
  assert enc["Conv_3"] == {"kernel": (3, 3, 48, 72), "bias": (72,)}
  for i, c in enumerate((12, 24, 48, 72)):
    assert enc[f"BatchNorm_{i}"] == {"scale": (c,), "bias": (c,)}
  # Four stride-2 convolutions: the flattened map is (S/16)^2 * 72.
  side = image_size // 16
  assert enc["Dense_0"] == {"kernel": (side * side * 72, 512), "bias": (512,)}
  assert enc["Dense_1"] == {"kernel": (512, 2 * latent_dim + 1), "bias": (2 * latent_dim + 1,)}
  assert set(enc) == {f"Conv_{i}" for i in range(4)} | {f"BatchNorm_{i}" for i in range(4)} | {
      "Dense_0", "Dense_1"}


@pytest.mark.parametrize("impl", ["flax", "cpu_fast"])
@pytest.mark.parametrize("image_size", [64, 128])
def test_encoder_strides_are_two(image_size, impl):
  abstract = _abstract_variables(3, image_size=image_size)
  encoder = models.networks(impl)[0](n_outputs=7)
  enc_vars = {"params": abstract["params"]["encoder"],
              "batch_stats": abstract["batch_stats"]["encoder"]}
  _, inter = jax.eval_shape(
      lambda v, x: encoder.apply(v, x, train=False, capture_intermediates=True,
                                 mutable=["intermediates"]),
      enc_vars, jax.ShapeDtypeStruct((2, image_size, image_size, 3), jnp.float32))
  inter = inter["intermediates"]
  for i, c in enumerate((12, 24, 48, 72)):
    side = image_size // 2 ** (i + 1)
    out = inter[f"Conv_{i}"]["__call__"][0]
    out = out if impl == "cpu_fast" else [out]  # cpu_fast: a list of batch chunks
    assert isinstance(out, list) and sum(chunk.shape[0] for chunk in out) == 2
    assert all(chunk.shape[1:] == (side, side, c) for chunk in out)


@pytest.mark.parametrize("image_size", [64, 128])
def test_decoder_parameter_shapes_mirror_encoder(image_size):
  params = _abstract_variables(4, image_size=image_size)["params"]
  dec = _shapes(params["decoder"])
  side = image_size // 16
  assert dec["Dense_0"] == {"kernel": (4, side * side * 72), "bias": (side * side * 72,)}
  assert dec["ConvTranspose_0"] == {"kernel": (3, 3, 72, 48), "bias": (48,)}
  assert dec["ConvTranspose_1"] == {"kernel": (3, 3, 48, 24), "bias": (24,)}
  assert dec["ConvTranspose_2"] == {"kernel": (5, 5, 24, 12), "bias": (12,)}
  assert dec["ConvTranspose_3"] == {"kernel": (5, 5, 12, 3), "bias": (3,)}
  # The helpers read the architecture back from the parameter shapes.
  assert models.latent_dim_of(params) == 4
  assert models.n_filters_of(params) == 12
  assert models.image_size_of_decoder(params) == image_size


def test_standard_cnn_has_no_decoder_and_one_output():
  abstract = _abstract_variables(0)
  assert set(abstract["params"]) == {"encoder"}
  assert set(abstract["batch_stats"]) == {"encoder"}
  assert models.latent_dim_of(abstract["params"]) == 0


def test_n_filters_scales_all_layers():
  enc = _shapes(_abstract_variables(2, n_filters=5)["params"]["encoder"])
  assert [enc[f"Conv_{i}"]["kernel"][-1] for i in range(4)] == [5, 10, 20, 30]


# ----------------------------------------------------------------------------------------------
# Output shapes.
# ----------------------------------------------------------------------------------------------


def _check_forward_shapes(out, latent_dim, batch, image_size):
  k = latent_dim
  assert out.y_logit.shape == (batch,)
  assert out.z_mean.shape == (batch, k)
  assert out.z_logvar.shape == (batch, k)
  assert out.z.shape == (batch, k)
  if k == 0:
    assert out.x_recon is None
  else:
    assert out.x_recon.shape == (batch, image_size, image_size, 3)
    assert out.x_recon.dtype == jnp.float32
  for a in (out.y_logit, out.z_mean, out.z_logvar, out.z):
    assert a.dtype == jnp.float32


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("image_size", [64, 128])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("latent_dim", [0, 5])
def test_forward_shapes_abstract(latent_dim, batch, image_size, train):
  # Full grid by shape inference (no compilation); the real runs below cover a subset.
  abstract = _abstract_variables(latent_dim, image_size=image_size)
  x = jax.ShapeDtypeStruct((batch, image_size, image_size, 3), jnp.float32)
  out = jax.eval_shape(functools.partial(models.forward, train=train), abstract, x,
                       jax.random.PRNGKey(0))
  _check_forward_shapes(out, latent_dim, batch, image_size)
  assert _shapes(out.batch_stats) == _shapes(abstract["batch_stats"])


# (latent_dim, batch, image_size) run for real: each model, batch size and image size at least
# once. (5, 3, 64) is the configuration the other numerical tests reuse (compiled once).
@pytest.mark.parametrize("latent_dim,batch,image_size",
                         [(0, 1, 64), (0, 3, 128), (5, 3, 64), (5, 1, 128)])
def test_forward_shapes_and_values(latent_dim, batch, image_size):
  variables = _variables(latent_dim, image_size=image_size)
  out = _forward(variables, _images(batch, image_size))
  _check_forward_shapes(out, latent_dim, batch, image_size)
  for a in (out.y_logit, out.z_mean, out.z_logvar) + ((out.x_recon,) if latent_dim else ()):
    assert np.all(np.isfinite(np.asarray(a)))
  if latent_dim:
    # Without a key the decoder sees the mean.
    np.testing.assert_array_equal(np.asarray(out.z), np.asarray(out.z_mean))
  if batch > 1:
    # Different images give different outputs (no accidental batch collapse).
    assert not np.allclose(np.asarray(out.y_logit[0]), np.asarray(out.y_logit[1]))
    if latent_dim:
      assert not np.allclose(np.asarray(out.x_recon[0]), np.asarray(out.x_recon[1]))


def test_cnn_cannot_decode():
  variables = _variables(0)
  with pytest.raises(ValueError):
    models.decode(variables["params"], jnp.zeros((1, 0)))
  with pytest.raises(ValueError):
    models.decode(variables["params"], jnp.zeros((1, 4)))


def test_vae_encoder_output_split():
  # y_logit is output 0 of the last layer, z_mean the next k, z_logvar the last k.
  k = 5
  variables = _variables(k)
  x = _images(3, 64)
  out = _forward(variables, x)
  encoder = models.networks("auto")[0](n_outputs=2 * k + 1)
  raw = jax.jit(lambda v, x: encoder.apply(v, x, train=False), compiler_options=FAST_COMPILE)(
      {"params": variables["params"]["encoder"],
       "batch_stats": variables["batch_stats"]["encoder"]}, x)
  raw = np.asarray(raw)
  assert raw.shape == (3, 2 * k + 1)
  np.testing.assert_allclose(np.asarray(out.y_logit), raw[:, 0], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(out.z_mean), raw[:, 1:k + 1], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(out.z_logvar), raw[:, k + 1:], rtol=1e-5, atol=1e-6)


def test_forward_with_key_samples_and_decodes_the_sample():
  k = 5
  variables = _variables(k)
  x = _images(3, 64)
  key = jax.random.PRNGKey(7)
  out = _forward(variables, x, key)
  expected_z = np.asarray(out.z_mean) + np.exp(0.5 * np.asarray(out.z_logvar)) * np.asarray(
      jax.random.normal(key, out.z_mean.shape))
  np.testing.assert_allclose(np.asarray(out.z), expected_z, rtol=1e-4, atol=1e-5)
  assert not np.allclose(np.asarray(out.z), np.asarray(out.z_mean))
  np.testing.assert_allclose(np.asarray(out.x_recon),
                             np.asarray(_decode(variables["params"], out.z)), rtol=1e-4,
                             atol=1e-5)
  # Same key, same sample; the mean-decoded reconstruction differs from the sampled one.
  again = _forward(variables, x, key)
  np.testing.assert_array_equal(np.asarray(again.z), np.asarray(out.z))
  assert not np.allclose(np.asarray(_forward(variables, x).x_recon), np.asarray(out.x_recon))


@pytest.mark.parametrize("image_size", [32, 64, 128])
def test_decoder_output_size_matches_input(image_size):
  params = _abstract_variables(3, image_size=image_size)["params"]
  recon = jax.eval_shape(models.decode, params, jax.ShapeDtypeStruct((2, 3), jnp.float32))
  assert recon.shape == (2, image_size, image_size, 3)
  assert recon.dtype == jnp.float32


# ----------------------------------------------------------------------------------------------
# Batch norm: train vs eval.
# ----------------------------------------------------------------------------------------------


def _numpy_conv_stride2_same(x, w, b):
  """Plain NumPy stride-2 SAME convolution (NHWC, HWIO), TensorFlow/XLA padding convention."""
  bsz, h, wd, _ = x.shape
  kh, kw, _, c_out = w.shape
  oh, ow = -(-h // 2), -(-wd // 2)
  pad_h = max((oh - 1) * 2 + kh - h, 0)
  pad_w = max((ow - 1) * 2 + kw - wd, 0)
  xp = np.pad(x, ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2),
                  (0, 0)))
  out = np.zeros((bsz, oh, ow, c_out))
  for i in range(kh):
    for j in range(kw):
      patch = xp[:, i:i + 2 * oh:2, j:j + 2 * ow:2, :]
      out += patch @ w[i, j]
  return out + b


def test_train_updates_batch_stats_and_eval_does_not():
  variables = _variables(5)
  x = _images(3, 64)
  old = variables["batch_stats"]
  out_eval = _forward(variables, x, train=False)
  assert _allclose_tree(out_eval.batch_stats, old)
  out_train = _forward(variables, x, train=True)
  assert _shapes(out_train.batch_stats) == _shapes(old)
  for layer in range(4):
    new = out_train.batch_stats["encoder"][f"BatchNorm_{layer}"]
    prev = old["encoder"][f"BatchNorm_{layer}"]
    assert not np.allclose(np.asarray(new["mean"]), np.asarray(prev["mean"]))
    assert not np.allclose(np.asarray(new["var"]), np.asarray(prev["var"]))
  # First layer: the running mean moves by (1 - momentum) * batch mean of relu(conv(x)), which
  # is non-negative (ReLU comes before batch norm), with the encoder's momentum 0.9.
  mean0 = np.asarray(out_train.batch_stats["encoder"]["BatchNorm_0"]["mean"])
  assert np.all(mean0 >= 0)
  w = np.asarray(variables["params"]["encoder"]["Conv_0"]["kernel"], np.float64)
  b = np.asarray(variables["params"]["encoder"]["Conv_0"]["bias"], np.float64)
  expected = 0.1 * _numpy_conv_stride2_same(np.asarray(x, np.float64), w, b).clip(0).mean(
      axis=(0, 1, 2))
  np.testing.assert_allclose(mean0, expected, rtol=1e-4, atol=1e-7)


def test_eval_mode_is_per_sample_train_mode_is_not():
  # With running statistics each sample's output is independent of the rest of the batch; with
  # batch statistics it is not.
  variables = _variables(5)
  x = _images(3, 64)
  x2 = x.at[1:].set(_images(2, 64, seed=5))
  e1, e2 = _forward(variables, x), _forward(variables, x2)
  np.testing.assert_allclose(np.asarray(e1.y_logit[0]), np.asarray(e2.y_logit[0]), rtol=1e-5,
                             atol=1e-6)
  t1, t2 = _forward(variables, x, train=True), _forward(variables, x2, train=True)
  assert not np.allclose(np.asarray(t1.y_logit[0]), np.asarray(t2.y_logit[0]), rtol=1e-5,
                         atol=1e-6)


# ----------------------------------------------------------------------------------------------
# bfloat16 compute path.
# ----------------------------------------------------------------------------------------------


def test_bfloat16_path_gives_float32_close_to_float32_path():
  variables = _variables(5)
  x = _images(3, 64)
  ref = _forward(variables, x)
  low = _forward(variables, x, dtype=jnp.bfloat16)
  for name in ("y_logit", "z_mean", "z_logvar", "x_recon"):
    a, b = np.asarray(getattr(ref, name)), getattr(low, name)
    assert b.dtype == jnp.float32, name
    b = np.asarray(b)
    assert b.shape == a.shape
    scale = max(1.0, float(np.abs(a).max()))
    np.testing.assert_allclose(b, a, atol=0.05 * scale, err_msg=name)
  # It really ran in reduced precision: not bit-identical.
  assert not np.array_equal(np.asarray(low.x_recon), np.asarray(ref.x_recon))


# ----------------------------------------------------------------------------------------------
# Argument checks.
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("image_size", [70, 0, 8, -16, 100, 64.0])
def test_bad_image_size_raises(image_size):
  with pytest.raises(ValueError):
    models.init_variables(jax.random.PRNGKey(0), latent_dim=2, image_size=image_size)
  with pytest.raises(ValueError):
    models.check_image_size(image_size)


def test_good_image_sizes_pass_check():
  for s in (16, 32, 64, 128):
    models.check_image_size(s)


def test_bad_latent_dim_and_filters_raise():
  with pytest.raises(ValueError):
    models.init_variables(jax.random.PRNGKey(0), latent_dim=-1)
  with pytest.raises(ValueError):
    models.init_variables(jax.random.PRNGKey(0), latent_dim=2, n_filters=0)


def test_batch_norm_statistics_make_eval_mode_equal_train_mode():
  variables = models.init_variables(jax.random.key(0), latent_dim=3, image_size=32)
  x = jax.random.uniform(jax.random.key(1), (8, 32, 32, 3))
  stats = models.batch_norm_statistics(variables, x)
  assert jax.tree.structure(stats) == jax.tree.structure(variables["batch_stats"])
  train_out = models.encode(variables, x, train=True)
  eval_out = models.encode({"params": variables["params"], "batch_stats": stats}, x)
  np.testing.assert_allclose(eval_out.y_logit, train_out.y_logit, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(eval_out.z_mean, train_out.z_mean, rtol=1e-4, atol=1e-4)
  # The running averages were not used: they differ from this batch's statistics.
  assert not np.allclose(jax.tree.leaves(stats)[0], jax.tree.leaves(variables["batch_stats"])[0])


# ----------------------------------------------------------------------------------------------
# Implementations: 'flax' (stock Linen, what accelerators run) and 'cpu_fast' (jaxface.cpu_fast).
# ----------------------------------------------------------------------------------------------


def _rel_close(a, b, tol=1e-4, err_msg=""):
  a, b = np.asarray(a), np.asarray(b)
  assert a.shape == b.shape, err_msg
  assert np.max(np.abs(a - b)) <= tol * (np.max(np.abs(a)) + 1e-6), err_msg


def test_impls_are_checked_and_match_the_config_field():
  assert models.IMPLS == config_lib.MODEL_IMPLS == ("auto", "flax", "cpu_fast")
  variables = _abstract_variables(2, n_filters=2, image_size=16)
  x = jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32)
  calls = [
      lambda: models.init_variables(jax.random.key(0), latent_dim=2, impl="torch"),
      lambda: jax.eval_shape(functools.partial(models.encode, impl="torch"), variables, x),
      lambda: jax.eval_shape(functools.partial(models.forward, impl="torch"), variables, x),
      lambda: jax.eval_shape(functools.partial(models.batch_norm_statistics, impl="torch"),
                             variables, x),
      lambda: models.decode(variables["params"], jnp.zeros((1, 2)), impl="torch"),
  ]
  for call in calls:
    with pytest.raises(ValueError, match=r"impl must be one of \('auto', 'flax', 'cpu_fast'\)"):
      call()
  config = config_lib.get_base_config()
  assert config.model.impl == "auto"
  config.model.impl = "torch"
  with pytest.raises(ValueError, match="config.model.impl"):
    config_lib.validate_config(config, num_devices=1)


def _injected_layers(impl):
  """The layers and batch layout an implementation injects into the one Encoder / Decoder."""
  encoder_cls, decoder_cls = models.networks(impl)
  encoder, decoder = encoder_cls(n_outputs=1), decoder_cls()
  assert type(encoder) is models.Encoder and type(decoder) is models.Decoder
  return (encoder.conv, encoder.norm, encoder.split_batch, encoder.join_batch,
          decoder.conv_transpose, decoder.split_batch, decoder.join_batch)


def test_auto_is_cpu_fast_on_cpu_and_flax_elsewhere(monkeypatch):
  stock = (nn.Conv, nn.BatchNorm, models.whole_batch, models.whole_batch, nn.ConvTranspose,
           models.whole_batch, models.whole_batch)
  fast = (cpu_fast.StridedConv, cpu_fast.ChunkedBatchNorm, cpu_fast.split_batch,
          cpu_fast.join_batch, cpu_fast.StridedConvTranspose, cpu_fast.split_batch,
          cpu_fast.join_batch)
  assert _injected_layers("flax") == stock
  assert _injected_layers("cpu_fast") == fast
  monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
  assert models.resolve_impl("auto") == "cpu_fast"
  assert _injected_layers("auto") == fast
  for backend in ("gpu", "tpu"):
    monkeypatch.setattr(jax, "default_backend", lambda backend=backend: backend)
    assert models.resolve_impl("auto") == "flax"
    assert _injected_layers("auto") == stock
  assert models.resolve_impl("cpu_fast") == "cpu_fast"  # explicit choices are kept


def test_accelerator_path_traces_the_flax_networks(monkeypatch):
  """On an accelerator backend, 'auto' traces exactly the programs of impl='flax'."""
  variables = _variables(2, n_filters=2, image_size=16)
  x = _images(3, 16)
  programs = {}
  for backend in ("gpu", "cpu"):
    monkeypatch.setattr(jax, "default_backend", lambda backend=backend: backend)
    for impl in ("auto", "flax"):
      programs[backend, impl] = str(jax.make_jaxpr(
          functools.partial(models.forward, train=True, impl=impl))(
              variables, x, jax.random.key(0)))
  assert programs["gpu", "auto"] == programs["gpu", "flax"]
  assert programs["cpu", "auto"] != programs["cpu", "flax"]


@pytest.mark.parametrize("shape", [(5, 5, 3, 12), (3, 3, 24, 48), (7, 33), (2, 4, 6)])
def test_lecun_normal_draws_the_values_of_flax_s_default_initializer(shape):
  key = jax.random.key(11)
  np.testing.assert_array_equal(np.asarray(models.lecun_normal(key, shape)),
                                np.asarray(nn.initializers.lecun_normal()(key, shape)))


def test_impls_make_the_same_variables():
  """Same names, shapes and (from the same key) values: checkpoints are interchangeable."""
  trees = {impl: models.init_variables(jax.random.key(3), latent_dim=3, n_filters=2,
                                       image_size=16, impl=impl) for impl in models.IMPLS}
  reference = trees["flax"]
  for impl, tree in trees.items():
    assert jax.tree.structure(tree) == jax.tree.structure(reference), impl
    assert _shapes(tree) == _shapes(reference), impl
    assert _allclose_tree(tree, reference), impl


@functools.lru_cache(maxsize=None)
def _impl_outputs(impl, batch):
  """Everything the networks compute, for one implementation, on one batch (one compile)."""
  variables = _variables(4, n_filters=4, image_size=32)
  x = _images(batch, 32, seed=batch)
  z = jnp.asarray(np.random.default_rng(batch).normal(size=(batch, 4)), jnp.float32)

  def loss(params):
    out = models.forward({"params": params, "batch_stats": variables["batch_stats"]}, x,
                         jax.random.key(1), train=True, impl=impl)
    return (jnp.mean(jnp.square(out.y_logit)) + jnp.mean(jnp.square(out.z_mean))
            + jnp.mean(jnp.abs(out.x_recon - x)))

  def everything(variables):
    train = models.encode(variables, x, train=True, impl=impl)
    return {"train": train, "eval": models.encode(variables, x, impl=impl),
            "decode": models.decode(variables["params"], z, impl=impl),
            "stats": models.batch_norm_statistics(variables, x, impl=impl),
            "grads": jax.grad(loss)(variables["params"])}

  return jax.jit(everything, compiler_options=FAST_COMPILE)(variables)


@pytest.mark.parametrize("batch", [37])
def test_flax_impl_on_cpu_equals_cpu_fast(batch):
  """The accelerator path (impl='flax', here on CPU) against the CPU fast path: encoder in train
  and eval mode, decoder, batch statistics and parameter gradients, on an odd batch of more
  than one chunk."""
  assert len(cpu_fast.split_batch(jnp.zeros((batch, 1)))) == 2
  flax_out, fast_out = _impl_outputs("flax", batch), _impl_outputs("cpu_fast", batch)
  assert jax.tree.structure(flax_out) == jax.tree.structure(fast_out)
  assert _shapes(flax_out["grads"]) == _shapes(_variables(4, 4, 32)["params"])
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(flax_out),
                          jax.tree.leaves(fast_out)):
    _rel_close(a, b, err_msg=jax.tree_util.keystr(path))
  # Not vacuous: training moved the statistics and the gradients are not zero.
  assert not _allclose_tree(flax_out["train"].batch_stats, _variables(4, 4, 32)["batch_stats"])
  assert all(float(jnp.max(jnp.abs(g))) > 0 for g in jax.tree.leaves(flax_out["grads"]))


def _tiny():
  variables = _variables(2, n_filters=2, image_size=16)
  x = _images(3, 16, seed=2)
  z = jnp.asarray(np.random.default_rng(3).normal(size=(3, 2)), jnp.float32)
  return variables, x, z


def _z_mean(impl, variables):
  return lambda x: models.encode(variables, x, train=True, impl=impl).z_mean


def test_jvp_through_flax_encode_and_decode_matches_reverse_mode():
  # <u, J v> from forward mode equals <J^T u, v> from the cpu_fast reverse mode.
  variables, x, z = _tiny()
  rng = np.random.default_rng(4)
  cases = [(_z_mean("flax", variables), _z_mean("cpu_fast", variables), x),
           (lambda z: models.decode(variables["params"], z, impl="flax"),
            lambda z: models.decode(variables["params"], z, impl="cpu_fast"), z)]
  for flax_fn, fast_fn, primal in cases:
    tangent = jnp.asarray(rng.normal(size=primal.shape), jnp.float32)
    y, y_dot = jax.jit(lambda p, t, f=flax_fn: jax.jvp(f, (p,), (t,)),
                       compiler_options=FAST_COMPILE)(primal, tangent)
    u = jnp.asarray(rng.normal(size=y.shape), jnp.float32)
    (pullback,) = jax.jit(lambda p, u, f=fast_fn: jax.vjp(f, p)[1](u),
                          compiler_options=FAST_COMPILE)(primal, u)
    np.testing.assert_allclose(float(jnp.vdot(u, y_dot)), float(jnp.vdot(pullback, tangent)),
                               rtol=1e-4)
  with pytest.raises(TypeError):  # the custom_vjp layers are reverse-mode only
    jax.jvp(_z_mean("cpu_fast", variables), (x,), (x,))


def test_jacfwd_through_flax_encode_and_decode_matches_jacrev():
  variables, x, z = _tiny()
  y_logit = lambda impl: lambda x: models.encode(variables, x, impl=impl).y_logit  # noqa: E731
  jit = functools.partial(jax.jit, compiler_options=FAST_COMPILE)
  _rel_close(jit(jax.jacrev(y_logit("cpu_fast")))(x), jit(jax.jacfwd(y_logit("flax")))(x))
  decode = lambda impl: functools.partial(models.decode, variables["params"],  # noqa: E731
                                          impl=impl)
  _rel_close(jit(jax.jacrev(decode("cpu_fast")))(z), jit(jax.jacfwd(decode("flax")))(z))


def test_vmap_through_flax_encode_and_decode_equals_a_loop():
  variables, x, z = _tiny()
  xs, zs = jnp.stack([x, x[::-1] * 0.5]), jnp.stack([z, -z])
  jit = functools.partial(jax.jit, compiler_options=FAST_COMPILE)
  mapped = jit(jax.vmap(_z_mean("flax", variables)))(xs)
  decoded = jit(jax.vmap(functools.partial(models.decode, variables["params"], impl="flax")))(zs)
  fast_encode = jit(_z_mean("cpu_fast", variables))
  fast_decode = jit(functools.partial(models.decode, variables["params"], impl="cpu_fast"))
  for i in range(2):
    _rel_close(fast_encode(xs[i]), mapped[i])
    _rel_close(fast_decode(zs[i]), decoded[i])
  assert not np.allclose(mapped[0], mapped[1])


def test_hessian_through_flax_encode_and_decode_matches_reverse_over_reverse():
  variables, x, z = _tiny()
  directions = _images(2, 16, seed=6) - 0.5

  def encoded(impl):  # a smooth scalar of the train-mode encoder along two image directions
    return lambda t: jnp.sum(jnp.tanh(_z_mean(impl, variables)(
        x + t[0] * directions[0] + t[1] * directions[1])))

  def decoded(impl):
    return lambda z: jnp.sum(jnp.tanh(models.decode(variables["params"], z, impl=impl)))

  t = jnp.asarray([0.1, -0.2])
  for fn, primal in ((encoded, t), (decoded, z)):
    hessian = jax.jit(jax.hessian(fn("flax")), compiler_options=FAST_COMPILE)(primal)
    assert hessian.shape == primal.shape * 2
    reverse = jax.jit(jax.jacrev(jax.jacrev(fn("cpu_fast"))), compiler_options=FAST_COMPILE)
    _rel_close(reverse(primal), hessian, tol=1e-3)
    assert float(jnp.max(jnp.abs(hessian))) > 0


@pytest.mark.parametrize("impl", ["flax", "cpu_fast"])
def test_axis_name_pools_batch_norm_statistics_over_the_mapped_axis(impl):
  """Encoder(axis_name=...) under a mapped axis normalises with the statistics of all shards."""
  variables = _variables(2, n_filters=2, image_size=16)
  enc_vars = {"params": variables["params"]["encoder"],
              "batch_stats": variables["batch_stats"]["encoder"]}
  x = _images(8, 16, seed=7)
  encoder_cls = models.networks(impl)[0]

  def run(encoder, images):
    return encoder.apply(enc_vars, images, train=True, mutable=["batch_stats"])

  whole, whole_stats = run(encoder_cls(n_outputs=5, n_filters=2), x)
  shards = x.reshape((2, 4) + x.shape[1:])
  pooled, pooled_stats = jax.vmap(
      lambda s: run(encoder_cls(n_outputs=5, n_filters=2, axis_name="batch"), s),
      axis_name="batch")(shards)
  _rel_close(whole, pooled.reshape(whole.shape))
  for a, b in zip(jax.tree.leaves(whole_stats), jax.tree.leaves(pooled_stats)):
    _rel_close(np.broadcast_to(a, b.shape), b)
  alone, _ = jax.vmap(lambda s: run(encoder_cls(n_outputs=5, n_filters=2), s))(shards)
  assert not np.allclose(whole, alone.reshape(whole.shape), atol=1e-4)


def _standardised(x):
  """NumPy reference of the input norm at its initial scale 1 and offset 0: each image less
  its mean over pixels and channels, over sqrt(its variance + epsilon)."""
  x = np.asarray(x, np.float64)
  mean = x.mean(axis=(1, 2, 3), keepdims=True)
  var = x.var(axis=(1, 2, 3), keepdims=True)
  return ((x - mean) / np.sqrt(var + models.INPUT_NORM_EPSILON)).astype(np.float32)


@pytest.mark.parametrize("impl", models.IMPLS)
def test_input_norm_is_the_plain_encoder_on_standardised_images(impl):
  variables = models.init_variables(jax.random.key(5), latent_dim=2, n_filters=4,
                                    image_size=32, impl=impl, input_norm=True)
  assert models.input_norm_of(variables["params"])
  plain_params = dict(variables["params"])
  plain_params["encoder"] = {name: layer for name, layer in variables["params"]["encoder"].items()
                             if name != models.INPUT_NORM}
  plain = {"params": plain_params, "batch_stats": variables["batch_stats"]}
  assert not models.input_norm_of(plain["params"])
  x = _images(6, 32, seed=4) * 0.3  # a dim batch
  for train in (False, True):
    got = models.encode(variables, x, train=train, impl=impl)
    want = models.encode(plain, jnp.asarray(_standardised(x)), train=train, impl=impl)
    np.testing.assert_allclose(np.asarray(got.y_logit), np.asarray(want.y_logit), rtol=1e-4,
                               atol=1e-5)
    np.testing.assert_allclose(np.asarray(got.z_mean), np.asarray(want.z_mean), rtol=1e-4,
                               atol=1e-5)


def test_input_norm_makes_the_classifier_blind_to_exposure_and_contrast():
  variables = models.init_variables(jax.random.key(6), latent_dim=0, n_filters=4,
                                    image_size=32, input_norm=True)
  x = _images(4, 32, seed=7)
  logit = np.asarray(models.encode(variables, x).y_logit)
  darker = np.asarray(models.encode(variables, 0.4 * x + 0.05).y_logit)
  np.testing.assert_allclose(darker, logit, rtol=2e-2, atol=2e-3)  # up to the epsilon floor
  without = models.init_variables(jax.random.key(6), latent_dim=0, n_filters=4, image_size=32)
  assert models.INPUT_NORM not in without["params"]["encoder"]
  assert not np.allclose(np.asarray(models.encode(without, 0.4 * x + 0.05).y_logit),
                         np.asarray(models.encode(without, x).y_logit), rtol=2e-2, atol=2e-3)


def test_config_input_norm_builds_the_layer_and_must_be_a_bool():
  config = config_lib.get_base_config()
  config.model.kind, config.model.latent_dim, config.resampling.signal = "cnn", 0, "none"
  config.model.n_filters, config.data.image_size = 4, 32
  config.model.input_norm = True
  state = train.create_train_state(jax.random.key(0), config, train.make_optimizer(config))
  assert models.input_norm_of(state.params)
  fields = config.to_dict()
  fields["model"]["input_norm"] = "yes"  # e.g. from a hand-edited config.json
  with pytest.raises(ValueError, match="config.model.input_norm"):
    config_lib.validate_config(ml_collections.ConfigDict(fields), 1)
