"""SS-VAE for bias diagnosis (MIT 6.S191 lab 2, 2023): latent 32, uniform sampling.

    python experiments/run.py --config=configs/ssvae.py --workdir=/tmp/jaxface/ssvae

Expected: the report (WORKDIR/report/index.html) shows which faces the model reconstructs
worst and finds rarest, and the risk scores per group. On the embedded planted-bias data, seeds
0, 1, 2 on a 2-core CPU (about 40 s each): detection LF 99.5, LM 98.8, DF 40.7 ± 23.1, DM
42.4 ± 24.2%, validation accuracy 95.9%: the classifier shares the standard CNN's bias, and the
darker faces have the higher aleatoric score. Smoke run: ``--config=configs/ssvae.py:smoke``
(about 30 s).
"""

from jaxface import config as config_lib


def get_config(arg: str | None = None):
  config = config_lib.get_base_config()
  config.name = "ssvae"
  config.model.kind = "ssvae"
  config.model.latent_dim = 32
  config.resampling.signal = "none"
  return config_lib.with_options(config, arg)
