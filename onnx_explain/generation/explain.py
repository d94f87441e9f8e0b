"""``explain_generation``: generate on onnxruntime (or take the user's continuation), then attribute each
generated token to the prompt and the tokens before it on the converted graph (docs/methods.md §2.11)."""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_save_npz, atomic_write_bytes
from ..errors import InputDataError, OptionError
from ..heatmap import colormap_lut
from ..text import TextEncoder
from .generate import Sampling, generate
from .model import GenerativeModel, load_generative


@dataclass
class GenerationExplanation:
    """The attribution of a generation: one row per explained target, one column per token.

    Attributes
    ----------
    prompt : str
        The prompt (a decoder's) or the source text (an encoder-decoder's).
    continuation : str
        The generated (or given) text.
    tokens : list of str
        Every column's token, as text: a decoder's prompt then continuation; an encoder-decoder's
        source tokens, then the decoder's start token and continuation.
    ids : numpy.ndarray
        The columns' token ids.
    source_length : int
        Columns that belong to an encoder-decoder's source (0 for a decoder).
    prompt_length : int
        Columns before the continuation (the prompt of a decoder; source + start token of an
        encoder-decoder).
    targets : list of str
        Each row's target (a generated token, a span, a contrast).
    target_columns : numpy.ndarray
        The column of each row's (last) token: its attribution is over the columns before it; a later
        column gets exactly 0 (the causal mask).
    attribution : numpy.ndarray
        ``(P, C)`` float32.
    score : numpy.ndarray
        The explained scalar of each row (logit, log-probability or probability).
    probability, entropy : numpy.ndarray
        Step scores of each token row: its probability and the entropy (nats) of its position's
        distribution (NaN for a span or contrast row).
    method, options, extras
        ``extras``: ``delta`` (completeness of IG and LRP), ``token_reduction``, ``embedding_node``,
        ``output`` (the output space), ``parity`` (the certification of the converted graph),
        ``generated`` (False when the continuation was given).
    """

    prompt: str
    continuation: str
    tokens: list[str]
    ids: np.ndarray
    source_length: int
    prompt_length: int
    targets: list[str]
    target_columns: np.ndarray
    attribution: np.ndarray
    score: np.ndarray
    probability: np.ndarray
    entropy: np.ndarray
    method: str
    options: dict
    extras: dict = field(default_factory=dict)
    #: each column's character span: a prompt (source) token's in :attr:`prompt`, a continuation token's in
    #: :attr:`continuation` (the decoder's start token: ``None``)
    offsets: list = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-ready: the tokens, the matrix, the scores (no embedding-level arrays)."""

        def plain(v):
            if isinstance(v, np.ndarray):
                return v.tolist()
            if isinstance(v, (np.floating, np.integer)):
                return v.item()
            if isinstance(v, dict):
                return {k: plain(x) for k, x in v.items()}
            if isinstance(v, (list, tuple)):
                return [plain(x) for x in v]
            return v

        return {
            "prompt": self.prompt,
            "continuation": self.continuation,
            "tokens": self.tokens,
            "offsets": [None if o is None else list(o) for o in self.offsets],
            "ids": self.ids.tolist(),
            "source_length": self.source_length,
            "prompt_length": self.prompt_length,
            "targets": self.targets,
            "target_columns": self.target_columns.tolist(),
            "attribution": [[float(v) for v in row] for row in self.attribution],
            "score": [float(v) for v in self.score],
            "probability": [None if np.isnan(v) else float(v) for v in self.probability],
            "entropy": [None if np.isnan(v) else float(v) for v in self.entropy],
            "method": self.method,
            "options": plain(self.options),
            "extras": plain({k: v for k, v in self.extras.items() if k != "embedding_attribution"}),
        }

    def html(self, title: str | None = None) -> str:
        """A self-contained HTML view: the token x target matrix (rows: the tokens attributed to; columns:
        the explained targets), each column coloured on its own scale (blue negative, red positive), the
        value on hover; the text with the continuation underlined."""
        return generation_html(self, title or f"{self.method}: {self.prompt[:60]}")

    def save(self, folder) -> list[Path]:
        """``explanation.json``, ``attribution.npz`` (the matrix, the embedding-level attribution where
        kept, ids, scores) and ``view.html`` in ``folder`` (written whole, or not at all)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        arrays = {"attribution": self.attribution, "ids": self.ids, "score": self.score,
                  "target_columns": self.target_columns, "probability": self.probability,
                  "entropy": self.entropy}  # fmt: skip
        for k, v in self.extras.get("embedding_attribution", {}).items():
            arrays[f"embedding_attribution_{k}"] = v
        paths = [folder / "explanation.json", folder / "attribution.npz", folder / "view.html"]
        atomic_write_bytes(paths[0], json.dumps(self.to_dict(), indent=1).encode())
        atomic_save_npz(paths[1], **arrays)
        atomic_write_bytes(paths[2], self.html().encode())
        return paths


