"""Reduce* at opset 18 (axes moved from an attribute to an input) and ReduceMax/ReduceMin at 20.

Constant axes are read at conversion time (the module keeps them as ``axes``, which the LRP
canonizer uses to spot spatial means); computed axes are read at run time.
"""

from __future__ import annotations

import torch
from torch import nn

from ..registry import converter
from ._common import const, result


def _prod(x: torch.Tensor, dims: tuple[int, ...], keepdim: bool) -> torch.Tensor:
    for d in sorted(dims, reverse=True):
        x = torch.prod(x, dim=d, keepdim=keepdim)
    return x


_REDUCERS = {
    "ReduceL1": lambda x, d, k: torch.sum(torch.abs(x), dim=d, keepdim=k),
    "ReduceL2": lambda x, d, k: torch.sqrt(torch.sum(x * x, dim=d, keepdim=k)),
    "ReduceLogSum": lambda x, d, k: torch.log(torch.sum(x, dim=d, keepdim=k)),
    "ReduceLogSumExp": lambda x, d, k: torch.logsumexp(x, dim=d, keepdim=k),
    "ReduceMax": lambda x, d, k: torch.amax(x, dim=d, keepdim=k),
    "ReduceMean": lambda x, d, k: torch.mean(x, dim=d, keepdim=k),
    "ReduceMin": lambda x, d, k: torch.amin(x, dim=d, keepdim=k),
    "ReduceProd": _prod,
    "ReduceSum": lambda x, d, k: torch.sum(x, dim=d, keepdim=k),
    "ReduceSumSquare": lambda x, d, k: torch.sum(x * x, dim=d, keepdim=k),
}


class OnnxReduce(nn.Module):
    """ONNX Reduce* with opset-18 semantics.

    Parameters
    ----------
    op_type : str
        One of the ONNX Reduce ops.
    axes : tuple of int or None
        Constant axes, or None when they come as the second forward argument (or are absent).
    keepdims, noop_with_empty_axes : bool
        As in ONNX.
    """

    def __init__(self, op_type: str, axes, keepdims: bool, noop_with_empty_axes: bool):
        super().__init__()
        self.op_type = op_type
        self.axes = None if axes is None else tuple(int(a) for a in axes)
        self.keepdims = bool(keepdims)
        self.noop_with_empty_axes = bool(noop_with_empty_axes)

    def forward(self, x: torch.Tensor, axes: torch.Tensor | None = None) -> torch.Tensor:
        dims = self.axes if axes is None else tuple(int(a) for a in axes.tolist())
        if not dims:
            if self.noop_with_empty_axes:
                return x
            dims = tuple(range(x.dim()))
        dims = tuple(d % x.dim() for d in dims) if x.dim() else ()
        return _REDUCERS[self.op_type](x, dims, self.keepdims)

    def extra_repr(self) -> str:
        return f"{self.op_type}, axes={self.axes}, keepdims={self.keepdims}"


def _reduce18(node, graph):
    axes_name = node.input_values[1] if len(node.input_values) > 1 else ""
    axes = const(axes_name, graph)
    module = OnnxReduce(
        node.operation_type,
        axes=None if axes is None else axes.tolist(),
        keepdims=node.attributes.get("keepdims", 1),
        noop_with_empty_axes=node.attributes.get("noop_with_empty_axes", 0),
    )
    if axes is not None or not axes_name:
        return result(module, node, inputs=(node.input_values[0],))
    return result(module, node)


for _op in _REDUCERS:
    if _op != "ReduceSum":  # ReduceSum took axes as an input already at 13: onnx2torch handles it
        converter(_op, 18)(_reduce18)
converter("ReduceMax", 20)(_reduce18)
converter("ReduceMin", 20)(_reduce18)
