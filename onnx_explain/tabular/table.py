"""Explain rows of a table through a whole preprocessing pipeline (:func:`explain_table`): several graph
inputs (one per column, numbers and strings), one-hot encoders, scalers and a tree ensemble or linear
model, attributed exactly and reported per *original* column."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx

from ..errors import InputDataError, InputFileError, OptionError
from .linear import LINEAR_OPS, read_linear
from .pipeline import prefix_model, provenance
from .scores import check_same_scores
from .trees import TREE_OPS, TreeModelError, read_trees

__all__ = ["TablePipeline", "explain_table", "read_table_rows"]

_METHODS = ("auto", "treeshap", "linear_shap")
CHECKED_ROWS = 256


def _session(proto: onnx.ModelProto):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])


class TablePipeline:
    """A model whose explained output is a tree ensemble's or a linear model's, after preprocessing of
    one or several table inputs (:mod:`onnx_explain.tabular.pipeline`).

    Attributes
    ----------
    node : onnx.NodeProto
        The estimator.
    estimator : Trees or Linear
    provenance : Provenance
        The original column of each column the estimator reads.
    inputs : list of onnx.ValueInfoProto
        The graph inputs the rows must give.
    """

    def __init__(self, model):
        self.model = model
        proto = model.proto
        nodes = [
            n for n in proto.graph.node if n.domain == "ai.onnx.ml" and n.op_type in TREE_OPS + LINEAR_OPS
        ]
        if len(nodes) != 1:
            what = "no tree ensemble or linear model" if not nodes else f"{len(nodes)} estimators"
            raise TreeModelError(f"{model.source}: {what} in the graph (explain_table reads exactly one)")
        self.node = nodes[0]
        self.provenance = provenance(proto, self.node.input[0])
        if self.node.op_type in TREE_OPS:
            self.estimator = read_trees(self.node)
        else:
            self.estimator = read_linear(self.node, len(self.provenance.of))
        self.kind = "trees" if self.node.op_type in TREE_OPS else "linear"
        prefix = prefix_model(proto, self.node.input[0])
        self.inputs = list(prefix.graph.input)
        self._prefix = _session(prefix)
        self._full = None
        self.engines: dict = {}

    @property
    def names(self) -> list[str]:
        return self.provenance.names

    def columns(self, rows: dict) -> np.ndarray:
        """The estimator's input for ``rows`` (a dict of input name -> array, checked)."""
        feed = {v.name: rows[v.name] for v in self.inputs}
        return np.asarray(self._prefix.run(None, feed)[0])

    def outputs(self, rows: dict) -> np.ndarray:
        """The model's explained output for ``rows``, from onnxruntime."""
        if self._full is None:
            self._full = _session(self.model.proto)
        name = self.model.output.name
        feed = {v.name: rows[v.name] for v in self._full.get_inputs() if v.name in rows}
        out = np.asarray(self._full.run([name], feed)[0], dtype=np.float64)
        return out.reshape(len(out), -1)

    def describe(self) -> str:
        e, n = self.estimator, self.node
        return (
            f"{n.op_type} {n.name!r} reading {len(self.provenance.of)} columns from "
            f"{len(self.names)} original columns ({', '.join(self.names[:6])}{' ...' if len(self.names) > 6 else ''}); "
            f"{e.n_outputs} output(s)"
        )


def read_table_rows(source, inputs: list, names_hint=None) -> dict:
    """Rows for the graph ``inputs`` (ValueInfoProtos) as ``{name: array (rows, k)}`` in their dtypes, from
    a dict of arrays, a 2-D array (one input), or a CSV file whose header names the inputs (an input of k
    columns: ``name[0]`` ... ``name[k-1]``). Empty CSV cells are missing values (NaN) for numeric inputs."""
    if isinstance(source, (str, os.PathLike)):
        source = _csv_columns(Path(source))
    if not isinstance(source, dict):
        if len(inputs) != 1:
            raise InputDataError(
                f"the model reads {len(inputs)} inputs ({', '.join(v.name for v in inputs)}): give a dict or a "
                "CSV file whose header names them"
            )
        source = {inputs[0].name: np.asarray(source)}
    out, n = {}, None
    for vi in inputs:
        name = vi.name
        k = _k(vi)
        if name in source:
            a = np.asarray(source[name])
        elif k and all(f"{name}[{j}]" in source for j in range(k)):
            a = np.stack([np.asarray(source[f"{name}[{j}]"]) for j in range(k)], axis=1)
        else:
            raise InputDataError(f"the rows give no column {name!r} (the model's input)")
        if a.ndim == 1:
            a = a.reshape(-1, 1)
        out[name] = _as_input_dtype(a, vi)
        if n is not None and len(a) != n:
            raise InputDataError(f"column {name!r} has {len(a)} rows, the others {n}")
        n = len(a)
    return out


def _k(vi) -> int | None:
    dims = vi.type.tensor_type.shape.dim
    if len(dims) == 2 and dims[1].HasField("dim_value"):
        return int(dims[1].dim_value)
    return 1 if len(dims) <= 2 else None


def _as_input_dtype(a: np.ndarray, vi) -> np.ndarray:
    from onnx import helper

    elem = vi.type.tensor_type.elem_type
    if elem == onnx.TensorProto.STRING:
        return a.astype(str).astype(object)
    dtype = helper.tensor_dtype_to_np_dtype(elem)
    try:
        if a.dtype.kind in "USO":
            a = np.array([[float("nan") if str(v).strip().lower() in ("", "nan", "na") else float(v) for v in r]
                          for r in a])  # fmt: skip
        return a.astype(dtype)
    except (TypeError, ValueError) as exc:
        raise InputDataError(f"column {vi.name!r} holds values that are not numbers: {exc}") from None


