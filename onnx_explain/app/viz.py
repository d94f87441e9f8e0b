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
import struct
import threading
import zlib
from pathlib import Path

import numpy as np

from ..layout import to_channels_first
from .io import atomic_write_bytes

#: colour map of each heatmap sign, and the value range it spans
CMAPS = {"signed": "bwr", "abs": "inferno"}
RANGES = {"signed": (-1.0, 1.0), "abs": (0.0, 1.0)}
#: a panel's tiles are magnified (nearest neighbour, by a whole factor) until their longer side nears this
PANEL_PIXELS = 256
#: zlib level of the PNGs: 1 is several times faster than 6, the files barely larger
PNG_LEVEL = 1

_PLOT_LOCK = threading.Lock()  # pyplot (curves, bars) is not thread-safe
_TEXT_LOCK = threading.Lock()  # one FreeType face is shared by the writer threads
_PAD, _TITLE, _BAR, _TICK, _LABEL = 8, 20, 14, 4, 34

#: The colour maps as 256-entry RGB lookup tables: matplotlib's ``bwr`` and ``inferno`` sampled at their 256
#: entries, ``round(255 · rgb)`` (tests/test_cli_speed.py checks them against matplotlib). Hard-coded so that a
#: run draws heatmaps without importing matplotlib.
_LUT_HEX = {
    "bwr": (
        "0000ff0202ff0404ff0606ff0808ff0a0aff0c0cff0e0eff1010ff1212ff1414ff1616ff1818ff1a1aff1c1cff1e1eff"
        "2020ff2222ff2424ff2626ff2828ff2a2aff2c2cff2e2eff3030ff3232ff3434ff3636ff3838ff3a3aff3c3cff3e3eff"
        "4040ff4242ff4444ff4646ff4848ff4a4aff4c4cff4e4eff5050ff5252ff5454ff5656ff5858ff5a5aff5c5cff5e5eff"
        "6060ff6262ff6464ff6666ff6868ff6a6aff6c6cff6e6eff7070ff7272ff7474ff7676ff7878ff7a7aff7c7cff7e7eff"
        "8080ff8282ff8484ff8686ff8888ff8a8aff8c8cff8e8eff9090ff9292ff9494ff9696ff9898ff9a9aff9c9cff9e9eff"
        "a0a0ffa2a2ffa4a4ffa6a6ffa8a8ffaaaaffacacffaeaeffb0b0ffb2b2ffb4b4ffb6b6ffb8b8ffbabaffbcbcffbebeff"
        "c0c0ffc2c2ffc4c4ffc6c6ffc8c8ffcacaffccccffceceffd0d0ffd2d2ffd4d4ffd6d6ffd8d8ffdadaffdcdcffdedeff"
        "e0e0ffe2e2ffe4e4ffe6e6ffe8e8ffeaeaffececffeeeefff0f0fff2f2fff4f4fff6f6fff8f8fffafafffcfcfffefeff"
        "fffefefffcfcfffafafff8f8fff6f6fff4f4fff2f2fff0f0ffeeeeffececffeaeaffe8e8ffe6e6ffe4e4ffe2e2ffe0e0"
        "ffdedeffdcdcffdadaffd8d8ffd6d6ffd4d4ffd2d2ffd0d0ffceceffccccffcacaffc8c8ffc6c6ffc4c4ffc2c2ffc0c0"
        "ffbebeffbcbcffbabaffb8b8ffb6b6ffb4b4ffb2b2ffb0b0ffaeaeffacacffaaaaffa8a8ffa6a6ffa4a4ffa2a2ffa0a0"
        "ff9e9eff9c9cff9a9aff9898ff9696ff9494ff9292ff9090ff8e8eff8c8cff8a8aff8888ff8686ff8484ff8282ff8080"
        "ff7e7eff7c7cff7a7aff7878ff7676ff7474ff7272ff7070ff6e6eff6c6cff6a6aff6868ff6666ff6464ff6262ff6060"
        "ff5e5eff5c5cff5a5aff5858ff5656ff5454ff5252ff5050ff4e4eff4c4cff4a4aff4848ff4646ff4444ff4242ff4040"
        "ff3e3eff3c3cff3a3aff3838ff3636ff3434ff3232ff3030ff2e2eff2c2cff2a2aff2828ff2626ff2424ff2222ff2020"
        "ff1e1eff1c1cff1a1aff1818ff1616ff1414ff1212ff1010ff0e0eff0c0cff0a0aff0808ff0606ff0404ff0202ff0000"
    ),
    "inferno": (
        "00000401000501010601010802010a02020c02020e03021004031204031405041706041907051b08051d09061f0a0722"
        "0b07240c08260d08290e092b10092d110a30120a32140b34150b37160b39180c3c190c3e1b0c411c0c431e0c451f0c48"
        "210c4a230c4c240c4f260c51280b53290b552b0b572d0b592f0a5b310a5c320a5e340a5f3609613809623909633b0964"
        "3d09653e0966400a67420a68440a68450a69470b6a490b6a4a0c6b4c0c6b4d0d6c4f0d6c510e6c520e6d540f6d550f6d"
        "57106e59106e5a116e5c126e5d126e5f136e61136e62146e64156e65156e67166e69166e6a176e6c186e6d186e6f196e"
        "71196e721a6e741a6e751b6e771c6d781c6d7a1d6d7c1d6d7d1e6d7f1e6c801f6c82206c84206b85216b87216b88226a"
        "8a226a8c23698d23698f24699025689225689326679526679727669827669a28659b29649d29649f2a63a02a63a22b62"
        "a32c61a52c60a62d60a82e5fa92e5eab2f5ead305dae305cb0315bb1325ab3325ab43359b63458b73557b93556ba3655"
        "bc3754bd3853bf3952c03a51c13a50c33b4fc43c4ec63d4dc73e4cc83f4bca404acb4149cc4248ce4347cf4446d04545"
        "d24644d34743d44842d54a41d74b3fd84c3ed94d3dda4e3cdb503bdd513ade5238df5337e05536e15635e25734e35933"
        "e45a31e55c30e65d2fe75e2ee8602de9612bea632aeb6429eb6628ec6726ed6925ee6a24ef6c23ef6e21f06f20f1711f"
        "f1731df2741cf3761bf37819f47918f57b17f57d15f67e14f68013f78212f78410f8850ff8870ef8890cf98b0bf98c0a"
        "f98e09fa9008fa9207fa9407fb9606fb9706fb9906fb9b06fb9d07fc9f07fca108fca309fca50afca60cfca80dfcaa0f"
        "fcac11fcae12fcb014fcb216fcb418fbb61afbb81dfbba1ffbbc21fbbe23fac026fac228fac42afac62df9c72ff9c932"
        "f9cb35f8cd37f8cf3af7d13df7d340f6d543f6d746f5d949f5db4cf4dd4ff4df53f4e156f3e35af3e55df2e661f2e865"
        "f2ea69f1ec6df1ed71f1ef75f1f179f2f27df2f482f3f586f3f68af4f88ef5f992f6fa96f8fb9af9fc9dfafda1fcffa4"
    ),
}


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


