"""Quantization ops: QDQ (QuantizeLinear/DequantizeLinear), QOperator (QLinearMatMul, QLinearConv), the
integer ops of dynamic quantization (DynamicQuantizeLinear, MatMulInteger, ConvInteger) and onnxruntime's
``com.microsoft`` MatMulIntegerToFloat, DynamicQuantizeMatMul, QGemm, QLinearAdd, QLinearMul and
QLinearGlobalAveragePool. onnx2torch 1.5.15 converts none.

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
type, or a layout op (Flatten, Reshape, Transpose, (Un)Squeeze, Identity, MaxPool) whose output qualifies
in turn, is carried as a float tensor holding the exact integer values ("carrier": float32 for quantized
values, float64 for int32 accumulators). A quantized value that is a graph output, or that feeds any other
op, keeps its ONNX integer dtype (and has no gradient).
"""

from __future__ import annotations

import weakref

import torch
from onnx import TensorProto
from torch import nn

from ..registry import converter
from ._common import const, result, unsupported
from .functional import OnnxConvFunctional
from .tensor import _schema_versions

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
}


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


_CONSUMERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _consumers(graph) -> dict:
    """value name -> the nodes that read it (cached per graph)."""
    if graph not in _CONSUMERS:
        table: dict = {}
        for n in graph.nodes.values():
            for name in dict.fromkeys(n.input_values):
                table.setdefault(name, []).append(n)
        _CONSUMERS[graph] = table
    return _CONSUMERS[graph]


def _check_scales(node, graph, positions) -> None:
    """Refuse a constant scale that is zero or not finite (the quantized graph would divide by it)."""
    for k in positions:
        value = const(node.input_values[k], graph) if k < len(node.input_values) else None
        if value is not None and not bool(torch.isfinite(value.double()).all() and (value != 0).all()):
            raise ValueError(
                f"{node.operation_type}: the scale {node.input_values[k]!r} holds zero or non-finite values"
            )


#: ops that move a quantized tensor's values unchanged: a carrier may pass when their outputs may
_PASS_THROUGH = {"Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Identity", "MaxPool"}


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


@converter("QuantizeLinear", _schema_versions("QuantizeLinear", [10, 13, 19, 21, 23, 24, 25]))
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


@converter("DequantizeLinear", _schema_versions("DequantizeLinear", [10, 13, 19, 21, 23, 24, 25]))
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


@converter("QLinearMatMul", _schema_versions("QLinearMatMul", [10, 21]))
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
