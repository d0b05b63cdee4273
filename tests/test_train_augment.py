"""Training with on-device augmentation: the step, the config checks, resumption, devices."""

from __future__ import annotations

import ast
import functools
import importlib.util
import json
import re
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxface import augment, checkpoints, train
from jaxface import config as config_lib
from jaxface import data as data_lib
from jaxface.train import start as train_start

from helpers import assert_one_and_four_devices_agree, run_on_four_devices, tiny_config

REPO = Path(__file__).resolve().parents[1]


def flat_params(variables):
  return np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree.leaves(variables)])


def _step_parts(kind: str, fill: str = "reflect", non_face_scale_min: float = 0.0):
  config = tiny_config(kind, batch_size=16, **{"augment.fill": fill,
                                               "augment.non_face_scale_min": non_face_scale_min})
  optimizer = train.make_optimizer(config)
  state = train.create_train_state(jax.random.key(0), config, optimizer)
  data = data_lib.make_planted_bias(64, image_size=32, seed=1)
  batch = jax.tree.map(jnp.asarray, data_lib.Batcher(data, 16, seed=2).batch(0, 0))
  step = functools.partial(train.train_step, optimizer=optimizer,
                           kl_weight=config.loss.kl_weight, recon=config.loss.recon,
                           dtype=jnp.float32)
  return config, state.replace(step=jnp.int32(3)), batch, step


@pytest.mark.parametrize("kind,fill,non_face_scale_min", [
    ("cnn", "reflect", 0.0), ("cnn", "background", 0.0), ("dbvae", "reflect", 0.0),
    ("dbvae", "background", 0.0), ("cnn", "background", 0.5)])
