"""Comparison, logical, bitwise and masking ops, and Conv/ConvTranspose/Gemm/MatMul whose weights are
computed in the graph (onnx_explain/convert/ops/logic.py, functional.py).

One-node graphs built with onnx.helper at every opset version of each op, compared with onnxruntime
exactly (dtype and shape included); where onnxruntime has no kernel (opset 1, opsets above the 26 it
reads, float Mod with fmod=0) with the ONNX reference evaluator or with numpy.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_gradients_match, export, input_gradient, make_model, ort_vs_torch, vinfo
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from torch import nn

import onnx_explain as oe
from onnx_explain.convert import ADDED, OVERRIDDEN, to_fx

NAN, INF = np.nan, np.inf


# ------------------------------------------------------------------------------------------ helpers
def _tensor_type(value: np.ndarray) -> int:
    return helper.np_dtype_to_tensor_dtype(value.dtype)


def one_node(op, inputs: dict, attrs=None, opset=13, initializers=(), outputs=("out",)):
    """A one-node model; ``inputs`` maps names to values (the empty name: an omitted optional input);
    those named in ``initializers`` become initializers, the others graph inputs."""
    names = list(inputs)
    node = helper.make_node(op, names, list(outputs), **(attrs or {}))
    graph_inputs = [
        vinfo(n, list(v.shape), _tensor_type(v)) for n, v in inputs.items() if n and n not in initializers
    ]
    inits = [numpy_helper.from_array(inputs[n], n) for n in initializers]
    return make_model(
        [node],
        graph_inputs,
        [vinfo(o, None, onnx.TensorProto.UNDEFINED) for o in outputs],
        inits,
        opset=opset,
    )


def _feeds(model, inputs: dict) -> dict:
    return {i.name: inputs[i.name] for i in model.graph.input}


def run_ort(model, inputs: dict) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, _feeds(model, inputs))[0]


def ort_or_none(model, inputs: dict) -> np.ndarray | None:
    """onnxruntime's output, or None where it has no kernel for the node's types (any other error raises)."""
    try:
        return run_ort(model, inputs)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        if "NOT_IMPLEMENTED" in str(exc) or "Could not find an implementation" in str(exc):
            return None
        raise


def run_reference(model, inputs: dict) -> np.ndarray:
    return np.asarray(ReferenceEvaluator(model).run(None, _feeds(model, inputs))[0])


def run_torch(model, inputs: dict, grad: bool = False):
    """The converted graph's output (and the module and its torch inputs when ``grad``)."""
    gm = to_fx(copy.deepcopy(model))
    args = [torch.from_numpy(np.ascontiguousarray(inputs[i.name])) for i in model.graph.input]
    if grad:
        return gm, args
    with torch.no_grad():
        return gm(*args).numpy()


def assert_same(got: np.ndarray, want: np.ndarray, exact: bool = True, signed_zeros: bool = False) -> None:
    assert got.dtype == want.dtype, f"dtype {got.dtype}, expected {want.dtype}"
    assert got.shape == want.shape, f"shape {got.shape}, expected {want.shape}"
    if exact:
        np.testing.assert_array_equal(got, want)  # NaN equals NaN here
    else:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    if signed_zeros:
        np.testing.assert_array_equal(np.signbit(got), np.signbit(want))


# ------------------------------------------------------------------------------------ comparisons
F32_EDGE = np.array([[-INF, -1.5, -0.0, 0.0, 2.0, INF, NAN]], np.float32)
F32_OTHER = np.array([[-INF], [0.0], [2.0], [NAN]], np.float32)  # broadcasts against F32_EDGE
COMPARE_VERSIONS = {
    "Equal": [7, 11, 13, 19],
    "Greater": [7, 9, 13],
    "Less": [7, 9, 13],
    "GreaterOrEqual": [12, 16],
    "LessOrEqual": [12, 16],
}


def _compare_operands(dtype):
    if dtype == np.bool_:
        return np.array([[True, False, True]]), np.array([[True], [False]])
    if np.dtype(dtype).kind == "f":
        return F32_EDGE.astype(dtype), F32_OTHER.astype(dtype)
    info = np.iinfo(dtype)
    a = np.array([[info.min, 0, 1, 7, info.max]], dtype)
    b = np.array([[info.min], [1], [info.max]], dtype)
    return a, b


def _compare_dtypes(op, opset):
    dtypes = [np.float32, np.float64, np.int32, np.int64, np.uint8, np.int8, np.uint16, np.uint32, np.uint64]
    if op == "Equal" and opset >= 11:
        dtypes.append(np.bool_)
    if op != "Equal" and opset <= 7:
        dtypes = [np.float32, np.float64]  # the first versions took floats only
    if op == "Equal" and opset == 7:
        dtypes = [np.int32, np.int64, np.bool_]
    return dtypes


COMPARE_CASES = [
    pytest.param(op, v, dt, id=f"{op}-{v}-{np.dtype(dt).name}")
    for op, versions in COMPARE_VERSIONS.items()
    for v in versions
    for dt in _compare_dtypes(op, v)
]


@pytest.mark.parametrize("op,opset,dtype", COMPARE_CASES)
def test_comparison_matches_onnx(op, opset, dtype):
    a, b = _compare_operands(dtype)
    model = one_node(op, {"a": a, "b": b}, opset=opset)
    np_op = {"GreaterOrEqual": np.greater_equal, "LessOrEqual": np.less_equal}.get(op) or getattr(
        np, op.lower()
    )
    want = np_op(a, b)
    got = run_torch(model, {"a": a, "b": b})
    assert_same(got, want)
    assert_same(got, run_reference(model, {"a": a, "b": b}))
    ref = ort_or_none(model, {"a": a, "b": b})
    if ref is not None:
        assert_same(got, ref)
    elif dtype in (np.float32, np.int32, np.int64):
        pytest.fail("onnxruntime has kernels for float32/int32/int64: it should have run")


