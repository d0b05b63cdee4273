"""DB-VAE: debiasing VAE with latent-density resampling (Amini et al., AIES 2019).

Latent 100, 10 bins, smoothing alpha 1e-3, per-dimension max (the MIT 6.S191 lab), faces
resampled at the start of every epoch; batch 32, Adam 5e-4, 2 epochs, on the embedded
planted-bias faces (no download):

    python experiments/run.py --config=configs/dbvae.py --workdir=/tmp/jaxface/dbvae

Expected (measured on a 2-core CPU, seeds 0, 1, 2, about 40 s each): the darker-skinned faces
receive 7.8 ± 1.9% of the last epoch's sampling mass against their 5% share of the faces
(effective sample size 35% of the faces). That is too little to close the planted gap: detection
LF 98.1, LM 98.8, DF 45.6 ± 5.9, DM 48.7 ± 9.4%, E[A] 72.8 ± 1.9%, worst group 42.4 ± 3.9%
(configs/cnn.py: 74.2 ± 13.7 and 46.8 ± 28.5), non-face accuracy 96.9%. Per-dimension
histograms see skin tone poorly: in this latent space it lies along an oblique direction (one
principal axis of z_mean ranks darker faces with AUC 0.91), not in the tails of single
dimensions. See the summary printed at the end and WORKDIR/report/index.html. A check of the
whole pipeline in about 30 s:

    python experiments/run.py --config=configs/dbvae.py:smoke --workdir=/tmp/jaxface/smoke

The paper's product of per-dimension densities: --config.resampling.combine=product. The capsa
lab's bias + epistemic blend: --config.resampling.signal=latent+epistemic. Real faces:
--config.data.source=manifest --config.data.path=PATH/manifest.csv.
"""

from jaxface import config as config_lib


def get_config(arg: str | None = None):
  config = config_lib.get_base_config()
  config.name = "dbvae"
  return config_lib.with_options(config, arg)
