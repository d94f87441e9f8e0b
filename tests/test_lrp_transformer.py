"""LRP for transformers (AttnLRP, CP-LRP): our rules on the exported ONNX graph against a float64 hand-patched
reference (gradient×input of a forward with σ detached, bilinear gradients halved, the identity rule on
GELU; AttnLRP's Softmax rule is the plain gradient there), and per-op conservation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import export
from torch import nn

import onnx_explain as oe

torch.set_default_dtype(torch.float32)


class RMSNorm(nn.Module):
    """RMSNorm written out (the legacy exporter has no ``aten::rms_norm``): Pow, ReduceMean, Add, Sqrt, Div."""

    def __init__(self, d, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x, patched=False):
        r = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * (x * (r.detach() if patched else r))


class Block(nn.Module):
    """Pre-norm encoder block: multi-head self-attention and a GELU MLP, both residual."""

    def __init__(self, d, heads, bias, rms):
        super().__init__()
        self.heads = heads
        norm = (lambda: RMSNorm(d)) if rms else (lambda: nn.LayerNorm(d, bias=bias))
        self.ln1, self.ln2 = norm(), norm()
        self.qkv = nn.Linear(d, 3 * d, bias=bias)
        self.proj = nn.Linear(d, d, bias=bias)
        self.fc1 = nn.Linear(d, 2 * d, bias=bias)
        self.fc2 = nn.Linear(2 * d, d, bias=bias)

    def forward(self, x, patch=None):
        b, t, d = x.shape
        p = patch or {}
        q, k, v = self.qkv(p.get("norm", _call)(self.ln1, x)).chunk(3, dim=-1)
        q, k, v = (z.reshape(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        scores = p.get("bilinear", _ident)(q @ k.transpose(-2, -1)) / math.sqrt(d // self.heads)
        attn = p.get("softmax", _ident)(torch.softmax(scores, -1))
        a = p.get("bilinear", _ident)(attn @ v)
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, d))
        h = self.fc1(p.get("norm", _call)(self.ln2, x))
        return x + self.fc2(p.get("gelu", nn.functional.gelu)(h))


class Encoder(nn.Module):
    """Embedding-free encoder: float tokens (B, T, F) → linear → blocks → mean over tokens → classifier."""

    def __init__(self, features=6, d=16, depth=2, heads=2, classes=3, bias=True, rms=False):
        super().__init__()
        self.embed = nn.Linear(features, d, bias=bias)
        self.blocks = nn.ModuleList(Block(d, heads, bias, rms) for _ in range(depth))
        self.head = nn.Linear(d, classes, bias=bias)

    def forward(self, x, patch=None):
        h = self.embed(x)
        for block in self.blocks:
            h = block(h, patch)
        return self.head(h.mean(1))


class PatchViT(nn.Module):
    """A tiny ViT: a strided Conv patch embedding, a class token, position embeddings, encoder blocks."""

    def __init__(self, d=16, depth=2, heads=2, classes=4):
        super().__init__()
        self.patch = nn.Conv2d(3, d, 4, stride=4)
        self.cls = nn.Parameter(torch.randn(1, 1, d) * 0.5)
        self.pos = nn.Parameter(torch.randn(1, 5, d) * 0.5)
        self.blocks = nn.ModuleList(Block(d, heads, True, False) for _ in range(depth))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, classes)

    def forward(self, x, patch=None):
        h = self.patch(x).flatten(2).transpose(1, 2)
        h = torch.cat([self.cls.expand(len(x), -1, -1), h], 1) + self.pos
        for block in self.blocks:
            h = block(h, patch)
        return self.head((patch or {}).get("norm", _call)(self.norm, h)[:, 0])


def _call(f, x):
    return f(x)


def _ident(x):
    return x


# ------------------------------------------------------------------------------ the patched reference
def _norm_sigma_detached(ln, x):
    """LayerNorm / RMSNorm with the normalising factor held constant (LXT's ``stop_grad(σ)``)."""
    if isinstance(ln, RMSNorm):
        return ln(x, patched=True)
    centred = x - x.mean(-1, keepdim=True)
    sigma = torch.sqrt(centred.detach().pow(2).mean(-1, keepdim=True) + ln.eps)
    y = centred / sigma * ln.weight
    return y + ln.bias if ln.bias is not None else y


def _half_gradient(z):
    return 0.5 * z + 0.5 * z.detach()  # value unchanged, gradient halved


def _gelu_identity(h):
    y = nn.functional.gelu(h)
    return h * (y / h).detach()  # the identity rule: R_in = R_out


def _reference(net, x, target, cp=False):
    """float64 gradient×input of the patched forward (AttnLRP; ``cp``: attention probabilities constant,
    no halving since Q and K receive nothing) and f_c."""
    ref = _float64(net)
    x = x.double().requires_grad_(True)
    patch = {"norm": _norm_sigma_detached, "gelu": _gelu_identity}
    patch.update({"softmax": torch.Tensor.detach} if cp else {"bilinear": _half_gradient})
    out = ref(x, patch)
    f = out.gather(1, target[:, None]).squeeze(1)
    (g,) = torch.autograd.grad(f.sum(), x)
    return (x * g).detach().numpy(), f.detach().numpy()


def _float64(net):
    import copy

    return copy.deepcopy(net).double()


def _cosine(a, b):
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _encoder(seed=0, **kw):
    torch.manual_seed(seed)
    net = Encoder(**kw).eval()
    with torch.no_grad():  # non-trivial norm parameters, so that σ, γ and β matter
        for m in net.modules():
            if isinstance(m, (nn.LayerNorm, RMSNorm)):
                m.weight.uniform_(0.5, 1.5)
                if getattr(m, "bias", None) is not None:
                    m.bias.uniform_(-0.3, 0.3)
    return net


# ------------------------------------------------------------------------------ AttnLRP and CP-LRP vs reference
CASES = {
    "layernorm-legacy": (dict(), "legacy"),
    "layernorm-decomposed": (dict(), "opset16"),  # ReduceMean, Sub, Pow, ReduceMean, Add, Sqrt, Div
    "layernorm-dynamo": (dict(), "dynamo"),
    "rmsnorm-legacy": (dict(rms=True), "legacy"),
    "rmsnorm-dynamo": (dict(rms=True), "dynamo"),
}


@pytest.mark.parametrize(
    "case", [pytest.param(c, marks=pytest.mark.slow) if c == "rmsnorm-dynamo" else c for c in CASES]
)
def test_attnlrp_and_cp_lrp_match_the_patched_reference(case, tmp_path):
    kw, exporter = CASES[case]
    net = _encoder(**kw)
    x = torch.randn(3, 5, 6, generator=torch.Generator().manual_seed(1))
    m = oe.load(_export(net, x, tmp_path / "enc.onnx", exporter))
    e = oe.explain(m, x.numpy(), "lrp")  # attention in the graph: attnlrp is the default
    assert e.extras["composite"] == "attnlrp"
    t = torch.as_tensor(e.target)
    ref, f = _reference(net, x, t)
    np.testing.assert_allclose(e.score, f, rtol=1e-4, atol=1e-5)
    assert _cosine(e.attribution, ref) >= 0.9999  # measured 0.999999; the layers' ε = 1e-6 is the gap
    tight = {"composite_options": {"epsilon": 1e-9}, "target": e.target}
    e9 = oe.explain(m, x.numpy(), "lrp", **tight)
    assert _rel(e9.attribution, ref) <= 5e-4  # measured 4e-5 (LayerNorm), 7e-5 (RMSNorm): float32
    cp = oe.explain(m, x.numpy(), "lrp", composite="cp_lrp", **tight)
    ref_cp, _ = _reference(net, x, t, cp=True)
    assert _rel(cp.attribution, ref_cp) <= 5e-4
    assert _cosine(cp.attribution, e9.attribution) < 0.95  # the two composites differ (0.85-0.89 here)
    if exporter == "opset16":  # the σ of each decomposed norm is held constant, and reported
        assert list(e.extras["rules"].values()).count("Sqrt: stop") == 4


def _export(net, x, path, exporter):
    """conftest's exporters, plus the legacy one at opset 16, which writes LayerNorm out in primitives."""
    if exporter != "opset16":
        return export(net, x, path, exporter)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x,), str(path), dynamo=False, opset_version=16, input_names=["x"],
                          dynamic_axes={"x": {0: "batch"}})  # fmt: skip
    return path


