"""DB-VAE: debiasing VAE with latent-density resampling (Amini et al., AIES 2019).

Latent 100, 10 bins, smoothing alpha 1e-3, per-dimension max (the MIT 6.S191 lab), faces
resampled at the start of every epoch; batch 32, Adam 5e-4, 2 epochs, on the embedded
planted-bias faces (no download):

    python experiments/run.py --config=configs/dbvae.py --workdir=/tmp/jaxface/dbvae

Expected: compared with configs/cnn.py on the same data, the darker-skinned faces receive a
larger share of the sampling mass than their 5% share of the faces, and the gap between the
best and worst group's detection rate shrinks (see the summary printed at the end and
WORKDIR/report/index.html). A one-minute check of the whole pipeline:

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
