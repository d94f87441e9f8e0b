"""The attribution methods for generated tokens, registered by name (the classifier methods' formulas and
defaults, docs/methods.md §2, run for every target of a sequence at once by
:func:`onnx_explain.generation.attribute.run_passes`).

Each method takes the explained embeddings ``es`` (one ``(1, L_i, D)`` tensor per explained input: a
decoder's tokens, or an encoder-decoder's source and target tokens), the model as ``forward(rows)`` and the
targets, and returns one ``(P, L_i, D)`` attribution per input and its extras.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import OptionError
from ..options import check_options
from .attribute import Pass, Targets, run_passes


@dataclass
class GenerationMethod:
    name: str
    description: str
    fn: Callable
    options: dict  # name -> default
    reduction: Callable  # options -> 'sum' | 'l2'
    graph: str = "gradient"  # 'gradient' (the converted graph), 'lrp' (its LRP graph) or 'onnxruntime' (none)


GENERATION_METHODS: dict[str, GenerationMethod] = {}


def register(name: str, description: str, reduction="sum", graph: str = "gradient", **options):
    def wrap(fn):
        red = reduction if callable(reduction) else (lambda opts, r=reduction: r)
        GENERATION_METHODS[name] = GenerationMethod(name, description, fn, options, red, graph)
        return fn

    return wrap


def check(method: str, options: dict) -> dict:
    """The method's options with its defaults filled in; an unknown method or option is refused."""
    if method not in GENERATION_METHODS:
        raise OptionError(
            f"unknown method {method!r} for generation; choose one of {', '.join(GENERATION_METHODS)}"
        )
    spec = GENERATION_METHODS[method]
    check_options(options, set(spec.options), f"method {method!r}")
    return {**spec.options, **options}


def _zeros(es, P):
    return [torch.zeros(P, *e.shape[1:], dtype=torch.float64) for e in es]


@register("gradient", "∂t/∂e at the embedding; per token its L2 norm", reduction="l2")
def gradient(es, forward, targets: Targets, batch_size, generator, times_input=False):
    acc = _zeros(es, targets.count)

    def consume(a, b, rows, grads, cols):
        for i, g in enumerate(grads):
            acc[i][cols] = (g[:, 0] * rows[i][0] if times_input else g[:, 0]).to(torch.float64)

    extras = run_passes(forward, targets, Pass(lambda a, b: es, 1, consume), batch_size)
    return acc, extras


@register("gradient_x_input", "e ⊙ ∂t/∂e at the embedding, summed per token")
def gradient_x_input(es, forward, targets, batch_size, generator):
    return gradient(es, forward, targets, batch_size, generator, times_input=True)


def _smooth_reduction(opts):
    return "l2" if opts["base"] == "gradient" and opts["reduce"] == "mean" else "sum"


@register("smoothgrad", "mean of the gradient (or gradient × input) over noisy copies of the embedding",
          reduction=_smooth_reduction, sigma=0.15, noise="relative", n_samples=50, reduce="mean",
          base="gradient")  # fmt: skip
def smoothgrad(es, forward, targets, batch_size, generator, sigma, noise, n_samples, reduce, base):
    from ..methods.base import per_sample_sigma
    from ..methods.gradient import REDUCES

    if reduce not in REDUCES:
        raise OptionError(f"reduce must be one of {REDUCES}, not {reduce!r}")
    if base not in ("gradient", "gradient_x_input"):
        raise OptionError(f"base must be 'gradient' or 'gradient_x_input', not {base!r}")
    n = int(n_samples)
    if n < 1:
        raise OptionError("n_samples must be at least 1")
    sig = [float(per_sample_sigma(e, sigma, noise)[0]) for e in es]
    noise_rows = [
        torch.randn((n, *e.shape[1:]), generator=generator, dtype=e.dtype) * s
        for e, s in zip(es, sig, strict=True)
    ]
    s1 = _zeros(es, targets.count)
    s2 = _zeros(es, targets.count) if reduce != "mean" else None

    def rows(a, b):
        return [e + z[a:b] for e, z in zip(es, noise_rows, strict=True)]

    def consume(a, b, rws, grads, cols):
        for i, g in enumerate(grads):
            v = (g * rws[i].detach() if base == "gradient_x_input" else g).to(torch.float64)
            s1[i][cols] += v.sum(1)
            if s2 is not None:
                s2[i][cols] += (v * v).sum(1)

    extras = run_passes(forward, targets, Pass(rows, n, consume), batch_size)
    out = []
    for i in range(len(es)):
        mean = s1[i] / n
        out.append(
            mean
            if reduce == "mean"
            else s2[i] / n
            if reduce == "mean_sq"
            else (s2[i] / n - mean * mean).clamp_min(0)
        )
    return out, {**extras, "sigma": sig, "n_samples": n}


@register("integrated_gradients", "(e − e') ⊙ ∫ ∂t/∂e along the straight path from the baseline e'",
          baseline="zero", n_steps=50, quadrature_method="gausslegendre")  # fmt: skip
