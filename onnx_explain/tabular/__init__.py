"""Tabular and classical models in ONNX: tree ensembles read as trees (:mod:`~onnx_explain.tabular.trees`)
with exact TreeSHAP (:mod:`~onnx_explain.tabular.treeshap`), linear models (:mod:`~onnx_explain.tabular.linear`),
whole preprocessing pipelines (:mod:`~onnx_explain.tabular.pipeline`, :func:`~onnx_explain.tabular.table.explain_table`)
and tables from CSV (:mod:`~onnx_explain.tabular.data`).

:func:`tree_view` and :func:`linear_view` find the estimator that computes a model's explained output. It may
read the explained input itself or columns of it after per-column steps (``Cast``, ``Identity``, ``Scaler``,
``Imputer``, ``Binarizer``): Shapley values are unchanged by a map applied to each feature on its own
(every coalition sees the same function of the same columns), so the attributions of the estimator's
columns are those of the input's. A step that mixes columns (a ``Normalizer``, a one-hot encoder, a
``Concat`` of several inputs) is refused here, naming the node; whole pipelines of several inputs go
through :func:`~onnx_explain.tabular.table.explain_table`.
"""

from __future__ import annotations

import numpy as np
import onnx

from ..errors import InputDataError
from .linear import LINEAR_OPS, read_linear
from .trees import TREE_OPS, TreeModelError, Trees, read_trees

__all__ = [
    "exact_method",
    "PER_COLUMN_OPS",
    "LinearView",
    "TableView",
    "TreeModelError",
    "TreeView",
    "Trees",
    "linear_view",
    "tree_view",
]

#: steps before the trees that map each column on its own (domain, op)
PER_COLUMN_OPS = {("", "Cast"), ("", "Identity"), ("ai.onnx.ml", "Scaler"), ("ai.onnx.ml", "Imputer"),
                  ("ai.onnx.ml", "Binarizer")}  # fmt: skip


class TableView:
    """A model's tabular estimator node and the way from the explained input to the columns it reads.

    Attributes
    ----------
    node : onnx.NodeProto
        The estimator's node.
    steps : list of onnx.NodeProto
        The per-column steps between the explained input and the node (empty: it reads the input).
    """

    def __init__(self, model, node: onnx.NodeProto, steps: list):
        self.model = model
        self.node = node
        self.steps = steps
        self._session = None

    def columns(self, x: np.ndarray) -> np.ndarray:
        """The node's input for rows ``x`` of the explained input (the per-column steps run on onnxruntime)."""
        x = np.asarray(x)
        if x.ndim != 2:
            raise InputDataError(
                f"a tabular model explains rows of features: got an array of shape {x.shape}"
            )
        if not self.steps:
            return x
        if self._session is None:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.log_severity_level = 3
            self._session = ort.InferenceSession(
                self._steps_model().SerializeToString(), opts, providers=["CPUExecutionProvider"]
            )
        dtype = np.dtype(self.model.input.dtype)
        return self._session.run(None, {self.model.input.name: x.astype(dtype, copy=False)})[0]

    def _steps_model(self) -> onnx.ModelProto:
        """The per-column steps alone: the explained input to the node's input."""
        from onnx import helper

        g = self.model.proto.graph
        used = {i for n in self.steps for i in n.input}
        inits = [t for t in g.initializer if t.name in used]
        inp = next(v for v in g.input if v.name == self.model.input.name)
        known = {v.name: v.type.tensor_type.elem_type for v in [*g.value_info, *g.input, *g.output]}
        elem = (
            known.get(self.node.input[0]) or onnx.TensorProto.FLOAT
        )  # the estimators read float (or double)
        out = helper.make_tensor_value_info(self.node.input[0], elem, None)
        graph = helper.make_graph(list(self.steps), "steps", [inp], [out], initializer=inits)
        sub = helper.make_model(graph, opset_imports=list(self.model.proto.opset_import))
        sub.ir_version = self.model.proto.ir_version
        return sub


