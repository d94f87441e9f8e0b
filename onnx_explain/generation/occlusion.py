"""Occlusion of generated-token targets on onnxruntime: each token replaced by a baseline token, the
targets' drop measured (docs/methods.md §2.11). Nothing is converted.

A decoder with a KV cache reuses the unperturbed prefix: tokens before position i are the same in every
sequence that replaces a token at i or later, so one run of the whole sequence gives the cache, and the
perturbations of a block of positions ``i0 .. i0 + b - 1`` run as one batch of b sequences from ``i0`` on,
fed the cache up to ``i0`` (a cost of ``Σ b (L − i0)`` tokens instead of ``L²``). A decoder without cache
runs whole perturbed sequences in batches; an encoder-decoder re-runs its encoder on perturbed sources and
its decoder (first-step graph, no cache) on each sequence.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import ModelRunError
from .attribute import Targets
from .generate import feeds_typed, positions, run_step


def _term_values(targets: Targets, logits: np.ndarray, offset: int, fallback: np.ndarray) -> np.ndarray:
    """``(R, N)`` values of the targets' terms from logits ``(R, S, V)`` of positions ``offset..``; terms
    at earlier positions keep ``fallback`` (their value on the unperturbed sequence: unchanged)."""
    z = torch.as_tensor(logits)
    pos = targets.pos.numpy()
    vals = np.repeat(fallback[None], len(z), 0)
    later = np.flatnonzero(pos >= offset)
    if later.size:
        sub = z[:, torch.as_tensor(pos[later] - offset), :].to(torch.float64)  # (R, n, V)
        tok = targets.tok[torch.as_tensor(later)].view(1, -1, 1).expand(len(z), -1, 1)
        if targets.output == "logit":
            v = sub.gather(2, tok).squeeze(2)
        else:
            v = torch.log_softmax(sub, -1).gather(2, tok).squeeze(2)
            if targets.output == "prob":
                v = v.exp()
        vals[:, later] = v.numpy()
    return vals


def _scores(targets: Targets, vals: np.ndarray) -> np.ndarray:
    return vals @ targets.weight.numpy()


def occlusion_decoder(gm, seq: np.ndarray, targets: Targets, baseline: int, batch_size: int, columns: int):
    """``(P, L)`` attribution ``t(x) − t(x with token i replaced)`` for i < ``columns``, the unperturbed
    logits ``(1, L, V)`` and the number of tokens run."""
    io = gm.decoder_io if gm.first_decoder is None else gm.first_decoder_io
    path = gm.first_decoder or gm.decoder
    L = len(seq)
    base = {io.ids: seq[None]}
    if io.mask:
        base[io.mask] = np.ones((1, L), np.int64)
    if io.positions:
        base[io.positions] = positions(np.ones((1, L), np.int64))
    base.update(gm.empty_cache(io, 1))
    logits, present = run_step(gm.session(path), io, base, str(path))
    zero = np.zeros(len(targets.pos))
    orig_vals = _term_values(targets, logits, 0, zero)[0]
    orig = _scores(targets, orig_vals[None])[0]
    out = np.zeros((targets.count, L))
    cached = gm.decoder_io.has_cache and gm.first_decoder is None  # one graph takes the cache
    run_tokens = L
    state = {"rows": batch_size}

    def block(idx: np.ndarray) -> None:
        nonlocal run_tokens
        b, i0 = len(idx), int(idx[0])
        start = i0 if cached else 0
        rows = np.repeat(seq[None, start:], b, 0)
        rows[np.arange(b), idx - start] = baseline
        feeds = {io.ids: rows}
        if io.mask:
            feeds[io.mask] = np.ones((b, L), np.int64)
        if io.positions:
            feeds[io.positions] = np.repeat(np.arange(start, L, dtype=np.int64)[None], b, 0)
        if cached and start > 0:
            cio = gm.decoder_io
            for c in cio.cache:
                feeds[c.name] = np.repeat(present[c.present][:, :, :start], b, 0)
            if cio.branch:
                feeds[cio.branch] = np.ones((1,), bool)
        else:
            feeds.update(gm.empty_cache(io, b))
        got, _ = run_step(gm.session(path), io, feeds, str(path))
        run_tokens += b * (L - start)
        vals = _term_values(targets, got, start, orig_vals)
        out[:, idx] = orig[:, None] - _scores(targets, vals).T

    i0 = 0
    while i0 < columns:
        idx = np.arange(i0, min(columns, i0 + state["rows"]))
        try:
            block(idx)
        except ModelRunError:
            if len(idx) == 1 or not cached:
                raise
            # onnxruntime's GroupQueryAttention takes a past with one sequence at a time: the perturbations
            # run one by one, still from the cached prefix
            state["rows"] = 1
            continue
        i0 += len(idx)
    return out, logits, run_tokens


def occlusion_seq2seq(
    gm, source: np.ndarray, seq: np.ndarray, targets: Targets, baseline: int, batch_size: int
):
    """An encoder-decoder: ``(P, S + T)`` over the source then the decoder's tokens (the start token is
    not replaced), and the unperturbed logits."""
    enc_ids, enc_mask, hidden = gm.encoder_io
    enc = gm.session(gm.encoder)
    path = gm.first_decoder or gm.decoder
    io = gm.first_decoder_io or gm.decoder_io
    S, T = len(source), len(seq)

    def run(srcs: np.ndarray, tgts: np.ndarray) -> np.ndarray:
        feeds = {enc_ids: srcs}
        if enc_mask:
            feeds[enc_mask] = np.ones_like(srcs)
        (states,) = enc.run([hidden], feeds_typed(enc, feeds))
        dfeeds = {io.ids: tgts, io.encoder_states: states}
        if io.encoder_mask:
            dfeeds[io.encoder_mask] = np.ones_like(srcs)
        if io.mask:
            dfeeds[io.mask] = np.ones_like(tgts)
        dfeeds.update(gm.empty_cache(io, len(tgts), encoder_length=S))
        return run_step(gm.session(path), io, dfeeds, str(path))[0]

    logits = run(source[None], seq[None])
    zero = np.zeros(len(targets.pos))
    orig_vals = _term_values(targets, logits, 0, zero)[0]
    orig = _scores(targets, orig_vals[None])[0]
    out = np.zeros((targets.count, S + T))
    cols = list(range(S)) + list(range(S + 1, S + T))  # every source token, every decoder token but the start
    for a in range(0, len(cols), batch_size):
        block = cols[a : a + batch_size]
        srcs = np.repeat(source[None], len(block), 0)
        tgts = np.repeat(seq[None], len(block), 0)
        for r, c in enumerate(block):
            if c < S:
                srcs[r, c] = baseline
            else:
                tgts[r, c - S] = baseline
        vals = _term_values(targets, run(srcs, tgts), 0, orig_vals)
        out[:, block] = orig[:, None] - _scores(targets, vals).T
    return out, logits
