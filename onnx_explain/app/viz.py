"""Heatmaps (colour lookup tables; panels composed with Pillow, no figure per item) and plots (Matplotlib).

The SmoothGrad paper's visualisation choices are options: signed (diverging colour map) or absolute
values, the channel aggregation, capping outliers at a percentile (default 99th), multiplying by the input.

A heatmap is drawn as matplotlib's ``imshow(h, cmap, vmin, vmax)`` would colour it (``bwr`` from -1 to 1 for
signed maps, white at 0; ``inferno`` from 0 to 1 for absolute ones), through the colour map's own 256-entry
table, so a run of thousands of items costs an array lookup and a PNG encoding per image. Plots (curves,
bars) keep matplotlib, behind a lock: pyplot is not thread-safe and the batch writers run on threads.
"""

from __future__ import annotations

import functools
import io
import threading
from pathlib import Path

import numpy as np

from ..heatmap import (
    CMAPS,
    PNG_LEVEL,
    RANGES,
    SHAPE_COLOURS,
    SHAPE_LABELS,
    colorize,
    colormap_lut,
    display_image,
    draw_shapes,
    heat_map,
    png_bytes,
    target_shapes,
)
from .io import atomic_write_bytes

__all__ = [
    "CMAPS",
    "PNG_LEVEL",
    "RANGES",
    "colorize",
    "colormap_lut",
    "display_image",
    "heat_map",
    "png_bytes",
    "target_shapes",
]

#: a panel's tiles are magnified (nearest neighbour, by a whole factor) until their longer side nears this
PANEL_PIXELS = 256

_PLOT_LOCK = threading.Lock()  # pyplot (curves, bars) is not thread-safe
_TEXT_LOCK = threading.Lock()  # one FreeType face is shared by the writer threads
_PAD, _TITLE, _BAR, _TICK, _LABEL, _LEGEND = 8, 20, 14, 4, 34, 18


def save_heatmap(path: Path, h: np.ndarray, sign: str = "signed") -> None:
    """The heatmap alone, at the input's pixel size."""
    atomic_write_bytes(path, png_bytes(colorize(h, sign)))


def save_panel(
    path: Path,
    image: np.ndarray | None,
    h: np.ndarray,
    sign: str,
    title: str,
    overlay: bool = False,
    shapes: list = (),
) -> None:
    """The input beside (or under) the heatmap, with a colour bar and the target's shapes (see
    :func:`panel_image`)."""
    atomic_write_bytes(path, png_bytes(panel_image(image, h, sign, title, overlay, shapes), up=True))


