"""The bundled models: they load, pass parity, and reach their stated accuracy on held-out data computed
here from the bundled data (not from stored predictions)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from conftest import ROOT

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


def test_shapes_keeps_batchnorm_and_residual_adds_and_lrp_conserves_nothing_silently():
    m = oe.load(MODELS / "shapes.onnx")
    ops = m.op_histogram()
    assert ops["BatchNormalization"] >= 6 and ops["Add"] >= 2 and ops["MaxPool"] == 1
    x = np.load(MODELS / "samples" / "shapes.npy")
    e = oe.explain(m, x, "lrp", composite="epsilon_plus")
    rules = set(e.extras["rules"].values())
    assert "Add: norm" in rules and not e.extras["fallback_nodes"]


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
