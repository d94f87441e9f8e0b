"""Gradient, gradient×input and the smoothing wrapper (SmoothGrad, SmoothGrad², VarGrad, and smoothing
of any registered method). docs/methods.md §2.1–2.2."""

from __future__ import annotations

import torch

from ..errors import OptionError
from .base import METHODS, Draws, Scorer, expand, explicit_rows, per_sample_sigma, register_method

REDUCES = ("mean", "mean_sq", "var")


@register_method("gradient", "∂f_c/∂x, signed (saliency)", sign="abs", overview={}, reads_inputs=True)
def gradient(scorer: Scorer, x, target, generator=None):
    out = torch.empty_like(x)
    scores = torch.empty(len(x), dtype=x.dtype, device=x.device)

    def consume(a, b, rows, grad, score):
        out[a:b], scores[a:b] = grad, score

    scorer.map_rows(len(x), lambda a, b: (x[a:b], target[a:b]), consume)
    return out, {"score": scores}


@register_method("gradient_x_input", "x ⊙ ∂f_c/∂x, signed", reads_inputs=True)
def gradient_x_input(scorer: Scorer, x, target, generator=None):
    grad, extras = gradient(scorer, x, target)
    return x * grad, extras


@register_method(
    "smoothgrad",
    "mean of a method over Gaussian-noised copies of x (SmoothGrad, SG², VarGrad)",
    stochastic=True,
    sign="abs",
    cost="n_samples × the base method",
    delegate="base",
    overview={"n_samples": 20},
)
def smoothgrad(
    scorer: Scorer,
    x,
    target,
    generator=None,
    sigma: float = 0.15,
    noise: str = "relative",
    n_samples: int = 50,
    reduce: str = "mean",
    include_clean_sample: bool = False,
    base: str = "gradient",
    perturbations=None,
    **base_options,
):
    """SmoothGrad over ``base`` (any registered method; the base sees the *noisy* input).

    Parameters
    ----------
    sigma : float
        Noise standard deviation: absolute, or a fraction of each sample's ``max − min`` (``noise``).
    n_samples : int
        Noisy copies per sample (with ``include_clean_sample`` the last copy is noise-free: Zennit's rule).
    reduce : {'mean', 'mean_sq', 'var'}
        SmoothGrad, SmoothGrad² (mean of squares), VarGrad (population variance).
    perturbations : tensor, optional
        The additive noise itself, ``(B, N, *S)`` or sample-major ``(B·N, *S)`` (Captum's layout);
        ``sigma`` and ``noise`` are then unused.
    """
    if reduce not in REDUCES:
        raise OptionError(f"reduce must be one of {REDUCES}, not {reduce!r}")
    if base not in METHODS or base == "smoothgrad":
        raise OptionError(f"cannot smooth {base!r}: choose one of {sorted(set(METHODS) - {'smoothgrad'})}")
    B, S = x.shape[0], x.shape[1:]
    perturbations, n = explicit_rows(perturbations, x, n_samples, "perturbations")
    sig = per_sample_sigma(x, sigma, noise)
    draws = Draws(generator, S, x.dtype, x.device) if perturbations is None else None

    def make_rows(a, b):
        rows = torch.arange(a, b, device=x.device)
        owner = rows // n
        if perturbations is not None:
            eps = perturbations[a:b]
        else:
            eps = draws.rows(rows % n) * expand(sig[owner], x[owner])
        if include_clean_sample:
            eps = eps * expand(((rows % n) != n - 1).to(x.dtype), eps)
        return x[owner] + eps, target[owner]

    s1 = torch.zeros(x.shape, dtype=torch.float64, device=x.device)
    s2 = torch.zeros_like(s1) if reduce != "mean" else None

    def fold(a, b, attribution):
        owner = torch.arange(a, b, device=x.device) // n
        a64 = attribution.to(torch.float64)
        s1.index_add_(0, owner, a64)
        if s2 is not None:
            s2.index_add_(0, owner, a64 * a64)

    if base in ("gradient", "gradient_x_input"):  # one fused pass per chunk of noisy rows
        times_input = base == "gradient_x_input"
        scorer.map_rows(B * n, make_rows, lambda a, b, rows, g, _: fold(a, b, rows * g if times_input else g))
    else:
        fn = METHODS[base].fn
        for a in range(0, B * n, scorer.batch_size):
            b = min(B * n, a + scorer.batch_size)
            rows, targets = make_rows(a, b)
            attribution, _ = fn(scorer, rows, targets, generator, **base_options)
            fold(a, b, attribution)
    mean = s1 / n
    if reduce == "mean":
        out = mean
    elif reduce == "mean_sq":
        out = s2 / n
    else:
        out = (s2 / n - mean * mean).clamp_min(0)
    return out.to(x.dtype), {"sigma": sig, "n_samples": n}
