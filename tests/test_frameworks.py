"""Models from other frameworks: scikit-learn through skl2onnx (converted here) and Keras through
tf2onnx (a shipped fixture made by tests/fixtures/make_keras_fixture.py, with TensorFlow's gradient)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import FIXTURES, assert_gradients_match, input_gradient

import onnx_explain as oe
from onnx_explain.errors import InputSpecError

skl2onnx = pytest.importorskip("skl2onnx")


def _iris():
    from sklearn.datasets import load_iris

    x, y = load_iris(return_X_y=True)
    return x.astype(np.float32), y


def _fd_gradient(fn, x: np.ndarray, target: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central differences of fn(x)[b, target_b] in float64."""
    x = x.astype(np.float64)
    grad = np.zeros_like(x)
    for j in range(x.shape[1]):
        d = np.zeros_like(x)
        d[:, j] = eps
        hi, lo = fn(x + d), fn(x - d)
        grad[:, j] = (hi[np.arange(len(x)), target] - lo[np.arange(len(x)), target]) / (2 * eps)
    return grad


def _estimators():
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import Normalizer, StandardScaler

    return {
        "mlp": MLPClassifier(hidden_layer_sizes=(16,), max_iter=2000, random_state=0),
        "scaler-mlp": make_pipeline(
            StandardScaler(), MLPClassifier(hidden_layer_sizes=(8,), max_iter=2000, random_state=0)
        ),
        "normalizer-logreg": make_pipeline(Normalizer(), LogisticRegression(max_iter=500)),
        "logreg-binary": LogisticRegression(max_iter=500),
    }


@pytest.mark.parametrize("name", list(_estimators()))
def test_sklearn_classifier_probabilities_and_gradient(name, tmp_path):
    x, y = _iris()
    if name == "logreg-binary":
        y = (y == 2).astype(int)
    est = _estimators()[name].fit(x, y)
    proto = skl2onnx.to_onnx(est, x[:1], target_opset={"": 17, "ai.onnx.ml": 3})  # ZipMap output kept
    proto.ir_version = min(proto.ir_version, 10)
    path = tmp_path / f"{name}.onnx"
    path.write_bytes(proto.SerializeToString())

    m = oe.load(path)
    # the label output (int64) is skipped, the ZipMap output stands for its probability tensor
    assert m.output.is_float
    assert any("ZipMap" in n for n in m.notes)
    probe = x[::10]
    np.testing.assert_allclose(m.predict(probe), est.predict_proba(probe), rtol=1e-4, atol=1e-5)
    module = m.torch_module(probe=probe)
    with torch.no_grad():
        np.testing.assert_allclose(
            module(torch.from_numpy(probe)).numpy(), m.predict(probe), rtol=1e-5, atol=1e-6
        )

    target = est.predict(probe).astype(int) if name != "logreg-binary" else np.ones(len(probe), int)
    got = input_gradient(module, torch.from_numpy(probe), torch.from_numpy(target))
    want = _fd_gradient(est.predict_proba, probe, target)
    assert_gradients_match(got, want, rel=1e-3, cos=0.9999)

    # asking for the ZipMap output by its own name means its tensor
    assert oe.load(path, output="output_probability").output.name == m.output.name


def test_keras_cnn_from_tf2onnx_matches_keras_and_tensorflow_gradient():
    ref = np.load(FIXTURES / "keras_cnn_ref.npz")
    path = FIXTURES / "keras_cnn.onnx"
    with pytest.raises(InputSpecError, match="several float outputs"):
        oe.load(path)
    m = oe.load(path, output="logits")
    assert m.input.shape[1:] == (16, 16, 3)  # NHWC as Keras made it
    np.testing.assert_allclose(m.predict(ref["x"]), ref["logits"], rtol=1e-4, atol=1e-5)
    module = m.torch_module(probe=ref["x"])
    got = input_gradient(module, torch.from_numpy(ref["x"]), torch.from_numpy(ref["target"]))
    assert_gradients_match(got, ref["grad"], rel=1e-4, cos=0.9999)

    probs = oe.load(path, output="probs")
    np.testing.assert_allclose(probs.predict(ref["x"]), ref["probs"], rtol=1e-4, atol=1e-6)
    probs.torch_module(probe=ref["x"])  # raises ParityError if torch and onnxruntime disagree
    assert probs.parity.passed and probs.parity.probe == "given"
