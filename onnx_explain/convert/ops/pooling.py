"""MaxPool and AveragePool with ``auto_pad`` SAME_UPPER / SAME_LOWER (keras2onnx and tf2onnx write them for
every ``padding='same'`` pooling) or with pads that differ before and after (tf2onnx's explicit form of
the same; AveragePool raised "non symmetrical padding is not implemented") — onnx2torch 1.5.15 refuses
both — and the pooling versions it lacks (MaxPool-22, AveragePool-19/22).

SAME padding depends on the input's size, so it is computed per call, as onnxruntime does
(``pool_attributes.h``): ``out = ceil(in / stride)``, ``total = max((out - 1) * stride + (k - 1) * dilation
+ 1 - in, 0)``; SAME_UPPER puts ``total // 2`` before and the rest after, SAME_LOWER the larger half before.
MaxPool pads with −inf; AveragePool divides by the window's count of real elements unless
``count_include_pad=1``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import builtin, converter
from ._common import result, unsupported
from .tensor import schema_versions

_MAX = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def same_pads(spatial, kernel, strides, dilations, lower: bool) -> list[int]:
    """``F.pad``'s list (last axis first) for SAME padding of an input with ``spatial`` sizes."""
    pads = []
    for n, k, s, d in zip(spatial, kernel, strides, dilations, strict=True):
        total = max((math.ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0)
        small, big = total // 2, total - total // 2
        pads.append((big, small) if lower else (small, big))
    return [p for pair in reversed(pads) for p in pair]


class OnnxPaddedPool(nn.Module):
    """MaxPool / AveragePool with SAME padding computed from the input's size (``lower`` None or bool), or
    with explicit ``pads`` that may differ before and after (``F.pad``'s list)."""

    def __init__(self, kind: str, kernel, strides, dilations, lower, count_include_pad: bool, pads=None):
        super().__init__()
        self.kind, self.kernel, self.strides = kind, list(kernel), list(strides)
        self.dilations, self.lower, self.count_include_pad = list(dilations), lower, count_include_pad
        self.pads = pads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = len(self.kernel)
        pads = self.pads or same_pads(x.shape[2:], self.kernel, self.strides, self.dilations, self.lower)
        if self.kind == "max":
            padded = F.pad(x, pads, value=float("-inf"))
            return _MAX[n](padded, self.kernel, self.strides, 0, self.dilations)
        padded = F.pad(x, pads)
        summed = _AVG[n](padded, self.kernel, self.strides, 0) * math.prod(self.kernel)
        if self.count_include_pad:
            return summed / math.prod(self.kernel)
        ones = F.pad(torch.ones_like(x[:1, :1]), pads)
        count = _AVG[n](ones, self.kernel, self.strides, 0) * math.prod(self.kernel)
        return summed / count


def _same_or_builtin(kind: str, builtin_version: int):
    base = builtin("MaxPool" if kind == "max" else "AveragePool", builtin_version)

    def convert(node, graph):
        a = node.attributes
        auto_pad = a.get("auto_pad", "NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
        explicit = list(a.get("pads", []))
        half = len(explicit) // 2
        asymmetric = auto_pad == "NOTSET" and explicit[:half] != explicit[half:]
        if auto_pad not in ("SAME_UPPER", "SAME_LOWER") and not asymmetric:
            if kind == "avg" and any(d != 1 for d in a.get("dilations", [])):
                raise unsupported(node, "dilations other than 1")
            return base(node, graph)
        what = "asymmetric pads" if asymmetric else f"auto_pad {auto_pad}"
        if len(node.output_values) > 1 and node.output_values[1]:
            raise unsupported(node, f"the Indices output with {what}")
        if a.get("ceil_mode", 0):
            raise unsupported(node, f"ceil_mode=1 with {what}")
        kernel = list(a["kernel_shape"])
        strides = list(a.get("strides", [1] * len(kernel)))
        dilations = list(a.get("dilations", [1] * len(kernel)))
        if kind == "avg" and any(d != 1 for d in dilations):
            raise unsupported(node, "dilations other than 1")
        pads = None
        if asymmetric:  # F.pad's order: the last axis first, (before, after) each
            pads = [
                p for b, e in zip(explicit[:half][::-1], explicit[half:][::-1], strict=True) for p in (b, e)
            ]
        module = OnnxPaddedPool(
            kind,
            kernel,
            strides,
            dilations,
            auto_pad == "SAME_LOWER",
            bool(a.get("count_include_pad", 0)),
            pads,
        )
        return result(module, node, (node.input_values[0],))

    convert.__name__ = f"{kind}_pool_same"
    return convert


for _v in (8, 10, 11, 12):
    converter("MaxPool", _v, override=True)(_same_or_builtin("max", _v))
converter("MaxPool", schema_versions("MaxPool", [22]))(_same_or_builtin("max", 12))
for _v in (7, 10, 11):
    converter("AveragePool", _v, override=True)(_same_or_builtin("avg", _v))
converter("AveragePool", schema_versions("AveragePool", [19, 22]))(_same_or_builtin("avg", 11))
