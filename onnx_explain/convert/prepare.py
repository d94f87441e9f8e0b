"""Rewrites of the ONNX graph before onnx2torch sees it. Each pass edits the ModelProto in place.

- Weights reached through ``Identity`` (the legacy exporter's de-duplication of equal tensors) or
  produced by ``Constant`` nodes (PaddlePaddle) become initializers: onnx2torch's converters
  expect Conv/Gemm weights to *be* initializers and raised ``KeyError``.
- Outputs that are not tensors (ZipMap's sequence of maps) are replaced by the tensor they wrap;
  outputs that are not wanted are dropped with the nodes only they need.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

MAX_IR_VERSION = 10  # onnxruntime 1.31 rejects the IR 14 that onnx 1.23 writes by default


def cap_ir_version(model: onnx.ModelProto) -> None:
    """Keep ``ir_version`` at most :data:`MAX_IR_VERSION` on a model we build or rewrite."""
    if model.ir_version > MAX_IR_VERSION:
        model.ir_version = MAX_IR_VERSION


def _constant_to_tensor(node: onnx.NodeProto) -> TensorProto | None:
    """The tensor a Constant node produces, or None for sparse or unknown attributes."""
    if len(node.attribute) != 1:
        return None
    attr = node.attribute[0]
    name = node.output[0]
    if attr.name == "value":
        t = TensorProto()
        t.CopyFrom(attr.t)
        t.name = name
        return t
    makers = {
        "value_float": lambda a: helper.make_tensor(name, TensorProto.FLOAT, [], [a.f]),
        "value_floats": lambda a: helper.make_tensor(
            name, TensorProto.FLOAT, [len(a.floats)], list(a.floats)
        ),
        "value_int": lambda a: helper.make_tensor(name, TensorProto.INT64, [], [a.i]),
        "value_ints": lambda a: helper.make_tensor(name, TensorProto.INT64, [len(a.ints)], list(a.ints)),
    }
    return makers[attr.name](attr) if attr.name in makers else None


def materialize_constants(model: onnx.ModelProto) -> dict[str, int]:
    """Turn Constant nodes into initializers and bypass Identity nodes fed by an initializer.

    Returns the count of each kind of node removed. Graph outputs are left alone.
    """
    graph = model.graph
    outputs = {o.name for o in graph.output}
    inits = {t.name for t in graph.initializer}
    rename: dict[str, str] = {}
    keep: list[onnx.NodeProto] = []
    removed = {"Constant": 0, "Identity": 0}
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and node.output[0] not in outputs:
            tensor = _constant_to_tensor(node)
            if tensor is not None:
                graph.initializer.append(tensor)
                inits.add(tensor.name)
                removed["Constant"] += 1
                continue
        if node.op_type == "Identity" and node.domain in ("", "ai.onnx") and node.output[0] not in outputs:
            src = rename.get(node.input[0], node.input[0])
            if src in inits:
                rename[node.output[0]] = src
                removed["Identity"] += 1
                continue
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
        keep.append(node)
    if any(removed.values()):
        del graph.node[:]
        graph.node.extend(keep)
    return removed


def tensor_outputs(model: onnx.ModelProto) -> dict[str, str | None]:
    """Replace each ZipMap output by the tensor it wraps; drop other non-tensor outputs.

    Returns ``{non-tensor output: the tensor output replacing it, or None when dropped}``.
    """
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    replaced: dict[str, str | None] = {}
    new_outputs = []
    for out in graph.output:
        if out.type.HasField("tensor_type"):
            new_outputs.append(out)
            continue
        node = producer.get(out.name)
        replaced[out.name] = None
        if node is not None and node.op_type == "ZipMap":
            src = node.input[0]
            vi = next((v for v in list(graph.value_info) + list(graph.output) if v.name == src), None)
            if vi is None or not vi.type.HasField("tensor_type"):
                vi = helper.make_tensor_value_info(src, TensorProto.FLOAT, None)
            new_outputs.append(vi)
            replaced[out.name] = src
    del graph.output[:]
    graph.output.extend(new_outputs)
    return replaced


def keep_outputs(model: onnx.ModelProto, names: list[str]) -> None:
    """Keep only the graph outputs in ``names`` and the nodes and initializers they depend on."""
    graph = model.graph
    kept = [o for o in graph.output if o.name in names]
    del graph.output[:]
    graph.output.extend(kept)
    producer = {o: n for n in graph.node for o in n.output}
    needed: set[str] = set()
    stack = list(names)
    live_nodes: set[int] = set()
    while stack:
        value = stack.pop()
        if value in needed:
            continue
        needed.add(value)
        node = producer.get(value)
        if node is not None and id(node) not in live_nodes:
            live_nodes.add(id(node))
            stack.extend(i for i in node.input if i)
            for attr in node.attribute:  # values captured by subgraphs (If/Loop bodies)
                for g in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    stack.extend(i for n in g.node for i in n.input if i)
    nodes = [n for n in graph.node if id(n) in live_nodes]
    del graph.node[:]
    graph.node.extend(nodes)
    inits = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(inits)