@pytest.mark.parametrize("op", ["Equal", "Greater", "Less"])
@pytest.mark.parametrize("axis", [None, 1, -2])
def test_comparison_opset1_legacy_broadcast(op, axis):
    dtype = np.int32 if op == "Equal" else np.float32
    a = np.arange(24).reshape(2, 3, 4).astype(dtype) % 5
    attrs = {"broadcast": 1}
    if axis is None:
        b = np.array([1, 2, 3, 4], dtype)  # trailing axes
        want_b = b
    else:
        b = np.array([1, 2, 3], dtype)  # axis 1 of a
        attrs["axis"] = axis
        want_b = b.reshape(1, 3, 1)
    model = one_node(op, {"a": a, "b": b}, attrs, opset=1)
    got = run_torch(model, {"a": a, "b": b})
    assert_same(got, getattr(np, op.lower())(a, want_b))


# ------------------------------------------------------------------------------------ IsNaN, IsInf
@pytest.mark.parametrize("opset", [9, 13, 20])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_isnan(opset, dtype):
    x = np.array([[NAN, -INF, INF, 0.0, -1.0], [1e-8, NAN, 3.0, -0.0, 65000.0]], dtype)
    model = one_node("IsNaN", {"x": x}, opset=opset)
    got = run_torch(model, {"x": x})
    assert_same(got, run_ort(model, {"x": x}))
    assert got.sum() == 2


@pytest.mark.parametrize("opset", [10, 20])
@pytest.mark.parametrize("negative,positive", [(1, 1), (0, 1), (1, 0), (0, 0)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_isinf_detect_flags(opset, negative, positive, dtype):
    x = np.array([[-INF, INF, NAN, 0.0, -3.0, 1e30]], dtype)
    model = one_node(
        "IsInf", {"x": x}, {"detect_negative": negative, "detect_positive": positive}, opset=opset
    )
    got = run_torch(model, {"x": x})
    assert_same(got, run_ort(model, {"x": x}))
    assert got.tolist() == [[bool(negative), bool(positive), False, False, False, False]]


# ------------------------------------------------------------------------------------ Where, Expand
@pytest.mark.parametrize("opset", [9, 16])
@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.int32, np.uint8, np.bool_])
def test_where_broadcasts(opset, dtype):
    rng = np.random.default_rng(0)
    cond = rng.random((2, 1, 4)) > 0.5
    x = (rng.integers(0, 5, (3, 1)) > 2) if dtype == np.bool_ else rng.integers(-5, 5, (3, 1)).astype(dtype)
    y = np.array(True) if dtype == np.bool_ else np.array(7, dtype)
    inputs = {"c": cond, "x": x, "y": y}
    model = one_node("Where", inputs, opset=opset)
    got = run_torch(model, inputs)
    assert got.shape == (2, 3, 4)
    assert_same(got, np.where(cond, x, y))
    ref = ort_or_none(model, inputs)
    assert ref is not None or dtype == np.bool_, "onnxruntime should run this"  # it has no bool Where
    if ref is not None:
        assert_same(got, ref)


def test_where_gradient_reaches_both_branches():
    cond = np.array([[True, False, True]])
    x = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], np.float32)
    y = np.array([[-1.0], [-2.0]], np.float32)
    gm, (c, xt, yt) = run_torch(
        one_node("Where", {"c": cond, "x": x, "y": y}, opset=16), {"c": cond, "x": x, "y": y}, grad=True
    )
    xt.requires_grad_(True)
    yt.requires_grad_(True)
    gm(c, xt, yt).sum().backward()
    assert xt.grad.tolist() == [[1, 0, 1], [1, 0, 1]]
    assert yt.grad.tolist() == [[1], [1]]  # one unselected column per row, summed over the broadcast


EXPAND_CASES = {
    "column-to-3d": (np.arange(3, dtype=np.float32).reshape(3, 1), [2, 1, 4]),
    "shape-smaller-than-input": (np.arange(6, dtype=np.float32).reshape(2, 3), [3, 1, 1]),
    "ones-keep-input-dims": (np.arange(3, dtype=np.int64).reshape(1, 3), [4, 1]),
    "bool": (np.array([[True], [False]]), [2, 3]),
    "scalar": (np.array(2.5, np.float32), [2, 2]),
    "nan-inf": (np.array([[NAN, -INF]], np.float32), [3, 2]),
}


@pytest.mark.parametrize("opset", [8, 13])
@pytest.mark.parametrize("case", list(EXPAND_CASES))
@pytest.mark.parametrize("shape_as", ["initializer", "input"])
def test_expand(opset, case, shape_as):
    x, shape = EXPAND_CASES[case]
    inputs = {"x": x, "s": np.array(shape, np.int64)}
    model = one_node("Expand", inputs, opset=opset, initializers=("s",) if shape_as == "initializer" else ())
    got = run_torch(model, inputs)
    assert_same(got, run_ort(model, inputs))
    assert got.shape == np.broadcast_shapes(x.shape, tuple(shape))


# ------------------------------------------------------------------------------------------ Trilu
@pytest.mark.parametrize("upper", [0, 1])
@pytest.mark.parametrize("k", [None, 0, -1, 2, 9, "input"])
@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.bool_])
def test_trilu(upper, k, dtype):
    x = np.random.default_rng(1).standard_normal((2, 4, 5))
    x = (x > 0) if dtype == np.bool_ else (x * 10).astype(dtype)
    if dtype == np.float32:
        x[0, 0, 4], x[1, 3, 0] = NAN, -INF  # masked-out NaN/inf become 0 as in onnxruntime
    inputs = {"x": x}
    inits: tuple = ()
    if k is not None:
        inputs["k"] = np.array(-2 if k == "input" else k, np.int64)
        inits = () if k == "input" else ("k",)
    model = one_node("Trilu", inputs, {"upper": upper}, opset=14, initializers=inits)
    got = run_torch(model, inputs)
    assert_same(got, run_ort(model, inputs))


# ------------------------------------------------------------------------------------------ Range
RANGE_CASES = {
    "int64": (np.int64, 2, 11, 3),
    "int32": (np.int32, -4, 7, 2),
    "int16": (np.int16, 10, 4, -2),
    "int64-empty": (np.int64, 5, 5, 1),
    "int64-wrong-way": (np.int64, 5, 9, -1),
    "float32": (np.float32, 0.5, 3.0, 0.25),
    "float32-negative": (np.float32, 1.0, -1.0, -0.375),
    "float64": (np.float64, 0.1, 1.0, 0.3),
}


