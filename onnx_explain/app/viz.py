"""Heatmaps and curve plots (Matplotlib's Agg backend; Pillow for exact-size heatmaps).

The SmoothGrad paper's visualisation choices are options: signed (diverging colour map) or absolute
values, the channel aggregation, capping outliers at a percentile (default 99th), multiplying by the input.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..layout import to_channels_first
from .io import atomic_write_bytes


def heat_map(attribution: np.ndarray, layout: str | None = "NCHW", aggregate: str = "sum", sign: str = "signed",
             percentile: float = 99.0, times_input: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
    """A 2-D map in [-1, 1] (signed) or [0, 1] (absolute) from one attribution (no batch axis).

    A 3-D attribution is reduced over its channel axis, read from the model's ``layout``: the last axis
    for ``'NHWC'``, the first otherwise; ``aggregate`` is one of
    :data:`onnx_explain.metrics.base.AGGREGATORS`. A 2-D attribution is drawn as it is, except for an
    ``'NHW'`` model, whose single channel is aggregated like any other (``sum_abs`` gives magnitudes).
    """
    from ..metrics.base import AGGREGATORS

    a = np.asarray(attribution, dtype=np.float64)
    if times_input is not None:
        a = a * np.asarray(times_input, dtype=np.float64)
    if a.ndim == 3 or (a.ndim == 2 and layout == "NHW"):  # NHW: one channel, aggregated as NCHW's one
        chw = to_channels_first(a, layout if layout in ("NHWC", "NHW") else None)
        a = AGGREGATORS[aggregate](chw[None])[0]
    if sign == "abs":
        a = np.abs(a)
    cap = np.percentile(np.abs(a), percentile) if a.size else 0.0
    if cap <= 0:
        cap = np.abs(a).max() or 1.0
    return np.clip(a / cap, -1 if sign == "signed" else 0, 1)


def display_image(x: np.ndarray, layout: str | None) -> np.ndarray:
    """One already preprocessed input (no batch axis), min-max scaled to uint8 for display: ``(H, W)``
    for one channel, ``(H, W, C)`` otherwise."""
    a = np.asarray(x, dtype=np.float64)
    if layout == "NCHW" and a.ndim == 3:
        a = a.transpose(1, 2, 0)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    span = a.max() - a.min()
    return ((a - a.min()) / (span if span > 0 else 1) * 255).round().astype(np.uint8)


def colorize(h: np.ndarray, sign: str = "signed") -> np.ndarray:
    """uint8 RGB of a map from :func:`heat_map` (``bwr`` diverging for signed, ``inferno`` for absolute)."""
    from matplotlib import colormaps

    cmap = colormaps["bwr" if sign == "signed" else "inferno"]
    v = (h + 1) / 2 if sign == "signed" else h
    return (cmap(v)[..., :3] * 255).round().astype(np.uint8)


def save_heatmap(path: Path, h: np.ndarray, sign: str = "signed") -> None:
    """The heatmap alone, at the input's pixel size."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(colorize(h, sign)).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def save_panel(
    path: Path, image: np.ndarray | None, h: np.ndarray, sign: str, title: str, overlay: bool = False
) -> None:
    """The input beside (or under) the heatmap, with a colour bar."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cmap = "bwr" if sign == "signed" else "inferno"
    vmin = -1 if sign == "signed" else 0
    n = 1 if (overlay or image is None) else 2
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n + 0.6, 3.2))
    axes = np.atleast_1d(axes)
    if image is not None and not overlay:
        axes[0].imshow(image, cmap="gray" if image.ndim == 2 else None)
        axes[0].set_title("input")
    ax = axes[-1]
    if overlay and image is not None:
        ax.imshow(image, cmap="gray" if image.ndim == 2 else None)
        im = ax.imshow(h, cmap=cmap, vmin=vmin, vmax=1, alpha=0.6)
    else:
        im = ax.imshow(h, cmap=cmap, vmin=vmin, vmax=1)
    ax.set_title(title)
    for a in axes:
        a.axis("off")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def save_bars(path: Path, values: np.ndarray, names: list[str], title: str, top: int = 15) -> None:
    """Bar chart of the ``top`` features by |attribution| (tabular inputs)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    v = np.asarray(values, dtype=np.float64).reshape(-1)
    order = np.argsort(-np.abs(v), kind="stable")[:top][::-1]
    fig, ax = plt.subplots(figsize=(6, 0.3 * len(order) + 1.2))
    ax.barh([names[i] if i < len(names) else f"x{i}" for i in order], v[order],
            color=["tab:red" if v[i] > 0 else "tab:blue" for i in order])  # fmt: skip
    ax.set_title(title)
    ax.axvline(0, color="k", lw=0.5)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def save_curves(path: Path, curves: dict[str, np.ndarray], title: str, ylabel: str) -> None:
    """Mean curve (with the items' range shaded) of each named set of curves ``(items, steps)``."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for label, c in curves.items():
        c = np.asarray(c, dtype=np.float64)
        t = np.linspace(0, 1, c.shape[1])
        ax.plot(t, c.mean(0), label=label)
        if len(c) > 1:
            ax.fill_between(t, c.min(0), c.max(0), alpha=0.15)
    ax.set_xlabel("fraction perturbed")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
