"""Rewrites of the ONNX graph before onnx2torch sees it. Each pass edits the ModelProto in place.

- Weights reached through ``Identity`` (the legacy exporter's de-duplication of equal tensors) or
  produced by ``Constant`` nodes (PaddlePaddle) become initializers: onnx2torch's converters
  expect Conv/Gemm weights to *be* initializers and raised ``KeyError``.
- Outputs that are not tensors (ZipMap's sequence of maps) are replaced by the tensor they wrap;
  outputs that are not wanted are dropped with the nodes only they need.

:func:`tensor_problem` tells, without reading the payload into an array, whether a tensor's data can be
what its dims and type declare; the driver refuses the ones that cannot (a mutated or hostile file can
declare 2e12 values and hold none).
"""

from __future__ import annotations

import math

import onnx
from onnx import TensorProto, helper

from ..errors import node_label

MAX_IR_VERSION = 10  # onnxruntime 1.31 rejects the IR 14 that onnx 1.23 writes by default


def cap_ir_version(model: onnx.ModelProto) -> None:
    """Keep ``ir_version`` at most :data:`MAX_IR_VERSION` on a model we build or rewrite."""
    if model.ir_version > MAX_IR_VERSION:
        model.ir_version = MAX_IR_VERSION


#: tensor types whose typed field holds one entry per value (or two: complex)
_TYPED_FIELDS = {
    TensorProto.FLOAT: ("float_data", 1),
    TensorProto.COMPLEX64: ("float_data", 2),
    TensorProto.DOUBLE: ("double_data", 1),
    TensorProto.COMPLEX128: ("double_data", 2),
    TensorProto.INT64: ("int64_data", 1),
    TensorProto.UINT32: ("uint64_data", 1),
    TensorProto.UINT64: ("uint64_data", 1),
    TensorProto.STRING: ("string_data", 1),
    **{
        t: ("int32_data", 1)
        for t in (
            TensorProto.INT32, TensorProto.INT16, TensorProto.INT8, TensorProto.UINT16, TensorProto.UINT8,
            TensorProto.BOOL, TensorProto.FLOAT16, TensorProto.BFLOAT16,
        )
    },
}  # fmt: skip
#: packed types (two values a byte) and strings: their raw size is not ``values x itemsize``
_UNSIZED = {TensorProto.STRING} | {
    getattr(TensorProto, n)
    for n in ("INT4", "UINT4", "FLOAT4E2M1", "INT2", "UINT2")
    if hasattr(TensorProto, n)
}


def tensor_problem(t: TensorProto) -> str | None:
    """Why tensor ``t`` cannot hold what it declares (unknown type, negative dim, a payload of the wrong
    size, no data at all), or None. Reads sizes only: nothing is allocated, however large the dims."""
    if t.data_location == TensorProto.EXTERNAL:
        return "keeps its data in an external file that was not loaded"
    try:
        itemsize = helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    except (KeyError, TypeError, ValueError):
        return f"has unknown data type {t.data_type}"
    dims = list(t.dims)
    if any(d < 0 for d in dims):
        return f"has a negative dimension in {dims}"
    n = math.prod(dims)
    if t.HasField("raw_data"):
        want = n * itemsize
        if t.data_type not in _UNSIZED and len(t.raw_data) != want:
            return f"declares shape {dims} ({want} bytes) but holds {len(t.raw_data)} bytes"
        return None
    field, per_value = _TYPED_FIELDS.get(t.data_type, (None, 1))
    if field is None:
        return None  # a packed or exotic type: numpy_helper will tell
    have = len(getattr(t, field))
    if have != n * per_value:
        return f"declares shape {dims} ({n} values) but holds {have // per_value} values"
    return None


def _constant_to_tensor(node: onnx.NodeProto) -> TensorProto | None:
    """The tensor a Constant node produces, or None for sparse or unknown attributes and for a tensor
    whose data does not match its shape (the driver refuses that node, by name)."""
    if len(node.attribute) != 1:
        return None
    attr = node.attribute[0]
    name = node.output[0]
    if attr.name == "value":
        if tensor_problem(attr.t) is not None:
            return None
        t = TensorProto()
        t.CopyFrom(attr.t)
        t.name = name
        return t
    A = onnx.AttributeProto
    kinds = {"value_float": A.FLOAT, "value_floats": A.FLOATS, "value_int": A.INT, "value_ints": A.INTS}
    if attr.name in kinds and attr.type != kinds[attr.name]:
        return None  # a mistyped attribute: the Constant converter names the node
    makers = {
        "value_float": lambda a: helper.make_tensor(name, TensorProto.FLOAT, [], [a.f]),
        "value_floats": lambda a: helper.make_tensor(
            name, TensorProto.FLOAT, [len(a.floats)], list(a.floats)
        ),
        "value_int": lambda a: helper.make_tensor(name, TensorProto.INT64, [], [a.i]),
        "value_ints": lambda a: helper.make_tensor(name, TensorProto.INT64, [len(a.ints)], list(a.ints)),
    }
    return makers[attr.name](attr) if attr.name in makers else None


