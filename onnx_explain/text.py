"""Texts for a token model: a Hugging Face ``tokenizers`` file tokenises texts into the model's inputs
(token ids, and the attention mask and token type ids where the model takes them).

Texts are padded per batch, with the attention mask given per sample (docs/methods.md §1.1): padded
positions take no part. A text longer than the model allows is truncated, and its :class:`Encoded` says
so. Reading text files and writing each explained text as JSON and HTML is the application's
(:mod:`onnx_explain.app.text`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputFileError, OptionError

__all__ = ["MASK_NAMES", "TYPE_NAMES", "Encoded", "TextEncoder"]

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
