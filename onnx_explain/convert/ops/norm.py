"""LayerNormalization and BatchNormalization that need no shape information, and LpNormalization
(skl2onnx's one-vs-rest classifiers normalise their probabilities with it).

onnx2torch read the input rank/shape from shape inference and failed where it was unknown; its
BatchNormalization also refused nodes that declare the optional mean/var outputs. These modules
work on any rank at run time and keep their parameters as buffers (the LRP canonizer folds them).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import converter
from ._common import const, result, unsupported


def _as_buffers(module: nn.Module, names, tensors) -> bool:
    if any(t is None for t in tensors):
        return False
    for name, t in zip(names, tensors, strict=True):
        module.register_buffer(name, t)
    return True


class OnnxLayerNormalization(nn.Module):
    """Normalise over axes ``axis..`` then scale and shift (Scale/B broadcast as in ONNX)."""

    def __init__(self, axis: int, epsilon: float, n_outputs: int = 1):
        super().__init__()
        self.axis = axis
        self.epsilon = epsilon
        self.n_outputs = n_outputs

    def forward(self, x, scale=None, bias=None):
        scale = getattr(self, "weight", None) if scale is None else scale
        bias = getattr(self, "bias", None) if bias is None else bias
        axis = self.axis % x.dim()
        shape = tuple(x.shape[axis:])
        if (
            self.n_outputs == 1
            and scale is not None
            and tuple(scale.shape) == shape
            and (bias is None or tuple(bias.shape) == shape)
        ):
            return F.layer_norm(x, shape, scale, bias, self.epsilon)
        dims = tuple(range(axis, x.dim()))
        mean = x.mean(dim=dims, keepdim=True)
        inv_std = torch.rsqrt(((x - mean) ** 2).mean(dim=dims, keepdim=True) + self.epsilon)
        y = (x - mean) * inv_std
        if scale is not None:
            y = y * scale
        if bias is not None:
            y = y + bias
        return y if self.n_outputs == 1 else (y, mean, inv_std)[: self.n_outputs]


@converter("LayerNormalization", 17, override=True)
def _layer_norm(node, graph):
    module = OnnxLayerNormalization(
        node.attributes.get("axis", -1), node.attributes.get("epsilon", 1e-5), len(node.output_values)
    )
    names = node.input_values
    tensors = [const(n, graph) for n in names[1:]]
    if _as_buffers(module, ("weight", "bias")[: len(tensors)], tensors):
        return result(module, node, inputs=(names[0],))
    return result(module, node)


class OnnxBatchNormalization(nn.Module):
    """BatchNormalization on any rank >= 2 (channels on axis 1), parameters as buffers.

    In inference mode it uses the running statistics. ONNX puts the op in *training* mode when
    ``training_mode=1`` (opset 14+) or, before opset 14, when the optional outputs are declared: then,
    as onnxruntime does, it normalises with the batch statistics and also returns the updated running
    mean and variance (and, for BN-9, the batch mean and variance).
    """

    def __init__(self, epsilon: float, momentum: float = 0.9, n_outputs: int = 1, training: bool = False):
        super().__init__()
        self.eps = epsilon
        self.momentum = momentum
        self.n_outputs = n_outputs
        self.batch_stats = training

    def forward(self, x, weight=None, bias=None, running_mean=None, running_var=None):
        weight = self.weight if weight is None else weight
        bias = self.bias if bias is None else bias
        mean = self.running_mean if running_mean is None else running_mean
        var = self.running_var if running_var is None else running_var
        if not self.batch_stats:
            return F.batch_norm(x, mean, var, weight, bias, training=False, momentum=0.0, eps=self.eps)
        dims = [0] + list(range(2, x.dim()))
        batch_mean = x.mean(dim=dims)
        batch_var = x.var(dim=dims, unbiased=False)
        y = F.batch_norm(x, batch_mean, batch_var, weight, bias, training=False, momentum=0.0, eps=self.eps)
        m = self.momentum
        outs = (y, mean * m + batch_mean * (1 - m), var * m + batch_var * (1 - m), batch_mean, batch_var)
        return y if self.n_outputs == 1 else outs[: self.n_outputs]


def _batch_norm(node, graph, since: int):
    a = node.attributes
    training = bool(a.get("training_mode", 0)) or (since < 14 and len(node.output_values) > 1)
    module = OnnxBatchNormalization(
        a.get("epsilon", 1e-5), a.get("momentum", 0.9), len(node.output_values), training
    )
    names = node.input_values
    tensors = [const(n, graph) for n in names[1:5]]
    if _as_buffers(module, ("weight", "bias", "running_mean", "running_var"), tensors):
        return result(module, node, inputs=(names[0],))
    return result(module, node)


converter("BatchNormalization", 9, override=True)(lambda node, graph: _batch_norm(node, graph, 9))
converter("BatchNormalization", [14, 15], override=True)(lambda node, graph: _batch_norm(node, graph, 14))


class OnnxLpNormalization(nn.Module):
    """``x / ‖x‖_p`` along ``axis`` (p = 1 or 2); a zero row stays zero, as onnxruntime's kernel gives it."""

    def __init__(self, axis: int, p: int):
        super().__init__()
        self.axis = axis
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = (
            x.abs().sum(self.axis, keepdim=True)
            if self.p == 1
            else torch.sqrt((x * x).sum(self.axis, keepdim=True))
        )
        return torch.where(
            norm == 0, torch.zeros_like(x), x / torch.where(norm == 0, torch.ones_like(norm), norm)
        )


@converter("LpNormalization", 1)
def _lp_normalization(node, graph):
    p = int(node.attributes.get("p", 2))
    if p not in (1, 2):
        raise unsupported(node, f"p={p} (ONNX allows 1 and 2)")
    return result(OnnxLpNormalization(int(node.attributes.get("axis", -1)), p), node)
