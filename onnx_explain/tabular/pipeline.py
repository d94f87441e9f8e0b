"""Preprocessing pipelines before a tabular estimator: which *original* column (graph input, column) each
column the estimator reads comes from.

scikit-learn pipelines exported by skl2onnx read one graph input per DataFrame column (numbers and
strings), scale and impute the numeric ones, one-hot encode the categorical ones and concatenate the
results before the trees or the linear model. Attributions are computed on the estimator's columns and
summed back to the column they come from: a one-hot group gives its categorical column the sum of its
indicators' attributions (the usual convention; docs/methods.md §2.9).

The provenance of every column is followed through the graph statically: per-column steps (``Cast``,
``Identity``, ``Scaler``, ``Imputer``, ``Binarizer``, ``LabelEncoder``), ``OneHotEncoder`` (a column
becomes a block of indicators), ``Concat``, ``Reshape``/``Flatten`` (row-major), ``ArrayFeatureExtractor``
with constant indices. Any other op before the estimator is refused, naming the node: its columns would
not map to original columns.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .trees import TreeModelError, node_attrs

__all__ = ["Provenance", "provenance"]

_PER_COLUMN = {"Cast", "Identity", "Scaler", "Imputer", "Binarizer", "LabelEncoder", "CastLike"}


class Provenance:
    """The original columns (graph input, column index) and, for each column of a tensor, the original
    column it comes from.

    Attributes
    ----------
    columns : list of (str, int)
        The original columns in graph-input order.
    names : list of str
        Their names: the input's name when it has one column, else ``input[j]``.
    of : numpy.ndarray
        For each column of the traced tensor, the index of its original column.
    """

    def __init__(self, columns, names, of):
        self.columns, self.names, self.of = columns, names, of

    def matrix(self) -> np.ndarray:
        """``(tensor columns, original columns)`` 0/1: the sum of a row's column values per original column."""
        m = np.zeros((len(self.of), len(self.columns)))
        m[np.arange(len(self.of)), self.of] = 1.0
        return m


def _width(vi: onnx.ValueInfoProto) -> int | None:
    dims = vi.type.tensor_type.shape.dim
    if len(dims) == 1:
        return 1
    if len(dims) == 2 and dims[1].HasField("dim_value"):
        return int(dims[1].dim_value)
    return None


def provenance(proto: onnx.ModelProto, tensor: str) -> Provenance:
    """Where each column of ``tensor`` (a ``(rows, columns)`` tensor of ``proto``) comes from."""
    g = proto.graph
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    columns, names, first = [], [], {}
    for vi in g.input:
        if vi.name in inits:
            continue
        k = _width(vi)
        if k is None:
            continue  # not a table column input (its use, if any, is refused below)
        first[vi.name] = len(columns)
        for j in range(k):
            columns.append((vi.name, j))
            names.append(vi.name if k == 1 else f"{vi.name}[{j}]")
    memo: dict[str, np.ndarray] = {}

    def const(name):
        if name in inits:
            return inits[name]
        n = producer.get(name)
        if n is not None and n.op_type == "Constant":
            return numpy_helper.to_array(n.attribute[0].t)
        return None

    def prov(name: str) -> np.ndarray:
        if name in memo:
            return memo[name]
        if name in first:
            vi = next(v for v in g.input if v.name == name)
            out = first[name] + np.arange(_width(vi))
            memo[name] = out
            return out
        n = producer.get(name)
        if n is None:
            raise TreeModelError(
                f"the estimator's columns come from {name!r}, which is not a table column input"
            )
        where = f"node {n.name!r} ({n.op_type})"
        op, a = n.op_type, node_attrs(n)
        if op in _PER_COLUMN:
            out = prov(n.input[0])
        elif op == "OneHotEncoder":
            cats = a.get("cats_int64s", None)
            cats = cats if cats is not None and len(cats) else a.get("cats_strings", [])
            p = prov(n.input[0])
            out = np.repeat(p[..., None], len(cats), axis=-1)  # (k, categories)
        elif op == "Concat":
            parts = [prov(i) for i in n.input]
            axis = int(a.get("axis", 1))
            ax = axis - 1 if axis > 0 else axis  # the batch axis is not in the provenance arrays
            try:
                out = np.concatenate(parts, axis=ax)
            except ValueError:
                raise TreeModelError(
                    f"{where}: cannot follow its columns (shapes {[p.shape for p in parts]})"
                ) from None
        elif op in ("Reshape", "Flatten"):
            p = prov(n.input[0])
            if op == "Reshape":
                shape = const(n.input[1])
                if shape is None or len(shape) != 2:
                    raise TreeModelError(
                        f"{where}: a reshape to a shape that is not (rows, columns) constant"
                    )
            out = p.reshape(-1)
        elif op == "ArrayFeatureExtractor":
            idx = const(n.input[1])
            if idx is None:
                raise TreeModelError(f"{where}: column indices that are not constant")
            out = prov(n.input[0])[..., np.asarray(idx).reshape(-1)]
        else:
            raise TreeModelError(
                f"{where} before the estimator mixes columns (or is not a known preprocessing step): "
                "its columns do not map to original columns"
            )
        memo[name] = out
        return out

    of = prov(tensor).reshape(-1)
    return Provenance(columns, names, of)


def prefix_model(proto: onnx.ModelProto, tensor: str) -> onnx.ModelProto:
    """The part of ``proto`` that computes ``tensor`` from the graph inputs (a model of its own)."""
    g = proto.graph
    producer = {o: n for n in g.node for o in n.output}
    needed, todo, nodes = set(), [tensor], []
    while todo:
        name = todo.pop()
        n = producer.get(name)
        if n is None or id(n) in needed:
            continue
        needed.add(id(n))
        todo.extend(i for i in n.input if i)
    nodes = [n for n in g.node if id(n) in needed]
    used = {i for n in nodes for i in n.input}
    known = {v.name: v.type.tensor_type.elem_type for v in [*g.value_info, *g.input, *g.output]}
    out = helper.make_tensor_value_info(tensor, known.get(tensor) or onnx.TensorProto.FLOAT, None)
    inputs = [v for v in g.input if v.name in used]
    graph = helper.make_graph(
        nodes, "prefix", inputs, [out], initializer=[t for t in g.initializer if t.name in used]
    )
    sub = helper.make_model(graph, opset_imports=list(proto.opset_import))
    sub.ir_version = proto.ir_version
    return sub
