"""The base experiment configuration and its validation.

``configs/*.py`` import :func:`get_base_config` and change a few fields. Every field a run reads
is defined here, so :func:`validate_config` can reject unknown fields and bad values by name
before anything is compiled.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path

import ml_collections

from jaxface.resampling import HISTOGRAM_IMPLS
from jaxface.resampling import registry as signal_registry
from jaxface.resampling.registry import blend_weights, signal_parts  # noqa: F401 (public here)

MODEL_KINDS = ("cnn", "ssvae", "dbvae")
MODEL_IMPLS = ("auto", "flax", "cpu_fast")  # jaxface.models.IMPLS
NO_SIGNAL = "none"  # resampling.signal of a run that samples its faces uniformly


def signal_names(registry: Mapping[str, signal_registry.Signal] = signal_registry.SIGNALS
                 ) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
  """The values of ``resampling.signal``'s parts: all, those that blend, those that need a VAE.

  Args:
    registry: the signals by name (``jaxface.resampling.SIGNALS``).

  Returns:
    ``(signals, blend_signals, latent_signals)``; ``signals`` starts with ``'none'``.
  """
  return ((NO_SIGNAL,) + tuple(registry),
          tuple(name for name, signal in registry.items() if signal.blendable),
          tuple(name for name, signal in registry.items() if signal.needs_latent))


# Resampling signals (jaxface.resampling.SIGNALS). 'none' and 'groups' stand alone; the others
# can be blended, e.g. 'latent_pca+errors' (weights in resampling.blend_weights, equal by
# default). LATENT_SIGNALS need a VAE.
SIGNALS, BLEND_SIGNALS, LATENT_SIGNALS = signal_names()
DTYPES = ("float32", "bfloat16")
LR_SCHEDULES = ("constant", "cosine")


def get_base_config() -> ml_collections.ConfigDict:
  """All fields of a run, with the DB-VAE lab's defaults (and training-time augmentation)."""
  from jaxface import augment, data, hard_negatives  # these groups belong to their modules
  from jaxface.eval import operating_point, whole_photos

  config = ml_collections.ConfigDict()
  config.name = "dbvae"  # shown in reports and comparisons
  config.seed = 0

  config.model = _model_config()

  config.data = data.default_data_config()

  # Training-time augmentation, computed on the device inside the train step for faces and
  # non-faces alike (the VAE reconstructs the augmented face); fields and defaults in
  # jaxface.augment.default_augment_config: enabled, scale_min / scale_max (zoom, > 1 zooms
  # out), max_translate, flip, brightness, contrast, saturation, fill ('reflect' or
  # 'background'), non_face_scale_min (non-faces zoomed in further, for scans of whole photos).
  # enabled=False trains on the chips as they are (the lab's recipe, configs/*_lab.py).
  config.augment = augment.default_augment_config()

  # Whole-photo test sets, scanned with sliding windows once after the last epoch: faces found
  # per group at the threshold giving at most max_false_rate non-face photos with a detection;
  # fields and defaults in jaxface.eval.whole_photos (sets, boxes, non_face_photos, ...).
  config.whole_images = whole_photos.default_whole_images_config()

  # Hard negatives by bootstrapping: after num_epochs, `rounds` times, the windows of the
  # non-face photos in `photos` scored most face-like join the training non-faces and
  # epochs_per_round more epochs train on them; fields and defaults in jaxface.hard_negatives
  # (rounds, windows_per_round, windows_per_photo, photos, epochs_per_round; 0 rounds: off).
  config.hard_negatives = hard_negatives.default_hard_negatives_config()

  config.loss = ml_collections.ConfigDict()
  config.loss.kl_weight = 5e-4
  config.loss.recon = "l1"  # 'l1' (labs) or 'l2' (paper)
  # Weight of the faces' VAE loss beside the classification loss (> 0; 1 in the labs). Under
  # Adam the decoder's and the latent heads' updates barely depend on it (each is fed by the
  # VAE loss alone); what it sets is how much the VAE shapes the trunk the classifier shares.
  config.loss.vae_weight = 1.0

  config.resampling = _resampling_config()

  config.batch_size = 32  # global batch: half faces, half non-faces
  config.num_epochs = 2
  config.steps_per_epoch = -1  # -1: 2 * n_faces // batch_size (every face about once)
  config.learning_rate = 5e-4
  # 'constant' (the labs) or 'cosine' (decays to 0 over the run's steps; a run on it cannot be
  # resumed with another num_epochs)
  config.lr_schedule = "constant"
  config.dtype = "float32"  # compute dtype; parameters and losses stay float32
  config.eval_batch_size = 256
  # Before every evaluation, replace the batch norms' running averages by the mean statistics
  # of this many uniformly drawn training batches (half faces) of eval_batch_size; 0 keeps the
  # running averages (jaxface.train.recalibrate_batch_norm says why).
  config.bn_recalibration_batches = 32
  # What every epoch's evaluation computes, in this order (jaxface.eval.EVALUATORS): 'val'
  # (validation accuracy and per-group figures), 'test' (the test split's per-group figures),
  # 'test_sets' (the extra test sets of data.extra_test_sets).
  config.evaluators = ("val", "test", "test_sets")
  # The operating point every evaluation reports beside p = 0.5: the threshold at which this
  # share of the validation non-faces (the test split's where it has none) is detected, in
  # (0, 1), applied to the test split and every extra test set (jaxface.eval.operating_point).
  config.operating_fpr = operating_point.OPERATING_FPR

  config.log_every_steps = 50
  config.checkpoint_every_steps = 500  # also at every epoch end; 0 = epoch ends only
  config.keep_checkpoints = 3
  config.progress_bar = True
  config.write_report = True  # experiments/run.py writes WORKDIR/report/ after training
  config.distributed = False  # call jax.distributed.initialize() (multi-host)
  return config


