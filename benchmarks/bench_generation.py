"""Generation and attribution of generated tokens (issue 25, §4): ours against a plain onnxruntime loop,
Captum's ``LLMGradientAttribution`` and inseq, on the same weights.

    python benchmarks/bench_generation.py                       # 64-token prompt, 32 generated tokens
    python benchmarks/bench_generation.py --venv ../venv-optimum --reps 3

The model is a small random Llama (d = 256, 4 layers, 8 heads with 4 KV heads, feed-forward 688, vocabulary
384, the test tokenizer's), exported by ``optimum-cli export onnx --task text-generation-with-past`` in the ``transformers < 5``
environment given by ``--venv`` (Optimum and inseq pin it; built as in
``tests/fixtures/generation/make_generation_fixtures.py``, plus ``pip install inseq``). The same checkpoint
is loaded by this environment's ``transformers`` for Captum, and by the venv's for inseq (a subprocess:
``--inseq-worker``). Every timing is the median of ``--reps`` runs after one warm-up, with ``--threads``
torch and onnxruntime threads, one after the other in one run:

- generation: ``onnx_explain.generation.generate`` (greedy, KV cache) against the floor, a bare loop over the
  same onnxruntime session feeding the cache by hand;
- attribution of the 32 generated tokens (teacher forced) to the 96-token sequence: ours
  (``explain_generation(continuation=...)``: one forward, a batched backward per block of targets, on the
  converted ONNX graph) against Captum (``LayerGradientXActivation`` / ``LayerIntegratedGradients`` on the
  embedding inside ``LLMGradientAttribution``: one forward and backward per generated token) and inseq
  (``input_x_gradient`` / ``integrated_gradients``, step by step), each explaining the log-probability
  (inseq: the logit, it has no log-probability step function; the cost is the same);
  the torch forward+backward of the Hugging Face model over the whole sequence is the floor.

Results go to ``benchmarks/results/generation.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
FIXTURE_TOKENIZER = ROOT / "tests" / "fixtures" / "generation" / "llama"


def build(folder: Path) -> None:
    """(In the venv.) A small random Llama, its checkpoint, tokenizer and Optimum export in ``folder``."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=384, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                      num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=512,
                      bos_token_id=0, eos_token_id=0, pad_token_id=1, tie_word_embeddings=False)  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    model.generation_config = GenerationConfig(pad_token_id=1, do_sample=False)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    for f in FIXTURE_TOKENIZER.glob("*token*"):
        shutil.copy(f, folder / f.name)
    subprocess.run([str(Path(sys.executable).parent / "optimum-cli"), "export", "onnx", "-m", str(folder),
                    "--task", "text-generation-with-past", str(folder / "onnx")], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    for f in (folder / "onnx").iterdir():
        if f.suffix in (".onnx", ".onnx_data") or f.name.endswith(".onnx.data"):
            f.rename(folder / f.name)
    shutil.rmtree(folder / "onnx")


def _median(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _paired(a, b, reps: int) -> tuple[float, float]:
    """Medians of ``a`` and ``b`` timed alternately (the machine's drift hits both alike)."""
    a(), b()
    ta, tb = [], []
    for _ in range(reps):
        t = time.perf_counter()
        a()
        ta.append(time.perf_counter() - t)
        t = time.perf_counter()
        b()
        tb.append(time.perf_counter() - t)
    return statistics.median(ta), statistics.median(tb)


def inseq_worker(folder: Path, prompt: str, continuation: str, reps: int, threads: int, steps: int) -> None:
    """(In the venv.) inseq's timings, printed as JSON."""
    import inseq
    import torch

    torch.set_num_threads(threads)
    warnings.filterwarnings("ignore")
    out = {}
    for method, kw in (("input_x_gradient", {}), ("integrated_gradients", {"n_steps": steps})):
        model = inseq.load_model(str(folder), method)

        def run(model=model, kw=kw):
            return model.attribute(prompt, prompt + continuation, attribute_target=False, show_progress=False,
                                   step_scores=[], attributed_fn="logit", **kw)  # fmt: skip

        out[method] = _median(run, reps)
        if method == "input_x_gradient":  # its numbers, for the agreement column (NaN: after the target)
            attr = run().sequence_attributions[0].target_attributions.sum(-1)
            out["input_x_gradient_matrix"] = torch.nan_to_num(attr, nan=0.0).T.tolist()
    print(json.dumps(out))


def lxt_worker(folder: Path, ids: list[int], start: int, reps: int, threads: int) -> None:
    """(In the venv.) LXT 2.1's efficient AttnLRP on the Hugging Face Llama: one forward, one backward per
    target token (retain_graph), relevance = embedding ⊙ gradient; printed as JSON."""
    import torch
    from lxt.efficient import monkey_patch
    from transformers import LlamaForCausalLM
    from transformers.models.llama import modeling_llama

    torch.set_num_threads(threads)
    warnings.filterwarnings("ignore")
    monkey_patch(modeling_llama, verbose=False)
    model = LlamaForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    for p in model.parameters():
        p.requires_grad_(False)
    seq = torch.as_tensor(ids)[None]

    def run():
        e = model.get_input_embeddings()(seq).detach().requires_grad_(True)
        logits = model(inputs_embeds=e, use_cache=False).logits
        rows = []
        for q in range(start, seq.shape[1]):
            (g,) = torch.autograd.grad(logits[0, q - 1, seq[0, q]], e, retain_graph=True)
            rows.append((e * g).sum(-1))
        return rows

    print(json.dumps({"lrp": _median(run, reps)}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--venv", default=str(ROOT.parent / "venv-optimum"))
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=16, help="Integrated Gradients' steps")
    ap.add_argument("--out", default=str(HERE / "results" / "generation.md"))
    ap.add_argument("--build", help=argparse.SUPPRESS)
    ap.add_argument("--inseq-worker", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--lxt-worker", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.build:
        return build(Path(args.build))
    if args.lxt_worker:
        folder, ids, start = args.lxt_worker
        return lxt_worker(Path(folder), json.loads(ids), int(start), args.reps, args.threads)
    if args.inseq_worker:
        folder, prompt, cont = args.inseq_worker
        return inseq_worker(Path(folder), prompt, cont, args.reps, args.threads, args.steps)
    warnings.filterwarnings("ignore")
    os.environ["ONNX_EXPLAIN_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    venv_python = Path(args.venv) / "bin" / "python"
    work = Path(tempfile.mkdtemp(prefix="bench_generation_"))
    folder = work / "llama-small"
    subprocess.run([str(venv_python), __file__, "--build", str(folder)], check=True)

    import transformers
    from tokenizers import Tokenizer

    from onnx_explain.generation import explain_generation, generate, load_generative

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    words = "the quick red cat sees a large old house near the river and then runs into the dark city".split()
    text = ""
    while len(tok.encode(text).ids) < args.prompt_tokens:
        text += (" " if text else "") + words[len(text.split()) % len(words)]
    ids = np.asarray(tok.encode(text).ids[: args.prompt_tokens], np.int64)
    prompt = tok.decode(ids.tolist())
    ids = np.asarray(tok.encode(prompt).ids, np.int64)
    gm = load_generative(folder, device="cpu")
    gm.settings.eos = []  # always --new-tokens tokens, as the bare loop (a random model may emit its eos)
    rows = {}

    # ---- generation
    new = generate(gm, [ids], args.new_tokens)[0]
    assert len(new) == args.new_tokens
    session = gm.session(gm.decoder)
    io = gm.decoder_io

    def bare_loop():
        seq = ids[None]
        feeds = {io.ids: seq, io.mask: np.ones_like(seq), io.positions: np.arange(seq.shape[1])[None]}
        feeds.update(gm.empty_cache(io, 1))
        names = [io.logits, *[c.present for c in io.cache]]
        for _ in range(args.new_tokens):
            out = session.run(names, feeds)
            nxt = out[0][:, -1].argmax(-1)[:, None]
            L = feeds[io.mask].shape[1]
            feeds = {io.ids: nxt, io.mask: np.ones((1, L + 1), np.int64), io.positions: np.array([[L]])}
            feeds.update({c.name: v for c, v in zip(io.cache, out[1:], strict=True)})

    t_gen, t_bare = _paired(lambda: generate(gm, [ids], args.new_tokens), bare_loop, 3 * args.reps)
    rows["generation (32 tokens, KV cache)"] = {"ours": t_gen, "floor: bare onnxruntime loop": t_bare}

    # ---- attribution
    # teacher forced on a text continuation of --new-tokens tokens (a random model's own ids need not
    # survive decoding and re-encoding, and every tool must explain the same tokens)
    cont_text = ""
    while len(tok.encode(cont_text, add_special_tokens=False).ids) < args.new_tokens:
        cont_text += " " + words[(len(cont_text.split()) * 7 + 3) % len(words)]
    cont_ids = np.asarray(tok.encode(cont_text, add_special_tokens=False).ids, np.int64)
    P = len(cont_ids)
    hf = transformers.LlamaForCausalLM.from_pretrained(folder).eval()
    seq = torch.as_tensor(np.concatenate([ids, cont_ids]))[None]

    def floor():
        e = hf.get_input_embeddings()(seq).detach().requires_grad_(True)
        lp = hf(inputs_embeds=e).logits.log_softmax(-1)
        lp[0, -1, 0].backward()

    def floor_rows():  # the least autograd work for P rows of the Jacobian: one forward, P backwards
        e = hf.get_input_embeddings()(seq).detach().requires_grad_(True)
        lp = hf(inputs_embeds=e).logits.log_softmax(-1)
        cols = torch.arange(len(ids), seq.shape[1])
        picked = lp[0, cols - 1, seq[0, cols]]
        for j in range(P):
            torch.autograd.grad(picked[j], e, retain_graph=True)

    t_floor = _median(floor, args.reps)
    t_rows = _median(floor_rows, args.reps)
    from captum.attr import (
        LayerGradientXActivation,
        LayerIntegratedGradients,
        LLMGradientAttribution,
        TextTokenInput,
    )

    hft = transformers.PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
    captum_gxi = LLMGradientAttribution(LayerGradientXActivation(hf, hf.get_input_embeddings()), hft)
    captum_ig = LLMGradientAttribution(LayerIntegratedGradients(hf, hf.get_input_embeddings()), hft)
    inp = TextTokenInput(prompt, hft)
    for method, captum, kw in (
        ("gradient_x_input", captum_gxi, {}),
        (
            "integrated_gradients",
            captum_ig,
            {"n_steps": args.steps, "quadrature_method": "riemann_trapezoid"},
        ),
    ):
        ours_kw = {"n_steps": args.steps} if method == "integrated_gradients" else {}
        t_ours = _median(lambda m=method, k=ours_kw: explain_generation(gm, prompt, continuation=cont_text, method=m,
                                                                       output="log_prob", **k), args.reps)  # fmt: skip
        ckw = {"n_steps": args.steps, "method": "riemann_trapezoid"} if kw else {}
        t_captum = _median(lambda c=captum, k=ckw: c.attribute(inp, target=cont_text, **k), args.reps)
        rows[f"{method} of {P} tokens"] = {"ours": t_ours, "Captum LLMGradientAttribution": t_captum}
        n = 1 if method == "gradient_x_input" else args.steps
        rows[f"{method} of {P} tokens"][f"floor: HF 1 forward + {P} backwards" + (f", x {n} steps" if n > 1 else "")] = (
            t_rows * n)  # fmt: skip
        rows[f"{method} of {P} tokens"]["HF one forward+backward (reference scale)"] = t_floor
    try:
        got = subprocess.run([str(venv_python), __file__, "--inseq-worker", str(folder), prompt, cont_text,
                              "--reps", str(args.reps), "--threads", str(args.threads), "--steps", str(args.steps)],
                             check=True, capture_output=True, text=True)  # fmt: skip
        inseq_t = json.loads(got.stdout.strip().splitlines()[-1])
        rows[f"gradient_x_input of {P} tokens"]["inseq"] = inseq_t["input_x_gradient"]
        ours = explain_generation(gm, prompt, continuation=cont_text, output="logit").attribution
        theirs = np.asarray(inseq_t["input_x_gradient_matrix"])
        agreement = (
            float(np.abs(ours - theirs).max() / np.abs(theirs).max()) if ours.shape == theirs.shape else None
        )
        rows[f"integrated_gradients of {P} tokens"]["inseq"] = inseq_t["integrated_gradients"]
    except (subprocess.CalledProcessError, json.JSONDecodeError, KeyError, IndexError) as exc:
        print(f"inseq not measured: {exc}", file=sys.stderr)
    # ---- LRP (AttnLRP) against LXT, and occlusion against Captum's FeatureAblation
    t_lrp = _median(lambda: explain_generation(gm, prompt, continuation=cont_text, method="lrp"), args.reps)
    rows[f"lrp (AttnLRP) of {P} tokens"] = {"ours": t_lrp, f"floor: HF 1 forward + {P} backwards": t_rows}
    try:
        got = subprocess.run([str(venv_python), __file__, "--lxt-worker", str(folder), json.dumps(seq[0].tolist()),
                              str(len(ids)), "--reps", str(args.reps), "--threads", str(args.threads)],
                             check=True, capture_output=True, text=True)  # fmt: skip
        rows[f"lrp (AttnLRP) of {P} tokens"]["LXT 2.1 (1 forward + P backwards)"] = json.loads(
            got.stdout.strip().splitlines()[-1]
        )["lrp"]
    except (subprocess.CalledProcessError, json.JSONDecodeError, KeyError, IndexError) as exc:
        print(f"LXT not measured: {exc}", file=sys.stderr)
    from captum.attr import FeatureAblation, LLMAttribution

    t_occ = _median(lambda: explain_generation(gm, prompt, continuation=cont_text, method="occlusion",
                                               output="log_prob"), args.reps)  # fmt: skip
    fa = LLMAttribution(FeatureAblation(hf), hft)
    t_fa = _median(
        lambda: fa.attribute(TextTokenInput(prompt, hft, baselines=1), target=cont_text), args.reps
    )
    t_fa_seq = _median(lambda: fa.attribute(TextTokenInput(prompt, hft, baselines=1), target=cont_text,
                                            forward_in_tokens=False), args.reps)  # fmt: skip
    rows[f"occlusion of {P} tokens ({len(ids)} prompt tokens replaced; ours: every token)"] = {
        "ours": t_occ, "Captum LLMAttribution(FeatureAblation), cached token by token": t_fa,
        "Captum, one forward per perturbation (forward_in_tokens=False)": t_fa_seq,
    }  # fmt: skip
    shutil.rmtree(work, ignore_errors=True)
    lines = [
        "# Generation and attribution of generated tokens (issue 25)",
        "",
        "Agreement: our gradient x input of every generated token (logit) against inseq's `input_x_gradient` "
        "on the same weights: max |difference| / max |inseq| = "
        + (f"{agreement:.1e}" if isinstance(locals().get("agreement"), float) else "not measured")
        + ".",
        "",
        f"`python benchmarks/bench_generation.py` — {platform.processor() or platform.machine()}, {args.threads} "
        f"threads, median of {args.reps} after a warm-up; a random Llama (d 256, 4 layers, 8/4 heads, vocab "
        f"384) exported by optimum-cli; a {len(ids)}-token prompt, {P} generated tokens; IG with "
        f"{args.steps} steps. Ratios are to our time (> 1: the peer is slower).",
        "",
        "| task | ours (s) | peer | peer (s) | peer / ours |",
        "|---|---|---|---|---|",
    ]
    for task, r in rows.items():
        for peer, t in r.items():
            if peer == "ours":
                continue
            lines.append(f"| {task} | {r['ours']:.3f} | {peer} | {t:.3f} | {t / r['ours']:.2f} |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
