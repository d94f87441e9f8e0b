"""ONNX graph preparation and conversion to a differentiable torch graph."""

from .driver import NODE_ATTR, onnx_nodes, to_fx
from .registry import ADDED, OVERRIDDEN, converter

__all__ = ["ADDED", "NODE_ATTR", "OVERRIDDEN", "converter", "onnx_nodes", "to_fx"]
