"""DB-VAE resampled by the classifier's mistakes (JTT-style), not through its latent: the
mechanism's ablation beside configs/dbvae.py, which it matches in everything but the signal.
After a first epoch of uniform sampling, the faces misclassified at its end are drawn 20 times
as often (``resampling.signal='errors'``, ``error_upweight`` 20), tempered to an effective
sample size of 30% of the faces and kept for the rest of the run (``last_update_epoch`` 1); the
5% of the non-faces scored most face-like are drawn 10 times as often. Latent 100, batch 32,
Adam 5e-4 on a cosine decay, 8 epochs, augmentation on, each image standardised first
(``model.input_norm``).

    python experiments/run.py --config=configs/dbvae_errors.py --workdir=/tmp/jaxface/dbvae_errors
    python experiments/run.py --config=configs/dbvae_errors.py:smoke --workdir=/tmp/jaxface/smoke

Results: experiments/results/study_fixed_signal.md (planted faces at 1% false positives, the
"errors ... kept after epoch 1" rows, 20 seeds); on UTKFace -> PPB, study_heldout_fold.md has
the same signal read on a held-out half. The mistakes recomputed at every epoch, untempered, as
this config trained before:
``--config.resampling.last_update_epoch=-1 --config.resampling.target_ess=0
--config.resampling.non_face_upweight=1`` (study_latent_signals.md).
"""

from jaxface import config as config_lib


def get_config(arg: str | None = None):
  config = config_lib.get_base_config()
  config.name = "dbvae_errors"
  config.resampling.signal = "errors"
  config.resampling.error_upweight = 20.0
  config_lib.apply_recommended_resampling(config)
  config_lib.apply_recommended_training(config)
  return config_lib.with_options(config, arg)
