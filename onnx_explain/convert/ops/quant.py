"""Quantization ops: QDQ (QuantizeLinear/DequantizeLinear), QOperator (QLinearMatMul, QLinearConv), the
integer ops of dynamic quantization (DynamicQuantizeLinear, MatMulInteger, ConvInteger) and onnxruntime's
``com.microsoft`` MatMulIntegerToFloat, DynamicQuantizeMatMul, QGemm, QLinearAdd, QLinearMul,
QLinearGlobalAveragePool, QLinearSoftmax, DynamicQuantizeLSTM, QAttention and QEmbedLayerNormalization;
plus the ``Gather`` of a quantized embedding table. onnx2torch 1.5.15 converts none.

The ``com.microsoft`` ops have no specification beyond their kernels, so each follows onnxruntime's CPU
kernel as read in its source (named in each class) and measured against onnxruntime 1.31:
DynamicQuantizeLSTM quantizes its float operands on the fly (the input once per sequence, ``h`` at every
step per chunk of the batch, one chunk per intra-op thread: see :class:`OnnxDynamicQuantizeLSTM`), so its
output for a sample depends on the rest of the batch and on onnxruntime's thread count, as onnxruntime's
does. :func:`straight_through_nodes` lists the nodes whose forward rounds, for the ``extras['quantized']``
note of the explanations.

Forward (``METHODS.md`` §1.7): ``QuantizeLinear = saturate(rint(x / s) + zp)``, rounding half to even,
always saturating to the integer type's range; ``DequantizeLinear = (x - zp) * s``; per-tensor, per-axis
and blocked scales (``block_size``, opset 21+); uint8/int8 and (opset 21+) uint16/int16. Integer sums
(MatMulInteger, ConvInteger, the accumulators of QLinear*) are computed in float64, exact as long as they
stay below 2**53 (int32 overflow, which onnxruntime would wrap, is not reproduced). QLinear* requantize as
onnxruntime does on the CPU: ``saturate(rint(f32(acc) * f32(s_a * s_b / s_y)) + zp_y)``. float8, int4,
uint4, float4, int2 and uint2 tensors, and constant scales that are zero or not finite, are refused with
the node named. Measured: bit-exact against onnxruntime 1.31 on the CPU, with one caveat on onnxruntime's
side: without AVX-VNNI, MLAS's u8 x s8 kernels (ConvInteger, MatMulInteger and the QLinear*/QGemm ops it
fuses QDQ groups into) saturate int16 pair sums, so full-range 8-bit weights (|w| > 64, no
``reduce_range``) can differ there; the conversion computes the exact integer sums the spec defines.

Gradient: the straight-through estimator (Bengio et al. 2013). Every rounding step (QuantizeLinear,
DynamicQuantizeLinear, the requantization of QLinear*) has the exact forward value but the backward of
``x / s + zp`` inside the integer range and 0 where it saturates (PyTorch's ``fake_quantize`` mask), so a
Q -> DQ pair has gradient 1 inside the range and 0 where it clips, and the float output of a quantized path
is differentiable w.r.t. the float input. Scales and zero points are constants: their gradient is not
propagated (DynamicQuantizeLinear's data-dependent scale and zero point are detached).

To let gradients flow, a quantized tensor whose every consumer is one of these ops, a Cast to a float
type, or a layout op (Flatten, Reshape, Transpose, (Un)Squeeze, Identity, MaxPool, Gather of its values)
whose output qualifies in turn, is carried as a float tensor holding the exact integer values ("carrier": float32 for quantized
values, float64 for int32 accumulators). A quantized value that is a graph output, or that feeds any other
op, keeps its ONNX integer dtype (and has no gradient).
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from onnx import TensorProto
from torch import fx, nn

from ...derived import derived
from ..registry import builtin, converter
from ._common import const, result, unsupported
from .contrib import OnnxAttention, OnnxEmbedLayerNormRest
from .functional import OnnxConvFunctional
from .recurrent import OnnxLSTM
from .tensor import schema_versions

#: ONNX integer element type -> (torch dtype, min, max)
_INT_TYPES = {
    TensorProto.UINT8: (torch.uint8, 0, 255),
    TensorProto.INT8: (torch.int8, -128, 127),
    TensorProto.UINT16: (torch.uint16, 0, 65535),
    TensorProto.INT16: (torch.int16, -32768, 32767),
}
_RANGE = {dt: (lo, hi) for dt, lo, hi in _INT_TYPES.values()}
_FLOATS = {
    TensorProto.FLOAT: torch.float32,
    TensorProto.FLOAT16: torch.float16,
    TensorProto.BFLOAT16: torch.bfloat16,
    TensorProto.DOUBLE: torch.float64,
}
#: consumers that accept a float carrier in place of an integer tensor (and the Cast targets that do)
_CARRIER_OPS = {
    "DequantizeLinear",
    "MatMulInteger",
    "ConvInteger",
    "QLinearMatMul",
    "QLinearConv",
    "MatMulIntegerToFloat",
    "QGemm",
    "QLinearAdd",
    "QLinearMul",
    "QLinearGlobalAveragePool",
    "QAttention",
    "QLinearSoftmax",
}


def straight_through_nodes(module: nn.Module) -> list[str]:
    """The submodules of a converted graph whose forward rounds to a quantized grid (QuantizeLinear,
    DynamicQuantizeLinear, the requantizing QLinear*/QGemm, DynamicQuantizeMatMul, DynamicQuantizeLSTM,
    QAttention): their gradient is the straight-through estimator, not the derivative of the function.

    Parameters
    ----------
    module : torch.nn.Module
        A converted graph, or any module holding one (a ``ConvertedModel``).

    Returns
    -------
    list of str
        Qualified submodule names (onnx2torch names them after the ONNX nodes); empty for a float graph.
    """
    return [name for name, m in module.named_modules() if getattr(m, "straight_through", False)]


# --- helpers --------------------------------------------------------------------------------------
def _elem_type(name: str, graph) -> int | None:
    """The ONNX element type of value ``name`` (initializer or value_info), or None when unknown."""
    if not name:
        return None
    if name in graph.initializers:
        return graph.initializers[name].proto.data_type
    info = graph.value_info.get(name)
    if info is not None and info.type.HasField("tensor_type") and info.type.tensor_type.elem_type:
        return info.type.tensor_type.elem_type
    return None


def _type_name(elem: int) -> str:
    return TensorProto.DataType.Name(elem).lower()


def _consumers(graph) -> dict:
    """value name -> the nodes that read it (derived once per graph)."""
    cache = derived(graph)
    if "consumers" not in cache:
        table: dict = {}
        for n in graph.nodes.values():
            for name in dict.fromkeys(n.input_values):
                table.setdefault(name, []).append(n)
        cache["consumers"] = table
    return cache["consumers"]


def _check_scales(node, graph, positions) -> None:
    """Refuse a constant scale that is zero or not finite (the quantized graph would divide by it)."""
    for k in positions:
        value = const(node.input_values[k], graph) if k < len(node.input_values) else None
        if value is not None and not bool(torch.isfinite(value.double()).all() and (value != 0).all()):
            raise ValueError(
                f"{node.operation_type}: the scale {node.input_values[k]!r} holds zero or non-finite values"
            )


#: ops that move a quantized tensor's values unchanged: a carrier may pass when their outputs may
_PASS_THROUGH = {"Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Identity", "MaxPool", "Gather"}


def _carrier(name: str, graph, depth: int = 0) -> bool:
    """Whether value ``name`` may be carried as a float tensor: not a graph output, and every consumer is
    an op of this module, a Cast to float/double, or a layout op (or MaxPool) whose output may be too."""
    if name in graph.output_values or depth > 16:
        return False
    consumers = _consumers(graph).get(name, [])
    for n in consumers:
        if n.domain not in ("", "ai.onnx", "com.microsoft"):
            return False
        if n.operation_type == "Cast":
            if n.attributes.get("to") not in (TensorProto.FLOAT, TensorProto.DOUBLE):
                return False
        elif n.operation_type in _PASS_THROUGH:
            if n.domain or n.input_values[0] != name or name in n.input_values[1:]:
                return False
            if len(n.output_values) > 1 and any(n.output_values[1:]):
                return False  # MaxPool's indices
            if not _carrier(n.output_values[0], graph, depth + 1):
                return False
        elif n.operation_type not in _CARRIER_OPS:
            return False
    return bool(consumers)


def _granular(p: torch.Tensor, x: torch.Tensor, axis: int, block: int) -> torch.Tensor:
    """Scale or zero point ``p`` shaped to broadcast against ``x``: per tensor, per axis or blocked."""
    if block > 0:
        axis = axis % x.dim()
        return p.repeat_interleave(block, dim=axis).narrow(axis, 0, x.shape[axis])
    if p.numel() == 1 and p.dim() <= 1:
        return p.reshape(())
    if p.dim() != 1:
        raise ValueError(f"a scale/zero point of shape {tuple(p.shape)} needs block_size")
    axis = axis % x.dim()
    return p.reshape((-1,) + (1,) * (x.dim() - axis - 1))


def _zp(zp: torch.Tensor | None, like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Zero point as ``dtype`` (0 when absent)."""
    if zp is None:
        return torch.zeros((), dtype=dtype, device=like.device)
    return zp.to(dtype)


