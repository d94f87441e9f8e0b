"""ONNX graph preparation and conversion to a differentiable torch graph.

The names below are imported on first use: the graph preparation modules (``convert.prepare``,
``convert.batch_dim``) need no torch, and reading a model on onnxruntime alone (``info --no-convert``,
black-box methods, ``evaluate``) must not import it."""

from __future__ import annotations

__all__ = ["ADDED", "NODE_ATTR", "OVERRIDDEN", "converter", "onnx_nodes", "to_fx"]

_LAZY = {
    "NODE_ATTR": ".driver",
    "onnx_nodes": ".driver",
    "to_fx": ".driver",
    "ADDED": ".registry",
    "OVERRIDDEN": ".registry",
    "converter": ".registry",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
