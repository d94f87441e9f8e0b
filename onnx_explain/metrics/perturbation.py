"""Cumulative perturbation curves: pixel flipping, region perturbation (AOPC, MoRF/LeRF), deletion and
insertion (docs/methods.md §3.1–3.3). One engine: every (sample, step) row is built chunk by chunk and all
rows go through the model in batches."""

from __future__ import annotations

import math

import numpy as np

from ..errors import OptionError
from .base import Predictor, channel_map, full_attribution, make_baseline, rank, register_metric, trapezoid


def cumulative_curve(
    predictor: Predictor,
    x: np.ndarray,
    target: np.ndarray,
    unit_of_element: np.ndarray,
    order: np.ndarray,
    counts: np.ndarray,
    replacement: np.ndarray,
) -> np.ndarray:
    """Scores ``(B, len(counts))`` of x with its first ``counts[t]`` units (in ``order``) replaced.

    ``unit_of_element`` gives the unit (pixel, region, feature) of every element of one sample (flat,
    length C·H·W); ``order`` is ``(B, n_units)``; ``replacement`` has x's shape; ``counts`` is ``(T,)``, or
    ``(B, T)`` when samples replace different numbers of units per step.
    """
    B = len(x)
    T = len(counts)
    flat_x = x.reshape(B, -1)
    flat_r = replacement.reshape(B, -1)
    pos = np.empty_like(order)
    pos[np.arange(B)[:, None], order] = np.arange(order.shape[1])[None]
    pos_el = pos[:, unit_of_element]  # (B, n_elements): when each element is replaced
    counts = np.asarray(counts)
    T = counts.shape[-1]
    counts = np.broadcast_to(counts, (B, T))

    def make_rows(a, b):
        out = np.empty((b - a, flat_x.shape[1]), dtype=x.dtype)
        r = a
        while r < b:  # rows are sample-major: one vectorised block per sample, no per-row gathers
            owner = r // T
            stop = min(b, (owner + 1) * T)
            steps = np.arange(r, stop) - owner * T
            mask = pos_el[owner][None, :] < counts[owner, steps][:, None]
            np.copyto(out[r - a : stop - a], np.where(mask, flat_r[owner], flat_x[owner]), casting="unsafe")
            r = stop
        return out.reshape(b - a, *x.shape[1:])

    scores = predictor.target_scores(B * T, make_rows, np.repeat(target, T))
    return scores.reshape(B, T)


def _quantus_mean_fill(x, unit_of_element, order, counts):
    """Quantus' 'mean' baseline: each step fills with the mean of the array as perturbed so far."""
    B = len(x)
    cur = x.reshape(B, -1).astype(np.float64).copy()
    fill = np.empty_like(cur)
    pos = np.empty_like(order)
    pos[np.arange(B)[:, None], order] = np.arange(order.shape[1])[None]
    pos_el = pos[:, unit_of_element]
    for lo, hi in zip(counts[:-1], counts[1:], strict=True):
        m = cur.mean(1, keepdims=True)
        sel = (pos_el >= lo) & (pos_el < hi)
        cur = np.where(sel, m, cur)
        fill = np.where(sel, m, fill)
    return fill.reshape(x.shape).astype(x.dtype)


def _replacement(x, baseline, rng, unit_of_element, order, counts):
    if isinstance(baseline, str) and baseline == "quantus_mean":
        return _quantus_mean_fill(x, unit_of_element, order, counts)
    return make_baseline(x, baseline, rng)


def _counts(n_units: int, per_step: int) -> np.ndarray:
    steps = math.ceil(n_units / per_step)
    return np.minimum(np.arange(steps + 1) * per_step, n_units)


def _summaries(curve: np.ndarray) -> dict:
    T = curve.shape[1] - 1
    return {
        "auc": trapezoid(curve, 1.0 / max(T, 1)),
        "aopc": (curve[:, :1] - curve).mean(1),
    }


