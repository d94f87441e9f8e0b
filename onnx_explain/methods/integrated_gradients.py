"""Integrated Gradients with exact quadratures and the baselines of docs/methods.md §2.3 / §1.5."""

from __future__ import annotations

import numpy as np
import torch

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


def gaussian_kernel(klen: int = 11, nsig: float = 5.0) -> np.ndarray:
    """RISE's ``gkern``: ``scipy.ndimage.gaussian_filter`` of a centred delta (sums to 1)."""
    from scipy.ndimage import gaussian_filter

    delta = np.zeros((klen, klen))
    delta[klen // 2, klen // 2] = 1
    return gaussian_filter(delta, nsig)


def blur(x: torch.Tensor, klen: int = 11, nsig: float = 5.0) -> torch.Tensor:
    """Per-channel Gaussian blur of ``(B, C, H, W)`` with zero padding (RISE's insertion substrate)."""
    if x.dim() != 4:
        raise OptionError(f"the blur baseline needs image input (B, C, H, W), got shape {tuple(x.shape)}")
    k = torch.as_tensor(gaussian_kernel(klen, nsig), dtype=x.dtype, device=x.device)
    c = x.shape[1]
    weight = k.expand(c, 1, klen, klen).contiguous()
    return torch.nn.functional.conv2d(x, weight, padding=klen // 2, groups=c)


def make_baselines(x: torch.Tensor, baseline, generator, n_baselines: int = 10, low=None, high=None) -> list:
    """The list of baseline tensors (each x's shape) that IG averages over.

    ``baseline``: ``'zero'``; a number; a per-channel sequence (length C); an array/tensor broadcastable
    to x; ``'uniform'`` (``n_baselines`` draws in [low, high], default each sample's [min, max]);
    ``'blur'``; or a list of any of these (averaged).
    """
    if (
        isinstance(baseline, (list, tuple))
        and baseline
        and not all(isinstance(v, (int, float)) for v in baseline)
    ):
        return [b for item in baseline for b in make_baselines(x, item, generator, n_baselines, low, high)]
    if baseline is None or (isinstance(baseline, str) and baseline == "zero"):
        return [torch.zeros_like(x)]
    if isinstance(baseline, str) and baseline == "blur":
        return [blur(x)]
    if isinstance(baseline, str) and baseline == "uniform":
        flat = x.reshape(len(x), -1)
        lo = expand(flat.amin(1), x) if low is None else torch.as_tensor(low, dtype=x.dtype)
        hi = expand(flat.amax(1), x) if high is None else torch.as_tensor(high, dtype=x.dtype)
        draws = []
        for _ in range(int(n_baselines)):
            u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
            draws.append(lo + (hi - lo) * u)
        return draws
    if isinstance(baseline, str):
        raise OptionError(
            f"unknown baseline {baseline!r}: 'zero', 'uniform', 'blur', a number, per-channel values or an array"
        )
    if isinstance(baseline, (int, float)):
        return [torch.full_like(x, float(baseline))]
    b = torch.as_tensor(np.asarray(baseline), dtype=x.dtype, device=x.device)
    if b.dim() == 1 and x.dim() > 2 and b.shape[0] == x.shape[1]:  # per channel
        b = b.reshape(1, -1, *([1] * (x.dim() - 2)))
    try:
        return [torch.broadcast_to(b, x.shape).clone()]
    except RuntimeError:
        raise OptionError(
            f"baseline of shape {tuple(b.shape)} does not broadcast to the input {tuple(x.shape)}"
        ) from None


@register_method("integrated_gradients", "(x − x') ⊙ ∫ ∇f_c along the straight path from the baseline x'")
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
    """Integrated Gradients; reports the completeness error δ = Σ IG − (f(x) − f(x')) per sample."""
    alphas, weights = quadrature(quadrature_method, int(n_steps))
    baselines = make_baselines(x, baseline, generator, n_baselines)
    B, n = len(x), len(alphas)
    al = torch.as_tensor(alphas, dtype=x.dtype, device=x.device)
    wt = torch.as_tensor(weights, dtype=torch.float64, device=x.device)
    total = torch.zeros(x.shape, dtype=torch.float64, device=x.device)
    deltas = torch.zeros(B, dtype=torch.float64, device=x.device)
    fx = scorer.scores(x).gather(1, target.reshape(-1, 1)).squeeze(1).to(torch.float64)
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
        f0 = scorer.scores(x0).gather(1, target.reshape(-1, 1)).squeeze(1).to(torch.float64)
        deltas += ig.reshape(B, -1).sum(1) - (fx - f0)
        total += ig
    k = len(baselines)
    return (total / k).to(x.dtype), {"delta": (deltas / k), "n_baselines": k}
