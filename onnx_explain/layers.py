"""Layers of an ONNX graph: the spatial feature maps a CAM or a layer attribution can read.

A layer is named by its ONNX tensor or by the node that computes it. Candidates are the float tensors of
rank 4 ``(batch, channels, height, width)`` with a spatial size above 1 that shape inference knows; the
default for CAMs is the map a global pooling reads last (the last feature map before the classifier),
else the last candidate.
"""

from __future__ import annotations

import onnx

from .errors import OptionError

__all__ = ["default_layer", "head_graph", "layer_candidates", "node_of", "resolve_layer", "token_layers"]

_POOLS = {"GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceMax", "AveragePool", "Flatten"}


def _shapes(proto: onnx.ModelProto) -> dict:
    out = {}
    for v in [*proto.graph.value_info, *proto.graph.output, *proto.graph.input]:
        t = v.type.tensor_type
        if not t.HasField("shape"):
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        out[v.name] = (t.elem_type, dims)
    return out


def layer_candidates(proto: onnx.ModelProto) -> list[dict]:
    """Every rank-4 float feature map with a spatial size above 1, in graph order: ``{'tensor', 'node',
    'op', 'shape'}``."""
    shapes = _shapes(proto)
    out = []
    for n in proto.graph.node:
        for o in n.output:
            elem, dims = shapes.get(o, (None, None))
            if dims is None or len(dims) != 4 or elem not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE,
                                                               onnx.TensorProto.FLOAT16):  # fmt: skip
                continue
            h, w = dims[2], dims[3]
            if (h is None or h > 1) and (w is None or w > 1):
                out.append({"tensor": o, "node": n.name, "op": n.op_type, "shape": dims})
    return out


def default_layer(proto: onnx.ModelProto) -> dict:
    """The last feature map a pooling before the classifier reads (else the last candidate)."""
    cands = layer_candidates(proto)
    if not cands:
        raise OptionError("the graph has no spatial feature map (rank-4 tensor with height and width > 1)")
    by_tensor = {c["tensor"]: c for c in cands}
    pooled = [i for n in proto.graph.node if n.op_type in _POOLS for i in n.input[:1] if i in by_tensor]
    return by_tensor[pooled[-1]] if pooled else cands[-1]


def token_grid(shape) -> tuple[int, int] | None:
    """``(extra, side)`` of a vision transformer's token tensor ``(B, T, D)``: ``T = extra + side²`` with
    ``side ≥ 2`` the patch grid's side and ``extra ≤ 8`` leading class/register tokens; None otherwise."""
    if shape is None or len(shape) != 3 or not isinstance(shape[1], int):
        return None
    for extra in range(0, 9):
        side = int(round((shape[1] - extra) ** 0.5)) if shape[1] > extra else 0
        if side >= 2 and side * side == shape[1] - extra:
            return extra, side
    return None


def token_layers(proto: onnx.ModelProto) -> list[dict]:
    """Every rank-3 float tensor that is a square token grid ``(B, extra + side², D)``, in graph order:
    ``{'tensor', 'node', 'op', 'shape', 'tokens': (extra, side)}`` (a vision transformer's blocks)."""
    shapes = _shapes(proto)
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16)
    out = []
    for n in proto.graph.node:
        for o in n.output:
            elem, dims = shapes.get(o, (None, None))
            grid = token_grid(dims)
            if grid and elem in floats:
                out.append({"tensor": o, "node": n.name, "op": n.op_type, "shape": dims, "tokens": grid})
    return out


def _token_layer(proto: onnx.ModelProto, layer: str) -> dict | None:
    """A named rank-3 float tensor: a square token grid (class/register tokens first; ``tokens``:
    ``(extra, side)``), or any other token tensor (``tokens`` None: its grid must be given, a CAM's
    ``reshape=``)."""
    found = next((c for c in token_layers(proto) if layer in (c["tensor"], c["node"])), None)
    if found is not None:
        return found
    shapes = _shapes(proto)
    for n in proto.graph.node:
        if layer == n.name and len(n.output) == 1 or layer in n.output:
            o = layer if layer in n.output else n.output[0]
            dims = shapes.get(o, (None, None))[1]
            if dims is not None and len(dims) == 3:
                return {"tensor": o, "node": n.name, "op": n.op_type, "shape": dims, "tokens": None}
    return None


