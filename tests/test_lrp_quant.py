"""LRP on quantized graphs: ``DequantizeLinear`` of constant weights → MatMul/Gemm/Conv is the dequantized
linear layer, and a Q → DQ pair on an activation is the identity for relevance (straight-through: 0 where the
quantizer clips); ``quantize_dynamic``'s MatMulInteger/ConvInteger of constant weights (with its scales and
bias) is the dequantized layer after a dequantized input. Exact on a hand-written QDQ graph against its dequantized float twin; close
(cos ≥ 0.9) on ``quantize_static`` and ``quantize_dynamic`` twins of a small CNN and a tiny transformer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import export, make_model
from onnx import TensorProto, helper, numpy_helper

import onnx_explain as oe

S_X = 0.05  # the input's quantization step


def _qdq_mlp(tmp_path, quantized: bool):
    """x (B, 4) → [Q → DQ] → MatMul(W1) + b1 → Relu → Gemm(W2, b2): weights int8 (dequantized in the graph)
    when ``quantized``, else their dequantized float values."""
    rng = np.random.default_rng(0)
    w1_q = rng.integers(-100, 100, (4, 6)).astype(np.int8)
    w2_q = rng.integers(-100, 100, (3, 6)).astype(np.int8)
    s1, s2 = np.float32(0.01), np.array([0.02, 0.01, 0.03], np.float32)  # per-tensor, per-channel (axis 0)
    b1 = rng.uniform(-0.2, 0.2, 6).astype(np.float32)
    b2 = rng.uniform(-0.2, 0.2, 3).astype(np.float32)
    t = numpy_helper.from_array
    if quantized:
        inits = [t(w1_q, "w1_q"), t(s1, "s1"), t(w2_q, "w2_q"), t(s2, "s2"), t(np.float32(S_X), "sx"),
                 t(np.int8(0), "zx"), t(np.int8(0), "zw"), t(np.zeros(3, np.int8), "zw2")]  # fmt: skip
        nodes = [
            helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"], name="x_q"),
            helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"], name="x_dq"),
            helper.make_node("DequantizeLinear", ["w1_q", "s1", "zw"], ["w1"], name="w1_dq"),
            helper.make_node("DequantizeLinear", ["w2_q", "s2", "zw2"], ["w2"], name="w2_dq", axis=0),
        ]
        first = "xd"
    else:
        inits = [t(w1_q.astype(np.float32) * s1, "w1"), t(w2_q.astype(np.float32) * s2[:, None], "w2")]
        nodes, first = [], "x"
    inits += [t(b1, "b1"), t(b2, "b2")]
    nodes += [
        helper.make_node("MatMul", [first, "w1"], ["h"], name="fc1"),
        helper.make_node("Add", ["h", "b1"], ["hb"], name="fc1_bias"),
        helper.make_node("Relu", ["hb"], ["r"]),
        helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], name="fc2", transB=1),
    ]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 4])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 3])], inits, opset=13)  # fmt: skip
    path = tmp_path / ("q.onnx" if quantized else "f.onnx")
    import onnx

    onnx.save(model, path)
    return oe.load(path)


def test_dequantized_weights_are_the_linear_layer_and_qdq_is_straight_through(tmp_path):
    q, f = _qdq_mlp(tmp_path, True), _qdq_mlp(tmp_path, False)
    # inputs on the quantization grid (Q → DQ is then exactly the identity), one sample with an element
    # beyond int8's range: the quantizer clips it, and it gets no relevance
    x = np.random.default_rng(1).integers(-60, 60, (3, 4)).astype(np.float32) * np.float32(S_X)
    x[2, 1] = 200 * S_X
    for composite in ("epsilon_plus_flat", "epsilon_alpha2_beta1"):
        eq = oe.explain(q, x, "lrp", composite=composite, target=1)
        ef = oe.explain(f, x[:2], "lrp", composite=composite, target=1)
        # the folded MatMul is a layer with the composite's rule, not a product by a constant (norm)
        assert eq.extras["rules"]["fc1"] == ef.extras["rules"]["fc1"] != "MatMul: norm"
        assert eq.extras["rules"]["fc2"] == ef.extras["rules"]["fc2"]
        assert eq.extras["rules"]["x_q"] == "QuantizeLinear: gradient"
        np.testing.assert_allclose(eq.attribution[:2], ef.attribution, rtol=1e-5, atol=1e-7)
        assert eq.attribution[2, 1] == 0.0 and np.abs(eq.attribution[2]).max() > 0


def _calibrate(x, draw):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        """The explained batch and a few draws like it: the ranges cover what is explained."""

        def __init__(self):
            g = np.random.default_rng(1)
            self.batches = iter([{"x": x}] + [{"x": draw(g)} for _ in range(8)])

        def get_next(self):
            return next(self.batches, None)

    return Reader()


def _quantize(kind, src, dst, reader, op_types=None):
    """``quantize_static`` (QDQ, u8 activations, s8 weights; ``kind`` 'qdq' or 'qdq-per-channel') or
    ``quantize_dynamic`` ('dynamic': DynamicQuantizeLinear → MatMulInteger/ConvInteger → scales)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    if kind == "dynamic":
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, reduce_range=True)
        return dst
    per_channel = kind == "qdq-per-channel"

    quantize_static(str(src), str(dst), reader, quant_format=QuantFormat.QDQ, per_channel=per_channel,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, reduce_range=True,
                    op_types_to_quantize=op_types)  # fmt: skip
    return dst


def _cosine(a, b):
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _layer_rules(e):
    """The rules of the linear layers in graph order (quantized: their integer or QDQ form)."""
    ops = ("Conv", "ConvInteger", "Gemm", "MatMulInteger")
    return [v.split(": ")[1] for v in e.extras["rules"].values() if v.split(": ")[0] in ops]