def _ste_round(t: torch.Tensor, zp: torch.Tensor, lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``saturate(rint(t) + zp)`` with the straight-through gradient of ``t`` inside [lo, hi], 0 outside.
    Returns (carrier value with gradient, exact value without)."""
    with torch.no_grad():
        shifted = torch.round(t.detach()) + zp
        exact = shifted.clamp(lo, hi)
    if not t.requires_grad:
        return exact, exact
    inside = (shifted >= lo) & (shifted <= hi)
    return exact + torch.where(inside, t - t.detach(), torch.zeros((), dtype=t.dtype, device=t.device)), exact


def _integer(x: torch.Tensor, zp: torch.Tensor | None, lead: int | None = None) -> torch.Tensor:
    """``x - zp`` in float64 (exact for integer values); a 1-D ``zp`` applies along axis ``lead`` of x."""
    v = x.to(torch.float64)
    if zp is None:
        return v
    z = zp.to(torch.float64)
    if lead is not None and z.dim() == 1 and z.numel() > 1:
        z = z.reshape((-1,) + (1,) * (x.dim() - lead - 1))
    return v - z


def _out(carrier_value: torch.Tensor, exact: torch.Tensor, dtype: torch.dtype, carrier: bool, float_dtype):
    if carrier:
        return carrier_value.to(float_dtype)
    return exact.to(dtype)


# --- QuantizeLinear / DequantizeLinear ------------------------------------------------------------
class OnnxQuantizeLinear(nn.Module):
    """ONNX QuantizeLinear to an integer type, with the straight-through gradient (see module doc).

    Parameters
    ----------
    dtype : torch.dtype
        The output integer type when no integer zero point says otherwise.
    axis, block_size : int
        Per-axis / blocked granularity (block_size 0: per tensor or per axis by the scale's shape).
    carrier : bool
        Return the exact integer values as float32 (differentiable) instead of ``dtype``.
    precision : torch.dtype or None
        The dtype of the division (opset 23 ``precision``). None: float32, as onnxruntime 1.31 does even for
        float16/bfloat16 scales (the opset-23 text says "the scale's type"; onnxruntime is followed).
    """

    straight_through = True  #: the forward rounds: gradients are straight-through

    def __init__(self, dtype, axis=1, block_size=0, carrier=False, precision=None):
        super().__init__()
        self.dtype = dtype
        self.axis = axis
        self.block_size = block_size
        self.carrier = carrier
        self.precision = precision

    def forward(self, x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor | None = None) -> torch.Tensor:
        dtype = zp.dtype if zp is not None and zp.dtype in _RANGE else self.dtype
        lo, hi = _RANGE[dtype]
        work = self.precision or torch.float32  # onnxruntime divides in float32 for float16 scales too
        s = _granular(scale.detach().to(work), x, self.axis, self.block_size)
        z = _granular(_zp(zp, x, work).detach(), x, self.axis, self.block_size)
        t = (x.to(work) / s).float()
        value, exact = _ste_round(t, z.float(), lo, hi)
        return _out(value, exact, dtype, self.carrier, torch.float32)

    def extra_repr(self) -> str:
        return f"{self.dtype}, axis={self.axis}, block_size={self.block_size}, carrier={self.carrier}"


class OnnxDequantizeLinear(nn.Module):
    """ONNX DequantizeLinear ``(x - zp) * s`` from an integer tensor or a float carrier; output in the
    scale's dtype (or ``output_dtype``); differentiable in x (gradient ``s``)."""

    def __init__(self, axis=1, block_size=0, out_dtype=None):
        super().__init__()
        self.axis = axis
        self.block_size = block_size
        self.out_dtype = out_dtype

    def forward(self, x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor | None = None) -> torch.Tensor:
        s = _granular(scale, x, self.axis, self.block_size)
        if x.is_floating_point():  # a carrier: exact integers
            v = (
                x.to(torch.float64)
                if zp is None
                else x.to(torch.float64) - _granular(zp.to(torch.float64), x, self.axis, self.block_size)
            )
        else:
            v = x.to(torch.int64)
            if zp is not None:
                v = v - _granular(zp.to(torch.int64), x, self.axis, self.block_size)
        y = v.to(torch.float32) * s.to(torch.float32)
        return y.to(self.out_dtype or scale.dtype)

    def extra_repr(self) -> str:
        return f"axis={self.axis}, block_size={self.block_size}"


@converter("QuantizeLinear", schema_versions("QuantizeLinear", [10, 13, 19, 21, 23, 24, 25]))
def _quantize(node, graph):
    _check_scales(node, graph, [1])
    a = node.attributes
    names = list(node.input_values) + [""] * 3
    elem = _elem_type(names[2], graph) or _elem_type(node.output_values[0], graph)
    elem = elem or a.get("output_dtype") or TensorProto.UINT8
    if elem not in _INT_TYPES:
        raise unsupported(node, f"quantization to {_type_name(elem)} (only (u)int8 and (u)int16)")
    precision = a.get("precision", 0)
    if precision and precision not in _FLOATS:
        raise unsupported(node, f"precision={_type_name(precision)}")
    module = OnnxQuantizeLinear(
        _INT_TYPES[elem][0],
        a.get("axis", 1),
        a.get("block_size", 0),
        _carrier(node.output_values[0], graph),
        _FLOATS.get(precision),
    )
    return result(module, node)


@converter("DequantizeLinear", schema_versions("DequantizeLinear", [10, 13, 19, 21, 23, 24, 25]))
def _dequantize(node, graph):
    _check_scales(node, graph, [1])
    a = node.attributes
    elem = _elem_type(node.input_values[0], graph)
    if elem is not None and elem not in _INT_TYPES and elem != TensorProto.INT32:
        raise unsupported(node, f"dequantization of {_type_name(elem)} (only (u)int8, (u)int16, int32)")
    out = a.get("output_dtype", 0)
    if out and out not in _FLOATS:
        raise unsupported(node, f"output_dtype={_type_name(out)}")
    return result(OnnxDequantizeLinear(a.get("axis", 1), a.get("block_size", 0), _FLOATS.get(out)), node)


# --- DynamicQuantizeLinear ------------------------------------------------------------------------
def _dynamic_params(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """onnxruntime's uint8 (scale, zero point) for ``x``: the range [min(0, min x), max(0, max x)]."""
    with torch.no_grad():
        xf = x.detach().float()
        lo = torch.clamp(xf.min(), max=0.0) if xf.numel() else torch.zeros((), device=x.device)
        hi = torch.clamp(xf.max(), min=0.0) if xf.numel() else torch.zeros((), device=x.device)
        scale = torch.where(hi == lo, torch.ones_like(hi), (hi - lo) / 255.0)  # onnxruntime: 1 for all-zero x
        zp = torch.round(torch.clamp(0.0 - lo / scale, 0.0, 255.0))
        return scale, zp


class OnnxDynamicQuantizeLinear(nn.Module):
    """ONNX DynamicQuantizeLinear (uint8): (y, y_scale, y_zero_point); y with the straight-through
    gradient when ``carrier`` (scale and zero point detached)."""

    straight_through = True  #: the forward rounds: gradients are straight-through

    def __init__(self, carrier: bool = False):
        super().__init__()
        self.carrier = carrier

    def forward(self, x: torch.Tensor):
        scale, zp = _dynamic_params(x)
        value, exact = _ste_round(x.float() / scale, zp, 0, 255)
        y = _out(value, exact, torch.uint8, self.carrier, torch.float32)
        return y, scale, zp.to(torch.uint8)

    def extra_repr(self) -> str:
        return f"carrier={self.carrier}"


@converter("DynamicQuantizeLinear", 11)
def _dql(node, graph):
    return result(OnnxDynamicQuantizeLinear(_carrier(node.output_values[0], graph)), node)


# --- MatMulInteger, ConvInteger -------------------------------------------------------------------
class OnnxMatMulInteger(nn.Module):
    """ONNX MatMulInteger ``(A - a_zp) @ (B - b_zp)`` in int32, or as a float64 carrier; a 1-D a_zp is
    per row of A, a 1-D b_zp per column of B."""

    def __init__(self, carrier: bool = False):
        super().__init__()
        self.carrier = carrier

    def forward(self, a, b, a_zp=None, b_zp=None):
        acc = torch.matmul(_integer(a, a_zp, lead=a.dim() - 2), _integer(b, b_zp))
        return acc if self.carrier else acc.to(torch.int32)


class OnnxConvInteger(nn.Module):
    """ONNX ConvInteger: the convolution of ``x - x_zp`` and ``w - w_zp`` (so padding holds x_zp), in
    int32 or as a float64 carrier; a 1-D w_zp is per output channel."""

    def __init__(self, attrs: dict, carrier: bool = False):
        super().__init__()
        self.conv = OnnxConvFunctional(attrs)
        self.carrier = carrier

    def forward(self, x, w, x_zp=None, w_zp=None):
        acc = self.conv(_integer(x, x_zp), _integer(w, w_zp, lead=0))
        return acc if self.carrier else acc.to(torch.int32)


@converter("MatMulInteger", 10)
def _matmul_integer(node, graph):
    return result(OnnxMatMulInteger(_carrier(node.output_values[0], graph)), node)


@converter("ConvInteger", 10)
def _conv_integer(node, graph):
    return result(OnnxConvInteger(dict(node.attributes), _carrier(node.output_values[0], graph)), node)


# --- QLinearMatMul, QLinearConv -------------------------------------------------------------------
def _requantize(acc, multiplier, y_zp, dtype, carrier):
    """``saturate(rint(f32(acc) * multiplier) + y_zp)`` with the straight-through gradient."""
    lo, hi = _RANGE[dtype]
    value, exact = _ste_round(acc.to(torch.float32) * multiplier, y_zp.to(torch.float32), lo, hi)
    return _out(value, exact, dtype, carrier, torch.float32)


def _out_dtype(node, graph, zp_name: str) -> torch.dtype:
    elem = _elem_type(zp_name, graph) or _elem_type(node.output_values[0], graph) or TensorProto.UINT8
    if elem not in _INT_TYPES:
        raise unsupported(node, f"a {_type_name(elem)} output (only (u)int8 and (u)int16)")
    return _INT_TYPES[elem][0]


class OnnxQLinearMatMul(nn.Module):
    """ONNX QLinearMatMul: MatMulInteger, then requantized to y's scale and zero point; scales per tensor,
    a's per row, b's per column."""

    straight_through = True  #: the forward rounds: gradients are straight-through

    def __init__(self, dtype, carrier: bool = False):
        super().__init__()
        self.dtype = dtype
        self.carrier = carrier

    def forward(self, a, a_s, a_zp, b, b_s, b_zp, y_s, y_zp):
        acc = torch.matmul(_integer(a, a_zp, lead=a.dim() - 2), _integer(b, b_zp))
        a_s = a_s.detach().float()
        if a_s.dim() == 1 and a_s.numel() > 1:
            a_s = a_s.reshape(-1, 1)
        multiplier = a_s * b_s.detach().float() / y_s.detach().float()
        dtype = y_zp.dtype if y_zp.dtype in _RANGE else self.dtype
        return _requantize(acc, multiplier, y_zp.detach(), dtype, self.carrier)


class OnnxQLinearConv(nn.Module):
    """ONNX QLinearConv: ConvInteger plus the int32 bias, requantized to y's scale and zero point; w's
    scale and zero point per tensor or per output channel."""

    straight_through = True  #: the forward rounds: gradients are straight-through

    def __init__(self, attrs: dict, dtype, carrier: bool = False):
        super().__init__()
        self.conv = OnnxConvFunctional(attrs)
        self.dtype = dtype
        self.carrier = carrier

    def forward(self, x, x_s, x_zp, w, w_s, w_zp, y_s, y_zp, bias=None):
        acc = self.conv(_integer(x, x_zp), _integer(w, w_zp, lead=0))
        shape = (1, -1) + (1,) * (acc.dim() - 2)
        if bias is not None:
            acc = acc + bias.to(torch.float64).reshape(shape)
        multiplier = x_s.detach().float() * w_s.detach().float() / y_s.detach().float()
        if multiplier.numel() > 1:
            multiplier = multiplier.reshape(shape)
        dtype = y_zp.dtype if y_zp.dtype in _RANGE else self.dtype
        return _requantize(acc, multiplier, y_zp.detach(), dtype, self.carrier)


@converter("QLinearMatMul", schema_versions("QLinearMatMul", [10, 21]))
def _qlinear_matmul(node, graph):
    _check_scales(node, graph, [1, 4, 6])
    dtype = _out_dtype(node, graph, node.input_values[7])
    return result(OnnxQLinearMatMul(dtype, _carrier(node.output_values[0], graph)), node)


@converter("QLinearConv", 10)
def _qlinear_conv(node, graph):
    _check_scales(node, graph, [1, 4, 6])
    dtype = _out_dtype(node, graph, node.input_values[7])
    carrier = _carrier(node.output_values[0], graph)
    return result(OnnxQLinearConv(dict(node.attributes), dtype, carrier), node)


# --- com.microsoft --------------------------------------------------------------------------------
class OnnxMatMulIntegerToFloat(nn.Module):
    """com.microsoft MatMulIntegerToFloat ``f32((A - a_zp) @ (B - b_zp)) * (a_s * b_s) + bias``."""

    def forward(self, a, b, a_s, b_s, a_zp=None, b_zp=None, bias=None):
        acc = torch.matmul(_integer(a, a_zp), _integer(b, b_zp))
        y = acc.to(torch.float32) * (a_s.detach().float() * b_s.detach().float())
        return y if bias is None else y + bias.float()


class OnnxDynamicQuantizeMatMul(nn.Module):
    """com.microsoft DynamicQuantizeMatMul: A quantized as DynamicQuantizeLinear does (straight-through
    gradient), then MatMulIntegerToFloat with B."""

    straight_through = True  #: the forward rounds: gradients are straight-through

    def forward(self, a, b, b_s, b_zp=None, bias=None):
        scale, zp = _dynamic_params(a)
        value, _ = _ste_round(a.float() / scale, zp, 0, 255)
        acc = torch.matmul(value.to(torch.float64) - zp.double(), _integer(b, b_zp))
        y = acc.to(torch.float32) * (scale * b_s.detach().float())
        return y if bias is None else y + bias.float()


class OnnxQGemm(nn.Module):
    """com.microsoft QGemm: ``acc = op(A - a_zp) @ op(B - b_zp) + C`` (int32 C), times
    ``f32(alpha * a_s * b_s / y_s)``; requantized to y's zero point when given (straight-through
    gradient), else float. b's scale and zero point per tensor or per column."""

    def __init__(self, trans_a: int, trans_b: int, alpha: float, dtype, carrier: bool = False):
        super().__init__()
        self.trans_a = bool(trans_a)
        self.trans_b = bool(trans_b)
        self.alpha = float(alpha)
        self.dtype = dtype
        self.carrier = carrier
        self.straight_through = dtype is not None  # rounds only when it requantizes to y's zero point

    def forward(self, a, a_s, a_zp, b, b_s, b_zp, c=None, y_s=None, y_zp=None):
        a = _integer(a, a_zp)
        b = _integer(b.transpose(0, 1) if self.trans_b else b, b_zp)
        acc = torch.matmul(a.transpose(0, 1) if self.trans_a else a, b)
        if c is not None:
            acc = acc + c.to(torch.float64)
        alpha = torch.tensor(self.alpha, dtype=torch.float32, device=acc.device)
        multiplier = alpha * a_s.detach().float().reshape(()) * b_s.detach().float()
        if y_s is not None:
            multiplier = multiplier / y_s.detach().float().reshape(())
        if y_zp is None:
            return acc.to(torch.float32) * multiplier
        dtype = y_zp.dtype if y_zp.dtype in _RANGE else self.dtype
        return _requantize(acc, multiplier, y_zp.detach(), dtype, self.carrier)

    def extra_repr(self) -> str:
        return f"trans_a={self.trans_a}, trans_b={self.trans_b}, alpha={self.alpha}, carrier={self.carrier}"


@converter("QGemm", 1, domain="com.microsoft")
def _qgemm(node, graph):
    _check_scales(node, graph, [1, 4, 7])
    a = node.attributes
    names = list(node.input_values) + [""] * 9
    quantized = bool(names[8])
    dtype = _out_dtype(node, graph, names[8]) if quantized else None
    carrier = quantized and _carrier(node.output_values[0], graph)
    return result(
        OnnxQGemm(a.get("transA", 0), a.get("transB", 0), a.get("alpha", 1.0), dtype, carrier), node
    )


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.float32).reshape(())


class OnnxQLinearBinary(nn.Module):
    """com.microsoft QLinearAdd / QLinearMul (numpy broadcasting, per-tensor scales), as onnxruntime's MLAS
    kernels compute them:

    - Add: ``r_a = f32(s_a / s_c)``, ``r_b = f32(s_b / s_c)``, ``k = zp_c - (r_a zp_a + r_b zp_b)`` in float32,
      ``v = fma(a, r_a, fma(b, r_b, k))`` (the AVX2 kernel fuses; emulated exactly in float64);
    - Mul: ``v = f32((a - zp_a)(b - zp_b)) * f32(f32(s_a s_b) / s_c) + zp_c``;

    then ``saturate(rint(v))`` with the straight-through gradient.
    """

    straight_through = True  #: the forward rounds: gradients are straight-through

    def __init__(self, op: str, dtype, carrier: bool = False):
        super().__init__()
        self.op = op
        self.dtype = dtype
        self.carrier = carrier

    def forward(self, a, a_s, a_zp, b, b_s, b_zp, c_s, c_zp=None):
        a_s, b_s, c_s = _f32(a_s), _f32(b_s), _f32(c_s)
        za = _f32(a_zp) if a_zp is not None else torch.zeros((), device=a.device)
        zb = _f32(b_zp) if b_zp is not None else torch.zeros((), device=b.device)
        zc = _f32(c_zp) if c_zp is not None else torch.zeros((), device=a.device)
        dtype = c_zp.dtype if c_zp is not None and c_zp.dtype in _RANGE else self.dtype
        lo, hi = _RANGE[dtype]
        a64, b64 = a.to(torch.float64), b.to(torch.float64)
        if self.op == "QLinearAdd":
            r_a, r_b = a_s / c_s, b_s / c_s
            k = zc - (r_a * za + r_b * zb)
            inner = (b64 * r_b.double() + k.double()).to(torch.float32)
            v = (a64 * r_a.double() + inner.double()).to(torch.float32)
            value, exact = _ste_round(v, torch.zeros((), device=v.device), lo, hi)
        else:
            prod = ((a64 - za.double()) * (b64 - zb.double())).to(torch.float32)
            value, exact = _ste_round(
                prod * ((a_s * b_s) / c_s) + zc, torch.zeros((), device=a.device), lo, hi
            )
        return _out(value, exact, dtype, self.carrier, torch.float32)

    def extra_repr(self) -> str:
        return f"{self.op}, carrier={self.carrier}"


def _qlinear_binary(node, graph):
    _check_scales(node, graph, [1, 4, 6])
    names = list(node.input_values) + [""] * 8
    dtype = _out_dtype(node, graph, names[7] or names[0])
    carrier = _carrier(node.output_values[0], graph)
    return result(OnnxQLinearBinary(node.operation_type, dtype, carrier), node)


converter("QLinearAdd", 1, domain="com.microsoft")(_qlinear_binary)
converter("QLinearMul", 1, domain="com.microsoft")(_qlinear_binary)


class OnnxQLinearGlobalAveragePool(nn.Module):
    """com.microsoft QLinearGlobalAveragePool: the exact integer sum over the spatial axes (NCHW, or NHWC
    with ``channels_last``), requantized by ``f32(s_x / (s_y * n))`` with the straight-through gradient."""

    straight_through = True  #: the forward rounds: gradients are straight-through

    def __init__(self, channels_last: bool, dtype, carrier: bool = False):
        super().__init__()
        self.channels_last = bool(channels_last)
        self.dtype = dtype
        self.carrier = carrier

    def forward(self, x, x_s, x_zp, y_s, y_zp):
        axes = tuple(range(1, x.dim() - 1)) if self.channels_last else tuple(range(2, x.dim()))
        n = 1
        for k in axes:
            n *= int(x.shape[k])
        acc = _integer(x, x_zp).sum(dim=axes, keepdim=True)
        multiplier = _f32(x_s) / (_f32(y_s) * torch.tensor(float(n), dtype=torch.float32, device=x.device))
        dtype = y_zp.dtype if y_zp.dtype in _RANGE else self.dtype
        return _requantize(acc, multiplier, y_zp.detach(), dtype, self.carrier)

    def extra_repr(self) -> str:
        return f"channels_last={self.channels_last}, carrier={self.carrier}"


@converter("QLinearGlobalAveragePool", 1, domain="com.microsoft")
def _qlinear_gap(node, graph):
    _check_scales(node, graph, [1, 3])
    names = list(node.input_values) + [""] * 5
    dtype = _out_dtype(node, graph, names[4] or names[0])
    carrier = _carrier(node.output_values[0], graph)
    channels_last = node.attributes.get("channels_last", 0)
    return result(OnnxQLinearGlobalAveragePool(channels_last, dtype, carrier), node)


@converter("MatMulIntegerToFloat", 1, domain="com.microsoft")
def _matmul_integer_to_float(node, graph):
    _check_scales(node, graph, [2, 3])
    return result(OnnxMatMulIntegerToFloat(), node)


@converter("DynamicQuantizeMatMul", 1, domain="com.microsoft")
def _dynamic_quantize_matmul(node, graph):
    _check_scales(node, graph, [2])
    return result(OnnxDynamicQuantizeMatMul(), node)


# --- com.microsoft DynamicQuantizeLSTM ------------------------------------------------------------
def _dynamic_quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` quantized to uint8 as onnxruntime's dynamic GEMMs do (DynamicQuantizeLinear's scale and zero
    point over all of ``x``): ``(q - zp, scale)``, ``q - zp`` exact in float64 with the straight-through
    gradient of ``x / scale``, the scale detached."""
    scale, zp = _dynamic_params(x)
    value, _ = _ste_round(x.float() / scale, zp, 0, 255)
    return value.to(torch.float64) - zp.double(), scale


class OnnxDynamicQuantizeLSTM(OnnxLSTM):
    """com.microsoft DynamicQuantizeLSTM as onnxruntime's CPU kernel computes it
    (``contrib_ops/cpu/quantization/dynamic_quantize_lstm.cc``, ``rnn_helpers.cc ComputeGemm``).

    ``W`` [dirs, I, 4H] and ``R`` [dirs, H, 4H] are int8/uint8 (transposed against ONNX LSTM, gates i, o,
    f, c), with per-direction or per-column scales; only each direction's first zero point is read (int8
    weights must have zero point 0, uint8 ones one zero point per direction). Both GEMMs quantize their
    float operand on the fly to uint8 with DynamicQuantizeLinear's scale and zero point:

    - the input GEMM once, over the whole sequence ``X`` [T, B, I] (so the batch shares one scale);
    - the recurrent GEMM at every step, over ``h`` [B, H] — in chunks of ``ceil(B / threads)`` rows when
      onnxruntime splits the batch over its intra-op threads (``B > 4``, or ``B >= 2`` and ``H <= 256``;
      ``uni_directional_lstm.cc SetNumThreads``), so ``threads`` must be the session's thread count for
      parity with ``B > 1``.

    Then ``f32(acc) * f32(s_x * s_w)`` as MLAS's output processor; the rest is the LSTM cell of
    :class:`~onnx_explain.convert.ops.recurrent.OnnxRecurrent`. Gradient: straight-through through both
    quantizations (scales detached).
    """

    straight_through = True  #: the forward rounds: gradients are straight-through

    def __init__(self, *args, threads: int = 1, **kwargs):
        super().__init__("LSTM", *args, **kwargs)
        self.threads = int(threads)

    @staticmethod
    def _weights(q: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor) -> torch.Tensor:
        """[dirs, K, 4H] integers -> the dequantized [dirs, 4H, K] in float64 (exact: 8-bit times f32)."""
        dirs = q.shape[0]
        z = zp.reshape(dirs, -1)[:, :1].to(torch.float64)  # onnxruntime reads each direction's first
        s = scale.detach().reshape(dirs, -1).to(torch.float64)
        w = (q.to(torch.float64) - z[:, :, None]) * s[:, None, :]
        return w.transpose(1, 2)

    def _input_gemm(self, x, w):
        a, scale = _dynamic_quantize(x)
        return (torch.matmul(a, w.transpose(0, 1)) * scale.double()).to(x.dtype)

    def _recurrent_gemm(self, h, r):
        batch, hidden = h.shape
        chunk = batch
        if batch > 4 or (batch >= 2 and hidden <= 256):  # onnxruntime's batch-parallel branch
            chunk = -(-batch // max(self.threads, 1))
        outs = []
        for start in range(0, batch, chunk):
            a, scale = _dynamic_quantize(h[start : start + chunk])
            outs.append(torch.matmul(a, r.transpose(0, 1)) * scale.double())
        return torch.cat(outs, 0).to(h.dtype)

    def forward(self, X, W, R, B=None, sequence_lens=None, initial_h=None, initial_c=None, P=None,  # noqa: N803
                W_scale=None, W_zero_point=None, R_scale=None, R_zero_point=None):  # noqa: N803  # fmt: skip
        w = self._weights(W, W_scale, W_zero_point)
        r = self._weights(R, R_scale, R_zero_point)
        return self._forward(X, w, r, B, sequence_lens, initial_h, initial_c, P)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", threads={self.threads}"


@converter("DynamicQuantizeLSTM", 1, domain="com.microsoft")
def _dynamic_quantize_lstm(node, graph):
    from .recurrent import parse_activations

    _check_scales(node, graph, [8, 10])
    a = node.attributes
    names = list(node.input_values) + [""] * 12
    if names[4]:
        raise unsupported(node, "sequence_lens")
    direction = a.get("direction", "forward")
    if direction not in ("forward", "reverse", "bidirectional"):
        raise unsupported(node, f"direction={direction!r}")
    try:
        acts = parse_activations("LSTM", a, 2 if direction == "bidirectional" else 1)
    except ValueError as exc:
        raise unsupported(node, str(exc)) from None
    clip = a.get("clip")
    module = OnnxDynamicQuantizeLSTM(
        direction, 0, acts, None if clip is None else float(clip), input_forget=a.get("input_forget", 0),
        n_outputs=max(len(node.output_values), 1), threads=_ort_threads(),
    )  # fmt: skip
    return result(module, node)


def _ort_threads() -> int:
    """The intra-op thread count of this package's onnxruntime sessions: ``ONNX_EXPLAIN_THREADS``, else
    onnxruntime's default, one thread per physical core this process may run on."""
    threads = int(os.environ.get("ONNX_EXPLAIN_THREADS", "0") or 0)
    return threads if threads > 0 else _physical_cores()


def _physical_cores() -> int:
    """Physical cores among the CPUs this process may use (Linux sysfs topology; else the CPU count)."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    cores = set()
    for cpu in cpus:
        base = f"/sys/devices/system/cpu/cpu{cpu}/topology/"
        try:
            with open(base + "physical_package_id") as f1, open(base + "core_id") as f2:
                cores.add((f1.read().strip(), f2.read().strip()))
        except OSError:
            return len(cpus) or os.cpu_count() or 1
    return len(cores) or os.cpu_count() or 1


# --- Gather of a quantized table ------------------------------------------------------------------
class OnnxCarrierGather(nn.Module):
    """Gather from an integer (quantized) table, returning the exact integers as a float32 carrier, so a
    dequantized embedding lookup (``Gather(q_table, ids) -> DequantizeLinear``, as ``quantize_dynamic``
    writes it) has a float tensor right after the lookup where gradients can start."""

    def __init__(self, gather: nn.Module):
        super().__init__()
        self.gather = gather

    def forward(self, data: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        return self.gather(data.to(torch.float32), indices)


def _gather(node, graph):
    converted = _BUILTIN_GATHER(node, graph)
    elem = _elem_type(node.input_values[0], graph)
    if (
        elem in _INT_TYPES
        and node.input_values[0] in graph.initializers
        and _carrier(node.output_values[0], graph)
    ):
        converted = result(OnnxCarrierGather(converted.torch_module), node)
    return converted


_BUILTIN_GATHER = builtin("Gather", 13)  # onnx2torch converts versions 1, 11 and 13 alike
converter("Gather", [1, 11, 13], override=True)(_gather)


# --- com.microsoft QAttention, QEmbedLayerNormalization -------------------------------------------
class OnnxQAttention(OnnxAttention):
    """com.microsoft QAttention as onnxruntime's CPU kernel computes it (``attention_quant.cc``): the packed
    projection ``f32((x - x_zp) @ (W - w_zp)) * f32(x_s * w_s) + bias`` of an already quantized uint8
    input (a carrier: straight-through gradient to the float input of its DynamicQuantizeLinear), per-tensor
    or per-column weight scales and zero points, then the float attention of ``com.microsoft.Attention``
    (``mask_index`` forms, ``unidirectional``; no ``past``)."""

    straight_through = True  #: its input was rounded (by the DynamicQuantizeLinear feeding it)

    def forward(self, input, weights, bias, input_scale, weight_scale, mask_index=None,  # noqa: A002
                input_zero_point=None, weight_zero_point=None, past=None):  # fmt: skip
        acc = torch.matmul(_integer(input, input_zero_point), _integer(weights, weight_zero_point))
        multiplier = weight_scale.detach().float() * input_scale.detach().float().reshape(())
        proj = acc.to(torch.float32) * multiplier + bias
        return self._from_projection(proj, mask_index)


@converter("QAttention", 1, domain="com.microsoft")
def _qattention(node, graph):
    _check_scales(node, graph, [3, 4])
    a = node.attributes
    names = list(node.input_values) + [""] * 9
    if names[8]:
        raise unsupported(node, "a past state (input 'past', KV cache)")
    heads = int(a["num_heads"])
    module = OnnxQAttention(
        heads, None, bool(a.get("unidirectional", 0)), float(a.get("mask_filter_value", -10000.0)),
        float(a.get("scale", 0.0)), max(1, len(node.output_values)),
    )  # fmt: skip
    return result(module, node)


def _dequantized(q: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor | None) -> torch.Tensor:
    """onnxruntime's ``quantization::Dequantize``: ``f32(int32(q) - zp) * scale`` (per tensor)."""
    v = q.to(torch.int32) - (zp.to(torch.int32).reshape(()) if zp is not None else 0)
    return v.to(torch.float32) * scale.detach().float().reshape(())


class OnnxQWordEmbedding(nn.Module):
    """The word lookup of ``QEmbedLayerNormalization`` in the dequantized table (its own graph node, where
    attribution to token ids starts, as for ``EmbedLayerNormalization``)."""

    def forward(self, input_ids, table, scale, zp=None):
        return F.embedding(input_ids.long(), _dequantized(table, scale, zp))


class OnnxQEmbedLayerNormRest(OnnxEmbedLayerNormRest):
    """Position and segment embeddings, LayerNorm and mask index of ``QEmbedLayerNormalization``: every
    table, gamma and beta dequantized per tensor; the mask index counts the entries equal to 1."""

    def forward(self, words, input_ids, segment_ids, position_q, segment_q, gamma_q, beta_q, mask,  # noqa: PLR0913
                position_s, segment_s, gamma_s, beta_s, position_z, segment_z, gamma_z, beta_z):  # fmt: skip
        segment = None if segment_q is None else _dequantized(segment_q, segment_s, segment_z)
        return super().forward(
            words, input_ids, segment_ids, _dequantized(position_q, position_s, position_z), segment,
            _dequantized(gamma_q, gamma_s, gamma_z), _dequantized(beta_q, beta_s, beta_z),
            None if mask is None else (mask == 1), None,
        )  # fmt: skip


_QEMBED_INPUTS = (
    "input_ids", "segment_ids", "word_embedding", "position_embedding", "segment_embedding", "gamma", "beta",
    "mask", "word_scale", "position_scale", "segment_scale", "gamma_scale", "beta_scale", "word_zp",
    "position_zp", "segment_zp", "gamma_zp", "beta_zp",
)  # fmt: skip


@converter("QEmbedLayerNormalization", 1, domain="com.microsoft")
def _qembed_layer_norm(node, graph):
    _check_scales(node, graph, range(8, 13))
    n_out = max(1, len(node.output_values))
    g = fx.Graph()
    root = nn.Module()
    root.words = OnnxQWordEmbedding()
    root.rest = OnnxQEmbedLayerNormRest(float(node.attributes.get("epsilon", 1e-12)), n_out)
    names = list(node.input_values) + [""] * (len(_QEMBED_INPUTS) - len(node.input_values))
    ph = {key: g.placeholder(key) for key in _QEMBED_INPUTS}
    words = g.call_module("words", (ph["input_ids"], ph["word_embedding"], ph["word_scale"], ph["word_zp"]))
    rest = [ph[k] for k in _QEMBED_INPUTS if k not in ("word_embedding", "word_scale", "word_zp")]
    g.output(g.call_module("rest", (words, *rest)))
    module = fx.GraphModule(root, g)
    module.onnx_inline = True  # the driver inlines it, so the word lookup is a node of its own
    return result(module, node, tuple(names))


# --- com.microsoft QLinearSoftmax -----------------------------------------------------------------
class OnnxQLinearSoftmax(nn.Module):
    """com.microsoft QLinearSoftmax as onnxruntime's CPU kernel computes it (``qlinear_softmax.cc``): a
    256-entry float32 table ``exp((k - 255 + shift) * s_x)`` (``shift = max(0, log(FLT_MAX / D) - 5) / s_x``),
    indexed by ``255 - max(x) + x``; the row sum accumulated in float32 in order; ``y = rint(t *
    floor(1 / s_y) / sum) + zp_y``, saturated (measured on onnxruntime 1.31: int8 outputs saturate at 127).

    Straight-through gradient: that of ``softmax((x - zp_x) s_x) / s_y`` where the output does not
    saturate. ``axis`` is the opset-13 one (softmax over one axis); opset < 13 flattens from ``axis`` on."""

    straight_through = True  #: the forward rounds: gradients are straight-through

    def __init__(self, axis: int, opset: int, dtype, carrier: bool = False):
        super().__init__()
        self.axis = int(axis)
        self.opset = int(opset)
        self.dtype = dtype
        self.carrier = carrier

    def forward(self, x, x_s, x_zp, y_s, y_zp=None):
        shape = x.shape
        axis = self.axis % x.dim()
        if self.opset < 13:  # softmax over everything from axis on
            x2 = x.reshape(*shape[:axis], -1)
        else:
            x2 = x.movedim(axis, -1)
        d = x2.shape[-1]
        xs, ys = _f32(x_s), _f32(y_s)
        with torch.no_grad():
            q = x2.detach().to(torch.float64)
            shift = max(0.0, math.log(torch.finfo(torch.float32).max / d) - 5) / float(xs)
            k = q - q.amax(dim=-1, keepdim=True)  # (k - 255) of the kernel's table index
            table = torch.exp((k + shift) * float(xs)).to(torch.float32)
            total = torch.zeros(table.shape[:-1], dtype=torch.float32, device=x.device)
            for j in range(d):  # the kernel's in-order float32 sum
                total = total + table[..., j]
            y_scale = torch.floor(1.0 / ys)
            v = torch.round((table * y_scale) / total[..., None]).to(torch.float64)
            v = v + (_f32(y_zp).double() if y_zp is not None else 0.0)
            lo, hi = _RANGE[self.dtype]
            inside = (v >= lo) & (v <= hi)
            v = torch.clamp(v, lo, hi)
        exact = v.to(torch.float32)
        if x.requires_grad:
            zx = _f32(x_zp) if x_zp is not None else torch.zeros((), device=x.device)
            t = torch.softmax((x2.float() - zx) * xs, dim=-1) / ys
            exact = exact + torch.where(inside, t - t.detach(), torch.zeros((), device=x.device))
        y = exact.reshape(shape) if self.opset < 13 else exact.movedim(-1, axis)
        return y if self.carrier else y.detach().to(self.dtype)

    def extra_repr(self) -> str:
        return f"axis={self.axis}, opset={self.opset}, carrier={self.carrier}"


@converter("QLinearSoftmax", 1, domain="com.microsoft")
def _qlinear_softmax(node, graph):
    _check_scales(node, graph, [1, 3])
    a = node.attributes
    opset = int(a.get("opset", 13))
    axis = int(a.get("axis", 1 if opset < 13 else -1))
    names = list(node.input_values) + [""] * 5
    dtype = _out_dtype(node, graph, names[4] or names[0])
    if dtype not in (torch.uint8, torch.int8):
        raise unsupported(node, f"a {dtype} output (only uint8 and int8)")
    return result(OnnxQLinearSoftmax(axis, opset, dtype, _carrier(node.output_values[0], graph)), node)


# --- the graph onnxruntime runs -------------------------------------------------------------------
def onnxruntime_fused(model) -> object:
    """The graph onnxruntime's CPU provider runs for ``model``: its extended graph optimisations applied
    (``ORT_ENABLE_EXTENDED``) and saved as ONNX.

    For QDQ graphs this matters: onnxruntime rewrites ``DequantizeLinear -> op -> QuantizeLinear`` groups
    into its QLinear* kernels (QLinearAdd, QLinearMul, QLinearSoftmax, QLinearMatMul, QGemm ...), whose
    rounding differs from the graph as written (a tiny BERT: 2-3 % of the logits). Converting this graph
    instead reproduces onnxruntime's outputs exactly (its kernels are all converted here). It may hold
    other fused ``com.microsoft`` ops (FusedConv, FusedMatMul ...), so it is a fallback for graphs whose
    as-written conversion differs from onnxruntime, not a default.

    Parameters
    ----------
    model : onnx.ModelProto
        The model (in memory; no external data).

    Returns
    -------
    onnx.ModelProto
    """
    import tempfile

    import onnx
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    with tempfile.TemporaryDirectory() as folder:
        opts.optimized_model_filepath = os.path.join(folder, "fused.onnx")
        ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        return onnx.load(opts.optimized_model_filepath)