@register_metric(
    "pixel_flipping",
    "score while the most (MoRF) or least (LeRF) relevant pixels are replaced cumulatively",
    score="aopc",
    higher_is_better=lambda o: o.get("order", "morf") == "morf",
    cost="n_steps forward",
    overview=("image",),
    input_options=("baseline",),
)
def pixel_flipping(
    predictor: Predictor,
    x: np.ndarray,
    a: np.ndarray,
    target: np.ndarray,
    rng: np.random.Generator,
    mode: str = "pixel",
    order: str = "morf",
    pixels_per_step: int | None = None,
    n_steps: int | None = None,
    baseline="zero",
    agg: str = "sum",
):
    """Pixel flipping (Bach et al. 2015).

    Parameters
    ----------
    mode : {'pixel', 'feature'}
        ``pixel``: rank the channel-aggregated map (``agg``) and replace every channel of a pixel;
        ``feature``: rank and replace single elements (Quantus semantics).
    order : {'morf', 'lerf', 'random'}
    pixels_per_step, n_steps : int, optional
        Units replaced per step, or the number of steps (default: 1 % of the units per step).
    baseline : see :func:`onnx_explain.metrics.base.make_baseline`

    Returns
    -------
    dict
        ``curve`` (B, T+1) from the unperturbed score, ``auc`` (trapezoid on a [0, 1] axis), ``aopc``,
        and the Quantus views ``quantus_curve`` (no step 0) and ``quantus_auc`` (trapezoid, dx=1).
    """
    B = len(x)
    spatial = x.shape[2:] if x.ndim > 2 else x.shape[1:]
    if mode == "pixel" and x.ndim > 2:
        imp = channel_map(a, x.shape, agg).reshape(B, -1)
        n_pix = int(np.prod(spatial))
        unit_of_element = np.tile(np.arange(n_pix), x.shape[1])
    elif mode in ("pixel", "feature"):
        imp = full_attribution(a, x.shape).reshape(B, -1)
        unit_of_element = np.arange(imp.shape[1])
    else:
        raise OptionError(f"mode must be 'pixel' or 'feature', not {mode!r}")
    n_units = imp.shape[1]
    if n_steps is not None:
        per_step = math.ceil(n_units / int(n_steps))
    else:
        per_step = int(pixels_per_step) if pixels_per_step else max(1, round(0.01 * n_units))
    counts = _counts(n_units, per_step)
    ordr = rank(imp, order, rng)
    repl = _replacement(x, baseline, rng, unit_of_element, ordr, counts)
    curve = cumulative_curve(predictor, x, target, unit_of_element, ordr, counts, repl)
    out = {"curve": curve, **_summaries(curve), "units_per_step": per_step}
    out["quantus_curve"] = curve[:, 1:]
    out["quantus_auc"] = trapezoid(curve[:, 1:], 1.0) if curve.shape[1] > 2 else np.zeros(B)
    return out


