"""onnxruntime's fused com.microsoft ops: one-node graphs against onnxruntime, parametrized over
attributes and input forms; a tiny BERT optimised by ``onnxruntime.transformers.optimizer`` explains like
the unfused export (gradients w.r.t. the word embeddings equal within float tolerance)."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import vinfo
from onnx import TensorProto, helper, numpy_helper

import onnx_explain as oe
from onnx_explain.convert import to_fx
from onnx_explain.convert.ops.contrib import OnnxAttention, OnnxMultiHeadAttention, OnnxSkipLayerNorm
from onnx_explain.errors import ConversionError

MS = "com.microsoft"
B, S, D, N = 2, 5, 8, 2  # batch, sequence, hidden, heads
I32 = TensorProto.INT32


def _model(node, inputs: dict, inits: dict, opset: int = 17, domain: str = MS) -> onnx.ModelProto:
    """A one-node model; ``inputs`` name -> array (graph inputs), ``inits`` name -> array (initializers).
    Not run through onnx.checker: onnx has no schemas for onnxruntime's contrib ops."""
    kinds = {
        np.dtype(np.float32): TensorProto.FLOAT,
        np.dtype(np.int32): I32,
        np.dtype(np.int64): TensorProto.INT64,
    }
    graph_inputs = [vinfo(k, list(v.shape), kinds[v.dtype]) for k, v in inputs.items()]
    outputs = [helper.make_empty_tensor_value_info(o) for o in node.output if o]
    graph = helper.make_graph(
        [node], "g", graph_inputs, outputs, [numpy_helper.from_array(v, k) for k, v in inits.items()]
    )
    opsets = [helper.make_opsetid("", opset)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 10
    return model


def _compare(model: onnx.ModelProto, feeds: dict, rtol: float = 1e-5, atol: float = 1e-5) -> list:
    """Run onnxruntime and the conversion; assert every output equal; return the converted graph."""
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    want = sess.run(None, feeds)
    gm = to_fx(model)
    names = [i.name for i in model.graph.input]
    with torch.no_grad():
        got = gm(*[torch.from_numpy(feeds[n]) for n in names])
    got = list(got) if isinstance(got, (tuple, list)) else [got]
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert tuple(g.shape) == w.shape
        np.testing.assert_allclose(g.numpy().astype(np.float64), w.astype(np.float64), rtol=rtol, atol=atol)
    return gm


def _rand(*shape, seed: int = 0, scale: float = 1.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


# --- Attention ------------------------------------------------------------------------------------------
def _masks(kind: str) -> np.ndarray | None:
    if kind == "end":
        return np.array([5, 3], np.int32)
    if kind == "end_start":
        return np.array([5, 4, 0, 1], np.int32)
    if kind == "raw2d":
        return np.array([[1, 1, 0, 1, 1], [1, 1, 1, 0, 0]], np.int32)
    if kind == "raw3d":
        return np.tril(np.ones((S, S), np.int32))[None].repeat(B, 0)
    return None


ATTENTION_CASES = {
    "plain": {},
    "one_head": {"num_heads": 1},
    "mask_end": {"mask": "end"},
    "mask_end_start": {"mask": "end_start"},
    "mask_raw2d": {"mask": "raw2d"},
    "mask_raw3d": {"mask": "raw3d"},
    "unidirectional": {"unidirectional": 1},
    "unidirectional_raw2d": {"unidirectional": 1, "mask": "raw2d"},
    "qkv_hidden_sizes": {"qkv_hidden_sizes": [8, 8, 12]},
    "attention_bias": {"attention_bias": True},
    "scale_filter": {"scale": 0.3, "mask_filter_value": -50.0, "mask": "raw2d"},
    "present": {"present": True},
}


@pytest.mark.parametrize("case", list(ATTENTION_CASES), ids=list(ATTENTION_CASES))
def test_attention(case):
    c = dict(ATTENTION_CASES[case])
    heads = c.pop("num_heads", N)
    sizes = c.pop("qkv_hidden_sizes", None)
    mask = _masks(c.pop("mask", None))
    with_bias, present, attn_bias = (
        c.pop("bias", True),
        c.pop("present", False),
        c.pop("attention_bias", False),
    )
    out_cols = sum(sizes) if sizes else 3 * D
    inputs = {"x": _rand(B, S, D)}
    inits = {"w": _rand(D, out_cols, seed=1, scale=0.5)}
    names = ["x", "w", ""]
    if with_bias:
        inits["b"] = _rand(out_cols, seed=2, scale=0.1)
        names[2] = "b"
    if mask is not None:
        inputs["mask"] = mask
    names.append("mask" if mask is not None else "")
    if attn_bias:
        inputs["ab"] = _rand(B, heads, S, S, seed=3)
        names += ["", "ab"]
    attrs = {"num_heads": heads, **c}
    if sizes:
        attrs["qkv_hidden_sizes"] = sizes
    node = helper.make_node(
        "Attention", names, ["y", "present"] if present else ["y"], domain=MS, name="att", **attrs
    )
    _compare(_model(node, inputs, inits), inputs)


def test_attention_refuses_past_naming_node_op_and_opset():
    node = helper.make_node(
        "Attention", ["x", "w", "b", "", "past"], ["y"], domain=MS, name="att_past", num_heads=2
    )
    inputs = {"x": _rand(B, S, D), "past": _rand(2, B, N, 1, D // N)}
    model = _model(node, inputs, {"w": _rand(D, 3 * D), "b": _rand(3 * D)})
    with pytest.raises(
        ConversionError,
        match=r"node 'att_past' \(com\.microsoft\.Attention\) could not be converted \(opset 1\): "
        r"Attention: a past state \(input 'past', KV cache\) is not supported",
    ):
        to_fx(model)


# --- MultiHeadAttention ---------------------------------------------------------------------------------
MHA_CASES = {
    "qkv": {},
    "bias_mask2d": {"bias": True, "mask": "raw2d"},
    "mask1d": {"mask": "end"},
    "cross": {"kv_len": 7},
    "unidirectional": {"unidirectional": 1},
    "attention_bias_scale": {"attention_bias": True, "scale": 0.2},
    "present": {"present": True, "bias": True},
}


@pytest.mark.parametrize("case", list(MHA_CASES), ids=list(MHA_CASES))
def test_multi_head_attention(case):
    c = dict(MHA_CASES[case])
    kv_len, mask = c.pop("kv_len", S), _masks(c.pop("mask", None))
    with_bias, present, attn_bias = (
        c.pop("bias", False),
        c.pop("present", False),
        c.pop("attention_bias", False),
    )
    inputs = {"q": _rand(B, S, D), "k": _rand(B, kv_len, D, seed=1), "v": _rand(B, kv_len, D, seed=2)}
    names = ["q", "k", "v"]
    inits = {}
    names.append("bias" if with_bias else "")
    if with_bias:
        inits["bias"] = _rand(3 * D, seed=4, scale=0.1)
    names.append("mask" if mask is not None else "")
    if mask is not None:
        inputs["mask"] = mask
    if attn_bias:
        inputs["ab"] = _rand(1, N, S, kv_len, seed=5)
        names.append("ab")
    outs = ["y", "pk", "pv"] if present else ["y"]
    node = helper.make_node("MultiHeadAttention", names, outs, domain=MS, name="mha", num_heads=N, **c)
    _compare(_model(node, inputs, inits), inputs)


@pytest.mark.parametrize("packed", ["qkv", "kv"])
def test_multi_head_attention_packed_equals_onnxruntime_unpacked(packed):
    # onnxruntime's CPU kernel has no packed layouts: its result on the same tensors unpacked is the reference
    h, kv_len = D // N, 6 if packed == "kv" else S
    q, k, v = _rand(B, S, N, h), _rand(B, kv_len, N, h, seed=1), _rand(B, kv_len, N, h, seed=2)
    plain = {"q": q.reshape(B, S, D), "k": k.reshape(B, kv_len, D), "v": v.reshape(B, kv_len, D)}
    node = helper.make_node("MultiHeadAttention", ["q", "k", "v"], ["y"], domain=MS, name="mha", num_heads=N)
    sess = ort.InferenceSession(
        _model(node, plain, {}).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    want = sess.run(None, plain)[0]
    if packed == "qkv":
        feeds, names = {"qkv": np.stack([q, k, v], axis=3)}, ["qkv", "", ""]
    else:
        feeds, names = {"q": plain["q"], "kv": np.stack([k, v], axis=3)}, ["q", "kv", ""]
    node = helper.make_node("MultiHeadAttention", names, ["y"], domain=MS, name="mha", num_heads=N)
    gm = to_fx(_model(node, feeds, {}))
    with torch.no_grad():
        got = gm(*[torch.from_numpy(a) for a in feeds.values()])
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-5)


def test_multi_head_attention_with_keys_and_values_split_in_heads():
    # cross attention whose key and value come already in (B, N, L, H), as encoder caches are kept
    feeds = {"q": _rand(B, S, D), "k": _rand(B, N, 6, D // N, seed=1), "v": _rand(B, N, 6, D // N, seed=2)}
    node = helper.make_node("MultiHeadAttention", ["q", "k", "v"], ["y"], domain=MS, name="mha", num_heads=N)
    _compare(_model(node, feeds, {}), feeds)


def test_multi_head_attention_refuses_past_key():
    node = helper.make_node(
        "MultiHeadAttention",
        ["q", "k", "v", "", "", "", "pk", "pv"],
        ["y"],
        domain=MS,
        name="mha_past",
        num_heads=N,
    )
    inputs = {
        "q": _rand(B, S, D),
        "k": _rand(B, S, D),
        "v": _rand(B, S, D),
        "pk": _rand(B, N, 1, 4),
        "pv": _rand(B, N, 1, 4),
    }
    with pytest.raises(
        ConversionError, match=r"node 'mha_past' \(com\.microsoft\.MultiHeadAttention\).*'past_key'"
    ):
        to_fx(_model(node, inputs, {}))


# --- normalisations -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "beta,bias,outputs,skip_shape",
    [
        (True, False, 1, (B, S, D)),
        (True, True, 4, (B, S, D)),
        (False, True, 4, (B, S, D)),
        (True, False, 1, (1, S, D)),
    ],
    ids=["plain", "bias-all-outputs", "no-beta", "broadcast-skip"],
)
def test_skip_layer_normalization(beta, bias, outputs, skip_shape):
    inputs = {"x": _rand(B, S, D), "skip": _rand(*skip_shape, seed=1)}
    inits = {"gamma": _rand(D, seed=2), "beta": _rand(D, seed=3), "bias": _rand(D, seed=4)}
    names = ["x", "skip", "gamma", "beta" if beta else "", "bias" if bias else ""]
    outs = ["y", "mean", "inv_std", "sum"][:outputs]
    node = helper.make_node("SkipLayerNormalization", names, outs, domain=MS, name="sln", epsilon=1e-5)
    _compare(_model(node, inputs, inits), inputs)


@pytest.mark.parametrize(
    "bias,outputs", [(False, ["y"]), (True, ["y", "", "inv_std", "sum"])], ids=["plain", "bias-outputs"]
)
def test_skip_simplified_layer_normalization(bias, outputs):
    inputs = {"x": _rand(B, S, D), "skip": _rand(B, S, D, seed=1)}
    inits = {"gamma": _rand(D, seed=2), "bias": _rand(D, seed=4)}
    names = ["x", "skip", "gamma"] + (["bias"] if bias else [])
    node = helper.make_node(
        "SkipSimplifiedLayerNormalization", names, outputs, domain=MS, name="ssln", epsilon=1e-6
    )
    _compare(_model(node, inputs, inits), inputs)


@pytest.mark.parametrize("axis", [-1, 1])
def test_simplified_layer_normalization(axis):
    # onnxruntime registers it in the ONNX domain (onnx itself has no schema for it)
    inputs = {"x": _rand(B, S, D)}
    node = helper.make_node(
        "SimplifiedLayerNormalization", ["x", "scale"], ["y"], name="rms", axis=axis, epsilon=1e-5
    )
    scale = _rand(D, seed=1) if axis == -1 else _rand(S, D, seed=1)
    _compare(_model(node, inputs, {"scale": scale}, domain=""), inputs)


@pytest.mark.parametrize(
    "segment,mask,position_ids",
    [(True, True, False), (False, False, False), (True, True, True)],
    ids=["segment-mask", "words-only", "position-ids"],
)
def test_embed_layer_normalization(segment, mask, position_ids):
    vocab, positions = 11, 9
    rng = np.random.default_rng(0)
    inputs = {"ids": rng.integers(0, vocab, (B, S)).astype(np.int32)}
    names = ["ids", "seg" if segment else "", "word", "pos", "segemb" if segment else "", "gamma", "beta"]
    if segment:
        inputs["seg"] = rng.integers(0, 2, (B, S)).astype(np.int32)
    if mask:
        inputs["mask"] = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], np.int32)
    names.append("mask" if mask else "")
    if position_ids:
        inputs["pids"] = np.array([[3, 1, 4, 1, 5]], np.int32)
        names.append("pids")
    inits = {
        "word": _rand(vocab, D, seed=1), "pos": _rand(positions, D, seed=2), "segemb": _rand(2, D, seed=3),
        "gamma": _rand(D, seed=4), "beta": _rand(D, seed=5),
    }  # fmt: skip
    outs = ["y", "mask_index", "emb_sum"] if mask else ["y", "mask_index"]  # onnxruntime wants mask_index
    node = helper.make_node("EmbedLayerNormalization", names, outs, domain=MS, name="emb", epsilon=1e-5)
    gm = _compare(_model(node, inputs, inits), inputs)
    # the word lookup is its own node: attribution to token ids starts there, as in the unfused graph
    assert any(n.target.endswith("emb.words") for n in gm.graph.nodes if n.op == "call_module")


# --- activations, products ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "op,names,attrs",
    [
        ("Gelu", ["x"], {}),
        ("BiasGelu", ["x", "bias"], {}),
        ("FastGelu", ["x"], {}),
        ("FastGelu", ["x", "bias"], {}),
        ("QuickGelu", ["x"], {}),
        ("QuickGelu", ["x"], {"alpha": 0.5}),
    ],
    ids=["Gelu", "BiasGelu", "FastGelu", "FastGelu-bias", "QuickGelu", "QuickGelu-alpha"],
)
def test_activations(op, names, attrs):
    inputs = {"x": _rand(B, S, D, scale=2.0)}
    inits = {"bias": _rand(D, seed=1)}
    node = helper.make_node(op, names, ["y"], domain=MS, name=op.lower(), **attrs)
    _compare(_model(node, inputs, {k: v for k, v in inits.items() if k in names}), inputs)


def test_bias_add_is_the_documented_sum():
    # onnxruntime has BiasAdd on CUDA only: its contrib-op spec, Y = X + bias + skip, is the reference
    x, bias, skip = _rand(B, S, D), _rand(D, seed=1), _rand(B, S, D, seed=2)
    node = helper.make_node("BiasAdd", ["x", "bias", "skip"], ["y"], domain=MS, name="bias_add")
    gm = to_fx(_model(node, {"x": x, "skip": skip}, {"bias": bias}))
    with torch.no_grad():
        got = gm(torch.from_numpy(x), torch.from_numpy(skip)).numpy()
    np.testing.assert_array_equal(got, x + bias + skip)


@pytest.mark.parametrize(
    "a_shape,b_shape,attrs",
    [
        ((B, S, D), (D, 3), {}),
        ((B, D, S), (D, 3), {"transA": 1, "alpha": 0.5}),
        ((B, S, D), (B, 3, D), {"transB": 1}),
        ((S, D), (3, S), {"transA": 1, "transB": 1, "alpha": -2.0}),
    ],
    ids=["plain", "transA-alpha", "transB-batched", "both"],
)
def test_fused_matmul(a_shape, b_shape, attrs):
    inputs = {"a": _rand(*a_shape), "b": _rand(*b_shape, seed=1)}
    node = helper.make_node("FusedMatMul", ["a", "b"], ["y"], domain=MS, name="fmm", **attrs)
    _compare(_model(node, inputs, {}), inputs)


def test_fused_matmul_refuses_batch_transposes():
    node = helper.make_node("FusedMatMul", ["a", "b"], ["y"], domain=MS, name="fmm_tb", transBatchA=1)
    model = _model(node, {"a": _rand(B, S, D), "b": _rand(D, 3)}, {})
    with pytest.raises(
        ConversionError, match=r"node 'fmm_tb' \(com\.microsoft\.FusedMatMul\).*\(opset 1\).*transBatchA=1"
    ):
        to_fx(model)


def test_gradients_are_autograd_exact_in_float64():
    # the modules are plain torch ops: finite differences agree with their backward (masks included)
    torch.manual_seed(0)
    x = torch.randn(B, S, D, dtype=torch.float64, requires_grad=True)
    w = torch.randn(D, 3 * D, dtype=torch.float64) / 3
    mask = torch.tensor([[1, 1, 0, 1, 1], [1, 1, 1, 1, 0]], dtype=torch.int32)
    att = OnnxAttention(N, None, True, -10000.0, 0.0, 1)
    assert torch.autograd.gradcheck(lambda t: att(t, w, None, mask), (x,))
    mha = OnnxMultiHeadAttention(N, False, -10000.0, 0.0, 1)
    assert torch.autograd.gradcheck(lambda t: mha(t, t * 2, t.flip(1)), (x,))
    sln = OnnxSkipLayerNorm(1e-5, False, 1)
    gamma = torch.randn(D, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: sln(t, t.sin(), gamma), (x,))


# --- a tiny BERT, optimised by onnxruntime's transformer optimizer --------------------------------------
SEQ, HIDDEN = 8, 16


class _FromEmbeddings(torch.nn.Module):
    """The same BERT fed embeddings (a float input) instead of token ids."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, emb, mask):
        return self.net(inputs_embeds=emb, attention_mask=mask).logits


@pytest.fixture(scope="module")
def bert_files(tmp_path_factory):
    """{'ids' | 'embeds': (unfused export, optimised file)} of one tiny random BERT classifier."""
    transformers = pytest.importorskip("transformers")
    from onnxruntime.transformers.optimizer import optimize_model

    folder = tmp_path_factory.mktemp("bert")
    cfg = transformers.BertConfig(
        vocab_size=40, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=16, num_labels=3, initializer_range=0.5, attn_implementation="eager",
    )  # fmt: skip
    torch.manual_seed(0)
    net = transformers.BertForSequenceClassification(cfg).eval()
    with torch.no_grad():  # distinct LayerNorm parameters and biases (fresh ones are equal: the
        for name, p in net.named_parameters():  # exporter would share them)
            if "LayerNorm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    ids, ones = torch.zeros(1, SEQ, dtype=torch.int64), torch.ones(1, SEQ, dtype=torch.int64)
    variants = {
        "ids": (net, (ids, ones, ids), ["input_ids", "attention_mask", "token_type_ids"]),
        "embeds": (_FromEmbeddings(net), (torch.randn(1, SEQ, HIDDEN), ones), ["emb", "attention_mask"]),
    }
    files = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for kind, (module, args, names) in variants.items():
            plain, fused = folder / f"{kind}.onnx", folder / f"{kind}_opt.onnx"
            torch.onnx.export(
                module, args, str(plain), dynamo=False, opset_version=17, input_names=names,
                output_names=["logits"], dynamic_axes={k: {0: "batch"} for k in names},
            )  # fmt: skip
            opt = optimize_model(str(plain), model_type="bert", num_heads=2, hidden_size=HIDDEN)
            opt.save_model_to_file(str(fused))
            files[kind] = (plain, fused)
    return files


def _explain_both(files, input_name: str, fixed: dict, x: np.ndarray) -> dict:
    """Per graph: (onnxruntime's output, the explanation of class 0); the conversion's output is checked
    against onnxruntime on the way."""
    results = {}
    for kind, path in zip(("plain", "fused"), files, strict=True):
        m = oe.load(path, input=input_name, fixed_inputs=fixed)
        with torch.no_grad():
            got = m.torch_module()(torch.from_numpy(x)).numpy()
        want = m.predict(x)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
        results[kind] = (want, oe.explain(m, x, "gradient", target=0))
    np.testing.assert_allclose(results["fused"][0], results["plain"][0], rtol=1e-4, atol=1e-5)
    return {k: v[1] for k, v in results.items()}


def _padding_mask() -> np.ndarray:
    mask = np.ones((1, SEQ), np.int64)
    mask[0, 6:] = 0  # right padding: the fused Attention reads it as end positions
    return mask


def test_optimised_bert_explains_token_ids_like_the_unfused_export(bert_files):
    plain, fused = bert_files["ids"]
    ops = {(n.domain, n.op_type) for n in onnx.load(str(fused)).graph.node}
    for op in ("EmbedLayerNormalization", "Attention", "SkipLayerNormalization", "BiasGelu"):
        assert (MS, op) in ops, f"the optimizer did not write {op}: {sorted(ops)}"
    fixed = {"attention_mask": _padding_mask(), "token_type_ids": np.array([[0] * 4 + [1] * 4], np.int64)}
    ids = np.random.default_rng(0).integers(0, 40, (3, SEQ)).astype(np.int64)
    e = _explain_both(bert_files["ids"], "input_ids", fixed, ids)
    assert e["fused"].extras["embedding_node"].endswith("words")  # the fused graph's word lookup
    g_plain = e["plain"].extras["embedding_attribution"]
    g_fused = e["fused"].extras["embedding_attribution"]
    assert g_plain.shape == g_fused.shape == (3, SEQ, HIDDEN)
    np.testing.assert_allclose(g_fused, g_plain, rtol=1e-4, atol=1e-5 * np.abs(g_plain).max())
    np.testing.assert_allclose(
        e["fused"].attribution, e["plain"].attribution, rtol=1e-4, atol=1e-5 * np.abs(g_plain).max()
    )
    # padded tokens are masked keys: nothing reaches the classifier from them, in either graph
    assert np.abs(g_fused[:, 6:]).max() <= 1e-6 * np.abs(g_fused).max()


def test_optimised_bert_gradient_wrt_a_float_input_equals_the_unfused(bert_files):
    plain, fused = bert_files["embeds"]
    ops = {(n.domain, n.op_type) for n in onnx.load(str(fused)).graph.node}
    assert {(MS, "Attention"), (MS, "SkipLayerNormalization"), (MS, "BiasGelu")} <= ops, sorted(ops)
    x = np.random.default_rng(1).standard_normal((3, SEQ, HIDDEN)).astype(np.float32)
    e = _explain_both(bert_files["embeds"], "emb", {"attention_mask": _padding_mask()}, x)
    g_plain, g_fused = e["plain"].attribution, e["fused"].attribution
    assert g_fused.shape == x.shape
    np.testing.assert_allclose(g_fused, g_plain, rtol=1e-4, atol=1e-5 * np.abs(g_plain).max())
