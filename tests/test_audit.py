"""``oe.audit(model, x)``: the report object the command line's ``audit`` writes (issue 14 §4), and the
audit of text models (tokens shown per method).

Oracles: the command line's files for the same job; ``oe.explain`` / ``oe.evaluate`` on the same batch
(the report's attributions and scores are theirs); the tokenizer's own tokens.
"""

from __future__ import annotations

import html
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import onnx_explain as oe
from onnx_explain.app.audit import audit
from onnx_explain.cli import main
from onnx_explain.report import AuditReport

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "models" / "digits.onnx"
JOB = {"methods": ["gradient", "lrp"], "metrics": ["deletion", "faithfulness_correlation"], "max_items": 3}


@pytest.fixture(scope="module")
def digits_job(tmp_path_factory):
    folder = tmp_path_factory.mktemp("audit")
    x = np.load(ROOT / "models" / "samples" / "digits.npy")[:3]
    np.save(folder / "x.npy", x)
    res = CliRunner().invoke(main, ["audit", str(DIGITS), str(folder / "x.npy"), "--out", str(folder / "cli"),
                                    "--max-items", "3", "--method", "gradient", "--method", "lrp",
                                    "--metric", "deletion", "--metric", "faithfulness_correlation"])  # fmt: skip
    assert res.exit_code == 0, res.output
    r = audit(oe.load(DIGITS), [folder / "x.npy"], JOB["methods"], JOB["metrics"], max_items=3)
    return folder, x, r


def _untimed(d):
    """The report without its durations (``seconds``, ``convert_seconds`` ...), which differ per run."""
    if isinstance(d, dict):
        return {k: _untimed(v) for k, v in d.items() if not k.endswith("seconds")}
    return d


def _files(d: Path) -> set[str]:
    return {str(p.relative_to(d)) for p in d.rglob("*") if p.is_file()}


def test_the_report_object_saves_what_the_command_line_writes(digits_job):
    folder, x, r = digits_job
    assert isinstance(r, AuditReport)
    r.save(folder / "api")
    cli, api = folder / "cli", folder / "api"
    assert _files(cli) == _files(api) and "figures/heatmaps_gradient.png" in _files(api)
    want, got = (_untimed(json.loads((d / "report.json").read_text())) for d in (cli, api))
    assert got == want
    assert got == _untimed(r.to_dict())


def test_scores_and_attributions_are_those_of_explain_and_evaluate(digits_job):
    _, x, _ = digits_job
    model = oe.load(DIGITS)
    r = (
        oe.audit(model, x, ["gradient"], ["deletion"])
        if hasattr(oe, "audit")
        else audit(model, x, ["gradient"], ["deletion"])
    )
    e = oe.explain(model, x, "gradient", seed=0)
    np.testing.assert_array_equal(r.explanations["gradient"].attribution, e.attribution)
    d = oe.evaluate(model, x, e.attribution, "deletion", target=e.target, seed=0)
    np.testing.assert_allclose(r.scores["deletion"]["gradient"]["per_item"], d["scores"], rtol=1e-6)
    np.testing.assert_allclose(r.curves["deletion"]["gradient"], d["curve"].mean(0), rtol=1e-6)
    assert r.report["inputs"]["used"] == ["item_000", "item_001", "item_002"]
    assert r.provenance["sha256"] and r.provenance["settings"]["metrics"] == ["deletion"]
    assert r.best() == {"deletion": "gradient"}


def test_the_notebook_view_holds_every_score(digits_job):
    r = digits_job[2]
    page = r._repr_html_()
    n = 0
    for metric, per in r.scores.items():
        for s in per.values():
            assert f"<td title='{metric}'>{s['mean']:.4g}</td>" in page
            n += 1
    # a heatmap figure per method, deletion's mean curves, the sanity check's curves
    assert n == 4 and set(r.figures) == {"heatmaps_gradient", "heatmaps_lrp", "curve_deletion", "sanity"}
    assert page.count("data:image/png;base64,") == 4
    assert "<html" not in page and r.report["sha256"] in page


# ----------------------------------------------------------------------------- text models
TEXTS = ["the film was great", "a dull and boring film", "great acting but a weak plot"]


class _Bag(torch.nn.Module):
    """Token ids and an attention mask -> 2 logits: the masked mean of the embeddings, a linear layer."""

    def __init__(self, vocab):
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(vocab, 8)
        self.fc = torch.nn.Linear(8, 2)

    def forward(self, input_ids, attention_mask):
        m = attention_mask.unsqueeze(-1).float()
        return self.fc((self.emb(input_ids) * m).sum(1) / m.sum(1))


@pytest.fixture(scope="module")
def text_job(tmp_path_factory):
    tokenizers = pytest.importorskip("tokenizers")
    folder = tmp_path_factory.mktemp("text_audit")
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.train_from_iterator(TEXTS, tokenizers.trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]"]))
    tok.save(str(folder / "tokenizer.json"))
    ids = torch.ones(2, 5, dtype=torch.int64)
    names = ["input_ids", "attention_mask"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Bag(tok.get_vocab_size()).eval(), (ids, ids), str(folder / "bag.onnx"), dynamo=False,
                          opset_version=17, input_names=names, output_names=["logits"],
                          dynamic_axes={n: {0: "batch", 1: "sequence"} for n in names})  # fmt: skip
    (folder / "texts.txt").write_text("\n".join(TEXTS) + "\n")
    return folder, tok