@pytest.mark.parametrize("opset", [11, 27])
@pytest.mark.parametrize("case", list(RANGE_CASES))
def test_range(opset, case):
    dtype, start, limit, delta = RANGE_CASES[case]
    inputs = {
        "start": np.array(start, dtype),
        "limit": np.array(limit, dtype),
        "delta": np.array(delta, dtype),
    }
    model = one_node("Range", inputs, opset=opset)
    got = run_torch(model, inputs)
    assert_same(got, run_reference(model, inputs))  # numpy's arange, bit for bit
    if opset <= 26:  # onnxruntime adds delta repeatedly: the same to the last bit or two
        assert_same(got, run_ort(model, inputs), exact=np.dtype(dtype).kind == "i")


def test_range_float16_at_27_uses_the_stash_type():
    inputs = {
        "start": np.array(0, np.float16),
        "limit": np.array(3000, np.float16),
        "delta": np.array(1.1, np.float16),
    }
    model = one_node("Range", inputs, opset=27)
    got = run_torch(model, inputs)
    assert_same(got, run_reference(model, inputs))  # computed in float32, rounded once to float16


def test_range_of_a_computed_length_feeds_a_mask(tmp_path):
    # the positions pattern of transformer exporters: Range(0, Shape(x)[1], 1) < valid length -> Where
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "one"], ["n"]),
        helper.make_node("Range", ["zero", "n", "one"], ["pos"]),
        helper.make_node("Less", ["pos", "three"], ["keep"]),
        helper.make_node("Where", ["keep", "x", "neg"], ["y"]),
    ]
    inits = [numpy_helper.from_array(np.array(v, dt), n)
             for n, v, dt in [("zero", 0, np.int64), ("one", 1, np.int64), ("three", 3, np.int64), ("neg", -1e4, np.float32)]]  # fmt: skip
    model = make_model(nodes, [vinfo("x", ["N", 5])], [vinfo("y", None)], inits, opset=13)
    x = np.random.default_rng(0).standard_normal((2, 5)).astype(np.float32)
    ref, got, _ = ort_vs_torch(model, x, tmp_path)
    np.testing.assert_array_equal(got, ref)
    assert (got[:, 3:] == -1e4).all()


# ----------------------------------------------------------------------------------------- Einsum
EINSUM_CASES = {
    "matmul": ("ij,jk->ik", [(2, 3), (3, 4)]),
    "batched": ("bij,bjk->bik", [(2, 3, 4), (2, 4, 5)]),
    "spaces": ("ij, jk -> ik", [(2, 3), (3, 4)]),
    "implicit-upper-first": ("iJ,Jk", [(2, 3), (3, 4)]),
    "implicit-order": ("ba,ac", [(2, 3), (3, 4)]),
    "ellipsis-transpose": ("...ij->...ji", [(2, 3, 4)]),
    "diagonal": ("ii->i", [(4, 4)]),
    "trace-implicit": ("ii", [(4, 4)]),
    "dot": ("i,i", [(5,), (5,)]),
    "outer": ("i,j->ij", [(3,), (4,)]),
    "attention-scores": ("bhqd,bhkd->bhqk", [(1, 2, 3, 4), (1, 2, 5, 4)]),
}


@pytest.mark.parametrize("opset", [12, 28])
@pytest.mark.parametrize("case", list(EINSUM_CASES))
@pytest.mark.parametrize("dtype", [np.float32, np.int64])
def test_einsum(opset, case, dtype):
    equation, shapes = EINSUM_CASES[case]
    rng = np.random.default_rng(2)
    inputs = {f"in{k}": (rng.standard_normal(s) * 4).astype(dtype) for k, s in enumerate(shapes)}
    model = one_node("Einsum", inputs, {"equation": equation}, opset=opset)
    got = run_torch(model, inputs)
    want = np.einsum(equation.replace(" ", ""), *inputs.values()).astype(dtype)
    assert_same(got, want, exact=dtype != np.float32)
    if opset <= 26:
        assert_same(got, run_ort(model, inputs), exact=dtype != np.float32)


# -------------------------------------------------------------------------------------------- Mod
def _mod_operands(dtype):
    if np.dtype(dtype).kind == "f":
        a = np.array(
            [5.5, -5.5, 5.5, -5.5, 0.0, -0.0, 0.0, 3.0, -3.0, 3.0, INF, NAN, 2.0, 1e-30, -1e-30], dtype
        )
        b = np.array([2.0, 2.0, -2.0, -2.0, 3.0, 3.0, -3.0, INF, INF, -INF, 2.0, 2.0, NAN, -1.0, 1.0], dtype)
        return a, b
    if np.dtype(dtype).kind == "u":
        info = np.iinfo(dtype)
        return np.array([7, 0, 9, info.max, 200], dtype), np.array([3, 5, 9, 7, 255], dtype)
    info = np.iinfo(dtype)
    a = np.array([7, -7, 7, -7, 0, 6, -6, info.min + 1, info.max], dtype)
    b = np.array([3, 3, -3, -3, -5, 4, 4, 3, -2], dtype)
    return a, b


def _int_fmod(p: int, q: int) -> int:
    r = abs(p) % abs(q)
    return -r if p < 0 else r


MOD_CASES = [
    pytest.param(v, fmod, dt, id=f"Mod-{v}-fmod{fmod}-{np.dtype(dt).name}")
    for v in [10, 13, 28]
    for fmod in [0, 1]
    for dt in [
        np.int32,
        np.int64,
        np.int8,
        np.int16,
        np.uint8,
        np.uint16,
        np.uint32,
        np.uint64,
        np.float32,
        np.float64,
        np.float16,
    ]
    if not (v == 10 and dt == np.float16 and fmod == 0)
]


