"""Tensor-shaping ops that onnx2torch gets wrong or lacks at today's opsets.

- Reshape: ``allowzero=1`` (set on nearly every Reshape of the dynamo exporter) raised; 19/21/23/24 missing.
- Split-18: ``num_outputs`` with a smaller last chunk.
- Clip: integer tensors came back as float (the next Gather crashed); bounds fed as computed tensors
  raised "Dynamic value of min/max is not implemented".
- CumSum: ``reverse`` defaulted to 1, so every plain CumSum was silently reversed.
"""

from __future__ import annotations

import math

import onnx.defs
import torch
from torch import nn

from ..registry import converter
from ._common import const, result


def schema_versions(op_type: str, candidates, domain: str = "") -> list[int]:
    """The members of ``candidates`` that are real since_versions of ``op_type`` in this onnx."""
    out = []
    for v in candidates:
        try:
            if onnx.defs.get_schema(op_type, v, domain).since_version == v:
                out.append(v)
        except onnx.defs.SchemaError:
            pass
    return out


# --- Reshape -------------------------------------------------------------------------------------
class OnnxReshape(nn.Module):
    """ONNX Reshape; ``allowzero=0`` copies a 0 in ``shape`` from the input, ``allowzero=1`` keeps it."""

    def __init__(self, allowzero: bool = False):
        super().__init__()
        self.allowzero = bool(allowzero)

    def forward(self, x: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
        dims = [int(s) for s in shape.tolist()]
        if not self.allowzero:
            dims = [x.shape[i] if s == 0 else s for i, s in enumerate(dims)]
        return torch.reshape(x, dims)


def _reshape(node, graph):
    return result(OnnxReshape(node.attributes.get("allowzero", 0)), node)


converter("Reshape", [5, 13, 14], override=True)(_reshape)
converter("Reshape", schema_versions("Reshape", [19, 21, 23, 24, 25]))(_reshape)


# --- Split ---------------------------------------------------------------------------------------
class OnnxSplit18(nn.Module):
    """ONNX Split-18: explicit sizes, or ``num_outputs`` chunks of ceil(n / num_outputs)."""

    def __init__(self, axis: int, num_outputs: int):
        super().__init__()
        self.axis = axis
        self.num_outputs = num_outputs

    def forward(self, x: torch.Tensor, split: torch.Tensor | None = None):
        if split is not None:
            sizes = [int(s) for s in split.tolist()]
        else:
            sizes = math.ceil(x.shape[self.axis] / self.num_outputs)
        return tuple(torch.split(x, sizes, dim=self.axis))


@converter("Split", 18)
def _split18(node, graph):
    num = node.attributes.get("num_outputs", len(node.output_values))
    return result(OnnxSplit18(node.attributes.get("axis", 0), num), node)


# --- Clip ----------------------------------------------------------------------------------------
class OnnxClip(nn.Module):
    """clamp(x, min, max) that keeps the input dtype; bounds constant (attributes) or tensors (inputs)."""

    def __init__(self, min_val=None, max_val=None):
        super().__init__()
        self.min_val = min_val
        self.max_val = max_val

    def forward(self, x, min_val=None, max_val=None):
        lo = self.min_val if min_val is None else min_val.to(x.dtype)
        hi = self.max_val if max_val is None else max_val.to(x.dtype)
        if lo is None and hi is None:
            return x
        return torch.clamp(x, lo, hi)


@converter("Clip", [11, 12, 13], override=True)
def _clip(node, graph):
    names = list(node.input_values) + [""] * (3 - len(node.input_values))
    lo_t, hi_t = const(names[1], graph), const(names[2], graph)
    if (names[1] and lo_t is None) or (names[2] and hi_t is None):
        return result(OnnxClip(), node)  # a bound is computed: read both at run time
    lo = None if lo_t is None else lo_t.item()
    hi = None if hi_t is None else hi_t.item()
    # The bounds have the input's dtype (ONNX requires it): float bounds mean a float input.
    floating = any(t is not None and t.is_floating_point() for t in (lo_t, hi_t))
    if floating and lo == 0 and hi is None:
        module = nn.ReLU()
    elif floating and lo == 0 and hi == 6:
        module = nn.ReLU6()
    else:
        module = OnnxClip(lo, hi)
    return result(module, node, inputs=(names[0],))


# --- CumSum --------------------------------------------------------------------------------------
class OnnxCumSum(nn.Module):
    """ONNX CumSum with the spec's defaults: ``exclusive=0``, ``reverse=0``."""

    def __init__(self, exclusive: bool = False, reverse: bool = False):
        super().__init__()
        self.exclusive = bool(exclusive)
        self.reverse = bool(reverse)

    def forward(self, x: torch.Tensor, axis: torch.Tensor) -> torch.Tensor:
        dim = int(axis.reshape(-1)[0]) % x.dim()
        if self.reverse:
            x = torch.flip(x, dims=(dim,))
        out = torch.cumsum(x, dim=dim)
        if self.exclusive:
            zero = torch.zeros_like(x.narrow(dim, 0, 1))
            out = torch.cat([zero, out.narrow(dim, 0, x.shape[dim] - 1)], dim=dim)
        if self.reverse:
            out = torch.flip(out, dims=(dim,))
        return out


@converter("CumSum", [11, 14], override=True)
def _cumsum(node, graph):
    return result(OnnxCumSum(node.attributes.get("exclusive", 0), node.attributes.get("reverse", 0)), node)
