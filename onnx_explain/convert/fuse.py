"""Speed rewrites of the converted fx graph, exact up to rounding, applied before the graph is certified
against onnxruntime (so the certificate covers them):

- ``MatMul(x, W)`` with a constant 2-D ``W`` [+ ``Add`` of a constant bias] → one ``nn.Linear`` whose weight
  is a view of ``W`` transposed (no copy): one fused product with the bias instead of a product and an add,
  forward and backward;
- the exact GELU as exporters write it, ``Mul(Mul(x, Add(Erf(Div(x, √2)), 1)), 0.5)`` (the factors in any
  order, or ``x·0.5`` first) → ``torch.nn.GELU``: one kernel forward and one backward instead of five
  elementwise ops and the erf's derivative.

A graph that quantizes activations is left as it is (its outputs sit on an integer grid, where one rounding
difference flips whole steps). The new modules keep the ONNX identity of the node they stand for (``onnx_node``: name, op type, domain), so
errors, LRP roles (a ``Linear`` is a layer; ``Gelu`` an activation) and rule overrides by op type still read
MatMul and Gelu.
"""

from __future__ import annotations

import math

import torch
from torch import fx, nn

from .driver import NODE_ATTR


def _op(gm: fx.GraphModule, node) -> str:
    if not isinstance(node, fx.Node) or node.op != "call_module":
        return ""
    return getattr(gm.get_submodule(node.target), NODE_ATTR, ("", "", ""))[1]


def _const(gm: fx.GraphModule, node) -> torch.Tensor | None:
    if isinstance(node, fx.Node) and node.op == "get_attr":
        obj = gm
        for part in node.target.split("."):
            obj = getattr(obj, part)
        return obj if isinstance(obj, torch.Tensor) else None
    return None


def _scalar(gm: fx.GraphModule, node, value: float) -> bool:
    c = _const(gm, node)
    return (
        c is not None
        and c.numel() == 1
        and c.is_floating_point()
        and math.isclose(float(c), value, rel_tol=1e-6)
    )


def _other(node: fx.Node, arg) -> object:
    a, b = node.args
    return b if a is arg else a


def fold_linear(gm: fx.GraphModule, prefix: str = "fused_linear") -> int:
    """``MatMul(x, W const 2-D)`` [+ ``Add(b const)``] → ``nn.Linear`` (weight ``Wᵀ`` as a view, no copy)."""
    folded = 0
    for node in list(gm.graph.nodes):
        if _op(gm, node) != "MatMul" or len(node.args) != 2 or node.kwargs:
            continue
        w = _const(gm, node.args[1])
        if w is None or w.dim() != 2 or not w.is_floating_point() or _const(gm, node.args[0]) is not None:
            continue
        lin = nn.Linear(w.shape[0], w.shape[1], bias=False, device=w.device, dtype=w.dtype)
        lin.weight = nn.Parameter(w.detach().T, requires_grad=False)
        last = node
        users = list(node.users)
        if len(users) == 1 and _op(gm, users[0]) == "Add" and len(users[0].args) == 2 and not users[0].kwargs:
            b = _const(gm, _other(users[0], node))
            if b is not None and b.dim() == 1 and b.numel() == w.shape[1] and b.dtype == w.dtype:
                lin.bias = nn.Parameter(b.detach().reshape(-1), requires_grad=False)
                last = users[0]
        setattr(lin, NODE_ATTR, getattr(gm.get_submodule(node.target), NODE_ATTR))
        name = f"{prefix}_{folded}"
        while hasattr(gm, name):
            name += "_"
        gm.add_module(name, lin)
        with gm.graph.inserting_after(last):
            new = gm.graph.call_module(name, (node.args[0],))
        last.replace_all_uses_with(new)
        if last is not node:
            gm.graph.erase_node(last)
        gm.graph.erase_node(node)
        folded += 1
    return folded


def fuse_gelu(gm: fx.GraphModule) -> int:
    """The exact GELU written as Div/Erf/Add/Mul/Mul → ``nn.GELU()`` (same value; one kernel each way)."""
    fused = 0
    for erf in list(gm.graph.nodes):
        if _op(gm, erf) != "Erf" or len(erf.users) != 1:
            continue
        div = erf.args[0]
        if _op(gm, div) == "Div" and len(div.args) == 2 and _scalar(gm, div.args[1], math.sqrt(2)):
            x = div.args[0]
        elif _op(gm, div) == "Mul" and len(div.args) == 2 and _scalar(gm, div.args[1], 1 / math.sqrt(2)):
            x = div.args[0]
        elif _op(gm, div) == "Mul" and len(div.args) == 2 and _scalar(gm, div.args[0], 1 / math.sqrt(2)):
            x = div.args[1]
        else:
            continue
        if len(div.users) != 1:
            continue
        add = next(iter(erf.users))
        if (
            _op(gm, add) != "Add"
            or len(add.args) != 2
            or not _scalar(gm, _other(add, erf), 1.0)
            or len(add.users) != 1
        ):
            continue
        # x · (1 + erf) · 0.5, in either grouping: Mul(Mul(x, add), 0.5) or Mul(Mul(x, 0.5), add)
        mul = next(iter(add.users))
        if _op(gm, mul) != "Mul" or len(mul.args) != 2:
            continue
        first = _other(mul, add)
        if first is x and len(mul.users) == 1:
            last = next(iter(mul.users))
            if _op(gm, last) != "Mul" or len(last.args) != 2 or not _scalar(gm, _other(last, mul), 0.5):
                continue
            dead = [last, mul, add, erf, div]
        elif _op(gm, first) == "Mul" and len(first.args) == 2 and len(first.users) == 1 and x in first.args:
            if not _scalar(gm, _other(first, x), 0.5):
                continue
            last = mul
            dead = [mul, first, add, erf, div]
        else:
            continue
        gelu = nn.GELU()
        name_, _, domain = getattr(gm.get_submodule(erf.target), NODE_ATTR, ("", "", ""))
        setattr(gelu, NODE_ATTR, (name_, "Gelu", domain))
        name = f"fused_gelu_{fused}"
        while hasattr(gm, name):
            name += "_"
        gm.add_module(name, gelu)
        with gm.graph.inserting_after(last):
            new = gm.graph.call_module(name, (x,))
        last.replace_all_uses_with(new)
        for n in dead:
            gm.graph.erase_node(n)
        fused += 1
    return fused


def _quantized(gm: fx.GraphModule) -> bool:
    """Whether the graph quantizes activations: its outputs then sit on an integer grid, where a rounding
    difference from a fused product flips whole steps, so the graph is left exactly as onnxruntime runs it."""
    for node in gm.graph.nodes:
        op = _op(gm, node)
        if "Quantize" in op or "Integer" in op or op.startswith(("QLinear", "QAttention", "QEmbed", "QGemm")):
            return True
    return False


def fuse(gm: fx.GraphModule) -> dict:
    """Every rewrite above (none in a quantized graph); the counts of each. The graph is recompiled."""
    if _quantized(gm):
        return {"linear": 0, "gelu": 0}
    report = {"linear": fold_linear(gm), "gelu": fuse_gelu(gm)}
    if any(report.values()):
        gm.graph.eliminate_dead_code()
        gm.delete_all_unused_submodules()
        gm.recompile()
    return report
