"""Token-level metrics for token-id inputs ``(B, L)``: token deletion and insertion (curves and AUC) and
masked-input rank consistency (Park's Kendall τ at token level). docs/methods.md §3.10 "Tokens".

A token is *eligible* when it is a real token (its attention mask is 1) and not a special token
([CLS], [SEP], [PAD] ...): only eligible tokens are ranked and replaced, by ``replace_id`` (the
tokenizer's [MASK], else [UNK], else [PAD] id). Special tokens, padding and the attention mask are
never changed, so every perturbed row runs with its own sample's mask. ``N`` is a sample's number of
eligible tokens; a fraction ``f`` replaces (deletion) or restores (insertion) the ``ceil(f·N)`` first
tokens of the ranking, as CP-LRP's ``flip`` (Ali et al. 2022). Rows are sample-major and go through the
predictor (one onnxruntime session) in chunks of its batch size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputFileError, OptionError
from ..text import MASK_NAMES, TextEncoder
from .base import Predictor, register_metric
from .robustness import TENTHS, cosine_rows, explain_stacked, kendall_rows

__all__ = ["FRACTIONS", "special_token_ids", "token_curve", "token_positions"]

#: CP-LRP's fractions 0, 0.1, ..., 1
FRACTIONS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
#: replacement tokens in order of preference (BERT-style, then RoBERTa-style spellings)
REPLACEMENTS = ("[MASK]", "<mask>", "[UNK]", "<unk>", "[PAD]", "<pad>")
# fractions such as 0.1 * 3 = 0.30000000000000004 must not round up to one token more
_EPS = 1e-9


def special_token_ids(tokenizer) -> tuple[int, tuple[int, ...]]:
    """``(replace_id, special_ids)`` of a ``tokenizers`` tokenizer: the id of [MASK] (else [UNK], else
    [PAD]) and the ids of every special token.

    Parameters
    ----------
    tokenizer : str, Path, tokenizers.Tokenizer or onnx_explain.text.TextEncoder
        A ``tokenizer.json`` path or a loaded tokenizer.
    """
    tok = getattr(tokenizer, "tok", tokenizer)
    if isinstance(tok, (str, Path)):
        tok = TextEncoder(tok).tok
    if not hasattr(tok, "get_added_tokens_decoder"):
        raise OptionError(f"tokenizer must be a tokenizer.json path or a tokenizers.Tokenizer, not {tok!r}")
    special = {int(i) for i, t in tok.get_added_tokens_decoder().items() if getattr(t, "special", False)}
    for name in REPLACEMENTS:
        rid = tok.token_to_id(name)
        if rid is not None:
            return int(rid), tuple(sorted(special | {int(rid)}))
    raise InputFileError(
        "the tokenizer has none of [MASK], [UNK], [PAD] (or <mask>, <unk>, <pad>): give replace_id="
    )


def _ids(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.integer):
        raise OptionError(f"token metrics need integer token ids (B, L), got {x.dtype} of shape {x.shape}")
    return x


def _relevance(a, x: np.ndarray) -> np.ndarray:
    """Per-token relevance ``(B, L)``: the attribution, summed over an embedding axis if it has one."""
    a = np.asarray(a, dtype=np.float64)
    if a.shape[:2] == x.shape and a.ndim == 3:
        a = a.sum(-1)
    if a.shape != x.shape:
        raise OptionError(f"token attributions of shape {a.shape} do not fit token ids of shape {x.shape}")
    return a


def _setup(predictor, x, replace_id, keep_ids, tokenizer, attention_mask, metric: str):
    """``(replace_id, real, eligible)``: the replacement id, the real-token mask and the eligible mask."""
    if tokenizer is not None:
        rid, special = special_token_ids(tokenizer)
        replace_id = rid if replace_id is None else replace_id
        keep_ids = special if keep_ids is None else keep_ids
    if replace_id is None:
        raise OptionError(
            f"{metric} needs replace_id= (the [MASK], [UNK] or [PAD] id) or tokenizer= (a tokenizer.json)"
        )
    real = _attention_mask(predictor, x, attention_mask)
    keep = np.asarray(list(keep_ids or ()) + [int(replace_id)], dtype=x.dtype)
    return int(replace_id), real, real & ~np.isin(x, keep)


def _attention_mask(predictor, x, attention_mask) -> np.ndarray:
    """Real tokens: the given mask, else the model's attention-mask input, else every position."""
    if attention_mask is None and predictor is not None:
        attention_mask = next((v for k, v in predictor.companions.items() if k in MASK_NAMES), None)
    if attention_mask is None:
        return np.ones(x.shape, bool)
    m = np.asarray(attention_mask)
    if m.shape != x.shape:
        raise OptionError(f"attention mask of shape {m.shape} does not fit token ids of shape {x.shape}")
    return m != 0


