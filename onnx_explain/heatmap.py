"""Heatmaps as arrays and PNG bytes: a 2-D map from one attribution, its colours through matplotlib's
colour maps as 256-entry lookup tables (no matplotlib import), and a fast PNG encoder. Used by the
results (:meth:`onnx_explain.Explanation.plot`, notebooks) and by the batch runs' writers
(:mod:`onnx_explain.app.viz`)."""

from __future__ import annotations

import functools
import struct
import zlib

import numpy as np

from .layout import to_channels_first

#: colour map of each heatmap sign, and the value range it spans
CMAPS = {"signed": "bwr", "abs": "inferno"}
RANGES = {"signed": (-1.0, 1.0), "abs": (0.0, 1.0)}
#: zlib level of the PNGs: 1 is several times faster than 6, the files barely larger
PNG_LEVEL = 1

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
    from .metrics.base import AGGREGATORS

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


# ----------------------------------------------------------------------------- what was explained, drawn
#: colours (RGB) of the shapes drawn over a heatmap: the explained reference box, the model's proposal it
#: matched, and the outline of a mask target (none of them in ``bwr`` or ``inferno``)
SHAPE_COLOURS = {"reference": (0, 255, 0), "matched": (0, 255, 255), "mask": (0, 255, 0)}
SHAPE_LABELS = {"reference": "explained box", "matched": "matched proposal", "mask": "mask outline"}


def target_shapes(extras: dict, index: int = 0) -> list[tuple[str, np.ndarray]]:
    """The shapes that say what sample ``index``'s attribution explains, from a result's ``extras``
    (:attr:`Explanation.extras`, or one item's): ``('matched', box)`` and ``('reference', box)`` of a box
    target (x1y1x2y2 in the input's pixels; the reference last, drawn on top), ``('mask', bool (H, W))``
    of a mask target; empty for other targets."""
    shapes = []
    for name, key in (("matched", "matched_box"), ("reference", "reference_box"), ("mask", "mask")):
        v = extras.get(key)
        if v is None:
            continue
        v = np.asarray(v)
        want = 2 if name == "mask" else 1  # one sample's mask is 2-D, its box 1-D
        if v.ndim == want + 1:
            v = v[index]
        if v.ndim == want:
            shapes.append((name, v.astype(bool) if name == "mask" else v.astype(np.float64)))
    return shapes


def box_pixels(box, scale: float, shape: tuple) -> tuple[int, int, int, int]:
    """The outline's pixel rows and columns ``(left, top, right, bottom)``, inclusive, of box x1y1x2y2 (input
    pixels, pixel j spanning [j, j+1)) on an image magnified ``scale`` times, of ``shape`` (H, W): the
    first and last pixel inside the box, clipped to the image."""
    h, w = shape[:2]
    x1, y1, x2, y2 = (float(v) * scale for v in box)
    left, top = int(np.clip(np.floor(x1), 0, w - 1)), int(np.clip(np.floor(y1), 0, h - 1))
    right, bottom = int(np.clip(np.ceil(x2) - 1, 0, w - 1)), int(np.clip(np.ceil(y2) - 1, 0, h - 1))
    return left, top, max(left, right), max(top, bottom)


def mask_contour(mask: np.ndarray, shape: tuple) -> np.ndarray:
    """bool ``shape`` (H, W): the pixels of ``mask`` (any size, resized by nearest neighbour to ``shape``)
    with a 4-neighbour outside it — its outline, inside the mask. The image's border is not an edge."""
    m = np.asarray(mask, dtype=bool)
    h, w = shape[:2]
    rows = (np.arange(h) * m.shape[0]) // h
    cols = (np.arange(w) * m.shape[1]) // w
    m = m[rows][:, cols]
    p = np.pad(m, 1, mode="edge")
    inner = p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return m & ~inner


def draw_shapes(rgb: np.ndarray, shapes: list, scale: float = 1.0) -> np.ndarray:
    """A copy of uint8 RGB ``rgb`` ``(H, W, 3)`` with ``shapes`` (:func:`target_shapes`) drawn 1 pixel wide
    in :data:`SHAPE_COLOURS`: boxes (input pixels times ``scale``) by their outline, masks by their contour."""
    out = np.array(rgb, dtype=np.uint8, copy=True)
    for name, v in shapes:
        colour = np.asarray(SHAPE_COLOURS[name], dtype=np.uint8)
        if name == "mask":
            out[mask_contour(v, out.shape)] = colour
            continue
        left, top, right, bottom = box_pixels(v, scale, out.shape)
        out[top, left : right + 1] = colour
        out[bottom, left : right + 1] = colour
        out[top : bottom + 1, left] = colour
        out[top : bottom + 1, right] = colour
    return out


def plot_shapes(ax, shapes: list) -> None:
    """Draw ``shapes`` (:func:`target_shapes`) on a matplotlib axes showing the input-sized map with
    ``imshow`` (pixel j centred at j): box outlines as rectangles, mask outlines as the 0.5 contour, each
    labelled for a legend."""
    from matplotlib.patches import Rectangle

    for name, v in shapes:
        colour = tuple(c / 255 for c in SHAPE_COLOURS[name])
        if name == "mask":
            if ax.images:  # an output-sized mask on an input-sized map: resized as drawn in the panels
                h, w = ax.images[-1].get_array().shape[:2]
                v = v[(np.arange(h) * v.shape[0]) // h][:, (np.arange(w) * v.shape[1]) // w]
            ax.contour(v.astype(float), levels=[0.5], colors=[colour], linewidths=1.5)
            ax.plot([], [], color=colour, label=SHAPE_LABELS[name])  # contour sets make no legend entry
            continue
        x1, y1, x2, y2 = (float(t) for t in v)
        ax.add_patch(Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, edgecolor=colour,
                               linewidth=1.5, label=SHAPE_LABELS[name]))  # fmt: skip
    if shapes:
        ax.legend(loc="lower right", fontsize=7, framealpha=0.7)
