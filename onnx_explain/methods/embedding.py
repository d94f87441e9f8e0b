"""Integer inputs (token or byte ids): attribute at the first float tensor computed from them.

The converted fx graph is cut at that tensor (an embedding Gather or a one-hot): the explained function
becomes ``g(ids, e)`` with ``e`` the float tensor, differentiable in ``e`` while the ids stay fixed.
"""

from __future__ import annotations

import copy

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from ..derived import derived
from ..errors import InputSpecError


def _shared_copy(gm: fx.GraphModule) -> fx.GraphModule:
    """A GraphModule over a copy of ``gm``'s graph (nodes and their meta), sharing its modules, parameters
    and constants: rewiring or annotating the copy leaves ``gm`` as it is, and costs no weight copy."""
    return fx.GraphModule(gm, copy.deepcopy(gm.graph))


def find_float_frontier(graph: fx.GraphModule, position: int, x: torch.Tensor, args: list) -> fx.Node:
    """The first node (in graph order) computed from the integer input whose output is a float tensor
    of shape ``(B, T, ...)`` starting with the input's own shape."""
    gm = _shared_copy(graph)
    ShapeProp(gm).propagate(*args)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    depends = {placeholders[position].name}
    first_float = None
    for node in gm.graph.nodes:
        if node.op == "placeholder" or not any(a.name in depends for a in node.all_input_nodes):
            continue
        depends.add(node.name)
        meta = node.meta.get("tensor_meta")
        if meta is None or not hasattr(meta, "dtype"):
            continue
        if meta.dtype.is_floating_point and tuple(meta.shape[: x.dim()]) == tuple(x.shape):
            return _dequantized(gm, node).name
        if meta.dtype.is_floating_point and first_float is None:
            first_float = (node, tuple(meta.shape))
    if first_float is None:
        raise InputSpecError(
            f"no float tensor is computed from the integer input (shape {tuple(x.shape)}): nothing to "
            "attribute to; explain a float input instead (--input-name / input=)"
        )
    node, shape = first_float
    raise InputSpecError(
        f"the integer input (shape {tuple(x.shape)}) reaches floats first at {_where(gm, node)}, of shape "
        f"{shape}: not one vector per id (the graph selects or mixes the ids before that), so there is "
        "nothing to attribute per id; explain a float input instead (--input-name / input=)"
    )


def _where(gm: fx.GraphModule, node: fx.Node) -> str:
    """``node 'NAME' (OpType)`` of the ONNX node a converted fx node came from (or the fx node)."""
    from ..convert.nodes import NODE_ATTR

    module = gm.get_submodule(node.target) if node.op == "call_module" else None
    name, op, _ = getattr(module, NODE_ATTR, ("", "", ""))
    return f"node {name!r} ({op})" if name else f"the graph's {node.name!r}"


def _dequantized(gm: fx.GraphModule, node: fx.Node) -> fx.Node:
    """A lookup in a quantized table (``quantize_dynamic``'s ``Gather(q_table, ids) -> DequantizeLinear``)
    gives the table's integers in a float carrier: attribute at the DequantizeLinear after it, whose output
    is the embedding in its real units, so that gradient x input multiplies by ``(q - zp) * s``, not ``q``."""
    from ..convert.ops.quant import OnnxCarrierGather, OnnxDequantizeLinear

    def module(n: fx.Node):
        return gm.get_submodule(n.target) if n.op == "call_module" else None

    if not isinstance(module(node), OnnxCarrierGather):
        return node
    users = list(node.users)
    if len(users) == 1 and isinstance(module(users[0]), OnnxDequantizeLinear):
        return users[0]
    return node


class _CutGraph(nn.Module):
    """``g(ids, e)``: the graph with the frontier node's output replaced by ``e``."""

    def __init__(self, graph: fx.GraphModule, frontier: str):
        super().__init__()
        gm = _shared_copy(graph)  # the weights stay the converted model's (LRP copies the cut graph)
        g = gm.graph
        node = next(n for n in g.nodes if n.name == frontier)
        last_placeholder = [n for n in g.nodes if n.op == "placeholder"][-1]
        with g.inserting_after(last_placeholder):
            emb = g.placeholder("onnx_explain_embedding")
        node.replace_all_uses_with(emb)
        g.erase_node(node)
        g.eliminate_dead_code()
        gm.recompile()
        self.graph = gm

    def forward(self, *args):
        return self.graph(*args)


