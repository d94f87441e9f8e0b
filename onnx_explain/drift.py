"""Drift between two versions of a model (:func:`compare`): the same inputs through both, the agreement of
their predictions and of their explanations, per item and method (docs/methods.md §3.13).

Typical pairs: a model and its quantized, fp16 or onnxruntime-optimised build, or a retrained release.
Both must take the same input (same shape and dtype), or the same tensor in the other image layout
(NCHW ↔ NHWC), which is mapped; anything else is refused with one line.
"""

from __future__ import annotations

import numpy as np

from .errors import InputSpecError, OptionError
from .stats import average_ranks, row_correlation

__all__ = ["MEASURES", "compare", "agreement"]

#: what --fail-under may name: a prediction measure or an explanation measure (mean over items, every method)
MEASURES = ("top1", "max_abs_diff", "spearman", "spearman_abs", "cosine", "iou@1", "iou@5", "iou@10", "ssim")


def agreement(
    a: np.ndarray, b: np.ndarray, layout: str | None = None, ks=(1, 5, 10)
) -> dict[str, np.ndarray]:
    """Per-item agreement of attributions ``a`` and ``b`` (same shape, batch first): Spearman of the
    signed values and of their magnitudes, cosine, top-k % intersection over union of the largest
    magnitudes, and for images the SSIM of the channel-summed maps (each scaled by its largest magnitude)."""
    fa, fb = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    out = {
        "spearman": row_correlation(average_ranks(fa), average_ranks(fb)),
        "spearman_abs": row_correlation(average_ranks(np.abs(fa)), average_ranks(np.abs(fb))),
    }
    na, nb = np.linalg.norm(fa, axis=1), np.linalg.norm(fb, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out["cosine"] = np.where((na > 0) & (nb > 0), (fa * fb).sum(1) / (na * nb), np.nan)
    d = fa.shape[1]
    abs_a, abs_b = -np.abs(fa), -np.abs(fb)
    rows = np.arange(len(fa))[:, None]
    for k in ks:
        n = max(1, int(round(d * k / 100)))
        in_a = np.zeros(fa.shape, dtype=bool)
        in_b = np.zeros(fb.shape, dtype=bool)
        # the n largest magnitudes (a set: a partition is enough; ties at the edge go either way)
        in_a[rows, np.argpartition(abs_a, n - 1, axis=1)[:, :n]] = True
        in_b[rows, np.argpartition(abs_b, n - 1, axis=1)[:, :n]] = True
        both = (in_a & in_b).sum(1)
        out[f"iou@{k}"] = both / (2 * n - both)
    if layout in ("NCHW", "NHWC", "NHW") and a.ndim >= 3:
        from skimage.metrics import structural_similarity

        axis = {"NCHW": 1, "NHWC": 3, "NHW": None}[layout]
        ma = a.sum(axis) if axis is not None else a
        mb = b.sum(axis) if axis is not None else b
        vals = []
        for x, y in zip(ma, mb, strict=True):
            x = x / (np.abs(x).max() or 1.0)
            y = y / (np.abs(y).max() or 1.0)
            win = min(7, *x.shape) // 2 * 2 + 1 if min(x.shape) >= 3 else None
            vals.append(structural_similarity(x, y, data_range=2.0, win_size=win) if win else np.nan)
        out["ssim"] = np.asarray(vals, dtype=np.float64)
    return out


def _mapping(ma, mb):
    """How ``ma``'s inputs become ``mb``'s: None (the same), or a transpose (NCHW ↔ NHWC)."""
    sa, sb = ma.input.shape, mb.input.shape
    da, db = np.dtype(ma.input.dtype), np.dtype(mb.input.dtype)
    if da != db:
        raise InputSpecError(
            f"the two models take different input dtypes ({da} and {db}): map the inputs yourself, or compare "
            "builds of one input type"
        )

    def same(u, v):
        return len(u) == len(v) and all(
            p is None or q is None or p == q for p, q in zip(u[1:], v[1:], strict=True)
        )

    if sa is None or sb is None or same(sa, sb):
        return None
    if len(sa) == 4 and len(sb) == 4 and {ma.layout, mb.layout} == {"NCHW", "NHWC"}:
        return (0, 2, 3, 1) if ma.layout == "NCHW" else (0, 3, 1, 2)
    raise InputSpecError(
        f"the two models take inputs of different shapes ({list(sa)} and {list(sb)}): nothing maps one to the other"
    )


def compare(a, b, x, methods=("gradient",), *, target=None, batch_size: int = 64, seed: int = 0, metrics=(),
            **options) -> dict:  # fmt: skip
    """Predictions and explanations of models ``a`` and ``b`` on the same inputs ``x``.

    Parameters
    ----------
    a, b : Model or path
        The two versions (``a`` the reference: its layout is the report's).
    x : array_like
        Inputs of ``a`` (batch first); ``b`` gets them mapped to its layout.
    methods : sequence of str
        Registered methods; each explains, for every item, the class ``a`` explains (its predicted class by
        default) on both models.
    target : optional
        As :func:`onnx_explain.explain` takes it.
    metrics : sequence of str
        Metrics (``deletion``, ``insertion`` ...) scored on each version with its own attributions: the
        per-version means and their difference B − A (``report['metrics'][method][metric]``).
    **options
        Passed to every method.

    Returns
    -------
    dict
        ``prediction``: ``top1`` (agreement of the arg-max per item) and ``max_abs_diff`` (of the explained
        outputs, per item); ``methods``: per method and measure (:func:`agreement`) the per-item values and
        their mean; ``ranking``: items from the least to the most agreeing (by the lowest Spearman of |a|
        over the methods); ``attributions``: per method the pair of attribution arrays.
    """
    from .explainer import explain
    from .model import Model, load

    ma = a if isinstance(a, Model) else load(a)
    mb = b if isinstance(b, Model) else load(b)
    if not methods:
        raise OptionError("compare needs at least one method")
    x = np.asarray(x)
    perm = _mapping(ma, mb)
    xb = x if perm is None else np.ascontiguousarray(np.transpose(x, perm))
    back = None if perm is None else tuple(np.argsort(perm))
    pa = ma.predict(x, batch_size=batch_size).reshape(len(x), -1).astype(np.float64)
    pb = mb.predict(xb, batch_size=batch_size).reshape(len(x), -1).astype(np.float64)
    if pa.shape != pb.shape:
        raise InputSpecError(f"the two models' outputs differ in shape ({pa.shape[1:]} and {pb.shape[1:]})")
    report = {
        "items": len(x),
        "prediction": {
            "top1": (pa.argmax(1) == pb.argmax(1)).astype(float),
            "max_abs_diff": np.abs(pa - pb).max(1),
        },
        "methods": {},
        "attributions": {},
    }
    worst = np.full(len(x), np.inf)
    for m in methods:
        ea = explain(ma, x, m, target, batch_size=batch_size, seed=seed, **options)
        eb = explain(mb, xb, m, ea.target, batch_size=batch_size, seed=seed, **options)
        att_b = eb.attribution if back is None else np.transpose(eb.attribution, back)
        meas = agreement(ea.attribution, att_b, ma.layout)
        report["methods"][m] = {k: {"per_item": v, "mean": float(np.nanmean(v)) if np.isfinite(v).any() else None}
                                for k, v in meas.items()}  # fmt: skip
        report["attributions"][m] = (ea.attribution, att_b)
        worst = np.fmin(worst, meas["spearman_abs"])
        for metric in metrics:
            from .evaluation import evaluate

            ra = evaluate(ma, x, ea.attribution, metric, target=ea.target, batch_size=batch_size, seed=seed)
            rb = evaluate(mb, xb, eb.attribution, metric, target=ea.target, batch_size=batch_size, seed=seed)
            mean_a, mean_b = _finite_mean(ra["scores"]), _finite_mean(rb["scores"])
            report.setdefault("metrics", {}).setdefault(m, {})[metric] = {
                "a": mean_a, "b": mean_b, "delta": None if None in (mean_a, mean_b) else mean_b - mean_a,
                "higher_is_better": ra["higher_is_better"],
            }  # fmt: skip
    report["ranking"] = [int(i) for i in np.argsort(np.nan_to_num(worst, nan=-2.0), kind="stable")]
    return report


def _finite_mean(v) -> float | None:
    v = np.asarray(v, dtype=np.float64)
    ok = np.isfinite(v)
    return float(v[ok].mean()) if ok.any() else None


def failed_thresholds(report: dict, thresholds: dict[str, float]) -> list[str]:
    """One line per threshold the report fails: prediction measures on their mean over items
    (``max_abs_diff``: its largest value must stay *under* the threshold), explanation measures on the mean
    over items of every method."""
    lines = []
    for key, limit in thresholds.items():
        if key not in MEASURES:
            raise OptionError(f"--fail-under takes {', '.join(MEASURES)}, not {key!r}")
        if key in ("top1", "max_abs_diff"):
            v = report["prediction"][key]
            value = float(np.max(v)) if key == "max_abs_diff" else float(np.mean(v))
            bad = value > limit if key == "max_abs_diff" else value < limit
            if bad:
                rel = "above" if key == "max_abs_diff" else "below"
                lines.append(f"{key} = {value:.4g} is {rel} {limit:g}")
            continue
        for m, meas in report["methods"].items():
            if key not in meas:
                continue
            value = meas[key]["mean"]
            if value is None or value < limit:
                lines.append(
                    f"{m}: {key} = {'undefined' if value is None else f'{value:.4g}'} is below {limit:g}"
                )
    return lines
