"""Text in, token attributions out: a Hugging Face ``tokenizers`` file tokenises texts for a token model
(:class:`~onnx_explain.text.TextEncoder`, the core's, re-exported here), texts are read from ``.txt`` and
``.jsonl`` files, and each explained text is written as JSON (tokens, character offsets, scores) and a
self-contained HTML view (tokens coloured by relevance, the value on hover).

Texts are padded per batch, with the attention mask given per sample (docs/methods.md §1.1): padded
positions take no part and are not written. A text longer than the model allows is truncated, and the
item's record says so.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np

from ..errors import InputFileError
from ..heatmap import colormap_lut
from ..text import MASK_NAMES, TYPE_NAMES, Encoded, TextEncoder

# MASK_NAMES, TYPE_NAMES, Encoded and TextEncoder are the core's (onnx_explain.text), re-exported here
__all__ = [
    "MASK_NAMES",
    "TEXT_SUFFIXES",
    "TYPE_NAMES",
    "Encoded",
    "TextEncoder",
    "read_texts",
    "text_html",
    "text_record",
]

TEXT_SUFFIXES = {".txt", ".jsonl"}


def read_texts(path: Path) -> list[str]:
    """One text per line of a ``.txt``, or the ``text`` field of each line of a ``.jsonl``."""
    lines = path.read_text(encoding="utf-8").splitlines()
    if path.suffix.lower() == ".jsonl":
        texts = []
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                texts.append(str(json.loads(line)["text"]))
            except (json.JSONDecodeError, KeyError, TypeError):
                raise InputFileError(
                    f"{path}: line {i + 1} is not a JSON object with a 'text' field"
                ) from None
        return texts
    return [line for line in lines if line.strip()]


def text_record(text: str, enc: Encoded, scores: np.ndarray) -> dict:
    """The JSON of one explained text: its real tokens (no padding) with offsets and scores."""
    n = len(enc.tokens)
    return {
        "text": text,
        "tokens": enc.tokens,
        "offsets": [list(o) for o in enc.offsets],
        "scores": [float(v) for v in np.asarray(scores, dtype=np.float64)[:n]],
        "truncated": enc.truncated,
    }


def _luminance(r: int, g: int, b: int) -> float:
    """WCAG relative luminance of an sRGB colour (0–255 channels). Black text has the better contrast
    above 0.179, white below."""
    lin = [(c / 255) / 12.92 if c <= 10 else ((c / 255 + 0.055) / 1.055) ** 2.4 for c in (r, g, b)]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def text_html(record: dict, title: str) -> str:
    """A self-contained HTML view: each token coloured by its score (blue negative, red positive, the
    heatmaps' diverging map, symmetric around 0), the value on hover."""
    scores = np.asarray(record["scores"], dtype=np.float64)
    top = float(np.abs(scores).max()) if scores.size else 0.0
    lut = colormap_lut("bwr")
    spans = []
    for tok, s in zip(record["tokens"], scores, strict=True):
        v = 0.5 if top == 0 else 0.5 + 0.5 * s / top
        r, g, b = lut[min(255, int(256 * v))]
        ink = "#fff" if _luminance(r, g, b) < 0.18 else "#000"  # the higher contrast of black and white
        spans.append(
            f'<span class="t" style="background:rgb({r},{g},{b});color:{ink}" title="{s:.4g}">'
            f"{html.escape(tok)}</span>"
        )
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>body{{font-family:sans-serif;margin:2em}}"
        ".t{padding:2px 3px;margin:1px;border-radius:3px;display:inline-block}</style></head><body>"
        f"<h3>{html.escape(title)}</h3><p>{''.join(spans)}</p>"
        f"<p><small>{html.escape(record['text'])}</small></p></body></html>"
    )