@pytest.mark.parametrize("opset,fmod,dtype", MOD_CASES)
def test_mod(opset, fmod, dtype):
    a, b = _mod_operands(dtype)
    inputs = {"a": a, "b": b}
    model = one_node("Mod", inputs, {"fmod": fmod}, opset=opset)
    got = run_torch(model, inputs)
    floating = np.dtype(dtype).kind == "f"
    if floating:
        with np.errstate(all="ignore"):
            want = (np.fmod(a, b) if fmod else np.mod(a, b)).astype(dtype)
    else:  # exact python integers (numpy's int64 fmod goes through float64)
        want = np.array(
            [_int_fmod(p, q) if fmod else p % q for p, q in zip(a.tolist(), b.tolist(), strict=True)], dtype
        )
    # numpy is the reference for float fmod=0 (onnxruntime refuses it before Mod-28, which it cannot read)
    assert_same(got, want, signed_zeros=floating and not fmod)
    if opset <= 26 and not (floating and not fmod):
        ref = ort_or_none(model, inputs)
        assert ref is not None or dtype not in (np.int32, np.int64, np.float32), "onnxruntime should run this"
        if ref is not None and fmod and np.dtype(dtype).itemsize == 8 and not floating:
            small = (np.abs(a.astype(float)) < 2**53) & (np.abs(b.astype(float)) < 2**53)
            a, b, got, ref = (
                a[small],
                b[small],
                got[small],
                ref[small],
            )  # onnxruntime's fmod goes through double
        if ref is not None:
            assert_same(got, ref)
    if opset == 28 or (floating and not fmod):
        assert_same(got, run_reference(model, inputs), signed_zeros=floating and not fmod)


def test_mod_sign_follows_the_divisor_for_fmod0():
    a = np.array([7, -7, 7, -7], np.int64)
    b = np.array([3, 3, -3, -3], np.int64)
    got = run_torch(one_node("Mod", {"a": a, "b": b}, opset=13), {"a": a, "b": b})
    assert got.tolist() == [1, 2, -2, -1]
    got = run_torch(one_node("Mod", {"a": a, "b": b}, {"fmod": 1}, opset=13), {"a": a, "b": b})
    assert got.tolist() == [1, -1, 1, -1]


def test_mod_broadcasts_and_has_gradients():
    a = np.array([[5.5, -3.25, 0.75]], np.float32)
    b = np.array([[2.0], [-1.5]], np.float32)
    model = one_node("Mod", {"a": a, "b": b}, {"fmod": 1}, opset=13)
    gm, (at, bt) = run_torch(model, {"a": a, "b": b}, grad=True)
    at.requires_grad_(True)
    out = gm(at, bt)
    assert out.shape == (2, 3)
    np.testing.assert_array_equal(out.detach().numpy(), run_ort(model, {"a": a, "b": b}))
    out.sum().backward()
    assert at.grad.tolist() == [[2.0, 2.0, 2.0]]  # d fmod(a, b) / da = 1, summed over the two rows


# --------------------------------------------------------------------------------------- BitShift
def _shift_operands(dtype):
    info = np.iinfo(dtype)
    bits = np.dtype(dtype).itemsize * 8
    x = np.array([1, 5, info.max, info.max, 3, 12, info.max, 1], dtype)
    y = np.array([0, 1, 1, bits - 1, 2, bits, bits + 3, bits - 1], dtype)
    if info.min < 0:
        x = np.concatenate([x, np.array([-5, -5, -1, info.min, -7, 6], dtype)])
        y = np.concatenate([y, np.array([1, bits, bits - 1, 1, -1, -3], dtype)])
    return x, y


@pytest.mark.parametrize("direction", ["LEFT", "RIGHT"])
@pytest.mark.parametrize("opset,dtype", [(11, dt) for dt in [np.uint8, np.uint16, np.uint32, np.uint64]]
                         + [(28, dt) for dt in [np.uint8, np.uint32, np.uint64, np.int8, np.int16, np.int32, np.int64]])  # fmt: skip
def test_bitshift(direction, opset, dtype):
    x, y = _shift_operands(dtype)
    inputs = {"x": x, "y": y}
    model = one_node("BitShift", inputs, {"direction": direction}, opset=opset)
    got = run_torch(model, inputs)
    assert_same(got, run_reference(model, inputs))  # Mod-28's rules, which define shifts past the width
    valid = y < x.itemsize * 8  # onnxruntime's C++ shifts are undefined beyond the width
    ref = ort_or_none(model, inputs) if opset == 11 else None
    assert ref is not None or opset == 28 or dtype == np.uint16, "onnxruntime should run this"
    if ref is not None:
        np.testing.assert_array_equal(got[valid], ref[valid])


def test_bitshift_right_of_a_negative_is_arithmetic():
    x = np.array([-8, -1, -7, 8], np.int32)
    y = np.array([1, 5, 40, 40], np.int32)
    got = run_torch(
        one_node("BitShift", {"x": x, "y": y}, {"direction": "RIGHT"}, opset=28), {"x": x, "y": y}
    )
    assert got.tolist() == [-4, -1, -1, 0]


def test_bitshift_broadcasts():
    x = np.array([[1], [3]], np.uint8)
    y = np.array([0, 1, 7], np.uint8)
    model = one_node("BitShift", {"x": x, "y": y}, {"direction": "LEFT"}, opset=11)
    assert_same(run_torch(model, {"x": x, "y": y}), run_ort(model, {"x": x, "y": y}))


# -------------------------------------------------------------------------------- bitwise, logical
INT_DTYPES = [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64]


def _int_operands(dtype):
    info = np.iinfo(dtype)
    a = np.array([[0, 1, 6, info.max, info.min, 85]], dtype)
    b = np.array([[3], [info.max], [info.min + 1]], dtype)
    return a, b


@pytest.mark.parametrize("op", ["BitwiseAnd", "BitwiseOr", "BitwiseXor", "BitwiseNot"])
@pytest.mark.parametrize("dtype", INT_DTYPES)
def test_bitwise(op, dtype):
    a, b = _int_operands(dtype)
    inputs = {"a": a} if op == "BitwiseNot" else {"a": a, "b": b}
    model = one_node(op, inputs, opset=18)
    got = run_torch(model, inputs)
    np_op = {"BitwiseAnd": np.bitwise_and, "BitwiseOr": np.bitwise_or, "BitwiseXor": np.bitwise_xor}
    want = np.invert(a) if op == "BitwiseNot" else np_op[op](a, b)
    assert_same(got, want)
    ref = ort_or_none(model, inputs)
    assert ref is not None or dtype not in (np.int32, np.int64), "onnxruntime should run this"
    if ref is not None:
        assert_same(got, ref)