def _rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_attnlrp_gamma_vit_and_attnlrp_on_a_tiny_vit(tmp_path):
    torch.manual_seed(0)
    net = PatchViT().eval()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    m = oe.load(export(net, x, tmp_path / "vit.onnx", "legacy"))
    e = oe.explain(m, x.numpy(), "lrp", composite="attnlrp")
    ref, _ = _reference(net, x, torch.as_tensor(e.target))
    assert _cosine(e.attribution, ref) >= 0.999
    g = oe.explain(m, x.numpy(), "lrp", composite="attnlrp_gamma_vit", target=e.target)
    rules = g.extras["rules"]
    assert rules["/patch/Conv"] == "Conv: gamma" and "MatMul: gamma" in rules.values()
    # γ → 0 is ε: the composite's options reach the layers; γ has a single-backward form too, and both
    # forms give the rule graph's relevance
    g0 = oe.explain(m, x.numpy(), "lrp", target=e.target, composite="attnlrp_gamma_vit",
                    composite_options={"conv_gamma": 0.0, "linear_gamma": 0.0})  # fmt: skip
    assert g0.extras["mode"] == "single" and e.extras["mode"] == "single"
    e_rules = oe.explain(m, x.numpy(), "lrp", composite="attnlrp", target=e.target, mode="rules")
    eps_rules = oe.explain(m, x.numpy(), "lrp", composite="attnlrp", target=e.target, mode="rules",
                           composite_options={"epsilon": 1e-6})  # γ's stabiliser: its ε  # fmt: skip
    tol = {"rtol": 1e-4, "atol": 1e-5 * np.abs(ref).max()}
    np.testing.assert_allclose(g0.attribution, eps_rules.attribution, **tol)
    np.testing.assert_allclose(e.attribution, e_rules.attribution, **tol)
    g_rules = oe.explain(m, x.numpy(), "lrp", composite="attnlrp_gamma_vit", target=e.target, mode="rules")
    np.testing.assert_allclose(g.attribution, g_rules.attribution, **tol)
    assert not np.allclose(g.attribution, e.attribution, atol=1e-2 * np.abs(ref).max())


