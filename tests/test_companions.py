"""Companion inputs travel with their samples (attention masks, token type ids ...), token attribution
runs in batches, and integer inputs that are quantities are attributed at their cast.

Oracles: autograd on the torch source (a tiny Hugging Face BERT with random weights, built from a
config), onnxruntime on the file, and the per-sample computation.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from conftest import assert_gradients_match, make_model, save, vinfo
from onnx import helper

import onnx_explain as oe
from onnx_explain.errors import InputDataError
from onnx_explain.metrics import Predictor

NAMES = ["input_ids", "attention_mask", "token_type_ids"]


class _Classifier(torch.nn.Module):
    """A tiny BERT classifier returning its logits (HF models return a dict)."""

    def __init__(self):
        super().__init__()
        transformers = pytest.importorskip("transformers")
        cfg = transformers.BertConfig(
            vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24,
            max_position_embeddings=32, num_labels=3, type_vocab_size=2, hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )  # fmt: skip
        torch.manual_seed(0)
        self.bert = transformers.BertForSequenceClassification(cfg).eval()

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.bert(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).logits

    def from_embeddings(self, e, attention_mask, token_type_ids):
        return self.bert(inputs_embeds=e, attention_mask=attention_mask, token_type_ids=token_type_ids).logits


def _batch():
    """Three padded sequences of different lengths, different masks and segment ids."""
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 50, size=(3, 9)).astype(np.int64)
    lengths = [9, 6, 4]
    mask = np.zeros((3, 9), np.int64)
    types = np.zeros((3, 9), np.int64)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
        ids[b, n:] = 0
        types[b, n // 2 : n] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


@pytest.fixture(scope="module", params=["legacy", "dynamo"])
def bert(request, tmp_path_factory):
    src = _Classifier()
    inputs = _batch()
    args = tuple(torch.from_numpy(inputs[n]) for n in NAMES)
    path = tmp_path_factory.mktemp("bert") / f"bert_{request.param}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if request.param == "legacy":
            axes = {n: {0: "batch", 1: "sequence"} for n in NAMES}
            torch.onnx.export(src, args, str(path), dynamo=False, opset_version=17, input_names=NAMES,
                              output_names=["logits"], dynamic_axes=axes)  # fmt: skip
        else:
            batch, seq = torch.export.Dim("batch", min=1), torch.export.Dim("sequence", min=2, max=32)
            shapes = {n: {0: batch, 1: seq} for n in NAMES}
            torch.onnx.export(src, args, str(path), dynamo=True, input_names=NAMES, output_names=["logits"],
                              dynamic_shapes=shapes, external_data=False, verbose=False)  # fmt: skip
    return src, oe.load(path), inputs


def _source_gxi(src, inputs, targets):
    """gradient×input at the word embedding of the source model, per sample (autograd)."""
    ids = torch.from_numpy(inputs["input_ids"])
    e = src.bert.bert.embeddings.word_embeddings(ids).detach().requires_grad_(True)
    mask, types = (torch.from_numpy(inputs[n]) for n in NAMES[1:])
    out = src.from_embeddings(e, mask, types)
    out.gather(1, torch.as_tensor(targets)[:, None]).sum().backward()
    return (e * e.grad).detach().numpy()


def test_model_with_companions_loads_and_predicts(bert):
    src, model, inputs = bert
    assert model.input.name == "input_ids"  # the conventional name is the explained input
    assert {c.name for c in model.companions} == {"attention_mask", "token_type_ids"}
    with torch.no_grad():
        want = src(*(torch.from_numpy(inputs[n]) for n in NAMES)).numpy()
    np.testing.assert_allclose(model.predict(inputs), want, rtol=1e-4, atol=1e-5)
    for bs in (1, 2):
        np.testing.assert_allclose(model.predict(inputs, batch_size=bs), want, rtol=1e-4, atol=1e-5)
    assert model.describe()["per_sample_inputs"] == ["attention_mask", "token_type_ids"]


def test_token_attribution_equals_autograd_per_sample(bert):
    src, model, inputs = bert
    r = oe.explain(model, inputs, "gradient_x_input", target=[0, 1, 2])
    want = _source_gxi(src, inputs, [0, 1, 2])
    got = r.extras["embedding_attribution"]
    mask = inputs["attention_mask"].astype(bool)
    for b in range(3):
        assert_gradients_match(got[b][mask[b]], want[b][mask[b]], rel=1e-3, cos=0.999)
    # positions the mask leaves out: exactly zero, at the embedding and per token
    assert (got[~mask] == 0).all() and (r.attribution[~mask] == 0).all()
    np.testing.assert_allclose(r.attribution, got.sum(-1), rtol=1e-5, atol=1e-6)
    assert r.extras["mask_input"] == "attention_mask"


def test_token_attribution_is_batched_and_equals_per_sample(bert):
    _, model, inputs = bert
    kw = {"method": "integrated_gradients", "n_steps": 8, "target": "top:2"}
    whole = oe.explain(model, inputs, batch_size=64, **kw)
    small = oe.explain(model, inputs, batch_size=5, **kw)  # chunks cut across samples and steps
    np.testing.assert_allclose(small.attribution, whole.attribution, rtol=1e-4, atol=1e-6)
    for b in range(3):
        alone = oe.explain(model, {k: v[b : b + 1] for k, v in inputs.items()}, **kw)
        np.testing.assert_array_equal(alone.target[0], whole.target[b])
        np.testing.assert_allclose(alone.attribution[0], whole.attribution[b], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(alone.extras["delta"], whole.extras["delta"][2 * b : 2 * b + 2], atol=1e-4)


def test_bad_companion_inputs_are_refused_in_one_line(bert):
    _, model, inputs = bert
    ids = inputs["input_ids"]
    with pytest.raises(
        InputDataError, match="input '(attention_mask|token_type_ids)' needs a value per sample"
    ):
        model.predict(ids)
    with pytest.raises(InputDataError, match="needs a value per sample"):
        oe.explain(model, {"input_ids": ids, "attention_mask": inputs["attention_mask"]}, "gradient")
    with pytest.raises(
        InputDataError, match="different batch sizes: 'input_ids' has 3 rows, 'attention_mask' has 2"
    ):
        oe.explain(model, {**inputs, "attention_mask": inputs["attention_mask"][:2]}, "gradient")
    with pytest.raises(InputDataError, match="'attention_mask' has 5 on its dimension"):
        oe.explain(model, {**inputs, "attention_mask": inputs["attention_mask"][:, :5]}, "gradient")
    with pytest.raises(InputDataError, match="'mask' is not an input of the model"):
        model.predict({**inputs, "mask": ids})
    with pytest.raises(InputDataError, match="expects int64 values, got a float32 array"):
        model.predict({**inputs, "attention_mask": inputs["attention_mask"].astype(np.float32)})


def _add_model(tmp_path):
    """y = a + b with b a per-sample companion."""
    nodes = [helper.make_node("Add", ["a", "b"], ["y"])]
    proto = make_model(nodes, [vinfo("a", ["N", 3]), vinfo("b", ["N", 3])], [vinfo("y", ["N", 3])])
    return oe.load(save(proto, tmp_path / "add.onnx"), input="a")


def test_rows_run_with_their_sample_companions(tmp_path):
    model = _add_model(tmp_path)
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 4, 3)).astype(np.float32)
    # the metrics' predictor: 5 perturbed rows per sample, sample-major, chunks across samples
    rows = rng.standard_normal((20, 3)).astype(np.float32)
    pred = Predictor(model, output="output", batch_size=3, companions={"b": b})
    np.testing.assert_allclose(pred(rows), rows + np.repeat(b, 5, axis=0), rtol=1e-6)
    # the gradient methods: f = a_c + b_c, so IG from the zero baseline is exactly a_c per class c
    r = oe.explain(model, {"a": a, "b": b}, "integrated_gradients", target=[0, 1, 2, 1], n_steps=4,
                   output="output", batch_size=3)  # fmt: skip
    want = np.zeros_like(a)
    want[np.arange(4), [0, 1, 2, 1]] = a[np.arange(4), [0, 1, 2, 1]]
    np.testing.assert_allclose(r.attribution, want, atol=1e-6)
    np.testing.assert_allclose(r.score, (a + b)[np.arange(4), [0, 1, 2, 1]], rtol=1e-6)
    # an evaluation perturbs only the explained input: deleting every feature of a leaves b
    res = oe.evaluate(model, {"a": a, "b": b}, np.abs(a), "pixel_flipping", target=0, output="output",
                      n_steps=3, baseline=0.0)  # fmt: skip
    np.testing.assert_allclose(res["curve"][:, -1], b[:, 0], rtol=1e-6)


class _Uint8NHWC(torch.nn.Module):
    """A uint8 NHWC image model that transposes before casting (a common TF/Keras-style export)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.fc = torch.nn.Linear(4 * 6 * 6, 5)

    def forward(self, x):
        return self.float_forward(x.permute(0, 3, 1, 2).float())

    def float_forward(self, xf):  # xf NCHW float
        return self.fc(torch.relu(self.conv(xf / 255.0)).flatten(1))


