"""Comparison, logical, bitwise and masking ops at every opset today's exporters write.

What onnx2torch 1.5.15 lacks or gets wrong here:

- missing: Equal/Greater/Less-1 (legacy ``broadcast``/``axis``), GreaterOrEqual/LessOrEqual-16, IsNaN-9/20,
  IsInf-20, Trilu-14, Range-27, Einsum-28, Mod-28, BitShift-11/28, BitwiseAnd/Or/Xor/Not-18;
- Greater/Less/GreaterOrEqual/LessOrEqual and Mod raise on uint16/uint32/uint64 (torch has no kernels for
  them): these tensors are computed in a signed type holding the same value (uint16, uint32) or the
  same bits (uint64, ordered by flipping the sign bit);
- IsInf-10 ignored ``detect_negative``/``detect_positive``;
- Range went through python scalars: int32/int16 came back int64, double came back float32.

Where, Expand, And/Or/Xor/Not and IsNaN-13 are right in onnx2torch (tests/test_ops_logic.py checks them).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..registry import builtin, converter
from ._common import const, result, unsupported
from .tensor import schema_versions

_BITS = {
    torch.uint8: 8,
    torch.int8: 8,
    torch.uint16: 16,
    torch.int16: 16,
    torch.uint32: 32,
    torch.int32: 32,
    torch.uint64: 64,
    torch.int64: 64,
}
_UNSIGNED = (torch.uint8, torch.uint16, torch.uint32, torch.uint64)
#: unsigned types torch computes little on -> a signed type that holds every value
_WIDER = {torch.uint16: torch.int32, torch.uint32: torch.int64}
_INT64_MIN = -(2**63)


def _signed(t: torch.Tensor) -> torch.Tensor:
    """``t`` in a dtype torch computes on: uint16/uint32 widened (same values), uint64 viewed as int64
    (same bits); other dtypes unchanged."""
    if t.dtype in _WIDER:
        return t.to(_WIDER[t.dtype])
    if t.dtype == torch.uint64:
        return t.view(torch.int64)
    return t


def _restore(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Undo :func:`_signed` (wrapping modulo 2**bits, as unsigned arithmetic does)."""
    if dtype in _WIDER:
        return t.to(dtype)
    if dtype == torch.uint64:
        return t.view(torch.uint64)
    return t


def _ordered(t: torch.Tensor) -> torch.Tensor:
    """A tensor that compares (<, ==) as ``t`` does: uint64 bits with the sign bit flipped."""
    if t.dtype == torch.uint64:
        return torch.bitwise_xor(t.view(torch.int64), _INT64_MIN)
    return _signed(t)


def _legacy_broadcast(a: torch.Tensor, b: torch.Tensor, axis: int | None) -> torch.Tensor:
    """Opset-1 ``broadcast=1``: ``b``'s shape is a run of ``a``'s axes starting at ``axis`` (default: the
    trailing ones, which numpy broadcasting already does)."""
    if axis is None:
        return b
    axis = axis % a.dim() if a.dim() else 0
    return b.reshape((1,) * axis + tuple(b.shape) + (1,) * (a.dim() - axis - b.dim()))


# --- comparisons ----------------------------------------------------------------------------------
_COMPARE = {
    "Equal": torch.eq,
    "Greater": torch.gt,
    "Less": torch.lt,
    "GreaterOrEqual": torch.ge,
    "LessOrEqual": torch.le,
}


class OnnxCompare(nn.Module):
    """ONNX Equal/Greater/Less/GreaterOrEqual/LessOrEqual on any numeric or bool type; bool output.

    Parameters
    ----------
    op_type : str
        One of the five comparison ops.
    legacy_axis : int or None
        Opset-1 ``axis`` of ``broadcast=1`` (None: numpy broadcasting).
    """

    def __init__(self, op_type: str, legacy_axis: int | None = None):
        super().__init__()
        self.op_type = op_type
        self.legacy_axis = legacy_axis

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        b = _legacy_broadcast(a, b, self.legacy_axis)
        return _COMPARE[self.op_type](_ordered(a), _ordered(b))

    def extra_repr(self) -> str:
        return self.op_type


