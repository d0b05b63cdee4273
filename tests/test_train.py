"""End-to-end tests of the training runner on tiny planted-bias data."""

from __future__ import annotations

import ast
import functools
import json
import logging
import re
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jaxface import config as config_lib
from jaxface import data as data_lib
from jaxface import checkpoints, inference, losses, models, sharding, train

from helpers import assert_one_and_four_devices_agree, run_on_four_devices, tiny_config

REPO = Path(__file__).resolve().parents[1]


def flat_params(variables):
  return np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree.leaves(variables)])


@pytest.mark.parametrize("kind", ["cnn", "ssvae", "dbvae"])
def test_end_to_end_each_model(tmp_path, kind):
  final = train.train_and_evaluate(tiny_config(kind), tmp_path).metrics
  assert final["steps"] == 12
  metrics = json.loads((tmp_path / "metrics.json").read_text())
  assert metrics["kind"] == kind
  test = metrics["eval"]["test"]
  assert set(test["groups"]) >= {"LF", "DF"} or len(test["groups"]) >= 2
  assert 0.0 <= metrics["eval"]["val_accuracy"] <= 1.0
  assert len(metrics["epochs"]) == 2
  op = test["operating_point"]  # the threshold at 1% of the validation non-faces
  assert op["threshold_from"] == "val" and op["fpr_target"] == 0.01 and 0 <= op["fpr"] <= 1
  assert metrics["eval"]["val"]["operating_point"]["threshold"] == op["threshold"]
  lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert all("test_op_E_A" in line for line in lines if line["kind"] == "eval")
  logged_steps = [line["step"] for line in lines if "loss" in line]
  assert logged_steps == [2, 4, 6, 8, 10, 12]  # every log_every_steps, not every step
  assert all(np.isfinite(line["loss"]) for line in lines if "loss" in line)
  assert (tmp_path / "config.json").exists()
  assert any((tmp_path / "tensorboard").iterdir())
  if kind == "dbvae":
    assert len(metrics["resampling"]) == 2  # one pass per epoch
    info = metrics["resampling"][0]
    assert 0 < info["ess_fraction"] <= 1.0
    assert abs(sum(info["mass_by_group"].values()) - 1.0) < 1e-6
  else:
    assert metrics["resampling"] == []
  config, variables = checkpoints.load_run(tmp_path)
  assert config.model.kind == kind
  assert "params" in variables and "batch_stats" in variables


@pytest.mark.parametrize("overrides", [
    {"resampling.signal": "latent+epistemic"},
    {"dtype": "bfloat16"},
    {"bn_recalibration_batches": 2, "eval_batch_size": 16},
], ids=["latent+epistemic", "bfloat16", "bn_recalibration"])
def test_end_to_end_dbvae_variants(tmp_path, overrides):
  config = tiny_config("dbvae", num_epochs=1, steps_per_epoch=4, **overrides)
  final = train.train_and_evaluate(config, tmp_path).metrics
  assert final["steps"] == 4
  lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  losses = [line["loss"] for line in lines if "loss" in line]
  assert len(losses) == 2 and np.isfinite(losses).all()
  assert 0.0 <= final["eval"]["val_accuracy"] <= 1.0
  assert np.isfinite(final["eval"]["test"]["E_A"]) and np.isfinite(final["eval"]["test"]["Var_A"])
  info = final["resampling"][0]
  assert np.isfinite(info["ess"]) and 0 < info["ess_fraction"] <= 1.0
  _, variables = checkpoints.load_run(tmp_path)
  assert np.isfinite(flat_params(variables)).all()


def test_join_halves_keeps_each_shard_and_split_halves_inverts_it():
  faces = jnp.arange(12 * 2).reshape(12, 2)
  non_faces = 100 + faces
  for shards in (1, 2, 3, 6):
    joined = train.join_halves(faces, non_faces, shards)
    assert joined.shape == (24, 2)
    # Shard i of the joined batch holds exactly shard i of the faces, then of the non-faces.
    per = 12 // shards
    for i in range(shards):
      np.testing.assert_array_equal(
          joined[2 * per * i:2 * per * (i + 1)],
          np.concatenate([faces[per * i:per * (i + 1)], non_faces[per * i:per * (i + 1)]]))
    got_faces, got_non_faces = train.split_halves(joined, shards)
    np.testing.assert_array_equal(got_faces, faces)
    np.testing.assert_array_equal(got_non_faces, non_faces)
  with pytest.raises(ValueError, match="12 faces cannot be split into 5"):
    train.join_halves(faces, non_faces, 5)
  with pytest.raises(ValueError, match=r"faces \(12, 2\) and non_faces \(10, 2\)"):
    train.join_halves(faces, non_faces[:10], 1)
  with pytest.raises(ValueError, match="cannot be 4 shards"):
    train.split_halves(jnp.zeros((12, 3)), 4)