def test_uint8_image_is_attributed_at_its_cast(tmp_path):
    src = _Uint8NHWC().eval()
    x = np.random.default_rng(0).integers(0, 256, size=(3, 8, 8, 3)).astype(np.uint8)
    path = tmp_path / "u8.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(src, (torch.from_numpy(x),), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], dynamic_axes={"x": {0: "batch"}})  # fmt: skip
    model = oe.load(path)
    r = oe.explain(model, x, "gradient", target=[0, 1, 2])
    xf = torch.from_numpy(x).float().requires_grad_(True)  # NHWC, the input's own layout
    src.float_forward(xf.permute(0, 3, 1, 2)).gather(1, torch.tensor([[0], [1], [2]])).sum().backward()
    assert r.attribution.shape == x.shape
    assert_gradients_match(r.attribution, xf.grad.numpy(), rel=1e-4, cos=0.9999)
    assert "quantity" in r.extras["integer_input"]


# ----------------------------------------------------------------------------- command line
def _cli(*args):
    from click.testing import CliRunner

    from onnx_explain.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def test_cli_reads_inputs_named_after_the_model_inputs(bert, tmp_path):
    _, model, inputs = bert
    np.savez(tmp_path / "batch.npz", **inputs)
    np.savez(tmp_path / "bad.npz", input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    out = tmp_path / "out"
    r = _cli("explain", model.path, tmp_path / "batch.npz", tmp_path / "bad.npz", "-m", "gradient_x_input",
             "-t", "1", "-o", out, "--heatmaps", "none")  # fmt: skip
    assert r.exit_code != 0  # the bad file's items are reported, the good ones written
    assert "bad.npz" in r.output and "'token_type_ids' needs a value per sample" in r.output
    want = oe.explain(model, inputs, "gradient_x_input", target=1)
    for b in range(3):
        with np.load(out / f"batch_{b:03d}.npz") as z:
            np.testing.assert_allclose(z["attribution"], want.attribution[b], rtol=1e-5, atol=1e-7)
            np.testing.assert_array_equal(z["input_attention_mask"], inputs["attention_mask"][b])
    info = _cli("info", model.path)
    assert info.exit_code == 0
    assert "input_ids" in info.output and "<- explained" in info.output
    assert info.output.count("<- per sample") == 2


def test_cli_evaluates_with_companions(tmp_path):
    model = _add_model(tmp_path)
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 4, 3)).astype(np.float32)
    np.savez(tmp_path / "ab.npz", a=a, b=b)
    out = tmp_path / "att"
    r = _cli("explain", model.path, tmp_path / "ab.npz", "-m", "gradient_x_input", "-t", "0",
             "--output", "output", "-o", out, "--heatmaps", "none", "--input-name", "a")  # fmt: skip
    assert r.exit_code == 0, r.output
    rep = tmp_path / "rep.json"
    r = _cli("evaluate", model.path, "-a", out, "--metric", "pixel_flipping", "--output", "output",
             "--option", "n_steps=3", "--option", "baseline=0", "--input-name", "a", "--out", rep)  # fmt: skip
    assert r.exit_code == 0, r.output
    import json

    curves = json.loads(rep.read_text())["metrics"]["pixel_flipping"]["curves"]
    np.testing.assert_allclose([curves[f"ab_{i:03d}"][-1] for i in range(4)], b[:, 0], rtol=1e-6)