class TreeView(TableView):
    """A model's tree ensemble (:attr:`trees`), the steps before it and its TreeSHAP engines."""

    def __init__(self, model, node: onnx.NodeProto, steps: list):
        super().__init__(model, node, steps)
        self.trees = read_trees(node)
        self.engines: dict = {}  # (mode, background digest) -> TreeShap

    def engine(self, background: np.ndarray, mode: str):
        """The :class:`~onnx_explain.tabular.treeshap.TreeShap` of this background and mode (built once)."""
        from .treeshap import TreeShap, engine_key

        key = engine_key(mode, background)
        if key not in self.engines:
            self.engines[key] = TreeShap(self.trees, self.columns(background), mode)
        return self.engines[key]

    def describe(self) -> str:
        t = self.trees
        depth = int((t.paths.nodes >= 0).sum(1).max()) if len(t.paths.leaf) else 0
        what = f"{len(t.labels)} classes" if t.labels is not None else f"{t.n_outputs} target(s)"
        return (
            f"{t.op} {self.node.name!r}: {t.n_trees} trees, {len(t.paths.leaf)} leaves, depth ≤ {depth}, "
            f"{t.n_features} feature(s) read, {what}, post_transform {t.post if t.post != 'BINARY' else 'binary'}"
        )


class LinearView(TableView):
    """A model's linear estimator (:attr:`linear`: ``LinearClassifier`` / ``LinearRegressor``)."""

    def __init__(self, model, node: onnx.NodeProto, steps: list):
        super().__init__(model, node, steps)
        shape = model.input.shape
        width = shape[-1] if shape and isinstance(shape[-1], int) else None
        if width is None:
            raise TreeModelError(f"the input {model.input.name!r} does not fix its number of columns")
        self.linear = read_linear(node, width)

    def describe(self) -> str:
        m = self.linear
        what = f"{len(m.labels)} classes" if m.labels is not None else f"{m.n_outputs} target(s)"
        return f"{m.op} {self.node.name!r}: {m.n_features} features, {what}, post_transform {m.post}"


def _steps(model, node: onnx.NodeProto) -> list:
    """The per-column steps from the explained input to ``node``'s input (refused otherwise)."""
    graph = model.proto.graph
    producer = {o: n for n in graph.node for o in n.output}
    steps, name = [], node.input[0]
    while name != model.input.name:
        n = producer.get(name)
        if n is None:
            raise TreeModelError(
                f"node {node.name!r} ({node.op_type}) reads {name!r}, not the explained input {model.input.name!r}"
            )
        if (n.domain if n.domain != "ai.onnx" else "", n.op_type) not in PER_COLUMN_OPS:
            raise TreeModelError(
                f"node {n.name!r} ({n.op_type}) mixes or changes columns before node {node.name!r} "
                f"({node.op_type}): exact SHAP needs it to read the input's columns (per-column steps only)"
            )
        steps.insert(0, n)
        name = n.input[0]
    return steps


def _view(model, key: str, ops: tuple, cls):
    cache = model.derived
    if key in cache:
        return cache[key]
    nodes = [n for n in model.proto.graph.node if n.domain == "ai.onnx.ml" and n.op_type in ops]
    if not nodes:
        cache[key] = None
        return None
    if len(nodes) > 1:
        names = ", ".join(repr(n.name) for n in nodes[:4])
        raise TreeModelError(
            f"the graph has {len(nodes)} {'/'.join(ops)} nodes ({names}): exact SHAP reads one"
        )
    view = cls(model, nodes[0], _steps(model, nodes[0]))
    cache[key] = view
    return view


def tree_view(model) -> TreeView | None:
    """The :class:`TreeView` of ``model`` (an :class:`onnx_explain.Model`) when its graph holds a tree
    ensemble; None when it holds none. Built once per Model.

    Raises
    ------
    TreeModelError
        The graph has several ensembles, or the trees read something other than per-column steps of
        the explained input (the message names the node).
    """
    return _view(model, "tabular.trees", TREE_OPS, TreeView)


def linear_view(model) -> LinearView | None:
    """The :class:`LinearView` of ``model`` when its graph holds a ``LinearClassifier`` or
    ``LinearRegressor`` (None otherwise); refused as :func:`tree_view` is."""
    return _view(model, "tabular.linear", LINEAR_OPS, LinearView)


def exact_method(model) -> tuple[str, str] | None:
    """``(method, why)`` when ``auto`` takes an exact method: TreeSHAP for a summed tree ensemble, the
    linear closed form for a linear model (read from the graph); None otherwise."""
    for view_of, method, what in (
        (tree_view, "treeshap", "a tree ensemble"),
        (linear_view, "linear_shap", "linear"),
    ):
        try:
            view = view_of(model)
        except TreeModelError:
            continue
        if view is None or (method == "treeshap" and view.trees.aggregate != "SUM"):
            continue
        return method, f"the graph is {what} ({view.describe()}): exact SHAP from the graph ({method})"
    return None
