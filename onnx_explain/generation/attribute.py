"""Attributing generated tokens: one teacher-forced forward over the whole sequence, a batched backward per
block of targets (docs/methods.md §2.11).

Position p's logits depend only on the tokens at positions <= p (the causal mask), so one forward of the
whole sequence (prompt + continuation) serves every generated token, and the vector-Jacobian products of a
block of targets run as one batched backward (``is_grads_batched``; one backward per target where a graph's
backward cannot be batched). Rows (SmoothGrad's noisy copies, Integrated Gradients' path points) are
shared by every target. Attribution is taken at the embedding (the graph cut at its lookup,
:mod:`onnx_explain.methods.embedding`) and summed (or its L2 norm taken, for sensitivities) per token.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import OptionError

OUTPUTS = ("logit", "log_prob", "prob")


@dataclass
class Targets:
    """The explained scalars: target j is ``Σ_n sign_n · f(z[pos_n])[tok_n]`` over its terms n, with f the
    output space (logit, log-probability, probability)."""

    pos: torch.Tensor  # (N,) the logit position of each term
    tok: torch.Tensor  # (N,) the token id
    weight: torch.Tensor  # (N, P) sign of term n in target j
    labels: list[str] = field(default_factory=list)
    output: str = "logit"
    last: list[int] = field(default_factory=list)  # per target: the last position it reads

    @property
    def count(self) -> int:
        return self.weight.shape[1]

    def scores(self, out: torch.Tensor) -> torch.Tensor:
        """``(R, P)`` from logits ``(R, L, V)``."""
        z = out[:, self.pos, :]  # (R, N, V)
        if self.output == "logit":
            v = z.gather(2, self.tok.view(1, -1, 1).expand(len(z), -1, 1)).squeeze(2)
        else:
            lp = torch.log_softmax(z, -1)
            v = lp.gather(2, self.tok.view(1, -1, 1).expand(len(z), -1, 1)).squeeze(2)
            if self.output == "prob":
                v = v.exp()
        return v @ self.weight.to(v.dtype)


def make_targets(
    tokens: np.ndarray, start: int, output: str = "logit", kind: str = "tokens", contrast: np.ndarray | None = None,
    span: tuple[int, int] | None = None, labels: list[str] | None = None,
) -> Targets:  # fmt: skip
    """Targets over the continuation ``tokens[start:]`` of a teacher-forced sequence.

    ``kind='tokens'``: one target per continuation token (the token at q is read from the logits at q - 1);
    ``'span'``: one target, the sum of the log-probabilities of the continuation tokens in ``span``
    (indices into the continuation, default all). ``contrast``: per continuation token an alternative
    token b, the target becoming ``f(a) - f(b)`` (a contrastive explanation).
    """
    if output not in OUTPUTS:
        raise OptionError(f"output must be one of {OUTPUTS}, not {output!r}")
    n = len(tokens) - start
    if n < 1:
        raise OptionError("nothing to explain: the continuation is empty")
    labels = labels or [str(int(t)) for t in tokens[start:]]
    q = np.arange(start, len(tokens))
    if kind == "span":
        a, b = span if span is not None else (0, n)
        if not 0 <= a < b <= n:
            raise OptionError(f"span [{a}, {b}) is not inside the continuation's {n} tokens")
        q = q[a:b]
        pos = torch.as_tensor(q - 1)
        tok = torch.as_tensor(tokens[q])
        w = torch.ones(len(q), 1, dtype=torch.float64)
        label = "".join(labels[a:b])
        return Targets(pos, tok, w, [label], "log_prob", [int(q[-1] - 1)])
    if kind != "tokens":
        raise OptionError(f"target kind must be 'tokens' or 'span', not {kind!r}")
    pos = torch.as_tensor(q - 1)
    tok = torch.as_tensor(tokens[q])
    w = torch.eye(n, dtype=torch.float64)
    if contrast is not None:
        contrast = np.asarray(contrast)
        m = min(n, len(contrast))
        if m < 1:
            raise OptionError("the contrast continuation is empty")
        pos = torch.cat([pos[:m], pos[:m]])
        tok = torch.cat([tok[:m], torch.as_tensor(contrast[:m])])
        w = torch.cat([torch.eye(m), -torch.eye(m)]).to(torch.float64)
        labels = [f"{labels[i]} vs {int(contrast[i])}" for i in range(m)]
        q = q[:m]
    return Targets(pos, tok, w, list(labels[: w.shape[1]]), output, [int(p - 1) for p in q])


def _vjp_batched(out: torch.Tensor, inputs: list[torch.Tensor], seeds: torch.Tensor, state: dict) -> list:
    """``[∂<out, seed_j>/∂input]_j`` for a block of seeds ``(J, *out.shape)``: one batched backward, or one
    backward per seed where the graph's backward cannot be batched (remembered in ``state``)."""
    if state.get("batched", True) and len(seeds) > 1:
        try:
            grads = torch.autograd.grad(
                out, inputs, seeds, retain_graph=True, is_grads_batched=True, allow_unused=True
            )
            return [torch.zeros(len(seeds), *x.shape, dtype=x.dtype) if g is None else g
                    for g, x in zip(grads, inputs, strict=True)]  # fmt: skip
        except (RuntimeError, NotImplementedError):
            state["batched"] = False
    per = [
        torch.autograd.grad(out, inputs, s, retain_graph=True, allow_unused=True) for s in seeds
    ]  # one backward per seed
    return [
        torch.stack([torch.zeros_like(x) if g[i] is None else g[i] for g in per])
        for i, x in enumerate(inputs)
    ]


