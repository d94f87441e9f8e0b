"""Evaluation metrics, each one registered stateless function (see :mod:`onnx_explain.metrics.base`)."""

from . import correlation, noise, perturbation, robustness  # noqa: F401  (registration)
from .base import METRICS, Predictor, register_metric

__all__ = ["METRICS", "Predictor", "register_metric"]
