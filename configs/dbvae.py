"""DB-VAE: a debiasing VAE (Amini et al., AIES 2019) that resamples its training faces through
its latent space, without group labels: after a first epoch of uniform sampling, the faces are
drawn by the inverse histogram density of their codes along the latent direction that best
predicts the classifier's mistakes (``resampling.signal='error_axis'``: ridge least squares on
the whitened ``z_mean``, 10 bins, alpha 1e-3), tempered to an effective sample size of 30% of the
faces (``resampling.target_ess``), computed once at the second epoch's start and kept for the
rest of the run (``resampling.last_update_epoch=1``: the identification model is the first
epoch's, as in JTT, so the mass does not swing); on the other side of the boundary the 5% of
the training non-faces it scores most face-like at each epoch's start are drawn 10 times as
often (``resampling.non_face_upweight``). Latent 100, batch 32, Adam 5e-4 on a cosine decay,
8 epochs, augmentation on, each image standardised first (``model.input_norm``). Without data
flags it trains on the embedded planted-bias faces (no download):

    python experiments/run.py --config=configs/dbvae.py --workdir=/tmp/jaxface/dbvae
    python experiments/run.py --config=configs/dbvae.py:smoke --workdir=/tmp/jaxface/smoke

Results and how the setting was chosen (on validation data, at 1% false positives):
experiments/results/study_budget_8epochs.md (the budget), study_fixed_signal.md (the signal kept after the first epoch),
study_non_faces_planted.md and study_latent_signals.md; with the input norm,
study_input_norm.md (planted and UTKFace -> PPB). Variants: the signal recomputed every epoch,
``--config.resampling.last_update_epoch=-1``; the axis fitted to the mistakes of a half of the
faces held out of the first epoch, ``--config.resampling.heldout_fraction=0.5``
(study_heldout_fold.md); the classifier's mistakes up-weighted without the
latent, configs/dbvae_errors.py; the lab's per-dimension latent histograms, recomputed every
epoch, configs/dbvae_lab.py or ``--config.resampling.signal=latent``;
the paper's product of densities, ``--config.resampling.signal=latent
--config.resampling.combine=product``; the capsa lab's bias + epistemic blend,
``--config.resampling.signal=latent+epistemic``; the latent error axis alone,
``--config.resampling.target_ess=0 --config.resampling.non_face_upweight=1``.
"""

from jaxface import config as config_lib


def get_config(arg: str | None = None):
  config = config_lib.get_base_config()
  config.name = "dbvae"
  config.resampling.signal = "error_axis"
  config.resampling.error_kind = "mistakes"
  config.resampling.error_axes = 1
  config.resampling.bins = 10
  config.resampling.alpha = 1e-3
  config_lib.apply_recommended_resampling(config)
  config_lib.apply_recommended_training(config)
  return config_lib.with_options(config, arg)
