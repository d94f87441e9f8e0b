"""Generative exports (issue 25): tiny random Llama, GPT-2 and T5 exported by ``optimum-cli export onnx``
(``tests/fixtures/generation``, rebuilt by its script). Generated ids equal Hugging Face ``generate`` on the
same weights; attributions equal autograd on the Hugging Face source (teacher forced, at the token
embedding) and Captum's ``LLMGradientAttribution``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from onnx_explain.errors import InputDataError, InputFileError, InputSpecError, ModelLoadError, OptionError
from onnx_explain.generation import Sampling, explain_generation, generate, load_generative

transformers = pytest.importorskip("transformers")

HERE = Path(__file__).parent / "fixtures" / "generation"
CLASSES = {
    "llama": "LlamaForCausalLM",
    "gpt2": "GPT2LMHeadModel",
    "gpt2/no_cache": "GPT2LMHeadModel",
    "qwen2": "Qwen2ForCausalLM",
    "t5": "T5ForConditionalGeneration",
    "genai_llama": "LlamaForCausalLM",  # onnxruntime-genai's build: GroupQueryAttention, skip norms
}
#: where each export's Hugging Face checkpoint is
SOURCES = {"gpt2/no_cache": "gpt2", "genai_llama": "genai_llama/hf"}
PROMPTS = ["the cat sees a", "one large red river runs near the old city and", "dog"]


@pytest.fixture(scope="module")
def models():
    return {name: load_generative(HERE / name) for name in CLASSES}


@pytest.fixture(scope="module")
def hf():
    out = {}
    for name, cls in CLASSES.items():
        out[name] = getattr(transformers, cls).from_pretrained(HERE / SOURCES.get(name, name)).eval()
    return out


def _tok(name="llama"):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(HERE / name.split("/")[0] / "tokenizer.json"))


def _encode(texts, name="llama"):
    return [np.asarray(_tok(name).encode(t).ids, np.int64) for t in texts]


# ----------------------------------------------------------------------------------------------- layout
def test_layouts_are_read_from_names_and_shapes(models):
    llama, gpt2, nc, t5 = (models[n] for n in ("llama", "gpt2", "gpt2/no_cache", "t5"))
    assert llama.kind == gpt2.kind == nc.kind == "decoder" and t5.kind == "encoder-decoder"
    io = llama.decoder_io
    assert (io.ids, io.mask, io.positions, io.logits) == (
        "input_ids",
        "attention_mask",
        "position_ids",
        "logits",
    )
    assert len(io.cache) == 4 and {c.shape[1] for c in io.cache} == {2}  # grouped KV heads: 2 of 4
    assert all(c.present == f"present.{c.layer}.{c.kind}" for c in io.cache)
    assert not nc.decoder_io.has_cache and nc.vocab == 384
    assert t5.decoder.name == "decoder_model_merged.onnx" and t5.decoder_io.branch == "use_cache_branch"
    assert t5.attribution_decoder.name == "decoder_model.onnx"  # the same weights, no If
    assert {c.part for c in t5.decoder_io.cache} == {"self", "cross"}
    assert t5.settings.decoder_start == 1 and t5.settings.eos == [0]
    assert "KV cache: 2 layers x 2 heads" in llama.describe()["generation graph"]


def test_onnxruntime_genai_folder_is_read_from_its_config(models):
    gm = models["genai_llama"]
    io = gm.decoder_io
    assert io.positions is None and {c.shape[3] for c in io.cache} == {
        "kv_cache_dim"
    }  # head size from the config
    assert gm.genai["head_size"] == 16 and gm.settings.eos == [0] and gm.settings.pad == 1
    m = gm.explained()
    assert any(
        "intermediate shape annotations were dropped" in n for n in m.notes
    )  # the builder's rank-0 Constant
    assert m.op_histogram()["com.microsoft.GroupQueryAttention"] == 2


@pytest.mark.parametrize("composite", ["attnlrp", "cp_lrp"])
def test_lrp_of_fused_genai_graph_equals_lrp_of_the_same_weights_unfused(models, composite):
    fused, plain = models["genai_llama"], load_generative(HERE / "genai_llama" / "optimum")
    kw = {"continuation": " dog runs near", "method": "lrp", "composite": composite}
    a = explain_generation(fused, "the cat sees a", **kw)
    b = explain_generation(plain, "the cat sees a", **kw)
    assert a.extras["fallback_nodes"] == [] and b.extras["fallback_nodes"] == []
    # GroupQueryAttention under the patched-attention rule, skip norms by their Norm shares: as the unfused ops
    np.testing.assert_allclose(a.attribution, b.attribution, atol=1e-4 * np.abs(b.attribution).max())


def test_bad_inputs_get_one_line_errors(tmp_path):
    with pytest.raises(InputFileError, match="no such file"):
        load_generative(tmp_path / "missing")
    with pytest.raises(ModelLoadError, match="no decoder graph"):
        load_generative(tmp_path)
    digits = Path(__file__).parents[1] / "models" / "digits.onnx"
    with pytest.raises(InputSpecError, match="not a generative export: no token-id input"):
        load_generative(digits)
    (tmp_path / "model.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match="not a readable ONNX file"):
        load_generative(tmp_path)


# ------------------------------------------------------------------------------------------- generation
@pytest.mark.parametrize("name", list(CLASSES))
def test_greedy_ids_equal_hugging_face_generate(name, models, hf):
    gm, ref = models[name], hf[name]
    prompts = _encode(PROMPTS)
    cached = generate(gm, prompts, max_new_tokens=10)
    uncached = generate(gm, prompts, max_new_tokens=10, use_cache=False)
    for p, a, b in zip(prompts, cached, uncached, strict=True):
        ids = torch.as_tensor(p)[None]
        want = ref.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=10, do_sample=False)[0]
        want = want[1:] if gm.kind == "encoder-decoder" else want[len(p) :]  # T5 starts from its start token
        np.testing.assert_array_equal(a, want.numpy())
        np.testing.assert_array_equal(a, b)  # the cache gives the same ids as the whole sequence


@pytest.mark.parametrize(
    "name", ["llama", "gpt2", "genai_llama"]
)  # genai: no position ids, grouped by length
def test_a_left_padded_batch_equals_each_prompt_alone(name, models):
    prompts = _encode(PROMPTS)
    batch = generate(models[name], prompts, max_new_tokens=8)
    for p, got in zip(prompts, batch, strict=True):
        np.testing.assert_array_equal(got, generate(models[name], [p], max_new_tokens=8)[0])


def test_sampling_is_seeded_and_top_k_1_is_greedy(models):
    gm = models["llama"]
    prompts = _encode(PROMPTS[:2])
    greedy = generate(gm, prompts, 8)
    one = generate(gm, prompts, 8, Sampling(do_sample=True, top_k=1, seed=3))
    assert all(np.array_equal(a, b) for a, b in zip(greedy, one, strict=True))
    a = generate(gm, prompts, 8, Sampling(do_sample=True, seed=5, temperature=2.0))
    b = generate(gm, prompts, 8, Sampling(do_sample=True, seed=5, temperature=2.0))
    c = generate(gm, prompts, 8, Sampling(do_sample=True, seed=6, temperature=2.0))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_top_p_keeps_the_smallest_set_above_p():
    s = Sampling(do_sample=True, top_p=0.5, seed=0)
    logits = np.log(np.array([[0.05, 0.6, 0.3, 0.05]]))
    draws = {int(s.choose(logits)[0]) for _ in range(200)}
    assert draws == {1}  # 0.6 alone covers p = 0.5
    s = Sampling(do_sample=True, top_p=0.8, seed=0)
    assert {int(s.choose(logits)[0]) for _ in range(300)} == {1, 2}
    with pytest.raises(OptionError, match="top_p"):
        Sampling(top_p=0.0)
    with pytest.raises(OptionError, match="temperature"):
        Sampling(temperature=0)


# ------------------------------------------------------------------------------------------ attribution
def _hf_reference(ref, e, kind, output="logit", times_input=True):
    """Per target row: ∂t/∂e (× e) at the token embeddings of the Hugging Face model, summed over the
    hidden dim (or its L2 norm), columns as ours: a decoder's sequence, or source then decoder tokens."""
    ids = torch.as_tensor(e.ids)[None]
    table = ref.get_input_embeddings()
    if kind == "decoder":
        embs = [table(ids).detach().requires_grad_(True)]
        logits = ref(inputs_embeds=embs[0], attention_mask=torch.ones_like(ids)).logits
        offset = 0
    else:
        S = e.source_length
        embs = [
            table(ids[:, :S]).detach().requires_grad_(True),
            table(ids[:, S:]).detach().requires_grad_(True),
        ]
        logits = ref(inputs_embeds=embs[0], decoder_inputs_embeds=embs[1],
                     attention_mask=torch.ones(1, S, dtype=torch.long)).logits  # fmt: skip
        offset = S
    z = {"logit": logits, "log_prob": logits.log_softmax(-1), "prob": logits.softmax(-1)}[output]
    rows = []
    for col in e.target_columns:
        c = col - offset
        grads = torch.autograd.grad(z[0, c - 1, ids[0, col]], embs, retain_graph=True)
        parts = [(g * x if times_input else g)[0] for g, x in zip(grads, embs, strict=True)]
        rows.append(
            np.concatenate([(p.sum(-1) if times_input else p.norm(dim=-1)).detach().numpy() for p in parts])
        )
    return np.array(rows)


