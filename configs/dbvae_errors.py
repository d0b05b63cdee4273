"""DB-VAE resampled by the classifier's mistakes (JTT-style), not through its latent: faces
misclassified at the end of the previous epoch are drawn 20 times as often
(``resampling.signal='errors'``, ``error_upweight`` 20; uniform in the first epoch). Latent
100, batch 32, Adam 5e-4 on a cosine decay, 4 epochs, augmentation on, each image standardised
first (``model.input_norm``).

    python experiments/run.py --config=configs/dbvae_errors.py --workdir=/tmp/jaxface/dbvae_errors
    python experiments/run.py --config=configs/dbvae_errors.py:smoke --workdir=/tmp/jaxface/smoke

Results: experiments/results/study_latent_signals.md (planted faces at 1% false positives),
experiments/results/study_utkface_ppb_scan_augment.md (real faces; the default of
configs/dbvae.py before the latent error axis).
"""

from jaxface import config as config_lib


def get_config(arg: str | None = None):
  config = config_lib.get_base_config()
  config.name = "dbvae_errors"
  config.resampling.signal = "errors"
  config.resampling.error_upweight = 20.0
  config_lib.apply_recommended_training(config)
  return config_lib.with_options(config, arg)