# ------------------------------------------------------------------------------ conservation
def test_cp_lrp_conserves_on_a_bias_free_transformer(tmp_path):
    net = _encoder(bias=False)
    x = torch.randn(4, 5, 6, generator=torch.Generator().manual_seed(2))
    m = oe.load(export(net, x, tmp_path / "enc.onnx", "legacy"))
    e = oe.explain(m, x.numpy(), "lrp", composite="cp_lrp", rules={"MatMul": "epsilon:1e-9"})
    np.testing.assert_allclose(e.attribution.reshape(4, -1).sum(1), e.score, rtol=1e-3, atol=1e-6)
    a = oe.explain(m, x.numpy(), "lrp", composite="attnlrp", target=e.target)
    # AttnLRP is not conservative (the Softmax rule): documented, and what makes the per-op test needed
    assert np.abs(a.extras["delta"]).max() > 1e-3 * np.abs(a.score).max()


def _one_attention_graph():
    """x (B, T, 3D) split into Q, K, V; S = Q·Kᵀ, P = softmax(S), O = P·V, flattened: one attention head."""
    from conftest import make_model
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Split", ["x"], ["q", "k", "v"], axis=2, num_outputs=3),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["s"], name="scores"),
        helper.make_node("Softmax", ["s"], ["p"], axis=-1, name="softmax"),
        helper.make_node("MatMul", ["p", "v"], ["o"], name="out"),
        helper.make_node("Flatten", ["o"], ["y"], axis=1),
    ]
    inp = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 3, 12])
    return make_model(nodes, [inp], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], opset=18)


