"""Linear models read out of an ONNX graph: ``LinearClassifier`` and ``LinearRegressor`` (``ai.onnx.ml`` 1),
in margin space (the scores before ``post_transform``), with onnxruntime's conventions: a binary classifier
with one coefficient row scores ``[-s, s]`` (``[1 - σ(s), σ(s)]`` after LOGISTIC, i.e. σ of ``[-s, s]``);
onnxruntime reads the first ``classes × features`` coefficients for the features the input has."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from ..errors import InputDataError
from .trees import TreeModelError, attr_text, node_attrs, post_transform

__all__ = ["LINEAR_OPS", "Linear", "read_linear"]

LINEAR_OPS = ("LinearClassifier", "LinearRegressor")


@dataclass
class Linear:
    """``margin = x Wᵀ + b`` and the output ``post(margin)``.

    Attributes
    ----------
    weight : numpy.ndarray
        ``(n_outputs, n_features)``.
    bias : numpy.ndarray
        ``(n_outputs,)``.
    post : str
        ``post_transform`` applied to the margins.
    labels : list or None
        The class labels of a classifier.
    """

    weight: np.ndarray
    bias: np.ndarray
    post: str
    labels: list | None
    op: str = ""
    node_name: str = ""

    @property
    def n_outputs(self) -> int:
        return self.weight.shape[0]

    @property
    def n_features(self) -> int:
        return self.weight.shape[1]

    def where(self) -> str:
        return f"node {self.node_name!r} ({self.op})"

    def check_rows(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise InputDataError(
                f"{self.where()} reads rows of {self.n_features} features: got shape {x.shape}"
            )
        return x.astype(np.float64)

    def margins(self, x: np.ndarray) -> np.ndarray:
        return self.check_rows(x) @ self.weight.T + self.bias

    def shap_values(self, x: np.ndarray, background: np.ndarray, outputs) -> tuple[np.ndarray, np.ndarray]:
        """``(φ, expected value)`` of margin column ``outputs[i]`` for each row ``x[i]``, features independent:
        ``φ = W_c ⊙ (x − mean(background))``, ``E = W_c · mean + b_c`` (shap's LinearExplainer); Σφ + E is
        the margin."""
        mean = self.check_rows(background).mean(0)
        w = self.weight[np.asarray(outputs, dtype=np.int64)]  # (rows, features)
        return w * (self.check_rows(x) - mean), w @ mean + self.bias[outputs]

    def predict(self, x: np.ndarray) -> np.ndarray:
        """onnxruntime's scores output for rows ``x``."""
        return post_transform(self.margins(x), self.post)


def read_linear(node: onnx.NodeProto, n_features: int) -> Linear:
    """The :class:`Linear` of a ``LinearClassifier`` / ``LinearRegressor`` node reading ``n_features``."""
    a = node_attrs(node)
    where = f"node {node.name!r} ({node.op_type})"
    coef = np.asarray(a.get("coefficients", []), dtype=np.float64)
    intercepts = np.asarray(a.get("intercepts", []), dtype=np.float64)
    post = attr_text(a.get("post_transform", b"NONE"))
    if node.op_type == "LinearClassifier":
        labels = list(a.get("classlabels_ints", [])) or [
            attr_text(s) for s in a.get("classlabels_strings", [])
        ]
        rows = len(intercepts) or (1 if len(labels) == 2 else len(labels))
    else:
        labels = None
        rows = int(a.get("targets", 1))
    if rows < 1 or len(coef) < rows * n_features:
        raise TreeModelError(
            f"{where}: {len(coef)} coefficients for {rows} output(s) of {n_features} features"
        )
    weight = coef[: rows * n_features].reshape(rows, n_features)  # onnxruntime's reading
    bias = intercepts if len(intercepts) == rows else np.zeros(rows)
    if labels is not None and rows == 1 and len(labels) == 2:  # one score s: [-s, s]
        weight, bias = np.concatenate([-weight, weight]), np.concatenate([-bias, bias])
    return Linear(weight, bias, post, labels, node.op_type, node.name)
