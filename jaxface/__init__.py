"""jaxface: uncover and mitigate hidden bias in face detectors with learned latent structure."""

from jaxface import losses, models, resampling
from jaxface.losses import (classification_loss, debiasing_loss, kl_divergence,
                            reconstruction_loss, vae_loss)
from jaxface.models import decode, encode, forward, init_variables, reparameterize
from jaxface.resampling import (bias_score, blend_probabilities, epistemic_probabilities,
                                epistemic_score, sampling_probabilities)

__version__ = "0.1.0"