def test_the_explained_input_can_be_chosen_per_call(tmp_path):
    model = _add_model(tmp_path)  # loaded explaining 'a'
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((2, 3, 3)).astype(np.float32)
    r = oe.explain(model, {"a": a, "b": b}, "integrated_gradients", target=2, n_steps=4, output="output",
                   input="b")  # fmt: skip
    want = np.zeros_like(b)
    want[:, 2] = b[:, 2]  # IG of f = a_2 + b_2 with respect to b, from b = 0
    np.testing.assert_allclose(r.attribution, want, atol=1e-6)
    assert model.input.name == "a" and model.with_input("b") is model.with_input("b")
    with pytest.raises(oe.InputSpecError, match="no input named 'c'"):
        oe.explain(model, {"a": a, "b": b}, "gradient", input="c")


class _DecoderStep(torch.nn.Module):
    """A decoder step as arabic-name-romanizer's (torch legacy export): it reads only the prefix's last id,
    embeds it (one vector per sample, not per id), and attends over encoder states ``memory``."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(12, 8)
        self.out = torch.nn.Linear(8, 5)

    def forward(self, prefix, memory):
        return torch.log_softmax(self.logits(prefix, memory), dim=-1)

    def logits(self, prefix, memory):  # what gradient methods explain (the scores before LogSoftmax)
        q = self.emb(prefix[:, -1])
        att = torch.softmax((memory @ q[:, :, None]).squeeze(-1), dim=1)
        return self.out(q + (att[:, :, None] * memory).sum(1))


def test_ids_selected_before_the_lookup_name_the_node_and_a_float_input_explains(tmp_path):
    from click.testing import CliRunner

    from onnx_explain.cli import main
    from onnx_explain.errors import InputSpecError
    from onnx_explain.methods import METHODS

    net = _DecoderStep().eval()
    rng = np.random.default_rng(0)
    prefix = rng.integers(0, 12, (2, 3)).astype(np.int64)
    memory = rng.standard_normal((2, 4, 8)).astype(np.float32)
    path = tmp_path / "decoder.onnx"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.from_numpy(prefix), torch.from_numpy(memory)), str(path), dynamo=False,
                          input_names=["prefix", "memory"], output_names=["logprobs"], opset_version=17,
                          dynamic_axes={"prefix": {0: "b", 1: "t"}, "memory": {0: "b", 1: "s"}})  # fmt: skip
    m = oe.load(path, input="prefix")
    with pytest.raises(
        InputSpecError, match=r"reaches floats first at node '[^']+' \(Gather\), of shape \(\d+, 8\)"
    ):
        oe.explain(m, {"prefix": prefix, "memory": memory}, "gradient", target=1)
    np.savez(tmp_path / "step.npz", prefix=prefix, memory=memory)
    r = CliRunner().invoke(main, ["explain", str(path), str(tmp_path / "step.npz"), "-m", "gradient",
                                  "--input-name", "prefix", "--out", str(tmp_path / "o")])  # fmt: skip
    assert (
        r.exit_code != 0
        and "(Gather)" in r.output
        and "--input-name" in r.output
        and "Traceback" not in r.output
    )
    auto = oe.explain(m, {"prefix": prefix, "memory": memory}, "auto", target=1)  # says why, runs black-box
    assert auto.method == "occlusion" and "no embedding to attribute the ids at" in auto.extras["auto"]
    report = oe.audit(
        m, {"prefix": prefix, "memory": memory}, metrics=["deletion"], sanity_layers=0
    ).to_dict()
    assert "gradient methods and LRP skipped" in report["conversion"]["note"] and not report["errors"]
    assert set(report["scores"]["deletion"]) and all(
        METHODS[k].backend == "onnxruntime" for k in report["scores"]["deletion"]
    )
    e = oe.explain(oe.load(path, input="memory"), {"prefix": prefix, "memory": memory}, "gradient", target=1)
    mem = torch.from_numpy(memory).requires_grad_(True)
    net.logits(torch.from_numpy(prefix), mem)[:, 1].sum().backward()
    np.testing.assert_allclose(e.attribution, mem.grad.numpy(), rtol=1e-5, atol=1e-6)


class _MaskedTagger(torch.nn.Module):
    """ids + attention mask (B, L) -> per-token scores (B, L, 3), a tagger as khmersm's or a NER head."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.emb = torch.nn.Embedding(20, 8)
        self.mix = torch.nn.Conv1d(8, 8, 3, padding=1)
        self.out = torch.nn.Linear(8, 3)

    def forward(self, input_ids, attention_mask):
        h = self.emb(input_ids) * attention_mask[..., None].to(torch.float32)
        h = torch.tanh(self.mix(h.transpose(1, 2))).transpose(1, 2)
        return self.out(h)


