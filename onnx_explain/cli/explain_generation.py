"""``onnx-explain explain-generation MODEL_DIR --prompt TEXT --out DIR``."""

from __future__ import annotations

import click

from .common import fail, handle_errors, parse_options, resolve_device

METHOD_NAMES = ("gradient", "gradient_x_input", "smoothgrad", "integrated_gradients", "lrp", "occlusion")


@click.command("explain-generation")
@click.argument("model", type=click.Path())
@click.option(
    "--prompt", "prompts", multiple=True, help="A prompt (a source text for an encoder-decoder); repeatable."
)
@click.option("--prompts", "prompts_file", type=click.Path(dir_okay=False),
              help="A .txt (one prompt per line) or .jsonl ('prompt', optional 'continuation' and 'contrast').")  # fmt: skip
@click.option(
    "--out", "-o", "out_dir", type=click.Path(file_okay=False), required=True, help="Output folder."
)
@click.option("--continuation", help="Teacher forcing: explain this continuation instead of generating one.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--method", "-m", type=click.Choice(METHOD_NAMES), default="gradient_x_input", show_default=True,
              help="Attribution at the token embedding of the converted graph; occlusion on onnxruntime.")  # fmt: skip
@click.option("--target", type=click.Choice(["tokens", "span"]), default="tokens", show_default=True,
              help="One row per generated token, or one row for the continuation's log-likelihood.")  # fmt: skip
@click.option("--span", metavar="A:B", help="With --target span: continuation tokens A..B-1 only.")
@click.option(
    "--contrast", help="An alternative continuation: each row explains f(a) - f(b) at the same position."
)
@click.option("--output", "space", type=click.Choice(["logit", "log_prob", "prob"]), default="logit",
              show_default=True, help="The explained scalar of a token.")  # fmt: skip
@click.option("--steps", type=int, help="Integration steps (integrated_gradients).")
@click.option("--samples", type=int, help="Noisy samples (smoothgrad).")
@click.option("--sigma", type=float, help="SmoothGrad's noise, relative to the embedding's range.")
@click.option("--baseline", help="Integrated Gradients' baseline (zero, pad, token:N or a number) or occlusion's "
              "replacement token (pad, token:N).")  # fmt: skip
@click.option("--composite", help="LRP composite (default: attnlrp where attention carries relevance).")
@click.option(
    "--option", "extra", multiple=True, metavar="KEY=VALUE", help="Any other method option (JSON value)."
)
@click.option("--sample", "do_sample", is_flag=True, help="Sample instead of greedy decoding.")
@click.option("--temperature", type=float, default=1.0, show_default=True)
@click.option(
    "--top-k", type=int, default=0, show_default=True, help="Sampling: keep the k most likely (0: off)."
)
@click.option("--top-p", type=float, default=1.0, show_default=True, help="Sampling: nucleus mass.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True,
              help="(target, row) pairs per backward pass: memory depends on it, results do not.")  # fmt: skip
@click.option(
    "--tokenizer", type=click.Path(dir_okay=False), help="tokenizer.json (default: the model folder's)."
)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--keep-embedding", is_flag=True, help="Also write the embedding-level attribution (P, L, D).")
@handle_errors
def explain_generation(model, prompts, prompts_file, out_dir, continuation, max_new_tokens, method, target, span,
                       contrast, space, steps, samples, sigma, baseline, composite, extra, do_sample, temperature,
                       top_k, top_p, seed, batch_size, tokenizer, device, keep_embedding):  # fmt: skip
    """Generate from prompts on onnxruntime (with the KV cache) and attribute each generated token to the
    prompt and the tokens before it.

    MODEL is a model folder as Optimum, onnxruntime-genai or transformers.js write it (model.onnx,
    decoder_model_merged.onnx, encoder_model.onnx + decoder_model.onnx ..., tokenizer.json,
    generation_config.json) or one decoder .onnx. Per prompt, OUT/NNNNN/ holds explanation.json (tokens,
    the token x target matrix, scores), attribution.npz and view.html; OUT/manifest.jsonl lists the items.

    \b
    Examples:
      onnx-explain explain-generation tiny-llama/ --prompt "the cat sees a" --out out/gen
      onnx-explain explain-generation t5/ --prompts prompts.jsonl -m integrated_gradients --out out/t5
    """
    from ..app.generation import Item, explain_generation_items, read_prompts
    from ..generation import load_generative

    if bool(prompts) == bool(prompts_file):
        raise click.UsageError("give --prompt (repeatable) or --prompts FILE")
    items = [Item(p, continuation, contrast) for p in prompts] if prompts else read_prompts(prompts_file)
    if prompts_file and (continuation or contrast):
        items = [Item(it.prompt, it.continuation or continuation, it.contrast or contrast) for it in items]
    opts = parse_options(extra)
    for key, value in (
        ("n_steps", steps),
        ("n_samples", samples),
        ("sigma", sigma),
        ("composite", composite),
    ):
        if value is not None:
            opts[key] = value
    if baseline is not None:
        opts["baseline"] = _number_or_text(baseline)
    span_pair = None
    if span:
        try:
            a, b = (int(v) for v in span.split(":"))
        except ValueError:
            raise click.UsageError(f"--span takes A:B (two integers), not {span!r}") from None
        span_pair = (a, b)
    from ..generation import Sampling
    from ..generation.methods import check

    check(method, opts)  # a bad option is a usage error up front, not a failure of every item
    Sampling(do_sample, temperature, top_k, top_p, seed)
    torch_device, ort_device = resolve_device(device)
    gm = load_generative(model, device=ort_device)
    from ..generation.explain import tokenizer_for

    tok = tokenizer_for(gm, tokenizer)  # a missing tokenizer is the run's error, not every item's
    summary = explain_generation_items(
        gm, items, out_dir, tok, method=method, target=target, span=span_pair, output=space,
        max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed, do_sample=do_sample,
        temperature=temperature, top_k=top_k, top_p=top_p, device=torch_device, keep_embedding=keep_embedding,
        **opts,
    )  # fmt: skip
    click.echo(f"{summary['explained']} of {summary['items']} item(s) explained ({method}) -> {out_dir}")
    if summary["failed"]:
        fail(f"{summary['failed']} item(s) failed; see {out_dir}/manifest.jsonl", 1)


def _number_or_text(v: str):
    for kind in (int, float):
        try:
            return kind(v)
        except ValueError:
            continue
    return v