def token_positions(rel: np.ndarray, eligible: np.ndarray, order: str, rng) -> np.ndarray:
    """``(B, L)`` rank of every eligible position in the ``order`` ('morf': descending relevance, 'lerf':
    ascending, 'random'), ties to the lower position; ineligible positions get ``L`` (never reached)."""
    B, L = rel.shape
    if order == "morf":
        key = np.where(eligible, -rel, np.inf)
    elif order == "lerf":
        key = np.where(eligible, rel, np.inf)
    elif order == "random":
        rng = rng or np.random.default_rng(0)
        key = np.where(eligible, rng.random((B, L)), np.inf)
    else:
        raise OptionError(f"order must be 'morf', 'lerf' or 'random', not {order!r}")
    ordr = np.argsort(key, axis=1, kind="stable")
    pos = np.empty((B, L), np.int64)
    pos[np.arange(B)[:, None], ordr] = np.arange(L)[None]
    return np.where(eligible, pos, L)


def _counts(fractions, n_eligible: np.ndarray) -> np.ndarray:
    f = np.asarray(fractions, dtype=np.float64)
    if f.ndim != 1 or len(f) < 2 or (f < 0).any() or (f > 1).any() or (np.diff(f) <= 0).any():
        raise OptionError(f"fractions must increase within [0, 1] (at least two), got {list(f)}")
    return np.ceil(f[None] * n_eligible[:, None] - _EPS).astype(np.int64)  # (B, T)


def token_curve(
    predictor: Predictor,
    x: np.ndarray,
    target: np.ndarray,
    pos: np.ndarray,
    counts: np.ndarray,
    replace_id: int,
    mode: str,
) -> np.ndarray:
    """Scores ``(B, T)``: deletion replaces the positions of rank ``< counts[b, t]`` by ``replace_id``;
    insertion starts from every eligible position replaced and restores those."""
    B, L = x.shape
    T = counts.shape[1]
    eligible = pos < L

    def make_rows(a, b):
        r = np.arange(a, b)
        owner, step = r // T, r % T
        early = pos[owner] < counts[owner, step][:, None]  # the first counts[t] of the ranking
        replaced = early if mode == "deletion" else eligible[owner] & ~early
        return np.where(replaced, np.asarray(replace_id, x.dtype), x[owner])

    return predictor.target_scores(B * T, make_rows, np.repeat(target, T)).reshape(B, T)


def _curve_metric(predictor, x, a, target, rng, mode, fractions, replace_id, keep_ids, tokenizer,
                  attention_mask, order):  # fmt: skip
    x = _ids(x)
    rel = _relevance(a, x)
    replace_id, _, eligible = _setup(predictor, x, replace_id, keep_ids, tokenizer, attention_mask,
                                     f"token_{mode}")  # fmt: skip
    n = eligible.sum(1)
    counts = _counts(fractions, n)
    pos = token_positions(rel, eligible, order, rng)
    curve = token_curve(predictor, x, target, pos, counts, replace_id, mode)
    f = np.asarray(fractions, dtype=np.float64)
    auc = ((curve[:, 1:] + curve[:, :-1]) * np.diff(f)[None] / 2).sum(1)
    return {"curve": curve, "auc": auc, "fractions": f, "n_tokens": n, "n_replaced": counts,
            "replace_id": replace_id}  # fmt: skip


_DOC_OPTIONS = """
    Parameters
    ----------
    fractions : sequence of float
        Increasing fractions of the eligible tokens (default CP-LRP's 0, 0.1, ..., 1); ``ceil(f·N)``
        tokens each.
    replace_id : int, optional
        The id put in place of a removed token (default: the tokenizer's [MASK], else [UNK], else [PAD]).
    keep_ids : sequence of int, optional
        Ids never replaced (default: the tokenizer's special tokens; none without a tokenizer). The
        replacement id itself and padded positions are always kept.
    tokenizer : str, Path or tokenizers.Tokenizer, optional
        A ``tokenizer.json``: gives the defaults of ``replace_id`` and ``keep_ids``.
    attention_mask : array_like, optional
        ``(B, L)``; default: the model's attention-mask input (``attention_mask`` / ``input_mask``).
    order : {'morf', 'lerf', 'random'}
        Ranking by signed relevance, most relevant first (MoRF), least first, or random.

    Returns
    -------
    dict
        ``curve`` (B, T) of target scores, ``auc`` (trapezoid over ``fractions``), ``fractions``,
        ``n_tokens`` (eligible tokens per sample), ``n_replaced`` (B, T), ``replace_id``.
"""


@register_metric(
    "token_deletion",
    "score while the most relevant tokens are replaced by [MASK]/[UNK]/[PAD] (AUC; special tokens kept)",
    score="auc",
    higher_is_better=lambda o: o.get("order", "morf") == "lerf",
    output="prob",
    modalities=("tokens",),
    cost="len(fractions) forward",
)
def token_deletion(
    predictor: Predictor,
    x: np.ndarray,
    a: np.ndarray,
    target: np.ndarray,
    rng: np.random.Generator,
    fractions=FRACTIONS,
    replace_id: int | None = None,
    keep_ids=None,
    tokenizer=None,
    attention_mask=None,
    order: str = "morf",
):
    return _curve_metric(predictor, x, a, target, rng, "deletion", fractions, replace_id, keep_ids, tokenizer,
                         attention_mask, order)  # fmt: skip


