"""Small ops today's exporters write that onnx2torch 1.5.15 lacks or gets wrong: CastLike (15-25), Size
(1-25), NonZero (9, 13: onnx2torch's NonZero-13 returns the transpose, ``(nnz, rank)`` instead of
``(rank, nnz)``), Gemm-1/6/7 (the same as onnx2torch's Gemm-9: 7 dropped ``broadcast``, 9 added integer types) and Flatten
(1-25: onnx2torch's raised on a 1-D input and on ``axis=0``, which the legacy exporter writes for BERT's
pooler index, and it had no Flatten-1).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..registry import builtin, converter
from ._common import result
from .tensor import schema_versions


class OnnxCastLike(nn.Module):
    """ONNX CastLike: ``x`` in the element type of ``like`` (differentiable for float to float)."""

    def forward(self, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return x.to(like.dtype)


class OnnxSize(nn.Module):
    """ONNX Size: the number of elements, an int64 scalar."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tensor(x.numel(), dtype=torch.int64, device=x.device)


class OnnxNonZero(nn.Module):
    """ONNX NonZero: the indices of the non-zero elements, ``(rank, nnz)`` int64, in row-major order."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 0:
            return torch.zeros((0, int(bool(x))), dtype=torch.int64, device=x.device)
        return torch.stack(torch.nonzero(x, as_tuple=True))


@converter("CastLike", schema_versions("CastLike", [15, 19, 21, 23, 24, 25]))
def _castlike(node, graph):
    return result(OnnxCastLike(), node)


@converter("Size", schema_versions("Size", [1, 13, 19, 21, 23, 24, 25]))
def _size(node, graph):
    return result(OnnxSize(), node)


def _nonzero(node, graph):
    return result(OnnxNonZero(), node)


converter("NonZero", 9)(_nonzero)
converter("NonZero", 13, override=True)(_nonzero)
converter("Gemm", 7)(builtin("Gemm", 9))
# Gemm-1/6 differ from 9 only by the ``broadcast`` attribute, which numpy broadcasting of C covers (with
# broadcast=0 C must already have the output's shape) and by requiring C, which the converter handles
converter("Gemm", [1, 6])(builtin("Gemm", 9))


class OnnxFlatten(nn.Module):
    """ONNX Flatten: a 2-D ``(prod(shape[:axis]), prod(shape[axis:]))`` of the input, any rank (1-D
    included: ``axis=1`` gives ``(n, 1)``, ``axis=0`` gives ``(1, n)``) and negative axes."""

    def __init__(self, axis: int = 1):
        super().__init__()
        self.axis = int(axis)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        axis = self.axis + x.dim() if self.axis < 0 else self.axis
        if not 0 <= axis <= x.dim():
            raise ValueError(f"Flatten: axis {self.axis} is out of range for a rank-{x.dim()} input")
        shape = tuple(x.shape)
        return x.reshape(math.prod(shape[:axis]), math.prod(shape[axis:]))

    def extra_repr(self) -> str:
        return f"axis={self.axis}"


def _flatten(node, graph):
    return result(OnnxFlatten(node.attributes.get("axis", 1)), node)


converter("Flatten", 1)(_flatten)
converter("Flatten", [9, 11, 13], override=True)(_flatten)
converter("Flatten", schema_versions("Flatten", [21, 23, 24, 25]))(_flatten)