def generation_html(e: GenerationExplanation, title: str) -> str:
    lut = colormap_lut("bwr")
    A = np.asarray(e.attribution, dtype=np.float64)
    top = np.abs(A).max(1) if A.size else np.zeros(0)

    def cell(v, scale):
        x = 0.5 if scale == 0 else 0.5 + 0.5 * v / scale
        r, g, b = lut[min(255, max(0, int(256 * x)))]
        return f'<td style="background:rgb({r},{g},{b})" title="{v:.4g}">{v:.2f}</td>'

    head = "".join(f"<th>{html.escape(t)}</th>" for t in e.targets)
    rows = []
    last = int(max(e.target_columns)) if len(e.target_columns) else 0
    for c in range(min(len(e.tokens), last)):
        kind = "src" if c < e.source_length else "prompt" if c < e.prompt_length else "gen"
        cells = "".join(
            cell(A[j, c], top[j]) if c < e.target_columns[j] else "<td></td>" for j in range(len(A))
        )
        rows.append(f'<tr class="{kind}"><th>{html.escape(e.tokens[c])}</th>{cells}</tr>')
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>body{{font-family:sans-serif;margin:2em}}"
        "table{border-collapse:collapse;font-size:12px}td,th{padding:2px 4px;border:1px solid #ddd;"
        "white-space:pre}tr.gen th{text-decoration:underline}tr.src th{font-style:italic}</style></head><body>"
        f"<h3>{html.escape(title)}</h3><p>{html.escape(e.prompt)}<u>{html.escape(e.continuation)}</u></p>"
        f"<p><small>rows: tokens attributed to; columns: explained targets ({html.escape(e.method)}, "
        f"{html.escape(str(e.extras.get('output', 'logit')))}); each column on its own scale</small></p>"
        f"<table><tr><th></th>{head}</tr>{''.join(rows)}</table></body></html>"
    )


class _Tokenizer:
    def __init__(self, path):
        self.tok = TextEncoder(path).tok  # the same checks and one-line errors as explain_text

    def encode(self, text: str, special: bool = True) -> np.ndarray:
        return np.asarray(self.tok.encode(text, add_special_tokens=special).ids, np.int64)

    def decode(self, ids) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=True)

    def pieces(self, ids) -> list[str]:
        return [self.tok.decode([int(i)], skip_special_tokens=False) for i in ids]

    def offsets(self, prompt: str, new, start_token: bool) -> list:
        """Character spans of the columns: the prompt's tokens in the prompt (from the encoding), the
        decoder's start token ``None``, the continuation's tokens in its decoded text (``decode(new[:k])``
        lengths, so that byte-level pieces get the span of the characters they complete)."""
        spans = [tuple(o) for o in self.tok.encode(prompt).offsets]
        if start_token:
            spans.append(None)
        ends = [len(self.decode(new[: k + 1])) for k in range(len(new))]
        return spans + [(a, b) for a, b in zip([0, *ends[:-1]], ends, strict=True)]


def tokenizer_for(gm, tokenizer=None) -> _Tokenizer:
    """The tokenizer of a generation: ``tokenizer`` (a ``tokenizer.json`` path, or one already loaded) or
    the model folder's; a missing or unreadable file is one :class:`~onnx_explain.errors.InputFileError`."""
    if isinstance(tokenizer, _Tokenizer):
        return tokenizer
    path = tokenizer or gm.tokenizer
    if path is None:
        raise OptionError(f"{gm.folder}: no tokenizer.json beside the model; pass tokenizer=")
    return _Tokenizer(path)


