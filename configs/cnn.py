"""Standard face / not-face CNN (the lab's classifier) with augmentation and each image
standardised first (``model.input_norm``): batch 32, Adam 5e-4 on a cosine decay, 8 epochs;
without data flags on the embedded planted-bias faces.

    python experiments/run.py --config=configs/cnn.py --workdir=/tmp/jaxface/cnn
    python experiments/run.py --config=configs/cnn.py:smoke --workdir=/tmp/jaxface/smoke

Results (trained on the UTKFace bias set, tested on the PPB crops and whole portraits):
experiments/results/study_utkface_ppb_scan_augment.md and, for the input norm,
experiments/results/study_input_norm.md, summarised in docs/results.md. The lab's
recipe (2 epochs, constant rate, no augmentation): configs/cnn_lab.py.
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
