"""The shipped text classifier (models/textcls.onnx and its tokenizer): its stated accuracy holds on freshly
generated held-out sentences, the converted graph matches onnxruntime, and the command line explains
texts token by token exactly as the library does on the same batch."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import ROOT

import onnx_explain as oe

pytest.importorskip("tokenizers")

MODELS = ROOT / "models"
sys.path.insert(0, str(MODELS))

from build import SPECIAL_TOKENS, TEXT_CLASSES, encode_texts, text_label, textcls_data  # noqa: E402

from onnx_explain.app.text import TextEncoder  # noqa: E402
from onnx_explain.cli import main  # noqa: E402

TOKENIZER = MODELS / "textcls_tokenizer.json"
CARD = json.loads((MODELS / "textcls.json").read_text())


@pytest.fixture(scope="module")
def model():
    return oe.load(MODELS / "textcls.onnx")


def test_stated_accuracy_holds_on_fresh_held_out_sentences(model):
    texts, y = textcls_data(1000, seed=5)  # not the card's held-out set (seed 2), nor training (seed 1)
    enc = TextEncoder(TOKENIZER)
    x = enc.batch(enc.encode(texts), model)
    acc = float((model.predict(x).argmax(1) == y).mean())
    # binomial standard error on 1000 sentences at ~0.96 is ~0.006: 0.025 is four of them
    assert acc >= CARD["test_accuracy"] - 0.025, (acc, CARD["test_accuracy"])
    assert CARD["n_test"] == 2000 and CARD["classes"] == list(TEXT_CLASSES)
    ids, mask = encode_texts(enc.tok, texts[:50])  # the builder's encoding is the TextEncoder's
    np.testing.assert_array_equal(ids, x["input_ids"][:50, : ids.shape[1]])
    np.testing.assert_array_equal(mask, x["attention_mask"][:50, : ids.shape[1]])


def test_tokenizer_card_and_the_task_rule():
    enc = TextEncoder(TOKENIZER)
    assert {t: enc.tok.token_to_id(t) for t in SPECIAL_TOKENS} == CARD["special_tokens"]
    assert enc.pad_id == CARD["special_tokens"]["[PAD]"]
    e = enc.encode(["Not very GOOD, boring"])[0]
    assert e.tokens == ["[CLS]", "not", "very", "good", "[UNK]", "boring", "[SEP]"]  # ',' is not a word
    assert text_label("not very good boring".split()) == 0  # −2 − 1
    assert text_label("not the good".split()) == 2  # a negator counts only right before (an intensifier)
    assert text_label("good bad".split()) == 1


def test_converted_graph_matches_onnxruntime_with_padding(model):
    texts, _ = textcls_data(16, seed=6)
    enc = TextEncoder(TOKENIZER)
    x = enc.batch(enc.encode(texts), model)
    model.torch_module()
    assert model.parity.passed, model.parity
    alone = np.concatenate([model.predict(enc.batch(enc.encode([t]), model)) for t in texts[:4]])
    np.testing.assert_allclose(alone, model.predict(x)[:4], rtol=1e-5, atol=1e-5)  # padding changes nothing


def test_cli_explains_texts_per_token_like_the_library(model, tmp_path):
    texts = (MODELS / "textcls_texts.txt").read_text().splitlines()[:4]
    (tmp_path / "texts.txt").write_text("\n".join(texts) + "\n")
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["explain", str(MODELS / "textcls.onnx"), str(tmp_path / "texts.txt"),
                                    "--tokenizer", str(TOKENIZER), "-m", "gradient_x_input", "-o", str(out)])  # fmt: skip
    assert res.exit_code == 0, res.output
    enc = TextEncoder(TOKENIZER)
    encoded = enc.encode(texts)
    want = oe.explain(model, enc.batch(encoded, model), "gradient_x_input")
    for i, e in enumerate(encoded):
        rec = json.loads((out / f"texts_{i:04d}.json").read_text())
        assert rec["tokens"] == e.tokens and len(rec["scores"]) == len(e.tokens)
        np.testing.assert_allclose(rec["scores"], want.attribution[i, : len(e.tokens)], rtol=1e-5, atol=1e-6)
