"""CastLike, Size, NonZero-9 and Gemm-7: one-node graphs against onnxruntime, every version."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import make_model, vinfo
from onnx import TensorProto, helper, numpy_helper

from onnx_explain.convert import to_fx


def _both(model: onnx.ModelProto, x: np.ndarray):
    """(onnxruntime's outputs, the converted graph's outputs) for input ``x``."""
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x}
    )
    with torch.no_grad():
        got = to_fx(onnx.shape_inference.infer_shapes(model))(torch.from_numpy(x))
    got = got if isinstance(got, (tuple, list)) else [got]
    return ref, [g.numpy() for g in got]


@pytest.mark.parametrize("opset", [15, 19, 21])
@pytest.mark.parametrize(
    "src,like", [(np.float32, np.float64), (np.float64, np.float32), (np.float32, np.int64), (np.int64, np.float32)],
    ids=["f32-f64", "f64-f32", "f32-i64", "i64-f32"],
)  # fmt: skip
def test_castlike(opset, src, like):
    onnx_t = {np.float32: TensorProto.FLOAT, np.float64: TensorProto.DOUBLE, np.int64: TensorProto.INT64}
    init = numpy_helper.from_array(np.zeros(1, like), "like")
    model = make_model([helper.make_node("CastLike", ["x", "like"], ["y"])], [vinfo("x", ["N", 4], onnx_t[src])],
                       [vinfo("y", ["N", 4], onnx_t[like])], [init], opset=opset)  # fmt: skip
    x = (np.arange(-4, 8).reshape(3, 4) * 1.75).astype(src)
    (ref,), (got,) = _both(model, x)
    assert got.dtype == ref.dtype == np.dtype(like)
    np.testing.assert_array_equal(got, ref)


def test_castlike_is_differentiable_between_floats():
    init = numpy_helper.from_array(np.zeros(1, np.float64), "like")
    model = make_model([helper.make_node("CastLike", ["x", "like"], ["c"]), helper.make_node("Mul", ["c", "c"], ["y"])],
                       [vinfo("x", ["N", 3])], [vinfo("y", ["N", 3], TensorProto.DOUBLE)], [init], opset=19)  # fmt: skip
    gm = to_fx(onnx.shape_inference.infer_shapes(model))
    x = torch.tensor([[1.0, -2.0, 3.0]], requires_grad=True)
    gm(x).sum().backward()
    torch.testing.assert_close(x.grad, 2 * x.detach())


@pytest.mark.parametrize("opset", [1, 13, 19, 21])
@pytest.mark.parametrize("n", [1, 5])
def test_size_counts_the_elements(opset, n):
    nodes = [helper.make_node("Size", ["x"], ["s"])]
    model = make_model(nodes, [vinfo("x", ["N", 3, 2])], [vinfo("s", [], TensorProto.INT64)], opset=opset)
    x = np.zeros((n, 3, 2), np.float32)
    (ref,), (got,) = _both(model, x)
    assert got.dtype == np.int64 and got.shape == ref.shape == ()
    assert int(got) == int(ref) == n * 6


@pytest.mark.parametrize("opset", [9, 13])
def test_nonzero(opset):
    model = make_model([helper.make_node("NonZero", ["x"], ["i"])], [vinfo("x", ["N", 4])],
                       [vinfo("i", [2, "K"], TensorProto.INT64)], opset=opset)  # fmt: skip
    x = np.array([[0, 1.5, 0, -2], [3, 0, 0, 0]], np.float32)
    (ref,), (got,) = _both(model, x)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_array_equal(got, np.stack(np.nonzero(x)))


@pytest.mark.parametrize("opset", [7, 9])
@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm7_equals_onnxruntime(opset, trans_b):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 4) if trans_b else (4, 3)).astype(np.float32)
    b = rng.standard_normal(3).astype(np.float32)
    node = helper.make_node("Gemm", ["x", "w", "b"], ["y"], alpha=0.5, beta=2.0, transB=trans_b)
    model = make_model([node], [vinfo("x", [2, 4])], [vinfo("y", [2, 3])],
                       [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")], opset=opset)  # fmt: skip
    model.ir_version = 8
    x = rng.standard_normal((2, 4)).astype(np.float32)
    (ref,), (got,) = _both(model, x)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got, 0.5 * x @ (w.T if trans_b else w) + 2.0 * b, rtol=1e-5, atol=1e-6)
