"""Resampling of the training faces (DB-VAE and label-free alternatives) and per-face scores.

* :mod:`~jaxface.resampling.histograms`: per-dimension latent histograms (the lab's and the
  paper's DB-VAE weights, :func:`sampling_probabilities`; :func:`bias_score`).
* :mod:`~jaxface.resampling.latent_axes`: the whitened principal components of the active
  latent dimensions, their density (:func:`latent_pca_probabilities`) and k-means clusters
  (:func:`cluster_probabilities`).
* :mod:`~jaxface.resampling.error_axes`: the whitened latent directions that predict the
  classifier's errors, and the density along them (:func:`error_axis_probabilities`).
* :mod:`~jaxface.resampling.weights`: reconstruction-error, classifier-error and group weights;
  blends, tempering to an effective sample size and caps.
* :mod:`~jaxface.resampling.non_faces`: the non-faces scored most face-like, drawn more often
  (:func:`hard_non_face_weights`).
* :mod:`~jaxface.resampling.registry`: the signals of ``config.resampling.signal`` by name
  (:data:`SIGNALS`) and the epoch-start pass's computation (:func:`face_probabilities`).
"""

from jaxface.resampling.error_axes import (error_axis_probabilities, error_axis_weights,
                                           error_directions)
from jaxface.resampling.histograms import (COMBINE_MODES, HISTOGRAM_IMPLS, Array, bias_score,
                                           resolve_histogram_impl, sampling_probabilities)
from jaxface.resampling.latent_axes import (ACTIVE_VARIANCE, active_dimensions,
                                            cluster_probabilities, kmeans,
                                            latent_pca_probabilities, whitened_components)
from jaxface.resampling.non_faces import hard_count, hard_non_face_weights
from jaxface.resampling.registry import (SIGNALS, Signal, blend_weights, face_probabilities,
                                         needed_outputs, signal_parts)
from jaxface.resampling.weights import (ERROR_KINDS, blend, blend_probabilities, cap_weights,
                                        effective_sample_size, epistemic_probabilities,
                                        epistemic_score, error_probabilities, error_score,
                                        group_balanced_probabilities, held_out_faces,
                                        temper_to_ess)