@pytest.mark.parametrize("op", ["And", "Or", "Xor"])
@pytest.mark.parametrize("opset", [1, 7])
def test_logical(op, opset):
    a = np.array([[True, False, True, False]] * 3)
    a[1] = ~a[1]
    b = np.array([True, True, False, False])
    attrs = {"broadcast": 1} if opset == 1 else {}
    model = one_node(op, {"a": a, "b": b}, attrs, opset=opset)
    got = run_torch(model, {"a": a, "b": b})
    assert_same(got, getattr(np, f"logical_{op.lower()}")(a, b))
    if opset == 7:
        assert_same(got, run_ort(model, {"a": a, "b": b}))


def test_logical_opset1_axis():
    a = np.zeros((2, 3, 4), bool)
    a[:, 1] = True
    b = np.array([True, False, True])
    model = one_node("Or", {"a": a, "b": b}, {"broadcast": 1, "axis": 1}, opset=1)
    assert_same(run_torch(model, {"a": a, "b": b}), np.logical_or(a, b.reshape(1, 3, 1)))


def test_not():
    a = np.array([[True, False], [False, False]])
    model = one_node("Not", {"a": a}, opset=1)
    assert_same(run_torch(model, {"a": a}), run_ort(model, {"a": a}))


# ------------------------------------------------------------------------------ registry coverage
LOGIC_FAMILY = ["Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "IsNaN", "IsInf", "Where", "Trilu",
                "Expand", "Range", "Einsum", "Mod", "BitShift", "BitwiseAnd", "BitwiseOr", "BitwiseXor",
                "BitwiseNot", "And", "Or", "Xor", "Not", "CumSum", "Conv", "ConvTranspose", "MatMul"]  # fmt: skip


@pytest.mark.parametrize("op", LOGIC_FAMILY)
def test_every_version_up_to_the_latest_opset_has_a_converter(op):
    from onnx2torch.node_converters.registry import _CONVERTER_REGISTRY, OperationDescription

    latest = onnx.defs.onnx_opset_version()
    versions = set()
    for opset in range(1, latest + 1):
        try:
            versions.add(onnx.defs.get_schema(op, opset, "").since_version)
        except onnx.defs.SchemaError:
            pass
    missing = [v for v in sorted(versions) if OperationDescription("", op, v) not in _CONVERTER_REGISTRY]
    assert not missing, f"{op}: no converter at version(s) {missing}"


def test_fixed_builtins_are_listed_as_overrides():
    for op, versions in {"Greater": [7, 9, 13], "Less": [7, 9, 13], "GreaterOrEqual": [12], "LessOrEqual": [12],
                         "IsInf": [10], "Range": [11], "Mod": [10, 13], "Conv": [1, 11],
                         "ConvTranspose": [1, 11]}.items():  # fmt: skip
        for v in versions:
            assert ("", op, v) in OVERRIDDEN
    for op, v in [("GreaterOrEqual", 16), ("IsNaN", 20), ("Trilu", 14), ("BitShift", 11), ("BitwiseNot", 18)]:
        assert ("", op, v) in ADDED


