"""Linear models read out of ONNX graphs: exact SHAP of the margin equals shap's LinearExplainer on the
scikit-learn source (exported by skl2onnx), through the API, ``auto`` and per-column pipelines."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import onnx_explain as oe

shap = pytest.importorskip("shap")
sklearn = pytest.importorskip("sklearn")
from skl2onnx import to_onnx  # noqa: E402
from sklearn.datasets import make_classification  # noqa: E402
from sklearn.linear_model import LinearRegression, LogisticRegression  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402


@pytest.fixture(scope="module")
def data():
    X, y = make_classification(300, 6, n_informative=4, random_state=0, n_classes=3, n_clusters_per_class=1)
    return X.astype(np.float32), y


def _save(model, X, path, classifier=True):
    onnx.save(to_onnx(model, X[:1], options={"zipmap": False} if classifier else None), path)
    return path


@pytest.mark.parametrize("kind", ["binary", "multiclass", "regression"])
def test_linear_shap_equals_shap(kind, data, tmp_path):
    X, y = data
    if kind == "binary":
        src = LogisticRegression().fit(X, (y > 0).astype(int))
    elif kind == "multiclass":
        src = LogisticRegression().fit(X, y)  # skl2onnx adds a Normalizer after the softmax
    else:
        src = LinearRegression().fit(X, X[:, 0] * 2 + X[:, 3])
    path = _save(src, X, tmp_path / "m.onnx", kind != "regression")
    bg, x = X[:80], X[100:130]
    model = oe.load(path)
    e = oe.explain(model, x, "linear_shap", background=bg, target=None if kind != "binary" else 1)
    ref = np.asarray(shap.LinearExplainer(src, bg).shap_values(x))
    if kind == "multiclass":
        ref = ref[np.arange(len(x)), :, e.target] if ref.shape[-1] == 3 else ref[e.target, np.arange(len(x))]
    np.testing.assert_allclose(e.attribution, ref, atol=1e-5 * np.abs(ref).max())
    np.testing.assert_allclose(e.attribution.sum(1) + e.extras["expected_value"], e.score, atol=1e-5)
    if kind == "multiclass":
        np.testing.assert_array_equal(e.target, src.predict(x))
        np.testing.assert_allclose(e.score, src.decision_function(x)[np.arange(len(x)), e.target], atol=1e-4)
    a = oe.explain(model, x, "auto", background=bg)
    assert a.method == "linear_shap" and "linear" in a.extras["auto"]
    same = oe.explain(model, x, "linear_shap", background=bg)  # auto: the same method and predicted class
    np.testing.assert_array_equal(a.target, same.target)
    np.testing.assert_allclose(a.attribution, same.attribution)


def test_linear_pipeline_with_scaler(data, tmp_path):
    """A StandardScaler before the model: φ of the raw columns are shap's on the scaled rows."""
    X, y = data
    pipe = make_pipeline(StandardScaler(), LogisticRegression()).fit(X, y)
    path = _save(pipe, X, tmp_path / "pipe.onnx")
    scaler, lr = pipe.steps[0][1], pipe.steps[1][1]
    bg, x = X[:80], X[100:120]
    e = oe.explain(oe.load(path), x, "linear_shap", background=bg, target=2)
    ref = np.asarray(shap.LinearExplainer(lr, scaler.transform(bg)).shap_values(scaler.transform(x)))
    ref = ref[:, :, 2] if ref.shape[-1] == 3 else ref[2]
    np.testing.assert_allclose(e.attribution, ref, atol=1e-5 * np.abs(ref).max())


def test_onnxruntime_shipped_logreg_iris():
    """A real file: onnxruntime's own ``datasets/logreg_iris.onnx`` (one-vs-rest: LOGISTIC, then an L1
    Normalizer and a ZipMap; 2 declared features with 4 coefficients per class, of which onnxruntime reads
    the first 2 × 3). The explained output is checked to be the node's normalised scores, and the
    attributions are shap's LinearExplainer on the coefficients onnxruntime uses."""
    import onnxruntime.datasets

    path = onnxruntime.datasets.get_example("logreg_iris.onnx")
    model = oe.load(path)
    x = np.array([[5.1, 3.5], [6.2, 2.9], [7.3, 3.0]], np.float32)
    e = oe.explain(model, x, "auto")
    assert e.method == "linear_shap" and "normalised per row by" in e.extras["space"]
    node = onnx.load(path).graph.node[0]
    coef = np.asarray(next(a.floats for a in node.attribute if a.name == "coefficients"))[:6].reshape(3, 2)
    icpt = np.asarray(next(a.floats for a in node.attribute if a.name == "intercepts"))
    ref = np.asarray(shap.LinearExplainer((coef, icpt), x).shap_values(x))
    ref = ref[np.arange(3), :, e.target] if ref.shape[-1] == 3 else ref[e.target, np.arange(3)]
    np.testing.assert_allclose(e.attribution, ref, atol=1e-5)
    np.testing.assert_array_equal(e.target, model.predict(x).argmax(1))
