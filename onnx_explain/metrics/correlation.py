"""Subset-removal metrics: sensitivity-n (Ancona), faithfulness correlation (Bhatt), infidelity (Yeh).
docs/methods.md §3.5, §3.6, §3.8. Random subsets are drawn per row from a generator seeded by (seed, row), so
results do not depend on the batch size."""

from __future__ import annotations

import numpy as np

from ..errors import OptionError
from .base import Predictor, channel_map, full_attribution, make_baseline, register_metric


def _units(x, a, level, agg="sum"):
    """(per-unit relevance (B, U), unit of every element (n_elements,))."""
    B = len(x)
    if level == "pixel" and x.ndim > 2:
        rel = channel_map(a, x.shape, agg).reshape(B, -1)
        return rel, np.tile(np.arange(rel.shape[1]), x.shape[1])
    if level in ("pixel", "element"):
        rel = full_attribution(a, x.shape).reshape(B, -1)
        return rel, np.arange(rel.shape[1])
    raise OptionError(f"feature_level must be 'pixel' or 'element', not {level!r}")


def _row_rng(seed: int, row: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(row)])


def _pearson(u: np.ndarray, v: np.ndarray) -> float:
    if u.std() == 0 or v.std() == 0:
        return float("nan")
    return float(np.corrcoef(u, v)[0, 1])


def _subset_scores(predictor, x, target, unit_of_element, subsets_for_row, n_rows_per_sample, baseline_arr):
    """Δf = f(x) − f(x with the row's unit subset replaced) for every (sample, row)."""
    B = len(x)
    flat_x, flat_b = x.reshape(B, -1), baseline_arr.reshape(B, -1)
    f0 = predictor(x)[np.arange(B), target]

    def make_rows(a, b):
        out = np.empty((b - a, flat_x.shape[1]), dtype=x.dtype)
        for i, r in enumerate(range(a, b)):
            owner = r // n_rows_per_sample
            mask = np.isin(unit_of_element, subsets_for_row(r))
            out[i] = np.where(mask, flat_b[owner], flat_x[owner])
        return out.reshape(b - a, *x.shape[1:])

    fs = predictor.target_scores(B * n_rows_per_sample, make_rows, np.repeat(target, n_rows_per_sample))
    return f0[:, None] - fs.reshape(B, n_rows_per_sample)


@register_metric(
    "sensitivity_n",
    "Pearson correlation of Σ_S R with f(x) − f(x_S=0) over random subsets of size n (Ancona)",
    score="auc",
    higher_is_better=True,
    modalities=("image", "table", "tokens"),
    stochastic=True,
    cost="len(n_values) × n_subsets forward",
    overview=("table", "tokens"),
    input_options=("baseline",),
)
def sensitivity_n(
    predictor: Predictor,
    x,
    a,
    target,
    rng,
    n_values=None,
    n_subsets: int = 100,
    feature_level: str = "pixel",
    baseline="zero",
    seed: int = 0,
    subsets=None,
):
    """Sensitivity-n with posthoceval's defaults: 16 values of n from 1 to 80 % of the features, 100
    subsets each; PCC per sample and n, averaged over samples (NaN excluded, counted).

    ``subsets``: explicit unit indices, a list over n of arrays ``(B, n_subsets, n)``.
    """
    B = len(x)
    rel, unit_of_element = _units(x, a, feature_level)
    d = rel.shape[1]
    if n_values is None:
        ns = np.unique(np.round(np.linspace(1, max(0.8 * d, min(2, d)), min(16, d))).astype(int))
    else:
        ns = np.unique([int(round(v * d)) if isinstance(v, float) and v < 1 else int(v) for v in n_values])
    ns = ns[(ns >= 1) & (ns <= d)]
    S = int(n_subsets) if subsets is None else np.asarray(subsets[0]).shape[1]
    per_sample = len(ns) * S

    def subset(r):
        b, k = divmod(r, per_sample)
        j, s = divmod(k, S)
        if subsets is not None:
            return np.asarray(subsets[j])[b, s]
        return _row_rng(seed, r).choice(d, ns[j], replace=False)

    base = make_baseline(x, baseline, rng)
    delta = _subset_scores(predictor, x, target, unit_of_element, subset, per_sample, base).reshape(
        B, len(ns), S
    )
    sums = np.empty((B, len(ns), S))
    for b in range(B):
        for j in range(len(ns)):
            for s in range(S):
                sums[b, j, s] = rel[b, subset(b * per_sample + j * S + s)].sum()
    pcc = np.array([[_pearson(sums[b, j], delta[b, j]) for j in range(len(ns))] for b in range(B)])
    valid = ~np.isnan(pcc)
    mean = np.where(valid.any(0), np.nansum(np.where(valid, pcc, 0), 0) / np.maximum(valid.sum(0), 1), np.nan)
    span = max(ns[-1] - 1, 1)
    auc_per_sample = (
        np.array([np.trapezoid(np.nan_to_num(p), ns) / span for p in pcc]) if len(ns) > 1 else pcc[:, 0]
    )
    return {"n": ns, "pcc": pcc, "pcc_mean": mean, "n_valid": valid.sum(0), "auc": auc_per_sample}


