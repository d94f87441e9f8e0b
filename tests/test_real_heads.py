"""Patterns of real exports (jax2tf's Magika): a softmax written out as exp(x − max(−inf, max x)) / Σ exp(…)
is stripped like a Softmax node, and a norm's 1/σ written as Reciprocal(Sqrt(var + ε)) is held constant
as the σ of a decomposed LayerNorm is."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_explain as oe

F, C = 6, 4


def _graph(nodes, inits, out="probs"):
    g = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, F])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, [None, C])],
        initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()],
    )  # fmt: skip
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _weights():
    rng = np.random.default_rng(0)
    return {"W": rng.normal(size=(F, C)).astype(np.float32), "b": rng.normal(size=C).astype(np.float32)}


def test_decomposed_softmax_is_stripped_like_a_softmax_node(tmp_path):
    inits = {**_weights(), "ninf": np.array(-np.inf, np.float32), "ax": np.array([1], np.int64),
             "shape": np.array([-1, 1], np.int64)}  # fmt: skip
    head = [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["logits"])]
    written = _graph(head + [
        helper.make_node("ReduceMax", ["logits"], ["mx"], axes=[1], keepdims=0),
        helper.make_node("Max", ["ninf", "mx"], ["mx2"]),
        helper.make_node("Reshape", ["mx2", "shape"], ["mx3"]),
        helper.make_node("Sub", ["logits", "mx3"], ["shifted"]),
        helper.make_node("Exp", ["shifted"], ["e"]),
        helper.make_node("ReduceSum", ["e", "ax"], ["s"], keepdims=1),
        helper.make_node("Div", ["e", "s"], ["probs"]),
    ], inits)  # fmt: skip
    node = _graph(head + [helper.make_node("Softmax", ["logits"], ["probs"], axis=1)], inits)
    onnx.save(written, tmp_path / "written.onnx")
    onnx.save(node, tmp_path / "node.onnx")
    a, b = oe.load(tmp_path / "written.onnx"), oe.load(tmp_path / "node.onnx")
    assert a.space_name("logit") == "logits" == b.space_name("logit")
    x = np.random.default_rng(1).normal(size=(5, F)).astype(np.float32)
    np.testing.assert_allclose(a.predict(x), b.predict(x), rtol=1e-6)
    ga, gb = oe.explain(a, x, "gradient"), oe.explain(b, x, "gradient")
    np.testing.assert_allclose(ga.attribution, gb.attribution, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        ga.attribution, _weights()["W"][:, ga.target].T, rtol=1e-5
    )  # ∂logit_c/∂x = W[:, c]


@pytest.mark.parametrize("composite", ["epsilon_plus", "attnlrp"])
def test_reciprocal_of_sqrt_is_a_norm_scale(composite, tmp_path):
    """LRP through x·Reciprocal(Sqrt(var + ε)) equals LRP through x / Sqrt(var + ε), the decomposed LayerNorm
    onnx-explain already holds constant."""
    eps = {"eps": np.array(1e-5, np.float32)}
    stats = [
        helper.make_node("ReduceMean", ["x"], ["mu"], axes=[1], keepdims=1),
        helper.make_node("Sub", ["x", "mu"], ["d"]),
        helper.make_node("Mul", ["d", "d"], ["sq"]),
        helper.make_node("ReduceMean", ["sq"], ["var"], axes=[1], keepdims=1),
        helper.make_node("Add", ["var", "eps"], ["ve"]),
        helper.make_node("Sqrt", ["ve"], ["sd"]),
    ]
    tail = [helper.make_node("MatMul", ["n", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["probs"])]
    inits = {**_weights(), **eps}
    recip = _graph(stats + [helper.make_node("Reciprocal", ["sd"], ["r"]), helper.make_node("Mul", ["d", "r"], ["n"])]
                   + tail, inits)  # fmt: skip
    div = _graph(stats + [helper.make_node("Div", ["d", "sd"], ["n"])] + tail, inits)
    onnx.save(recip, tmp_path / "recip.onnx")
    onnx.save(div, tmp_path / "div.onnx")
    x = np.random.default_rng(2).normal(size=(5, F)).astype(np.float32)
    a = oe.explain(oe.load(tmp_path / "recip.onnx"), x, "lrp", composite=composite)
    b = oe.explain(oe.load(tmp_path / "div.onnx"), x, "lrp", composite=composite)
    np.testing.assert_allclose(a.attribution, b.attribution, rtol=1e-5, atol=1e-6)
    assert np.abs(a.attribution).sum() > 0