def panel_image(
    image: np.ndarray | None, h: np.ndarray, sign: str, title: str, overlay: bool = False, shapes: list = ()
):
    """A Pillow image: the input (``image``, uint8 ``(H, W)`` or ``(H, W, C)``, or None) titled "input" beside
    the heatmap titled ``title`` — or the heatmap over the input at 60 % opacity (``overlay``) — and the colour
    bar of ``sign``. Small inputs are magnified by a whole factor (nearest neighbour: each pixel a square).

    ``shapes`` (:func:`onnx_explain.heatmap.target_shapes`: a box target's explained box and matched
    proposal, a mask target's mask) are drawn 1 pixel wide on every tile at the magnified size, in
    :data:`~onnx_explain.heatmap.SHAPE_COLOURS`, with a legend under the tiles."""
    from PIL import Image

    heat = Image.fromarray(colorize(h, sign))
    k = max(1, PANEL_PIXELS // max(heat.size))
    shown = None if image is None else _rgb(np.asarray(image))
    if shown is not None and shown.size != heat.size:
        shown = shown.resize(heat.size, Image.BILINEAR)
    if overlay and shown is not None:
        heat, shown = Image.blend(shown, heat, 0.6), None
    tiles = [(t, name) for t, name in ((shown, "input"), (heat, title)) if t is not None]
    tw, th = heat.width * k, heat.height * k
    bar = colour_bar(sign, th)
    shapes = list(shapes or ())
    legend = _LEGEND if shapes else 0
    canvas = Image.new(
        "RGB", (_PAD + len(tiles) * (tw + _PAD) + bar.width, _PAD + _TITLE + th + _PAD + legend), "white"
    )
    x0 = _PAD
    for tile, name in tiles:
        canvas.paste(_title(name, tw), (x0, _PAD))
        tile = tile.resize((tw, th), Image.NEAREST) if k > 1 else tile
        if shapes:  # drawn after magnification: 1 pixel wide at the edges of the magnified box
            tile = Image.fromarray(draw_shapes(np.asarray(tile.convert("RGB")), shapes, k))
        canvas.paste(tile, (x0, _PAD + _TITLE))
        x0 += tw + _PAD
    canvas.paste(bar, (x0, 0))
    if shapes:
        _legend(canvas, [name for name in dict.fromkeys(n for n, _ in shapes)], _PAD + _TITLE + th + _PAD)
    return canvas


def _legend(canvas, names: list[str], top: int) -> None:
    """One swatch and label per drawn kind of shape, in a row under the tiles."""
    from PIL import ImageDraw

    draw = ImageDraw.Draw(canvas)
    x, y = _PAD, top + _LEGEND // 2
    items = []
    for name in names:
        draw.rectangle((x, y - 5, x + 15, y + 4), outline=SHAPE_COLOURS[name], width=2)
        items.append((x + 20, y, SHAPE_LABELS[name]))
        x += 20 + 7 * len(SHAPE_LABELS[name]) + 2 * _PAD
    _text(canvas, items, "lm")


@functools.lru_cache(maxsize=4096)
def _title(text: str, width: int):
    """A tile's title, centred on a white strip ``width`` wide (drawn once per text: a run has few)."""
    from PIL import Image

    strip = Image.new("RGB", (width, _TITLE), "white")
    _text(strip, [(width // 2, _TITLE // 2, text)], "mm")
    return strip


@functools.lru_cache(maxsize=16)
def colour_bar(sign: str, height: int):
    """The colour bar of a panel whose tiles are ``height`` pixels high (drawn once per run and size): the
    colour map from the top of the range down, framed, with five ticks."""
    from PIL import Image, ImageDraw

    lo, hi = RANGES[sign]
    values = hi - (np.arange(height) + 0.5) / height * (hi - lo)
    strip = np.repeat(colorize(values, sign)[:, None, :], _BAR, axis=1)
    bar = Image.new("RGB", (_BAR + _TICK + _LABEL + _PAD, _PAD + _TITLE + height + _PAD), "white")
    top = _PAD + _TITLE
    bar.paste(Image.fromarray(np.ascontiguousarray(strip)), (0, top))
    draw = ImageDraw.Draw(bar)
    draw.rectangle((0, top, _BAR - 1, top + height - 1), outline="black")
    labels = []
    for t in np.linspace(hi, lo, 5):
        y = top + round((hi - t) / (hi - lo) * (height - 1))
        draw.line((_BAR, y, _BAR + _TICK - 1, y), fill="black")
        labels.append((_BAR + _TICK + 2, y, f"{t:g}"))
    _text(bar, labels, "lm")
    return bar


def _rgb(a: np.ndarray):
    """A display image (uint8 grey, RGB, RGBA or other channel counts: their mean as grey) as Pillow RGB."""
    from PIL import Image

    if a.dtype != np.uint8:
        a = np.clip(a, 0, 255).astype(np.uint8)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 2:
        return Image.fromarray(a).convert("RGB")
    if a.shape[-1] == 3:
        return Image.fromarray(np.ascontiguousarray(a))
    if a.shape[-1] == 4:
        white = Image.new("RGB", a.shape[1::-1], "white")
        white.paste(Image.fromarray(np.ascontiguousarray(a), "RGBA"), mask=Image.fromarray(a[..., 3].copy()))
        return white
    return Image.fromarray(a.mean(-1).round().astype(np.uint8)).convert("RGB")


@functools.cache
def _font():
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=12)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: its bitmap font
        return ImageFont.load_default()


def _text(img, items, anchor: str) -> None:
    """Draw ``(x, y, text)`` items in black (one shared font: one thread at a time)."""
    from PIL import ImageDraw

    draw = ImageDraw.Draw(img)
    with _TEXT_LOCK:
        for x, y, text in items:
            draw.text((x, y), text, fill="black", font=_font(), anchor=anchor)


def save_bars(path: Path, values: np.ndarray, names: list[str], title: str, top: int = 15,
              inputs: np.ndarray | None = None, labels: list[str] | None = None) -> None:  # fmt: skip
    """Bar chart of the ``top`` features by |attribution| (tabular inputs), largest first, each labelled
    ``name = value`` when the row's ``inputs`` are given (or as ``labels`` say) (red: raises the score, blue: lowers it). Drawn
    with Pillow: a few milliseconds, so a table of 10⁴ rows costs no more to draw than to explain."""
    from PIL import Image, ImageDraw

    v = np.asarray(values, dtype=np.float64).reshape(-1)
    order = np.argsort(-np.abs(v), kind="stable")[:top]
    x = None if inputs is None else np.asarray(inputs).reshape(-1)
    given, labels = labels, []
    for i in order:
        label = names[i] if i < len(names) else f"x{i}"
        if given is not None and i < len(given):
            label = given[i]
        elif x is not None and i < len(x):
            label += f" = {x[i]:.4g}"
        labels.append(label)
    row, left, bar_w, right = 20, 8 + 7 * max((len(t) for t in labels), default=4), 320, 70
    width, height = left + bar_w + right, 28 + row * len(order) + 8
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    m = float(np.abs(v[order]).max(initial=0.0)) or 1.0
    lo, hi = min(0.0, float(v[order].min(initial=0.0))), max(0.0, float(v[order].max(initial=0.0)))
    span = (hi - lo) or m
    zero = left + int(round(bar_w * (0 - lo) / span))
    texts = [(width // 2, 4, title)]
    for j, i in enumerate(order):
        y = 28 + row * j
        end = left + int(round(bar_w * (v[i] - lo) / span))
        draw.rectangle([min(zero, end), y + 3, max(zero, end), y + row - 3],
                       fill=(214, 39, 40) if v[i] > 0 else (31, 119, 180))  # fmt: skip
        texts.append((4, y + 3, labels[j]))
        texts.append((left + bar_w + 4, y + 3, f"{v[i]:+.3g}"))
    draw.line([zero, 24, zero, height - 4], fill="black")
    _text(img, texts[:1], "ma")
    _text(img, texts[1:], "la")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def save_table_summary(out_dir: Path, method: str, top: int = 20) -> dict | None:
    """``summary.png`` and ``summary.json`` over every finished table row of a run's ``out_dir`` (from its
    manifest, so a resumed run counts all its rows): mean |attribution| per feature, largest first, and the
    mean signed attribution. None (nothing written) when the items are not rows of features."""
    import json

    manifest = Path(out_dir) / "manifest.jsonl"
    if not manifest.is_file():
        return None
    rows, names = [], None
    for line in manifest.read_text().splitlines():
        rec = json.loads(line) if line.strip() else {}
        if rec.get("status") != "ok" or "npz" not in rec:
            continue
        with np.load(Path(out_dir) / rec["npz"], allow_pickle=False) as z:
            a = z["attribution"]
            if a.ndim != 1:
                return None
            rows.append(a)
            if names is None and "columns" in z:
                names = [str(c) for c in z["columns"]]
    if len(rows) < 2 or len({len(r) for r in rows}) != 1:
        return None
    a = np.stack(rows).astype(np.float64)
    names = names or [f"x{i}" for i in range(a.shape[1])]
    mean_abs, mean = np.abs(a).mean(0), a.mean(0)
    order = np.argsort(-mean_abs, kind="stable")
    summary = {"method": method, "rows": len(a),
               "features": [{"name": names[i], "mean_abs": float(mean_abs[i]), "mean": float(mean[i])} for i in order]}  # fmt: skip
    atomic_write_bytes(Path(out_dir) / "summary.json", json.dumps(summary, indent=1).encode())
    save_bars(
        Path(out_dir) / "summary.png",
        mean_abs,
        names,
        f"{method}: mean |attribution| over {len(a)} rows",
        top,
    )
    return summary


def save_curves(path: Path, curves: dict[str, np.ndarray], title: str, ylabel: str) -> None:
    """Mean curve (with the items' range shaded) of each named set of curves ``(items, steps)``."""

    def build(plt):
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
        return fig

    atomic_write_bytes(path, _plot_png(build))


def _plot_png(build) -> bytes:
    """PNG bytes of the matplotlib figure ``build(pyplot)`` makes (one thread at a time: pyplot is global)."""
    import io

    import matplotlib

    with _PLOT_LOCK:
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig = build(plt)
        buf = io.BytesIO()
        try:
            fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
        finally:
            plt.close(fig)
    return buf.getvalue()
