"""Whole quantized models built in the tests: a small LSTM tagger (torch export) and a tiny random BERT
(transformers), quantized with onnxruntime's ``quantize_static`` (QDQ and QOperator) and
``quantize_dynamic`` (which writes ``com.microsoft.DynamicQuantizeLSTM`` for the LSTM and, after
onnxruntime's transformer optimizer, ``QAttention``).

Each is checked three ways: the converted graph's forward against onnxruntime on the quantized file
(stated tolerance), the gradient against the float twin's (cosine >= 0.9; the straight-through estimator),
and the ``extras['quantized']`` note of :func:`onnx_explain.explain`.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import make_model, vinfo
from onnx import helper, numpy_helper

import onnx_explain as oe
from onnx_explain.convert import to_fx
from onnx_explain.convert.ops.quant import onnxruntime_fused, straight_through_nodes

VOCAB, STEPS = 30, 7
#: forward parity on the quantized files: max|torch - onnxruntime| <= PARITY * max|onnxruntime|. Measured
#: 0 (bit-equal) for every file here; the bound leaves room for float summation order only.
PARITY = 1e-5
NOTE = "quantized graph: straight-through gradients"


def _cos(a, b) -> float:
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


class _Reader:
    """A calibration reader of random token ids (and an all-ones mask when the model has one)."""

    def __init__(self, vocab: int, steps: int, mask: bool):
        g = np.random.default_rng(1)
        self.batches = iter(
            [
                {"input_ids": g.integers(0, vocab, (4, steps)).astype(np.int64)}
                | ({"attention_mask": np.ones((4, steps), np.int64)} if mask else {})
                for _ in range(4)
            ]
        )

    def get_next(self):
        return next(self.batches, None)


def _quantize(kind: str, src, dst, vocab: int, steps: int, mask: bool = False, **extra):
    """``quantize_dynamic`` (int8 weights) or ``quantize_static`` ('qdq' / 'qoperator': u8 activations, s8
    weights) of ``src``; ``reduce_range`` (7-bit weights), because without VNNI onnxruntime's own u8*s8
    kernels saturate int16 pair sums on full-range weights (see ``tests/test_ops_quant.py``)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    if kind == "dynamic":
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, reduce_range=True, **extra)
        return dst
    reader = type("Reader", (_Reader, CalibrationDataReader), {})(vocab, steps, mask)
    fmt = QuantFormat.QOperator if kind == "qoperator" else QuantFormat.QDQ
    quantize_static(str(src), str(dst), reader, quant_format=fmt, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, reduce_range=True)  # fmt: skip
    return dst


def _ops(path) -> set:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


