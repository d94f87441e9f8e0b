"""Pad (every version and mode, any rank) and MaxPool/AveragePool with auto_pad SAME_UPPER/SAME_LOWER, as
keras2onnx, tf2onnx and paddle2onnx write them: one-node graphs, torch against onnxruntime, and gradients
against finite differences of onnxruntime. Also a LinearClassifier read as onnxruntime reads a real file
whose coefficients do not match its declared features."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_model, ort_vs_torch, vinfo
from onnx import helper, numpy_helper

_POOL_CASES = [
    (op, ap, k, s, n)
    for op in ("MaxPool", "AveragePool")
    for ap in ("SAME_UPPER", "SAME_LOWER")
    for k, s in ((3, 1), (3, 2), (2, 2), (4, 3))
    for n in (7, 8)
]


@pytest.mark.parametrize("op, auto_pad, k, s, n", _POOL_CASES, ids=lambda v: str(v))
def test_pool_same(op, auto_pad, k, s, n, tmp_path):
    node = helper.make_node(op, ["x"], ["y"], auto_pad=auto_pad, kernel_shape=[k, k + 1], strides=[s, s])
    model = make_model([node], [vinfo("x", ["N", 2, "H", "W"])], [vinfo("y", None)], opset=17)
    x = np.random.default_rng(0).standard_normal((2, 2, n, n + 2)).astype(np.float32)
    ref, got, _ = ort_vs_torch(model, x, tmp_path)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("rank", [1, 3])
def test_pool_same_other_ranks_and_count_include_pad(rank, tmp_path):
    shape = [2, 3] + [6, 7, 5][:rank]
    node = helper.make_node("AveragePool", ["x"], ["y"], auto_pad="SAME_UPPER", kernel_shape=[3] * rank,
                            strides=[2] * rank, count_include_pad=1)  # fmt: skip
    model = make_model([node], [vinfo("x", ["N", 3] + [None] * rank)], [vinfo("y", None)], opset=17)
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    ref, got, _ = ort_vs_torch(model, x, tmp_path)
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)


def test_maxpool_22_and_averagepool_19(tmp_path):
    nodes = [helper.make_node("MaxPool", ["x"], ["m"], auto_pad="SAME_LOWER", kernel_shape=[3, 3], strides=[2, 2]),
             helper.make_node("AveragePool", ["m"], ["y"], kernel_shape=[2, 2], pads=[1, 1, 0, 0])]  # fmt: skip
    model = make_model(nodes, [vinfo("x", ["N", 1, 9, 9])], [vinfo("y", None)], opset=22)
    x = np.random.default_rng(2).standard_normal((2, 1, 9, 9)).astype(np.float32)
    ref, got, _ = ort_vs_torch(model, x, tmp_path)
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)


_PAD_CASES = [
    (mode, shape, pads, opset)
    for mode in ("reflect", "edge", "constant", "wrap")
    for shape, pads in (
        ((2, 6), [0, 2, 0, 3]),  # a 2-D tensor padded on its last axis
        ((2, 5, 6), [0, 2, 1, 0, 3, 2]),  # 3-D: both non-batch axes (tf2onnx sequence models)
        ((2, 3, 5, 6), [0, 1, 2, 1, 0, 2, 1, 3]),  # the channel axis too
        ((2, 5, 6), [0, -1, 2, 0, 2, -2]),  # negative pads crop
    )
    for opset in (13, 19)
    if not (mode == "wrap" and opset < 19)
]


@pytest.mark.parametrize("mode, shape, pads, opset", _PAD_CASES, ids=lambda v: str(v))
def test_pad_modes_any_rank(mode, shape, pads, opset, tmp_path):
    p = numpy_helper.from_array(np.array(pads, np.int64), "pads")
    node = helper.make_node("Pad", ["x", "pads"], ["y"], mode=mode)
    model = make_model([node], [vinfo("x", ["N", *shape[1:]])], [vinfo("y", None)], [p], opset=opset)
    x = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    ref, got, _ = ort_vs_torch(model, x, tmp_path)
    np.testing.assert_allclose(got, ref, rtol=0, atol=0)


def test_pad_2_attribute_and_18_axes_and_computed_pads(tmp_path):
    x = np.random.default_rng(4).standard_normal((2, 4, 5)).astype(np.float32)
    node = helper.make_node("Pad", ["x"], ["y"], mode="reflect", pads=[0, 2, 1, 0, 1, 3])
    model = make_model([node], [vinfo("x", ["N", 4, 5])], [vinfo("y", None)], opset=10)
    ref, got, _ = ort_vs_torch(model, x, tmp_path)
    np.testing.assert_array_equal(got, ref)

    pads = numpy_helper.from_array(np.array([2, 1, 1, 3], np.int64), "pads")
    axes = numpy_helper.from_array(np.array([-1, 1], np.int64), "axes")
    node = helper.make_node("Pad", ["x", "pads", "", "axes"], ["y"], mode="edge")
    model = make_model([node], [vinfo("x", ["N", 4, 5])], [vinfo("y", None)], [pads, axes], opset=18)
    ref, got, _ = ort_vs_torch(model, x, tmp_path)
    np.testing.assert_array_equal(got, ref)

    # pads computed from the input's shape, as paddle2onnx writes them
    nodes = [helper.make_node("Shape", ["x"], ["s"], start=2),
             helper.make_node("Sub", ["s", "one"], ["k"]),
             helper.make_node("Concat", ["zeros", "k", "zeros", "k"], ["pads"], axis=0),
             helper.make_node("Pad", ["x", "pads"], ["y"], mode="reflect")]  # fmt: skip
    inits = [numpy_helper.from_array(np.array([1], np.int64), "one"),
             numpy_helper.from_array(np.array([0, 0], np.int64), "zeros")]  # fmt: skip
    model = make_model(nodes, [vinfo("x", ["N", 4, "T"])], [vinfo("y", None)], inits, opset=15)
    ref, got, _ = ort_vs_torch(model, x, tmp_path)
    np.testing.assert_array_equal(got, ref)


def test_reflect_pad_and_same_pool_gradients_match_onnxruntime_differences(tmp_path):
    p = numpy_helper.from_array(np.array([0, 0, 2, 1, 0, 0, 1, 2], np.int64), "pads")
    nodes = [helper.make_node("Pad", ["x", "pads"], ["p"], mode="reflect"),
             helper.make_node("AveragePool", ["p"], ["a"], auto_pad="SAME_UPPER", kernel_shape=[3, 3], strides=[2, 2]),
             helper.make_node("ReduceSum", ["a", "axes"], ["y"], keepdims=0)]  # fmt: skip
    axes = numpy_helper.from_array(np.array([1, 2, 3], np.int64), "axes")
    model = make_model(nodes, [vinfo("x", ["N", 1, 5, 6])], [vinfo("y", ["N"])], [p, axes], opset=17)
    x = np.random.default_rng(5).standard_normal((1, 1, 5, 6)).astype(np.float64).astype(np.float32)
    _, _, m = ort_vs_torch(model, x, tmp_path)
    module = m.torch_module()
    xt = torch.from_numpy(x).requires_grad_(True)
    module(xt).sum().backward()
    eps = 1e-2
    fd = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        hi, lo = x.copy(), x.copy()
        hi[i] += eps
        lo[i] -= eps
        fd[i] = (m.predict(hi)[0] - m.predict(lo)[0]) / (2 * eps)
    np.testing.assert_allclose(xt.grad.numpy(), fd, rtol=1e-3, atol=1e-3)


def test_linear_classifier_with_more_coefficients_than_features_reads_them_as_onnxruntime(tmp_path):
    # onnxruntime's own datasets/logreg_iris.onnx: a [3, 2] input and 4 coefficients per class
    coefs = np.random.default_rng(6).standard_normal(12).astype(np.float32)
    node = helper.make_node("LinearClassifier", ["x"], ["label", "scores"], domain="ai.onnx.ml",
                            coefficients=coefs.tolist(), intercepts=[0.1, -0.2, 0.3], classlabels_ints=[0, 1, 2],
                            post_transform="LOGISTIC")  # fmt: skip
    model = make_model([node], [vinfo("x", [3, 2])], [vinfo("label", [3], 7), vinfo("scores", [3, 3])],
                       opset=17, extra_opsets={"ai.onnx.ml": 1})  # fmt: skip
    x = np.random.default_rng(7).uniform(0, 5, (3, 2)).astype(np.float32)
    ref, got, _ = ort_vs_torch(model, x, tmp_path, output="scores")
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("pad", ["SAME_UPPER", "SAME_LOWER", "asymmetric"])
def test_lrp_through_a_conv_with_same_or_asymmetric_padding(pad, tmp_path):
    # PaddleOCR v5/v6 and tf2onnx write even kernels with auto_pad SAME_UPPER: LRP needs the layer rule there
    import onnx_explain as oe

    rng = np.random.default_rng(8)
    w = numpy_helper.from_array(rng.standard_normal((4, 2, 2, 2)).astype(np.float32), "w")
    g = numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "g")
    attrs = {"pads": [1, 0, 0, 1]} if pad == "asymmetric" else {"auto_pad": pad}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[2, 2], **attrs),
             helper.make_node("Relu", ["c"], ["r"]), helper.make_node("GlobalAveragePool", ["r"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]), helper.make_node("Gemm", ["f", "g"], ["y"])]  # fmt: skip
    model = make_model(nodes, [vinfo("x", ["N", 2, 5, 7])], [vinfo("y", ["N", 3])], [w, g], opset=17)
    x = rng.standard_normal((2, 2, 5, 7)).astype(np.float32)
    _, _, m = ort_vs_torch(model, x, tmp_path)
    lrp0 = oe.explain(m, x, "lrp", rules={"Conv": "epsilon0", "Gemm": "epsilon0"})
    gxi = oe.explain(m, x, "gradient_x_input").attribution
    np.testing.assert_allclose(lrp0.attribution, gxi, rtol=1e-4, atol=1e-5 * np.abs(gxi).max())
    assert "Conv: epsilon" in lrp0.extras["rules"].values()
