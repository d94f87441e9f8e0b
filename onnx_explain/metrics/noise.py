"""Total-variation noise level of attribution maps (SmoothTaylor paper: ATV, multi-scale ATV, AUTVC).
docs/methods.md §3.9. Needs no model."""

from __future__ import annotations

import numpy as np

from ..errors import OptionError
from .base import register_metric


def normalise_map(h: np.ndarray) -> np.ndarray | None:
    """|h| scaled by its min and 99th percentile and clipped to [0, 1]; None for a constant map."""
    h = np.abs(h)
    vmin, vmax = h.min(), np.percentile(h, 99)
    if vmax == vmin:
        return None
    return np.clip((h - vmin) / (vmax - vmin), 0, 1)


def atv(h: np.ndarray, p: float = 1.0) -> float:
    """Anisotropic total variation of a 2-D map divided by its size (p-norm of the differences)."""
    dx = np.abs(h[:, 1:] - h[:, :-1])
    dy = np.abs(h[1:, :] - h[:-1, :])
    if p == 1:
        tv = dx.sum() + dy.sum()
    else:
        tv = (dx**p).sum() ** (1 / p) + (dy**p).sum() ** (1 / p)
    return float(tv / h.size)


def _simpson_legacy_avg(y: np.ndarray, dx: float = 1.0) -> float:
    """SciPy < 1.11 ``simps(y, dx, even='avg')``: the paper's integration (differs for an even count)."""

    def simpson_odd(v):
        return dx / 3 * (v[0] + v[-1] + 4 * v[1:-1:2].sum() + 2 * v[2:-1:2].sum())

    n = len(y)
    if n == 1:
        return 0.0
    if n == 2:
        return dx * (y[0] + y[1]) / 2
    if n % 2:
        return float(simpson_odd(y))
    first = simpson_odd(y[:-1]) + dx * (y[-2] + y[-1]) / 2
    last = simpson_odd(y[1:]) + dx * (y[0] + y[1]) / 2
    return float((first + last) / 2)


def integrate(y: np.ndarray, mode: str = "scipy") -> float:
    """Simpson's rule with dx = 1: today's ``scipy.integrate.simpson`` or the legacy ``'legacy_avg'``."""
    if mode == "legacy_avg":
        return _simpson_legacy_avg(np.asarray(y, dtype=np.float64))
    if mode == "scipy":
        from scipy.integrate import simpson

        return float(simpson(np.asarray(y, dtype=np.float64), dx=1.0)) if len(y) > 1 else 0.0
    raise OptionError(f"simpson_mode must be 'scipy' or 'legacy_avg', not {mode!r}")


def multiscale_atv(h: np.ndarray, downscale: float = 1.5, min_size=(30, 30), p: float = 1.0) -> list[float]:
    """ATV of the normalised map at every level of skimage's Gaussian pyramid, level 0 unsmoothed,
    stopping before the first level smaller than ``min_size``."""
    from skimage.transform import pyramid_gaussian

    out = []
    for level in pyramid_gaussian(np.asarray(h, dtype=np.float64), downscale=downscale, channel_axis=None):
        if level.shape[0] < min_size[0] or level.shape[1] < min_size[1]:
            break
        n = normalise_map(level)
        out.append(0.0 if n is None else atv(n, p))
    return out


@register_metric(
    "total_variation",
    "noise level of the map: ATV, multi-scale ATV and its area AUTVC (SmoothTaylor paper)",
    score="autvc",
    higher_is_better=False,
    needs_model=False,
    modalities=("image",),
    cost="no model calls",
)
def total_variation(
    predictor,
    x,
    a,
    target,
    rng,
    downscale: float = 1.5,
    min_size=(30, 30),
    lp_norm: float = 1.0,
    simpson_mode: str = "scipy",
):
    """Total variation of the signed channel sum of each attribution (lower: smoother, less noisy).

    Returns ``atv`` (level 0), ``ms_atv`` (list per sample), ``autvc`` (Simpson's area under MS-ATV;
    ``simpson_mode='legacy_avg'`` reproduces the paper's SciPy).
    """
    a = np.asarray(a, dtype=np.float64)
    maps = a.sum(1) if a.ndim == 4 else a
    if maps.ndim != 3:
        raise OptionError(f"total variation needs image attributions (B, [C,] H, W), got shape {a.shape}")
    ms = [multiscale_atv(h, downscale, min_size, lp_norm) for h in maps]
    level0 = []
    for h in maps:
        n = normalise_map(h)
        level0.append(0.0 if n is None else atv(n, lp_norm))
    return {
        "atv": np.asarray(level0),
        "ms_atv": ms,
        "autvc": np.asarray([integrate(m, simpson_mode) for m in ms]),
    }