def _model_config() -> ml_collections.ConfigDict:
  """The ``model`` fields of :func:`get_base_config`."""
  model = ml_collections.ConfigDict()
  # 'cnn' (standard classifier: latent_dim 0, signal 'none' or 'groups'), 'ssvae' (latent_dim
  # >= 1, signal 'none') or 'dbvae' (latent_dim >= 1, a resampling signal); checked to agree.
  model.kind = "dbvae"
  model.latent_dim = 100  # 0 for the CNN
  model.n_filters = 12
  # Standardise each image before the first convolution (jaxface.models.Encoder.input_norm).
  model.input_norm = False
  # 'auto' (cpu_fast on the CPU backend, else flax), 'flax' or 'cpu_fast' (jaxface.models)
  model.impl = "auto"
  return model


def _resampling_config() -> ml_collections.ConfigDict:
  """The ``resampling`` fields of :func:`get_base_config`."""
  resampling = ml_collections.ConfigDict()
  # 'none', 'latent', 'latent+epistemic', or 'groups' (mass by labelled group, see
  # group_power: a known-groups baseline for any model, not a latent method)
  resampling.signal = "latent"
  resampling.bins = 10
  resampling.alpha = 1e-3
  resampling.combine = "max"  # 'max' (lab) or 'product' (paper)
  # latent histograms: 'vmap' (jnp.histogram), 'scatter' (CPU fast path) or 'auto' (scatter on
  # CPU, else vmap); see jaxface.resampling
  resampling.histogram_impl = "auto"
  # signal 'groups': group g gets sampling mass proportional to n_g ** (1 - group_power); 1
  # balances the groups, 0.5 weights them by the square root of their size.
  resampling.group_power = 1.0
  # signal 'latent_pca' / 'clusters': the top `components` principal axes of the latent
  # dimensions whose variance of z_mean over the faces exceeds `active_variance`, whitened;
  # 'latent_pca' takes the product of per-component histogram densities (bins, alpha),
  # 'clusters' gives each of `clusters` k-means clusters the same mass.
  resampling.components = 4
  resampling.active_variance = 1e-2
  resampling.clusters = 8
  # signal 'errors' (any model): misclassified training faces ('mistakes') or faces in
  # proportion to their loss ('loss') get up to `error_upweight` times the weight, from the
  # model at the end of the previous epoch (uniform in the first epoch).
  resampling.error_kind = "mistakes"
  resampling.error_upweight = 5.0
  # signal 'error_axis' (a VAE): inverse density (bins, alpha, combine) along this many whitened
  # latent directions that predict those errors (jaxface.resampling.error_axes says which).
  resampling.error_axes = 1
  # (Signals 'shift_errors' / 'shift_error_axis': the same two, with the errors read under
  # strong photometric shifts of each face, jaxface.inference.PHOTOMETRIC_SHIFTS.)

  # Each epoch's probabilities: momentum * the previous epoch's + (1 - momentum) * the signal's,
  # in [0, 1) (0 = the signal alone).
  resampling.momentum = 0.0
  # The last epoch at whose start the signal is computed afresh; later epochs keep those
  # probabilities (an identification model kept fixed, as in JTT). -1: every epoch.
  resampling.last_update_epoch = -1
  # Cross-fitting for the error signals (needs last_update_epoch = 1): this share of the faces
  # is held out of the first epoch, and the second epoch's signal reads their errors alone
  # (generalisation errors, not the fitted faces'), then is kept. 0 = off.
  resampling.heldout_fraction = 0.0
  # Blends ('a+b'): comma-separated weights, one per signal ('' = equal weights).
  resampling.blend_weights = ""
  # After the signal: temper the probabilities (p ** t) so that the Kish effective sample size
  # is this fraction of the faces (0 = off), then cap every face at `max_weight` times the
  # uniform probability (0 = off).
  resampling.target_ess = 0.0
  resampling.max_weight = 0.0
  # The non-faces (any model, any signal; jaxface.resampling.non_faces): from the second epoch
  # on, the `non_face_top` share of the training non-faces scored most face-like at the epoch's
  # start are drawn `non_face_upweight` times as often (1 = uniform, off).
  resampling.non_face_upweight = 1.0
  resampling.non_face_top = 0.05
  return resampling


