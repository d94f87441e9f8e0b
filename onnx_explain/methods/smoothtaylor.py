"""SmoothTaylor (Goh et al. 2020) and its adaptive noising search, as in the authors' code (docs/methods.md §2.4)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..errors import OptionError
from .base import Draws, Scorer, expand, explicit_rows, per_sample_sigma, register_method


@register_method("smoothtaylor", "mean over noisy roots z of (x − z) ⊙ ∇f_c(z)", stochastic=True,
                 cost="n_roots × forward+backward")  # fmt: skip
def smoothtaylor(
    scorer: Scorer,
    x,
    target,
    generator=None,
    sigma: float = 0.5,
    noise: str = "absolute",
    n_roots: int = 150,
    roots=None,
):
    """SmoothTaylor: roots ``z_j = x + σ ε_j``; attribution ``(1/N) Σ_j (x − z_j) ⊙ ∇f_c(z_j)``.

    Parameters
    ----------
    sigma : float
        Noise scale, absolute (default 0.5, as the authors) or relative to each sample's max − min.
    n_roots : int
        Number of roots per sample (default 150).
    roots : tensor, optional
        Explicit roots ``(B, N, *S)`` or sample-major ``(B·N, *S)``; ``sigma`` is then unused.
    """
    B, S = x.shape[0], x.shape[1:]
    roots, n = explicit_rows(roots, x, n_roots, "roots")
    sig = per_sample_sigma(x, sigma, noise)
    draws = Draws(generator, S, x.dtype, x.device) if roots is None else None

    def make_rows(a, b):
        owner = torch.arange(a, b, device=x.device) // n
        if roots is not None:
            return roots[a:b], target[owner]
        eps = draws.rows(torch.arange(a, b, device=x.device) % n)
        return x[owner] + eps * expand(sig[owner], x[owner]), target[owner]

    acc = torch.zeros(x.shape, dtype=torch.float64, device=x.device)

    def consume(a, b, rows, grad, score):
        owner = torch.arange(a, b, device=x.device) // n
        acc.index_add_(0, owner, ((x[owner] - rows) * grad).to(torch.float64))

    scorer.map_rows(B * n, make_rows, consume)
    return (acc / n).to(x.dtype), {"sigma": sig, "n_roots": n}


@dataclass
class AdaptiveResult:
    """Outcome of :func:`adaptive_noising` for one sample."""

    sigma: float
    attribution: torch.Tensor
    objective: float
    trace: list[tuple[float, float]] = field(default_factory=list)  # (σ evaluated, objective)


def adaptive_noising(
    evaluate: Callable[[float], tuple[float, torch.Tensor]],
    sigma0: float,
    learning_rate: float = 0.1,
    learning_decay: float = 0.9,
    max_stop_count: int = 3,
    max_iteration: int = 20,
) -> AdaptiveResult:
    """The authors' per-image search over σ (``experiment_adaptive_noising.py adapt_noise``), step for step.

    It is a compat algorithm, not a proper optimiser: the iterate moves even when it got worse, and
    ``evaluate(σ) -> (objective, attribution)`` (lower is better) is usually stochastic.
    """
    trace: list[tuple[float, float]] = []

    def obj(s: float):
        value, heat = evaluate(s)
        trace.append((s, float(value)))
        return float(value), heat

    cur_sigma = float(sigma0)
    cur, heat = obj(cur_sigma)
    best, best_sigma, best_heat = cur, cur_sigma, heat
    lr, stop, it = float(learning_rate), 0, 1
    while it <= max_iteration:
        s, heat = obj(math.fabs(cur_sigma + lr))
        if s > cur:  # worse in the + direction: try the − direction
            cur_sigma = math.fabs(cur_sigma - lr)
            s, heat = obj(cur_sigma)
        else:
            cur_sigma = math.fabs(cur_sigma + lr)
        if s > cur:  # still worse than the previous iterate
            if stop < max_stop_count:
                lr *= learning_decay
                stop += 1
            else:
                break
        else:
            stop = 0
            if s < best:
                best, best_sigma, best_heat = s, cur_sigma, heat
        cur = s
        it += 1
    return AdaptiveResult(best_sigma, best_heat, best, trace)


def paper_objective(name: str, scorer: Scorer, **options) -> Callable:
    """The adaptive-noising objectives of the paper, ``objective(x_b, attribution_b, target_b) -> float``.

    ``'aupc'``: SmoothTaylor's perturbation AUC (:func:`onnx_explain.metrics.perturbation.aupc`, scored on
    the torch graph); ``'autvc'``: the multi-scale total-variation AUC
    (:func:`onnx_explain.metrics.noise.total_variation`). Lower is better for both.
    """
    import numpy as np

    from ..layout import to_channels_first
    from ..metrics.base import METRICS, Predictor
    from ..metrics.noise import total_variation
    from ..metrics.perturbation import aupc
    from ..options import check_options

    metric = {"autvc": "total_variation", "aupc": "aupc"}.get(name)
    if metric is not None:
        check_options(options, METRICS[metric].options + ["seed"] * (name == "aupc"), f"objective {name!r}")

    def cf(t):  # the metrics read images channel-first, whatever the model's layout
        return to_channels_first(t[None].cpu().numpy(), scorer.layout)

    if name == "autvc":
        return lambda xb, attr, t, key=None: float(
            total_variation(None, None, cf(attr), None, None, **options)["autvc"][0]
        )
    if name == "aupc":
        rng = np.random.default_rng(options.pop("seed", 0))

        def objective(xb, attr, t, key=None):
            def f(arr):  # every row is a perturbation of this one sample: its companions, its key
                rows = torch.as_tensor(arr)
                keys = None if key is None else key.expand(len(rows))
                return scorer.scores(rows, keys).cpu().numpy()

            predictor = Predictor(f, output="logit", batch_size=scorer.batch_size, layout=scorer.layout)
            return float(aupc(predictor, cf(xb), cf(attr), np.array([t]), rng, **options)["aupc"][0])

        return objective
    raise OptionError(f"objective must be 'aupc', 'autvc' or a callable, not {name!r}")


@register_method(
    "smoothtaylor_adaptive",
    "SmoothTaylor with σ chosen per sample by the authors' adaptive noising",
    stochastic=True,
    modalities=("image",),
    cost="per sample: up to 2·max_iteration × n_roots × forward+backward, plus the objective",
)
def smoothtaylor_adaptive(
    scorer: Scorer,
    x,
    target,
    generator=None,
    objective: Callable | str = "autvc",
    objective_options: dict | None = None,
    n_roots: int = 150,
    learning_rate: float = 0.1,
    learning_decay: float = 0.9,
    max_stop_count: int = 3,
    max_iteration: int = 20,
):
    """Adaptive SmoothTaylor: per sample, search σ minimising ``objective(x_b, attribution_b, target_b)``:
    ``'autvc'`` (default) or ``'aupc'``, the paper's two (with ``objective_options``), or any callable
    (lower is better). The search starts at σ = mean |x_b| and draws fresh roots at every evaluation."""
    keyed = isinstance(objective, str)  # the paper's objectives score rows of the sample's own key
    if keyed:
        objective = paper_objective(objective, scorer, **(objective_options or {}))
    out = torch.empty_like(x)
    sigmas, values, traces = [], [], []
    base = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    for b in range(len(x)):
        xb, tb = x[b : b + 1], target[b : b + 1]
        gb = torch.Generator(device=generator.device)
        gb.manual_seed(base)  # every sample's search starts from the same stream: batch-independent

        def evaluate(s, xb=xb, tb=tb, gb=gb):
            attr, _ = smoothtaylor(scorer, xb, tb, gb, sigma=s, noise="absolute", n_roots=n_roots)
            cls = int(scorer.classes(tb)[0])
            value = objective(xb[0], attr[0], cls, tb) if keyed else objective(xb[0], attr[0], cls)
            return value, attr[0]

        res = adaptive_noising(
            evaluate, float(xb.abs().mean()), learning_rate, learning_decay, max_stop_count, max_iteration
        )
        out[b] = res.attribution
        sigmas.append(res.sigma)
        values.append(res.objective)
        traces.append(res.trace)
    return out, {"sigma": torch.tensor(sigmas), "objective": torch.tensor(values), "trace": traces}
