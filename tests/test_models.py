"""The bundled models: they load, pass parity, and reach their stated accuracy on held-out data computed
here from the bundled data (not from stored predictions)."""

from __future__ import annotations

import json
import sys

import numpy as np
import onnx
import pytest
from conftest import ROOT
from onnx import numpy_helper

import onnx_explain as oe

MODELS = ROOT / "models"
sys.path.insert(0, str(MODELS))

from build import digits_data, shapes_data, wine_data  # noqa: E402

MINIMUM = {"digits": 0.95, "digits_noise": 0.9, "shapes": 0.9, "wine": 0.9}


def _held_out(name):
    if name.startswith("digits"):
        _, _, x, y = digits_data()
    elif name == "shapes":
        _, _, x, y, _ = shapes_data()
    else:
        _, _, x, y = wine_data()
    return x, y


@pytest.mark.parametrize("name", list(MINIMUM))
def test_bundled_model_accuracy_and_parity(name):
    m = oe.load(MODELS / f"{name}.onnx")
    x, y = _held_out(name)
    m.torch_module(probe=x[:16])
    assert m.parity.passed
    acc = float((m.predict(x).argmax(1) == y).mean())
    assert acc >= MINIMUM[name], acc
    stated = json.loads((MODELS / f"{name}.json").read_text())
    assert abs(acc - stated["test_accuracy"]) < 5e-3 and stated["n_test"] == len(y)


def _without_biases(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Every additive constant set to zero (Conv and Gemm biases, BatchNorm shift and running mean): the
    same architecture as a bias-free network, on which LRP must conserve relevance exactly."""
    inits = {t.name: t for t in proto.graph.initializer}
    for node in proto.graph.node:
        for k in {"Conv": [2], "Gemm": [2], "BatchNormalization": [2, 3]}.get(node.op_type, []):
            t = inits[node.input[k]]
            t.CopyFrom(numpy_helper.from_array(np.zeros_like(numpy_helper.to_array(t)), t.name))
    return proto


def test_shapes_lrp_conserves_relevance(tmp_path):
    m = oe.load(MODELS / "shapes.onnx")
    ops = m.op_histogram()
    assert ops["BatchNormalization"] >= 6 and ops["Add"] >= 2 and ops["MaxPool"] == 1
    x = np.load(MODELS / "samples" / "shapes.npy")
    e = oe.explain(m, x, "lrp", composite="epsilon_plus", layer_relevance=True)
    rules = e.extras["rules"]
    assert [k for k, v in rules.items() if v == "Add: norm"] == ["/Add", "/Add_1"] and not e.extras[
        "fallback_nodes"
    ]
    assert not any(v.startswith("BatchNormalization") for v in rules.values())  # merged into the convolutions
    # the trained model has biases, which absorb relevance; the parameter-free rules still conserve it
    # layer by layer: both residual Adds (Norm), the global average pool (Norm) and every ReLU (Pass)
    free = [
        layer
        for layer in e.extras["layer_relevance"]
        if layer["layer"].endswith(("(Add)", "(GlobalAveragePool)", "(Relu)"))
    ]
    assert len(free) == 3 + 6
    for layer in free:
        np.testing.assert_allclose(layer["relevance_in"], layer["relevance_out"], rtol=1e-5, atol=1e-5)
    # the same architecture without biases: Σ R = f_c(x) for every composite
    path = tmp_path / "shapes_no_bias.onnx"
    onnx.save(_without_biases(onnx.load(MODELS / "shapes.onnx")), path)
    bias_free = oe.load(path)
    for composite in ("epsilon_plus", "epsilon_alpha2_beta1", "epsilon_plus_flat"):
        c = oe.explain(bias_free, x, "lrp", composite=composite)
        np.testing.assert_allclose(c.attribution.reshape(len(x), -1).sum(1), c.score, rtol=5e-4)
        np.testing.assert_allclose(c.extras["delta"], 0, atol=5e-4 * np.abs(c.score).max())
    # control: a plain gradient at a residual Add hands its whole relevance to both branches; two Adds in
    # a row double it twice: Σ R = 4 f_c
    dup = oe.explain(bias_free, x, "lrp", composite="epsilon_plus", rules={"Add": "gradient"})
    np.testing.assert_allclose(dup.extras["delta"], 3 * dup.score, rtol=1e-3)


def test_shapes_masks_score_localisation():
    m = oe.load(MODELS / "shapes.onnx")
    x = np.load(MODELS / "samples" / "shapes.npy")
    masks = np.load(MODELS / "samples" / "shapes_masks.npy")
    e = oe.explain(m, x, "gradient_x_input")
    r = oe.evaluate(None, x, e.attribution, "localisation", masks=masks)
    assert r["scores"].shape == (8,) and ((0 <= r["scores"]) & (r["scores"] <= 1)).all()
    # a map equal to the mask localises perfectly; its complement not at all
    perfect = oe.evaluate(None, x, masks[:, None].astype(float), "localisation", masks=masks)
    np.testing.assert_array_equal(perfect["scores"], 1.0)
    np.testing.assert_array_equal(perfect["pointing"], 1.0)
    none = oe.evaluate(None, x, (~masks)[:, None].astype(float), "localisation", masks=masks)
    np.testing.assert_array_equal(none["scores"], 0.0)


def test_the_packaged_demo_data_are_the_bundled_models():
    # onnx_explain/data ships the demo's model and samples (pip installs no models/ folder): the copies
    # must be byte-identical to what models/build.py writes
    from onnx_explain.data import BUNDLED, bundled

    for name, original in BUNDLED.items():
        assert bundled(name).read_bytes() == (MODELS / original).read_bytes(), (
            f"onnx_explain/data/{name} differs from models/{original}: copy it again after models/build.py"
        )