@pytest.mark.parametrize("name", list(CLASSES))
@pytest.mark.parametrize("output", ["logit", "log_prob", "prob"])  # a real file's conversion, end to end
def test_gradient_x_input_equals_autograd_on_the_hugging_face_source(name, output, models, hf):
    gm = models[name]
    e = explain_generation(gm, "the cat sees a dog", max_new_tokens=5, output=output)
    ref = _hf_reference(hf[name], e, gm.kind, output)
    scale = np.abs(ref).max()
    np.testing.assert_allclose(e.attribution, ref, atol=2e-5 * scale + 1e-7, rtol=0)
    for j, col in enumerate(e.target_columns):  # a later token never explains an earlier one
        assert np.all(e.attribution[j, col:] == 0.0)
    assert e.extras["token_reduction"] == "sum" and e.extras["output"] == output


def test_gradient_is_the_l2_norm_of_the_hugging_face_gradient(models, hf):
    e = explain_generation(models["gpt2"], "the cat sees a dog", max_new_tokens=4, method="gradient")
    ref = _hf_reference(hf["gpt2"], e, "decoder", times_input=False)
    np.testing.assert_allclose(e.attribution, ref, atol=2e-5 * np.abs(ref).max(), rtol=0)
    assert e.extras["token_reduction"] == "l2"


