"""DB-VAE: a debiasing VAE (Amini et al., AIES 2019) that resamples its training faces without
group labels: faces the classifier got wrong at the end of the previous epoch are drawn 20
times as often (``resampling.signal='errors'``, ``error_upweight`` 20; uniform in the first
epoch). Latent 100, batch 32, Adam 5e-4 on a cosine decay, 4 epochs, augmentation on. Without
data flags it trains on the embedded planted-bias faces (no download):

    python experiments/run.py --config=configs/dbvae.py --workdir=/tmp/jaxface/dbvae
    python experiments/run.py --config=configs/dbvae.py:smoke --workdir=/tmp/jaxface/smoke

Results: experiments/results/study_utkface_ppb_scan_augment.md (real faces) and
experiments/results/study_planted_cosine4.md (planted faces), summarised in docs/results.md;
the signal was chosen on validation data (experiments/results/README.md). Variants: the lab's
per-dimension latent histograms (max), configs/dbvae_lab.py or
``--config.resampling.signal=latent``; the paper's product of densities,
``--config.resampling.signal=latent --config.resampling.combine=product``; the capsa lab's
bias + epistemic blend, ``--config.resampling.signal=latent+epistemic``.
"""

from jaxface import config as config_lib


def get_config(arg: str | None = None):
  config = config_lib.get_base_config()
  config.name = "dbvae"
  config.resampling.signal = "errors"
  config.resampling.error_upweight = 20.0
  config_lib.apply_recommended_training(config)
  return config_lib.with_options(config, arg)
