"""Integrated Gradients with exact quadratures (docs/methods.md §2.3); baselines from
:mod:`onnx_explain.baselines` (§1.5)."""

from __future__ import annotations

import numpy as np
import torch

from .. import baselines as _baselines
from ..baselines import blur, gaussian_kernel  # noqa: F401  (their former home)
from ..errors import OptionError
from .base import Scorer, expand, register_method

QUADRATURES = (
    "gausslegendre",
    "riemann_left",
    "riemann_right",
    "riemann_middle",
    "trapezoid",
    "captum_trapezoid",
)


def quadrature(method: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes α_k in [0, 1] and weights w_k of ``method`` with ``n`` points (float64).

    ``trapezoid`` is the correct rule (α = linspace(0, 1, n), w = 1/(n−1), endpoints halved; Σw = 1, as
    the official IG code). ``captum_trapezoid`` reproduces Captum's ``riemann_trapezoid``, whose weights
    sum to 1 − 1/n (biased): use it only to compare with Captum.
    """
    if n < 1:
        raise OptionError("n_steps must be at least 1")
    if method == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(n)
        return 0.5 * (nodes + 1), 0.5 * weights
    if method == "riemann_left":
        return np.linspace(0, 1 - 1 / n, n), np.full(n, 1 / n)
    if method == "riemann_right":
        return np.linspace(1 / n, 1, n), np.full(n, 1 / n)
    if method == "riemann_middle":
        return np.linspace(1 / (2 * n), 1 - 1 / (2 * n), n), np.full(n, 1 / n)
    if method == "trapezoid":
        if n < 2:
            raise OptionError("the trapezoid rule needs n_steps >= 2")
        w = np.full(n, 1 / (n - 1))
        w[0] = w[-1] = 0.5 / (n - 1)
        return np.linspace(0, 1, n), w
    if method == "captum_trapezoid":
        if n < 2:
            raise OptionError("the trapezoid rule needs n_steps >= 2")
        w = np.full(n, 1 / n)
        w[0] = w[-1] = 0.5 / n
        return np.linspace(0, 1, n), w
    raise OptionError(f"quadrature must be one of {QUADRATURES}, not {method!r}")


def make_baselines(
    x: torch.Tensor, baseline, generator, n_baselines: int = 10, channel_axis: int | None = 1
) -> list:
    """The baseline tensors (each x's shape) that IG averages over: ``n_baselines`` draws of a random
    baseline (``'uniform'``, ``'uniform_range'``), one of any other, all of a list
    (:func:`onnx_explain.baselines.make_baselines`)."""
    return _baselines.make_baselines(x, baseline, generator, n_baselines, channel_axis=channel_axis)


@register_method("integrated_gradients", "(x − x') ⊙ ∫ ∇f_c along the straight path from the baseline x'",
                 cost="n_steps × n_baselines × forward+backward", overview={"n_steps": 16})  # fmt: skip
def integrated_gradients(
    scorer: Scorer,
    x,
    target,
    generator=None,
    baseline="zero",
    n_steps: int = 50,
    quadrature_method: str = "gausslegendre",
    n_baselines: int = 10,
):
    """Integrated Gradients; reports the completeness error δ = Σ IG − (f(x) − f(x')) per sample.

    Parameters
    ----------
    baseline : str, number, sequence or array, or a list of them
        x' (:mod:`onnx_explain.baselines`): ``'zero'`` (default), ``'uniform'`` (U[0, 1) per element),
        ``'uniform_range'`` (U[min, max) of each sample), ``'blur'``, a number, per-channel values (along
        the model's channel axis), an array, or a list of these (averaged).
    n_baselines : int
        Draws of a random baseline, averaged.
    """
    alphas, weights = quadrature(quadrature_method, int(n_steps))
    baselines = make_baselines(x, baseline, generator, n_baselines, scorer.channel_axis)
    B, n = len(x), len(alphas)
    al = torch.as_tensor(alphas, dtype=x.dtype, device=x.device)
    wt = torch.as_tensor(weights, dtype=torch.float64, device=x.device)
    total = torch.zeros(x.shape, dtype=torch.float64, device=x.device)
    deltas = torch.zeros(B, dtype=torch.float64, device=x.device)
    fx = scorer.score(x, target).to(torch.float64)
    for x0 in baselines:
        diff = x - x0
        acc = torch.zeros(x.shape, dtype=torch.float64, device=x.device)

        def make_rows(a, b, x0=x0, diff=diff):  # rows are (sample, step), sample-major
            r = torch.arange(a, b, device=x.device)
            owner, step = r // n, r % n
            return x0[owner] + expand(al[step], diff[owner]) * diff[owner], target[owner]

        def consume(a, b, rows, grad, score, acc=acc):
            r = torch.arange(a, b, device=x.device)
            acc.index_add_(0, r // n, grad.to(torch.float64) * expand(wt[r % n], grad))

        scorer.map_rows(B * n, make_rows, consume)
        ig = diff.to(torch.float64) * acc
        f0 = scorer.score(x0, target).to(torch.float64)
        deltas += ig.reshape(B, -1).sum(1) - (fx - f0)
        total += ig
    k = len(baselines)
    return (total / k).to(x.dtype), {"delta": (deltas / k), "n_baselines": k}