# --- an LSTM tagger ---------------------------------------------------------------------------------
class _Tagger(torch.nn.Module):
    """Token ids -> embedding -> bidirectional LSTM -> a linear head on every position: (B, T, 4)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(VOCAB, 8)
        self.rnn = torch.nn.LSTM(8, 6, bidirectional=True, batch_first=True)
        self.head = torch.nn.Linear(12, 4)

    def forward(self, ids):
        return self.head(self.rnn(self.emb(ids))[0])


@pytest.fixture(scope="module")
def tagger(tmp_path_factory):
    path = tmp_path_factory.mktemp("tagger") / "float.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Tagger().eval(), (torch.zeros(2, STEPS, dtype=torch.int64),), str(path), dynamo=False,
            opset_version=14, input_names=["input_ids"], output_names=["tags"],
            dynamic_axes={"input_ids": {0: "batch"}, "tags": {0: "batch"}},
        )  # fmt: skip
    return path


_TAGGER_OPS = {
    "qdq": {"LSTM", "QuantizeLinear", "DequantizeLinear"},
    "qoperator": {"LSTM", "QLinearMatMul", "QLinearAdd"},
    "dynamic": {"DynamicQuantizeLSTM", "DynamicQuantizeLinear", "MatMulInteger", "Gather"},
}


@pytest.mark.parametrize("kind", list(_TAGGER_OPS))
def test_quantized_lstm_tagger_matches_onnxruntime_and_its_float_twin(kind, tagger, tmp_path, monkeypatch):
    # DynamicQuantizeLSTM's output depends on onnxruntime's intra-op thread count (it quantizes h per chunk
    # of the batch, one chunk per thread): pin it for onnxruntime and the conversion alike, on any machine
    monkeypatch.setenv("ONNX_EXPLAIN_THREADS", "2")
    qpath = _quantize(kind, tagger, tmp_path / "q.onnx", VOCAB, STEPS)
    assert _TAGGER_OPS[kind] <= _ops(qpath), _ops(qpath)
    ids = np.random.default_rng(0).integers(0, VOCAB, (3, STEPS)).astype(np.int64)
    m = oe.load(qpath)
    module = m.torch_module(probe=ids)  # the parity gate against onnxruntime
    with torch.no_grad():
        got = module(torch.from_numpy(ids)).numpy()
    want = m.predict(ids)  # onnxruntime, default session (the DynamicQuantizeLSTM batch chunks included)
    np.testing.assert_allclose(got, want, rtol=0, atol=PARITY * np.abs(want).max())
    fm = oe.load(tagger)
    for position, cls in [(3, 1), (0, 2), (STEPS - 1, 0)]:
        eq = oe.explain(m, ids, "gradient", target=(position, cls))
        ef = oe.explain(fm, ids, "gradient", target=(position, cls))
        gq, gf = eq.extras["embedding_attribution"], ef.extras["embedding_attribution"]
        assert gq.shape == gf.shape == (3, STEPS, 8)
        for b in range(3):  # per sample: the straight-through gradient points where the float one does
            assert _cos(gq[b], gf[b]) >= 0.9, (kind, position, cls, b, _cos(gq[b], gf[b]))


def test_explain_says_the_graph_is_quantized(tagger, tmp_path):
    """Straight-through gradients are announced in ``extras['quantized']`` for quantized graphs only
    (:func:`~onnx_explain.convert.ops.quant.straight_through_nodes`)."""
    qpath = _quantize("dynamic", tagger, tmp_path / "q.onnx", VOCAB, STEPS)
    ids = np.random.default_rng(0).integers(0, VOCAB, (2, STEPS)).astype(np.int64)
    assert oe.explain(oe.load(qpath), ids, "gradient", target=(1, 1)).extras["quantized"] == NOTE
    assert "quantized" not in oe.explain(oe.load(tagger), ids, "gradient", target=(1, 1)).extras
    # a float input too: one QuantizeLinear -> DequantizeLinear pair in front of a MatMul
    w = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3) / 10, "w")
    s, z = (
        numpy_helper.from_array(np.array(0.05, np.float32), "s"),
        numpy_helper.from_array(np.uint8(128), "z"),
    )
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"]),
             helper.make_node("MatMul", ["d", "w"], ["y"])]  # fmt: skip
    qdq = make_model(nodes, [vinfo("x", ["batch", 4])], [vinfo("y", ["batch", 3])], [w, s, z], opset=17)
    x = np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32)
    assert oe.explain(oe.load(qdq), x, "gradient", target=0).extras["quantized"] == NOTE


def test_straight_through_nodes_names_the_rounding_nodes(tagger, tmp_path):
    """What the conversion exposes for the note: the nodes that round (none in the float twin)."""
    qpath = _quantize("dynamic", tagger, tmp_path / "q.onnx", VOCAB, STEPS)
    names = straight_through_nodes(oe.load(qpath).torch_module())
    assert any("LSTM" in n for n in names) and any("QuantizeLinear" in n for n in names), names
    assert straight_through_nodes(oe.load(tagger).torch_module()) == []


# --- a tiny BERT ----------------------------------------------------------------------------------------
SEQ, HIDDEN, BERT_VOCAB = 8, 16, 40


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    """{'float': the unfused export, 'optimised': after onnxruntime's transformer optimizer} of one tiny
    random BERT classifier with inputs ``input_ids`` and ``attention_mask``."""
    transformers = pytest.importorskip("transformers")
    from onnxruntime.transformers.optimizer import optimize_model

    folder = tmp_path_factory.mktemp("qbert")
    cfg = transformers.BertConfig(
        vocab_size=BERT_VOCAB, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=16, num_labels=3, initializer_range=0.5,
        attn_implementation="eager",
    )  # fmt: skip
    torch.manual_seed(0)
    net = transformers.BertForSequenceClassification(cfg).eval()
    with torch.no_grad():  # distinct LayerNorm parameters and biases (the exporter would share equal ones)
        for name, p in net.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    names = ["input_ids", "attention_mask"]
    ids, ones = torch.zeros(1, SEQ, dtype=torch.int64), torch.ones(1, SEQ, dtype=torch.int64)
    path = folder / "float.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net, (ids, ones), str(path), dynamo=False, opset_version=17, input_names=names,
            output_names=["logits"], dynamic_axes={k: {0: "batch"} for k in names},
        )  # fmt: skip
        opt = optimize_model(str(path), model_type="bert", num_heads=2, hidden_size=HIDDEN)
    opt.save_model_to_file(str(folder / "optimised.onnx"))
    return {"float": path, "optimised": folder / "optimised.onnx"}


def _bert_inputs(padded: bool = True):
    ids = np.random.default_rng(0).integers(0, BERT_VOCAB, (3, SEQ)).astype(np.int64)
    mask = np.ones((3, SEQ), np.int64)
    if padded:
        mask[0, 6:] = 0  # one padded sample
    return {"input_ids": ids, "attention_mask": mask}


def _check_bert(qpath, float_path, padded: bool = True):
    """Forward against onnxruntime (the gate, then the stated tolerance) and the token-id gradient against
    the float BERT's, per sample."""
    feeds = _bert_inputs(padded)
    m = oe.load(qpath, input="input_ids")
    eq = oe.explain(m, feeds, "gradient", target=0)  # converts, with the parity gate on a random probe
    module = m.torch_module()
    mask = torch.from_numpy(feeds["attention_mask"])
    with torch.no_grad():
        got = module(torch.from_numpy(feeds["input_ids"]), {"attention_mask": mask}).numpy()
    want = ort.InferenceSession(str(qpath), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_allclose(got, want, rtol=0, atol=PARITY * np.abs(want).max())
    ef = oe.explain(oe.load(float_path, input="input_ids"), feeds, "gradient", target=0)
    gq, gf = eq.extras["embedding_attribution"], ef.extras["embedding_attribution"]
    assert gq.shape == gf.shape == (3, SEQ, HIDDEN)
    cosines = [_cos(gq[b], gf[b]) for b in range(3)]
    assert min(cosines) >= 0.9, cosines
    if padded:
        assert np.all(eq.attribution[0, 6:] == 0)  # padded positions take no part
    return eq


def test_dynamically_quantized_bert_matches_onnxruntime_and_its_float_twin(bert, tmp_path):
    qpath = _quantize("dynamic", bert["float"], tmp_path / "q.onnx", BERT_VOCAB, SEQ)
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= _ops(qpath)
    _check_bert(qpath, bert["float"])


def test_dynamically_quantized_embedding_is_attributed_in_its_real_units(bert, tmp_path):
    """``quantize_dynamic`` quantizes the word-embedding table (Gather -> DequantizeLinear): the cut is at the
    DequantizeLinear, so the embedding is ``(q - zp) * s`` and gradient x input equals the float twin's."""
    qpath = _quantize("dynamic", bert["float"], tmp_path / "q.onnx", BERT_VOCAB, SEQ)
    feeds = _bert_inputs()
    eq = oe.explain(oe.load(qpath, input="input_ids"), feeds, "gradient_x_input", target=0)
    ef = oe.explain(oe.load(bert["float"], input="input_ids"), feeds, "gradient_x_input", target=0)
    q = onnx.load(str(qpath))
    gathers = [n for n in q.graph.node if n.op_type == "Gather" and n.input[1] == "input_ids"]
    deq = [n for n in q.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == gathers[0].output[0]]
    assert deq, "the word embedding is not quantized: nothing to test"
    assert eq.extras["embedding_node"] != ef.extras["embedding_node"]
    for b in range(3):
        assert _cos(eq.attribution[b], ef.attribution[b]) >= 0.98
    assert np.all(eq.attribution[0, 6:] == 0)


def test_optimised_then_dynamically_quantized_bert_uses_qattention(bert, tmp_path):
    """``optimize_model`` then ``quantize_dynamic``: QEmbedLayerNormalization and QAttention."""
    qpath = _quantize("dynamic", bert["optimised"], tmp_path / "q.onnx", BERT_VOCAB, SEQ,
                      extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})  # fmt: skip
    assert {"QAttention", "QEmbedLayerNormalization", "DynamicQuantizeLinear"} <= _ops(qpath), _ops(qpath)
    eq = _check_bert(qpath, bert["float"])
    assert eq.extras["embedding_node"].endswith("words")  # attribution starts at the dequantized lookup


def test_statically_quantized_bert_qoperator(bert, tmp_path):
    """QOperator: QLinearMatMul, QGemm, QLinearAdd/Mul and QLinearSoftmax. Unpadded inputs: the calibration
    saw no padding, so a padded key's -10000 score saturates at the bottom of the quantized range and the
    quantized model (onnxruntime's as much as ours) attends to padding, unlike the float one."""
    qpath = _quantize("qoperator", bert["float"], tmp_path / "q.onnx", BERT_VOCAB, SEQ, mask=True)
    assert {"QLinearMatMul", "QLinearSoftmax", "QLinearAdd"} <= _ops(qpath), _ops(qpath)
    _check_bert(qpath, bert["float"], padded=False)


def _word_embedding_gradient(model: onnx.ModelProto, feeds: dict):
    """(logits, d logits[:, 0] / d word embeddings) of the converted graph: attribution starts at the word
    embedding lookup (a forward hook makes its output the leaf)."""
    gm = to_fx(onnx.shape_inference.infer_shapes(model))
    lookup = next(m for n, m in gm.named_modules() if "word_embeddings" in n and "gather" in n.lower())
    seen = {}

    def start_here(module, args, out):
        seen["e"] = out.detach().float().requires_grad_(True)
        return seen["e"]

    handle = lookup.register_forward_hook(start_here)
    y = gm(*[torch.from_numpy(v) for v in feeds.values()])
    handle.remove()
    y[:, 0].sum().backward()
    return y.detach().numpy(), seen["e"].grad.numpy()


def test_statically_quantized_bert_qdq(bert, tmp_path):
    """QDQ. Converted as written, the graph equals onnxruntime without graph optimisation bit for bit; but
    onnxruntime's default optimiser rewrites its DQ -> op -> Q groups into QLinearSoftmax/QLinearAdd/
    QLinearMul kernels with other rounding (~3 % of the logits here), so the parity gate of
    ``oe.load(...).torch_module()`` refuses the file as written (the checked.py fallback tested below
    converts the fused graph instead). Converted after
    :func:`~onnx_explain.convert.ops.quant.onnxruntime_fused`, it equals onnxruntime's default run bit for
    bit. Both straight-through gradients follow the float BERT's."""
    qpath = _quantize("qdq", bert["float"], tmp_path / "q.onnx", BERT_VOCAB, SEQ, mask=True)
    feeds = _bert_inputs(padded=False)
    model = onnx.load(str(qpath))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    as_written = ort.InferenceSession(str(qpath), opts, providers=["CPUExecutionProvider"]).run(None, feeds)[
        0
    ]
    default = ort.InferenceSession(str(qpath), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    assert np.abs(default - as_written).max() > 1e-3 * np.abs(default).max()  # the gap this test is about
    fused = onnxruntime_fused(model)
    assert {"QLinearSoftmax", "QLinearAdd"} <= {n.op_type for n in fused.graph.node}
    _, g_float = _word_embedding_gradient(onnx.load(str(bert["float"])), feeds)
    for graph, want in ((model, as_written), (fused, default)):
        y, g = _word_embedding_gradient(graph, feeds)
        np.testing.assert_array_equal(y, want)
        cosines = [_cos(g[b], g_float[b]) for b in range(3)]
        assert min(cosines) >= 0.9, cosines


def test_qdq_bert_passes_the_parity_gate_through_the_fused_graph(bert, tmp_path):
    """The public path: ``oe.load`` + ``explain`` on the QDQ file, whose as-written conversion fails the
    gate, uses the graph onnxruntime runs and says so in the parity notes."""
    qpath = _quantize("qdq", bert["float"], tmp_path / "q.onnx", BERT_VOCAB, SEQ, mask=True)
    feeds = _bert_inputs(padded=False)
    m = oe.load(qpath, input="input_ids")
    eq = oe.explain(m, feeds, "gradient", target=0)
    assert m.parity.passed and m.parity.max_abs == 0
    assert any("onnxruntime's graph optimiser" in note for note in m.parity.notes)
    ef = oe.explain(oe.load(bert["float"], input="input_ids"), feeds, "gradient", target=0)
    gq, gf = eq.extras["embedding_attribution"], ef.extras["embedding_attribution"]
    assert min(_cos(gq[b], gf[b]) for b in range(3)) >= 0.9
