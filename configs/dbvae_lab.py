"""The lab's DB-VAE exactly: latent histograms, no augmentation, 2 epochs at a constant rate.

    python experiments/run.py --config=configs/dbvae_lab.py --workdir=/tmp/jaxface/dbvae_lab
    python experiments/run.py --config=configs/dbvae_lab.py:smoke --workdir=/tmp/jaxface/smoke

Latent 100, per-dimension latent histograms (10 bins, smoothing alpha 1e-3, combined by the
maximum over dimensions, the MIT 6.S191 lab), faces resampled at the start of every epoch;
batch 32, Adam 5e-4 at a constant rate, 2 epochs, trained on the face chips as they are.
Results beside configs/dbvae.py's: experiments/results/README.md (the "DB-VAE lab" rows).
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