def _check_fields(config: ml_collections.ConfigDict, schema: ml_collections.ConfigDict,
                  prefix: str = "") -> None:
  """Refuses a field ``schema`` lacks, a group given as a value, or a field ``config`` lacks."""
  for key in config.keys():
    if key not in schema:
      raise ValueError(f"unknown config field '{prefix}{key}'")
  for key in schema.keys():
    name = f"{prefix}{key}"
    if key not in config:
      raise ValueError(f"config field '{name}' is missing (a config written before the field "
                       f"existed?): start from jaxface.config.get_base_config(), or set it")
    if isinstance(schema[key], ml_collections.ConfigDict):
      if not isinstance(config[key], ml_collections.ConfigDict):
        raise ValueError(f"config field '{name}' must be a group of fields")
      _check_fields(config[key], schema[key], name + ".")


def validate_config(config: ml_collections.ConfigDict, num_devices: int, *,
                    registry: Mapping[str, signal_registry.Signal] = signal_registry.SIGNALS
                    ) -> None:
  """Raises ValueError naming the field for an unknown field or a bad value.

  Args:
    config: a run configuration.
    num_devices: the number of devices the batch is sharded over.
    registry: the resampling signals by name (``jaxface.resampling.SIGNALS``).
  """
  _check_fields(config, get_base_config())

  def fail(field, why):
    raise ValueError(f"config.{field} = {config_get(config, field)!r}: {why}")

  parts = _validate_model_and_signal(config, fail, registry)
  if config.model.n_filters < 1:
    fail("model.n_filters", "must be >= 1")
  if config.model.impl not in MODEL_IMPLS:
    fail("model.impl", f"must be one of {MODEL_IMPLS}")
  if not isinstance(config.model.get("input_norm", False), bool):
    fail("model.input_norm", "must be True or False")
  _validate_resampling(config, fail, parts)
  if config.loss.recon not in ("l1", "l2"):
    fail("loss.recon", "must be 'l1' or 'l2'")
  if not config.loss.kl_weight >= 0:
    fail("loss.kl_weight", "must be >= 0")
  if not config.loss.vae_weight > 0:
    fail("loss.vae_weight", "must be > 0 (the decoder and the latent learn from it alone)")
  if config.batch_size < 2 or config.batch_size % 2:
    fail("batch_size", "must be even and >= 2 (half faces, half non-faces)")
  if config.batch_size % (2 * num_devices):
    fail("batch_size", f"must be divisible by the number of devices ({num_devices}) into even "
         "per-device batches (half faces, half non-faces each)")
  if config.eval_batch_size < 1:
    fail("eval_batch_size", "must be >= 1")
  if config.bn_recalibration_batches < 0:
    fail("bn_recalibration_batches", "must be >= 0")
  _validate_evaluators(config, fail)
  fpr = config.operating_fpr
  if isinstance(fpr, bool) or not isinstance(fpr, (int, float)) or not 0 < fpr < 1:
    fail("operating_fpr", "must be a false-positive rate in (0, 1), e.g. 0.01")
  if config.num_epochs < 1:
    fail("num_epochs", "must be >= 1")
  if config.steps_per_epoch == 0 or config.steps_per_epoch < -1:
    fail("steps_per_epoch", "must be >= 1, or -1 for one pass over the data")
  if not config.learning_rate > 0:
    fail("learning_rate", "must be > 0")
  if config.lr_schedule not in LR_SCHEDULES:
    fail("lr_schedule", f"must be one of {LR_SCHEDULES}")
  if config.dtype not in DTYPES:
    fail("dtype", f"must be one of {DTYPES}")
  if config.log_every_steps < 1:
    fail("log_every_steps", "must be >= 1")
  if config.checkpoint_every_steps < 0:
    fail("checkpoint_every_steps", "must be >= 0")
  if config.keep_checkpoints < 1:
    fail("keep_checkpoints", "must be >= 1")
  size = config.data.image_size
  if not isinstance(size, int) or size < 16 or size % 16:
    fail("data.image_size", "must be a positive multiple of 16")
  _validate_augment(config, fail)
  from jaxface.hard_negatives import check_config  # imports jax
  check_config(config)