def target_seeds(out: torch.Tensor, targets: Targets, cols: slice, relevance: bool) -> torch.Tensor:
    """``(J, *out.shape)``: ``∂t_j/∂out`` for the targets in ``cols`` (times ``out`` for LRP's relevance
    seed, which sums to t_j for a logit)."""
    probe = out.detach().requires_grad_(True)
    with torch.enable_grad():
        s = targets.scores(probe)[:, cols]  # (R, J)
        J = s.shape[1]
        eye = torch.eye(J, dtype=s.dtype).unsqueeze(1).expand(J, s.shape[0], J)
        (w,) = torch.autograd.grad(s, probe, eye, is_grads_batched=True)
    w = w.to(out.dtype)
    return w * out.detach() if relevance else w


@dataclass
class Pass:
    """What a method runs: rows built from the explained inputs, each row's gradients consumed."""

    rows: Callable  # (a, b) -> list of row tensors (one per explained input), rows a..b-1
    n_rows: int
    consume: Callable  # (a, b, rows, grads: list of (J, R, ...), cols) -> None


def run_passes(forward: Callable, targets: Targets, p: Pass, batch_size: int, relevance: bool = False):
    """Forward ``p``'s rows in chunks, and for each chunk the batched backward of every block of targets.

    ``batch_size`` counts (target, row) pairs per backward: rows per forward = min(n_rows, batch_size),
    targets per backward block = batch_size // rows (at least 1).
    """
    state: dict = {}
    R = max(1, min(p.n_rows, batch_size))
    J = max(1, batch_size // R)
    P = targets.count
    kept = None
    for a in range(0, p.n_rows, R):
        b = min(p.n_rows, a + R)
        rows = [r.detach().requires_grad_(True) for r in p.rows(a, b)]
        with torch.enable_grad():
            out = forward(rows)
            kept = out.detach()
            for c in range(0, P, J):
                cols = slice(c, min(P, c + J))
                seeds = target_seeds(out, targets, cols, relevance)
                grads = _vjp_batched(out, rows, seeds, state)
                p.consume(a, b, [r.detach() for r in rows], [g.detach() for g in grads], cols)
        del out
    extras = {"batched_backward": state.get("batched", True)}
    if p.n_rows == 1:  # the rows are the input itself: its output serves the scores too (no second forward)
        extras["_out"] = kept
    return extras
