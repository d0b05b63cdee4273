"""The trainer: ``train_and_evaluate(config, workdir)`` and its parts.

* :mod:`jaxface.train.loop`: :func:`train_and_evaluate`, the run from start to summary;
* :mod:`jaxface.train.start`: set-up and resume (:func:`~jaxface.train.start.start_run`);
* :mod:`jaxface.train.state`: :class:`TrainState`, the optimizer, the compute dtype;
* :mod:`jaxface.train.step`: the jitted, data-parallel :func:`train_step`;
* :mod:`jaxface.train.equal_work`: the step decoding every row (benchmarks);
* :mod:`jaxface.train.resample`: the epoch-start resampling pass;
* :mod:`jaxface.train.batch_norm`: batch-norm recalibration before evaluation;
* :mod:`jaxface.train.metric_log`: ``metrics.jsonl``, TensorBoard and the progress bar.

The per-epoch evaluation lives in :mod:`jaxface.eval`; :func:`evaluate` and
:func:`test_set_metrics` are importable from here as well.
"""

from jaxface.eval.splits import evaluate, test_set_metrics
from jaxface.sharding import make_mesh
from jaxface.train.batch_norm import recalibrate_batch_norm
from jaxface.train.equal_work import train_step_decoding_every_row
from jaxface.train.loop import TrainResult, train_and_evaluate
from jaxface.train.metric_log import MetricWriter, line_kind, rewound_lines
from jaxface.train.resample import resampling_probabilities
from jaxface.train.state import TrainState, compute_dtype, create_train_state, make_optimizer
from jaxface.train.step import join_halves, make_train_step, split_halves, train_step

__all__ = [
    "MetricWriter", "TrainResult", "TrainState", "compute_dtype", "create_train_state",
    "evaluate", "join_halves", "line_kind", "make_mesh", "make_optimizer", "make_train_step",
    "recalibrate_batch_norm", "resampling_probabilities", "rewound_lines", "split_halves",
    "test_set_metrics", "train_and_evaluate", "train_step", "train_step_decoding_every_row",
]
