"""The signal registry: each entry against the function it wraps, the epoch-start composition
(blend, tempering, cap, float64 normalisation), its errors, and a signal added in one entry."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from helpers import tiny_config

from jaxface import config as config_lib
from jaxface import resampling
from jaxface.resampling import registry

N = 96


def _inputs(n=N, seed=0):
  rng = np.random.default_rng(seed)
  z_mean = rng.normal(size=(n, 6)).astype(np.float32)
  z_mean[: n // 10, :3] += 3.0  # a rare corner of the latent
  return {"z_mean": z_mean, "face_prob": rng.random(n).astype(np.float32),
          "face_prob_shifted": rng.random(n).astype(np.float32),
          "recon_error": rng.random(n).astype(np.float32),
          "groups": rng.choice(np.array(["DF", "DM", "LF", "LM"]), size=n)}


def _mistake_record(inputs, names):
  """The record of the mistakes (p(face) <= 0.5) of the p(face) inputs ``names``, by group too."""
  record = {}
  for name in names:
    wrong = np.asarray(inputs[name]) <= 0.5
    record[f"mistakes_{name}"] = int(wrong.sum())
    record[f"mistakes_{name}_by_group"] = {
        g: int(np.sum(wrong & (inputs["groups"] == g))) for g in ("DF", "DM", "LF", "LM")}
  return record


def _resampling(**fields):
  rs = config_lib.get_base_config().resampling
  rs.update(fields)
  return rs


def _probabilities(signal, inputs=None, epoch=1, registry_=resampling.SIGNALS, **fields):
  rs = _resampling(signal=signal, **fields)
  return resampling.face_probabilities(rs, inputs or _inputs(), epoch=epoch, seed=3,
                                       registry=registry_)


def _float64(p):
  p = np.asarray(p, np.float64)
  return p / p.sum()


def test_the_registry_holds_the_configs_signals():
  assert config_lib.SIGNALS == ("none",) + tuple(resampling.SIGNALS)
  assert config_lib.SIGNALS == ("none", "groups", "latent", "epistemic", "latent_pca",
                                "clusters", "errors", "error_axis", "shift_errors",
                                "shift_error_axis")
  assert config_lib.BLEND_SIGNALS == ("latent", "epistemic", "latent_pca", "clusters", "errors",
                                      "error_axis", "shift_errors", "shift_error_axis")
  assert config_lib.LATENT_SIGNALS == ("latent", "epistemic", "latent_pca", "clusters",
                                       "error_axis", "shift_error_axis")
  with pytest.raises(TypeError):
    resampling.SIGNALS["toy"] = resampling.SIGNALS["errors"]  # read-only: copy to extend


def test_each_entry_is_the_function_it_wraps_bit_for_bit():
  inputs = _inputs()
  rs = _resampling(bins=8, alpha=0.01, combine="product", components=3, clusters=4,
                   active_variance=0.05, error_kind="loss", error_upweight=3.0, group_power=0.5)
  z = inputs["z_mean"]
  expected = {
      "groups": resampling.group_balanced_probabilities(inputs["groups"], 0.5),
      "latent": resampling.sampling_probabilities(z, 8, 0.01, "product", histogram_impl="auto"),
      "epistemic": resampling.epistemic_probabilities(inputs["recon_error"]),
      "latent_pca": resampling.latent_pca_probabilities(z, 3, 8, 0.01, 0.05),
      "clusters": resampling.cluster_probabilities(z, 4, 3, 0.05, seed=3),
      "errors": resampling.error_probabilities(inputs["face_prob"], 3.0, "loss"),
      "error_axis": resampling.error_axis_probabilities(z, inputs["face_prob"], 1, 8, 0.01,
                                                        "product", "loss", 0.05),
      "shift_errors": resampling.error_probabilities(inputs["face_prob_shifted"], 3.0, "loss"),
      "shift_error_axis": resampling.error_axis_probabilities(
          z, inputs["face_prob_shifted"], 1, 8, 0.01, "product", "loss", 0.05),
  }
  assert set(expected) == set(resampling.SIGNALS)
  for name, want in expected.items():
    rs.signal = name
    got = resampling.SIGNALS[name].probabilities(inputs, rs, 3)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=name)
    p, details = resampling.face_probabilities(rs, inputs, epoch=1, seed=3)
    # The record counts the mistakes of the p(face) the signal reads, nothing else.
    read = [o for o in resampling.SIGNALS[name].outputs if o.startswith("face_prob")]
    assert p.dtype == np.float64 and details == _mistake_record(inputs, read), name
    np.testing.assert_array_equal(p, _float64(want), err_msg=name)


def test_needed_outputs():
  assert resampling.needed_outputs("groups") == ()
  assert resampling.needed_outputs("latent") == ("z_mean",)
  assert resampling.needed_outputs("errors") == ("face_prob",)
  assert resampling.needed_outputs("latent + epistemic") == ("z_mean", "recon_error")
  assert resampling.needed_outputs("errors+latent_pca+clusters") == ("face_prob", "z_mean")
  assert resampling.needed_outputs("shift_error_axis") == ("z_mean", "face_prob_shifted")
  with pytest.raises(ValueError, match="unknown"):
    resampling.needed_outputs("pca")


def test_errors_are_uniform_in_the_first_epoch_exactly():
  inputs = _inputs(n=97)  # 1 / 97 is not a float32 number: the uniform is float64
  p, _ = _probabilities("errors", inputs, epoch=0)
  want = np.full(97, 1 / 97)
  np.testing.assert_array_equal(p, want / want.sum())
  later, _ = _probabilities("errors", inputs, epoch=1)
  assert not np.allclose(later, 1 / 97)


def test_groups_keep_their_float64_probabilities():
  inputs = _inputs()
  p, _ = _probabilities("groups", {"groups": inputs["groups"]}, group_power=1.0)
  np.testing.assert_array_equal(
      p, _float64(resampling.group_balanced_probabilities(inputs["groups"])))


def test_blend_temper_and_cap_compose_in_that_order():
  inputs = _inputs()
  p, details = _probabilities("latent_pca+errors", inputs, blend_weights="3,1", target_ess=0.6,
                              max_weight=1.5)
  mix = resampling.blend(np.stack([
      np.asarray(resampling.latent_pca_probabilities(inputs["z_mean"], 4)),
      np.asarray(resampling.error_probabilities(inputs["face_prob"], 5.0))]), [3.0, 1.0])
  tempered, power = resampling.temper_to_ess(mix, 0.6)
  np.testing.assert_array_equal(p, _float64(resampling.cap_weights(tempered, 1.5)))
  assert details == {"power": float(power), **_mistake_record(inputs, ["face_prob"])}
  assert p.max() <= 1.5 / N * (1 + 1e-5)


def test_non_finite_codes_are_one_error_naming_z_mean():
  inputs = _inputs()
  inputs["z_mean"][5, 2] = np.nan
  for signal in ("latent", "latent_pca", "clusters", "latent+errors", "error_axis"):
    with pytest.raises(FloatingPointError, match=r"non-finite latent means \(z_mean\)"):
      _probabilities(signal, inputs)
  inputs = _inputs()
  inputs["face_prob"][0] = np.inf
  with pytest.raises(FloatingPointError, match="non-finite face_prob"):
    _probabilities("errors", inputs)


def test_bad_signals_and_inputs_are_refused_by_name():
  with pytest.raises(ValueError, match="unknown"):
    _probabilities("latnet")
  with pytest.raises(ValueError, match="can be blended"):
    _probabilities("groups+errors")
  with pytest.raises(ValueError, match=r"reads \['z_mean'\], missing"):
    _probabilities("latent", {"face_prob": np.ones(4, np.float32)})
  with pytest.raises(ValueError, match="one length"):
    _probabilities("errors", {"face_prob": np.ones(4, np.float32), "groups": np.array(["A"])})


def _toy(inputs, rs, seed):
  """A toy signal: weight 1 + the face's first latent coordinate squared."""
  return 1.0 + jnp.square(jnp.asarray(inputs["z_mean"])[:, 0])