def _step_inputs(kind: str, batch: int):
  """A tiny config's state, one batcher batch and the step's keyword arguments."""
  config = tiny_config(kind, batch_size=batch)
  optimizer = train.make_optimizer(config)
  state = train.create_train_state(jax.random.key(0), config, optimizer)
  data = data_lib.make_planted_bias(64, image_size=32, seed=1)
  batch = jax.tree.map(jnp.asarray, data_lib.Batcher(data, batch, seed=2).batch(0, 0))
  settings = dict(optimizer=optimizer, kl_weight=config.loss.kl_weight,
                  recon=config.loss.recon, dtype=jnp.float32)
  return config, optimizer, state, batch, settings


def _reference_step(config, optimizer, state, batch, key, vae_weight=1.0):
  """One step written out as the loss of the papers: every row decoded, faces first."""
  images = jnp.concatenate([batch.faces, batch.non_faces])
  labels = jnp.repeat(jnp.array([1.0, 0.0]), batch.faces.shape[0])
  step_key = jax.random.fold_in(key, state.step)

  def loss_fn(params):
    out = models.forward({"params": params, "batch_stats": state.batch_stats}, images, step_key,
                         train=True)
    parts = losses.debiasing_loss(images, out.x_recon, labels, out.y_logit, out.z_mean,
                                  out.z_logvar, config.loss.kl_weight, config.loss.recon,
                                  vae_weight)
    return parts.total, (out.batch_stats, parts.vae)

  (loss, (batch_stats, vae)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, _ = optimizer.update(grads, state.opt_state, state.params)
  return loss, jnp.mean(vae[:batch.faces.shape[0]]), optax.apply_updates(
      state.params, updates), batch_stats


# (num_shards, step) variants: the joined batch's row order and the rows decoded.
@pytest.mark.parametrize("kind,variants", [
    ("ssvae", [(2, train.train_step)]),
    ("dbvae", [(4, train.train_step), (2, train.train_step_decoding_every_row)])])
def test_step_decoding_faces_only_takes_the_step_of_decoding_every_row(kind, variants):
  key = jax.random.key(3)
  config, optimizer, state, batch, settings = _step_inputs(kind, 16)
  ref_loss, ref_vae, ref_params, ref_stats = jax.jit(functools.partial(
      _reference_step, config, optimizer))(state, batch, key)
  for num_shards, step in variants:
    new_state, metrics = jax.jit(functools.partial(
        step, num_shards=num_shards, **settings))(state, batch, key)
    where = f"num_shards={num_shards}, {step.__name__}"
    np.testing.assert_allclose(metrics["loss"], ref_loss, rtol=2e-5, err_msg=where)
    np.testing.assert_allclose(metrics["vae_loss_faces"], ref_vae, rtol=2e-5, err_msg=where)
    np.testing.assert_allclose(flat_params(new_state.params), flat_params(ref_params),
                               rtol=1e-4, atol=1e-6, err_msg=where)
    np.testing.assert_allclose(flat_params(new_state.batch_stats), flat_params(ref_stats),
                               rtol=1e-5, atol=1e-6, err_msg=where)
  assert np.abs(flat_params(ref_params) - flat_params(state.params)).max() > 1e-4


def test_vae_weight_scales_the_vae_term_of_the_step():
  key = jax.random.key(3)
  config, optimizer, state, batch, settings = _step_inputs("dbvae", 16)
  steps = {}
  for weight in (1.0, 0.1):
    ref_loss, _, ref_params, _ = jax.jit(functools.partial(
        _reference_step, config, optimizer, vae_weight=weight))(state, batch, key)
    new_state, metrics = jax.jit(functools.partial(
        train.train_step, vae_weight=weight, **settings))(state, batch, key)
    np.testing.assert_allclose(metrics["loss"], ref_loss, rtol=2e-5)
    np.testing.assert_allclose(flat_params(new_state.params), flat_params(ref_params),
                               rtol=1e-4, atol=1e-6)
    steps[weight] = (float(metrics["loss"]), float(metrics["classification_loss"]),
                     float(metrics["vae_loss_faces"]))
  # Same classification and VAE losses before the step; only their weighting differs: the
  # batch is half faces, so loss = cls + weight * vae / 2.
  for weight, (loss, cls, vae) in steps.items():
    np.testing.assert_allclose(loss, cls + weight * vae / 2, rtol=1e-5)
  assert steps[1.0][1:] == pytest.approx(steps[0.1][1:], rel=1e-6)
  with pytest.raises(ValueError, match=r"loss.vae_weight = 0.0: must be > 0"):
    config_lib.validate_config(tiny_config("dbvae", **{"loss.vae_weight": 0.0}), 1)


def test_recalibrated_batch_norm_is_the_mean_of_uniform_batch_statistics():
  config = tiny_config("dbvae", bn_recalibration_batches=2, eval_batch_size=16)
  train_data = data_lib.load_datasets(config.data)["train"]
  variables = random_variables(config)
  state = train.TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                           batch_stats=variables["batch_stats"], opt_state=())
  new = train.recalibrate_batch_norm(state, train_data, sharding.make_mesh(), config, epoch=1)
  batcher = data_lib.Batcher(train_data, 16, seed=config.seed + 1, steps_per_epoch=2)
  per_batch = [models.batch_norm_statistics(
      variables, jnp.concatenate(jax.tree.map(jnp.asarray, batcher.batch(1, step))))
      for step in range(2)]
  expected = jax.tree.map(lambda a, b: (a + b) / 2, *per_batch)
  for got, want in zip(jax.tree.leaves(new.batch_stats), jax.tree.leaves(expected)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert jax.tree.leaves(new.params)[0] is jax.tree.leaves(state.params)[0]


def _identity_run(kind: str = "cnn", **overrides):
  """A one-epoch, two-step config for the resume-identity tests."""
  settings = dict(num_epochs=1, steps_per_epoch=2, log_every_steps=1, checkpoint_every_steps=0)
  settings.update(overrides)
  return tiny_config(kind, **settings)


def test_resume_with_other_settings_raises_naming_the_field(tmp_path):
  train.train_and_evaluate(_identity_run(), tmp_path)
  saved_config = (tmp_path / "config.json").read_text()
  cases = [
      (_identity_run(seed=1), "seed: checkpoint has 0, config has 1"),
      (_identity_run(batch_size=8), "batch_size: checkpoint has 16, config has 8"),
      (_identity_run(steps_per_epoch=3), "steps_per_epoch: checkpoint has 2, config has 3"),
      (_identity_run("ssvae"), "model.kind: checkpoint has 'cnn', config has 'ssvae'"),
      (_identity_run(**{"data.n_train_faces": 64}), "n_train_faces: checkpoint has "),
      (_identity_run(**{"augment.scale_max": 1.5}), "augment: checkpoint has {"),
      (_identity_run(**{"augment.enabled": False}), "config has False"),
      (_identity_run(lr_schedule="cosine"), "lr_schedule: checkpoint has 'constant'"),
  ]
  for config, message in cases:
    with pytest.raises(ValueError, match=re.escape(message)) as err:
      train.train_and_evaluate(config, tmp_path)
    assert "fresh --workdir" in str(err.value)
  with pytest.raises(ValueError) as err:
    train.train_and_evaluate(_identity_run(seed=1), tmp_path)
  assert "step_key" not in str(err.value)  # the seed is named as the cause, not the key
  # Nothing was overwritten: the run resumes (and may train longer) with its own settings.
  assert (tmp_path / "config.json").read_text() == saved_config
  final = train.train_and_evaluate(_identity_run(num_epochs=2), tmp_path).metrics
  assert final["steps"] == 4 and len(final["epochs"]) == 2


def test_resume_restores_the_step_key_and_accepts_old_checkpoints(tmp_path, caplog):
  config = _identity_run(num_epochs=2)
  train.train_and_evaluate(config, tmp_path, stop_at_step=3)  # checkpoint at step 2
  ckpts = checkpoints.Checkpoints(tmp_path / "checkpoints", keep=3)
  abstract = jax.eval_shape(lambda: train.create_train_state(
      jax.random.key(0), config, train.make_optimizer(config)))
  n_faces = json.loads((tmp_path / "run_info.json").read_text())["n_train_faces"]
  state, probs, meta = ckpts.restore_latest(abstract, n_faces)
  _, step_key = jax.random.split(jax.random.key(config.seed))
  current = checkpoints.run_identity(config, 2, n_faces, step_key)
  assert {k: meta[k] for k in current} == current
  assert meta["step_key"] == np.asarray(jax.random.key_data(step_key)).tolist()
  # A key that the seed does not give (another JAX / PRNG implementation) is refused too.
  other_key = dict(current, step_key=[k + 1 for k in current["step_key"]])
  with pytest.raises(ValueError, match="step_key: checkpoint has .*PRNG"):
    checkpoints.check_resume(other_key, current, tmp_path)
  # An older checkpoint, without the run-identity fields, resumes with a warning.
  old_meta = {k: meta[k] for k in ("epoch", "step_in_epoch", "history")}
  ckpts.manager.delete(int(state.step))
  ckpts.save(state, probs, old_meta)
  ckpts.wait()
  ckpts.close()
  final = train.train_and_evaluate(config, tmp_path).metrics
  assert final["steps"] == 4
  assert any("predates run-identity checks" in r.getMessage() for r in caplog.records)


def random_variables(config, seed: int = 0):
  """Model variables of ``config`` without compiling the initialiser (small random weights)."""
  abstract = jax.eval_shape(lambda key: train.create_train_state(
      key, config, train.make_optimizer(config)).variables, jax.random.key(seed))
  rng = np.random.default_rng(seed)

  def leaf(path, s):
    name = str(path[-1])
    if "var" in name:
      return np.ones(s.shape, s.dtype)
    if "mean" in name:
      return np.zeros(s.shape, s.dtype)
    return (0.05 * rng.standard_normal(s.shape)).astype(s.dtype)

  return jax.tree.map_with_path(leaf, abstract)


def test_resampling_pass_computes_only_what_the_signal_reads(monkeypatch):
  config = tiny_config("dbvae")
  datasets = data_lib.load_datasets(config.data)
  faces = datasets["train"].subset(datasets["train"].face_indices())
  variables = random_variables(config)
  mesh = sharding.make_mesh()
  seen = []
  original = inference.infer

  def spy(*args, **kwargs):
    out = original(*args, **kwargs)
    seen.append(set(out))
    return out

  monkeypatch.setattr(inference, "infer", spy)
  for signal in ("latent", "latent+epistemic"):
    config.resampling.signal = signal
    p, _ = train.resampling_probabilities(config, variables, faces, mesh)
    assert p.shape == (len(faces),) and np.isfinite(p).all()
  assert seen == [{"z_mean"}, {"z_mean", "recon_error"}]


def test_groups_signal_balances_the_labelled_groups_without_a_model(monkeypatch):
  config = tiny_config("cnn", **{"resampling.signal": "groups"})
  datasets = data_lib.load_datasets(config.data)
  faces = datasets["train"].subset(datasets["train"].face_indices())
  monkeypatch.setattr(inference, "infer", lambda *a, **k: pytest.fail("no encoding pass"))
  p, info = train.resampling_probabilities(config, None, faces, sharding.make_mesh())
  names = faces.group_names
  assert len(names) > 1
  for g in names:
    assert info["mass_by_group"][g] == pytest.approx(1 / len(names))
  assert p.shape == (len(faces),) and info["ess"] < len(faces)
  config.resampling.group_power = 0.0  # uniform over the faces
  _, info = train.resampling_probabilities(config, None, faces, sharding.make_mesh())
  for g in names:
    assert info["mass_by_group"][g] == pytest.approx(info["share_by_group"][g])


def test_groups_signal_trains_a_cnn_and_refuses_unlabelled_faces(tmp_path):
  config = tiny_config("cnn", **{"resampling.signal": "groups", "num_epochs": 1})
  metrics = train.train_and_evaluate(config, tmp_path / "run").metrics
  masses = metrics["resampling"][0]["mass_by_group"]
  assert set(masses) == set(metrics["resampling"][0]["share_by_group"])
  assert max(masses.values()) == pytest.approx(min(masses.values()))
  unlabelled = data_lib.load_datasets(config.data)
  unlabelled["train"].groups[unlabelled["train"].face_indices()[:3]] = ""
  with pytest.raises(ValueError, match="'groups': 3 of .* faces have no group label"):
    train.train_and_evaluate(config, tmp_path / "unlabelled", unlabelled)
  assert not (tmp_path / "unlabelled" / "checkpoints").exists()


def test_resampling_pass_warns_when_the_mass_collapses(caplog, monkeypatch):
  config = tiny_config("dbvae")
  datasets = data_lib.load_datasets(config.data)
  faces = datasets["train"].subset(datasets["train"].face_indices())
  n = len(faces)
  rng = np.random.default_rng(0)
  spread = rng.normal(size=(n, 4)).astype(np.float32)
  outlier = np.zeros((n, 4), np.float32)
  outlier[0] = 10.0  # alone in its bins of every dimension: product mode puts the mass on it
  config.resampling.signal, config.resampling.alpha = "latent", 0.0
  for z_mean, combine, collapses in ((spread, "max", False), (outlier, "product", True)):
    monkeypatch.setattr(inference, "infer",
                        lambda *args, z_mean=z_mean, **kwargs: {"z_mean": z_mean})
    config.resampling.combine = combine
    caplog.clear()
    with caplog.at_level(logging.WARNING):
      _, info = train.resampling_probabilities(config, None, faces, sharding.make_mesh())
    assert (info["ess"] < 2) == collapses, (combine, info["ess"])
    warned = [r.getMessage() for r in caplog.records if "almost all sampling mass" in
              r.getMessage()]
    assert bool(warned) == collapses
  assert "combine='max'" in warned[0]


def test_kill_and_resume_matches_uninterrupted(tmp_path):
  config = tiny_config("dbvae")
  full = train.train_and_evaluate(config, tmp_path / "full").metrics
  # Killed mid-epoch 1, after the checkpoint at global step 8 and before the next one.
  stopped = train.train_and_evaluate(config, tmp_path / "resumed", stop_at_step=11).metrics
  assert stopped == {"stopped_at_step": 11}
  resumed = train.train_and_evaluate(config, tmp_path / "resumed").metrics
  assert resumed["steps"] == full["steps"] == 12
  _, v_full = checkpoints.load_run(tmp_path / "full")
  _, v_res = checkpoints.load_run(tmp_path / "resumed")
  np.testing.assert_allclose(flat_params(v_res), flat_params(v_full), rtol=1e-6, atol=1e-7)
  assert resumed["eval"]["val_accuracy"] == full["eval"]["val_accuracy"]
  np.testing.assert_allclose(resumed["eval"]["test"]["E_A"], full["eval"]["test"]["E_A"])
  assert [r["ess"] for r in resumed["resampling"]] == pytest.approx(
      [r["ess"] for r in full["resampling"]], rel=1e-6)
  steps = [json.loads(l)["step"] for l in (tmp_path / "resumed" / "metrics.jsonl").read_text()
           .splitlines() if "loss" in json.loads(l)]
  assert steps == sorted(steps) and len(steps) == len(set(steps))  # no duplicated lines


def test_checkpoint_round_trip_and_corrupt_fallback(tmp_path, caplog):
  config = tiny_config("ssvae")
  optimizer = train.make_optimizer(config)
  state = train.create_train_state(jax.random.key(3), config, optimizer)
  ckpts = checkpoints.Checkpoints(tmp_path / "ckpt", keep=3)
  probs = np.full(10, 0.1)
  ckpts.save(state, probs, {"epoch": 0, "step_in_epoch": 0, "history": {}})
  later = state.replace(step=state.step + 5,
                        params=jax.tree.map(lambda x: x + 1.0, state.params))
  ckpts.save(later, probs * 2, {"epoch": 0, "step_in_epoch": 5, "history": {}})
  ckpts.wait()
  abstract = jax.eval_shape(lambda: state)
  restored, r_probs, meta = ckpts.restore_latest(abstract, 10)
  assert int(restored.step) == 5 and meta["step_in_epoch"] == 5
  np.testing.assert_allclose(flat_params(restored.params), flat_params(later.params))
  np.testing.assert_allclose(r_probs, probs * 2)
  ckpts.close()
  # Corrupt every file of the newest checkpoint's state: restoring falls back to step 0.
  for path in (tmp_path / "ckpt" / "5" / "state").rglob("*"):
    if path.is_file():
      path.write_bytes(b"garbage")
  ckpts = checkpoints.Checkpoints(tmp_path / "ckpt", keep=3)
  restored, _, meta = ckpts.restore_latest(abstract, 10)
  ckpts.close()
  assert int(restored.step) == 0 and meta["step_in_epoch"] == 0
  np.testing.assert_allclose(flat_params(restored.params), flat_params(state.params))
  warned = [r.getMessage() for r in caplog.records if "falling back" in r.getMessage()]
  assert len(warned) == 1 and "\n" not in warned[0] and "corrupt/5" in warned[0]
  # The unreadable step is set aside, so the run can save that step again.
  assert (tmp_path / "ckpt" / "corrupt" / "5" / "state").is_dir()
  assert not (tmp_path / "ckpt" / "5").exists()
  ckpts = checkpoints.Checkpoints(tmp_path / "ckpt", keep=3)
  ckpts.save(later, probs, {"epoch": 0, "step_in_epoch": 5, "history": {}})
  ckpts.close()
  assert sorted(ckpts.manager.all_steps()) == [0, 5]


def test_nan_loss_stops_with_step_and_keeps_checkpoint(tmp_path, monkeypatch):
  config = tiny_config("cnn", log_every_steps=1, checkpoint_every_steps=2)
  original = data_lib.Batcher.epoch_batches

  def poisoned(self, epoch, start_step=0, **kwargs):
    for i, batch in enumerate(original(self, epoch, start_step, **kwargs)):
      if epoch == 0 and start_step + i == 4:  # global step 5
        batch = batch._replace(faces=np.full_like(batch.faces, np.nan))
      yield batch

  monkeypatch.setattr(data_lib.Batcher, "epoch_batches", poisoned)
  with pytest.raises(FloatingPointError, match="step 5"):
    train.train_and_evaluate(config, tmp_path)
  config_back, variables = checkpoints.load_run(tmp_path)  # the last good checkpoint (step 4)
  assert np.isfinite(flat_params(variables)).all()


@pytest.mark.parametrize("field,value,message", [
    ("resampling.bins", 0, "resampling.bins"),
    ("resampling.alpha", -0.1, "resampling.alpha"),
    ("model.latent_dim", 0, "model.latent_dim"),
    ("batch_size", 15, "batch_size"),
    ("data.image_size", 40, "data.image_size"),
    ("resampling.combine", "mean", "resampling.combine"),
    ("operating_fpr", 0.0, "operating_fpr = 0.0: must be a false-positive rate in (0, 1)"),
])
def test_bad_config_fails_before_compile(tmp_path, field, value, message):
  config = tiny_config("dbvae", **{field: value})
  with pytest.raises(ValueError, match=re.escape(message)):
    train.train_and_evaluate(config, tmp_path)
  assert not (tmp_path / "checkpoints").exists()


def test_a_config_missing_a_field_is_refused_by_name():
  # e.g. an older run's config.json, written before the field existed, loaded by hand.
  fields = tiny_config("dbvae").to_dict()
  del fields["resampling"]["heldout_fraction"]
  with pytest.raises(ValueError, match="config field 'resampling.heldout_fraction' is missing"):
    config_lib.validate_config(ml_collections.ConfigDict(fields), 1)
  del fields["augment"]
  with pytest.raises(ValueError, match="config field 'augment' is missing"):
    config_lib.validate_config(ml_collections.ConfigDict(fields), 1)


def test_unknown_field_and_indivisible_batch():
  config = tiny_config("dbvae")
  config.unlock()
  config.model.latnet_dim = 3
  with pytest.raises(ValueError, match="unknown config field 'model.latnet_dim'"):
    config_lib.validate_config(config, 1)
  with pytest.raises(ValueError, match="divisible by the number of devices"):
    config_lib.validate_config(tiny_config("dbvae", batch_size=18), 4)
  with pytest.raises(ValueError, match="half faces, half non-faces each"):
    config_lib.validate_config(tiny_config("dbvae", batch_size=20), 4)
  with pytest.raises(ValueError,
                     match="no latent space: use 'none', 'groups', 'errors' or 'shift_errors'"):
    config_lib.validate_config(tiny_config("cnn", **{"resampling.signal": "latent"}), 1)
  with pytest.raises(ValueError, match="resampling.signal"):
    config_lib.validate_config(tiny_config("dbvae", **{"resampling.signal": "group"}), 1)
  with pytest.raises(ValueError, match="resampling.group_power"):
    config_lib.validate_config(tiny_config("cnn", **{"resampling.group_power": 2.0}), 1)
  with pytest.raises(ValueError, match=r"config\.evaluators = \('val', 'tset'\): unknown "
                                       "evaluator 'tset'"):
    config_lib.validate_config(tiny_config("cnn", evaluators=("val", "tset")), 1)
  with pytest.raises(ValueError, match="config.evaluators .* names an evaluator twice"):
    config_lib.validate_config(tiny_config("cnn", evaluators=("test", "test")), 1)


def test_evaluate_runs_the_evaluators_the_config_lists_in_order():
  config = tiny_config("cnn")
  datasets = data_lib.load_datasets(config.data)
  variables, mesh = random_variables(config), sharding.make_mesh()
  every = train.evaluate(variables, datasets, mesh, config)
  assert list(every) == ["val_accuracy", "val_face_accuracy", "val_non_face_accuracy", "val",
                         "test"]
  config.evaluators = ("test", "val")
  assert list(train.evaluate(variables, datasets, mesh, config)) == [
      "test", "val_accuracy", "val_face_accuracy", "val_non_face_accuracy", "val"]
  config.evaluators = ("test",)
  only_test = train.evaluate(variables, datasets, mesh, config)
  assert only_test == {"test": every["test"]}
  config.evaluators = ()
  assert train.evaluate(variables, datasets, mesh, config) == {}


def _flat_fields(tree: dict, prefix: str = "") -> dict:
  """{'a.b': value} for every leaf of a nested config dict."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flat_fields(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def test_config_files_and_smoke_option():
  shipped = {}
  for name in ("cnn", "ssvae", "dbvae", "dbvae_errors"):
    path = REPO / "configs" / f"{name}.py"
    config = config_lib.load_config_file(str(path))
    config_lib.validate_config(config, 1)
    smoke = config_lib.load_config_file(f"{path}:smoke")
    config_lib.validate_config(smoke, 1)
    assert smoke.steps_per_epoch * smoke.num_epochs < 200
    assert smoke.name == f"{config.name}-smoke"
    assert "python experiments/run.py --config=configs/" in ast.get_docstring(
        ast.parse(path.read_text()))
    with pytest.raises(ValueError, match="unknown config option"):
      config_lib.load_config_file(f"{path}:smok")
    # the shipped budget: 8 epochs on a cosine decay, with augmentation
    assert (config.num_epochs, config.lr_schedule, config.augment.enabled) == (8, "cosine", True)
    shipped[name] = config
  # the DB-VAE resamples through its latent; the mistakes alone have their own config
  dbvae = shipped["dbvae"].resampling
  assert (dbvae.signal, dbvae.error_axes, dbvae.alpha, dbvae.target_ess) == (
      "error_axis", 1, 1e-3, 0.3)
  assert (dbvae.non_face_upweight, dbvae.non_face_top) == (10.0, 0.05)
  assert dbvae.last_update_epoch == 1  # the first epoch's model identifies, as in JTT
  errors = shipped["dbvae_errors"].resampling
  assert (errors.signal, errors.error_upweight) == ("errors", 20.0)
  # the mistakes' config is the latent's ablation: the same run but for the signal's fields
  latent_only = {"name", "resampling.signal", "resampling.error_kind", "resampling.error_axes",
                 "resampling.bins", "resampling.alpha", "resampling.error_upweight"}
  flat = {name: _flat_fields(shipped[name].to_dict()) for name in ("dbvae", "dbvae_errors")}
  differ = {k for k in flat["dbvae"] if flat["dbvae"][k] != flat["dbvae_errors"][k]}
  assert differ and differ <= latent_only, differ - latent_only
  for name in ("cnn_lab", "dbvae_lab"):  # the labs' recipes stay reachable
    lab = config_lib.load_config_file(str(REPO / "configs" / f"{name}.py"))
    config_lib.validate_config(lab, 1)
    assert (lab.num_epochs, lab.lr_schedule, lab.augment.enabled) == (2, "constant", False)
  assert lab.resampling.signal == "latent" and lab.resampling.combine == "max"


def test_load_config_file_names_a_bad_file(tmp_path):
  with pytest.raises(ValueError, match="config file not found: .*nope.py"):
    config_lib.load_config_file(str(tmp_path / "nope.py"))
  (tmp_path / "notes.txt").write_text("x")
  with pytest.raises(ValueError, match="not a Python module"):
    config_lib.load_config_file(str(tmp_path / "notes.txt"))
  (tmp_path / "empty.py").write_text("X = 1\n")
  with pytest.raises(ValueError, match="defines no get_config"):
    config_lib.load_config_file(str(tmp_path / "empty.py"))


EQUIVALENCE_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    from jaxface import checkpoints, sharding, train
    sys.path.insert(0, {tests!r})
    from test_train import tiny_config, flat_params
    assert len(jax.devices()) == 4, jax.devices()
    out = {{}}
    for n in (1, 4):
        config = tiny_config("dbvae", num_epochs=1, steps_per_epoch=5)
        final = train.train_and_evaluate(config, {tmp!r} + f"/d{{n}}",
                                         mesh=sharding.make_mesh(jax.devices()[:n])).metrics
        _, variables = checkpoints.load_run({tmp!r} + f"/d{{n}}")
        losses = [json.loads(l)["loss"] for l in open({tmp!r} + f"/d{{n}}/metrics.jsonl")
                  if "loss" in json.loads(l)]
        out[n] = {{"params": flat_params(variables).tolist()[:5000], "losses": losses,
                   "acc": final["eval"]["val_accuracy"]}}
    print("RESULT" + json.dumps(out))
""")