def _compare(node, graph):
    axis = node.attributes.get("axis") if node.attributes.get("broadcast", 0) else None
    return result(OnnxCompare(node.operation_type, axis), node)


# Equal-7/11/13 (onnx2torch) and Equal-19 (versions.py) are right: torch.eq has every kernel
converter("Equal", 1)(_compare)
converter("Greater", 1)(_compare)
converter("Less", 1)(_compare)
converter("Greater", [7, 9, 13], override=True)(_compare)
converter("Less", [7, 9, 13], override=True)(_compare)
converter("GreaterOrEqual", 12, override=True)(_compare)
converter("LessOrEqual", 12, override=True)(_compare)
converter("GreaterOrEqual", schema_versions("GreaterOrEqual", [16]))(_compare)
converter("LessOrEqual", schema_versions("LessOrEqual", [16]))(_compare)


# --- IsNaN, IsInf ---------------------------------------------------------------------------------
class OnnxIsNaN(nn.Module):
    """ONNX IsNaN (bool output)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.isnan(x)


class OnnxIsInf(nn.Module):
    """ONNX IsInf: +inf and/or -inf, as ``detect_positive`` / ``detect_negative`` ask."""

    def __init__(self, negative: bool = True, positive: bool = True):
        super().__init__()
        self.negative = bool(negative)
        self.positive = bool(positive)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.negative and self.positive:
            return torch.isinf(x)
        if self.positive:
            return torch.isposinf(x)
        if self.negative:
            return torch.isneginf(x)
        return torch.zeros_like(x, dtype=torch.bool)

    def extra_repr(self) -> str:
        return f"negative={self.negative}, positive={self.positive}"


@converter("IsNaN", [9, *schema_versions("IsNaN", [20])])
def _isnan(node, graph):
    return result(OnnxIsNaN(), node)


def _isinf(node, graph):
    a = node.attributes
    return result(OnnxIsInf(a.get("detect_negative", 1), a.get("detect_positive", 1)), node)


converter("IsInf", 10, override=True)(_isinf)
converter("IsInf", schema_versions("IsInf", [20]))(_isinf)


# --- Trilu ----------------------------------------------------------------------------------------
class OnnxTrilu(nn.Module):
    """ONNX Trilu: keep the upper (``upper=1``) or lower triangle of the last two axes from diagonal ``k``,
    zero elsewhere (any dtype; gradients flow to the kept entries)."""

    def __init__(self, upper: bool, k: int | None = None):
        super().__init__()
        self.upper = bool(upper)
        self.k = k

    def forward(self, x: torch.Tensor, k: torch.Tensor | None = None) -> torch.Tensor:
        k = (self.k or 0) if k is None else int(k.reshape(-1)[0])
        ones = torch.ones(x.shape[-2:], dtype=torch.bool, device=x.device)
        keep = torch.triu(ones, k) if self.upper else torch.tril(ones, k)
        return torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device))

    def extra_repr(self) -> str:
        return f"upper={self.upper}, k={self.k}"


@converter("Trilu", 14)
def _trilu(node, graph):
    upper = node.attributes.get("upper", 1)
    k_name = node.input_values[1] if len(node.input_values) > 1 else ""
    k = const(k_name, graph)
    if k is not None or not k_name:
        return result(
            OnnxTrilu(upper, None if k is None else int(k.reshape(-1)[0])), node, (node.input_values[0],)
        )
    return result(OnnxTrilu(upper), node)


# --- Range ----------------------------------------------------------------------------------------
_STASH = {1: torch.float32, 11: torch.float64}  # Range-27 stash_type (a TensorProto data type)


class OnnxRange(nn.Module):
    """ONNX Range in the inputs' dtype: ``start + i * delta`` for ``i < max(ceil((limit - start) / delta), 0)``.

    Integers are exact. Floats are computed as numpy's ``arange`` (the ONNX reference) does: in double
    (float16/bfloat16: in ``stash_type``), ``start + i * ((start + delta) - start)``, rounded once to the
    dtype. onnxruntime adds ``delta`` repeatedly in the dtype instead, which agrees on short ranges and
    drifts on long float32 ones.
    """

    def __init__(self, stash_type: int = 1):
        super().__init__()
        if stash_type not in _STASH:
            raise ValueError(f"Range: stash_type={stash_type} is not float (1) or double (11)")
        self.stash = _STASH[stash_type]

    def forward(self, start: torch.Tensor, limit: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        dtype, device = start.dtype, start.device
        s, lim, d = start.item(), limit.item(), delta.item()
        if d == 0:
            raise ValueError("Range: delta is 0")
        if not dtype.is_floating_point:
            n = max(-((s - lim) // d), 0)  # exact integer ceil((lim - s) / d)
            return (s + torch.arange(n, dtype=torch.int64, device=device) * d).to(dtype)
        n = max(math.ceil((lim - s) / d), 0)
        work = self.stash if dtype in (torch.float16, torch.bfloat16) else torch.float64
        s_w = torch.tensor(s, dtype=work, device=device)
        step = (s_w + torch.tensor(d, dtype=work, device=device)) - s_w  # numpy's arange steps by this
        return (s_w + torch.arange(n, dtype=work, device=device) * step).to(dtype)


@converter("Range", 11, override=True)
def _range(node, graph):
    return result(OnnxRange(), node)


@converter("Range", schema_versions("Range", [27]))
def _range27(node, graph):
    return result(OnnxRange(node.attributes.get("stash_type", 1)), node)


# --- Einsum ---------------------------------------------------------------------------------------
# Einsum-28 only added bfloat16: onnx2torch's Einsum-12 (torch.einsum) is right for it
converter("Einsum", schema_versions("Einsum", [28]))(builtin("Einsum", 12))


# --- Mod ------------------------------------------------------------------------------------------
def _unsigned_mod64(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a mod b`` for uint64 values held as int64 bits, exact over the whole range."""
    a, b = torch.broadcast_tensors(a, b)
    big = b < 0  # b >= 2**63: a mod b is a, or a - b when a >= b (unsigned)
    a_ge_b = torch.bitwise_xor(a, _INT64_MIN) >= torch.bitwise_xor(b, _INT64_MIN)
    when_big = torch.where(a_ge_b, a - b, a)
    d = torch.where(big, torch.ones_like(b), b)  # b < 2**63 from here on
    low = torch.remainder(a & (2**63 - 1), d)  # a without its top bit
    top = torch.remainder(torch.full_like(d, 2**63 - 1), d) + 1  # 2**63 mod b, up to one b
    top = torch.where(top == d, torch.zeros_like(top), top)
    add = torch.where(a < 0, top, torch.zeros_like(top))
    small = torch.where(low >= d - add, low - (d - add), low + add)  # (low + add) mod b without overflow
    return torch.where(big, when_big, small)


