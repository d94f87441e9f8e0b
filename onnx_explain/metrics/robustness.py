"""Metrics that re-explain perturbed inputs: max-sensitivity (Yeh) and masked-input rank consistency
(Park). docs/methods.md §3.4, §3.7. They take an explainer ``explainer(x, target, seed) -> attribution``."""

from __future__ import annotations

import math
import warnings

import numpy as np

from ..errors import OptionError
from .base import Predictor, make_baseline, register_metric

TENTHS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def _norm(v: np.ndarray, ord_: str) -> np.ndarray:
    v = v.reshape(len(v), -1)
    if ord_ == "fro":
        return np.sqrt((v * v).sum(1))
    return np.linalg.norm(v, ord=float(ord_), axis=1)


@register_metric(
    "max_sensitivity",
    "max over perturbations δ (|δ|∞ ≤ r) of ‖Φ(x+δ) − Φ(x)‖ / ‖Φ(x)‖ (Yeh)",
    score="max_sensitivity",
    higher_is_better=False,
    needs_explainer=True,
    needs_model=False,
    stochastic=True,
    cost="n_samples × the explainer",
    input_options=("perturbations",),
)
def max_sensitivity(
    predictor: Predictor | None,
    x,
    a,
    target,
    rng,
    explainer=None,
    radius: float = 0.02,
    n_samples: int = 10,
    norm: str = "fro",
    crn: bool = True,
    nan_if_prediction_changes: bool = False,
    seed: int = 0,
    perturbations=None,
):
    """Max-sensitivity with uniform noise U(−r, r) on every element (Captum's default, r = 0.02).

    ``crn``: common random numbers — every perturbed copy is explained with the same seed as x, so a
    stochastic explainer's own noise is not counted as sensitivity. ``perturbations``: explicit δ
    ``(B, n, *S)``. ``a`` is Φ(x) (recomputed with the explainer when None).
    """
    B = len(x)
    phi = explainer(x, target, seed) if a is None else np.asarray(a, dtype=np.float64)
    if perturbations is not None:
        deltas = np.asarray(perturbations, dtype=x.dtype)
        n_samples = deltas.shape[1]
    else:
        deltas = rng.uniform(-radius, radius, size=(B, int(n_samples), *x.shape[1:])).astype(x.dtype)
    den = _norm(phi, norm)
    den = np.where(den == 0, 1.0, den)
    sens = np.empty((B, n_samples))
    if crn:
        for k in range(n_samples):
            phik = explainer(x + deltas[:, k], target, seed)
            sens[:, k] = _norm(phi - phik, norm) / den
    else:
        xs = (x[:, None] + deltas).reshape(B * n_samples, *x.shape[1:])
        phik = explainer(xs, np.repeat(target, n_samples), seed + 1).reshape(B, n_samples, -1)
        sens = (
            _norm((phi.reshape(B, 1, -1) - phik).reshape(B * n_samples, -1), norm).reshape(B, n_samples)
            / den[:, None]
        )
    if nan_if_prediction_changes and predictor is not None:
        pred0 = predictor(x).argmax(1)
        xs = (x[:, None] + deltas).reshape(B * n_samples, *x.shape[1:])
        changed = predictor(xs).argmax(1).reshape(B, n_samples) != pred0[:, None]
        sens = np.where(changed, np.nan, sens)
    with np.errstate(all="ignore"):
        best = np.array([np.nan if np.isnan(s).all() else np.nanmax(s) for s in sens])
    return {"max_sensitivity": best, "sensitivities": sens}


def kendall_rows(u: np.ndarray, v: np.ndarray, variant: str) -> float:
    from scipy.stats import kendalltau

    if np.all(u == u[0]) or np.all(v == v[0]):
        return float("nan")
    return float(kendalltau(u, v, variant=variant).statistic)


def cosine_rows(u: np.ndarray, v: np.ndarray) -> float:
    nu, nv = np.linalg.norm(u), np.linalg.norm(v)
    if nu == 0 or nv == 0:
        return float("nan")
    return float(u @ v / (nu * nv))