@functools.cache
def colormap_lut(name: str) -> np.ndarray:
    """``(257, 3)`` uint8: the 256 colours of matplotlib's colour map ``name`` (``'bwr'`` or ``'inferno'``),
    then its colour for NaN (black)."""
    lut = np.frombuffer(bytes.fromhex("".join(_LUT_HEX[name])), dtype=np.uint8).reshape(256, 3)
    return np.concatenate([lut, np.zeros((1, 3), dtype=np.uint8)])


def colorize(h: np.ndarray, sign: str = "signed") -> np.ndarray:
    """uint8 RGB of a map from :func:`heat_map` (``bwr`` diverging for signed, ``inferno`` for absolute):
    the colour matplotlib's ``cmap(v)`` gives, ``v`` the value's place in the range, as ``round(255 · rgb)``.

    Like matplotlib, ``v`` picks entry ``floor(256 · v)`` of the 256 (the top value the last one); values
    beyond the range take the end colours, NaN black.
    """
    v = np.asarray(h, dtype=np.float64)
    v = (v + 1) / 2 if sign == "signed" else v
    scaled = v * 256
    idx = np.where(np.isnan(scaled), 256, np.clip(scaled, 0, 255)).astype(np.intp)
    return colormap_lut(CMAPS[sign])[idx]