def test_step_trains_on_the_augmented_faces_and_non_faces(kind, fill, non_face_scale_min):
  config, state, batch, step = _step_parts(kind, fill, non_face_scale_min)
  key = jax.random.key(7)
  new_aug, m_aug = step(state, batch, key, augment=config.augment)
  # The same step on the batch augmented outside it, as augment_for_step does at this step.
  images = train.join_halves(batch.faces, batch.non_faces)
  labels = train.join_halves(jnp.ones(8), jnp.zeros(8))
  augmented = augment.augment_for_step(key, state.step, images, labels, config.augment)
  faces, non_faces = train.split_halves(augmented)
  assert not np.allclose(faces, batch.faces) and not np.allclose(non_faces, batch.non_faces)
  new_ref, m_ref = step(state, data_lib.Batch(faces, non_faces), key)
  for name in m_ref:  # the classifier and the VAE loss both see the augmented rows
    np.testing.assert_allclose(m_aug[name], m_ref[name], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(flat_params(new_aug.params), flat_params(new_ref.params),
                             rtol=1e-5, atol=1e-6)
  # Augmentation changes the step; disabled, it is the step on the raw batch.
  _, m_raw = step(state, batch, key)
  assert not np.isclose(m_raw["loss"], m_aug["loss"])
  off = ml_collections.ConfigDict(config.augment.to_dict())
  off.enabled = False
  _, m_off = step(state, batch, key, augment=off)
  np.testing.assert_array_equal(m_off["loss"], m_raw["loss"])


def test_step_augmentation_follows_the_step_counter():
  config, state, batch, step = _step_parts("cnn")
  key = jax.random.key(7)
  _, m3 = step(state, batch, key, augment=config.augment)
  _, m3_again = step(state, batch, key, augment=config.augment)
  _, m4 = step(state.replace(step=jnp.int32(4)), batch, key, augment=config.augment)
  np.testing.assert_array_equal(m3["loss"], m3_again["loss"])
  assert not np.isclose(m3["loss"], m4["loss"])


def test_shipped_configs_augment_and_lab_configs_do_not():
  for name in ("cnn", "ssvae", "dbvae"):
    config = config_lib.load_config_file(str(REPO / "configs" / f"{name}.py"))
    assert config.augment.enabled, name
    config_lib.validate_config(config, 1)
  assert tiny_config().augment.enabled  # test_train's end-to-end, resume and device tests
  for name, kind in (("cnn_lab", "cnn"), ("dbvae_lab", "dbvae")):
    path = REPO / "configs" / f"{name}.py"
    config = config_lib.load_config_file(str(path))
    config_lib.validate_config(config, 1)
    assert config.model.kind == kind and not config.augment.enabled
    assert f"python experiments/run.py --config=configs/{name}.py" in ast.get_docstring(
        ast.parse(path.read_text()))
    smoke = config_lib.load_config_file(f"{path}:smoke")
    assert smoke.steps_per_epoch * smoke.num_epochs < 200 and not smoke.augment.enabled
  dbvae_lab = config_lib.load_config_file(str(REPO / "configs" / "dbvae_lab.py"))
  assert dbvae_lab.resampling.signal == "latent"
  assert dbvae_lab.resampling.combine == "max" and dbvae_lab.resampling.alpha == 1e-3


@pytest.mark.parametrize("field,value,message", [
    ("augment.fill", "zeros", "config.augment.fill = 'zeros'"),
    ("augment.scale_min", 0.0, "config.augment.scale_min"),
    ("augment.scale_max", 0.5, "config.augment.scale_min, scale_max"),
    ("augment.brightness", -0.1, "config.augment.brightness = -0.1"),
    ("augment.contrast", 1.5, "config.augment.contrast = 1.5"),
    ("augment.saturation", -1.0, "config.augment.saturation"),
    ("augment.max_translate", -0.2, "config.augment.max_translate"),
    ("augment.non_face_scale_min", -0.5, "config.augment.non_face_scale_min = -0.5"),
])
def test_bad_augment_field_fails_by_name_before_compile(tmp_path, monkeypatch, field, value,
                                                        message):
  compiled = []
  monkeypatch.setattr(train_start, "make_train_step", lambda *a, **k: compiled.append(1))
  config = tiny_config("cnn", **{field: value})
  with pytest.raises(ValueError, match=re.escape(message)):
    train.train_and_evaluate(config, tmp_path)
  assert not compiled and not (tmp_path / "checkpoints").exists()


def test_augment_field_types_and_unknown_fields_are_named():
  for field, value, message in [("augment.enabled", 1, "config.augment.enabled = 1"),
                                ("augment.flip", "yes", "config.augment.flip = 'yes'"),
                                ("augment.scale_max", "2", "config.augment.scale_max = '2'"),
                                ("augment.fill", 3, "config.augment.fill = 3")]:
    config = tiny_config("cnn")
    config.augment.unlock()
    del config.augment[field.split(".")[1]]  # a fresh field of any type, as from JSON
    config.augment[field.split(".")[1]] = value
    with pytest.raises(ValueError, match=re.escape(message)):
      config_lib.validate_config(config, 1)
  config = tiny_config("cnn")
  config.unlock()
  config.augment.zoom = 2.0
  with pytest.raises(ValueError, match="unknown config field 'augment.zoom'"):
    config_lib.validate_config(config, 1)
  config = tiny_config("cnn")  # a disabled group is still checked
  config.augment.enabled = False
  config.augment.fill = "zeros"
  with pytest.raises(ValueError, match="config.augment.fill"):
    config_lib.validate_config(config, 1)


def test_background_fill_comes_from_non_faces_for_faces_and_non_faces_alike():
  # Faces are bright (1), non-faces dark and distinct (0.1 * row); zoomed far out, each row's
  # corner shows only its background, which must be some non-face's pixels, never a face's.
  n = 8
  faces = jnp.ones((n, 32, 32, 3))
  non_faces = jnp.broadcast_to((0.05 + 0.1 * jnp.arange(n) / n)[:, None, None, None],
                               (n, 32, 32, 3))
  images = train.join_halves(faces, non_faces)
  labels = train.join_halves(jnp.ones(n), jnp.zeros(n))
  config = augment.default_augment_config()
  config.update(fill="background", scale_min=3.0, scale_max=3.0, max_translate=0.0,
                brightness=0.0, contrast=0.0, saturation=0.0, non_face_scale_min=0.0)
  out = augment.augment_for_step(jax.random.key(1), 0, images, labels, config)
  corners = np.asarray(out[:, 0, 0, 0])
  non_face_values = np.asarray(non_faces[:, 0, 0, 0])
  for row, corner in enumerate(corners):
    assert np.isclose(corner, non_face_values, atol=1e-5).any(), (row, corner)
  # The faces' backgrounds are spread over the non-faces like the non-faces' own.
  face_rows, non_face_rows = (np.asarray(h) for h in train.split_halves(out))
  assert len(set(np.round(face_rows[:, 0, 0, 0], 4))) > 1
  assert len(set(np.round(non_face_rows[:, 0, 0, 0], 4))) > 1


def test_reflect_fill_ignores_the_label():
  data = data_lib.make_planted_bias(16, image_size=32, seed=3)
  images = jnp.asarray(data_lib.to_float(data.images[:16]))
  config = augment.default_augment_config()
  config.non_face_scale_min = 0.0  # faces and non-faces zoomed alike
  ones, zeros = jnp.ones(16), jnp.zeros(16)
  as_faces = augment.augment_for_step(jax.random.key(2), 5, images, ones.at[8:].set(0), config)
  swapped = augment.augment_for_step(jax.random.key(2), 5, images, zeros.at[8:].set(1), config)
  np.testing.assert_array_equal(as_faces, swapped)


@pytest.mark.parametrize("kind,fill,stop", [("ssvae", "background", 7), ("cnn", "reflect", 11)])
def test_kill_and_resume_matches_uninterrupted_with_augmentation(tmp_path, kind, fill, stop):
  # Models without resampling: the resumed run must draw the uniform batches again.
  config = tiny_config(kind, **{"augment.fill": fill})
  full = train.train_and_evaluate(config, tmp_path / "full").metrics
  stopped = train.train_and_evaluate(config, tmp_path / "resumed", stop_at_step=stop).metrics
  assert stopped == {"stopped_at_step": stop}
  resumed = train.train_and_evaluate(config, tmp_path / "resumed").metrics
  assert resumed["steps"] == full["steps"] == 12
  _, v_full = checkpoints.load_run(tmp_path / "full")
  _, v_res = checkpoints.load_run(tmp_path / "resumed")
  np.testing.assert_allclose(flat_params(v_res), flat_params(v_full), rtol=1e-6, atol=1e-7)
  assert resumed["eval"]["val_accuracy"] == full["eval"]["val_accuracy"]


DEVICES_SCRIPT = textwrap.dedent("""
    import json, re, sys
    import jax, jax.numpy as jnp, numpy as np
    from jaxface import checkpoints, data as data_lib, sharding, train
    sys.path.insert(0, {tests!r})
    from helpers import tiny_config
    assert len(jax.devices()) == 4, jax.devices()
    out = {{}}
    for n in (1, 4):
        config = tiny_config("dbvae", num_epochs=1, steps_per_epoch=4,
                             **{{"augment.fill": "background"}})
        run = {tmp!r} + f"/d{{n}}"
        final = train.train_and_evaluate(config, run,
                                         mesh=sharding.make_mesh(jax.devices()[:n])).metrics
        _, variables = checkpoints.load_run(run)
        flat = np.concatenate([np.ravel(x) for x in jax.tree.leaves(variables)])
        losses = [json.loads(l)["loss"] for l in open(run + "/metrics.jsonl")
                  if "loss" in json.loads(l)]
        out[n] = {{"params": flat.tolist()[:5000], "losses": losses}}
    pattern = r"(all-reduce|all-gather|all-to-all|collective-permute|reduce-scatter)(?:-start)?\\("
    mesh = train.make_mesh()
    for fill in ("reflect", "background"):
        config = tiny_config("dbvae", batch_size=16, **{{"augment.fill": fill}})
        optimizer = train.make_optimizer(config)
        state = jax.eval_shape(lambda: train.create_train_state(jax.random.key(0), config,
                                                                optimizer))
        half = jax.ShapeDtypeStruct((8, 32, 32, 3), jnp.float32)
        args = (state, data_lib.Batch(half, half), jax.eval_shape(lambda: jax.random.key(0)))
        text = train.make_train_step(config, optimizer, mesh).lower(*args).compile().as_text()
        out[fill] = sorted(set(re.findall(pattern, text)))
    print("RESULT" + json.dumps(out))
""")


def test_one_and_four_devices_agree_with_background_fill(tmp_path):
  script = DEVICES_SCRIPT.format(tests=str(REPO / "tests"), tmp=str(tmp_path))
  result = run_on_four_devices(script)
  assert_one_and_four_devices_agree(result)
  # 'reflect' augments every row on its device; 'background' gathers the batch's non-faces.
  assert result["reflect"] == ["all-reduce"]
  assert result["background"] == ["all-gather", "all-reduce"]


def test_fill_cue_check_scores_plain_and_zoomed_sets(tmp_path):
  spec = importlib.util.spec_from_file_location("fill_cue_check",
                                                REPO / "experiments" / "fill_cue_check.py")
  check = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(check)
  # zoom_out with 'background': the border of a zoomed-out face is a non-face's pixels.
  images = np.concatenate([np.ones((4, 32, 32, 3)), np.zeros((4, 32, 32, 3))]).astype(np.float32)
  labels = np.array([1, 1, 1, 1, 0, 0, 0, 0])
  zoomed = check.zoom_out(images, labels, 2.0, "background")
  np.testing.assert_allclose(zoomed[:, 0, 0], 0.0, atol=1e-6)
  np.testing.assert_allclose(zoomed[:4, 16, 16], 1.0, atol=1e-6)
  np.testing.assert_allclose(check.zoom_out(images, labels, 1.0, "reflect"), images, atol=1e-6)
  config = tiny_config("cnn", num_epochs=1)
  datasets = data_lib.load_datasets(config.data)
  run = train.train_and_evaluate(config, tmp_path, datasets)
  test = datasets["test"]
  result = check.fill_cue(run.variables, test.images, test.labels, 1.6, "reflect")
  plain, zoomed = result["plain"], result["zoomed"]
  assert plain["non_face"]["n"] == int(np.sum(test.labels == 0))
  assert plain["face"]["n"] == int(np.sum(test.labels == 1))
  np.testing.assert_allclose(result["fill_cue"], zoomed["non_face"]["mean_face_prob"]
                             - plain["non_face"]["mean_face_prob"])
  assert zoomed["non_face"]["mean_face_prob"] != plain["non_face"]["mean_face_prob"]