def _as_list(v, what: str) -> tuple[list, bool]:
    if v is None:
        return [], False
    if isinstance(v, str):
        return [v], True
    v = list(v)
    if not v:
        raise InputDataError(f"no {what} given")
    return [str(x) for x in v], False


def explain_generation(
    model,
    prompt,
    tokenizer=None,
    *,
    max_new_tokens: int = 32,
    continuation=None,
    method: str = "gradient_x_input",
    target: str = "tokens",
    contrast=None,
    span: tuple[int, int] | None = None,
    output: str = "logit",
    batch_size: int = 64,
    seed: int = 0,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    device: str = "cpu",
    keep_embedding: bool = False,
    **options,
):
    """Generate from a prompt and attribute each generated token to the tokens before it.

    Parameters
    ----------
    model : GenerativeModel, str or Path
        A model folder (Optimum, onnxruntime-genai, transformers.js) or one decoder ``.onnx``
        (:func:`onnx_explain.generation.load_generative`).
    prompt : str or list of str
        The prompt (a decoder's) or source text (an encoder-decoder's); a list gives a list of
        explanations, generated as one batch.
    tokenizer : str or Path, optional
        A ``tokenizer.json`` (or :func:`tokenizer_for`'s result); default the one in the model's folder.
    max_new_tokens : int
    continuation : str or list of str, optional
        Teacher forcing: explain this continuation instead of generating one.
    method : str
        ``gradient``, ``gradient_x_input`` (default), ``smoothgrad``, ``integrated_gradients`` or ``lrp``
        at the embedding of the converted graph, or ``occlusion`` on onnxruntime (nothing converted)
        (:data:`GENERATION_METHODS`).
    target : {'tokens', 'span'}
        One row per generated token, or one row for the sum of the log-probabilities of the continuation
        (or of ``span=(a, b)``, continuation tokens a..b-1).
    contrast : str, optional
        An alternative continuation: each row explains ``f(a) - f(b)``, a the generated token and b the
        alternative's token at the same position.
    output : {'logit', 'log_prob', 'prob'}
        The explained scalar of a token (the logit by default, as for classifiers; a span is always a
        log-likelihood).
    batch_size : int
        (target, row) pairs per backward pass: memory depends on it, results do not.
    seed : int
        Sampling's and SmoothGrad's randomness.
    do_sample, temperature, top_k, top_p
        Sampling (greedy by default).
    device : str
        torch device for the attribution.
    keep_embedding : bool
        Keep the embedding-level attribution ``(P, L, D)`` in ``extras['embedding_attribution']``.
    **options
        The method's options (``n_steps``, ``n_samples``, ``sigma``, ``composite`` ...).

    Returns
    -------
    GenerationExplanation or list of GenerationExplanation
    """
    from .methods import check

    gm = model if isinstance(model, GenerativeModel) else load_generative(model)
    opts = check(method, options)
    prompts, single = _as_list(prompt, "prompts")
    if not prompts:
        raise InputDataError("no prompt given")
    conts, _ = _as_list(continuation, "continuations")
    if conts and len(conts) != len(prompts):
        raise InputDataError(f"{len(conts)} continuations for {len(prompts)} prompts")
    contrasts, _ = _as_list(contrast, "contrasts")
    if contrasts and len(contrasts) not in (1, len(prompts)):
        raise InputDataError(f"{len(contrasts)} contrasts for {len(prompts)} prompts")
    tok = tokenizer_for(gm, tokenizer)
    encoded = [tok.encode(p) for p in prompts]
    empty = [i for i, e in enumerate(encoded) if len(e) == 0]
    if empty:
        raise InputDataError(f"prompt {empty[0]} has no tokens")
    if conts:
        news = [tok.encode(c, special=False) for c in conts]
        generated = False
    else:
        sampling = Sampling(do_sample, temperature, top_k, top_p, seed)
        news = generate(gm, encoded, max_new_tokens, sampling)
        generated = True
    out = []
    for i, (p, enc, new) in enumerate(zip(prompts, encoded, news, strict=True)):
        if len(new) == 0:
            raise InputDataError(f"prompt {i}: the continuation has no tokens")
        alt = None
        if contrasts:
            alt = tok.encode(contrasts[i if len(contrasts) > 1 else 0], special=False)
        e = _explain_one(gm, tok, enc, new, method, opts, target, span, alt, output, batch_size, seed,
                         device, keep_embedding)  # fmt: skip
        e.prompt = p
        e.offsets = tok.offsets(p, new, gm.kind == "encoder-decoder")
        e.extras["generated"] = generated
        out.append(e)
    return out[0] if single else out


