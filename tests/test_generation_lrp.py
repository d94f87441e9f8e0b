"""LRP of generated tokens against the float64 hand-patched reference (AttnLRP, CP-LRP) on a causal
transformer LM exported to ONNX: the reference is gradient × input of the patched forward (σ of the
LayerNorm detached, bilinear gradients halved — or attention probabilities held constant for CP-LRP — and
the identity rule on GELU), one target token at a time; ours attributes every target of the sequence in
one forward and a batched backward of the LRP graph."""

from __future__ import annotations

import copy
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from onnx_explain.generation import explain_generation

TOKENIZER = Path(__file__).parent / "fixtures" / "generation" / "gpt2" / "tokenizer.json"
VOCAB, MAX_T = 384, 32


def _half_gradient(z):
    return 0.5 * z + 0.5 * z.detach()


def _gelu_identity(h):
    y = nn.functional.gelu(h)
    return h * (y / h).detach()


def _norm(ln, x, patched):
    if not patched:
        return ln(x)
    centred = x - x.mean(-1, keepdim=True)
    sigma = torch.sqrt(centred.detach().pow(2).mean(-1, keepdim=True) + ln.eps)
    return centred / sigma * ln.weight + ln.bias


class CausalBlock(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc1, self.fc2 = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)
        self.register_buffer("mask", torch.triu(torch.full((MAX_T, MAX_T), -1e9), 1))

    def forward(self, x, patch):
        b, t, d = x.shape
        q, k, v = self.qkv(_norm(self.ln1, x, "norm" in patch)).chunk(3, dim=-1)
        q, k, v = (z.reshape(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        half = patch.get("bilinear", lambda z: z)
        scores = half(q @ k.transpose(-2, -1)) / math.sqrt(d // self.heads) + self.mask[:t, :t]
        attn = patch.get("softmax", lambda z: z)(torch.softmax(scores, -1))
        x = x + self.proj(half(attn @ v).transpose(1, 2).reshape(b, t, d))
        h = self.fc1(_norm(self.ln2, x, "norm" in patch))
        return x + self.fc2(patch.get("gelu", nn.functional.gelu)(h))


class CausalLM(nn.Module):
    def __init__(self, d=16, depth=2, heads=2):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, d)
        self.pos = nn.Parameter(torch.randn(1, MAX_T, d) * 0.5)
        self.blocks = nn.ModuleList(CausalBlock(d, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, VOCAB)

    def forward(self, input_ids, e=None, patch=None):
        patch = patch or {}
        h = (self.embed(input_ids) if e is None else e) + self.pos[:, : input_ids.shape[1]]
        for block in self.blocks:
            h = block(h, patch)
        return self.head(_norm(self.norm, h, "norm" in patch))


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    torch.manual_seed(0)
    net = CausalLM().eval()
    with torch.no_grad():
        for p in net.parameters():
            if p.dim() >= 2:
                p.mul_(3.0)
    path = tmp_path_factory.mktemp("lm") / "model.onnx"
    ids = torch.randint(0, VOCAB, (1, 7))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net, (ids,), str(path), dynamo=False, opset_version=17, input_names=["input_ids"],
            output_names=["logits"], dynamic_axes={"input_ids": {0: "batch", 1: "sequence"}},
        )  # fmt: skip
    return net, path


def _reference(net, ids, columns, cp):
    ref = copy.deepcopy(net).double()
    patch = {"norm": True, "gelu": _gelu_identity}
    patch.update({"softmax": torch.Tensor.detach} if cp else {"bilinear": _half_gradient})
    ids = torch.as_tensor(ids)[None]
    e = ref.embed(ids).detach().requires_grad_(True)
    out = ref(ids, e=e, patch=patch)
    rows = []
    for col in columns:
        (g,) = torch.autograd.grad(out[0, col - 1, ids[0, col]], e, retain_graph=True)
        rows.append((e * g)[0].sum(-1).detach().numpy())
    return np.array(rows)


@pytest.mark.parametrize("composite, cp", [("attnlrp", False), ("cp_lrp", True)])
def test_lrp_of_each_generated_token_equals_the_patched_reference(lm, composite, cp):
    net, path = lm
    text = {"prompt": "the cat sees a", "tokenizer": TOKENIZER, "continuation": " dog runs near the"}
    e = explain_generation(path, **text, method="lrp", composite=composite)
    assert e.extras["composite"] == composite and len(e.targets) >= 4
    want = _reference(net, e.ids, e.target_columns, cp)
    assert _cosine(e.attribution, want) >= 0.9999  # the layers' ε = 1e-6 is the gap
    tight = explain_generation(path, **text, method="lrp", composite=composite,
                               composite_options={"epsilon": 1e-9})  # fmt: skip
    assert _rel(tight.attribution, want) <= 5e-4  # float32
    # ... and generated greedily (no cache in this file: the whole sequence runs every step)
    g = explain_generation(path, "the cat sees a", tokenizer=TOKENIZER, max_new_tokens=5, method="lrp",
                           composite=composite, batch_size=2, composite_options={"epsilon": 1e-9})  # fmt: skip
    with torch.no_grad():
        ids = torch.as_tensor(g.ids[: g.prompt_length])[None]
        for _ in range(5):
            ids = torch.cat([ids, net(ids)[:, -1].argmax(-1, keepdim=True)], 1)
    np.testing.assert_array_equal(g.ids, ids[0].numpy())
    want = _reference(net, g.ids, g.target_columns, cp)
    assert _rel(g.attribution, want) <= 5e-4
    if not cp:  # the two composites differ
        other = explain_generation(
            path, **text, method="lrp", composite="cp_lrp", composite_options={"epsilon": 1e-9}
        )
        assert _cosine(other.attribution, tight.attribution) < 0.99


def _rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _cosine(a, b):
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# ------------------------------------------------------------------------------------- encoder-decoder (T5)
T5 = Path(__file__).parent / "fixtures" / "generation" / "t5"


def _t5_reference(ids: np.ndarray, S: int, columns, cp: bool) -> np.ndarray:
    """float64 gradient × input at T5's source and decoder token embeddings of its forward patched as AttnLRP
    (σ of every T5LayerNorm detached; each product of two activations — Q·Kᵀ, P·V — with its gradient halved,
    or the attention probabilities detached for CP-LRP; ReLU's identity rule is its gradient)."""
    from torch.overrides import TorchFunctionMode
    from transformers import T5ForConditionalGeneration
    from transformers.models.t5 import modeling_t5

    class Patch(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if cp and func in (torch.softmax, torch.Tensor.softmax, torch.nn.functional.softmax):
                return out.detach()
            two = func in (torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__)
            if not cp and two and all(isinstance(a, torch.Tensor) and a.requires_grad for a in args[:2]):
                return 0.5 * out + 0.5 * out.detach()
            return out

    def norm(self, h):  # T5LayerNorm with σ held constant
        var = h.to(torch.float64).pow(2).mean(-1, keepdim=True).detach()
        return self.weight * (h * torch.rsqrt(var + self.variance_epsilon))

    model = T5ForConditionalGeneration.from_pretrained(T5, attn_implementation="eager").double().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    ids = torch.as_tensor(ids)[None]
    table = model.get_input_embeddings()
    es, et = (table(ids[:, :S]).requires_grad_(True), table(ids[:, S:]).requires_grad_(True))
    original = modeling_t5.T5LayerNorm.forward
    modeling_t5.T5LayerNorm.forward = norm
    try:
        with Patch():
            logits = model(inputs_embeds=es, decoder_inputs_embeds=et).logits
    finally:
        modeling_t5.T5LayerNorm.forward = original
    rows = []
    for col in columns:
        c = col - S
        gs, gt = torch.autograd.grad(logits[0, c - 1, ids[0, col]], [es, et], retain_graph=True)
        rows.append(
            np.concatenate([(es * gs)[0].sum(-1).detach().numpy(), (et * gt)[0].sum(-1).detach().numpy()])
        )
    return np.array(rows)


@pytest.mark.parametrize("composite, cp", [("attnlrp", False), ("cp_lrp", True)])
def test_lrp_of_an_encoder_decoder_reaches_the_source_and_equals_the_patched_reference(composite, cp):
    e = explain_generation(T5, "the cat sees a dog", continuation=" runs near the", method="lrp", composite=composite,
                           composite_options={"epsilon": 1e-9})  # fmt: skip
    assert (
        e.extras["composite"] == {"encoder": composite, "decoder": composite}
        and not e.extras["fallback_nodes"]
    )
    S = e.source_length
    assert np.abs(e.attribution[:, :S]).sum(1).min() > 0  # relevance reaches the source through the encoder
    want = _t5_reference(e.ids, S, e.target_columns, cp)
    assert _rel(e.attribution, want) <= 5e-4
    if cp:  # T5 has no biases: CP-LRP conserves, over source and decoder tokens together
        np.testing.assert_allclose(e.attribution.sum(1), e.score, rtol=1e-4, atol=1e-5)
