"""Standard face / not-face CNN (the lab's classifier) with augmentation: batch 32, Adam 5e-4
on a cosine decay, 4 epochs; without data flags on the embedded planted-bias faces.

    python experiments/run.py --config=configs/cnn.py --workdir=/tmp/jaxface/cnn

Real faces (experiments/results/study_utkface_ppb_scan_augment.md, 5 seeds, trained on the
UTKFace bias set with ``--config.data.source=manifest
--config.data.path=PATH/utkface-bias/manifest.csv``, the PPB crops as
``--config.data.extra_test_sets``): UTKFace test E[A] 98.7%, non-face accuracy 99.1%; PPB tight
/ loose crops E[A] 93.9 / 95.9%, worst group (DM) 86.5 / 91.2%, Var[A] 33 / 18 %² (sampling
noise about 3): a skin-tone gap on unseen faces (Fitzpatrick type 6 at 73-81%). Whole PPB
portraits (``config.whole_images``, experiments/results/detect_whole_images.md): 91% of the
faces found at the threshold leaving 5% of non-face photos with a detection, LF / LM 98 / 99%,
DF / DM 88 / 79%. Each run takes about 3 minutes on a 2-core CPU. The lab's recipe (2
epochs, constant rate, no augmentation): configs/cnn_lab.py. Smoke run:
``--config=configs/cnn.py:smoke``.
"""

from jaxface import config as config_lib


def get_config(arg: str | None = None):
  config = config_lib.get_base_config()
  config.name = "cnn"
  config.model.kind = "cnn"
  config.model.latent_dim = 0
  config.resampling.signal = "none"
  config_lib.apply_recommended_training(config)
  return config_lib.with_options(config, arg)
