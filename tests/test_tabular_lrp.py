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
