"""ROAD (Rong et al. 2022) and ADCC (Poppi et al. 2021): docs/methods.md §3.14.

ROAD removes the most (MoRF) or least (LeRF) relevant p % of pixels and fills them by noisy linear
imputation, so that the model sees no sharp mask edges; pytorch-grad-cam's ``metrics/road.py`` is the
reference. ADCC folds a map's average drop, coherency and complexity into one harmonic mean; it re-explains
the masked input with the metric's explainer (``explainer(x, target, seed) -> attribution``, the
convention of :mod:`onnx_explain.metrics.robustness`).
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import OptionError
from .base import Predictor, channel_map, rank, register_metric

__all__ = ["NEIGHBOURS", "adcc", "linear_impute", "removal_masks", "road"]

#: ``(row offset, column offset, weight)`` of the 8 neighbours of a filled pixel: 1/6 for the direct
#: ones, 1/12 for the diagonals (pytorch-grad-cam's order, so the equations add up in the same order)
NEIGHBOURS = (
    (1, 1, 1 / 12),
    (0, 1, 1 / 6),
    (-1, 1, 1 / 12),
    (1, -1, 1 / 12),
    (0, -1, 1 / 6),
    (-1, -1, 1 / 12),
    (1, 0, 1 / 6),
    (-1, 0, 1 / 6),
)

#: the removed percentages of pytorch-grad-cam's ROAD averages
PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)
ORDERS = ("morf", "lerf", "combined")
TIES = ("threshold", "rank")
NORMALISE = ("minmax", "none")


def linear_impute(img: np.ndarray, removed: np.ndarray, noise: float = 0.0, z: np.ndarray | None = None):
    """``img`` with its ``removed`` pixels filled by noisy linear imputation (Rong et al. 2022).

    Each removed pixel is the weighted mean of its neighbours inside the image (:data:`NEIGHBOURS`; at a
    border the mean is over the weights present), removed neighbours being unknowns too: one sparse
    linear system per image, every channel a right-hand side. Then ``noise · z`` is added to the filled
    pixels.

    Parameters
    ----------
    img : numpy.ndarray
        One image ``(C, H, W)``.
    removed : numpy.ndarray of bool
        ``(H, W)``: the pixels to fill (every channel). When it is every pixel there is nothing to impute
        from and they are filled with 0 (plus the noise), as pytorch-grad-cam's solver returns.
    noise : float
        σ of the Gaussian noise on the filled pixels (0: none).
    z : numpy.ndarray, optional
        Standard normal draws ``(C, H, W)`` (read at the removed pixels); needed when ``noise > 0``.

    Returns
    -------
    numpy.ndarray
        The filled image, ``img``'s shape and dtype. The solve runs in float64; the products of weights
        and known pixels are taken in the image's dtype, as pytorch-grad-cam does.
    """
    # scipy.sparse here, not at the top: it would add ~0.3 s to every import of the metrics registry
    # (``evaluate --help`` reads it), as the other metrics' scipy imports do
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import spsolve

    C, H, W = img.shape
    rem = np.asarray(removed, dtype=bool).reshape(-1)
    if rem.shape != (H * W,):
        raise OptionError(f"removed has shape {np.shape(removed)}; the image's pixels are {[H, W]}")
    idx = np.flatnonzero(rem)
    n = len(idx)
    out = img.copy()
    if n == 0:
        return out
    flat = img.reshape(C, -1)
    var = np.full(H * W, -1, dtype=np.int64)
    var[idx] = np.arange(n)
    r, c = np.divmod(idx, W)
    rows, cols, vals = [], [], []
    diag = np.ones(n)  # 1 minus the weights of neighbours outside the image (pytorch-grad-cam's sum)
    rhs = np.zeros((n, C))
    for dr, dc, w in NEIGHBOURS:
        rr, cc = r + dr, c + dc
        inside = (rr >= 0) & (cc >= 0) & (rr < H) & (cc < W)
        diag[~inside] -= w
        eq = np.flatnonzero(inside)
        nb = rr[inside] * W + cc[inside]
        unknown = rem[nb]
        rhs[eq[~unknown]] -= (w * flat[:, nb[~unknown]]).T
        rows.append(eq[unknown])
        cols.append(var[nb[unknown]])
        vals.append(np.full(int(unknown.sum()), w))
    rows.append(np.arange(n))
    cols.append(np.arange(n))
    vals.append(-diag)
    if n == H * W:  # nothing to impute from: the system is singular (constants solve it) with rhs 0
        sol = np.zeros((C, n), dtype=img.dtype)  # its least-norm solution, what pytorch-grad-cam returns
    else:
        A = coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
        sol = np.asarray(spsolve(A.tocsc(), rhs)).reshape(n, C).T.astype(img.dtype)
    if noise:
        if z is None:
            raise OptionError("noise > 0 needs its standard normal draws z")
        sol = sol + (noise * z.reshape(C, -1)[:, idx]).astype(img.dtype)
    out.reshape(C, -1)[:, idx] = sol
    return out


def removal_masks(m: np.ndarray, percentiles, order: str, ties: str = "threshold") -> np.ndarray:
    """The pixels ROAD removes, ``(B, T, H·W)`` booleans for maps ``m`` ``(B, H, W)``.

    Parameters
    ----------
    m : numpy.ndarray
        One map per image.
    percentiles : sequence of float
        The removed percentages p (0 < p < 100).
    order : {'morf', 'lerf'}
        Remove the highest (MoRF) or the lowest (LeRF) values.
    ties : {'threshold', 'rank'}
        ``threshold`` (pytorch-grad-cam): remove every pixel whose value is at or beyond the map's
        ``100 − p`` percentile (numpy's linear interpolation), so a plateau at the threshold goes whole and
        more than p % may go; ``rank``: remove exactly ``floor(p/100 · H·W)`` pixels by a stable ranking,
        ties to the lower flat index first.
    """
    B = len(m)
    flat = np.asarray(m, dtype=np.float64).reshape(B, -1)
    p = np.asarray(percentiles, dtype=np.float64)
    if ties == "threshold":
        s = flat if order == "morf" else -flat  # pytorch-grad-cam ranks 1 − map for LeRF: the same order
        thr = np.percentile(s, 100 - p, axis=1).T  # (B, T)
        return s[:, None, :] >= thr[:, :, None]
    pos = np.empty(flat.shape, dtype=np.int64)
    ordr = rank(flat, order)
    pos[np.arange(B)[:, None], ordr] = np.arange(flat.shape[1])[None]
    k = np.floor(p * flat.shape[1] / 100 + 1e-9).astype(np.int64)
    return pos[:, None, :] < k[None, :, None]


def _check_percentiles(percentiles) -> np.ndarray:
    p = np.asarray(percentiles, dtype=np.float64).reshape(-1)
    if p.size == 0 or not np.all((p > 0) & (p < 100)):
        raise OptionError(
            f"percentiles must be removed percentages strictly between 0 and 100, not {percentiles!r}"
        )
    return p


@register_metric(
    "road",
    "ROAD: score with the most (MoRF) or least (LeRF) relevant p % of pixels imputed; LeRF − MoRF gap (Rong)",
    score="road",
    higher_is_better=lambda o: o.get("order", "combined") != "morf",
    modalities=("image",),
    stochastic=True,
    cost="1 + len(percentiles) forward (twice for 'combined'), a sparse solve per row",
)
def road(
    predictor: Predictor,
    x: np.ndarray,
    a: np.ndarray,
    target: np.ndarray,
    rng: np.random.Generator,
    order: str = "combined",
    percentiles=PERCENTILES,
    noise: float = 0.01,
    ties: str = "threshold",
    agg: str = "sum",
):
    """Remove and Debias (ROAD, Rong et al. 2022) with noisy linear imputation.

    For each removed percentage p the pixels chosen by :func:`removal_masks` are filled by
    :func:`linear_impute` (every channel) plus N(0, ``noise``²) noise, and the target is scored. All rows
    (the unperturbed image and every step of every image) go through the model in batches.

    Parameters
    ----------
    order : {'combined', 'morf', 'lerf'}
        ``combined``: both, summarised as pytorch-grad-cam's ``ROADCombined`` (higher is better); ``morf``
        (lower is better), ``lerf`` (higher is better).
    percentiles : sequence of float
        The removed percentages p. pytorch-grad-cam names the kept percentile instead: its
        ``ROADMostRelevantFirst(q)`` and ``ROADLeastRelevantFirst(q)`` are p = 100 − q here, and its
        averages' default 10 … 90 is the same set.
    noise : float
        σ of the imputation noise (0.01, the paper's and the reference's). Draws are made per (order,
        step) from the call's generator and shared by every image, so an image's scores depend on nothing
        but itself and the seed (not on the batch, nor on the other images).
    ties : {'threshold', 'rank'}
        See :func:`removal_masks`: ``threshold`` is the reference's rule; a map with a plateau (a CAM's
        zeros) can then lose every pixel at some step, with nothing left to impute from: those pixels
        become 0 (:func:`linear_impute`, as the reference) and ``all_removed_*`` flags the step.
    agg : str
        Channel aggregation of an input-shaped attribution (docs/methods.md §1.3).

    Returns
    -------
    dict
        ``percentiles``; ``score0`` (B,), the unperturbed score; ``curve_morf`` and/or ``curve_lerf``
        (B, T), the scores after imputation; ``curve``: that curve for one order, the per-step gap
        (LeRF − MoRF) / 2 for ``combined``; ``road``: the mean over p of ``curve − score0`` for one order
        (pytorch-grad-cam's ``ROAD...Average``), of the gap for ``combined`` (``ROADCombined``); per order
        shown, ``road_morf``/``road_lerf``, ``removed_fraction_*`` and ``all_removed_*`` (B, T).
    """
    if x.ndim != 4:
        raise OptionError(f"ROAD needs images (B, C, H, W), got shape {x.shape}")
    if order not in ORDERS:
        raise OptionError(f"order must be one of {', '.join(map(repr, ORDERS))}, not {order!r}")
    if ties not in TIES:
        raise OptionError(f"ties must be one of {', '.join(map(repr, TIES))}, not {ties!r}")
    noise = float(noise)
    if not (math.isfinite(noise) and noise >= 0):
        raise OptionError(f"noise must be a finite σ ≥ 0, not {noise!r}")
    p = _check_percentiles(percentiles)
    B, C, H, W = x.shape
    T = len(p)
    m = channel_map(a, x.shape, agg)
    orders = ("morf", "lerf") if order == "combined" else (order,)
    removed = {o: removal_masks(m, p, o, ties) for o in orders}
    plan = [(o, j) for o in orders for j in range(T)]
    per = 1 + len(plan)
    base = int(rng.integers(0, 2**62))

    def draws(o: str, j: int) -> np.ndarray | None:
        if not noise:
            return None
        return np.random.default_rng([base, ORDERS.index(o), j]).standard_normal((C, H, W))

    def make_rows(lo: int, hi: int) -> np.ndarray:
        out = np.empty((hi - lo, C, H, W), dtype=x.dtype)
        for r in range(lo, hi):
            b, k = divmod(r, per)
            if k == 0:
                out[r - lo] = x[b]  # the unperturbed score, in the same stream
                continue
            o, j = plan[k - 1]
            out[r - lo] = linear_impute(x[b], removed[o][b, j].reshape(H, W), noise, draws(o, j))
        return out

    scores = predictor.target_scores(B * per, make_rows, np.repeat(target, per)).reshape(B, per)
    score0 = scores[:, 0]
    res: dict = {"percentiles": p, "score0": score0}
    for i, o in enumerate(orders):
        curve = scores[:, 1 + i * T : 1 + (i + 1) * T]
        res[f"curve_{o}"] = curve
        res[f"removed_fraction_{o}"] = removed[o].mean(2)
        res[f"all_removed_{o}"] = removed[o].all(2)
        res[f"road_{o}"] = (curve - score0[:, None]).mean(1)
    if order == "combined":
        res["curve"] = (res["curve_lerf"] - res["curve_morf"]) / 2
        res["road"] = (res["road_lerf"] - res["road_morf"]) / 2
    else:
        res["curve"] = res[f"curve_{order}"]
        res["road"] = res[f"road_{order}"]
    return res


def _unit_map(m: np.ndarray, normalise: str) -> np.ndarray:
    """Maps ``(B, H, W)`` in [0, 1]: min-max rescaled per image (a constant map becomes 0), or checked."""
    if normalise == "minmax":
        flat = m.reshape(len(m), -1)
        lo = flat.min(1)[:, None, None]
        span = flat.max(1)[:, None, None] - lo
        return np.where(span > 0, (m - lo) / np.where(span > 0, span, 1.0), 0.0)
    if normalise != "none":
        raise OptionError(f"normalise must be one of {', '.join(map(repr, NORMALISE))}, not {normalise!r}")
    if not (np.all(np.isfinite(m)) and m.min() >= 0 and m.max() <= 1):
        raise OptionError(
            f"normalise='none' needs maps in [0, 1]; these span [{m.min():.3g}, {m.max():.3g}]: use 'minmax'"
        )
    return m


def _pearson(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Row-wise Pearson correlation; NaN where a row of either is constant."""
    const = (np.ptp(u, 1) == 0) | (np.ptp(v, 1) == 0)
    uc = u - u.mean(1, keepdims=True)
    vc = v - v.mean(1, keepdims=True)
    den = np.sqrt((uc * uc).sum(1) * (vc * vc).sum(1))
    r = (uc * vc).sum(1) / np.where(const, 1.0, den)
    return np.where(const, np.nan, np.clip(r, -1.0, 1.0))


@register_metric(
    "adcc",
    "ADCC: harmonic mean of coherency, 1 − complexity and 1 − average drop of a map (Poppi et al. 2021)",
    score="adcc",
    higher_is_better=True,
    needs_explainer=True,
    output="prob",
    modalities=("image",),
    cost="2 forward + the explainer on the masked inputs",
)
def adcc(
    predictor: Predictor,
    x: np.ndarray,
    a: np.ndarray | None,
    target: np.ndarray,
    rng: np.random.Generator,
    explainer=None,
    normalise: str = "minmax",
    agg: str = "sum",
    seed: int = 0,
):
    """Average Drop, Coherency and Complexity (Poppi et al. 2021), and their harmonic mean ADCC.

    With the map s of x rescaled to [0, 1] and o the score of x ⊙ s (s on every channel), per image:
    AD = max(0, y − o) / y; coherency = (r + 1) / 2 with r the Pearson correlation of s and the map of
    x ⊙ s (re-explained by ``explainer`` for the same target, the same seed), as the authors' code
    rescales it; complexity = ‖s‖₁ / (H·W); ADCC = 3 / (1/coherency + 1/(1 − complexity) + 1/(1 − AD)).
    Use ``output='prob'`` (the default here, the authors' softmax confidence).

    Edge cases: a term of 0 (complexity 1, as for an all-ones map; AD 1; coherency 0) gives ADCC 0, the
    harmonic mean's limit. A constant map has no correlation (``pearson`` NaN): coherency is 0 then, as
    in the authors' code for a map that normalises to NaN. AD has no value for a score y ≤ 0 (logits):
    NaN.

    Parameters
    ----------
    explainer : callable
        ``explainer(x, target, seed) -> attribution`` (:func:`onnx_explain.evaluate` builds it from a
        method name). ``a`` may be None: x is then explained with it too.
    normalise : {'minmax', 'none'}
        ``minmax``: each map rescaled to [0, 1] (a constant map becomes 0); ``none``: maps used as given,
        which must lie in [0, 1] (a CAM).
    agg : str
        Channel aggregation of an input-shaped attribution (docs/methods.md §1.3).
    seed : int
        The explainer's seed (common random numbers for a stochastic explainer).

    Returns
    -------
    dict
        Per image: ``adcc``, ``average_drop``, ``coherency``, ``pearson``, ``complexity``, ``score0`` (y),
        ``score_masked`` (o).
    """
    if x.ndim != 4:
        raise OptionError(f"ADCC needs images (B, C, H, W), got shape {x.shape}")
    if normalise not in NORMALISE:
        raise OptionError(f"normalise must be one of {', '.join(map(repr, NORMALISE))}, not {normalise!r}")
    B, C, H, W = x.shape
    a0 = explainer(x, target, seed) if a is None else a
    s = _unit_map(channel_map(a0, x.shape, agg), normalise)
    masked = (x * s[:, None]).astype(x.dtype)

    def make_rows(lo: int, hi: int) -> np.ndarray:
        rows = np.arange(lo, hi)
        b, k = np.divmod(rows, 2)  # sample-major: (x_b, x_b ⊙ s_b)
        return np.where((k == 0)[:, None, None, None], x[b], masked[b])

    yo = predictor.target_scores(2 * B, make_rows, np.repeat(target, 2)).reshape(B, 2)
    y, o = yo[:, 0], yo[:, 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        drop = np.where(y > 0, np.maximum(0.0, y - o) / np.where(y > 0, y, 1.0), np.nan)
    s1 = channel_map(explainer(masked, target, seed), x.shape, agg)
    r = _pearson(s.reshape(B, -1), s1.reshape(B, -1))
    coherency = np.where(np.isnan(r), 0.0, (r + 1) / 2)
    complexity = np.abs(s).reshape(B, -1).sum(1) / (H * W)
    terms = np.stack([coherency, 1 - complexity, 1 - drop])
    with np.errstate(divide="ignore", invalid="ignore"):
        score = np.where((terms <= 0).any(0), 0.0, 3 / (1 / terms).sum(0))
    score = np.where(np.isnan(drop), np.nan, score)
    res = {
        "adcc": score,
        "average_drop": drop,
        "coherency": coherency,
        "pearson": r,
        "complexity": complexity,
        "score0": y,
        "score_masked": o,
    }
    if np.isnan(drop).any():
        res["undefined"] = f"{int(np.isnan(drop).sum())} of {B} item(s) score y ≤ 0: use output='prob'"
    return res
