"""Standard face / not-face CNN (the lab's classifier): batch 32, Adam 5e-4, 2 epochs.

    python experiments/run.py --config=configs/cnn.py --workdir=/tmp/jaxface/cnn

Expected: high overall validation accuracy, but on the embedded planted-bias data (5% darker-
skinned training faces) a much lower detection rate for the darker-skinned faces. Measured on a
2-core CPU, seeds 0, 1, 2 (``--config.seed=S``), about 20 s each: validation accuracy 96.1 ±
0.8%; detection LF 98.8 ± 0.4, LM 99.1 ± 0.9, DF 47.5 ± 27.8, DM 51.6 ± 28.0%; E[A] 74.2%,
worst group 46.8 ± 28.5%; non-face accuracy 97.1%. The summary and WORKDIR/report/index.html
show the per-group rates. Smoke run: ``--config=configs/cnn.py:smoke`` (about 20 s).
"""

from jaxface import config as config_lib


def get_config(arg: str | None = None):
  config = config_lib.get_base_config()
  config.name = "cnn"
  config.model.kind = "cnn"
  config.model.latent_dim = 0
  config.resampling.signal = "none"
  return config_lib.with_options(config, arg)
