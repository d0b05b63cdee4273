"""The base experiment configuration and its validation.

``configs/*.py`` import :func:`get_base_config` and change a few fields. Every field a run reads
is defined here, so :func:`validate_config` can reject unknown fields and bad values by name
before anything is compiled.
"""

from __future__ import annotations

import ml_collections

MODEL_KINDS = ("cnn", "ssvae", "dbvae")
MODEL_IMPLS = ("auto", "flax", "cpu_fast")  # jaxface.models.IMPLS
SIGNALS = ("none", "latent", "latent+epistemic", "groups")
DTYPES = ("float32", "bfloat16")


def get_base_config() -> ml_collections.ConfigDict:
  """All fields of a run, with the DB-VAE lab's defaults."""
  from jaxface import data  # the data config belongs to the data package

  config = ml_collections.ConfigDict()
  config.name = "dbvae"  # shown in reports and comparisons
  config.seed = 0

  config.model = ml_collections.ConfigDict()
  config.model.kind = "dbvae"  # 'cnn' (standard classifier), 'ssvae' or 'dbvae'
  config.model.latent_dim = 100  # 0 for the CNN
  config.model.n_filters = 12
  # 'auto' (cpu_fast on the CPU backend, else flax), 'flax' or 'cpu_fast' (jaxface.models)
  config.model.impl = "auto"

  config.data = data.default_data_config()

  config.loss = ml_collections.ConfigDict()
  config.loss.kl_weight = 5e-4
  config.loss.recon = "l1"  # 'l1' (labs) or 'l2' (paper)

  config.resampling = ml_collections.ConfigDict()
  # 'none', 'latent', 'latent+epistemic', or 'groups' (mass by labelled group, see
  # group_power: a known-groups baseline for any model, not a latent method)
  config.resampling.signal = "latent"
  config.resampling.bins = 10
  config.resampling.alpha = 1e-3
  config.resampling.combine = "max"  # 'max' (lab) or 'product' (paper)
  # signal 'groups': group g gets sampling mass proportional to n_g ** (1 - group_power); 1
  # balances the groups, 0.5 weights them by the square root of their size.
  config.resampling.group_power = 1.0

  config.batch_size = 32  # global batch: half faces, half non-faces
  config.num_epochs = 2
  config.steps_per_epoch = -1  # -1: 2 * n_faces // batch_size (every face about once)
  config.learning_rate = 5e-4
  config.dtype = "float32"  # compute dtype; parameters and losses stay float32
  config.eval_batch_size = 256
  # Before every evaluation, replace the batch norms' running averages by the mean statistics
  # of this many uniformly drawn training batches (half faces) of eval_batch_size; 0 keeps the
  # running averages (jaxface.train.recalibrate_batch_norm says why).
  config.bn_recalibration_batches = 32

  config.log_every_steps = 50
  config.checkpoint_every_steps = 500  # also at every epoch end; 0 = epoch ends only
  config.keep_checkpoints = 3
  config.progress_bar = True
  config.write_report = True  # WORKDIR/report/ at the end of the run
  config.distributed = False  # call jax.distributed.initialize() (multi-host)
  return config


def _check_keys(config: ml_collections.ConfigDict, schema: ml_collections.ConfigDict,
                prefix: str = "") -> None:
  for key in config.keys():
    name = f"{prefix}{key}"
    if key not in schema:
      raise ValueError(f"unknown config field '{name}'")
    if isinstance(schema[key], ml_collections.ConfigDict):
      if not isinstance(config[key], ml_collections.ConfigDict):
        raise ValueError(f"config field '{name}' must be a group of fields")
      _check_keys(config[key], schema[key], name + ".")


def validate_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Raises ValueError naming the field for an unknown field or a bad value.

  Args:
    config: a run configuration.
    num_devices: the number of devices the batch is sharded over.
  """
  _check_keys(config, get_base_config())

  def fail(field, why):
    raise ValueError(f"config.{field} = {config_get(config, field)!r}: {why}")

  kind = config.model.kind
  if kind not in MODEL_KINDS:
    fail("model.kind", f"must be one of {MODEL_KINDS}")
  if kind == "cnn":
    if config.model.latent_dim != 0:
      fail("model.latent_dim", "must be 0 for the standard CNN")
    if config.resampling.signal not in ("none", "groups"):
      fail("resampling.signal", "the standard CNN has no latent space: use 'none' or 'groups'")
  elif config.model.latent_dim < 1:
    fail("model.latent_dim", "must be >= 1 for a VAE")
  if config.model.n_filters < 1:
    fail("model.n_filters", "must be >= 1")
  if config.model.impl not in MODEL_IMPLS:
    fail("model.impl", f"must be one of {MODEL_IMPLS}")
  if config.resampling.signal not in SIGNALS:
    fail("resampling.signal", f"must be one of {SIGNALS}")
  if config.resampling.bins < 1:
    fail("resampling.bins", "must be >= 1")
  if not config.resampling.alpha >= 0:
    fail("resampling.alpha", "must be >= 0")
  if not 0 <= config.resampling.group_power <= 1:
    fail("resampling.group_power", "must be in [0, 1]")
  if config.resampling.combine not in ("max", "product"):
    fail("resampling.combine", "must be 'max' or 'product'")
  if config.loss.recon not in ("l1", "l2"):
    fail("loss.recon", "must be 'l1' or 'l2'")
  if not config.loss.kl_weight >= 0:
    fail("loss.kl_weight", "must be >= 0")
  if config.batch_size < 2 or config.batch_size % 2:
    fail("batch_size", "must be even and >= 2 (half faces, half non-faces)")
  if config.batch_size % (2 * num_devices):
    fail("batch_size", f"must be divisible by the number of devices ({num_devices}) into even "
         "per-device batches (half faces, half non-faces each)")
  if config.eval_batch_size < 1:
    fail("eval_batch_size", "must be >= 1")
  if config.bn_recalibration_batches < 0:
    fail("bn_recalibration_batches", "must be >= 0")
  if config.num_epochs < 1:
    fail("num_epochs", "must be >= 1")
  if config.steps_per_epoch == 0 or config.steps_per_epoch < -1:
    fail("steps_per_epoch", "must be >= 1, or -1 for one pass over the data")
  if not config.learning_rate > 0:
    fail("learning_rate", "must be > 0")
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


def config_get(config: ml_collections.ConfigDict, dotted: str):
  """``config_get(c, 'model.kind')`` is ``c.model.kind``."""
  value = config
  for part in dotted.split("."):
    value = value[part]
  return value


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