def _csv_columns(path: Path) -> dict:
    import csv

    if not path.is_file():
        raise InputFileError(f"{path}: no such file")
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    if len(rows) < 2:
        raise InputFileError(f"{path}: a table needs a header and at least one row")
    header = [h.strip() for h in rows[0]]
    body = rows[1:]
    for i, r in enumerate(body):
        if len(r) != len(header):
            raise InputFileError(f"{path}: row {i + 1} has {len(r)} values, the header {len(header)} columns")
    cols = np.array(body, dtype=object).T
    return {h: np.array([str(v).strip() for v in cols[j]], dtype=object) for j, h in enumerate(header)}


def explain_table(
    model,
    rows,
    method: str = "auto",
    target=None,
    *,
    background=None,
    feature_perturbation: str = "interventional",
):
    """Exact SHAP of a table model through its whole preprocessing, per original column.

    Parameters
    ----------
    model : Model or path
        A model whose explained output is computed by one tree ensemble or linear model after
        preprocessing steps skl2onnx writes (scalers, imputers, one-hot encoders, concatenations).
    rows : dict of str to array_like, array_like or path
        The rows: one array per graph input (``{"age": ..., "city": ...}``; strings for categorical
        inputs), a 2-D array when there is one input, or a CSV file whose header names the inputs.
    method : {'auto', 'treeshap', 'linear_shap'}
        ``auto``: the one that fits the estimator.
    target : None, 'predicted', int or sequence of int
        The class explained per row (default: the predicted one; a regressor's output 0).
    background : same forms as ``rows``, optional
        The reference rows (interventional game) or the rows the node covers are counted on
        (``feature_perturbation='path_dependent'``, trees only); default: ``rows`` (interventional only).
    feature_perturbation : {'interventional', 'path_dependent'}

    Returns
    -------
    Explanation
        ``attribution`` ``(rows, original columns)``: an estimator column's Shapley value summed into the
        column it comes from (a one-hot group into its categorical column); ``extras['columns']`` their
        names; ``score`` the explained class's margin and ``extras['expected_value']``, with
        ``attribution.sum(1) + expected_value == score``.
    """
    from ..methods.base import Explanation
    from ..model import Model

    if method not in _METHODS:
        raise OptionError(f"explain_table takes method {', '.join(_METHODS)}, not {method!r}")
    if not isinstance(model, Model):
        model = load_any(model)
    pipe = model.derived.get("tabular.pipeline")
    if pipe is None:
        pipe = model.derived["tabular.pipeline"] = TablePipeline(model)
    want = "treeshap" if pipe.kind == "trees" else "linear_shap"
    if method not in ("auto", want):
        raise OptionError(f"{method} does not apply: the estimator is {pipe.describe()} (use {want})")
    x = read_table_rows(rows, pipe.inputs)
    cols = pipe.columns(x)
    n = len(cols)
    predicted = target is None or (isinstance(target, str) and target == "predicted")
    # one onnxruntime pass: every row when the predicted classes are needed, else the checked rows only
    out = pipe.outputs(x if predicted else {k: v[:CHECKED_ROWS] for k, v in x.items()})
    ours = pipe.estimator.predict(cols[:CHECKED_ROWS])
    note = check_same_scores(out[:CHECKED_ROWS], ours, model.output.name, pipe.node, model.proto)
    classes = _classes(target, out, n)
    if background is None:
        if feature_perturbation == "path_dependent":
            raise OptionError(
                "path_dependent TreeSHAP needs background rows to count node covers (the training rows)"
            )
        bg_cols, where = cols, f"the {n} explained rows"
    else:
        bg_cols = pipe.columns(read_table_rows(background, pipe.inputs))
        where = f"{len(bg_cols)} rows" + (
            f" of {background}" if isinstance(background, (str, os.PathLike)) else ""
        )
    if pipe.kind == "trees":
        from .treeshap import TreeShap, engine_key

        key = engine_key(feature_perturbation, bg_cols)
        if key not in pipe.engines:
            pipe.engines[key] = TreeShap(pipe.estimator, bg_cols, feature_perturbation)
        phi, expected, margin = pipe.engines[key].shap_values(cols, classes)
        options = {"background": where, "feature_perturbation": feature_perturbation}
    else:
        lin = pipe.estimator
        phi, expected = lin.shap_values(cols, bg_cols, classes)
        margin = phi.sum(1) + expected
        options = {"background": where}
    attribution = phi @ pipe.provenance.matrix()
    return Explanation(
        attribution=attribution.astype(np.float32),
        target=classes,
        score=margin,
        method=want,
        options=options,
        extras={
            "columns": list(pipe.names),
            "expected_value": expected,
            "space": f"margin: the scores of node {pipe.node.name!r} ({pipe.node.op_type}) before post_transform"
            + (f"; {note}" if note else ""),
            "model": pipe.describe(),
            "estimator_attribution": phi,
        },
    )


def load_any(path):
    from ..errors import InputSpecError
    from ..model import load

    try:
        return load(path)
    except InputSpecError:  # several inputs: each is a column here, none is "the" explained input
        first = next(i.name for i in onnx.load(str(path), load_external_data=False).graph.input)
        return load(path, input=first)


def _classes(target, out: np.ndarray, n: int) -> np.ndarray:
    if target is None or (isinstance(target, str) and target == "predicted"):
        return out.argmax(1) if out.shape[1] > 1 else np.zeros(n, dtype=np.int64)
    t = np.asarray(target, dtype=np.int64).reshape(-1)
    t = np.full(n, t[0]) if t.size == 1 else t
    if t.shape != (n,) or (t < 0).any() or (t >= out.shape[1]).any():
        raise OptionError(f"target must be a class in [0, {out.shape[1]}) or one per row, not {target!r}")
    return t