def png_bytes(img, level: int = PNG_LEVEL, up: bool = False) -> bytes:
    """PNG of a uint8 array (``(H, W)`` grey, ``(H, W, 3)`` RGB, ``(H, W, 4)`` RGBA) or a Pillow image.

    Encoded here with zlib: Pillow's encoder spends most of its time choosing a filter for every row (about 4x
    this on a panel). Every row gets filter None, or Up (each byte minus the one above: repeated rows of a
    magnified image become zeros) with ``up``.
    """
    a = np.ascontiguousarray(np.asarray(img), dtype=np.uint8)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    colour = 0 if a.ndim == 2 else {3: 2, 4: 6}.get(a.shape[-1]) if a.ndim == 3 else None
    if colour is None or 0 in a.shape:
        raise ValueError(f"cannot write an image of shape {a.shape} as PNG")
    h, w = a.shape[:2]
    rows = a.reshape(h, -1)
    raw = np.empty((h, rows.shape[1] + 1), dtype=np.uint8)
    raw[:, 0] = 2 if up else 0
    raw[:, 1:] = rows
    if up:
        np.subtract(rows[1:], rows[:-1], out=raw[1:, 1:])  # modulo 256, as PNG's Up filter is defined

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", w, h, 8, colour, 0, 0, 0)  # 8 bits, deflate, no interlace
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw.tobytes(), level))
        + chunk(b"IEND", b"")
    )


def save_heatmap(path: Path, h: np.ndarray, sign: str = "signed") -> None:
    """The heatmap alone, at the input's pixel size."""
    atomic_write_bytes(path, png_bytes(colorize(h, sign)))


def save_panel(
    path: Path, image: np.ndarray | None, h: np.ndarray, sign: str, title: str, overlay: bool = False
) -> None:
    """The input beside (or under) the heatmap, with a colour bar (see :func:`panel_image`)."""
    atomic_write_bytes(path, png_bytes(panel_image(image, h, sign, title, overlay), up=True))


def panel_image(image: np.ndarray | None, h: np.ndarray, sign: str, title: str, overlay: bool = False):
    """A Pillow image: the input (``image``, uint8 ``(H, W)`` or ``(H, W, C)``, or None) titled "input" beside
    the heatmap titled ``title`` — or the heatmap over the input at 60 % opacity (``overlay``) — and the colour
    bar of ``sign``. Small inputs are magnified by a whole factor (nearest neighbour: each pixel a square)."""
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
    canvas = Image.new(
        "RGB", (_PAD + len(tiles) * (tw + _PAD) + bar.width, _PAD + _TITLE + th + _PAD), "white"
    )
    x0 = _PAD
    for tile, name in tiles:
        canvas.paste(_title(name, tw), (x0, _PAD))
        canvas.paste(tile.resize((tw, th), Image.NEAREST) if k > 1 else tile, (x0, _PAD + _TITLE))
        x0 += tw + _PAD
    canvas.paste(bar, (x0, 0))
    return canvas


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


def save_bars(path: Path, values: np.ndarray, names: list[str], title: str, top: int = 15) -> None:
    """Bar chart of the ``top`` features by |attribution| (tabular inputs)."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    order = np.argsort(-np.abs(v), kind="stable")[:top][::-1]

    def build(plt):
        fig, ax = plt.subplots(figsize=(6, 0.3 * len(order) + 1.2))
        ax.barh([names[i] if i < len(names) else f"x{i}" for i in order], v[order],
                color=["tab:red" if v[i] > 0 else "tab:blue" for i in order])  # fmt: skip
        ax.set_title(title)
        ax.axvline(0, color="k", lw=0.5)
        return fig

    atomic_write_bytes(path, _plot_png(build))


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
