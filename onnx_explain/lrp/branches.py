"""LRP through ONNX ``If``: the branch each ``If`` takes for a batch, inlined into the graph.

A converted ``If`` (:class:`onnx_explain.convert.ops.control.OnnxIf`) picks its branch on every call, so
LRP's planner sees one opaque node. Exporters write such ``If`` nodes for conditions on shapes (a traced
``if x.shape[0] == 1: x = x.squeeze(0)``) or on a sample rate: for a batch, each one takes one branch.
:func:`branch_decisions` runs the converted model once on the batch and records which branch every ``If``
took (nested ones included, by module path); :func:`inline_branches` then replaces each of those ``If``
calls in the LRP copy of the graph by the nodes of its taken branch, so every node of the branch gets
its rule like any other node. The LRP graph is built per set of decisions: a batch whose ``If`` nodes
decide otherwise (a last chunk of one row under ``batch == 1``) gets its own graph.
"""

from __future__ import annotations

import operator

import torch
from torch import fx, nn

from ..convert.ops.control import OnnxIf

__all__ = ["branch_decisions", "has_if", "inline_branches"]


def has_if(module: nn.Module) -> bool:
    """Whether a converted model runs any ``If`` per call."""
    return any(isinstance(m, OnnxIf) for m in module.modules())


def branch_decisions(converted, x: torch.Tensor, companions: dict | None = None) -> tuple:
    """``((path, took_then), ...)``, sorted: the branch each ``If`` of ``converted.graph`` took on ``x``
    (its path relative to the graph module; an ``If`` inside an untaken branch does not appear)."""
    paths = {id(m): p for p, m in converted.graph.named_modules() if isinstance(m, OnnxIf)}
    taken: dict[str, bool] = {}
    original = OnnxIf.flag

    def flag(self, value, what):
        decided = original(self, value, what)
        if what == "condition" and id(self) in paths:
            taken[paths[id(self)]] = decided
        return decided

    OnnxIf.flag = flag
    try:
        with torch.no_grad():
            converted(x, companions) if companions else converted(x)
    finally:
        OnnxIf.flag = original
    return tuple(sorted(taken.items()))


def inline_branches(gm: fx.GraphModule, decisions) -> int:
    """Replace every call of an ``If`` module of ``gm`` that ``decisions`` covers by the nodes of the
    branch it took (repeatedly: nested ``If`` nodes surface as their parent is inlined); returns how many.
    The branch's submodules stay where they are (under the ``If`` module) and its nodes call them there."""
    decided = dict(decisions)
    count = 0
    while True:
        node = next(
            (n for n in gm.graph.nodes if n.op == "call_module" and n.target in decided
             and isinstance(gm.get_submodule(n.target), OnnxIf)),
            None,
        )  # fmt: skip
        if node is None:
            break
        _inline(gm, node, decided.pop(node.target))
        count += 1
    if count:
        gm.graph.eliminate_dead_code()
        gm.recompile()
    return count


def _inline(gm: fx.GraphModule, node: fx.Node, took_then: bool) -> None:
    module: OnnxIf = gm.get_submodule(node.target)
    name = "then_branch" if took_then else "else_branch"
    branch: fx.GraphModule = getattr(module, name)
    positions = module.then_outer if took_then else module.else_outer
    outer = node.args[1:]
    prefix = f"{node.target}.{name}."
    holders = [n for n in branch.graph.nodes if n.op == "placeholder"]
    val_map = {p: outer[k] for p, k in zip(holders, positions, strict=True)}
    before = set(gm.graph.nodes)
    with gm.graph.inserting_before(node):
        out = gm.graph.graph_copy(branch.graph, val_map)
    for new in gm.graph.nodes:
        if new not in before and new.op in ("call_module", "get_attr"):
            new.target = prefix + new.target  # the branch's submodules and constants, where they live
    results = out if isinstance(out, (tuple, list)) else (out,)
    for user in list(node.users):
        if user.op == "call_function" and user.target is operator.getitem:
            user.replace_all_uses_with(results[user.args[1]])
            gm.graph.erase_node(user)
        else:  # a whole-tuple use: the tuple of the branch's results
            with gm.graph.inserting_before(user):
                packed = gm.graph.call_function(tuple, (list(results),))
            user.replace_input_with(node, packed)
    gm.graph.erase_node(node)
