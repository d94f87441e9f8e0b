"""Text models as they are shipped (issue 22 §6): a tokenizer.json that pads every text itself, per-token
scores made per method (the gradient's L2 norm, a relevance's sum), mean-pooled embedding targets over
real tokens only, and positions a mask leaves out that the model still reads."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_model, save, tiny_bert, vinfo, word_tokenizer
from onnx import TensorProto, helper, numpy_helper

import onnx_explain as oe
from onnx_explain.app.text import TextEncoder

SENTENCES = ["the film was great", "a dull and boring film", "great acting but a weak plot", "boring"]
NAMES = ["input_ids", "attention_mask"]


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    tokenizers = pytest.importorskip("tokenizers")
    folder = tmp_path_factory.mktemp("shipped")
    plain = word_tokenizer(folder, SENTENCES)
    tok = tokenizers.Tokenizer.from_file(str(plain))
    padded = folder / "padded.json"  # as many shipped tokenizer.json files are: padding to 16 built in
    tok.enable_padding(length=16, pad_id=tok.token_to_id("[PAD]"), pad_token="[PAD]")
    tok.save(str(padded))
    return plain, padded, oe.load(tiny_bert(folder / "bert.onnx", tok.get_vocab_size(), NAMES))


def test_a_tokenizer_that_pads_itself_gets_the_real_mask_and_no_extra_compute(bert):
    plain, padded, model = bert
    a, b = TextEncoder(plain), TextEncoder(padded)
    ea, eb = a.encode(SENTENCES), b.encode(SENTENCES)
    xa, xb = a.batch(ea, model), b.batch(eb, model)
    longest = max(len(e.ids) for e in ea)
    assert xb["input_ids"].shape == (4, longest)  # padded to the batch's longest text, not to 16
    for k in xa:
        np.testing.assert_array_equal(xa[k], xb[k])
    assert xb["attention_mask"].sum(1).tolist() == [len(e.ids) for e in ea]  # pads are marked, not ones
    ra = oe.explain(model, xa, "gradient_x_input", target=1)
    rb = oe.explain_text(model, SENTENCES, padded, "gradient_x_input", target=1)
    np.testing.assert_allclose(rb.attribution, ra.attribution, rtol=1e-6, atol=1e-8)


def test_token_scores_are_the_gradients_norm_and_a_relevances_sum(bert):
    plain, _, model = bert
    x = TextEncoder(plain).batch(TextEncoder(plain).encode(SENTENCES), model)
    g = oe.explain(model, x, "gradient", target=1)
    emb = g.extras["embedding_attribution"]
    assert g.extras["token_reduction"] == "l2"
    np.testing.assert_allclose(g.attribution, np.linalg.norm(emb, axis=-1), rtol=1e-5)
    # why: a LayerNorm follows BERT's embedding, so the gradient sums to ~0 over the embedding dims
    real = x["attention_mask"] == 1
    assert np.abs(emb.sum(-1))[real].max() < 1e-4 * np.abs(emb).sum(-1)[real].max()
    gi = oe.explain(model, x, "gradient_x_input", target=1)
    assert gi.extras["token_reduction"] == "sum"
    np.testing.assert_allclose(
        gi.attribution, gi.extras["embedding_attribution"].sum(-1), rtol=1e-5, atol=1e-8
    )
    sg = oe.explain(model, x, "smoothgrad", target=1, n_samples=4)
    assert sg.extras["token_reduction"] == "l2"
    assert oe.explain(model, x, "smoothgrad", target=1, n_samples=4, base="gradient_x_input").extras[
        "token_reduction"] == "sum"  # fmt: skip


def test_mean_pooled_embedding_target_averages_real_tokens_only(bert, tmp_path):
    plain, _, _ = bert
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=20, max_position_embeddings=32)  # fmt: skip
    torch.manual_seed(0)
    base = transformers.BertModel(cfg, add_pooling_layer=False).eval().requires_grad_(False)

    class Hidden(torch.nn.Module):
        def forward(self, ids, mask):
            return base(input_ids=ids, attention_mask=mask).last_hidden_state

    ids = torch.ones(2, 5, dtype=torch.int64)
    path = tmp_path / "embedder.onnx"
    torch.onnx.export(Hidden(), (ids, ids), str(path), dynamo=False, opset_version=17, input_names=NAMES,
                      output_names=["hidden"], dynamic_axes={n: {0: "b", 1: "s"} for n in NAMES})  # fmt: skip
    model = oe.load(path)
    enc = TextEncoder(plain)
    short, long = enc.encode(["boring"]), enc.encode(["great acting but a weak plot"])
    ref = np.random.default_rng(0).standard_normal(16).astype(np.float32)
    target = {"dot": ref, "pool": "mean"}
    alone = oe.explain(model, enc.batch(short, model), "gradient_x_input", target=target)
    both = oe.explain(model, enc.batch(short + long, model), "gradient_x_input", target=target)
    n = len(short[0].ids)
    np.testing.assert_allclose(both.attribution[0, :n], alone.attribution[0], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(both.score[0], alone.score[0], rtol=1e-5)
    # the score is the dot product of the mean over real tokens, as the sentence-transformers pooling
    with torch.no_grad():
        h = Hidden()(torch.from_numpy(enc.batch(short + long, model)["input_ids"]),
                     torch.from_numpy(enc.batch(short + long, model)["attention_mask"]))[0, :n].mean(0)  # fmt: skip
    assert both.score[0] == pytest.approx(float(h.numpy() @ ref), rel=1e-5)


def test_a_position_the_mask_leaves_out_keeps_its_attribution_when_the_model_reads_it(tmp_path):
    # a classifier that reads its last position whatever the mask says (a right-padded GPT-2 without a pad id)
    emb = numpy_helper.from_array(np.random.default_rng(0).standard_normal((10, 4)).astype(np.float32), "emb")
    w = numpy_helper.from_array(np.random.default_rng(1).standard_normal((4, 2)).astype(np.float32), "w")
    idx = numpy_helper.from_array(np.array(-1, np.int64), "idx")
    ax = numpy_helper.from_array(np.array([1], np.int64), "ax")
    nodes = [helper.make_node("Gather", ["emb", "ids"], ["e"]),
             helper.make_node("Gather", ["e", "idx"], ["last"], axis=1),
             helper.make_node("Cast", ["mask"], ["mf"], to=TensorProto.FLOAT),
             helper.make_node("ReduceSum", ["mf", "ax"], ["n"], keepdims=1),
             helper.make_node("MatMul", ["last", "w"], ["y0"]), helper.make_node("Mul", ["y0", "n"], ["y"])]  # fmt: skip
    model = make_model(nodes, [vinfo("ids", ["B", "T"], TensorProto.INT64), vinfo("mask", ["B", "T"], TensorProto.INT64)],
                       [vinfo("y", ["B", 2])], [emb, w, idx, ax], opset=13)  # fmt: skip
    m = oe.load(save(model, tmp_path / "reads_pad.onnx"), input="ids")
    ids = np.array([[3, 4, 5, 0], [6, 7, 8, 9]], np.int64)
    mask = np.array([[1, 1, 1, 0], [1, 1, 1, 1]], np.int64)
    e = oe.explain(m, {"ids": ids, "mask": mask}, "gradient_x_input", target=1)
    table = numpy_helper.to_array(emb)
    # the score is n * (emb[ids[:, -1]] @ w[:, 1]): all of it sits at the last position, a pad in row 0
    want = mask.sum(1) * (table[ids[:, -1]] @ numpy_helper.to_array(w)[:, 1])
    np.testing.assert_allclose(e.attribution[:, -1], want, rtol=1e-5)
    np.testing.assert_array_equal(e.attribution[:, :-1], 0)