def _validate_resampling(config: ml_collections.ConfigDict, fail, parts: list[str]) -> None:
  """Checks the values of ``config.resampling`` (its signal is checked with the model)."""
  if config.resampling.blend_weights:
    try:
      weights = blend_weights(config.resampling)
    except ValueError:
      fail("resampling.blend_weights", "must be comma-separated numbers")
    if len(weights) != len(parts):
      fail("resampling.blend_weights", f"needs one weight per signal ({len(parts)})")
    if min(weights) < 0 or sum(weights) <= 0:
      fail("resampling.blend_weights", "must be >= 0 with a positive sum")
  rs = config.resampling
  if not isinstance(rs.components, int) or rs.components < 1:
    fail("resampling.components", "must be an integer >= 1")
  if not isinstance(rs.clusters, int) or rs.clusters < 1:
    fail("resampling.clusters", "must be an integer >= 1")
  if not rs.active_variance >= 0:
    fail("resampling.active_variance", "must be >= 0")
  if rs.error_kind not in ("mistakes", "loss"):
    fail("resampling.error_kind", "must be 'mistakes' or 'loss'")
  if not rs.error_upweight >= 1:
    fail("resampling.error_upweight", "must be >= 1")
  if not 0 <= rs.target_ess <= 1:
    fail("resampling.target_ess", "must be in (0, 1], or 0 for no tempering")
  if not rs.non_face_upweight >= 1:
    fail("resampling.non_face_upweight", "must be >= 1 (1 = uniform non-faces)")
  if not 0 < rs.non_face_top <= 1:
    fail("resampling.non_face_top", "must be in (0, 1]")
  if not (rs.max_weight == 0 or rs.max_weight >= 1):
    fail("resampling.max_weight", "must be >= 1 (times the uniform probability), or 0 for no cap")
  if config.resampling.bins < 1:
    fail("resampling.bins", "must be >= 1")
  if not config.resampling.alpha >= 0:
    fail("resampling.alpha", "must be >= 0")
  if not 0 <= config.resampling.group_power <= 1:
    fail("resampling.group_power", "must be in [0, 1]")
  if config.resampling.combine not in ("max", "product"):
    fail("resampling.combine", "must be 'max' or 'product'")
  if config.resampling.histogram_impl not in HISTOGRAM_IMPLS:
    fail("resampling.histogram_impl", f"must be one of {HISTOGRAM_IMPLS}")
  if isinstance(rs.error_axes, bool) or not isinstance(rs.error_axes, int) or rs.error_axes < 1:
    fail("resampling.error_axes", "must be an integer >= 1")
  if isinstance(rs.momentum, bool) or not 0 <= rs.momentum < 1:
    fail("resampling.momentum", "must be in [0, 1) (0 = no momentum)")
  last = rs.last_update_epoch
  if isinstance(last, bool) or not isinstance(last, int) or not (last == -1 or last >= 1):
    fail("resampling.last_update_epoch",
         "must be -1 (every epoch) or an epoch >= 1 (epoch 0 has no trained model to read)")
  fraction = rs.heldout_fraction
  if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not (
      0 <= fraction < 1):
    fail("resampling.heldout_fraction", "must be in [0, 1) (0 = no faces held out)")
  if fraction:
    errors = [name for name, s in signal_registry.SIGNALS.items() if s.uniform_in_first_epoch]
    if not all(part in errors for part in parts):
      fail("resampling.heldout_fraction", f"needs a signal that reads the classifier's errors "
           f"({' / '.join(errors)}), got {rs.signal!r}")
    if last != 1:
      fail("resampling.heldout_fraction", "needs resampling.last_update_epoch = 1 (the held-out "
           "faces are trained on from the second epoch on, so only its signal reads them unseen)")


