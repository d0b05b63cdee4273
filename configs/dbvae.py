"""DB-VAE: a debiasing VAE (Amini et al., AIES 2019) that resamples its training faces without
group labels: faces the classifier got wrong at the end of the previous epoch are drawn 20
times as often (``resampling.signal='errors'``, ``error_upweight`` 20; uniform in the first
epoch). Latent 100, batch 32, Adam 5e-4 on a cosine decay, 4 epochs, augmentation on. Without
data flags it trains on the embedded planted-bias faces (no download):

    python experiments/run.py --config=configs/dbvae.py --workdir=/tmp/jaxface/dbvae

The signal was chosen on validation data (the planted validation split; the UTKFace one could
not tell the signals apart): experiments/results/README.md. Real faces (5 seeds, trained on
the UTKFace bias set with ``--config.data.source=manifest
--config.data.path=PATH/utkface-bias/manifest.csv``, the PPB crops as
``--config.data.extra_test_sets``; experiments/results/study_utkface_ppb_scan_augment.md):
UTKFace test E[A] 99.3%, non-face accuracy 98.2%; PPB tight / loose E[A] 96.0 / 96.6%, worst
group (DM) 90.7 / 92.2%, Var[A] 16 / 13 %² (configs/cnn.py: 93.9 / 95.9%, 86.5 / 91.2%, 33 / 18
%²); whole PPB portraits (``config.whole_images``) 91% of the faces found, DM 77% (the CNN's
79%). On the planted faces (5 seeds, with the earlier augmentation: shift 8%, no separate
non-face zoom; experiments/results/study_planted_cosine4.md): E[A] 95.2%, worst group 89.0%
(configs/cnn.py: 78.1 / 53.0%), non-face accuracy 88% (97%). Each run takes about 5 minutes on
a 2-core CPU. See the summary printed at the end and WORKDIR/report/index.html. A
check of the whole pipeline in about a minute:

    python experiments/run.py --config=configs/dbvae.py:smoke --workdir=/tmp/jaxface/smoke

The lab's per-dimension latent histograms (max): configs/dbvae_lab.py, or
``--config.resampling.signal=latent``; the paper's product of densities:
``--config.resampling.signal=latent --config.resampling.combine=product``; the capsa lab's
bias + epistemic blend: ``--config.resampling.signal=latent+epistemic``.
"""

from jaxface import config as config_lib


def get_config(arg: str | None = None):
  config = config_lib.get_base_config()
  config.name = "dbvae"
  config.resampling.signal = "errors"
  config.resampling.error_upweight = 20.0
  config_lib.apply_recommended_training(config)
  return config_lib.with_options(config, arg)
