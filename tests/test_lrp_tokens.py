"""LRP on token-id models: ``oe.explain(model, {"input_ids": ..., "attention_mask": ...}, "lrp")`` runs AttnLRP
on the graph cut at the embedding Gather. Oracle: a float64 hand-patched forward of the same Hugging Face BERT
(σ detached, bilinear gradients halved, the identity rule on GELU and the pooler's tanh); its
gradient×input at the word-embedding output, summed over the hidden dim, is AttnLRP's token relevance."""

from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import onnx_explain as oe

transformers = pytest.importorskip("transformers")

NAMES = ["input_ids", "attention_mask"]
VOCAB, T = 30, 6


def _randomise(model):
    """Weights large enough that every part of the network matters (HF initialises with std 0.02)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.3)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) * 0.4 - 0.2)
            elif isinstance(m, nn.Embedding):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g))
            elif isinstance(m, nn.LayerNorm):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) * 0.6 - 0.3)
    return model


def _tiny_bert(kind, path, eager=False):
    """A tiny random BERT (2 layers, d = 16) exported with the legacy exporter: ``(logits model, path)``.

    ``eager``: the eager attention (what onnxruntime's BERT optimizer fuses), and a ``token_type_ids``
    input (all zero in the tests); otherwise the default SDPA attention and ``input_ids``, ``attention_mask``.
    """
    cfg = transformers.BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=24, max_position_embeddings=32, num_labels=3,
                                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                                  **({"attn_implementation": "eager"} if eager else {}))  # fmt: skip
    torch.manual_seed(0)
    cls = (
        transformers.BertForSequenceClassification
        if kind == "cls"
        else transformers.BertForTokenClassification
    )
    bert = _randomise(cls(cfg).eval())
    names = NAMES + ["token_type_ids"] if eager else NAMES

    class Logits(nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = bert

        def forward(self, *inputs):
            return self.bert(**dict(zip(names, inputs, strict=True))).logits

    ids = torch.ones(2, T, dtype=torch.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Logits(), (ids,) * len(names), str(path), dynamo=False, opset_version=17,
                          input_names=names, output_names=["logits"],
                          dynamic_axes={n: {0: "batch", 1: "sequence"} for n in names})  # fmt: skip
    return bert, path


# ------------------------------------------------------------------------------ the patched reference
def _ln(ln, x):
    """LayerNorm with σ held constant (the mean is not detached, as LXT)."""
    c = x - x.mean(-1, keepdim=True)
    return c / torch.sqrt(c.detach().pow(2).mean(-1, keepdim=True) + ln.eps) * ln.weight + ln.bias


def _half(z):
    return 0.5 * z + 0.5 * z.detach()  # value unchanged, gradient halved: the uniform bilinear split


def _identity_rule(f, z):
    return z * (f(z) / z).detach()  # R_in = R_out


def _reference(bert, ids, mask):
    """float64 ``(logits, word embeddings)`` of the patched forward, the embeddings requiring grad."""
    m = copy.deepcopy(bert).double()
    core, emb = m.bert, m.bert.embeddings
    b, t = ids.shape
    word = emb.word_embeddings(ids).detach().requires_grad_(True)
    h = word + emb.token_type_embeddings(torch.zeros_like(ids)) + emb.position_embeddings(torch.arange(t))
    h = _ln(emb.LayerNorm, h)
    additive = (1.0 - mask[:, None, None, :].double()) * torch.finfo(torch.float64).min
    for layer in core.encoder.layer:
        att = layer.attention.self
        nh, dh = att.num_attention_heads, att.attention_head_size

        def heads(z, nh=nh, dh=dh):
            return z.reshape(b, t, nh, dh).transpose(1, 2)

        q, k, v = heads(att.query(h)), heads(att.key(h)), heads(att.value(h))
        p = torch.softmax(_half(q @ k.transpose(-2, -1)) / math.sqrt(dh) + additive, -1)
        a = _half(p @ v).transpose(1, 2).reshape(b, t, nh * dh)
        h = _ln(layer.attention.output.LayerNorm, layer.attention.output.dense(a) + h)
        inner = _identity_rule(nn.functional.gelu, layer.intermediate.dense(h))
        h = _ln(layer.output.LayerNorm, layer.output.dense(inner) + h)
    if core.pooler is not None and hasattr(m, "classifier") and m.classifier.out_features and h.dim() == 3:
        if isinstance(m, transformers.BertForSequenceClassification):
            h = _identity_rule(torch.tanh, core.pooler.dense(h[:, 0]))
    return m.classifier(h), word


def _token_relevance(bert, ids, mask, select):
    """Reference token relevances: gradient×input at the word embeddings, summed over the hidden dim, of
    ``select(logits)`` (one scalar per sample)."""
    logits, word = _reference(bert, torch.as_tensor(ids), torch.as_tensor(mask))
    (g,) = torch.autograd.grad(select(logits).sum(), word)
    return (word * g).sum(-1).detach().numpy(), select(logits).detach().numpy()


def _cosine(a, b):
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    return _tiny_bert("cls", tmp_path_factory.mktemp("bert") / "bert.onnx")


IDS = np.array([[2, 5, 7, 9, 11, 3], [2, 4, 8, 3, 0, 0], [2, 6, 6, 12, 13, 3]], np.int64)
MASK = (IDS != 0).astype(np.int64)


def test_attnlrp_on_token_ids_matches_the_patched_reference(classifier):
    bert, path = classifier
    m = oe.load(path)
    e = oe.explain(m, {"input_ids": IDS, "attention_mask": MASK}, "lrp")
    assert e.extras["composite"] == "attnlrp" and not e.extras["fallback_nodes"]
    assert "summed over the hidden dim" in e.extras["relevance_at"]
    assert e.attribution.shape == IDS.shape
    t = torch.as_tensor(e.target)
    ref, f = _token_relevance(bert, IDS, MASK, lambda out: out.gather(1, t[:, None]).squeeze(1))
    np.testing.assert_allclose(e.score, f, rtol=1e-4, atol=1e-5)
    assert _cosine(e.attribution, ref) >= 0.999  # measured 0.99999+
    assert (e.attribution[MASK == 0] == 0).all()  # padding: exactly zero
    # the embedding-level relevance is reported too, and sums to the token relevance
    np.testing.assert_allclose(e.extras["embedding_attribution"].sum(-1), e.attribution, rtol=1e-5, atol=1e-7)
    # a padded sample equals the same sample alone (its real tokens; its padding is 0)
    alone = oe.explain(
        m, {"input_ids": IDS[1:2, :4], "attention_mask": MASK[1:2, :4]}, "lrp", target=e.target[1:2]
    )
    np.testing.assert_allclose(
        e.attribution[1, :4], alone.attribution[0], rtol=1e-4, atol=1e-6 * np.abs(ref).max()
    )


def test_attnlrp_explains_one_position_of_a_token_tagger(tmp_path):
    bert, path = _tiny_bert("tagger", tmp_path / "tagger.onnx")
    m = oe.load(path)
    e = oe.explain(m, {"input_ids": IDS, "attention_mask": MASK}, "lrp", target=(2, 1))
    ref, f = _token_relevance(bert, IDS, MASK, lambda out: out[:, 2, 1])
    np.testing.assert_allclose(e.score, f, rtol=1e-4, atol=1e-5)
    assert _cosine(e.attribution, ref) >= 0.999
    assert (e.attribution[MASK == 0] == 0).all()


def test_a_composite_for_images_on_a_token_model_says_why(classifier):
    from onnx_explain.errors import OptionError

    m = oe.load(classifier[1])
    with pytest.raises(OptionError, match="does not fit this model.*has none"):
        oe.explain(
            m,
            {"input_ids": IDS, "attention_mask": MASK},
            "lrp",
            composite="epsilon_gamma_box",
            low=-3,
            high=3,
        )


@pytest.mark.slow
def test_attnlrp_on_token_ids_through_the_dynamo_exporter(classifier, tmp_path):
    # the same BERT through torch.export (SDPA decomposed otherwise): measured cos 0.99999999
    bert, _ = classifier

    class Logits(nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask).logits

    ids, mask = torch.as_tensor(IDS), torch.as_tensor(MASK)
    dims = ({0: torch.export.Dim("batch"), 1: torch.export.Dim("seq", max=32)},) * 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Logits(), (ids, mask), str(tmp_path / "d.onnx"), dynamo=True, input_names=NAMES,
                          output_names=["logits"], dynamic_shapes=dims)  # fmt: skip
    e = oe.explain(oe.load(tmp_path / "d.onnx"), {"input_ids": IDS, "attention_mask": MASK}, "lrp")
    t = torch.as_tensor(e.target)
    ref, _ = _token_relevance(bert, IDS, MASK, lambda out: out.gather(1, t[:, None]).squeeze(1))
    assert e.extras["composite"] == "attnlrp" and _cosine(e.attribution, ref) >= 0.999
    assert (e.attribution[MASK == 0] == 0).all()
