"""The lab's DB-VAE exactly: configs/dbvae.py without training-time augmentation.

    python experiments/run.py --config=configs/dbvae_lab.py --workdir=/tmp/jaxface/dbvae_lab

Latent 100, per-dimension latent histograms (10 bins, smoothing alpha 1e-3, combined by the
maximum over dimensions, the MIT 6.S191 lab), faces resampled at the start of every epoch;
batch 32, Adam 5e-4, 2 epochs, trained on the face chips as they are. Compare with
configs/dbvae.py, the same run with augmentation (experiments/results/probe_augment.md).
Smoke run: ``--config=configs/dbvae_lab.py:smoke``.
"""

from jaxface import config as config_lib


def get_config(arg: str | None = None):
  config = config_lib.get_base_config()
  config.name = "dbvae_lab"
  config.model.kind = "dbvae"
  config.resampling.signal = "latent"
  config.resampling.combine = "max"
  config.resampling.alpha = 1e-3
  config.augment.enabled = False
  return config_lib.with_options(config, arg)