def test_one_and_four_devices_agree(tmp_path):
  script = EQUIVALENCE_SCRIPT.format(tests=str(REPO / "tests"), tmp=str(tmp_path))
  result = run_on_four_devices(script)
  assert_one_and_four_devices_agree(result)


COLLECTIVES_SCRIPT = textwrap.dedent("""
    import functools, json, re, sys
    import jax, jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec as P
    from jaxface import data as data_lib, train
    sys.path.insert(0, {tests!r})
    from helpers import tiny_config
    assert len(jax.devices()) == 4, jax.devices()
    mesh = train.make_mesh()
    config = tiny_config("dbvae", batch_size=16)
    optimizer = train.make_optimizer(config)
    state = jax.eval_shape(lambda: train.create_train_state(jax.random.key(0), config, optimizer))
    half = jax.ShapeDtypeStruct((8, 32, 32, 3), jnp.float32)
    args = (state, data_lib.Batch(half, half), jax.eval_shape(lambda: jax.random.key(0)))
    pattern = r"(all-reduce|all-gather|all-to-all|collective-permute|reduce-scatter)(?:-start)?\\("
    def collectives(step):
        found = re.findall(pattern, step.lower(*args).compile().as_text())
        return {{op: found.count(op) for op in set(found)}}
    out = {{"faces_only": collectives(train.make_train_step(config, optimizer, mesh)),
           "every_row": collectives(train.make_train_step(
               config, optimizer, mesh, step_fn=train.train_step_decoding_every_row))}}
    # For contrast: the same step joining the halves by a plain concatenation (num_shards=1).
    concatenating = functools.partial(
        train.train_step, optimizer=optimizer, kl_weight=config.loss.kl_weight,
        recon=config.loss.recon, dtype=jnp.float32, num_shards=1)
    repl, data = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    out["concatenated"] = collectives(jax.jit(concatenating, in_shardings=(repl, data, repl),
                                              out_shardings=(repl, repl)))
    print("RESULT" + json.dumps(out))
""")


def test_four_device_step_moves_no_rows_between_devices():
  script = COLLECTIVES_SCRIPT.format(tests=str(REPO / "tests"))
  result = run_on_four_devices(script)
  # Only the all-reduces of the gradients, losses and batch-norm statistics.
  for variant in ("faces_only", "every_row"):
    assert set(result[variant]) == {"all-reduce"}, (variant, result[variant])
  # XLA moves rows (all-gathers or collective-permutes) to concatenate data-sharded halves.
  assert set(result["concatenated"]) - {"all-reduce"}, result["concatenated"]
