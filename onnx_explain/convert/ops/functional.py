"""Conv and ConvTranspose whose weight or bias is computed in the graph, as functional ops.

onnx2torch builds ``nn.Conv*d`` modules and reads the weight (and bias) from the initializers: a weight
computed by the graph (weight standardisation in NF-Nets: ``Conv`` fed by a ``Reshape``/``Div`` output; a
weight that is a second graph input) raised ``KeyError``. Here such a node becomes a module that takes the
weight and bias as run-time tensors and calls ``torch.nn.functional.conv*d`` / ``conv_transpose*d``, so
gradients flow through them to the explained input. Nodes whose weight and bias are initializers keep
onnx2torch's ``nn.Conv*d`` (the LRP rules read its parameters), unless onnx2torch cannot build them
(ConvTranspose with asymmetric pads) or builds wrong (ConvTranspose with ``output_shape``, which
it ignores): those run functionally too.

Gemm and MatMul need nothing: onnx2torch's OnnxGemm/OnnxMatMul already take every operand at run time
when the weight is not an initializer (tests/test_ops_logic.py checks it, gradients included).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import builtin, converter
from ._common import result, unsupported
from .tensor import schema_versions
from .versions import TYPE_ONLY

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
_AUTO_PADS = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")


def _split(total: int, upper: bool) -> tuple[int, int]:
    """(begin, end) of ``total`` padding: SAME_UPPER puts the odd one at the end, others at the start."""
    small = total // 2
    return (small, total - small) if upper else (total - small, small)


def _torch_pads(begin: list[int], end: list[int]) -> list[int]:
    """``F.pad``'s list (last axis first) from per-spatial-axis begin/end amounts."""
    out: list[int] = []
    for b, e in zip(reversed(begin), reversed(end), strict=True):
        out += [b, e]
    return out


class _ConvBase(nn.Module):
    def __init__(self, attrs: dict):
        super().__init__()
        auto_pad = attrs.get("auto_pad", "NOTSET")
        self.auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
        if self.auto_pad not in _AUTO_PADS:
            raise ValueError(f"auto_pad={self.auto_pad!r} is not one of {_AUTO_PADS}")
        self.strides = list(attrs.get("strides", []))
        self.dilations = list(attrs.get("dilations", []))
        self.pads = list(attrs.get("pads", []))
        self.group = int(attrs.get("group", 1))

    def _common(self, weight: torch.Tensor):
        n = weight.dim() - 2
        if n not in _CONV:
            raise ValueError(f"a weight of rank {weight.dim()} (only 1 to 3 spatial axes are supported)")
        strides = self.strides or [1] * n
        dilations = self.dilations or [1] * n
        return n, strides, dilations, [int(k) for k in weight.shape[2:]]

    def extra_repr(self) -> str:
        return (
            f"strides={self.strides}, dilations={self.dilations}, pads={self.pads}, "
            f"auto_pad={self.auto_pad}, group={self.group}"
        )


class OnnxConvFunctional(_ConvBase):
    """ONNX Conv with the weight (and bias) as forward arguments: ``F.conv{1,2,3}d``; ``auto_pad`` and
    asymmetric ``pads`` become an explicit zero pad."""

    def forward(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        n, strides, dilations, kernel = self._common(weight)
        if self.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            begin, end = [], []
            for size, s, d, k in zip(x.shape[2:], strides, dilations, kernel, strict=True):
                out = -(-int(size) // s)
                total = max((out - 1) * s + (k - 1) * d + 1 - int(size), 0)
                b, e = _split(total, self.auto_pad == "SAME_UPPER")
                begin.append(b)
                end.append(e)
        elif self.auto_pad == "VALID" or not self.pads:
            begin, end = [0] * n, [0] * n
        else:
            begin, end = self.pads[:n], self.pads[n:]
        if begin != end:
            x = F.pad(x, _torch_pads(begin, end))
            begin = [0] * n
        return _CONV[n](x, weight, bias, strides, begin, dilations, self.group)


class OnnxConvTransposeFunctional(_ConvBase):
    """ONNX ConvTranspose with the weight (and bias) as forward arguments.

    The full transposed convolution (no padding) is cropped by ``pads`` (or the padding ``output_shape``
    or ``auto_pad`` implies, split as the ONNX spec says) and extended by ``output_padding`` at the end.
    """

    def __init__(self, attrs: dict):
        super().__init__(attrs)
        self.output_padding = list(attrs.get("output_padding", []))
        self.output_shape = list(attrs.get("output_shape", []))

    def forward(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        n, strides, dilations, kernel = self._common(weight)
        adjust = self.output_padding or [0] * n
        full = _CONV_T[n](x, weight, None, strides, 0, 0, self.group, dilations)
        begin, end = [], []
        for i, (size, s, d, k) in enumerate(zip(x.shape[2:], strides, dilations, kernel, strict=True)):
            natural = (int(size) - 1) * s + adjust[i] + (k - 1) * d + 1
            if self.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
                b, e = _split(max(natural - int(size) * s, 0), self.auto_pad == "SAME_UPPER")
            elif self.output_shape:
                b, e = _split(max(natural - self.output_shape[-n:][i], 0), False)
            elif self.auto_pad == "VALID" or not self.pads:
                b, e = 0, 0
            else:
                b, e = self.pads[i], self.pads[i + n]
            begin.append(-b)  # negative F.pad amounts crop
            end.append(adjust[i] - e)
        out = F.pad(full, _torch_pads(begin, end))
        if bias is not None:
            out = out + bias.reshape((1, -1) + (1,) * n)
        return out


def _functional_only(node, graph) -> bool:
    """Whether onnx2torch's ``nn.Conv*d`` cannot stand for the node: its weight or bias is not an
    initializer (or the bias is an empty name), or it is a ConvTranspose with ``output_shape``, which
    onnx2torch ignores."""
    names = list(node.input_values[1:3])
    computed = any(name and name not in graph.initializers for name in names) or "" in names
    return computed or "output_shape" in node.attributes


def _make(op_type: str, base_version: int):
    module_class = OnnxConvFunctional if op_type == "Conv" else OnnxConvTransposeFunctional
    base = builtin(op_type, base_version)

    def convert(node, graph):
        if not _functional_only(node, graph):
            try:
                return base(node, graph)  # nn.Conv*d with the initializers as parameters
            except NotImplementedError:
                pass  # e.g. ConvTranspose with asymmetric pads: the functional form has them
        try:
            module = module_class(dict(node.attributes))
        except ValueError as exc:
            raise unsupported(node, str(exc)) from None
        return result(module, node)

    convert.__name__ = f"{op_type}_functional"
    return convert


for _op in ("Conv", "ConvTranspose"):
    converter(_op, [1, 11], override=True)(_make(_op, 11))
    # versions.py aliases the opset-22 versions to onnx2torch's (initializer weights only) while it lists them
    if _op not in TYPE_ONLY:
        converter(_op, schema_versions(_op, [22]))(_make(_op, 11))
