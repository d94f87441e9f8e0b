"""Texts in, token attributions out: a tokenizer trained in the test (no downloads), a tiny BERT on its
vocabulary, the command line writing tokens, offsets, scores and an HTML view per text."""

from __future__ import annotations

import html
import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import tiny_bert, word_tokenizer

import onnx_explain as oe
from onnx_explain.app.text import TextEncoder
from onnx_explain.cli import main

SENTENCES = ["the film was great", "a dull and boring film", "great acting but a weak plot",
             "boring", "the plot was great and the acting was great too"]  # fmt: skip
NAMES = ["input_ids", "attention_mask", "token_type_ids"]


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    tokenizers = pytest.importorskip("tokenizers")
    folder = tmp_path_factory.mktemp("text")
    tok = tokenizers.Tokenizer.from_file(str(word_tokenizer(folder, SENTENCES)))
    path = tiny_bert(folder / "bert.onnx", tok.get_vocab_size(), NAMES)
    (folder / "texts.txt").write_text("\n".join(SENTENCES[:3]) + "\n")
    return folder, oe.load(path)


def test_texts_are_tokenised_padded_explained_and_written(text_model):
    folder, model = text_model
    out = folder / "out"
    res = CliRunner().invoke(main, ["explain", str(model.path), str(folder / "texts.txt"), "--tokenizer",
                                    str(folder / "tokenizer.json"), "-m", "gradient_x_input", "-t", "1",
                                    "-o", str(out)])  # fmt: skip
    assert res.exit_code == 0, res.output
    enc = TextEncoder(folder / "tokenizer.json")
    encoded = enc.encode(SENTENCES[:3])
    want = oe.explain(model, enc.batch(encoded, model), "gradient_x_input", target=1)
    for i, (text, e) in enumerate(zip(SENTENCES[:3], encoded, strict=True)):
        rec = json.loads((out / f"texts_{i:04d}.json").read_text())
        assert rec["text"] == text and rec["tokens"] == e.tokens  # real tokens only: no [PAD]
        assert rec["tokens"][0] == "[CLS]" and rec["tokens"][-1] == "[SEP]" and "[PAD]" not in rec["tokens"]
        for tok, (a, b) in zip(rec["tokens"][1:-1], rec["offsets"][1:-1], strict=True):
            assert text[a:b] == tok  # offsets point into the text
        np.testing.assert_allclose(rec["scores"], want.attribution[i, : len(e.tokens)], rtol=1e-5, atol=1e-7)
        page = (out / f"texts_{i:04d}.html").read_text()
        assert all(f">{html.escape(t)}</span>" in page for t in rec["tokens"])
    assert len(json.loads((out / "texts_0002.json").read_text())["tokens"]) == 8  # the longest, unpadded


def test_text_alone_equals_text_in_a_padded_batch(text_model):
    folder, model = text_model
    enc = TextEncoder(folder / "tokenizer.json")
    encoded = enc.encode(SENTENCES)
    batch = oe.explain(model, enc.batch(encoded, model), "integrated_gradients", target=0, n_steps=8)
    for i, e in enumerate(encoded):
        alone = oe.explain(model, enc.batch([e], model), "integrated_gradients", target=0, n_steps=8)
        n = len(e.tokens)
        np.testing.assert_allclose(alone.attribution[0, :n], batch.attribution[i, :n], rtol=1e-4, atol=1e-6)
        assert (batch.attribution[i, n:] == 0).all()  # padding: exactly zero


def test_bad_text_inputs_are_one_line_errors(text_model, tmp_path):
    folder, model = text_model
    (tmp_path / "bad.json").write_text("{not a tokenizer")
    res = CliRunner().invoke(main, ["explain", str(model.path), str(folder / "texts.txt"), "--tokenizer",
                                    str(tmp_path / "bad.json"), "-o", str(tmp_path / "o")])  # fmt: skip
    assert res.exit_code != 0 and "not a tokenizers file" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "o").exists()
    res = CliRunner().invoke(
        main, ["explain", str(model.path), str(folder / "texts.txt"), "-o", str(tmp_path / "p")]
    )
    assert res.exit_code != 0 and "texts need a tokenizer" in res.output
    long = TextEncoder(folder / "tokenizer.json", max_length=4).encode([SENTENCES[4]])[0]
    assert long.truncated and len(long.tokens) == 4


def test_token_colours_keep_their_text_readable():
    """Every token's ink has a WCAG contrast of at least 4.5:1 on its background (pure blue, the most
    negative token, takes white text: black on it is 2.4:1)."""
    import re

    from onnx_explain.app.text import _luminance, text_html

    scores = np.linspace(-1, 1, 41)
    page = text_html({"scores": scores, "tokens": [f"t{i}" for i in range(41)], "text": "x"}, "t")
    spans = re.findall(r"background:rgb\((\d+),(\d+),(\d+)\);color:(#fff|#000)", page)
    assert len(spans) == 41
    for r, g, b, ink in spans:
        lb, li = _luminance(int(r), int(g), int(b)), 1.0 if ink == "#fff" else 0.0
        assert (max(lb, li) + 0.05) / (min(lb, li) + 0.05) >= 4.5, (r, g, b, ink)
    assert spans[0][3] == "#fff" and spans[20][3] == "#000"
