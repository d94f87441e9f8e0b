"""``oe.explain_text``: the Python twin of the command line's text front-end (tokenise, pad per batch with
the attention mask per sample, attribute each token), and the notebook views labelled with tokens."""

from __future__ import annotations

import html
import re

import numpy as np
import pytest
from conftest import tiny_bert, word_tokenizer

import onnx_explain as oe
from onnx_explain.app.text import TextEncoder
from onnx_explain.errors import InputDataError

SENTENCES = ["the film was great", "a dull and boring film", "great acting but a weak plot & <b>",
             "boring"]  # fmt: skip


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("explain_text")
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer.from_file(str(word_tokenizer(folder, SENTENCES)))
    path = tiny_bert(
        folder / "bert.onnx", tok.get_vocab_size(), ["input_ids", "attention_mask"], num_labels=3
    )
    return folder, oe.load(path)


def test_explain_text_equals_explain_on_the_tokenised_batch(text_model):
    folder, model = text_model
    e = oe.explain_text(model, SENTENCES, folder / "tokenizer.json", "gradient_x_input", target=1)
    enc = TextEncoder(folder / "tokenizer.json")
    encoded = enc.encode(SENTENCES)
    want = oe.explain(model, enc.batch(encoded, model), "gradient_x_input", target=1)
    np.testing.assert_array_equal(e.attribution, want.attribution)
    assert e.tokens == [x.tokens for x in encoded]
    for text, tokens, offsets in zip(SENTENCES, e.tokens, e.extras["offsets"], strict=True):
        assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
        assert [text[a:b] for a, b in offsets[1:-1]] == tokens[1:-1]
    # padding is exactly 0, and a text alone equals the same text in the padded batch
    for i, tokens in enumerate(e.tokens):
        assert np.all(e.attribution[i, len(tokens) :] == 0)
    alone = oe.explain_text(model, SENTENCES[3], folder / "tokenizer.json", "gradient_x_input", target=1)
    np.testing.assert_allclose(
        alone.attribution[0], e.attribution[3, : len(e.tokens[3])], rtol=1e-5, atol=1e-7
    )


def test_truncation_is_reported(text_model):
    folder, model = text_model
    e = oe.explain_text(model, SENTENCES[:2], folder / "tokenizer.json", "gradient", target=0, max_length=4)
    assert e.extras["truncated"].tolist() == [True, True]
    assert e.attribution.shape == (2, 4) and all(len(t) == 4 for t in e.tokens)


def test_notebook_view_and_plot_are_labelled_with_tokens(text_model):
    folder, model = text_model
    e = oe.explain_text(model, SENTENCES, folder / "tokenizer.json", "gradient_x_input", target="top:2")
    page = e._repr_html_()
    for b, tokens in enumerate(e.tokens):
        shown = re.findall(r"title='([^']*)'[^>]*>([^<]*)</span>", page.split("<td>")[b + 1])
        # every real token, escaped, with its own top-1 score on hover; no padding
        assert [html.unescape(t) for _, t in shown] == tokens
        np.testing.assert_allclose(
            [float(v) for v, _ in shown], e.attribution[b, 0, : len(tokens)], rtol=1e-3
        )
    assert "&lt;" in page and "&amp;" in page  # the text's markup characters are escaped, not rendered
    fig = e.plot(index=1)
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels == e.tokens[1]
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_bad_text_input_gives_one_line(text_model, tmp_path):
    folder, model = text_model
    with pytest.raises(InputDataError, match="no texts"):
        oe.explain_text(model, [], folder / "tokenizer.json")
    with pytest.raises(oe.InputFileError, match="tokenizer file not found"):
        oe.explain_text(model, "boring", tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(oe.InputFileError, match="not a tokenizers file"):
        oe.explain_text(model, "boring", bad)