def _explain_one(gm, tok, prompt_ids, new, method, opts, target, span, alt, output, batch_size, seed, device,
                 keep_embedding) -> GenerationExplanation:  # fmt: skip
    from ..methods.base import make_generator
    from .attribute import make_targets
    from .methods import GENERATION_METHODS, reduce_tokens

    spec = GENERATION_METHODS[method]
    if spec.graph == "onnxruntime":
        return _explain_runtime(gm, tok, prompt_ids, new, spec, opts, target, span, alt, output, batch_size)
    if gm.kind == "encoder-decoder":
        start = gm.settings.decoder_start if gm.settings.decoder_start is not None else gm.settings.pad_id
        seq = np.concatenate([[start], new]).astype(np.int64)
        forward, es, notes = _seq2seq_forward(gm, prompt_ids, seq, device, spec, opts)
        first, source = 1, len(prompt_ids)
        columns = np.concatenate([prompt_ids, seq])
    else:
        seq = np.concatenate([prompt_ids, new]).astype(np.int64)
        forward, es, notes = _decoder_forward(gm, seq, device, spec, opts)
        first, source = len(prompt_ids), 0
        columns = seq
    pieces = tok.pieces(new)
    targets = make_targets(seq, first, output, target, alt, span, pieces)
    generator = make_generator(seed, "cpu")
    with torch.no_grad():
        attributions, extras = spec.fn(es, forward, targets, batch_size, generator, **opts)
        logits = extras.pop("_out", None)
        if logits is None:  # a method whose rows are not the input (noisy copies, path points)
            logits = forward(es).detach()
        scores = targets.scores(logits)[0]
    how = spec.reduction(opts)
    per_input = [reduce_tokens(a, how) for a in attributions]
    matrix = np.concatenate(per_input, axis=1).astype(np.float32)
    prob, ent = _step_scores(logits, targets, target, alt)
    offset = source  # a target's column in the matrix: the decoder side starts after the source
    target_columns = np.asarray([offset + p + 1 for p in targets.last], np.int64)
    extras = {**extras, **notes, "token_reduction": how, "output": targets.output}
    if keep_embedding:
        extras["embedding_attribution"] = {
            str(i): a.numpy().astype(np.float32) for i, a in enumerate(attributions)
        }
    return GenerationExplanation(
        prompt="", continuation=tok.decode(new), tokens=tok.pieces(columns), ids=columns,
        source_length=source, prompt_length=source + first, targets=targets.labels,
        target_columns=target_columns, attribution=matrix, score=scores.to(torch.float64).numpy(),
        probability=prob, entropy=ent, method=method, options=opts, extras=extras,
    )  # fmt: skip


def _explain_runtime(gm, tok, prompt_ids, new, spec, opts, target, span, alt, output, batch_size):
    """A method that runs on onnxruntime alone (occlusion): nothing is converted."""
    from .attribute import make_targets

    if gm.kind == "encoder-decoder":
        start = gm.settings.decoder_start if gm.settings.decoder_start is not None else gm.settings.pad_id
        seq = np.concatenate([[start], new]).astype(np.int64)
        first, source, columns = 1, len(prompt_ids), np.concatenate([prompt_ids, seq])
    else:
        seq = np.concatenate([prompt_ids, new]).astype(np.int64)
        first, source, columns = len(prompt_ids), 0, seq
    targets = make_targets(seq, first, output, target, alt, span, tok.pieces(new))
    if gm.kind == "encoder-decoder":
        matrix, logits, extras = spec.fn(gm, seq, targets, batch_size, source=np.asarray(prompt_ids), **opts)
    else:
        matrix, logits, extras = spec.fn(gm, seq, targets, batch_size, columns=max(targets.last) + 1, **opts)
    lg = torch.as_tensor(logits)
    scores = targets.scores(lg.to(torch.float64))[0]
    prob, ent = _step_scores(lg, targets, target, alt)
    return GenerationExplanation(
        prompt="", continuation=tok.decode(new), tokens=tok.pieces(columns), ids=columns,
        source_length=source, prompt_length=source + first, targets=targets.labels,
        target_columns=np.asarray([source + p + 1 for p in targets.last], np.int64),
        attribution=matrix.astype(np.float32), score=scores.numpy(), probability=prob, entropy=ent,
        method=spec.name, options=opts, extras={**extras, "output": targets.output},
    )  # fmt: skip


