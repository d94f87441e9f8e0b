"""Generation on onnxruntime with the graph's KV cache: greedy, or sampling with a seed.

A batch of prompts is left-padded (the attention mask marks the pads, position ids count real tokens:
Hugging Face's convention; a graph without position ids runs prompts of one length together), the first step runs the whole prompt with an empty cache, and every later step
feeds one token and the cache the previous step returned. A graph without cache is run on the whole
sequence at every step. A row stops at an end-of-sequence token; the batch stops when every row has.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputDataError, OptionError
from .layout import DecoderIO


@dataclass
class Sampling:
    """How the next token is chosen from the last position's logits (Hugging Face's processors, in its
    order: temperature, top-k, top-p). ``do_sample=False`` is greedy (the arg-max)."""

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if self.temperature <= 0:
            raise OptionError(f"temperature must be > 0, not {self.temperature}")
        if self.top_k < 0:
            raise OptionError(f"top_k must be >= 0 (0: off), not {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise OptionError(f"top_p must be in (0, 1], not {self.top_p}")
        self.rng = np.random.default_rng(self.seed)

    def choose(self, logits: np.ndarray) -> np.ndarray:
        """The next token of each row ``(B,)`` from logits ``(B, V)``."""
        if not self.do_sample:
            return logits.argmax(-1)
        z = logits.astype(np.float64) / self.temperature
        if self.top_k:
            k = min(self.top_k, z.shape[-1])
            kth = np.partition(z, -k, axis=-1)[:, -k][:, None]
            z = np.where(z < kth, -np.inf, z)
        if self.top_p < 1:
            order = np.argsort(z, axis=-1)  # ascending, as Hugging Face's TopPLogitsWarper
            sorted_z = np.take_along_axis(z, order, -1)
            p = np.exp(sorted_z - sorted_z.max(-1, keepdims=True))
            p /= p.sum(-1, keepdims=True)
            remove = np.cumsum(p, -1) <= 1 - self.top_p
            remove[:, -1] = False  # the most likely token always stays
            drop = np.zeros_like(remove)
            np.put_along_axis(drop, order, remove, -1)
            z = np.where(drop, -np.inf, z)
        gumbel = -np.log(-np.log(self.rng.uniform(np.finfo(np.float64).tiny, 1.0, z.shape)))
        return (z + gumbel).argmax(-1)  # the Gumbel-max trick: a draw from softmax(z)


def feeds_typed(session, feeds: dict) -> dict:
    """Each feed in the dtype its graph input declares (int32 ids of some exports)."""
    kinds = getattr(session, "_onnx_explain_dtypes", None)
    if kinds is None:  # read once per session
        table = {"tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(float)": np.float32,
                 "tensor(float16)": np.float16, "tensor(bool)": np.bool_}  # fmt: skip
        kinds = {i.name: table.get(i.type) for i in session.get_inputs()}
        session._onnx_explain_dtypes = kinds
    out = {}
    for k, v in feeds.items():
        if k in kinds:
            want = kinds[k]
            out[k] = (
                v if want is None or (isinstance(v, np.ndarray) and v.dtype == want) else np.asarray(v, want)
            )
    return out


def run_step(session, io: DecoderIO, feeds: dict, source: str = "<model>") -> tuple[np.ndarray, dict]:
    from ..errors import ort_error

    names = [io.logits, *io.presents]
    try:
        out = session.run(names, feeds_typed(session, feeds))
    except Exception as exc:  # noqa: BLE001 - onnxruntime's own exception types, one line for the user
        raise ort_error(exc, source, "run a generation step") from None
    return out[0], dict(zip(names[1:], out[1:], strict=True))


def _left_pad(rows: list[np.ndarray], pad: int) -> tuple[np.ndarray, np.ndarray]:
    T = max(len(r) for r in rows)
    ids = np.full((len(rows), T), pad, np.int64)
    mask = np.zeros((len(rows), T), np.int64)
    for b, r in enumerate(rows):
        if len(r):
            ids[b, T - len(r) :] = r
            mask[b, T - len(r) :] = 1
    return ids, mask


def positions(mask: np.ndarray) -> np.ndarray:
    """Position ids of a left-padded batch: real tokens count from 0, pads get 1 (Hugging Face)."""
    pos = np.cumsum(mask, -1) - 1
    return np.where(mask == 0, 1, pos)


def generate(
    gm, prompts: list[np.ndarray], max_new_tokens: int = 32, sampling: Sampling | None = None,
    use_cache: bool = True, sources_mask: np.ndarray | None = None,
) -> list[np.ndarray]:  # fmt: skip
    """The generated ids of each prompt (up to and including its end-of-sequence token).

    Parameters
    ----------
    gm : GenerativeModel
    prompts : list of int arrays
        A decoder's prompts, or an encoder-decoder's source texts (its decoder starts from the
        ``decoder_start`` token).
    max_new_tokens : int
    sampling : Sampling, optional
        Greedy by default.
    use_cache : bool
        Feed the graph's cache (the default when it has one); False runs the whole sequence every step
        (the same ids: a test on the graph itself).
    """
    sampling = sampling or Sampling()
    if max_new_tokens < 1:
        raise OptionError(f"max_new_tokens must be at least 1, not {max_new_tokens}")
    if not prompts or any(len(p) == 0 for p in prompts):
        raise InputDataError("every prompt needs at least one token")
    if gm.kind == "encoder-decoder":
        return _generate_seq2seq(gm, prompts, max_new_tokens, sampling, use_cache)
    lengths = {len(p) for p in prompts}
    if len(lengths) > 1 and not gm.decoder_io.positions:
        # no position ids to feed: the graph places tokens by itself (onnxruntime-genai's
        # GroupQueryAttention reads sequence lengths from the mask as if right-padded), so left padding
        # would move them: prompts of one length run as a batch, each length on its own
        out: list = [None] * len(prompts)
        for n in sorted(lengths):
            group = [i for i, p in enumerate(prompts) if len(p) == n]
            for i, g in zip(group, generate(gm, [prompts[i] for i in group], max_new_tokens, sampling, use_cache),
                            strict=True):  # fmt: skip
                out[i] = g
        return out
    pad = gm.settings.pad_id
    start_ids, start_mask = _left_pad([np.asarray(p, np.int64) for p in prompts], pad)
    B, T0 = start_ids.shape
    # the whole run's ids and mask, filled step by step (views of them are fed: nothing is concatenated)
    ids = np.full((B, T0 + max_new_tokens), pad, np.int64)
    mask = np.ones((B, T0 + max_new_tokens), np.int64)
    ids[:, :T0], mask[:, :T0] = start_ids, start_mask
    pos = positions(start_mask)
    last = pos[:, -1:].copy()  # each row's position of its last token
    eos = np.asarray(gm.settings.eos or [-1])
    finished = np.zeros(B, bool)
    new = np.full((B, max_new_tokens), pad, np.int64)
    cache: dict = {}
    io_first = gm.first_decoder_io if gm.first_decoder is not None else gm.decoder_io
    path_first = gm.first_decoder if gm.first_decoder is not None else gm.decoder
    session_first, session = gm.session(path_first), gm.session(gm.decoder)
    cached = use_cache and gm.decoder_io.has_cache
    steps = 0
    for step in range(max_new_tokens):
        T = T0 + step
        first = step == 0 or not cached
        io = io_first if first else gm.decoder_io
        if first:
            feeds = {io.ids: ids[:, :T]}
            if io.positions:
                feeds[io.positions] = positions(mask[:, :T]) if step else pos
            feeds.update(gm.empty_cache(io, B))
        else:
            feeds = {io.ids: ids[:, T - 1 : T]}
            if io.positions:
                feeds[io.positions] = last
            feeds.update({c.name: cache[c.present] for c in io.cache})
            if io.branch:
                feeds[io.branch] = _TRUE
        if io.mask:
            feeds[io.mask] = mask[:, :T]
        logits, cache = run_step(session_first if first else session, io, feeds,
                             str(path_first if first else gm.decoder))  # fmt: skip
        nxt = sampling.choose(logits[:, -1, :])
        if finished.any():
            nxt = np.where(finished, pad, nxt)
        new[:, step] = nxt
        ids[:, T] = nxt
        last = last + 1
        finished |= (nxt[:, None] == eos).any(1)
        steps = step + 1
        if finished.all():
            break
    return _trim(new[:, :steps], eos)


_TRUE = np.ones((1,), bool)


def _trim(new: np.ndarray, eos: np.ndarray) -> list[np.ndarray]:
    out = []
    for row in new:
        stop = np.flatnonzero(np.isin(row, eos))
        out.append(row[: stop[0] + 1] if len(stop) else row)
    return out


def encode_sources(gm, sources: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """An encoder-decoder's sources, right-padded, and the encoder's hidden states ``(B, S, d)``."""
    pad = gm.settings.pad_id
    S = max(len(s) for s in sources)
    ids = np.full((len(sources), S), pad, np.int64)
    mask = np.zeros((len(sources), S), np.int64)
    for b, s in enumerate(sources):
        ids[b, : len(s)] = s
        mask[b, : len(s)] = 1
    enc_ids, enc_mask, hidden = gm.encoder_io
    feeds = {enc_ids: ids}
    if enc_mask:
        feeds[enc_mask] = mask
    session = gm.session(gm.encoder)
    try:
        (states,) = session.run([hidden], feeds_typed(session, feeds))
    except Exception as exc:  # noqa: BLE001 - onnxruntime's own exception types
        from ..errors import ort_error

        raise ort_error(exc, str(gm.encoder), "run the encoder") from None
    return mask, states


def _generate_seq2seq(gm, sources, max_new_tokens, sampling, use_cache) -> list[np.ndarray]:
    start = gm.settings.decoder_start
    if start is None:
        start = gm.settings.pad_id
    B = len(sources)
    src_mask, states = encode_sources(gm, [np.asarray(s, np.int64) for s in sources])
    pad = gm.settings.pad_id
    eos = np.asarray(gm.settings.eos or [-1])
    ids = np.full((B, 1), start, np.int64)
    finished = np.zeros(B, bool)
    new: list[np.ndarray] = []
    cache: dict = {}
    cross: dict = {}
    for step in range(max_new_tokens):
        first = step == 0 or not use_cache or not gm.decoder_io.has_cache
        path = gm.first_decoder if first and gm.first_decoder is not None else gm.decoder
        io = gm.first_decoder_io if path is gm.first_decoder else gm.decoder_io
        feeds = {io.ids: ids if first else ids[:, -1:]}
        if io.encoder_mask:
            feeds[io.encoder_mask] = src_mask
        if io.encoder_states:
            feeds[io.encoder_states] = states
        if io.mask:
            feeds[io.mask] = np.ones_like(ids)
        if first:
            feeds.update(gm.empty_cache(io, B, encoder_length=states.shape[1]))
        else:
            for c in io.cache:
                feeds[c.name] = cross[c.name] if c.part == "cross" else cache[c.present]
            if io.branch:
                feeds[io.branch] = np.ones((1,), bool)
        logits, cache = run_step(gm.session(path), io, feeds, str(path))
        if first and gm.decoder_io.has_cache:  # the cross-attention cache is computed once, at the first step
            cross = {c.name: cache[_present_like(c, cache)] for c in gm.decoder_io.cache if c.part == "cross"}
        nxt = sampling.choose(logits[:, -1, :])
        nxt = np.where(finished, pad, nxt)
        new.append(nxt)
        finished |= (nxt[:, None] == eos).any(1)
        ids = np.concatenate([ids, nxt[:, None]], 1)
        if finished.all():
            break
    return _trim(np.stack(new, 1), eos)


def _present_like(entry, cache: dict) -> str:
    """The present output of the first step that holds ``entry``'s cross-attention keys or values."""
    if entry.present in cache:
        return entry.present
    want = f".{entry.layer}.encoder.{entry.kind}"
    return next(k for k in cache if k.endswith(want))