@register_metric(
    "rank_consistency",
    "Kendall τ and cosine between the attribution of x and of x with its most important pixels removed (Park)",
    score="kendall_mean",
    higher_is_better=True,
    needs_explainer=True,
    needs_model=False,
    modalities=("image",),
    cost="len(ratios) × the explainer",
    input_options=("baseline",),
)
def rank_consistency(
    predictor: Predictor | None,
    x,
    a,
    target,
    rng,
    explainer=None,
    mode: str = "mask",
    ratios=TENTHS,
    eps=TENTHS,
    baseline="zero",
    variant: str = "b",
    importance: str = "mean_abs",
    additive_noise: str = "uniform",
    seed: int = 0,
    park_channel0_only: bool = False,
    park_cumulative_inplace: bool = False,
    park_mask_from_previous: bool = False,
):
    """Masked-input rank consistency (paper semantics by default; ``park_*`` flags reproduce the reference
    notebook's quirks: channel-0-only masking, masks accumulating in place, the mask for each ratio built
    from the previous masked input's attribution).

    ``mode='additive'`` compares with ``x + ε·u`` for each ε in ``eps``, u ~ U(0, 1] (Park) or N(0, 1)
    (``additive_noise='gaussian'``). Kendall τ (``variant`` 'b' or 'c') and cosine are NaN when an
    attribution is constant.
    """
    if x.ndim != 4:
        raise OptionError(f"rank consistency needs images (B, C, H, W), got shape {x.shape}")
    if mode not in ("mask", "additive"):
        raise OptionError(f"mode must be 'mask' or 'additive', not {mode!r}")
    if importance not in _IMPORTANCE:
        raise OptionError(f"importance must be one of {', '.join(_IMPORTANCE)}, not {importance!r}")
    B = len(x)
    a0 = explainer(x, target, seed) if a is None else np.asarray(a, dtype=np.float64)
    base = make_baseline(x, baseline, rng)
    steps = list(ratios if mode == "mask" else eps)
    park = park_channel0_only or park_cumulative_inplace or park_mask_from_previous

    def masked(src, attribution, r):
        return _mask_top_pixels(src, attribution, r, base, _IMPORTANCE[importance], park, park_channel0_only)

    if mode == "additive":
        u = (
            1.0 - rng.uniform(0.0, 1.0, size=(len(steps), *x.shape))
            if additive_noise == "uniform"
            else rng.standard_normal((len(steps), *x.shape))
        )
        xs = np.stack([x + e * u[i] for i, e in enumerate(steps)]).astype(x.dtype)
        ahat = explain_stacked(explainer, xs, target, seed)
    elif park_mask_from_previous or park_cumulative_inplace:
        ahat = _park_sequence(explainer, x, a0, target, seed, steps, masked, park_cumulative_inplace,
                              park_mask_from_previous)  # fmt: skip
    else:
        ahat = explain_stacked(explainer, np.stack([masked(x, a0, r) for r in steps]), target, seed)
    return _consistency(a0.reshape(B, -1), ahat, steps, variant)


_IMPORTANCE = {
    "mean_abs": lambda v: np.abs(v).mean(1),
    "sum_abs": lambda v: np.abs(v).sum(1),
    "sum": lambda v: v.sum(1),
}


def _mask_top_pixels(src, attribution, r, base, agg, park: bool, channel0_only: bool):
    """``src`` with the ``r`` fraction of pixels most important by ``agg(attribution)`` set to ``base``
    (every channel, or channel 0 only as the notebook)."""
    B, _, H, W = src.shape
    imp = agg(attribution).reshape(B, -1)
    order = np.argsort(-imp, axis=1, kind="stable")
    k = int(H * W * r) if park else int(math.floor(r * H * W + 1e-9))  # the notebook's int() in compat mode
    out = src.copy()
    chans = [0] if channel0_only else slice(None)
    for b in range(B):
        hw = np.unravel_index(order[b, :k], (H, W))
        out[b][chans, hw[0], hw[1]] = base[b][chans, hw[0], hw[1]]
    return out


def explain_stacked(explainer, xs, target, seed):
    """The attributions of a stack ``(n, B, C, H, W)`` of perturbed batches, in one explainer call, as
    ``(n, B, features)``. Rows go sample-major (every metric's convention: a sample's companion inputs
    follow its rows)."""
    n, B = xs.shape[:2]
    rows = xs.swapaxes(0, 1).reshape(-1, *xs.shape[2:])
    return explainer(rows, np.repeat(target, n), seed).reshape(B, n, -1).swapaxes(0, 1)


def _park_sequence(explainer, x, a0, target, seed, steps, masked, cumulative: bool, from_previous: bool):
    """The notebook's sequential masking: masks accumulating in place and/or each mask built from the
    previous masked input's attribution."""
    cur, prev_attr, outs = x.copy(), a0, []
    for r in steps:
        xh = masked(cur if cumulative else x, prev_attr if from_previous else a0, r)
        ah = explainer(xh, target, seed)
        outs.append(ah.reshape(len(x), -1))
        cur, prev_attr = xh, ah
    return np.stack(outs)


def _consistency(flat0, ahat, steps, variant: str) -> dict:
    """Kendall τ and cosine of every (sample, step) against the unperturbed attribution, and their means."""
    B = len(flat0)
    tau = np.array(
        [[kendall_rows(flat0[b], ahat[i, b], variant) for i in range(len(steps))] for b in range(B)]
    )
    cos = np.array([[cosine_rows(flat0[b], ahat[i, b]) for i in range(len(steps))] for b in range(B)])

    def nanmean(v, axis=None):
        return np.nanmean(v, axis) if np.isfinite(v).any() else np.full(len(steps), np.nan)

    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return {
            "steps": np.asarray(steps),
            "kendall": tau,
            "cosine": cos,
            "kendall_by_step": nanmean(tau, 0),
            "cosine_by_step": nanmean(cos, 0),
            "kendall_mean": np.array([np.nanmean(t) if np.isfinite(t).any() else np.nan for t in tau]),
        }