def certify(gm, device: str = "cpu", length: int = 8, seed: int = 0) -> dict:
    """Convert the attributed graph(s) and certify them against onnxruntime on a random sequence of
    ``length`` tokens (what ``info`` reports; explaining certifies on the user's own sequence)."""
    from .methods import GENERATION_METHODS

    rng = np.random.default_rng(seed)
    vocab = gm.vocab or 256
    seq = rng.integers(0, vocab, size=length).astype(np.int64)
    spec = GENERATION_METHODS["gradient"]
    if gm.kind == "encoder-decoder":
        _, _, notes = _seq2seq_forward(
            gm, rng.integers(0, vocab, size=length).astype(np.int64), seq, device, spec, {}
        )
    else:
        _, _, notes = _decoder_forward(gm, seq, device, spec, {})
    return {"parity": notes.get("parity"), "embedding_node": notes.get("embedding_node")}


def _step_scores(logits: torch.Tensor, targets, kind: str, alt) -> tuple[np.ndarray, np.ndarray]:
    P = targets.count
    if kind != "tokens" or alt is not None:
        return np.full(P, np.nan), np.full(P, np.nan)
    lp = torch.log_softmax(logits[0, targets.pos].to(torch.float64), -1)
    prob = lp.gather(1, targets.tok.view(-1, 1)).squeeze(1).exp()
    ent = -(lp.exp() * lp).nan_to_num().sum(-1)
    return prob.numpy(), ent.numpy()


def _converted(model, data: dict, device: str, vocab: int):
    """The certified converted graph of ``model`` on ``data`` and its embedding view.

    The graph is certified on the sequence itself and two sequences of the same length drawn from the
    vocabulary (a short sequence permuted, the certification's own way to vary one row, can equal itself)."""
    from ..methods.embedding import embedding_model

    xe, comp = model.split_inputs(data)
    rng = np.random.default_rng(0)
    vocab = vocab or int(xe.max()) + 1
    probe = np.concatenate([xe, rng.integers(0, vocab, size=(2, *xe.shape[1:])).astype(xe.dtype)])
    module = model.torch_module(
        device=device, probe=(probe, {k: np.repeat(v, 3, 0) for k, v in comp.items()})
    )
    ids = torch.as_tensor(xe, device=device)
    comp_t = {k: torch.as_tensor(v, device=device) for k, v in comp.items()}
    emb, e, frontier = embedding_model(module, ids, comp_t)
    return emb, e, {**comp_t, emb.ids_key: ids}, frontier


def _embed_token(emb, comp: dict, token: int, like: torch.Tensor) -> torch.Tensor:
    """The embedding (the cut tensor) of the sequence with every id replaced by ``token``."""
    from ..methods.embedding import embedding_model

    ids = comp[emb.ids_key]
    others = {k: v for k, v in comp.items() if k != emb.ids_key}
    _, e, _ = embedding_model(emb.wrapper, torch.full_like(ids, int(token)), others)
    return e.to(like.dtype)


def _rows(comp: dict, R: int) -> dict:
    return {k: v.expand(R, *v.shape[1:]) for k, v in comp.items()}


