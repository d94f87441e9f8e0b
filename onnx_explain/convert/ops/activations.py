"""Activations and poolings onnx2torch lacks: Gelu-20, Mish-18/22, GlobalMaxPool."""

from __future__ import annotations

import torch
from torch import nn

from ..registry import converter
from ._common import result, unsupported


class OnnxGlobalMaxPool(nn.Module):
    """Max over every spatial axis, keeping them as size 1 (any spatial rank)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.amax(x, dim=tuple(range(2, x.dim())), keepdim=True)


@converter("Gelu", 20)
def _gelu(node, graph):
    approximate = node.attributes.get("approximate", "none")
    if approximate not in ("none", "tanh"):
        raise unsupported(node, f"approximate={approximate!r}")
    return result(nn.GELU(approximate=approximate), node)


@converter("Mish", [18, 22])
def _mish(node, graph):
    return result(nn.Mish(), node)


@converter("GlobalMaxPool", [1, 22])
def _global_max_pool(node, graph):
    return result(OnnxGlobalMaxPool(), node)
