"""Keras LSTM and GRU models through tf2onnx (shipped fixtures made by
tests/fixtures/make_keras_recurrent.py, with Keras' outputs and TensorFlow's gradients): forward against
onnxruntime and Keras, the input gradient against TensorFlow's GradientTape.

tf2onnx 1.17 rewrites a Keras LSTM into one ONNX ``LSTM`` node, but leaves Keras 3's GRU
(``reset_after=True``) as a ``Loop`` over the cell, with ``ReverseSequence`` for the backward direction."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from conftest import FIXTURES, assert_gradients_match

import onnx_explain as oe

_OPS = {
    "keras_lstm_tagger": {"LSTM"},
    "keras_lstm_classifier": {"LSTM"},
    "keras_gru_tagger": {"Loop"},
    "keras_gru_classifier": {"Loop", "ReverseSequence"},
}


@pytest.mark.parametrize("name", list(_OPS))
def test_keras_recurrent_matches_keras_and_tensorflow_gradient(name):
    ref = np.load(FIXTURES / f"{name}_ref.npz")
    path = FIXTURES / f"{name}.onnx"
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert _OPS[name] <= ops, sorted(ops)  # what tf2onnx wrote is what the test is about
    x = ref["x"]
    m = oe.load(path)
    np.testing.assert_allclose(m.predict(x), ref["y"], rtol=1e-5, atol=1e-6)  # tf2onnx is faithful
    module = m.torch_module(probe=x)  # the parity gate against onnxruntime
    xt = torch.from_numpy(x).requires_grad_(True)
    y = module(xt)
    np.testing.assert_allclose(y.detach().numpy(), m.predict(x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(y.detach().numpy(), ref["y"], rtol=1e-5, atol=1e-6)
    rows = torch.arange(len(x))
    target = torch.from_numpy(ref["target"])
    picked = y[rows, torch.from_numpy(ref["position"]), target] if "position" in ref else y[rows, target]
    picked.sum().backward()
    assert_gradients_match(xt.grad.numpy(), ref["grad"], rel=1e-5, cos=0.99999)


def test_keras_tagger_explains_one_position_through_the_public_api():
    """``explain`` on a tagger's (position, class): equal to TensorFlow's gradient for samples whose
    reference picked that element, and exactly 0 at later steps (the LSTM is causal)."""
    ref = np.load(FIXTURES / "keras_lstm_tagger_ref.npz")
    k = int(np.argmin(ref["position"]))  # the earliest position: the later steps must get 0
    pos, cls = int(ref["position"][k]), int(ref["target"][k])
    assert pos < ref["x"].shape[1] - 1
    m = oe.load(FIXTURES / "keras_lstm_tagger.onnx")
    e = oe.explain(m, ref["x"][k : k + 1], "gradient", target=(pos, cls))
    assert_gradients_match(e.attribution, ref["grad"][k : k + 1], rel=1e-5, cos=0.99999)
    assert np.all(e.attribution[0, pos + 1 :] == 0)