def test_scores_and_step_scores_are_the_hugging_face_ones(models, hf):
    e = explain_generation(models["llama"], "the cat sees a", max_new_tokens=6)
    ids = torch.as_tensor(e.ids)[None]
    with torch.no_grad():
        logits = hf["llama"](ids).logits[0]
    cols = e.target_columns
    z = logits[cols - 1, ids[0, cols]].numpy()
    np.testing.assert_allclose(e.score, z, atol=1e-5)
    lp = logits.log_softmax(-1)[cols - 1]
    np.testing.assert_allclose(e.probability, lp[np.arange(len(cols)), ids[0, cols]].exp().numpy(), rtol=1e-5)
    np.testing.assert_allclose(e.entropy, -(lp.exp() * lp).sum(-1).numpy(), rtol=1e-5)
    # the generated ids are the greedy ones
    want = generate(models["llama"], _encode(["the cat sees a"]), 6)[0]
    np.testing.assert_array_equal(e.ids[e.prompt_length :], want)


def test_integrated_gradients_equal_captum_llm_gradient_attribution(models, hf):
    from captum.attr import LayerIntegratedGradients, LLMGradientAttribution, TextTokenInput

    ref = hf["llama"]
    tok = transformers.PreTrainedTokenizerFast.from_pretrained(HERE / "llama")
    prompt, target = "the cat sees a", " one large"
    llm = LLMGradientAttribution(LayerIntegratedGradients(ref, ref.get_input_embeddings()), tok)
    res = llm.attribute(TextTokenInput(prompt, tok), target=target, n_steps=24, method="riemann_trapezoid")
    ours = explain_generation(models["llama"], prompt, continuation=target, method="integrated_gradients",
                              output="log_prob", n_steps=24, quadrature_method="captum_trapezoid",
                              baseline="token:0")  # fmt: skip
    n = ours.prompt_length
    # Captum's path moves the prompt only (earlier target tokens are appended fixed inside its forward): the
    # first target's attribution is the same computation, later ones differ by design (ours moves every
    # token before the target; checked against the Hugging Face path integral below)
    want = res.token_attr.detach().numpy()
    np.testing.assert_allclose(ours.attribution[0, :n], want[0], atol=1e-5 * np.abs(want).max() + 1e-7)
    from onnx_explain.methods.integrated_gradients import quadrature

    alphas, weights = quadrature("captum_trapezoid", 24)
    ids = torch.as_tensor(ours.ids)[None]
    e = ref.get_input_embeddings()(ids).detach()
    base = ref.get_input_embeddings()(torch.zeros_like(ids)).detach()
    rows = []
    for col in ours.target_columns:
        acc = torch.zeros_like(e)
        for a, w in zip(alphas, weights, strict=True):
            x = (base + float(a) * (e - base)).requires_grad_(True)
            lp = ref(inputs_embeds=x, attention_mask=torch.ones_like(ids)).logits.log_softmax(-1)
            (g,) = torch.autograd.grad(lp[0, col - 1, ids[0, col]], x)
            acc += float(w) * g
        rows.append(((e - base) * acc)[0].sum(-1).numpy())
    rows = np.array(rows)
    np.testing.assert_allclose(ours.attribution, rows, atol=2e-5 * np.abs(rows).max())