class _CNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.fc = torch.nn.Linear(8 * 8 * 8, 5)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        return self.fc(x.flatten(1))


@pytest.mark.parametrize("kind", ["qdq", "qdq-per-channel", "dynamic"])
def test_quantized_cnn_gets_the_lrp_of_its_float_twin(kind, tmp_path):
    pytest.importorskip("onnxruntime.quantization")
    x = np.random.default_rng(7).standard_normal((3, 3, 16, 16)).astype(np.float32)
    src = export(_CNN(), torch.from_numpy(x), tmp_path / "cnn.onnx", "legacy")
    reader = _calibrate(x, lambda g: g.standard_normal((4, 3, 16, 16)).astype(np.float32))
    qpath = _quantize(kind, src, tmp_path / "q.onnx", reader)
    f, q = oe.load(src), oe.load(qpath)
    for composite in ("epsilon_plus", "epsilon_alpha2_beta1"):
        ef = oe.explain(f, x, "lrp", composite=composite)
        eq = oe.explain(q, x, "lrp", composite=composite, target=ef.target)
        assert not eq.extras["fallback_nodes"]
        # every layer is a dequantized layer with the float layer's rule (z+ or α2β1, then ε)
        assert _layer_rules(eq) == _layer_rules(ef) and len(_layer_rules(ef)) == 3
        # measured 0.9997 (QDQ, z+ and α2β1, per tensor and per channel), 0.9998 (dynamic)
        assert _cosine(eq.attribution, ef.attribution) >= 0.9


@pytest.mark.parametrize("kind", ["qdq", "dynamic"])
def test_quantized_transformer_gets_the_attnlrp_of_its_float_twin(kind, tmp_path):
    pytest.importorskip("onnxruntime.quantization")
    from test_lrp_transformer import _encoder

    x = torch.randn(3, 5, 6, generator=torch.Generator().manual_seed(1)).numpy()
    src = export(_encoder(), torch.from_numpy(x), tmp_path / "enc.onnx", "legacy")
    reader = _calibrate(x, lambda g: g.standard_normal((4, 5, 6)).astype(np.float32))
    # MatMul and Gemm quantized: onnxruntime's kernels for quantized Softmax/LayerNorm/Add round otherwise
    # than the QDQ graph says, beyond the conversion's parity gate
    qpath = _quantize(kind, src, tmp_path / "q.onnx", reader, op_types=["MatMul", "Gemm"])
    f, q = oe.load(src), oe.load(qpath)
    ef = oe.explain(f, x, "lrp")
    eq = oe.explain(q, x, "lrp", target=ef.target)
    assert eq.extras["composite"] == "attnlrp" and not eq.extras["fallback_nodes"]
    rules = list(eq.extras["rules"].values())
    layers = ("MatMul: epsilon", "Gemm: epsilon", "MatMulInteger: epsilon")
    assert sum(rules.count(r) for r in layers) == 10  # every projection is a dequantized layer
    assert rules.count("MatMul: bilinear") == 4  # Q·Kᵀ and P·V of both blocks stay products
    quantizer = {"qdq": "QuantizeLinear", "dynamic": "DynamicQuantizeLinear"}[kind]
    assert f"{quantizer}: gradient" in rules  # straight through
    assert _cosine(eq.attribution, ef.attribution) >= 0.9  # measured 0.98 (QDQ), 0.998 (dynamic)


class _BiLSTM(torch.nn.Module):
    """A BiLSTM tagger's core (text2tashkeel's shape): LSTM over the sequence, a linear head on the last step."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lstm = torch.nn.LSTM(8, 16, batch_first=True, bidirectional=True)
        self.fc = torch.nn.Linear(32, 5)

    def forward(self, x):
        h, _ = self.lstm(x)
        return self.fc(h[:, -1])


def test_dynamic_quantized_bilstm_gets_the_lrp_of_its_float_twin(tmp_path):
    """quantize_dynamic's DynamicQuantizeLSTM gets the LSTM's signal-take-all rule, and its quantized
    activations route relevance straight through. The input mostly rounds to 0 (a few large values set the
    dynamic scale): a quantizer's output is then 0 where its input is not, so the single-backward form's
    x ⊙ g would create relevance there from nothing; the rule graph runs instead, and the relevance stays
    that of the float twin (in total and in place)."""
    pytest.importorskip("onnxruntime.quantization")
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((2, 7, 8)) * 1e-2).astype(np.float32)
    x[:, 0, 0] = 4.0  # one large value per sequence: the dynamic scale ≈ 8/255, most values round to 0
    src = export(_BiLSTM(), torch.from_numpy(x), tmp_path / "lstm.onnx", "legacy")
    qpath = _quantize("dynamic", src, tmp_path / "q.onnx", None)
    f, q = oe.load(src), oe.load(qpath)
    ef = oe.explain(f, x, "lrp", composite="epsilon_plus")
    eq = oe.explain(q, x, "lrp", composite="epsilon_plus", target=ef.target)
    rules = set(eq.extras["rules"].values())
    assert "DynamicQuantizeLSTM: signal_take_all" in rules and "DynamicQuantizeLinear: gradient" in rules
    assert eq.extras["mode"] == "rules" and ef.extras["mode"] == "single"
    total_f = ef.attribution.reshape(2, -1).sum(1)
    total_q = eq.attribution.reshape(2, -1).sum(1)
    np.testing.assert_allclose(total_q, total_f, rtol=0.05, atol=0.05 * np.abs(total_f).max())
    assert _cosine(eq.attribution, ef.attribution) >= 0.99