# ------------------------------------------------------------- Conv/ConvTranspose/Gemm/MatMul weights
def _randn(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _check_linear_gradients(model, inputs: dict, wrt: tuple[str, ...], bilinear: bool = True) -> None:
    """The converted graph's gradients of <v, out> against onnxruntime: for an output linear in each of
    ``wrt`` (the others fixed), <grad, d> equals <v, f(z + d) - f(z)> with f run by onnxruntime."""
    gm, args = run_torch(model, inputs, grad=True)
    names = [i.name for i in model.graph.input]
    for a, n in zip(args, names, strict=True):
        a.requires_grad_(n in wrt)
    out = gm(*args)
    v = torch.from_numpy(_randn(tuple(out.shape), 7))
    (out * v).sum().backward()
    base = run_ort(model, inputs).astype(np.float64)
    for k, name in enumerate(wrt):
        grad = args[names.index(name)].grad
        assert grad is not None and grad.abs().sum() > 0, f"no gradient reaches {name!r}"
        d = _randn(inputs[name].shape, 11 + k)
        moved = run_ort(model, {**inputs, name: inputs[name] + d}).astype(np.float64)
        want = float((v.numpy().astype(np.float64) * (moved - base)).sum())
        got = float((grad.numpy().astype(np.float64) * d).sum())
        assert abs(got - want) <= 1e-4 * max(1.0, abs(want)), f"d/d{name}: {got} vs onnxruntime {want}"


CONV_CASES = {
    "2d-pads": ({"pads": [1, 1, 1, 1]}, (2, 3, 6, 7), (4, 3, 3, 3)),
    "2d-asymmetric-pads": ({"pads": [0, 1, 2, 1]}, (2, 3, 6, 7), (4, 3, 3, 3)),
    "2d-strides-dilations": (
        {"strides": [2, 1], "dilations": [1, 2], "pads": [1, 2, 1, 2]},
        (2, 3, 7, 7),
        (4, 3, 3, 3),
    ),
    "2d-same-upper": ({"auto_pad": "SAME_UPPER", "strides": [2, 2]}, (2, 3, 7, 6), (4, 3, 3, 2)),
    "2d-same-lower": ({"auto_pad": "SAME_LOWER", "strides": [2, 2]}, (2, 3, 7, 6), (4, 3, 3, 2)),
    "2d-valid": ({"auto_pad": "VALID", "strides": [2, 2]}, (2, 3, 7, 6), (4, 3, 3, 2)),
    "2d-groups": ({"group": 3, "pads": [1, 1, 1, 1]}, (2, 6, 5, 5), (6, 2, 3, 3)),
    "2d-depthwise": ({"group": 6}, (2, 6, 5, 5), (6, 1, 3, 3)),
    "1d": ({"pads": [2, 0]}, (2, 3, 9), (4, 3, 3)),
    "3d": ({"pads": [1, 0, 1, 1, 0, 1], "strides": [1, 2, 1]}, (1, 2, 4, 5, 4), (3, 2, 3, 2, 3)),
}


def _needs_functional(op: str, attrs: dict, computed: bool) -> bool:
    """Whether onnx2torch's nn.Conv*d cannot stand for the node (so the functional form runs)."""
    pads = attrs.get("pads", [])
    asymmetric = pads[: len(pads) // 2] != pads[len(pads) // 2 :]
    same = attrs.get("auto_pad", "NOTSET").startswith("SAME")
    transpose_only = op == "ConvTranspose" and (asymmetric or "output_shape" in attrs)
    return computed or same or transpose_only


@pytest.mark.parametrize("opset", [1, 11, 22])
@pytest.mark.parametrize("case", list(CONV_CASES))
@pytest.mark.parametrize("weight,bias", [("input", "none"), ("input", "input"), ("input", "initializer"),
                                         ("initializer", "input"), ("initializer", "initializer")])  # fmt: skip
def test_conv_weight_as_a_graph_value(opset, case, weight, bias):
    attrs, xs, ws = CONV_CASES[case]
    inputs = {"x": _randn(xs, 1), "w": _randn(ws, 2)}
    if bias != "none":
        inputs["b"] = _randn(ws[:1], 3)
    inits = tuple(n for n, kind in (("w", weight), ("b", bias)) if kind == "initializer")
    model = one_node("Conv", inputs, attrs, opset=opset, initializers=inits)
    assert_same(run_torch(model, inputs), run_ort(model, inputs), exact=False)
    wrt = ("x", "w") if weight == "input" else ("x",)
    _check_linear_gradients(model, inputs, wrt)
    kinds = {type(m).__name__ for m in to_fx(copy.deepcopy(model)).modules()}
    if _needs_functional("Conv", attrs, "input" in (weight, bias)):
        assert "OnnxConvFunctional" in kinds
    else:
        assert f"Conv{len(xs) - 2}d" in kinds  # onnx2torch's module: the LRP rules read its parameters


CONV_T_CASES = {
    "2d-stride": ({"strides": [2, 2]}, (2, 3, 4, 5), (3, 2, 3, 3)),
    "2d-pads": ({"strides": [2, 2], "pads": [1, 0, 1, 0]}, (2, 3, 4, 5), (3, 2, 3, 3)),
    "2d-asymmetric-pads": ({"strides": [2, 2], "pads": [1, 0, 0, 1]}, (2, 3, 4, 5), (3, 2, 3, 3)),
    "2d-output-padding": (
        {"strides": [2, 3], "output_padding": [1, 2], "pads": [1, 1, 1, 1]},
        (2, 3, 4, 5),
        (3, 2, 3, 3),
    ),
    "2d-output-shape": ({"strides": [2, 2], "output_shape": [8, 9]}, (2, 3, 4, 5), (3, 2, 3, 3)),
    "2d-same-upper": ({"strides": [2, 3], "auto_pad": "SAME_UPPER"}, (2, 3, 4, 5), (3, 2, 3, 3)),
    "2d-same-lower": ({"strides": [2, 3], "auto_pad": "SAME_LOWER"}, (2, 3, 4, 5), (3, 2, 3, 3)),
    "2d-dilations-groups": (
        {"dilations": [2, 1], "group": 3, "pads": [1, 1, 1, 1]},
        (2, 6, 4, 4),
        (6, 2, 3, 3),
    ),
    "1d": ({"strides": [3]}, (2, 3, 5), (3, 4, 2)),
    "3d": ({"strides": [1, 2, 1], "pads": [0, 1, 0, 0, 1, 0]}, (1, 2, 3, 4, 3), (2, 3, 2, 3, 2)),
}


@pytest.mark.parametrize("opset", [1, 11, 22])
@pytest.mark.parametrize("case", list(CONV_T_CASES))
@pytest.mark.parametrize(
    "weight,bias", [("input", "input"), ("input", "none"), ("initializer", "initializer")]
)
def test_conv_transpose_weight_as_a_graph_value(opset, case, weight, bias):
    attrs, xs, ws = CONV_T_CASES[case]
    group = attrs.get("group", 1)
    inputs = {"x": _randn(xs, 1), "w": _randn(ws, 2)}
    if bias != "none":
        inputs["b"] = _randn((ws[1] * group,), 3)
    inits = tuple(n for n, kind in (("w", weight), ("b", bias)) if kind == "initializer")
    model = one_node("ConvTranspose", inputs, attrs, opset=opset, initializers=inits)
    assert_same(run_torch(model, inputs), run_ort(model, inputs), exact=False)
    _check_linear_gradients(model, inputs, ("x", "w") if weight == "input" else ("x",))
    kinds = {type(m).__name__ for m in to_fx(copy.deepcopy(model)).modules()}
    if _needs_functional("ConvTranspose", attrs, "input" in (weight, bias)):
        assert "OnnxConvTransposeFunctional" in kinds
    else:
        assert f"ConvTranspose{len(xs) - 2}d" in kinds


GEMM_CASES = {
    "plain": ({}, (3, 4), (4, 5), (5,)),
    "transB-alpha-beta": ({"transB": 1, "alpha": 0.5, "beta": -2.0}, (3, 4), (5, 4), (1, 5)),
    "transA-full-C": ({"transA": 1}, (4, 3), (4, 5), (3, 5)),
    "both-transposed-scalar-C": ({"transA": 1, "transB": 1}, (4, 3), (5, 4), ()),
    "no-C": ({"transB": 1}, (3, 4), (5, 4), None),
}


@pytest.mark.parametrize("opset", [9, 11, 13])
@pytest.mark.parametrize("case", list(GEMM_CASES))
def test_gemm_with_a_computed_weight(opset, case):
    attrs, a_shape, b_shape, c_shape = GEMM_CASES[case]
    if c_shape is None and opset < 11:
        pytest.skip("C became optional at Gemm-11")
    inputs = {"a": _randn(a_shape, 1), "b": _randn(b_shape, 2)}
    if c_shape is not None:
        inputs["c"] = _randn(c_shape, 3)
    model = one_node("Gemm", inputs, attrs, opset=opset)
    assert_same(run_torch(model, inputs), run_ort(model, inputs), exact=False)
    _check_linear_gradients(model, inputs, ("a", "b"))


@pytest.mark.parametrize("opset", [1, 9, 13])
@pytest.mark.parametrize(
    "a_shape,b_shape", [((3, 4), (4, 5)), ((2, 3, 4), (4, 5)), ((2, 3, 4), (2, 4, 5)), ((4,), (4, 5))]
)
def test_matmul_with_a_computed_weight(opset, a_shape, b_shape):
    inputs = {"a": _randn(a_shape, 1), "b": _randn(b_shape, 2)}
    model = one_node("MatMul", inputs, opset=opset)
    assert_same(run_torch(model, inputs), run_ort(model, inputs), exact=False)
    _check_linear_gradients(model, inputs, ("a", "b"))


def test_conv_weight_fed_by_fixed_inputs(tmp_path):
    x, w, b = _randn((2, 3, 6, 6), 1), _randn((4, 3, 3, 3), 2), _randn((4,), 3)
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1])
    inputs = [vinfo("x", ["N", 3, 6, 6]), vinfo("w", [4, 3, 3, 3]), vinfo("b", [4])]
    model = make_model([node], inputs, [vinfo("y", None)], opset=17)
    onnx.save(model, str(tmp_path / "m.onnx"))
    m = oe.load(tmp_path / "m.onnx", input="x", fixed_inputs={"w": w, "b": b})
    conv = m.torch_module(probe=x)
    xt = torch.from_numpy(x)
    with torch.no_grad():
        np.testing.assert_allclose(conv(xt).numpy(), m.predict(x), rtol=1e-5, atol=1e-5)
    ref = nn.Conv2d(3, 4, 3, padding=1)
    with torch.no_grad():
        ref.weight.copy_(torch.from_numpy(w))
        ref.bias.copy_(torch.from_numpy(b))
    target = torch.tensor([0, 3])
    assert_gradients_match(input_gradient(_Flat(conv), xt, target), input_gradient(_Flat(ref), xt, target))


