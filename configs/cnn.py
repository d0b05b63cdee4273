"""Standard face / not-face CNN (the lab's classifier): batch 32, Adam 5e-4, 2 epochs.

    python experiments/run.py --config=configs/cnn.py --workdir=/tmp/jaxface/cnn

Expected: high overall validation accuracy, but on the embedded planted-bias data a lower
detection rate for the rare darker-skinned faces than for the common lighter ones (the summary
and WORKDIR/report/index.html show the per-group rates). Smoke run:
``--config=configs/cnn.py:smoke``.
"""

from jaxface import config as config_lib


def get_config(arg: str | None = None):
  config = config_lib.get_base_config()
  config.name = "cnn"
  config.model.kind = "cnn"
  config.model.latent_dim = 0
  config.resampling.signal = "none"
  return config_lib.with_options(config, arg)
