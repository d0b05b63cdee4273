"""SS-VAE for bias diagnosis (MIT 6.S191 lab 2, 2023): latent 32, uniform sampling.

    python experiments/run.py --config=configs/ssvae.py --workdir=/tmp/jaxface/ssvae

Expected: the report (WORKDIR/report/index.html) shows which faces the model reconstructs
worst and finds rarest; on the embedded planted-bias data the darker-skinned faces have lower
latent density (bias score) and lower detection rates than the lighter ones. Smoke run:
``--config=configs/ssvae.py:smoke``.
"""

from jaxface import config as config_lib


def get_config(arg: str | None = None):
  config = config_lib.get_base_config()
  config.name = "ssvae"
  config.model.kind = "ssvae"
  config.model.latent_dim = 32
  config.resampling.signal = "none"
  return config_lib.with_options(config, arg)