def test_conv_weight_computed_from_an_initializer(tmp_path):
    x, w, s = _randn((2, 3, 6, 6), 1), _randn((4, 3, 3, 3), 2), np.abs(_randn((4, 1, 1, 1), 3)) + 0.5
    nodes = [
        helper.make_node("Mul", ["w0", "scale"], ["w"]),
        helper.make_node("Conv", ["x", "w"], ["y"], strides=[2, 2], pads=[0, 0, 1, 1]),
    ]
    inits = [numpy_helper.from_array(w, "w0"), numpy_helper.from_array(s, "scale")]
    model = make_model(nodes, [vinfo("x", ["N", 3, 6, 6])], [vinfo("y", None)], inits, opset=17)
    ref_out, got, m = ort_vs_torch(model, x, tmp_path)
    np.testing.assert_allclose(got, ref_out, rtol=1e-5, atol=1e-5)

    def reference(z):  # asymmetric pads: end-only padding, then a plain strided conv
        return F.conv2d(F.pad(z, [0, 1, 0, 1]), torch.from_numpy(w * s), stride=2)

    xt = torch.from_numpy(x)
    conv = m.torch_module(probe=x)
    target = torch.tensor([1, 2])
    assert_gradients_match(
        input_gradient(_Flat(conv), xt, target), input_gradient(_Flat(reference), xt, target)
    )


class _Flat(nn.Module):
    """``f(x)`` flattened to (batch, features), for ``input_gradient``'s per-sample target."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x).flatten(1)


class WeightStandardisedNet(nn.Module):
    """Weights computed in the forward pass: weight standardisation, NF-Net's ScaledStdConv2d (a batch
    norm over the reshaped weight), a normalised transposed-conv weight, a row-normalised linear layer."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w1 = nn.Parameter(torch.randn(6, 3, 3, 3, generator=g))
        self.g1 = nn.Parameter(torch.rand(6, 1, 1, 1, generator=g) + 0.5)
        self.b1 = nn.Parameter(torch.randn(6, generator=g) * 0.1)
        self.w2 = nn.Parameter(torch.randn(6, 6, 3, 3, generator=g))
        self.g2 = nn.Parameter(torch.rand(6, generator=g) + 0.5)
        self.wt = nn.Parameter(torch.randn(6, 4, 2, 2, generator=g))
        self.lw = nn.Parameter(torch.randn(5, 4, generator=g))
        self.lb = nn.Parameter(torch.randn(5, generator=g))
        self.mw = nn.Parameter(torch.randn(5, 3, generator=g))

    def forward(self, x):
        w = self.w1
        mean = w.mean(dim=(1, 2, 3), keepdim=True)
        var = ((w - mean) ** 2).mean(dim=(1, 2, 3), keepdim=True)
        h = F.relu(F.conv2d(x, (w - mean) / torch.sqrt(var + 1e-5) * self.g1, self.b1, padding=1))
        w2 = F.batch_norm(self.w2.reshape(1, 6, -1), None, None, weight=self.g2 * 0.5, training=True,
                          momentum=0.0, eps=1e-6).reshape_as(self.w2)  # fmt: skip
        h = F.gelu(F.conv2d(h, w2, None, padding=1))
        h = F.conv_transpose2d(h, self.wt / self.wt.norm(), stride=2).mean((2, 3))
        h = F.linear(h, self.lw / self.lw.norm(dim=1, keepdim=True), self.lb)
        return h @ (self.mw * 2.0)


