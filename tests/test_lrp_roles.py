"""The LRP op-role registry: one registration gives an op LRP support, duplicates are refused, a node with
no role is an error naming it, composites that do not fit a graph say why, and the default composite
follows the graph (attnlrp with attention, epsilon_plus otherwise)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import ROOT, make_model
from onnx import TensorProto, helper, numpy_helper

import onnx_explain as oe
from onnx_explain.lrp import LRPCoverageError, roles


def _cumsum_mlp(tmp_path):
    """x → MatMul(W1) → CumSum → MatMul(W2): bias-free, with a linear op (CumSum) that has no LRP role."""
    import onnx

    rng = np.random.default_rng(0)
    w1, w2 = (numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
              for s, n in (((4, 6), "w1"), ((6, 3), "w2")))  # fmt: skip
    axis = numpy_helper.from_array(np.asarray(1, np.int64), "axis")
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
        helper.make_node("CumSum", ["h", "axis"], ["n"], name="cumulate"),
        helper.make_node("MatMul", ["n", "w2"], ["y"], name="fc2"),
    ]
    model = make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [w1, w2, axis],
    )
    onnx.save(model, tmp_path / "cumsum.onnx")
    return oe.load(tmp_path / "cumsum.onnx")


def test_one_registration_gives_an_op_lrp_support(tmp_path):
    m = _cumsum_mlp(tmp_path)
    x = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    with pytest.raises(
        LRPCoverageError, match=r"node 'cumulate' \(CumSum\) carries relevance and has no LRP rule"
    ):
        oe.explain(m, x, "lrp")
    roles.register_lrp_role("CumSum", roles.PROPORTIONAL)  # linear: its Norm share is LRP-0
    try:
        with pytest.raises(ValueError, match="registered twice"):
            roles.register_lrp_role("CumSum", roles.IDENTITY)
        e = oe.explain(m, x, "lrp", composite_options={"epsilon": 1e-9})
    finally:
        roles.LRP_ROLES.pop("CumSum")
    assert e.extras["rules"]["cumulate"] == "CumSum: norm"
    np.testing.assert_allclose(e.attribution.sum(1), e.score, rtol=1e-4)  # bias-free: conserved
    lrp0 = oe.explain(m, x, "gradient_x_input", target=e.target).attribution  # LRP-0 on a linear net
    np.testing.assert_allclose(e.attribution, lrp0, rtol=1e-4, atol=1e-5 * np.abs(lrp0).max())


def test_the_default_composite_follows_the_graph(tmp_path):
    from test_lrp_transformer import _one_attention_graph

    digits = oe.load(ROOT / "models" / "digits.onnx")
    x = np.load(ROOT / "models" / "samples" / "digits.npy")[:2]
    e = oe.explain(digits, x, "lrp")
    assert e.extras["composite"] == "epsilon_plus"
    np.testing.assert_array_equal(
        e.attribution, oe.explain(digits, x, "lrp", composite="epsilon_plus").attribution
    )
    import onnx

    onnx.save(_one_attention_graph(), tmp_path / "attn.onnx")
    attn = oe.load(tmp_path / "attn.onnx")
    xa = np.random.default_rng(0).standard_normal((2, 3, 12)).astype(np.float32)
    auto = oe.explain(attn, xa, "lrp", composite="auto")
    assert auto.extras["composite"] == "attnlrp"
    # CP-LRP is AttnLRP with the attention probabilities held constant: an override says the same
    cp = oe.explain(attn, xa, "lrp", composite="cp_lrp", target=auto.target)
    stop = oe.explain(attn, xa, "lrp", composite="attnlrp", rules={"Softmax": "stop"}, target=auto.target)
    np.testing.assert_array_equal(cp.attribution, stop.attribution)
    assert cp.extras["rules"]["softmax"] == "Softmax: stop"


def test_a_composite_that_does_not_fit_the_graph_says_why(tmp_path):
    m = _cumsum_mlp(tmp_path)
    x = np.ones((1, 4), np.float32)
    with pytest.raises(oe.OptionError, match="'epsilon_gamma_box' does not fit this model: .* has none"):
        oe.explain(m, x, "lrp", composite="epsilon_gamma_box", low=-1.0, high=1.0, rules={"CumSum": "norm"})
