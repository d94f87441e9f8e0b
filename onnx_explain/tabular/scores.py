"""The explained output checked against the estimator's own scores: it must be what the tree ensemble or
linear model computes, maybe renamed, cast or normalised per row after it (read by
:func:`~onnx_explain.tabular.table.explain_table` and the exact methods of :mod:`onnx_explain.methods.tabular`).
"""

from __future__ import annotations

import numpy as np

from ..errors import OnnxExplainError
from .trees import attr_text, node_attrs

__all__ = ["check_same_scores"]


def _after(proto, node, name: str) -> list | None:
    """The ops between ``node``'s scores and the tensor ``name``, when they are renames, casts and row
    normalizers only (None otherwise)."""
    if proto is None:
        return []
    producer = {o: n for n in proto.graph.node for o in n.output}
    ops = []
    while name not in node.output:
        n = producer.get(name)
        if n is None or n.op_type not in ("Identity", "Cast", "Normalizer"):
            return None
        ops.insert(0, n)
        name = n.input[0]
    return ops


def _normalize(m: np.ndarray, norm: str) -> np.ndarray:
    if norm == "MAX":
        d = m.max(axis=1, keepdims=True)
    elif norm == "L1":
        d = np.abs(m).sum(axis=1, keepdims=True)
    else:
        d = np.sqrt((m * m).sum(axis=1, keepdims=True))
    return np.where(d == 0, m, m / np.where(d == 0, 1.0, d))


def check_same_scores(out: np.ndarray, ours: np.ndarray, name: str, node, proto=None) -> str | None:
    """The explained output ``out`` must be the estimator node's scores ``ours``, maybe renamed, cast or
    normalised per row by ``Normalizer`` nodes (skl2onnx's one-vs-rest logistic regression), which are
    then applied to ``ours`` as onnxruntime applies them: a graph that changes the scores otherwise cannot
    pass. Returns a note naming the normalisers, if any."""
    after = _after(proto, node, name)
    note = None
    if after:
        norms = [n for n in after if n.op_type == "Normalizer"]
        for n in norms:
            ours = _normalize(ours, attr_text(node_attrs(n).get("norm", b"MAX")))
        if norms:
            note = "the output is then normalised per row by " + ", ".join(
                f"{n.name or 'Normalizer'!r} ({attr_text(node_attrs(n).get('norm', b'MAX'))})" for n in norms
            )
    if out.shape != ours.shape:
        raise OnnxExplainError(
            f"the explained output {name!r} has {out.shape[1]} value(s) per row; node {node.name!r} "
            f"({node.op_type}) computes {ours.shape[1]}: explain its scores output"
        )
    err = np.abs(out - ours).max() if len(out) else 0.0
    if not err <= 1e-4 * max(1.0, float(np.abs(ours).max(initial=0.0))):
        raise OnnxExplainError(
            f"the explained output {name!r} differs from the scores of node {node.name!r} "
            f"({node.op_type}) by {err:.3g} on these rows: it is not that node's output"
        )
    return note
