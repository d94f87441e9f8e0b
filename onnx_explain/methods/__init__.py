"""Attribution methods. Each is one registered function (see :mod:`onnx_explain.methods.base`)."""

from . import blackbox, cam, gradient, integrated_gradients, layer, lrp, smoothtaylor, tabular  # noqa: F401  (registration)
from .base import METHODS, Explanation, MethodSpec, RuntimeScorer, Scorer, register_method

__all__ = ["METHODS", "Explanation", "MethodSpec", "RuntimeScorer", "Scorer", "register_method"]