def _validate_evaluators(config: ml_collections.ConfigDict, fail) -> None:
  """Checks that ``config.evaluators`` names each evaluator of jaxface.eval at most once."""
  from jaxface.eval import EVALUATORS  # imports jax
  names = config.evaluators
  if not isinstance(names, (tuple, list)) or not all(isinstance(name, str) for name in names):
    fail("evaluators", f"must be a tuple of evaluator names, of {tuple(EVALUATORS)}")
  unknown = [name for name in names if name not in EVALUATORS]
  if unknown:
    fail("evaluators", f"unknown evaluator {unknown[0]!r}: must be of {tuple(EVALUATORS)}")
  if len(set(names)) != len(names):
    fail("evaluators", "names an evaluator twice")


def _validate_model_and_signal(config: ml_collections.ConfigDict, fail,
                               registry: Mapping[str, signal_registry.Signal]) -> list[str]:
  """Checks ``model.kind``, ``model.latent_dim`` and ``resampling.signal`` and that they agree.

  Returns:
    The parts of ``resampling.signal`` (:func:`signal_parts`).
  """
  kind = config.model.kind
  if kind not in MODEL_KINDS:
    fail("model.kind", f"must be one of {MODEL_KINDS}")
  signal = config.resampling.signal
  signals, blend_signals, latent_signals = signal_names(registry)
  parts = signal_parts(signal)
  if not parts or any(p not in signals for p in parts):
    fail("resampling.signal", f"must be one of {signals}, or several of {blend_signals} "
         "joined by '+'")
  if len(parts) > 1 and any(p not in blend_signals for p in parts):
    fail("resampling.signal", f"only {blend_signals} can be blended")
  if len(set(parts)) != len(parts):
    fail("resampling.signal", "names a signal twice")
  # model.kind names what latent_dim and resampling.signal already say; they must agree.
  if kind == "cnn":
    if config.model.latent_dim != 0:
      fail("model.latent_dim", "must be 0 for config.model.kind = 'cnn' (the standard CNN)")
    if any(p in latent_signals for p in parts):
      others = [repr(name) for name in signals if name not in latent_signals]
      fail("resampling.signal", "the standard CNN has no latent space: use "
           f"{', '.join(others[:-1])} or {others[-1]}")
  else:
    if config.model.latent_dim < 1:
      fail("model.latent_dim", f"must be >= 1 for config.model.kind = {kind!r} (a VAE)")
    if kind == "ssvae" and signal != NO_SIGNAL:
      fail("resampling.signal", "config.model.kind = 'ssvae' trains without resampling: use "
           "'none', or config.model.kind = 'dbvae' to resample")
    if kind == "dbvae" and signal == NO_SIGNAL:
      fail("resampling.signal", "config.model.kind = 'dbvae' resamples the faces: use a signal "
           f"of {signals[1:]}, or config.model.kind = 'ssvae' for none")
  return parts


def _validate_augment(config: ml_collections.ConfigDict, fail) -> None:
  """Checks ``config.augment`` (also when disabled); errors name ``config.augment.<field>``."""
  from jaxface.augment import check_augment_config, exposure_range  # imports jax
  aug = config.augment
  for field in ("enabled", "flip"):
    if not isinstance(aug[field], bool):
      fail(f"augment.{field}", "must be True or False")
  numbers = {field: aug[field] for field in ("scale_min", "scale_max", "max_translate",
                                             "brightness", "contrast", "saturation",
                                             "non_face_scale_min")}
  numbers["exposure_min"], numbers["exposure_max"] = exposure_range(aug)
  for field, value in numbers.items():
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      fail(f"augment.{field}", "must be a number")
  if not isinstance(aug.fill, str):
    fail("augment.fill", "must be a string")
  try:
    check_augment_config(aug)
  except ValueError as err:
    raise ValueError(f"config.{err}") from None