def test_attention_relevance_per_op(tmp_path):
    # ΣR_Q = ΣR_K = ½ΣR_S and ΣR_P = ΣR_V = ½ΣR_O (AttnLRP's uniform split), read off the layer records
    import onnx

    path = tmp_path / "attn.onnx"
    onnx.save(_one_attention_graph(), path)
    m = oe.load(path)
    x = np.random.default_rng(0).standard_normal((2, 3, 12)).astype(np.float32)
    e = oe.explain(m, x, "lrp", target=[5, 7], layer_relevance=True)
    assert e.extras["composite"] == "attnlrp"
    rec = {r["layer"]: r for r in e.extras["layer_relevance"]}
    s_out, o_out = rec["scores (MatMul)"]["relevance_out"], rec["out (MatMul)"]["relevance_out"]
    r = e.attribution.reshape(2, 3, 3, 4).sum(axis=(1, 3))  # (sample, [Q, K, V])
    np.testing.assert_allclose(o_out, e.score, rtol=1e-6)
    np.testing.assert_allclose(rec["out (MatMul)"]["relevance_in"], o_out, rtol=1e-5)  # R_P + R_V = R_O
    np.testing.assert_allclose(r[:, 2], 0.5 * o_out, rtol=1e-5)
    np.testing.assert_allclose(rec["softmax (Softmax)"]["relevance_out"], 0.5 * o_out, rtol=1e-5)
    np.testing.assert_allclose(r[:, 0], 0.5 * s_out, rtol=1e-4)
    np.testing.assert_allclose(r[:, 1], 0.5 * s_out, rtol=1e-4)
    # CP-LRP: the probabilities are constants, V takes everything and Q, K nothing
    cp = oe.explain(m, x, "lrp", target=[5, 7], composite="cp_lrp")
    rc = cp.attribution.reshape(2, 3, 3, 4).sum(axis=(1, 3))
    np.testing.assert_allclose(rc[:, 2], cp.score, rtol=1e-5)
    assert not cp.attribution.reshape(2, 3, 3, 4)[:, :, :2].any()


# ------------------------------------------------------------------------------ onnxruntime's fused norms
@pytest.mark.parametrize("fused", ["SkipLayerNormalization", "SkipSimplifiedLayerNormalization"])
def test_fused_skip_norms_hold_sigma_constant(fused, tmp_path):
    # x → MatMul(W1) → h; norm(h + x + bias) → MatMul(W2) → mean over tokens; reference: float64
    # gradient×input with σ detached
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1, w2 = rng.standard_normal((8, 8)) * 0.5, rng.standard_normal((8, 3)) * 0.5
    gamma, beta, bias = rng.uniform(0.5, 1.5, 8), rng.uniform(-0.3, 0.3, 8), rng.uniform(-0.3, 0.3, 8)
    simplified = fused == "SkipSimplifiedLayerNormalization"
    inits = {"w1": w1, "w2": w2, "gamma": gamma, "beta": beta, "bias": bias}
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()]
    inits.append(numpy_helper.from_array(np.array([1], np.int64), "axes"))
    norm_in = ["h", "x", "gamma", "bias"] if simplified else ["h", "x", "gamma", "beta", "bias"]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node(fused, norm_in, ["n"], domain="com.microsoft", epsilon=1e-5, name="skipnorm"),
        helper.make_node("MatMul", ["n", "w2"], ["z"]),
        helper.make_node("ReduceMean", ["z", "axes"], ["y"], keepdims=0),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 4, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 3])], inits,
    )  # fmt: skip
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 10
    onnx.save(model, tmp_path / "fused.onnx")
    m = oe.load(tmp_path / "fused.onnx")
    x = rng.standard_normal((2, 4, 8)).astype(np.float32)
    e = oe.explain(m, x, "lrp", composite_options={"epsilon": 1e-9})
    assert e.extras["rules"]["skipnorm"] == f"{fused}: layer_norm"

    def sigma(c):
        return torch.sqrt(c.detach().pow(2).mean(-1, keepdim=True) + 1e-5)

    t = lambda a: torch.as_tensor(a, dtype=torch.float64)  # noqa: E731
    xd = t(x).requires_grad_(True)
    s = xd @ t(w1) + xd + t(bias)
    c = s if simplified else s - s.mean(-1, keepdim=True)
    n = c / sigma(c) * t(gamma) + (0 if simplified else t(beta))
    y = (n @ t(w2)).mean(1)
    (g,) = torch.autograd.grad(y.gather(1, torch.as_tensor(e.target)[:, None]).sum(), xd)
    want = (xd * g).detach().numpy()
    np.testing.assert_allclose(e.attribution, want, rtol=1e-3, atol=1e-4 * np.abs(want).max())