def test_gradient_x_input_equals_captum_llm_gradient_attribution(models, hf):
    from captum.attr import LayerGradientXActivation, LLMGradientAttribution, TextTokenInput

    ref = hf["gpt2"]
    tok = transformers.PreTrainedTokenizerFast.from_pretrained(HERE / "gpt2")
    llm = LLMGradientAttribution(LayerGradientXActivation(ref, ref.get_input_embeddings()), tok)
    res = llm.attribute(TextTokenInput("one large red river", tok), target=" runs near the")
    ours = explain_generation(
        models["gpt2"], "one large red river", continuation=" runs near the", output="log_prob"
    )
    want = res.token_attr.detach().numpy()
    np.testing.assert_allclose(
        ours.attribution[:, : ours.prompt_length], want, atol=1e-5 * np.abs(want).max()
    )


def test_batched_backward_equals_one_backward_per_target(models):
    gm = models["llama"]
    a = explain_generation(gm, "the cat sees a", max_new_tokens=6, method="integrated_gradients", n_steps=8)
    b = explain_generation(gm, "the cat sees a", max_new_tokens=6, method="integrated_gradients", n_steps=8,
                           batch_size=3)  # fmt: skip  # 3 rows per forward, one target per backward
    np.testing.assert_allclose(a.attribution, b.attribution, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(a.extras["delta"], b.extras["delta"], rtol=1e-5, atol=1e-6)
    # completeness: Σ IG + t(baseline) = t(x) up to the quadrature; many steps shrink δ
    fine = explain_generation(
        gm, "the cat sees a", max_new_tokens=6, method="integrated_gradients", n_steps=256
    )
    assert np.abs(fine.extras["delta"]).max() < np.abs(a.extras["delta"]).max()


def test_smoothgrad_without_noise_is_the_gradient(models):
    gm = models["gpt2"]
    cont = " sees a dog"
    g = explain_generation(gm, "the cat", continuation=cont, method="gradient")
    s = explain_generation(gm, "the cat", continuation=cont, method="smoothgrad", sigma=0.0, n_samples=4)
    np.testing.assert_allclose(s.attribution, g.attribution, rtol=1e-5, atol=1e-7)
    v = explain_generation(gm, "the cat", continuation=cont, method="smoothgrad", sigma=0.0,
                           n_samples=4, reduce="var")  # fmt: skip
    assert np.abs(v.attribution).max() < 1e-10
    noisy = explain_generation(gm, "the cat", continuation=cont, method="smoothgrad", n_samples=4)
    again = explain_generation(gm, "the cat", continuation=cont, method="smoothgrad", n_samples=4)
    np.testing.assert_array_equal(noisy.attribution, again.attribution)  # seeded
    assert not np.allclose(noisy.attribution, g.attribution)


def test_span_and_contrast_targets_are_sums_and_differences_of_rows(models):
    gm = models["llama"]
    tokens = explain_generation(gm, "the cat sees a", continuation=" one large red", output="log_prob")
    span = explain_generation(gm, "the cat sees a", continuation=" one large red", target="span")
    assert span.attribution.shape[0] == 1 and span.extras["output"] == "log_prob"
    np.testing.assert_allclose(span.attribution[0], tokens.attribution.sum(0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(span.score[0], tokens.score.sum(), rtol=1e-6)
    part = explain_generation(gm, "the cat sees a", continuation=" one large red", target="span", span=(1, 3))
    np.testing.assert_allclose(part.attribution[0], tokens.attribution[1:3].sum(0), rtol=1e-5, atol=1e-7)
    a = explain_generation(gm, "the cat sees a", continuation=" one large")
    b = explain_generation(gm, "the cat sees a", continuation=" two small")
    n = min(len(a.targets), len(b.targets))
    # the contrast row of token k: f(a_k) - f(b_k) at the same position, on a's sequence
    c = explain_generation(gm, "the cat sees a", continuation=" one large", contrast=" two small")
    assert "vs" in c.targets[0] and np.isnan(c.probability).all()
    assert c.attribution.shape[0] == n
    np.testing.assert_allclose(c.score[0], a.score[0] - b.score[0], rtol=1e-5)  # the first position is shared


def test_lrp_runs_with_the_batched_relevance_seed(models):
    gm = models["gpt2"]
    one = explain_generation(gm, "the cat sees a", continuation=" dog runs near", method="lrp", batch_size=1)
    many = explain_generation(gm, "the cat sees a", continuation=" dog runs near", method="lrp")
    np.testing.assert_allclose(one.attribution, many.attribution, rtol=1e-5, atol=1e-7)
    assert many.extras["composite"] == "attnlrp" and many.extras["fallback_nodes"] == []
    for j, col in enumerate(many.target_columns):
        assert np.all(many.attribution[j, col:] == 0.0)
    np.testing.assert_allclose(
        many.attribution.sum(1) - many.score, many.extras["delta"], rtol=1e-4, atol=1e-5
    )


def test_options_and_inputs_are_checked(models):
    gm = models["gpt2"]
    with pytest.raises(OptionError, match="unknown method 'rise' for generation"):
        explain_generation(gm, "a", method="rise")
    with pytest.raises(OptionError, match="n_stepz"):
        explain_generation(gm, "a", method="integrated_gradients", n_stepz=3)
    with pytest.raises(OptionError, match="output must be one of"):
        explain_generation(gm, "a", output="probs")
    with pytest.raises(InputDataError, match="2 continuations for 1 prompts"):
        explain_generation(gm, ["a"], continuation=["b", "c"])
    with pytest.raises(OptionError, match="span"):
        explain_generation(gm, "the cat", continuation=" one large", target="span", span=(1, 9))
    with pytest.raises(OptionError, match="baseline"):
        explain_generation(gm, "the cat", continuation=" one", method="integrated_gradients", baseline="blur")


def test_several_prompts_give_one_explanation_each_and_save(models, tmp_path):
    es = explain_generation(models["llama"], PROMPTS, max_new_tokens=4)
    assert len(es) == 3
    for p, e in zip(PROMPTS, es, strict=True):
        alone = explain_generation(models["llama"], p, max_new_tokens=4)
        np.testing.assert_allclose(e.attribution, alone.attribution, rtol=1e-5, atol=1e-7)
        assert e.prompt == p
    paths = es[0].save(tmp_path / "one")
    import json

    record = json.loads(paths[0].read_text())
    assert record["tokens"] == es[0].tokens and np.allclose(record["attribution"], es[0].attribution)
    # offsets: prompt tokens in the prompt, continuation tokens in the continuation
    e = es[1]
    assert len(e.offsets) == len(e.tokens)
    n = e.prompt_length
    assert all(e.prompt[a:b] == e.tokens[i].strip() for i, (a, b) in enumerate(e.offsets[:n]))
    assert e.offsets[-1][1] == len(e.continuation) and e.offsets[n][0] == 0
    with np.load(paths[1]) as z:
        np.testing.assert_array_equal(z["attribution"], es[0].attribution)
    html = paths[2].read_text()
    assert html.count("<tr") == 1 + es[0].target_columns.max()  # header + one row per attributed token


# ------------------------------------------------------------------------------------------------- CLI
def _cli(*args):
    from click.testing import CliRunner

    from onnx_explain.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def test_cli_explains_prompts_into_one_folder_per_item(models, tmp_path):
    import json

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        json.dumps({"prompt": "the cat sees a"}) + "\n" + json.dumps({"prompt": "dog", "continuation": " runs near"})
        + "\n" + json.dumps({"prompt": ""}) + "\n"
    )  # fmt: skip
    out = tmp_path / "out"
    r = _cli("explain-generation", HERE / "llama", "--prompts", prompts, "--out", out, "--max-new-tokens", 4,
             "-m", "integrated_gradients", "--steps", 8, "--output", "log_prob")  # fmt: skip
    assert r.exit_code == 1, r.output  # one item failed, the others finished
    lines = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert [x.get("folder") for x in lines] == ["00000", "00001", None]
    assert "no tokens" in lines[2]["error"] and "1 item(s) failed" in r.output
    # each item equals the API's explanation of it
    api = explain_generation(models["llama"], "dog", continuation=" runs near", method="integrated_gradients",
                             n_steps=8, output="log_prob")  # fmt: skip
    rec = json.loads((out / "00001" / "explanation.json").read_text())
    np.testing.assert_allclose(rec["attribution"], api.attribution, rtol=1e-5, atol=1e-7)
    assert rec["tokens"] == api.tokens and rec["extras"]["generated"] is False
    first = json.loads((out / "00000" / "explanation.json").read_text())
    assert first["extras"]["generated"] is True and len(first["targets"]) == 4
    summary = json.loads((out / "summary.json").read_text())
    assert summary["explained"] == 2 and summary["failed"] == 1
    # an encoder-decoder from the command line, with LRP across encoder and decoder
    r = _cli("explain-generation", HERE / "t5", "--prompt", "the cat sees a dog", "--out", tmp_path / "t5",
             "--max-new-tokens", 3, "-m", "lrp")  # fmt: skip
    assert r.exit_code == 0, r.output
    rec = json.loads((tmp_path / "t5" / "00000" / "explanation.json").read_text())
    api = explain_generation(models["t5"], "the cat sees a dog", max_new_tokens=3, method="lrp")
    np.testing.assert_allclose(rec["attribution"], api.attribution, rtol=1e-5, atol=1e-7)
    assert rec["source_length"] == api.source_length > 0


def test_cli_refuses_bad_options_up_front(tmp_path):
    out = tmp_path / "o"
    r = _cli("explain-generation", HERE / "llama", "--prompt", "a", "--out", out, "-m", "integrated_gradients",
             "--option", "n_stepz=3")  # fmt: skip
    assert r.exit_code == 2 and "n_stepz" in r.output and not out.exists()
    r = _cli("explain-generation", HERE / "llama", "--prompt", "a", "--out", out, "--sample", "--top-p", "0")
    assert r.exit_code == 2 and "top_p" in r.output and not out.exists()
    r = _cli("explain-generation", HERE / "llama", "--out", out)
    assert r.exit_code == 2 and "--prompt" in r.output
    r = _cli("explain-generation", tmp_path, "--prompt", "a", "--out", out)
    assert r.exit_code == 2 and "no decoder graph" in r.output
    r = _cli(
        "explain-generation",
        HERE / "llama",
        "--prompt",
        "a",
        "--out",
        out,
        "--tokenizer",
        tmp_path / "no.json",
    )
    assert r.exit_code == 2 and "tokenizer file not found" in r.output and not out.exists()


def test_info_describes_a_generative_folder_and_certifies_it():
    import json

    r = _cli("info", HERE / "t5", "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["kind"] == "encoder-decoder" and d["encoder"] == "encoder_model.onnx"
    assert set(d["conversion"]["parity"]) == {"encoder", "decoder"}
    r = _cli("info", HERE / "llama" / "model.onnx")  # a decoder file: its position table bounds the probe
    assert r.exit_code == 0 and "KV cache: 2 layers x 2 heads" in r.output and "max |diff|" in r.output


def test_group_query_attention_with_a_past_equals_onnxruntime():
    """The converter on a cached step (past of 5 positions, 2 new tokens): certified against onnxruntime."""
    import onnx_explain as oe

    path = HERE / "genai_llama" / "model.onnx"
    rng = np.random.default_rng(0)
    past = {f"past_key_values.{i}.{kv}": rng.standard_normal((2, 2, 5, 16)).astype(np.float32)
            for i in range(2) for kv in ("key", "value")}  # fmt: skip
    m = oe.load(path, input="input_ids", output="logits")
    data = {"input_ids": rng.integers(0, 384, (2, 2)), "attention_mask": np.ones((2, 7), np.int64), **past}
    module = m.torch_module(probe=data)
    assert m.parity.max_rel < 1e-5
    xe, comp = m.split_inputs(data)
    with torch.no_grad():
        got = module(torch.as_tensor(xe), {k: torch.as_tensor(v) for k, v in comp.items()}).numpy()
    np.testing.assert_allclose(got, m.predict(data), atol=1e-5 * np.abs(got).max())


# ------------------------------------------------------------------------------------ occlusion (onnxruntime)
@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_occlusion_equals_captum_feature_ablation(name, models, hf):
    from captum.attr import FeatureAblation, LLMAttribution, TextTokenInput

    tok = transformers.PreTrainedTokenizerFast.from_pretrained(HERE / name)
    e = explain_generation(models[name], "the cat sees a", continuation=" dog runs near", method="occlusion",
                           output="log_prob")  # fmt: skip
    # Captum's uncached forward (its default, cached token-by-token path drifts from it on transformers 5)
    res = LLMAttribution(FeatureAblation(hf[name]), tok).attribute(
        TextTokenInput("the cat sees a", tok, baselines=models[name].settings.pad_id), target=" dog runs near",
        use_cached_outputs=False,
    )  # fmt: skip
    want = res.token_attr.numpy()
    np.testing.assert_allclose(e.attribution[:, : e.prompt_length], want, atol=1e-5 * np.abs(want).max())
    for j, col in enumerate(e.target_columns):
        assert np.all(e.attribution[j, col:] == 0.0)


def test_occlusion_reuses_the_cache_and_equals_whole_sequences(models):
    kw = {"continuation": " dog runs near the", "method": "occlusion", "output": "log_prob"}
    cached = explain_generation(models["gpt2"], "the cat sees a", **kw, batch_size=3)
    whole = explain_generation(models["gpt2/no_cache"], "the cat sees a", **kw)
    np.testing.assert_allclose(cached.attribution, whole.attribution, atol=1e-5)
    L = len(cached.ids)
    assert cached.extras["tokens_run"] < whole.extras["tokens_run"] == L + (L - 1) * L  # the prefix is reused
    # onnxruntime-genai's GroupQueryAttention takes a past one sequence at a time: the same numbers
    fused = explain_generation(models["genai_llama"], "the cat sees a", **kw)
    plain = explain_generation(load_generative(HERE / "genai_llama" / "optimum"), "the cat sees a", **kw)
    np.testing.assert_allclose(
        fused.attribution, plain.attribution, atol=1e-4 * np.abs(plain.attribution).max()
    )


def test_occlusion_of_an_encoder_decoder_replaces_source_and_target_tokens(models, hf):
    gm, ref = models["t5"], hf["t5"]
    e = explain_generation(
        gm, "the cat sees a", continuation=" dog runs", method="occlusion", output="log_prob"
    )
    S, ids = e.source_length, torch.as_tensor(e.ids)

    def log_probs(src, tgt):
        with torch.no_grad():
            lp = ref(input_ids=src[None], decoder_input_ids=tgt[None]).logits.log_softmax(-1)[0]
        cols = torch.as_tensor(e.target_columns) - S
        return lp[cols - 1, ids[S:][cols]].numpy()  # the original target tokens

    base = log_probs(ids[:S], ids[S:])
    for c in [0, 2, S - 1, S + 1, S + 2]:  # source tokens and decoder tokens (not the start token)
        src, tgt = ids[:S].clone(), ids[S:].clone()
        (src if c < S else tgt)[c if c < S else c - S] = gm.settings.pad_id
        np.testing.assert_allclose(e.attribution[:, c], base - log_probs(src, tgt), atol=1e-5)
    assert np.all(e.attribution[:, S] == 0.0)  # the start token is never replaced
