"""ONNX graph preparation and conversion to a differentiable torch graph.

The names below are imported on first use: the graph preparation modules (``convert.prepare``,
``convert.batch_dim``) need no torch, and reading a model on onnxruntime alone (``info --no-convert``,
black-box methods, ``evaluate``) must not import it."""

from __future__ import annotations

from ..lazy import lazy_exports

__all__ = ["ADDED", "NODE_ATTR", "OVERRIDDEN", "converter", "onnx_nodes", "to_fx"]

_LAZY = {
    "NODE_ATTR": ".driver",
    "onnx_nodes": ".driver",
    "to_fx": ".driver",
    "ADDED": ".registry",
    "OVERRIDDEN": ".registry",
    "converter": ".registry",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