def region_units(spatial: tuple, size: int, offset: tuple = (0, 0)) -> tuple[np.ndarray, int]:
    """Region id of every pixel of an ``(H, W)`` grid of ``size`` × ``size`` squares, the grid shifted by
    ``offset`` (Quantus pads before tiling); border regions may be smaller."""
    H, W = spatial
    oh, ow = offset
    hh, ww = np.meshgrid(np.arange(H) + oh, np.arange(W) + ow, indexing="ij")
    nbw = math.ceil((W + ow) / size)
    rid = (hh // size) * nbw + ww // size
    # renumber to 0..R-1 in row-major order of the grid
    uniq, inv = np.unique(rid.reshape(-1), return_inverse=True)
    return inv, len(uniq)


@register_metric(
    "region_perturbation",
    "AOPC of square regions replaced cumulatively in order of summed relevance (Samek et al. 2017)",
    score="aopc",
    higher_is_better=lambda o: o.get("order", "morf") == "morf",
    modalities=("image",),
    cost="n_regions forward (twice with compare_lerf)",
    input_options=("baseline",),
)
def region_perturbation(
    predictor: Predictor,
    x: np.ndarray,
    a: np.ndarray,
    target: np.ndarray,
    rng: np.random.Generator,
    region: int = 9,
    order: str = "morf",
    n_regions: int = 100,
    baseline="zero",
    agg: str = "sum",
    compare_lerf: bool = False,
    quantus_padding: bool = False,
):
    """Region perturbation on a grid of ``region`` × ``region`` squares (all channels).

    Parameters
    ----------
    agg : {'sum', 'mean', 'mean_abs'}
        How a region's relevance is scored (``sum``: signed sum over its channels and pixels, Quantus).
    n_regions : int
        L, the number of regions replaced (at most the number of regions).
    compare_lerf : bool
        Also run LeRF and report ``aopc_lerf`` and ``abpc`` = AOPC_MoRF − AOPC_LeRF.
    quantus_padding : bool
        Place the grid as Quantus does when H or W is not a multiple of ``region`` (padding split
        floor/ceil on both sides).

    Returns
    -------
    dict
        ``curve`` (B, L+1), ``aopc`` = mean_k (f(x) − f(x^(k))) over k = 0..L, ``quantus_curve``
        (f(x) − f(x^(k)) for k = 1..L, Quantus' return value).
    """
    if x.ndim != 4:
        raise OptionError(f"region perturbation needs images (B, C, H, W), got shape {x.shape}")
    B, C, H, W = x.shape
    offset = (0, 0)
    if quantus_padding:
        offset = tuple(((region - n % region) % region) // 2 for n in (H, W))
    pix_region, n_reg = region_units((H, W), region, offset)
    unit_of_element = np.tile(pix_region, C)
    full = full_attribution(a, x.shape).reshape(B, C, -1)
    per_pixel = {"sum": full.sum(1), "mean": full.mean(1), "mean_abs": np.abs(full).mean(1)}[agg]
    sums = np.zeros((B, n_reg))
    for b in range(B):
        sums[b] = np.bincount(pix_region, weights=per_pixel[b], minlength=n_reg)
    if agg != "sum":
        sums /= np.bincount(pix_region, minlength=n_reg)[None]
    L = min(int(n_regions), n_reg)
    counts = np.arange(L + 1)

    def run(o):
        ordr = rank(sums, o, rng)
        repl = _replacement(x, baseline, rng, unit_of_element, ordr, counts)
        return cumulative_curve(predictor, x, target, unit_of_element, ordr, counts, repl)

    curve = run(order)
    out = {"curve": curve, **_summaries(curve), "n_regions": L, "quantus_curve": curve[:, :1] - curve[:, 1:]}
    if compare_lerf:
        lerf = run("lerf")
        out["curve_lerf"] = lerf
        out["aopc_lerf"] = (lerf[:, :1] - lerf).mean(1)
        out["abpc"] = out["aopc"] - out["aopc_lerf"]
    return out


def _causal(predictor, x, a, target, rng, mode, n_steps, substrate, agg, order, region=None):
    B = len(x)
    sal = channel_map(a, x.shape, agg).reshape(B, -1) if x.ndim > 2 else np.asarray(a).reshape(B, -1)
    n_pix = sal.shape[1]
    per_step = math.ceil(n_pix / int(n_steps))
    counts = _counts(n_pix, per_step)
    if region is not None:  # only the region's pixels are replaced: n_steps equal fractions of each region
        inside = _region(region, B, x.shape[2:] if x.ndim > 2 else x.shape[1:])
        sal = np.where(inside, sal, -np.inf)  # ranked after every pixel of the region, never reached
        n_in = inside.sum(1)
        frac = np.arange(int(n_steps) + 1) / int(n_steps)
        counts = np.minimum(np.ceil(frac[None] * n_in[:, None] - 1e-9).astype(np.int64), n_in[:, None])
        per_step = None
    if order == "rise":  # RISE: np.flip(np.argsort(s)) — quicksort, ties in reversed index order
        ordr = np.stack([np.flip(np.argsort(s)) for s in sal])
    else:
        ordr = rank(sal, "morf", rng)
    if region is not None:  # the region's pixels first, in the order's own sequence (random orders too)
        ordr = np.take_along_axis(ordr, np.argsort(~np.take_along_axis(inside, ordr, 1), 1, kind="stable"), 1)
    unit_of_element = np.tile(np.arange(n_pix), x.shape[1]) if x.ndim > 2 else np.arange(n_pix)
    if mode == "deletion":
        start, finish = x, make_baseline(x, substrate, rng)
    else:
        start, finish = make_baseline(x, substrate, rng), x
    curve = cumulative_curve(predictor, start, target, unit_of_element, ordr, counts, finish)
    auc = (curve.sum(1) - curve[:, 0] / 2 - curve[:, -1] / 2) / (curve.shape[1] - 1)
    if region is not None:
        return {"curve": curve, "auc": auc, "region_pixels": n_in}
    return {"curve": curve, "auc": auc, "pixels_per_step": per_step}


def _region(region, B: int, spatial: tuple) -> np.ndarray:
    """A boolean pixel region ``(H, W)`` or ``(B, H, W)`` as ``(B, H·W)``, checked against the input."""
    r = np.asarray(region)
    if r.dtype != bool:
        raise OptionError(f"region must be a boolean pixel mask, not {r.dtype}")
    if r.shape == tuple(spatial):
        r = np.broadcast_to(r, (B, *spatial))
    if r.shape != (B, *spatial):
        raise OptionError(
            f"region has shape {list(r.shape)}; the input's pixels are {list(spatial)} (or {[B, *spatial]})"
        )
    return r.reshape(B, -1)


@register_metric(
    "deletion",
    "RISE deletion: probability while the most relevant pixels are removed (AUC)",
    score="auc",
    higher_is_better=False,
    output="prob",
    cost="n_steps forward",
    overview=("image",),
    input_options=("substrate",),
)
def deletion(
    predictor,
    x,
    a,
    target,
    rng,
    n_steps: int = 224,
    substrate="zero",
    agg: str = "sum",
    order: str = "stable",
    region=None,
):
    """RISE deletion: start at x, replace ``ceil(H·W / n_steps)`` pixels per step by the substrate
    (default zero), most relevant first. AUC = (Σ s − s_0/2 − s_n/2) / n. Use ``output='prob'``
    (the default of :func:`onnx_explain.evaluate` for this metric) for RISE's numbers. ``region`` (a
    boolean ``(H, W)`` or ``(B, H, W)`` mask) replaces only its pixels, ``ceil(t/n_steps · |region|)`` at
    step t; a segmentation mask target reports deletion inside and outside its mask this way."""
    return _causal(predictor, x, a, target, rng, "deletion", n_steps, substrate, agg, order, region)


@register_metric(
    "insertion",
    "RISE insertion: probability while the most relevant pixels are inserted into a blurred copy (AUC)",
    score="auc",
    higher_is_better=True,
    output="prob",
    modalities=("image",),
    cost="n_steps forward",
    overview=("image",),
    input_options=("substrate",),
)
def insertion(
    predictor,
    x,
    a,
    target,
    rng,
    n_steps: int = 224,
    substrate="blur",
    agg: str = "sum",
    order: str = "stable",
    region=None,
):
    """RISE insertion: start at the substrate (default: x blurred with RISE's kernel), insert x's pixels
    most relevant first (only those of ``region`` when given, as in :func:`deletion`)."""
    return _causal(predictor, x, a, target, rng, "insertion", n_steps, substrate, agg, order, region)


def greedy_windows(h: np.ndarray, k: int, n: int) -> list[tuple[int, int]]:
    """The SmoothTaylor code's window choice: top-left corners (h0 < H−k, w0 < W−k) ranked once by
    mean |h| over the k×k window, then taken greedily, each ban covering corners within ±(k−1)."""
    H, W = h.shape
    ah = np.abs(h)
    c = np.pad(ah, ((1, 0), (1, 0))).cumsum(0).cumsum(1)  # integral image
    hh, ww = np.meshgrid(np.arange(H - k), np.arange(W - k), indexing="ij")
    score = (c[hh + k, ww + k] - c[hh, ww + k] - c[hh + k, ww] + c[hh, ww]) / (k * k)
    order = np.argsort(-score.reshape(-1), kind="stable")
    banned = np.zeros(score.shape, bool)
    picked: list[tuple[int, int]] = []
    for idx in order:
        r, q = divmod(int(idx), W - k)
        if banned[r, q]:
            continue
        picked.append((r, q))
        banned[max(0, r - k + 1) : r + k, max(0, q - k + 1) : q + k] = True
        if len(picked) == n:
            break
    return picked


@register_metric(
    "aupc",
    "SmoothTaylor's perturbation AUC: greedy windows replaced by the median-scoring random draw (compat)",
    score="aupc",
    higher_is_better=False,
    modalities=("image",),
    stochastic=True,
    cost="num_regions × num_perturbs forward",
)
def aupc(
    predictor: Predictor,
    x: np.ndarray,
    a: np.ndarray,
    target: np.ndarray,
    rng: np.random.Generator,
    kernel_size: int = 15,
    num_regions: int = 30,
    num_perturbs: int = 50,
    mean=0.0,
    std=1.0,
    simpson_mode: str = "scipy",
    candidates=None,
):
    """Area under the perturbation curve as in the SmoothTaylor code (``compute_perturbations`` and
    ``compute_aupc``): for each greedy window, ``num_perturbs`` uniform draws in unnormalised [0, 1] pixel
    space (re-normalised with ``mean``/``std`` per channel) are scored; the mean score is recorded and the
    draw closest to the median is kept. Scores are divided by |f(x)|; AUPC = Simpson over them (lower is
    better). Use ``output='logit'``. ``candidates``: explicit draws ``(B, L, num_perturbs, C, k, k)``.
    """
    from .noise import integrate

    if x.ndim != 4:
        raise OptionError(f"aupc needs images (B, C, H, W), got shape {x.shape}")
    B, C, H, W = x.shape
    k = int(kernel_size)
    heat = full_attribution(a, x.shape).sum(1)
    windows = [greedy_windows(heat[b], k, int(num_regions)) for b in range(B)]
    L = min(len(w) for w in windows)
    mu = np.broadcast_to(np.asarray(mean, dtype=np.float64).reshape(-1, 1, 1), (C, 1, 1))
    sd = np.broadcast_to(np.asarray(std, dtype=np.float64).reshape(-1, 1, 1), (C, 1, 1))
    cur = x.astype(np.float64).copy()
    f0 = predictor(x)[np.arange(B), target]
    means = np.empty((B, L))
    P = int(num_perturbs) if candidates is None else np.asarray(candidates).shape[2]
    for step in range(L):
        draws = np.empty((B, P, C, k, k))
        for b in range(B):
            raw = (
                np.asarray(candidates)[b, step]
                if candidates is not None
                else rng.uniform(0, 255, (P, C, k, k)) / 255
            )
            draws[b] = (raw - mu) / sd

        def make_rows(lo, hi, step=step, draws=draws):
            rows = []
            for r in range(lo, hi):
                b, p = divmod(r, P)
                r0, q0 = windows[b][step]
                z = cur[b].copy()
                z[:, r0 : r0 + k, q0 : q0 + k] = draws[b, p]
                rows.append(z)
            return np.stack(rows).astype(x.dtype)

        s = predictor.target_scores(B * P, make_rows, np.repeat(target, P)).reshape(B, P)
        means[:, step] = s.mean(1)
        for b in range(B):
            keep = int(np.argmin(np.abs(s[b] - np.median(s[b]))))
            r0, q0 = windows[b][step]
            cur[b][:, r0 : r0 + k, q0 : q0 + k] = draws[b, keep]
    scores = np.concatenate([f0[:, None], means], 1) / np.abs(f0)[:, None]
    return {
        "curve": scores,
        "aupc": np.array([integrate(s, simpson_mode) for s in scores]),
        "windows": windows,
    }


@register_metric(
    "localisation",
    "relevance mass inside the ground-truth mask, and the pointing game",
    score="mass",
    higher_is_better=True,
    needs_model=False,
    modalities=("image",),
    cost="no model calls",
)
def localisation(predictor, x, a, target, rng, masks=None, agg: str = "sum", positive: bool = True):
    """Localisation against ground-truth masks ``(B, H, W)`` (e.g. the bundled ``shapes`` data).

    ``mass``: the share of the (positive, by default) channel-aggregated relevance that falls inside the
    mask (Arras et al. 2022's relevance mass accuracy, CLEVR-XAI); ``pointing``: 1 when the map's maximum lies inside
    the mask. Needs no model.
    """
    if masks is None:
        raise OptionError("localisation needs masks= (B, H, W) of booleans")
    masks = np.asarray(masks, dtype=bool)
    h = channel_map(a, x.shape, agg) if x.ndim == 4 else np.asarray(a, dtype=np.float64)
    if h.shape != masks.shape:
        raise OptionError(f"masks of shape {masks.shape} do not fit maps of shape {h.shape}")
    r = np.clip(h, 0, None) if positive else np.abs(h)
    total = r.reshape(len(r), -1).sum(1)
    inside = (r * masks).reshape(len(r), -1).sum(1)
    mass = np.where(total > 0, inside / np.where(total > 0, total, 1), np.nan)
    flat = h.reshape(len(h), -1)
    pointing = masks.reshape(len(masks), -1)[np.arange(len(h)), flat.argmax(1)].astype(float)
    return {"mass": mass, "pointing": pointing, "mask_fraction": masks.reshape(len(masks), -1).mean(1)}