@register_metric(
    "token_insertion",
    "score while the most relevant tokens are restored into an all-[MASK] text (AUC; special tokens kept)",
    score="auc",
    higher_is_better=lambda o: o.get("order", "morf") != "lerf",
    output="prob",
    modalities=("tokens",),
    cost="len(fractions) forward",
)
def token_insertion(
    predictor: Predictor,
    x: np.ndarray,
    a: np.ndarray,
    target: np.ndarray,
    rng: np.random.Generator,
    fractions=FRACTIONS,
    replace_id: int | None = None,
    keep_ids=None,
    tokenizer=None,
    attention_mask=None,
    order: str = "morf",
):
    return _curve_metric(predictor, x, a, target, rng, "insertion", fractions, replace_id, keep_ids, tokenizer,
                         attention_mask, order)  # fmt: skip


token_deletion.__doc__ = (
    """Token deletion (MoRF): start at the text, replace the ``ceil(f·N)`` most relevant eligible tokens
    by ``replace_id`` for each fraction f; lower AUC is better. Scores are probabilities by default
    (CP-LRP records the true-class probability).
"""
    + _DOC_OPTIONS
)
token_insertion.__doc__ = (
    """Token insertion: start with every eligible token replaced by ``replace_id`` (special tokens and
    padding as they are), restore the ``ceil(f·N)`` most relevant for each fraction f; higher AUC is
    better.
"""
    + _DOC_OPTIONS
)


@register_metric(
    "token_rank_consistency",
    "Kendall τ and cosine between the token attributions of a text and of the text with its most "
    "important tokens replaced (Park, at token level)",
    score="kendall_mean",
    higher_is_better=True,
    needs_explainer=True,
    needs_model=False,
    modalities=("tokens",),
    cost="len(ratios) × the explainer",
)
def token_rank_consistency(
    predictor: Predictor | None,
    x: np.ndarray,
    a: np.ndarray,
    target: np.ndarray,
    rng: np.random.Generator,
    explainer=None,
    ratios=TENTHS,
    replace_id: int | None = None,
    keep_ids=None,
    tokenizer=None,
    attention_mask=None,
    variant: str = "b",
    importance: str = "abs",
    seed: int = 0,
):
    """Masked-input rank consistency (docs/methods.md §3.4) with tokens for pixels: the ``floor(r·N)``
    most important eligible tokens (by ``|a|``, or signed ``a`` with ``importance='signed'``) are replaced
    by ``replace_id`` for each ratio r, the result is re-explained (one explainer call for all ratios,
    sample-major rows), and Kendall τ (``variant`` 'b' or 'c') and cosine are taken between the two
    attributions over the sample's real tokens (padding left out; special tokens in). NaN where an
    attribution is constant over them.

    Parameters
    ----------
    ratios : sequence of float
        Fractions of the eligible tokens replaced (default 0.1, ..., 1).
    replace_id, keep_ids, tokenizer, attention_mask
        As :func:`token_deletion`.

    Returns
    -------
    dict
        ``steps`` (the ratios), ``kendall`` and ``cosine`` (B, n), ``kendall_by_step``,
        ``cosine_by_step`` (means over samples), ``kendall_mean`` (per sample), ``n_replaced`` (B, n).
    """
    x = _ids(x)
    if importance not in ("abs", "signed"):
        raise OptionError(f"importance must be 'abs' or 'signed', not {importance!r}")
    replace_id, real, eligible = _setup(predictor, x, replace_id, keep_ids, tokenizer, attention_mask,
                                        "token_rank_consistency")  # fmt: skip
    a0 = _relevance(explainer(x, target, seed) if a is None else a, x)
    imp = np.abs(a0) if importance == "abs" else a0
    pos = token_positions(imp, eligible, "morf", rng)
    steps = [float(r) for r in ratios]
    k = np.floor(np.asarray(steps)[None] * eligible.sum(1)[:, None] + _EPS).astype(np.int64)  # (B, n)
    xs = np.stack(
        [np.where(pos < k[:, i : i + 1], np.asarray(replace_id, x.dtype), x) for i in range(len(steps))]
    )
    ahat = explain_stacked(explainer, xs, target, seed).reshape(len(steps), *x.shape)
    B = len(x)
    tau = np.array([[kendall_rows(a0[b, real[b]], ahat[i, b, real[b]], variant) for i in range(len(steps))]
                    for b in range(B)])  # fmt: skip
    cos = np.array(
        [[cosine_rows(a0[b, real[b]], ahat[i, b, real[b]]) for i in range(len(steps))] for b in range(B)]
    )

    def nanmean(v, axis):
        with np.errstate(all="ignore"):
            ok = np.isfinite(v)
            return np.where(ok.any(axis), np.where(ok, v, 0).sum(axis) / np.maximum(ok.sum(axis), 1), np.nan)

    return {
        "steps": np.asarray(steps),
        "kendall": tau,
        "cosine": cos,
        "kendall_by_step": nanmean(tau, 0),
        "cosine_by_step": nanmean(cos, 0),
        "kendall_mean": nanmean(tau, 1),
        "n_replaced": k,
    }
