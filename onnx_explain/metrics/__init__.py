"""Evaluation metrics, each one registered stateless function (see :mod:`onnx_explain.metrics.base`).

The registration order is the order of listings and of the audit's overview columns.
"""

# isort: off
from . import perturbation  # noqa: F401  (registration: pixel flipping ... localisation)
from . import correlation  # noqa: F401  (sensitivity-n, faithfulness correlation, infidelity)
from . import noise  # noqa: F401  (total variation)
from . import robustness  # noqa: F401  (max-sensitivity, rank consistency)
from . import text  # noqa: F401  (token deletion, insertion, rank consistency)
from . import road  # noqa: F401  (ROAD, ADCC)

# isort: on
from .base import METRICS, MetricSpec, Predictor, register_metric

__all__ = ["METRICS", "MetricSpec", "Predictor", "register_metric"]