def _graph(emb, e, comp, spec, opts, also=(), seed_output=True):
    """The module a method runs: the embedding view, or its LRP graph (built once per settings); ``also``
    and ``seed_output`` chain an encoder's LRP graph under a decoder's (single-backward form)."""
    if spec.graph != "lrp":
        return emb, {}
    from ..methods.lrp import checked_composite_options, default_composite, lrp_graph

    example = (e, comp)
    composite = opts.get("composite") or "auto"
    if composite == "auto":
        composite = default_composite(emb, example)
    chained = bool(also) or not seed_output
    graph, assignments = lrp_graph(
        emb, example, composite, checked_composite_options(composite, opts.get("composite_options"), {}), opts.get("rules") or {},
        opts.get("fallback"), "gradient", "single" if chained else "auto", tuple(also), seed_output,
    )  # fmt: skip
    return graph, {
        "composite": composite,
        "fallback_nodes": [a.onnx_name for a in assignments if a.fallback],
    }


def _decoder_forward(gm, seq: np.ndarray, device: str, spec, opts):
    model = gm.explained()
    io = gm.attribution_io
    ids = seq[None]
    data = {io.ids: ids}
    names = {i.name for i in model.inputs}
    if io.mask in names:
        data[io.mask] = np.ones_like(ids)
    if io.positions in names:
        data[io.positions] = np.arange(ids.shape[1], dtype=np.int64)[None]
    emb, e, comp, frontier = _converted(model, data, device, gm.vocab)
    graph, notes = _graph(emb, e, comp, spec, opts)

    def forward(rows):
        return graph(rows[0], _rows(comp, len(rows[0])))

    forward.pad_id = gm.settings.pad_id
    forward.embed = lambda token: [_embed_token(emb, comp, token, e)]
    notes = {**notes, "embedding_node": frontier}
    if model.parity is not None:
        notes["parity"] = model.parity.summary()
    return forward, [e], notes


def _seq2seq_forward(gm, source: np.ndarray, seq: np.ndarray, device: str, spec, opts):
    """Source and decoder tokens explained together: the encoder's embedding view feeds the decoder's
    ``encoder_hidden_states``, so a target's gradient reaches both."""
    enc_model = gm.explained_encoder()
    enc_ids_name, enc_mask_name, _ = gm.encoder_io
    src = source[None]
    enc_data = {enc_ids_name: src}
    if enc_mask_name:
        enc_data[enc_mask_name] = np.ones_like(src)
    enc_emb, es, enc_comp, enc_frontier = _converted(enc_model, enc_data, device, gm.vocab)
    with torch.no_grad():
        states = enc_emb(es, enc_comp).numpy()
    model = gm.explained()
    io = gm.attribution_io
    ids = seq[None]
    data = {io.ids: ids, io.encoder_states: states}
    names = {i.name for i in model.inputs}
    if io.encoder_mask in names:
        data[io.encoder_mask] = np.ones_like(src)
    if io.mask in names:
        data[io.mask] = np.ones_like(ids)
    dec_emb, et, dec_comp, frontier = _converted(model, data, device, gm.vocab)
    # LRP: the encoder's single-backward graph feeds the decoder's, whose encoder states carry relevance on
    enc_graph, enc_notes = _graph(enc_emb, es, enc_comp, spec, opts, seed_output=False)
    states_at = dec_emb.wrapper.positions[io.encoder_states]
    dec_graph, notes = _graph(dec_emb, et, dec_comp, spec, opts, also=(states_at,))

    def forward(rows):
        R = len(rows[0])
        h = enc_graph(rows[0], _rows(enc_comp, R))
        comp = {**_rows(dec_comp, R), io.encoder_states: h}
        return dec_graph(rows[1], comp)

    forward.pad_id = gm.settings.pad_id
    forward.embed = lambda token: [
        _embed_token(enc_emb, enc_comp, token, es),
        _embed_token(dec_emb, dec_comp, token, et),
    ]
    if enc_notes:
        notes = {**notes, "composite": {"encoder": enc_notes["composite"], "decoder": notes["composite"]},
                 "fallback_nodes": enc_notes["fallback_nodes"] + notes["fallback_nodes"]}  # fmt: skip
    notes = {**notes, "embedding_node": {"encoder": enc_frontier, "decoder": frontier}}
    if model.parity is not None:
        notes["parity"] = {"encoder": enc_model.parity.summary(), "decoder": model.parity.summary()}
    return forward, [es, et], notes
