"""LRP through scikit-learn preprocessing exported by skl2onnx: a StandardScaler (ai.onnx.ml Scaler) passes
each column's relevance to that column, so LRP of the pipeline at x equals LRP of the network alone at the
scaled x."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import onnx_explain as oe

pytest.importorskip("sklearn")
from skl2onnx import to_onnx  # noqa: E402
from sklearn.datasets import make_classification  # noqa: E402
from sklearn.neural_network import MLPClassifier  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402


@pytest.mark.parametrize("composite", ["epsilon_plus", "epsilon_alpha2_beta1"])
def test_lrp_through_a_scaler(composite, tmp_path):
    X, y = make_classification(300, 6, n_informative=4, random_state=0, n_classes=3, n_clusters_per_class=1)
    X = X.astype(np.float32)
    pipe = make_pipeline(StandardScaler(), MLPClassifier((16,), max_iter=300, random_state=0)).fit(X, y)
    onnx.save(to_onnx(pipe, X[:1], options={"zipmap": False}), tmp_path / "pipe.onnx")
    onnx.save(to_onnx(pipe.steps[1][1], X[:1], options={"zipmap": False}), tmp_path / "mlp.onnx")
    x = X[:8]
    e = oe.explain(oe.load(tmp_path / "pipe.onnx"), x, "lrp", composite=composite)
    alone = oe.explain(
        oe.load(tmp_path / "mlp.onnx"), pipe.steps[0][1].transform(x), "lrp", composite=composite
    )
    np.testing.assert_array_equal(e.target, alone.target)
    np.testing.assert_allclose(e.attribution, alone.attribution, rtol=1e-4, atol=1e-6)
    assert np.abs(e.attribution).sum() > 0


def _zennit_epsilon(x, w, b, seed, target):
    """Zennit's ε rule on the linear map X Wᵀ + b, the relevance ``seed`` put on column ``target``."""
    import torch
    from zennit.composites import NameMapComposite
    from zennit.rules import Epsilon

    lin = torch.nn.Sequential(torch.nn.Linear(w.shape[1], w.shape[0]))
    with torch.no_grad():
        lin[0].weight.copy_(torch.from_numpy(w))
        lin[0].bias.copy_(torch.from_numpy(b))
    xt = torch.from_numpy(x).requires_grad_(True)
    with NameMapComposite([(["0"], Epsilon(epsilon=1e-6))]).context(lin) as m:
        z = m(xt)
        grad = torch.zeros_like(z)
        grad[torch.arange(len(x)), target] = torch.from_numpy(seed).float()
        (r,) = torch.autograd.grad(z, xt, grad)
    return r.numpy()


@pytest.mark.parametrize("kind", ["multinomial", "ovr", "binary"])
def test_lrp_of_a_linear_classifier_is_zennit_epsilon_through_its_post_transform(kind, tmp_path):
    # skl2onnx writes ai.onnx.ml LinearClassifier: SOFTMAX (multinomial), LOGISTIC + Normalizer (one vs
    # rest) or one coefficient row for two classes, [1 - p, p]; relevance passes the post transform as an
    # activation's and the margin X Wᵀ + b is shared by ε (Zennit's Epsilon on the same Linear)
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    classes = 2 if kind == "binary" else 3
    X, y = make_classification(
        200, 5, n_informative=3, random_state=1, n_classes=classes, n_clusters_per_class=1
    )
    X = X.astype(np.float32)
    clf = LogisticRegression(max_iter=500).fit(X, y)
    if kind == "ovr":
        clf = OneVsRestClassifier(LogisticRegression(max_iter=500)).fit(X, y)
    onx = to_onnx(clf, X[:1], options={"zipmap": False}, target_opset={"": 17, "ai.onnx.ml": 1})
    assert "LinearClassifier" in [n.op_type for n in onx.graph.node]
    onnx.save(onx, tmp_path / "lr.onnx")
    m = oe.load(tmp_path / "lr.onnx")
    x = X[:6]
    e = oe.explain(m, x, "lrp")
    rules = oe.explain(m, x, "lrp", mode="rules")  # the rule as a second graph: the same relevance
    np.testing.assert_allclose(rules.attribution, e.attribution, rtol=1e-5, atol=1e-7)
    probs = m.predict(x)
    t = np.asarray(e.target)
    seed = probs[np.arange(len(x)), t]  # the explained score, its relevance at the output
    if kind == "ovr":
        w = np.stack([c.coef_[0] for c in clf.estimators_]).astype(np.float32)
        b = np.array([c.intercept_[0] for c in clf.estimators_], np.float32)
    else:
        w, b = clf.coef_.astype(np.float32), clf.intercept_.astype(np.float32)
    if kind == "binary":  # [1 - p, p] of one margin s: both columns reach s, column 0 through -s
        w, b = np.concatenate([-w, w]), np.concatenate([-b, b])
    want = _zennit_epsilon(x, w, b, seed, t)
    np.testing.assert_allclose(e.attribution, want, rtol=2e-4, atol=1e-6)
    assert e.extras["rules"] and "linear_scores" not in str(e.extras.get("fallback_nodes"))
