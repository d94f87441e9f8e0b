"""Layers of an ONNX graph: the spatial feature maps a CAM or a layer attribution can read.

A layer is named by its ONNX tensor or by the node that computes it. Candidates are the float tensors of
rank 4 ``(batch, channels, height, width)`` with a spatial size above 1 that shape inference knows; the
default for CAMs is the map a global pooling reads last (the last feature map before the classifier),
else the last candidate.
"""

from __future__ import annotations

import onnx

from .errors import OptionError

__all__ = ["default_layer", "layer_candidates", "resolve_layer"]

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


def resolve_layer(proto: onnx.ModelProto, layer: str | None) -> dict:
    """The candidate named ``layer`` (a tensor or node name; None: :func:`default_layer`)."""
    if layer is None:
        return default_layer(proto)
    cands = layer_candidates(proto)
    for c in cands:
        if layer in (c["tensor"], c["node"]):
            return c
    names = ", ".join(c["tensor"] for c in cands[-5:])
    raise OptionError(
        f"layer {layer!r} is not a spatial feature map of the graph (a rank-4 tensor or its node); the last "
        f"ones: {names or 'none'} (onnx-explain info --layers lists them)"
    )