# ------------------------------------------------------------------------------ torchvision's ViT
def _vit_reference(net, x, target):
    """float64 AttnLRP reference for torchvision's VisionTransformer, its forward written out from the
    module's parameters (nn.MultiheadAttention included) and patched as in :func:`_reference`."""
    ref = _float64(net)
    x = x.double().requires_grad_(True)
    h = ref.conv_proj(x).flatten(2).transpose(1, 2)
    h = torch.cat([ref.class_token.expand(len(x), -1, -1), h], 1) + ref.encoder.pos_embedding
    for layer in ref.encoder.layers:
        att = layer.self_attention
        b, t, d = h.shape
        q, k, v = (_norm_sigma_detached(layer.ln_1, h) @ att.in_proj_weight.T + att.in_proj_bias).chunk(3, -1)
        q, k, v = (z.reshape(b, t, att.num_heads, -1).transpose(1, 2) for z in (q, k, v))
        p = torch.softmax(_half_gradient(q @ k.transpose(-2, -1)) / math.sqrt(d // att.num_heads), -1)
        a = _half_gradient(p @ v).transpose(1, 2).reshape(b, t, d)
        h = h + att.out_proj(a)
        mlp = layer.mlp
        h = h + mlp[3](_gelu_identity(mlp[0](_norm_sigma_detached(layer.ln_2, h))))
    out = ref.heads(_norm_sigma_detached(ref.encoder.ln, h)[:, 0])
    (g,) = torch.autograd.grad(out.gather(1, target[:, None]).sum(), x)
    return (x * g).detach().numpy()


@pytest.mark.parametrize("exporter", ["legacy", pytest.param("dynamo", marks=pytest.mark.slow)])
def test_attnlrp_on_torchvision_vit_matches_the_reference(exporter, tmp_path):
    from torchvision.models import VisionTransformer

    torch.manual_seed(0)
    net = VisionTransformer(image_size=16, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32,
                            num_classes=5).eval()  # fmt: skip
    nn.init.normal_(net.heads.head.weight, std=0.2)  # torchvision zero-initialises the head
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    m = oe.load(export(net, x, tmp_path / "vit.onnx", exporter))
    e = oe.explain(m, x.numpy(), "lrp", composite_options={"epsilon": 1e-9})
    assert e.extras["composite"] == "attnlrp" and not e.extras["fallback_nodes"]
    ref = _vit_reference(net, x, torch.as_tensor(e.target))
    assert _cosine(e.attribution, ref) >= 0.9999
    assert _rel(e.attribution, ref) <= 1e-3


def test_masked_attention_gives_finite_relevance_and_none_to_masked_keys(tmp_path):
    # an additive −inf mask on the scores (a causal mask): x·g would be NaN at the masked logits; AttnLRP
    # gives them nothing, and a key that no query may see gets no relevance through the scores
    import onnx
    from onnx import numpy_helper

    model = _one_attention_graph()
    g = model.graph
    mask = np.triu(np.full((3, 3), -np.inf, np.float32), 1)  # query t sees keys ≤ t
    g.initializer.append(numpy_helper.from_array(mask, "mask"))
    scores = next(n for n in g.node if n.name == "scores")
    scores.output[0] = "s_raw"
    from onnx import helper

    g.node.insert(
        list(g.node).index(scores) + 1, helper.make_node("Add", ["s_raw", "mask"], ["s"], name="mask")
    )
    onnx.save(model, tmp_path / "masked.onnx")
    m = oe.load(tmp_path / "masked.onnx")
    x = np.random.default_rng(0).standard_normal((2, 3, 12)).astype(np.float32)
    e = oe.explain(m, x, "lrp", target=[1, 2])  # outputs of query 0 (sees key 0 only)
    assert np.isfinite(e.attribution).all()
    k = e.attribution.reshape(2, 3, 3, 4)[:, :, 1]  # (sample, token, features) of K
    assert not k[:, 1:].any()  # keys 1 and 2 are masked for query 0
