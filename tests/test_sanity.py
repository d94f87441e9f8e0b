"""Model parameter randomisation (Adebayo et al. 2018) on the converted graph: equal to Quantus' MPRT on
the torch source (same seeds, same layers, same similarity), the gradient passes, a method that ignores
the model fails."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import onnx_explain as oe
from onnx_explain.methods.base import METHODS, register_method
from onnx_explain.sanity import sanity_check

quantus = pytest.importorskip("quantus")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(), torch.nn.Linear(128, 10),
    ).eval()  # fmt: skip
    x = torch.randn(4, 3, 16, 16)
    path = tmp_path_factory.mktemp("mprt") / "tiny.onnx"
    torch.onnx.export(net, (x,), str(path), dynamo=False, opset_version=17, input_names=["x"],
                      dynamic_axes={"x": {0: "b"}})  # fmt: skip
    return net, x, oe.load(path)


def _gradient(model, inputs, targets, **kwargs):
    xi = torch.as_tensor(inputs).requires_grad_(True)
    model(xi).gather(1, torch.as_tensor(targets).reshape(-1, 1)).sum().backward()
    return xi.grad.detach().numpy()


@pytest.mark.parametrize(
    ("order", "quantus_order"), [("cascading", "top_down"), ("independent", "independent")]
)
def test_equals_quantus_mprt(order, quantus_order, tiny):
    net, x, model = tiny
    r = sanity_check(model, x.numpy(), "gradient", order=order)
    assert r["layers"] == (
        ["/6/Gemm", "/2/Conv", "/0/Conv"] if order == "cascading" else ["/0/Conv", "/2/Conv", "/6/Gemm"]
    )
    y = r["target"]
    q = quantus.MPRT(layer_order=quantus_order, seed=42, disable_warnings=True)(
        model=net, x_batch=x.numpy(), y_batch=y, a_batch=_gradient(net, x.numpy(), y), explain_func=_gradient,
        device="cpu",
    )  # fmt: skip
    want = np.array([q[k] for k in q if k != "original"])
    np.testing.assert_allclose(r["similarity"], want, atol=1e-6)


def test_gradient_passes_and_a_model_blind_method_fails(tiny):
    _, x, model = tiny

    @register_method("_edges_test", "a Sobel edge map of the input: ignores the model")
    def edges(scorer, x, target, generator):
        gx = x[..., :, 1:] - x[..., :, :-1]
        return torch.nn.functional.pad(gx.abs(), (0, 1)), {}

    try:
        assert sanity_check(model, x.numpy(), "gradient")["passed"] is True
        r = sanity_check(model, x.numpy(), "_edges_test")
        assert r["passed"] is False and np.allclose(r["mean"], 1.0)
        assert len(sanity_check(model, x.numpy(), "gradient", layers=1)["layers"]) == 1
    finally:
        METHODS.pop("_edges_test")


def test_audit_shows_the_check(tiny, tmp_path):
    import json

    from click.testing import CliRunner

    from onnx_explain.cli import main

    _, x, model = tiny
    path = tmp_path / "m.onnx"
    import onnx

    onnx.save(model.proto, path)
    np.save(tmp_path / "x.npy", x.numpy())
    out = tmp_path / "a"
    r = CliRunner().invoke(main, ["audit", str(path), str(tmp_path / "x.npy"), "-o", str(out), "--method", "gradient",
                                  "--metric", "deletion", "--sanity-layers", "2"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "sanity gradient" in r.output and "passes" in r.output
    sc = json.loads((out / "report.json").read_text())["sanity"]["gradient"]
    want = sanity_check(model, x.numpy(), "gradient", layers=2, check_layers=2)
    assert sc["layers"] == want["layers"] and sc["passed"] is True
    np.testing.assert_allclose(sc["mean_similarity"], want["mean"], atol=1e-9)
    assert "Sanity check" in (out / "report.html").read_text()
    r = CliRunner().invoke(main, ["audit", str(path), str(tmp_path / "x.npy"), "-o", str(tmp_path / "b"),
                                  "--method", "gradient", "--metric", "deletion", "--sanity-layers", "0"])  # fmt: skip
    assert r.exit_code == 0 and "sanity" not in json.loads((tmp_path / "b" / "report.json").read_text())


def test_lrp_follows_weights_changed_in_place(tiny):
    """LRP caches its graph per converted model; a weight written in place (a randomisation step, a user
    editing the model) rebuilds it: the result equals that of a fresh copy, not the trained model's."""
    import copy

    from onnx_explain.explainer import converted
    from onnx_explain.sanity import randomisation_layers

    _, x, model = tiny
    module = copy.deepcopy(converted(model, "cpu", "logit", (x.numpy(), {})))
    before = oe.explain(module, x.numpy(), "lrp", [1, 2, 3, 4], layout="NCHW").attribution
    torch.manual_seed(1)
    randomisation_layers(module)[-1][1].reset_parameters()
    after = oe.explain(module, x.numpy(), "lrp", [1, 2, 3, 4], layout="NCHW").attribution
    fresh = oe.explain(copy.deepcopy(module), x.numpy(), "lrp", [1, 2, 3, 4], layout="NCHW").attribution
    np.testing.assert_allclose(after, fresh, atol=1e-6)
    assert np.abs(after - before).max() > 1e-3