def _with_toy(**fields):
  signals = dict(resampling.SIGNALS)
  signals["toy"] = resampling.Signal(_toy, ("z_mean",), needs_latent=True, **fields)
  return signals


def test_a_new_signal_is_one_function_and_one_entry():
  signals = _with_toy()
  inputs = _inputs()
  p, _ = _probabilities("toy", inputs, registry_=signals)
  np.testing.assert_array_equal(p, _float64(_toy(inputs, None, 0)))
  assert resampling.needed_outputs("toy+epistemic", signals) == ("z_mean", "recon_error")
  blended, _ = _probabilities("toy+errors", inputs, registry_=signals, blend_weights="1,1")
  np.testing.assert_allclose(
      blended, 0.5 * _float64(_toy(inputs, None, 0))
      + 0.5 * _float64(resampling.error_probabilities(inputs["face_prob"])), rtol=1e-5)
  # The configuration accepts it with the extended registry, and only there.
  config = tiny_config("dbvae", **{"resampling.signal": "toy+errors"})
  config_lib.validate_config(config, 1, registry=signals)
  with pytest.raises(ValueError, match="config.resampling.signal.*must be one of"):
    config_lib.validate_config(config, 1)
  assert "toy" not in resampling.SIGNALS and "toy" not in config_lib.SIGNALS
  cnn = tiny_config("cnn", **{"resampling.signal": "toy"})
  with pytest.raises(ValueError,
                     match="no latent space: use 'none', 'groups', 'errors' or 'shift_errors'"):
    config_lib.validate_config(cnn, 1, registry=signals)
  alone = _with_toy(blendable=False)
  with pytest.raises(ValueError, match="can be blended"):
    config_lib.validate_config(config, 1, registry=alone)


def test_a_signal_without_positive_finite_mass_is_one_error_naming_it():
  def broken(value):
    return lambda inputs, rs, seed: jnp.full(len(inputs["z_mean"]), value)

  for value, words in ((jnp.nan, "non-finite probabilities"), (0.0, "no positive"),
                       (-1.0, "negative")):
    signals = dict(resampling.SIGNALS, bad=dataclasses.replace(
        resampling.SIGNALS["latent"], probabilities=broken(value)))
    with pytest.raises(FloatingPointError, match=f"signal 'bad' gave .*{words}"):
      _probabilities("bad", registry_=signals)


def test_config_parsing_lives_with_the_registry():
  assert config_lib.signal_parts is registry.signal_parts
  assert config_lib.blend_weights is registry.blend_weights
  assert registry.blend_weights(_resampling(signal="latent+errors")) == [1.0, 1.0]
