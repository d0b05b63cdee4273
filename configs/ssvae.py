"""SS-VAE for bias diagnosis (MIT 6.S191 lab 2, 2023): latent 32, uniform sampling; batch 32,
Adam 5e-4 on a cosine decay, 8 epochs, augmentation on, each image standardised first
(``model.input_norm``).

    python experiments/run.py --config=configs/ssvae.py --workdir=/tmp/jaxface/ssvae
    python experiments/run.py --config=configs/ssvae.py:smoke --workdir=/tmp/jaxface/smoke

The report (WORKDIR/report/index.html) shows which faces the model reconstructs worst and finds
rarest, and the risk scores per group. The same VAE (latent 100) trained without resampling is
the DB-VAE's ablation: experiments/results/study_utkface_ppb_scan_augment.md.
"""

from jaxface import config as config_lib


def get_config(arg: str | None = None):
  config = config_lib.get_base_config()
  config.name = "ssvae"
  config.model.kind = "ssvae"
  config.model.latent_dim = 32
  config.resampling.signal = "none"
  config_lib.apply_recommended_training(config)
  return config_lib.with_options(config, arg)
