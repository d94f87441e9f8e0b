"""Slice and ScatterND, replacing onnx2torch's.

onnx2torch indexes with a *list* of slices (``x[[slice, ...]]``): torch warns that this will be read as a
tensor index ("an error or a different result"), and its Slice-9 module reads attributes it never set.
ScatterND gains the ``add``/``mul`` reductions of opset 16 and ``max``/``min`` of opset 18.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from ..registry import converter
from ._common import const, result, unsupported


def _ints(t) -> list[int] | None:
    if t is None:
        return None
    return [int(v) for v in (t.tolist() if hasattr(t, "tolist") else t)]


class OnnxSlice(nn.Module):
    """ONNX Slice (any opset): starts/ends/axes/steps constant (kept) or read at run time."""

    def __init__(self, starts=None, ends=None, axes=None, steps=None):
        super().__init__()
        self.starts, self.ends, self.axes, self.steps = _ints(starts), _ints(ends), _ints(axes), _ints(steps)

    def forward(self, x, starts=None, ends=None, axes=None, steps=None):
        starts = self.starts if starts is None else _ints(starts)
        ends = self.ends if ends is None else _ints(ends)
        axes = (self.axes if axes is None else _ints(axes)) or list(range(len(starts)))
        steps = (self.steps if steps is None else _ints(steps)) or [1] * len(starts)
        rank = x.dim()
        index = [slice(None)] * rank
        flips = []
        for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
            axis %= rank
            dim = x.shape[axis]
            if step > 0:
                # python clamps as ONNX does; pre-clamping keeps INT64_MAX sentinels out of torch's warning
                index[axis] = slice(min(max(start, -dim), dim), min(max(end, -dim), dim), step)
                continue
            # negative step: clamp as ONNX does, then read the flipped axis forwards
            start = min(max(start + dim if start < 0 else start, 0), dim - 1)
            end = min(max(end + dim if end < 0 else end, -1), dim - 1)
            flips.append(axis)
            index[axis] = slice(dim - 1 - start, dim - 1 - end, -step)
        if flips:
            x = torch.flip(x, dims=flips)
        return x[tuple(index)]


@converter("Slice", 1)  # onnx2torch keys its attribute-form Slice as 9, which no lookup reaches: it is 1
def _slice1(node, graph):
    a = node.attributes
    return result(OnnxSlice(a["starts"], a["ends"], a.get("axes")), node)


def _slice10(node, graph):
    names = list(node.input_values) + [""] * (5 - len(node.input_values))
    values = [const(n, graph) for n in names[1:]]
    if all(v is not None or not n for n, v in zip(names[1:], values, strict=True)):
        return result(OnnxSlice(*values), node, inputs=(names[0],))
    return result(OnnxSlice(), node)


converter("Slice", [10, 11, 13], override=True)(_slice10)


class OnnxScatterND(nn.Module):
    """ONNX ScatterND with reduction none/add/mul/max/min; differentiable in data and updates."""

    _REDUCE = {"mul": "prod", "max": "amax", "min": "amin"}

    def __init__(self, reduction: str = "none"):
        super().__init__()
        self.reduction = reduction

    def forward(self, data, indices, updates):
        k = indices.shape[-1]
        lead = data.shape[:k]
        idx = indices.reshape(-1, k).long()
        sizes = torch.tensor(lead, device=idx.device)
        idx = idx % sizes  # negative indices count from the end
        strides = torch.ones(k, dtype=torch.long, device=idx.device)
        for i in range(k - 2, -1, -1):
            strides[i] = strides[i + 1] * lead[i + 1]
        flat_idx = (idx * strides).sum(-1)
        flat = data.reshape(-1, *data.shape[k:])
        upd = updates.reshape(-1, *data.shape[k:])
        if self.reduction == "none":
            out = flat.index_copy(0, flat_idx, upd)
        elif self.reduction == "add":
            out = flat.index_add(0, flat_idx, upd)
        else:
            with warnings.catch_warnings():  # "index_reduce() is in beta": its semantics are what ONNX asks
                warnings.simplefilter("ignore", UserWarning)
                out = flat.index_reduce(0, flat_idx, upd, self._REDUCE[self.reduction], include_self=True)
        return out.reshape(data.shape)


def _scatter_nd(node, graph):
    reduction = node.attributes.get("reduction", "none")
    if reduction not in ("none", "add", "mul", "max", "min"):
        raise unsupported(node, f"reduction={reduction!r}")
    return result(OnnxScatterND(reduction), node)


converter("ScatterND", [11, 13, 16], override=True)(_scatter_nd)
converter("ScatterND", 18)(_scatter_nd)