def test_weight_standardised_model_has_the_source_gradient(tmp_path):
    torch.manual_seed(0)
    module = WeightStandardisedNet().eval()
    x = torch.randn(3, 3, 6, 6)
    path = tmp_path / "ws.onnx"
    torch.onnx.export(module, (x,), str(path), dynamo=False, opset_version=17, input_names=["x"],
                      dynamic_axes={"x": {0: "batch"}}, do_constant_folding=False)  # fmt: skip
    proto = onnx.load(str(path))
    inits = {t.name for t in proto.graph.initializer}
    weighted = [n for n in proto.graph.node if n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul")]
    assert sorted(n.op_type for n in weighted) == ["Conv", "Conv", "ConvTranspose", "Gemm", "MatMul"]
    assert not any(n.input[1] in inits for n in weighted), "the exporter folded a weight: nothing is tested"
    m = oe.load(path)
    conv = m.torch_module(probe=x.numpy())
    with torch.no_grad():
        np.testing.assert_allclose(conv(x).numpy(), module(x).numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(m.predict(x.numpy()), module(x).numpy(), rtol=1e-4, atol=1e-5)
    target = torch.tensor([0, 2, 1])
    assert_gradients_match(input_gradient(conv, x, target), input_gradient(module, x, target))


# ----------------------------------------------------------------- backward through a graph twice
class CachedAttentionBias(nn.Module):
    """The attention-bias cache of timm's EfficientFormer, LeViT, EfficientViT, TinyViT: in eval mode the
    indexed bias is computed once and kept on ``self`` -- with its autograd history."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.attention_biases = nn.Parameter(torch.randn(2, 5))
        self.register_buffer("idx", torch.tensor([[0, 1, 2, 3], [4, 3, 2, 1], [0, 0, 1, 1], [2, 2, 3, 3]]))
        self.attention_bias_cache: dict = {}

    def get_attention_biases(self, device):
        if torch.jit.is_tracing() or self.training:
            return self.attention_biases[:, self.idx]
        key = str(device)
        if key not in self.attention_bias_cache:
            self.attention_bias_cache[key] = self.attention_biases[:, self.idx]
        return self.attention_bias_cache[key]

    def forward(self, x):  # (N, 4, 4)
        attn = (self.lin(x) @ x.transpose(1, 2)).unsqueeze(1) + self.get_attention_biases(x.device)
        return attn.softmax(-1).sum(1).flatten(1)


def _tensors_with_history(module: nn.Module) -> list[str]:
    """Tensors with an autograd history kept on any submodule (attributes, buffers, dict/list members)."""
    found = []

    def visit(name, value, depth=0):
        if isinstance(value, torch.Tensor) and value.grad_fn is not None:
            found.append(name)
        elif isinstance(value, dict) and depth < 3:
            for k, v in value.items():
                visit(f"{name}[{k!r}]", v, depth + 1)
        elif isinstance(value, (list, tuple)) and depth < 3:
            for k, v in enumerate(value):
                visit(f"{name}[{k}]", v, depth + 1)

    for mod_name, mod in module.named_modules():
        for attr, value in vars(mod).items():
            visit(f"{mod_name}.{attr}", value)
    return found


def _grad_twice(fn, x: torch.Tensor):
    grads = []
    for _ in range(2):
        z = x.clone().requires_grad_(True)
        fn(z)[:, 0].sum().backward()
        grads.append(z.grad)
    return grads


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_backward_twice_cached_source_module(exporter, tmp_path):
    # "Trying to backward through the graph a second time" (efficientformer, dynamo): the source model's
    # cache, not the conversion. The converted graph keeps no tensor across calls.
    torch.manual_seed(0)
    module = CachedAttentionBias().eval()
    x = torch.randn(2, 4, 4)
    m = oe.load(export(module, x, tmp_path / "cached.onnx", exporter))
    conv = m.torch_module(probe=x.numpy())
    g1, g2 = _grad_twice(conv, x)
    assert torch.equal(g1, g2)
    assert _tensors_with_history(conv) == []
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        _grad_twice(module, x)
    assert _tensors_with_history(module) == ["._parameters['attention_biases']"] or any(
        "attention_bias_cache" in n for n in _tensors_with_history(module)
    )
    # reference gradients with frozen parameters (all an input gradient needs) do not go through the cache
    fresh = CachedAttentionBias().eval()
    fresh.load_state_dict(module.state_dict())
    fresh.requires_grad_(False)
    r1, r2 = _grad_twice(fresh, x)
    assert torch.equal(r1, r2)
    assert_gradients_match(g1.numpy(), r1.numpy())


def test_backward_twice_through_every_new_converter(tmp_path):
    # one graph with the ops of logic.py/functional.py on the gradient path: two backward passes agree
    # and no converted module keeps a tensor with an autograd history
    torch.manual_seed(0)
    module = WeightStandardisedNet().eval()
    x = torch.randn(2, 3, 6, 6)
    path = tmp_path / "ws.onnx"
    torch.onnx.export(module, (x,), str(path), dynamo=False, opset_version=17, input_names=["x"],
                      dynamic_axes={"x": {0: "batch"}}, do_constant_folding=False)  # fmt: skip
    conv = oe.load(path).torch_module(probe=x.numpy())
    g1, g2 = _grad_twice(conv, x)
    assert torch.equal(g1, g2) and g1.abs().sum() > 0
    assert _tensors_with_history(conv) == []

    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "one"], ["n"]),
        helper.make_node("Range", ["zero", "n", "one"], ["pos"]),
        helper.make_node("GreaterOrEqual", ["pos", "two"], ["late"]),
        helper.make_node("IsNaN", ["x"], ["nan"]),
        helper.make_node("Or", ["late", "nan"], ["drop"]),
        helper.make_node("Mod", ["x", "onef"], ["frac"], fmod=1),
        helper.make_node("Where", ["drop", "zerof", "frac"], ["masked"]),
        helper.make_node("Trilu", ["square", "k"], ["tri"], upper=1),
        helper.make_node("Einsum", ["masked", "tri"], ["y"], equation="ni,ij->nj"),
    ]
    inits = [numpy_helper.from_array(np.array(v, dt), n) for n, v, dt in
             [("zero", 0, np.int64), ("one", 1, np.int64), ("two", 2, np.int64), ("k", 0, np.int64),
              ("onef", 1.0, np.float32), ("zerof", 0.0, np.float32)]]  # fmt: skip
    inits.append(numpy_helper.from_array(_randn((4, 4), 5), "square"))
    model = make_model(nodes, [vinfo("x", ["N", 4])], [vinfo("y", None)], inits, opset=18)
    xs = np.array([[0.25, 1.5, -2.75, 3.5], [-0.5, 0.75, 1.25, -1.5]], np.float32)
    ref, got, m = ort_vs_torch(model, xs, tmp_path)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    conv = m.torch_module(probe=xs)
    g1, g2 = _grad_twice(conv, torch.from_numpy(xs))
    assert torch.equal(g1, g2)
    assert (g1[:, 2:] == 0).all() and (g1[:, :2] != 0).any()  # masked positions get no gradient
    assert _tensors_with_history(conv) == []