def test_audit_of_a_tagger_with_masks_scores_the_given_target(tmp_path):
    # the audit's LRP coverage check and its metrics read the given target (before: "a class alone does not
    # say what to explain" for a tagger's (B, L, C) output, and every metric refused its flattened rows)
    import json

    from click.testing import CliRunner

    from onnx_explain.cli import main

    net = _MaskedTagger().eval()
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 20, (3, 7)).astype(np.int64)
    mask = np.ones((3, 7), np.int64)
    mask[1, 5:] = 0
    path = tmp_path / "tagger.onnx"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.from_numpy(ids), torch.from_numpy(mask)), str(path), dynamo=False,
                          input_names=["input_ids", "attention_mask"], output_names=["scores"], opset_version=17,
                          dynamic_axes={n: {0: "b", 1: "len"} for n in ("input_ids", "attention_mask", "scores")})  # fmt: skip
    np.savez(tmp_path / "texts.npz", input_ids=ids, attention_mask=mask)
    r = CliRunner().invoke(main, ["audit", str(path), str(tmp_path / "texts.npz"), "--input-name", "input_ids",
                                  "-m", "gradient", "-m", "lrp", "--metric", "deletion", "--target", "all,predicted",
                                  "--out", str(tmp_path / "a")])  # fmt: skip
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert report["errors"] == {} and report["lrp_coverage"]["ok"]
    m = oe.load(path, input="input_ids")
    z = {"input_ids": ids, "attention_mask": mask}
    e = oe.explain(m, z, "gradient", target="all,predicted")
    want = oe.evaluate(m, z, e.attribution, "deletion", target="all,predicted")
    assert np.isclose(report["scores"]["deletion"]["gradient"]["mean"], np.mean(want["scores"]), rtol=1e-5)
