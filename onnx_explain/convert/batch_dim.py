"""Free a batch dimension that an exporter fixed (``torch.onnx.export`` with batch 1 and no dynamic axes).

Such files carry the batch size in the input and output shapes and often inside ``Reshape`` shape
constants (ViT, Swin). :func:`free_batch_dim` makes the batch symbolic and rewrites each Reshape whose
constant shape starts with the batch size, using the statically inferred output shape for any other
``-1``. The caller verifies the result on a larger batch and falls back to running in fixed-size chunks
when the graph bakes the batch in elsewhere (Expand, Tile, ConstantOfShape ...).
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
from onnx import numpy_helper


def _const_values(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    from .prepare import tensor_problem

    values = {t.name: t for t in model.graph.initializer}
    out = {
        name: numpy_helper.to_array(t)
        for name, t in values.items()
        if len(t.dims) == 1 and tensor_problem(t) is None
    }
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            t = node.attribute[0].t
            if tensor_problem(t) is None:
                out[node.output[0]] = numpy_helper.to_array(t)
    return out


def _static_shape(vi: onnx.ValueInfoProto) -> list[int] | None:
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        return None
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
    return None if any(d is None for d in dims) else dims


def free_batch_dim(model: onnx.ModelProto, input_name: str, n: int) -> tuple[onnx.ModelProto | None, str]:
    """Return a copy of ``model`` with batch dimension ``n`` made symbolic, or ``(None, reason)``.

    The result is unverified: run it on a batch other than ``n`` and compare before using it.
    """
    shapes = {vi.name: _static_shape(vi) for vi in list(model.graph.value_info) + list(model.graph.output)}
    consts = _const_values(model)
    out = copy.deepcopy(model)
    g = out.graph
    inp = next(i for i in g.input if i.name == input_name)
    inp.type.tensor_type.shape.dim[0].Clear()
    inp.type.tensor_type.shape.dim[0].dim_param = "batch"
    for o in g.output:
        dims = o.type.tensor_type.shape.dim
        if len(dims) and dims[0].HasField("dim_value") and dims[0].dim_value == n:
            dims[0].Clear()
            dims[0].dim_param = "batch"
    rewritten = 0
    for k, node in enumerate(g.node):
        if node.op_type != "Reshape" or len(node.input) < 2 or node.input[1] not in consts:
            continue
        shape = [int(v) for v in consts[node.input[1]].reshape(-1)]
        target = shapes.get(node.output[0])
        if not shape or shape[0] != n or not target or target[0] != n:
            continue
        new = list(shape)
        for i, v in enumerate(new[1:], 1):
            if v == -1:
                new[i] = target[i]
            elif v == 0:
                new[i] = target[i]
        new[0] = -1
        name = f"{node.input[1]}__onnx_explain_batch_{k}"
        g.initializer.append(numpy_helper.from_array(np.asarray(new, dtype=np.int64), name))
        node.input[1] = name
        rewritten += 1
    del g.value_info[:]  # inferred shapes carry the old batch size: infer them again
    if out.ByteSize() < 2**31:
        try:
            out = onnx.shape_inference.infer_shapes(out, strict_mode=False, data_prop=True)
        except Exception:  # noqa: BLE001 - converters that need shapes will say so by node
            pass
    return out, f"{rewritten} Reshape constant(s) rewritten"


def index_bound(model: onnx.ModelProto, input_name: str) -> int | None:
    """Row count of the first embedding table (a Gather on an initializer) that integer input
    ``input_name`` indexes, through Cast/Identity; None when there is none."""
    inits = {t.name: t for t in model.graph.initializer}
    names = {input_name}
    for node in model.graph.node:
        if node.op_type in ("Cast", "Identity") and node.input and node.input[0] in names:
            names.add(node.output[0])
        elif node.op_type == "Gather" and len(node.input) > 1 and node.input[1] in names:
            table = inits.get(node.input[0])
            if table is not None and table.dims:
                return int(table.dims[0])
    return None


def index_bounds(model: onnx.ModelProto, input_names) -> dict:
    """:func:`index_bound` of each of ``input_names`` that indexes a table."""
    bounds = {name: index_bound(model, name) for name in input_names}
    return {k: v for k, v in bounds.items() if v}


#: ops that move integer values without reading them as numbers or indices
_LAYOUT_OPS = {"Transpose", "Reshape", "Identity", "Unsqueeze", "Squeeze", "Flatten"}
#: ops that only read a tensor's shape
_SHAPE_OPS = {"Shape", "Size"}
_FLOATS = {
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.DOUBLE,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.BFLOAT16,
}


def integer_input_kind(model: onnx.ModelProto, input_name: str) -> str:
    """How an integer input is read: ``'quantity'`` when every use of its values, through layout ops
    (Transpose, Reshape, ...) and integer casts, is a ``Cast`` to float (a uint8 image, counts); else
    ``'ids'`` (token or category ids, read by ``Gather``, ``OneHot``, comparisons ...)."""
    users: dict = {}
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            users.setdefault(name, []).append((node, i))
    frontier, seen, reached_cast = [input_name], set(), False
    while frontier:
        name = frontier.pop()
        if name in seen:
            continue
        seen.add(name)
        for node, slot in users.get(name, []):
            if node.op_type in _SHAPE_OPS or (node.op_type in _LAYOUT_OPS and slot > 0):
                continue  # reads the shape, or the tensor is a shape argument here
            if node.op_type in _LAYOUT_OPS:
                frontier.extend(node.output[:1])
                continue
            if node.op_type == "Cast":
                to = next((a.i for a in node.attribute if a.name == "to"), None)
                if to in _FLOATS:
                    reached_cast = True
                else:
                    frontier.extend(node.output[:1])
                continue
            return "ids"
    return "quantity" if reached_cast else "ids"