class OnnxMod(nn.Module):
    """ONNX Mod. ``fmod=1``: truncated (C ``fmod``, sign of the dividend). ``fmod=0``: floored (sign of the
    divisor); for floats ``A - floor(A / B) * B`` with Mod-28's special cases (a zero takes the divisor's
    sign; a finite ``A`` and an infinite ``B`` of the other sign give ``B``)."""

    def __init__(self, fmod: bool):
        super().__init__()
        self.fmod = bool(fmod)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if a.dtype.is_floating_point:
            r = torch.fmod(a, b)
            if self.fmod:
                return r
            r = torch.where((r != 0) & ((r < 0) != (b < 0)), r + b, r)
            return torch.where(r == 0, torch.copysign(torch.zeros_like(r), b), r)
        dtype = a.dtype
        a, b = _signed(a), _signed(b)
        if dtype == torch.uint64:  # unsigned: both conventions agree
            return _restore(_unsigned_mod64(a, b), dtype)
        out = torch.fmod(a, b) if self.fmod else torch.remainder(a, b)
        return _restore(out, dtype)

    def extra_repr(self) -> str:
        return f"fmod={int(self.fmod)}"


def _mod(node, graph):
    fmod = node.attributes.get("fmod", 0)
    if fmod not in (0, 1):
        raise unsupported(node, f"fmod={fmod}")
    return result(OnnxMod(fmod), node)


