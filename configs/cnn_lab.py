"""The lab's standard CNN exactly: no training-time augmentation, 2 epochs at a constant rate.

    python experiments/run.py --config=configs/cnn_lab.py --workdir=/tmp/jaxface/cnn_lab
    python experiments/run.py --config=configs/cnn_lab.py:smoke --workdir=/tmp/jaxface/smoke

The MIT 6.S191 lab trains on the face chips as they are (batch 32, Adam 5e-4 at a constant
rate, 2 epochs). Without augmentation the detector learns the chips' framing and colour as well
as the face; results: experiments/results/probe_augment.md.
"""

from jaxface import config as config_lib


def get_config(arg: str | None = None):
  config = config_lib.get_base_config()
  config.name = "cnn_lab"
  config.model.kind = "cnn"
  config.model.latent_dim = 0
  config.resampling.signal = "none"
  config.augment.enabled = False
  return config_lib.with_options(config, arg)
