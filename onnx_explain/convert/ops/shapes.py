"""Small ops today's exporters write that onnx2torch 1.5.15 lacks or gets wrong: CastLike (15-25), Size
(1-25), NonZero (9, 13: onnx2torch's NonZero-13 returns the transpose, ``(nnz, rank)`` instead of
``(rank, nnz)``) and Gemm-7 (the same as onnx2torch's Gemm-9: 9 only added integer types)."""

from __future__ import annotations

import torch
from torch import nn

from ..registry import builtin, converter
from ._common import result
from .tensor import _schema_versions


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


@converter("CastLike", _schema_versions("CastLike", [15, 19, 21, 23, 24, 25]))
def _castlike(node, graph):
    return result(OnnxCastLike(), node)


@converter("Size", _schema_versions("Size", [1, 13, 19, 21, 23, 24, 25]))
def _size(node, graph):
    return result(OnnxSize(), node)


def _nonzero(node, graph):
    return result(OnnxNonZero(), node)


converter("NonZero", 9)(_nonzero)
converter("NonZero", 13, override=True)(_nonzero)
converter("Gemm", 7)(builtin("Gemm", 9))