def test_a_text_model_is_audited_with_its_tokens_shown_per_method(text_job):
    from onnx_explain.app.text import TextEncoder

    folder, tok = text_job
    out = folder / "out"
    res = CliRunner().invoke(main, ["audit", str(folder / "bag.onnx"), str(folder / "texts.txt"), "--tokenizer",
                                    str(folder / "tokenizer.json"), "--out", str(out), "--method", "gradient",
                                    "--method", "integrated_gradients"])  # fmt: skip
    assert res.exit_code == 0, res.output
    d = json.loads((out / "report.json").read_text())
    model = oe.load(folder / "bag.onnx")
    enc = TextEncoder(folder / "tokenizer.json")
    batch = enc.batch(enc.encode(TEXTS), model)  # the same padded batch, through the library
    want = {m: oe.explain(model, batch, m, seed=0, **o) for m, o in d["settings"]["methods"].items()}
    page = (out / "report.html").read_text()
    assert [t["tokens"] for t in d["texts"]] == [tok.encode(t).tokens for t in TEXTS]  # no padding
    for k, t in enumerate(d["texts"]):
        n = len(t["tokens"])
        for m, e in want.items():
            np.testing.assert_allclose(t["scores"][m], e.attribution[k][:n], rtol=1e-5, atol=1e-7)
        for token in t["tokens"]:
            assert html.escape(f">{html.escape(token)}</span>") in page  # inside each view's srcdoc
    assert set(d["settings"]["methods"]) == {"gradient", "integrated_gradients"}
    # LRP coverage is checked through the embedding cut: the rules are those LRP itself uses on the texts
    cov, lrp = d["lrp_coverage"], oe.explain(model, {k: v[:2] for k, v in batch.items()}, "lrp")
    assert cov["ok"] is True and cov["rules"] == lrp.extras["rules"] and cov["composite"] == "epsilon_plus"
    assert cov["relevance_at"] == lrp.extras["relevance_at"]
    token_metrics = [m for m in ("token_deletion", "token_insertion") if m in oe.METRICS]
    assert set(d["scores"]) == set(token_metrics)  # the token metrics, else none, said why
    assert bool(d.get("metrics_note")) == (not token_metrics)
    for metric, per in d["scores"].items():  # each scores every method as evaluate does on the batch
        assert set(per) == set(want)
        for m, e in want.items():
            r = oe.evaluate(model, batch, e.attribution, metric, target=e.target, seed=0,
                            tokenizer=str(folder / "tokenizer.json"))  # fmt: skip
            np.testing.assert_allclose(per[m]["per_item"], r["scores"], rtol=1e-6)
            assert np.isfinite(r["scores"]).all()


def test_a_bad_tokenizer_file_is_one_line_and_nothing_is_written(text_job, tmp_path):
    folder, _ = text_job
    (tmp_path / "bad.json").write_text("{not json")
    res = CliRunner().invoke(main, ["audit", str(folder / "bag.onnx"), str(folder / "texts.txt"), "--tokenizer",
                                    str(tmp_path / "bad.json"), "--out", str(tmp_path / "out")])  # fmt: skip
    assert res.exit_code != 0
    assert res.output.strip().count("\n") == 0 and "not a tokenizers file" in res.output
    assert not (tmp_path / "out").exists()


def test_a_detector_is_audited_for_a_box_of_its_boxes_scores_pair(tmp_path):
    from test_targets import _export_multi, _PairDetector

    from onnx_explain.detectors import join_box_outputs

    x = np.random.default_rng(9).standard_normal((2, 1, 16, 16)).astype(np.float32)
    path = _export_multi(
        _PairDetector().eval(), torch.from_numpy(x), tmp_path / "pair.onnx", ["boxes", "scores"]
    )
    np.save(tmp_path / "x.npy", x)
    res = CliRunner().invoke(main, ["audit", str(path), str(tmp_path / "x.npy"), "--output-name", "boxes",
                                    "--target", "box:9,5,13,9:1", "--method", "gradient", "--metric", "deletion",
                                    "--out", str(tmp_path / "out")])  # fmt: skip
    assert res.exit_code == 0, res.output
    d = json.loads((tmp_path / "out" / "report.json").read_text())
    assert d["errors"] == {} and d["settings"]["target"] == "box:9,5,13,9:1"
    joined = join_box_outputs(oe.load(path, output="boxes"))  # the oracle: the joined twin, by hand
    target = {"box": [9, 5, 13, 9], "class": 1, "layout": "xyxy"}
    e = oe.explain(joined, x, "gradient", target=target, seed=0)
    r = oe.evaluate(joined, x, e.attribution, "deletion", target=target, seed=0)
    np.testing.assert_allclose(d["scores"]["deletion"]["gradient"]["per_item"], r["scores"], rtol=1e-6)
    assert (tmp_path / "out" / "figures" / "heatmaps_gradient.png").is_file()