def config_get(config: ml_collections.ConfigDict, dotted: str):
  """``config_get(c, 'model.kind')`` is ``c.model.kind``."""
  value = config
  for part in dotted.split("."):
    value = value[part]
  return value


def apply_recommended_training(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The recipe of the shipped configs: 8 epochs, learning rate on a cosine decay, input norm.

  The budget was chosen on validation data: on the UTKFace validation split 4 epochs over the
  lab's 2 at a constant rate (which leave non-face accuracy below 99%), then on the planted
  validation split 8 over 4, where 4 epochs are 1 200 steps and leave one seed in five with a
  model weak for every group; the input norm (``model.input_norm``) on validation data too:
  the UTKFace validation split at 1% false positives and the whole-photo validation portraits,
  for the CNN and the DB-VAE (the comparisons are in experiments/results/README.md).
  ``configs/*_lab.py`` keep the lab's budget and network.
  """
  config.num_epochs = 8
  config.lr_schedule = "cosine"
  config.model.input_norm = True
  return config


def apply_recommended_resampling(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """How the shipped DB-VAE configs resample, whatever their signal: the faces tempered to an
  effective sample size of 30% (``resampling.target_ess``), the signal computed once at the
  second epoch's start and kept (``resampling.last_update_epoch`` 1), and the 5% of the
  non-faces scored most face-like drawn 10 times as often (``resampling.non_face_upweight``,
  ``non_face_top``). Chosen on validation data at 1% false positives (the comparisons are in
  experiments/results/README.md). ``configs/dbvae.py`` and ``configs/dbvae_errors.py`` share it,
  so the two differ in their signal alone.
  """
  config.resampling.target_ess = 0.3
  config.resampling.last_update_epoch = 1
  config.resampling.non_face_upweight = 10.0
  config.resampling.non_face_top = 0.05
  return config


def apply_smoke(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Shrinks a config to a run of about a minute on a 2-core CPU (``--config=...:smoke``).

  The model is unchanged; the data, the number of steps and the evaluation sets are small.
  """
  config.name = f"{config.name}-smoke"
  config.num_epochs = 2
  config.steps_per_epoch = 40
  config.log_every_steps = 10
  config.checkpoint_every_steps = 25
  config.bn_recalibration_batches = 8
  config.data.n_train_faces = 1024
  config.data.n_train_non_faces = 1024
  config.data.n_test_per_group = 64
  config.data.n_test_non_faces = 256
  return config


def parse_config_arg(arg: str | None) -> set[str]:
  """Options after the ':' of ``--config=configs/x.py:opt1,opt2``; only 'smoke' is known."""
  options = {a.strip() for a in (arg or "").split(",") if a.strip()}
  unknown = options - {"smoke"}
  if unknown:
    raise ValueError(f"unknown config option(s) {sorted(unknown)}; known: ['smoke']")
  return options


def with_options(config: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
  """Applies the ``:opt`` options of ``--config=configs/x.py:opt`` (see :func:`parse_config_arg`)."""
  if "smoke" in parse_config_arg(arg):
    apply_smoke(config)
  return config


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """The config of a file given as ``configs/x.py[:option]``, as ``--config`` reads it.

  Args:
    spec: the path of a config file (a module with ``get_config(arg)``), optionally followed by
      ``:`` and its options (e.g. ``configs/dbvae.py:smoke``).

  Returns:
    ``get_config(option)`` of the file (``get_config(None)`` without an option).

  Raises:
    ValueError: the file does not exist, is not a ``.py`` module, or defines no
      ``get_config``.
  """
  path, _, option = str(spec).partition(":")
  if not Path(path).is_file():
    raise ValueError(f"config file not found: {path}")
  loader = importlib.util.spec_from_file_location(f"jaxface_config_{Path(path).stem}", path)
  if loader is None:
    raise ValueError(f"config file {path} is not a Python module (configs/x.py)")
  module = importlib.util.module_from_spec(loader)
  loader.loader.exec_module(module)
  if not callable(getattr(module, "get_config", None)):
    raise ValueError(f"config file {path} defines no get_config(arg)")
  return module.get_config(option or None)