def resolve_layer(proto: onnx.ModelProto, layer: str | None) -> dict:
    """The candidate named ``layer`` (a tensor or node name; None: :func:`default_layer`); a vision
    transformer's token tensor ``(B, 1 + side², D)`` named explicitly is a candidate too (``tokens``:
    ``(extra, side)``, its leading class/register tokens and grid side)."""
    if layer is None:
        return default_layer(proto)
    cands = layer_candidates(proto)
    for c in cands:
        if layer in (c["tensor"], c["node"]):
            return c
    tokens = _token_layer(proto, layer)
    if tokens is not None:
        return tokens
    names = ", ".join(c["tensor"] for c in cands[-5:])
    raise OptionError(
        f"layer {layer!r} is not a spatial feature map of the graph (a rank-4 tensor or its node); the last "
        f"ones: {names or 'none'} (onnx-explain info --layers lists them)"
    )


# ------------------------------------------------------------------------------------ the head of a layer
def _subgraph_names(node: onnx.NodeProto) -> set:
    """Every tensor name the node's subgraphs (If/Loop/Scan bodies) read: outer-scope values among them."""
    names: set = set()
    for attr in node.attribute:
        graphs = list(attr.graphs) + ([attr.g] if attr.HasField("g") else [])
        for g in graphs:
            for n in g.node:
                names.update(n.input)
                names.update(_subgraph_names(n))
    return names


def head_graph(proto: onnx.ModelProto, tensor: str, outputs: list[str]) -> onnx.ModelProto:
    """The part of the graph from ``tensor`` to ``outputs``, ``tensor`` made a graph input: the nodes the
    outputs need that do not come before it. Inputs of the model the head still reads (a path that goes
    around ``tensor``) stay inputs; initializers it does not read are dropped.

    Raises
    ------
    OptionError
        ``tensor`` is not computed by a node, or the head needs another output of the node computing it.
    """
    g = proto.graph
    producers = {o: n for n in g.node for o in n.output if o}
    cut = producers.get(tensor)
    if cut is None:
        raise OptionError(f"layer {tensor!r} is not computed by a node of the graph (an input or a weight)")
    keep, seen, todo = set(), set(), list(outputs)
    while todo:
        name = todo.pop()
        if not name or name == tensor or name in seen:
            continue
        seen.add(name)
        node = producers.get(name)
        if node is None:
            continue
        if node is cut:
            raise OptionError(
                f"the graph after layer {tensor!r} reads {name!r}, another output of the node "
                f"{cut.name!r} ({cut.op_type}) that computes it: name a layer that node computes alone"
            )
        if id(node) not in keep:
            keep.add(id(node))
            todo.extend(node.input)
            todo.extend(_subgraph_names(node))
    elem = _shapes(proto).get(tensor, (onnx.TensorProto.FLOAT, None))[0]
    known = {v.name: v for v in [*g.output, *g.value_info]}
    graph = onnx.helper.make_graph(  # only what the head reads is copied (not the stem's weights)
        [n for n in g.node if id(n) in keep],
        g.name,
        [onnx.helper.make_tensor_value_info(tensor, elem, None), *(i for i in g.input if i.name in seen)],
        [known[n] if n in known else onnx.helper.make_tensor_value_info(n, elem, None) for n in outputs],
        initializer=[i for i in g.initializer if i.name in seen],
        value_info=[v for v in g.value_info if v.name in seen],
    )
    head = onnx.helper.make_model(graph, opset_imports=list(proto.opset_import), ir_version=proto.ir_version)
    head.functions.extend(proto.functions)
    head.producer_name = proto.producer_name
    return head


def node_of(module, name: str) -> str:
    """The ONNX node computing ``name`` (a node name, or a tensor name) in a converted module or its LRP
    graph: the node itself when a converted module carries that node name, else the tensor's producer."""
    from .convert.driver import NODE_ATTR

    graph = getattr(module, "graph", module)
    if any(getattr(m, NODE_ATTR, ("",))[0] == name for m in graph.modules()):
        return name
    producers = getattr(module, "onnx_producers", None) or getattr(graph, "onnx_producers", {})
    if name in producers:
        return producers[name]
    raise OptionError(f"layer {name!r} is neither a node of the converted graph nor a tensor one computes")