converter("Mod", [10, 13], override=True)(_mod)
converter("Mod", schema_versions("Mod", [28]))(_mod)


# --- BitShift -------------------------------------------------------------------------------------
class OnnxBitShift(nn.Module):
    """ONNX BitShift (Mod-28 rules for every version): right shifts of signed types are arithmetic; a
    shift by a negative amount or by the bit width or more gives the sign fill (-1 for a negative ``X``
    shifted right, else 0); left shifts wrap."""

    def __init__(self, left: bool):
        super().__init__()
        self.left = bool(left)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        if dtype not in _BITS:
            raise TypeError(f"BitShift: {dtype} is not an integer type")
        bits = _BITS[dtype]
        xs, ys = _signed(x), _signed(y).to(torch.int64)
        valid = (ys >= 0) & (ys < bits)
        count = torch.where(valid, ys, torch.zeros_like(ys)).to(xs.dtype)
        if self.left:
            z = torch.bitwise_left_shift(xs, count)
            fill = torch.zeros((), dtype=xs.dtype, device=xs.device)
        else:
            z = torch.bitwise_right_shift(xs, count)
            if dtype == torch.uint64:  # int64 shifts arithmetically: clear the copies of the top bit
                minus_one = torch.full((), -1, dtype=torch.int64, device=xs.device)
                high = torch.bitwise_left_shift(minus_one, torch.where(count > 0, 64 - count, 1))
                z = torch.where(count > 0, z & ~high, z)
            negative = (xs < 0) if dtype not in _UNSIGNED else torch.zeros_like(xs, dtype=torch.bool)
            fill = torch.where(negative, -1, 0).to(xs.dtype)
        return _restore(torch.where(valid, z, fill), dtype)

    def extra_repr(self) -> str:
        return "LEFT" if self.left else "RIGHT"


@converter("BitShift", [11, *schema_versions("BitShift", [28])])
def _bitshift(node, graph):
    direction = node.attributes.get("direction", "")
    direction = direction.decode() if isinstance(direction, bytes) else direction
    if direction not in ("LEFT", "RIGHT"):
        raise unsupported(node, f"direction={direction!r}")
    return result(OnnxBitShift(direction == "LEFT"), node)


# --- BitwiseAnd/Or/Xor/Not ------------------------------------------------------------------------
_BITWISE = {"BitwiseAnd": torch.bitwise_and, "BitwiseOr": torch.bitwise_or, "BitwiseXor": torch.bitwise_xor}


class OnnxBitwise(nn.Module):
    """ONNX BitwiseAnd/Or/Xor (two inputs) and BitwiseNot (one) on every integer type."""

    def __init__(self, op_type: str):
        super().__init__()
        self.op_type = op_type

    def forward(self, a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
        dtype = a.dtype
        if self.op_type == "BitwiseNot":
            return _restore(torch.bitwise_not(_signed(a)), dtype)
        return _restore(_BITWISE[self.op_type](_signed(a), _signed(b)), dtype)

    def extra_repr(self) -> str:
        return self.op_type


@converter("BitwiseAnd", 18)
@converter("BitwiseOr", 18)
@converter("BitwiseXor", 18)
@converter("BitwiseNot", 18)
def _bitwise(node, graph):
    return result(OnnxBitwise(node.operation_type), node)
