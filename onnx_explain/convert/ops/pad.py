"""Pad at every version (2, 11, 13, 18, 19, 21, 23-25), every mode (constant, reflect, edge, wrap) on
tensors of any rank.

onnx2torch 1.5.15 hands reflect and edge padding to ``F.pad``, which pads only the last 1-3 axes of a
3-5-D tensor: a 2-D or 3-D tensor padded on its first axes (keras2onnx and tf2onnx sequence models,
PaddlePaddle's OCR heads) raised. Here each padded axis is an index gather (``index_select``), which is
exact, differentiable and rank-free; constant padding stays ``F.pad``. Negative pads crop, as in ONNX.
Pad-18 added ``axes``; Pad-19 added ``wrap``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import converter
from ._common import const, result, unsupported
from .tensor import schema_versions

_MODES = ("constant", "reflect", "edge", "wrap")


def _indices(n: int, before: int, after: int, mode: str, device) -> torch.Tensor:
    """Source positions along one axis of length ``n`` for ``before``/``after`` pads (numpy's modes)."""
    i = torch.arange(-before, n + after, device=device)
    if mode == "edge":
        return i.clamp(0, n - 1)
    if mode == "wrap":
        return i.remainder(n)
    if n == 1:  # reflect about a single element: onnxruntime repeats it
        return torch.zeros_like(i)
    period = 2 * (n - 1)
    i = i.remainder(period)
    return torch.where(i >= n, period - i, i)


def pad(x: torch.Tensor, pads, mode: str, value=0.0, axes=None) -> torch.Tensor:
    """ONNX Pad: ``pads`` = ``[b_0, ..., b_k, e_0, ..., e_k]`` over ``axes`` (default: every axis)."""
    pads = [int(p) for p in pads]
    axes = list(range(x.dim())) if axes is None else [int(a) % x.dim() for a in axes]
    k = len(axes)
    if len(pads) != 2 * k:
        raise ValueError(f"Pad: {len(pads)} pads for {k} axes")
    if mode == "constant":
        flat = [0] * (2 * x.dim())
        for j, axis in enumerate(axes):
            back = x.dim() - 1 - axis
            flat[2 * back], flat[2 * back + 1] = pads[j], pads[j + k]
        v = 0.0 if value is None else value
        return F.pad(x, flat, value=float(v.item() if isinstance(v, torch.Tensor) else v))
    for j, axis in enumerate(axes):
        before, after = pads[j], pads[j + k]
        if before < 0 or after < 0:  # negative pads crop first; the padding then repeats what is left
            start, stop = max(-before, 0), x.shape[axis] - max(-after, 0)
            x = x.narrow(axis, start, stop - start)
            before, after = max(before, 0), max(after, 0)
        if before or after:
            x = x.index_select(axis, _indices(x.shape[axis], before, after, mode, x.device))
    return x


class OnnxPad(nn.Module):
    """ONNX Pad with ``pads`` (and ``axes``) from constants or computed inputs."""

    def __init__(self, mode: str, pads=None, value=None, axes=None):
        super().__init__()
        self.mode, self.pads, self.value, self.axes = mode, pads, value, axes

    def forward(self, x, pads=None, value=None, axes=None):
        pads = self.pads if pads is None else pads.tolist()
        axes = self.axes if axes is None else axes.tolist()
        value = self.value if value is None else value
        return pad(x, pads, self.mode, value, axes)


def _mode(node) -> str:
    mode = node.attributes.get("mode", "constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode not in _MODES:
        raise unsupported(node, f"mode {mode!r}")
    return mode


@converter("Pad", 2, override=True)
def _pad_2(node, graph):
    a = node.attributes
    module = OnnxPad(_mode(node), list(a["pads"]), a.get("value", 0.0))
    return result(module, node, (node.input_values[0],))


def _pad_inputs(node, graph):
    names = list(node.input_values) + [""] * (4 - len(node.input_values))
    pads, value, axes = (const(n, graph) for n in names[1:4])
    mode = _mode(node)
    if pads is not None and (axes is not None or not names[3]) and (value is not None or not names[2]):
        module = OnnxPad(mode, pads.tolist(), value, None if axes is None else axes.tolist())
        return result(module, node, (names[0],))
    # something is computed: take every given input at run time
    return result(OnnxPadDynamic(mode), node, tuple(names[: len(node.input_values)]))


class OnnxPadDynamic(nn.Module):
    """ONNX Pad whose ``pads``, ``constant_value`` or ``axes`` are computed in the graph."""

    def __init__(self, mode: str):
        super().__init__()
        self.mode = mode

    def forward(self, x, pads, value=None, axes=None):
        return pad(x, pads.tolist(), self.mode, value, None if axes is None else axes.tolist())


converter("Pad", [11, 13], override=True)(_pad_inputs)
converter("Pad", schema_versions("Pad", [18, 19, 21, 23, 24, 25]))(_pad_inputs)
