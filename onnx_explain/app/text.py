"""Text in, token attributions out: a Hugging Face ``tokenizers`` file tokenises texts for a token model,
and each explained text is written as JSON (tokens, character offsets, scores) and a self-contained HTML
view (tokens coloured by relevance, the value on hover).

Texts are padded per batch, with the attention mask given per sample (docs/methods.md §1.1): padded
positions take no part and are not written. A text longer than the model allows is truncated, and the
item's record says so.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputFileError, OptionError

TEXT_SUFFIXES = {".txt", ".jsonl"}
#: the input names the exporters give the per-sample companions of token ids
MASK_NAMES = ("attention_mask", "input_mask")
TYPE_NAMES = ("token_type_ids", "segment_ids")


@dataclass
class Encoded:
    """One text, tokenised: ids, tokens, character offsets, the mask of real (not padded) tokens."""

    ids: np.ndarray
    mask: np.ndarray
    types: np.ndarray
    tokens: list[str]
    offsets: list[tuple[int, int]]
    truncated: bool


class TextEncoder:
    """A ``tokenizers`` tokenizer for a model's token inputs.

    Parameters
    ----------
    path : str or Path
        A ``tokenizer.json`` (the Hugging Face ``tokenizers`` format; nothing is downloaded).
    max_length : int, optional
        Longest sequence: default the model's fixed sequence length, else 512.
    """

    def __init__(self, path, max_length: int | None = None):
        try:
            from tokenizers import Tokenizer
        except ImportError:  # pragma: no cover - tokenizers is a dependency of the text extra
            raise OptionError(
                "--tokenizer needs the 'tokenizers' package (pip install onnx-explain[text])"
            ) from None
        path = Path(path)
        if not path.is_file():
            raise InputFileError(f"{path}: tokenizer file not found")
        try:
            self.tok = Tokenizer.from_file(str(path))
        except Exception as exc:  # noqa: BLE001 - tokenizers raises its own exception types
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise InputFileError(f"{path}: not a tokenizers file ({first})") from None
        self.max_length = int(max_length or 512)
        # a tokenizer.json often pads every text to a fixed length itself (to 128, 512): its pad id is the
        # one the model was trained with, but the padding is ours to do per batch (to the longest text, or
        # the model's fixed length), so that pads cost no compute and the mask marks them
        padding = self.tok.padding
        known = self.tok.token_to_id("[PAD]") or self.tok.token_to_id("<pad>") or 0
        self.pad_id = int(padding["pad_id"]) if padding and padding.get("pad_id") is not None else known
        self.tok.no_padding()

    def encode(self, texts: list[str]) -> list[Encoded]:
        """Each text tokenised (with the tokenizer's special tokens), truncated to ``max_length``."""
        out = []
        for text in texts:
            enc = self.tok.encode(text)
            n = len(enc.ids)
            keep = min(n, self.max_length)
            out.append(
                Encoded(
                    ids=np.asarray(enc.ids[:keep], np.int64),
                    mask=np.ones(keep, np.int64),
                    types=np.asarray(enc.type_ids[:keep], np.int64),
                    tokens=list(enc.tokens[:keep]),
                    offsets=[tuple(o) for o in enc.offsets[:keep]],
                    truncated=n > keep,
                )
            )
        return out

    def batch(self, encoded: list[Encoded], model) -> dict:
        """The model's inputs for a batch of encoded texts, padded to the longest: the token ids, and the
        attention mask and token type ids where the model takes them (by their exporters' names)."""
        T = max(len(e.ids) for e in encoded)
        fixed = (model.input.shape or (None, None))[1:2]
        if fixed and isinstance(fixed[0], int):  # a sequence length fixed in the file: pad to it
            T = max(T, fixed[0])

        def pad(rows, value):
            return np.stack([np.pad(r, (0, T - len(r)), constant_values=value) for r in rows])

        names = {i.name for i in model.inputs}
        x = {model.input.name: pad([e.ids for e in encoded], self.pad_id)}
        for n in names & set(MASK_NAMES):
            x[n] = pad([e.mask for e in encoded], 0)
        for n in names & set(TYPE_NAMES):
            x[n] = pad([e.types for e in encoded], 0)
        missing = [c.name for c in model.companions if c.name not in x]
        if missing:
            raise OptionError(
                f"the model's input {missing[0]!r} is not one a tokenizer gives (ids, attention mask, token "
                "type ids): pass it with fixed_inputs / load it with a value"
            )
        return {
            k: v.astype(np.dtype(next(i.dtype for i in model.inputs if i.name == k))) for k, v in x.items()
        }


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
    from .viz import colormap_lut

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