@register_metric(
    "faithfulness_correlation",
    "Pearson correlation of Σ_S Φ with f(x) − f(x_S=baseline) over random subsets (Bhatt)",
    score="correlation",
    higher_is_better=True,
    modalities=("image", "table", "tokens"),
    stochastic=True,
    cost="n_runs forward",
    overview=("image", "table", "tokens"),
    input_options=("baseline",),
)
def faithfulness_correlation(
    predictor: Predictor,
    x,
    a,
    target,
    rng,
    subset_size: int | None = None,
    n_runs: int = 100,
    feature_level: str = "element",
    baseline="zero",
    seed: int = 0,
    subsets=None,
):
    """Faithfulness correlation (Quantus semantics: every run perturbs the original x).

    ``subset_size`` default: Quantus' 224 units when there are at least 448, else a quarter of them (at
    least one): a table of 8 features perturbs 2 per run, where 224 (or all of them) would make every run
    the same and the correlation undefined. ``subsets``: explicit unit indices ``(B, n_runs,
    subset_size)`` (to replay another library's draws). A sample whose sums or score changes do not vary
    over the runs has no correlation: NaN, counted and explained in ``undefined``.
    """
    B = len(x)
    rel, unit_of_element = _units(x, a, feature_level)
    d = rel.shape[1]
    if subsets is not None:
        subsets = np.asarray(subsets)
        n_runs, subset_size = subsets.shape[1:]
    if subset_size is None:
        subset_size = 224 if d >= 448 else max(1, d // 4)
    size = min(int(subset_size), d)

    def subset(r):
        b, k = divmod(r, n_runs)
        return subsets[b, k] if subsets is not None else _row_rng(seed, r).choice(d, size, replace=False)

    base = make_baseline(x, baseline, rng)
    delta = _subset_scores(predictor, x, target, unit_of_element, subset, n_runs, base)
    sums = np.array([[rel[b, subset(b * n_runs + k)].sum() for k in range(n_runs)] for b in range(B)])
    corr = np.array([_pearson(sums[b], delta[b]) for b in range(B)])
    out = {"correlation": corr, "attribution_sums": sums, "deltas": delta, "subset_size": size}
    bad = int(np.isnan(corr).sum())
    if bad:
        out["undefined"] = (
            f"{bad} of {B} sample(s): the attribution sums or the score changes are constant over the "
            f"{n_runs} subsets of {size} of {d} units (no correlation); use a smaller subset_size"
        )
    return out


def _safe_div(num, den, default=1.0):
    return num / np.where(den == 0, default, den)


@register_metric(
    "infidelity",
    "E[(Iᵀ Φ − (f(x) − f(x − I)))²] over random perturbations I (Yeh)",
    score="infidelity",
    higher_is_better=False,
    stochastic=True,
    cost="n_samples forward",
    overview=("table",),
    input_options=("baseline", "perturbations"),
)
def infidelity(
    predictor: Predictor,
    x,
    a,
    target,
    rng,
    perturbation: str = "gaussian",
    sigma: float = 0.1,
    sizes=(4,),
    n_samples: int = 10,
    baseline="zero",
    multiply_by_inputs: bool = False,
    normalize: bool = False,
    seed: int = 0,
    perturbations=None,
):
    """Infidelity.

    Parameters
    ----------
    perturbation : {'gaussian', 'square'}
        ``gaussian``: I ~ N(0, (σ·(max − min of the sample))²) per element, x̃ = x − I (local maps);
        ``square``: a random square of side in ``sizes`` set to ``baseline`` (global maps).
    multiply_by_inputs : bool
        Captum's convention: I = (x − x̃)/(x − baseline) (an indicator for square removal), for
        attributions that already multiply by the input; else I = x − x̃.
    normalize : bool
        Yeh's optimal scaling β of Φ (Captum ``normalize=True``): invariant to scaling Φ.
    perturbations : tuple of arrays, optional
        Explicit ``(I, x̃)``, each ``(B, n, *S)``.
    """
    B, S = len(x), x.shape[1:]
    phi = full_attribution(a, x.shape).reshape(B, -1)
    base = make_baseline(x, baseline, rng)
    if perturbations is not None:
        I_all, xt_all = (np.asarray(p) for p in perturbations)
        n_samples = I_all.shape[1]
    rngx = (x.reshape(B, -1).max(1) - x.reshape(B, -1).min(1)) * sigma

    def pert(r):
        b, k = divmod(r, n_samples)
        if perturbations is not None:
            return I_all[b, k].reshape(-1), xt_all[b, k]
        g = _row_rng(seed, r)
        if perturbation == "gaussian":
            xt = (x[b] - g.standard_normal(S) * rngx[b]).astype(x.dtype)
        elif perturbation == "square":
            if x.ndim != 4:
                raise OptionError("square perturbations need images (B, C, H, W)")
            s = int(g.choice(np.asarray(sizes)))
            h0, w0 = g.integers(0, S[1] - s + 1), g.integers(0, S[2] - s + 1)
            xt = x[b].copy()
            xt[:, h0 : h0 + s, w0 : w0 + s] = base[b][:, h0 : h0 + s, w0 : w0 + s]
        else:
            raise OptionError(f"perturbation must be 'gaussian' or 'square', not {perturbation!r}")
        diff = x[b].astype(np.float64) - xt
        i = _safe_div(diff, x[b] - base[b]) if multiply_by_inputs else diff
        return i.reshape(-1), xt

    dots = np.empty((B, n_samples))

    def make_rows(lo, hi):
        rows = []
        for r in range(lo, hi):
            i, xt = pert(r)
            dots.flat[r] = float(i @ phi[r // n_samples])
            rows.append(xt)
        return np.stack(rows).astype(x.dtype)

    f0 = predictor(x)[np.arange(B), target]
    fs = predictor.target_scores(B * n_samples, make_rows, np.repeat(target, n_samples)).reshape(B, n_samples)
    delta = f0[:, None] - fs
    if normalize:
        beta = _safe_div((dots * delta).mean(1), (dots * dots).mean(1))
        infd = beta**2 * (dots * dots).mean(1) - 2 * beta * (dots * delta).mean(1) + (delta * delta).mean(1)
    else:
        infd = ((dots - delta) ** 2).mean(1)
    return {"infidelity": infd, "dots": dots, "deltas": delta}