def _all_graphs(graph: onnx.GraphProto):
    """``graph`` and every subgraph in it (If/Loop/Scan bodies), at any depth."""
    stack = [graph]
    while stack:
        g = stack.pop()
        yield g
        for node in g.node:
            for attr in node.attribute:
                stack.extend(([attr.g] if attr.HasField("g") else []) + list(attr.graphs))


def native_crash_hazard(model: onnx.ModelProto) -> str | None:
    """The first node that is known to crash onnx's or onnxruntime's C++ code (the process dies by a
    signal, no exception), described for an error message; None when there is none.

    Call it before ``onnx.checker`` (full check) or ``onnx.shape_inference``. Known so far:

    - ``Split`` with a ``num_outputs`` attribute that differs from its number of outputs: onnx 1.23's
      shape inference aborts (SIGABRT, an out-of-range vector index). The spec requires them equal.

    Related: :func:`symbolic_negative_dims` removes the declared negative dims that make Slice's shape
    inference abort, and :func:`drop_trailing_empty_inputs` the empty inputs onnxruntime crashes on.
    Not caught: a dim that *inference* makes negative (a Conv kernel larger than its input, then a
    Slice) aborts the same way; only running the C++ code in another process can contain that.
    """
    for graph in _all_graphs(model.graph):
        for node in graph.node:
            if node.op_type == "Split" and node.domain in ("", "ai.onnx"):
                num = next((a for a in node.attribute if a.name == "num_outputs"), None)
                if num is not None and (num.type != onnx.AttributeProto.INT or num.i != len(node.output)):
                    value = num.i if num.type == onnx.AttributeProto.INT else "not an integer"
                    return (
                        f"{node_label(node.name, node.op_type)} declares num_outputs={value} "
                        f"but has {len(node.output)} outputs"
                    )
    return None


def symbolic_negative_dims(model: onnx.ModelProto) -> int:
    """Make every negative ``dim_value`` of the graph's inputs, outputs and value_info (subgraphs
    included) a symbolic dim; returns how many were changed.

    PaddlePaddle writes the batch as ``-1``. ONNX has no negative sizes, and onnx 1.23's shape inference
    (also run by ``onnx.checker`` with ``full_check=True``) aborts the process (SIGABRT in
    ``std::clamp``) when a Slice reads an axis declared negative. Run this before either.
    """
    changed = 0
    for graph in _all_graphs(model.graph):
        for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
            if not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
                continue
            for axis, dim in enumerate(vi.type.tensor_type.shape.dim):
                if dim.HasField("dim_value") and dim.dim_value < 0:
                    dim.Clear()
                    dim.dim_param = "batch" if axis == 0 else f"{vi.name}_dim{axis}"
                    changed += 1
    return changed


def drop_trailing_empty_inputs(model: onnx.ModelProto) -> int:
    """Remove the empty names that end a node's input list (``LayerNormalization(x, scale, '')``), in
    every graph and subgraph; returns how many were removed.

    The ONNX spec makes an omitted trailing optional input and an empty name the same thing. onnxruntime
    1.31 is not so sure: its extended graph optimizations crash the process (SIGSEGV) on a
    LayerNormalization whose bias is ``''``. Run this on a model before handing it to onnxruntime.
    """
    removed = 0
    for graph in _all_graphs(model.graph):
        for node in graph.node:
            n = len(node.input)
            while n and not node.input[n - 1]:
                n -= 1
            if n < len(node.input):
                removed += len(node.input) - n
                del node.input[n:]
    return removed


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
        constant = node.op_type == "Constant" and node.domain in ("", "ai.onnx") and len(node.output) == 1
        if constant and node.output[0] not in outputs:
            tensor = _constant_to_tensor(node)
            if tensor is not None:
                graph.initializer.append(tensor)
                inits.add(tensor.name)
                removed["Constant"] += 1
                continue
        identity = node.op_type == "Identity" and node.domain in ("", "ai.onnx") and len(node.input) == 1
        if identity and len(node.output) == 1 and node.output[0] not in outputs:
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
        if (
            node is not None
            and node.op_type == "ZipMap"
            and len(node.input) == 1
            and isinstance(node.input[0], str)
        ):
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
    nodes = list(graph.node)
    producer = {o: k for k, n in enumerate(nodes) for o in n.output}
    needed: set[str] = set()
    stack = list(names)
    live_nodes: set[int] = set()
    while stack:
        value = stack.pop()
        if value in needed:
            continue
        needed.add(value)
        k = producer.get(value)
        if k is not None and k not in live_nodes:
            live_nodes.add(k)
            node = nodes[k]
            stack.extend(i for i in node.input if i)
            for attr in node.attribute:  # values captured by subgraphs (If/Loop bodies)
                for g in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    stack.extend(i for n in g.node for i in n.input if i)
    # deleted in place: re-adding a kept message copies it, and protobuf cannot copy one over 2 GB
    for k in reversed(range(len(nodes))):
        if k not in live_nodes:
            del graph.node[k]
    for i in reversed(range(len(graph.initializer))):
        if graph.initializer[i].name not in needed:
            del graph.initializer[i]