def integrated_gradients(es, forward, targets, batch_size, generator, baseline, n_steps, quadrature_method):
    from ..methods.integrated_gradients import quadrature

    alphas, weights = quadrature(quadrature_method, int(n_steps))
    bases = _baselines(es, forward, baseline)
    acc = _zeros(es, targets.count)
    n = len(alphas)

    def rows(a, b):
        al = torch.as_tensor(alphas[a:b], dtype=es[0].dtype).view(-1, 1, 1)
        return [x0 + al * (e - x0) for e, x0 in zip(es, bases, strict=True)]

    def consume(a, b, rws, grads, cols):
        w = torch.as_tensor(weights[a:b], dtype=torch.float64).view(1, -1, 1, 1)
        for i, g in enumerate(grads):
            acc[i][cols] += (g.to(torch.float64) * w).sum(1)

    extras = run_passes(forward, targets, Pass(rows, n, consume), batch_size)
    out = [(e - x0).to(torch.float64)[0] * a for e, x0, a in zip(es, bases, acc, strict=True)]
    with torch.no_grad():
        at_x = targets.scores(forward(es))[0].to(torch.float64)
        at_base = targets.scores(forward(bases))[0].to(torch.float64)
    total = sum(o.reshape(len(o), -1).sum(1) for o in out)
    delta = total - (at_x - at_base)
    return out, {**extras, "delta": delta.numpy(), "n_steps": n}


@register("lrp", "LRP at the embedding (AttnLRP / CP-LRP on transformers), summed per token", graph="lrp",
          composite="auto", composite_options=None, rules=None, fallback=None)  # fmt: skip
def lrp(es, forward, targets, batch_size, generator, composite, composite_options, rules, fallback):
    """The LRP graph (built from ``composite``, ``composite_options``, ``rules``, ``fallback`` by the caller) is ``forward``: its
    backward seeded with ``logits ⊙ ∂t/∂logits`` gives the relevance at the embedding."""
    acc = _zeros(es, targets.count)

    def consume(a, b, rows, grads, cols):
        for i, g in enumerate(grads):
            acc[i][cols] = g[:, 0].to(torch.float64)

    extras = run_passes(forward, targets, Pass(lambda a, b: es, 1, consume), batch_size, relevance=True)
    with torch.no_grad():
        at_x = targets.scores(extras["_out"])[0].to(torch.float64)
    total = sum(o.reshape(len(o), -1).sum(1) for o in acc)
    return acc, {**extras, "delta": (total - at_x).numpy()}


@register("occlusion", "t(x) − t(x with the token replaced by a baseline token), on onnxruntime (no conversion)",
          reduction="none", graph="onnxruntime", baseline="pad")  # fmt: skip
def occlusion(gm, ids, targets, batch_size, baseline, source=None, columns=None):
    """``(P, C)`` over a decoder's tokens, or an encoder-decoder's source and decoder tokens, the
    unperturbed logits and extras (:mod:`onnx_explain.generation.occlusion`)."""
    from .occlusion import occlusion_decoder, occlusion_seq2seq

    token = baseline_token(gm, baseline)
    if source is not None:
        out, logits = occlusion_seq2seq(gm, source, ids, targets, token, batch_size)
        return out, logits, {"baseline_token": token}
    out, logits, run = occlusion_decoder(gm, ids, targets, token, batch_size, columns)
    return out, logits, {"baseline_token": token, "tokens_run": run}


def baseline_token(gm, baseline) -> int:
    """The token that replaces an occluded one: ``'pad'`` (the model's pad), ``'token:N'`` or N."""
    if isinstance(baseline, int) and not isinstance(baseline, bool):
        return baseline
    text = str(baseline)
    if text == "pad":
        return gm.settings.pad_id
    if text.startswith("token:") and text[6:].strip().isdigit():
        return int(text[6:])
    raise OptionError(f"occlusion's baseline must be 'pad', 'token:N' or a token id, not {baseline!r}")


def _baselines(es, forward, baseline) -> list[torch.Tensor]:
    """IG's e': zeros (``'zero'``), a number, or the embedding of one token at every position
    (``'pad'``: the model's pad token; ``'token:N'``: token N; Captum's ``LayerIntegratedGradients`` on the
    embedding with its default baseline is ``'token:0'``)."""
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        return [torch.full_like(e, float(baseline)) for e in es]
    text = str(baseline)
    if text == "zero":
        return [torch.zeros_like(e) for e in es]
    token = None
    if text == "pad":
        token = forward.pad_id
    elif text.startswith("token:"):
        try:
            token = int(text.split(":", 1)[1])
        except ValueError:
            token = None
    if token is None:
        raise OptionError(f"baseline must be 'zero', a number, 'pad' or 'token:N', not {baseline!r}")
    return forward.embed(token)


def reduce_tokens(a: torch.Tensor, how: str) -> np.ndarray:
    """``(P, L)`` per-token scores from ``(P, L, D...)`` embedding attributions."""
    axes = tuple(range(2, a.dim()))
    if how == "none":
        return a.numpy()
    if not axes:
        return a.numpy()
    return (a.norm(dim=axes) if how == "l2" else a.sum(dim=axes)).numpy()