class EmbeddingModel(nn.Module):
    """``f(e)`` with the ids travelling as a companion input: ``forward(e, companions)`` runs the cut
    graph on rows of ``e`` with each row's own ids (``companions[ids_key]``) and other inputs.

    It offers what LRP needs of a converted model (:attr:`graph`, :attr:`position`, :meth:`graph_args`),
    so the LRP graph is built on the cut graph with the embedding as the explained input."""

    ids_key = "onnx_explain_ids"

    def __init__(self, cut: _CutGraph, wrapper, frontier: str = ""):
        super().__init__()
        self.cut = cut
        self.wrapper = wrapper
        self.frontier = frontier

    @property
    def graph(self) -> fx.GraphModule:
        """The cut graph: the original inputs, then the embedding (the last placeholder)."""
        return self.cut.graph

    @property
    def position(self) -> int:
        """Position of the embedding among the cut graph's inputs (the last one)."""
        return sum(n.op == "placeholder" for n in self.cut.graph.graph.nodes) - 1

    def graph_args(self, e: torch.Tensor, rows: int | None = None, companions: dict | None = None) -> list:
        """The cut graph's positional arguments for rows ``e`` (their ids among ``companions``)."""
        companions = dict(companions or {})
        ids = companions.pop(self.ids_key)
        return [*self.wrapper.graph_args(ids, rows=rows, companions=companions), e]

    def forward(self, e: torch.Tensor, companions: dict) -> torch.Tensor:
        from ..convert.wrapper import batch_first_output, in_chunks

        def run(rows, comp):
            return batch_first_output(
                self.cut(*self.graph_args(rows, companions=comp)), self.wrapper.out_axis
            )

        return in_chunks(run, e, companions, self.wrapper.fixed_batch)

    def __deepcopy__(self, memo):
        """A copy of the cut graph (LRP rewrites it) with the converted model's inputs shared: only its
        :meth:`graph_args` is used, so its graph is not copied, and the copy holds no reference to the
        converted model itself (LRP graphs are cached per converted model, weakly)."""
        inputs = copy.copy(self.wrapper)
        object.__setattr__(
            inputs, "_modules", {}
        )  # graph_args reads the fixed inputs (buffers), not the graph
        return EmbeddingModel(copy.deepcopy(self.cut, memo), inputs, self.frontier)


def embedding_model(wrapper, ids: torch.Tensor, companions: dict | None = None):
    """For a ConvertedModel with an integer input: ``(module, e, frontier)`` where ``e`` is the float
    tensor the ids become for every sample (one pass), ``module`` the :class:`EmbeddingModel` computing
    the output from it and ``frontier`` the name of the cut node.

    The cut is made once per converted model (and ids rank): the graphs share the model's weights, so a
    weight changed in place (a randomisation test) is seen by every later call."""
    companions = companions or {}
    # on the converted model: (position, ids rank, dtype) -> (frontier, cut graph, graph up to the frontier)
    key = ("embedding_cut", wrapper.position, ids.dim(), str(ids.dtype))
    per_model = derived(wrapper)
    if key not in per_model:
        first = {k: v[:1] for k, v in companions.items()}
        args = wrapper.graph_args(ids[:1], companions=first)
        frontier = find_float_frontier(wrapper.graph, wrapper.position, ids[:1], args)
        cut = _CutGraph(wrapper.graph, frontier)
        probe = _shared_copy(wrapper.graph)  # the original graph up to the frontier: e itself
        node = next(n for n in probe.graph.nodes if n.name == frontier)
        out = next(n for n in probe.graph.nodes if n.op == "output")
        out.args = (node,)
        probe.graph.eliminate_dead_code()
        probe.recompile()
        per_model[key] = (frontier, cut, probe)
    frontier, cut, probe = per_model[key]
    with torch.no_grad():
        e = probe(*wrapper.graph_args(ids, companions=companions))
    return EmbeddingModel(cut, wrapper, frontier), e, frontier
