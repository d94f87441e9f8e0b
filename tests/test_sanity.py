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
    page = (out / "report.html").read_text()
    assert "Sanity check" in page and "the randomisation curves" in page  # the paper's curves, drawn
    assert (out / "figures" / "sanity.png").read_bytes()[:4] == b"\x89PNG"
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


def test_smooth_equals_quantus_smooth_mprt(tiny, monkeypatch):
    """SmoothMPRT: the mean explanation over noisy copies (the last noise-free), compared layer by layer.
    Quantus draws its noise from numpy's global generator anew for every explanation; ours draws it once
    and shares it between the models compared. Quantus' draws are replaced by ours (cycled) so that both
    see the same noise; the similarities then agree to float rounding."""
    net, x, model = tiny
    n = 4
    r = sanity_check(model, x.numpy(), "gradient", variant="smooth", nr_samples=n, noise_seed=3)
    assert r["variant"] == "smooth" and r["similarity"].shape == (3, len(x))
    rng = np.random.default_rng(3)
    draws = [rng.standard_normal(x.shape) for _ in range(n - 1)]
    calls = iter(range(10**6))
    monkeypatch.setattr(np.random, "randn", lambda *shape: draws[next(calls) % (n - 1)])
    q = quantus.SmoothMPRT(layer_order="top_down", seed=42, nr_samples=n, disable_warnings=True)(
        model=net, x_batch=x.numpy(), y_batch=np.asarray(r["target"]), explain_func=quantus.explain,
        explain_func_kwargs={"method": "Gradient", "reduce_axes": ()}, device="cpu",
    )  # fmt: skip
    assert np.allclose(q["original"], 1.0)  # the same noise: the trained model's maps agree exactly
    want = np.array([q[k] for k in q if k != "original"])
    np.testing.assert_allclose(r["similarity"], want, atol=1e-6)
    # the noise matters: with no noise the smooth test is the plain one
    plain = sanity_check(model, x.numpy(), "gradient")
    assert np.abs(r["similarity"] - plain["similarity"]).max() > 1e-3
    flat = sanity_check(model, x.numpy(), "gradient", variant="smooth", nr_samples=n, noise_magnitude=0.0)
    np.testing.assert_allclose(flat["similarity"], plain["similarity"], atol=1e-9)


def test_efficient_equals_quantus_efficient_mprt(tiny):
    """EfficientMPRT: the relative rise of the explanation's discrete entropy once every layer is random."""
    net, x, model = tiny
    r = sanity_check(model, x.numpy(), "gradient", variant="efficient")
    assert r["layers"] == ["/6/Gemm", "/2/Conv", "/0/Conv"] and r["similarity"].shape == (1, len(x))
    y = r["target"]
    q = quantus.EfficientMPRT(seed=42, disable_warnings=True)(
        model=net, x_batch=x.numpy(), y_batch=y, explain_func=_gradient, device="cpu"
    )
    np.testing.assert_allclose(r["similarity"][0], q, rtol=1e-6)
    np.testing.assert_allclose(r["similarity"][0], (r["entropy"][1] - r["entropy"][0]) / r["entropy"][0])


def test_discrete_entropy_is_numpy_histogram_entropy():
    from scipy.stats import entropy

    from onnx_explain.sanity import discrete_entropy

    a = np.random.default_rng(0).standard_normal((3, 50))
    a[2] = 1.5  # a constant row: one full bin, entropy 0
    want = [entropy(np.histogram(row, bins=7)[0]) for row in a]
    np.testing.assert_allclose(discrete_entropy(a, 7), want)
    assert discrete_entropy(a, 7)[2] == 0.0 and discrete_entropy(a[:1], 1)[0] == 0.0


def test_variants_pass_the_gradient_and_fail_a_model_blind_method(tiny):
    _, x, model = tiny

    @register_method("_edges_test2", "a Sobel edge map of the input: ignores the model")
    def edges(scorer, x, target, generator):
        gx = x[..., :, 1:] - x[..., :, :-1]
        return torch.nn.functional.pad(gx.abs(), (0, 1)), {}

    from pathlib import Path

    root = Path(__file__).parent.parent / "models"
    digits, xd = oe.load(root / "digits.onnx"), np.load(root / "samples" / "digits.npy")[:8]
    try:
        assert sanity_check(model, x.numpy(), "gradient", variant="smooth", nr_samples=4)["passed"] is True
        assert (
            sanity_check(model, x.numpy(), "_edges_test2", variant="smooth", nr_samples=4)["passed"] is False
        )
        # efficient: the trained digits CNN's gradient gets more complex once the model is random; the
        # random tiny CNN's does not (it was random already); the model-blind map's entropy does not move
        r = sanity_check(digits, xd, "gradient", variant="efficient")
        assert r["passed"] is True and (r["entropy"][1] > r["entropy"][0]).mean() >= 0.75
        assert sanity_check(model, x.numpy(), "gradient", variant="efficient")["passed"] is False
        r = sanity_check(model, x.numpy(), "_edges_test2", variant="efficient")
        assert r["passed"] is False and np.allclose(r["similarity"], 0.0)
    finally:
        METHODS.pop("_edges_test2")
    with pytest.raises(oe.OptionError, match="variant"):
        sanity_check(model, x.numpy(), "gradient", variant="fast")


def test_audit_runs_the_efficient_variant(tmp_path):
    """`audit --sanity-test efficient` on the bundled digits CNN: the report's check is the entropy rise of
    sanity_check(variant='efficient'), valid against the report schema, and a policy reads it."""
    import json
    from pathlib import Path

    from click.testing import CliRunner

    from onnx_explain.cli import main

    root = Path(__file__).parent.parent / "models"
    x = np.load(root / "samples" / "digits.npy")[:8]
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "p.json").write_text(json.dumps({"rule": [{"check": "sanity", "method": "gradient"}]}))
    out = tmp_path / "a"
    r = CliRunner().invoke(main, ["audit", str(root / "digits.onnx"), str(tmp_path / "x.npy"), "-o", str(out),
                                  "--method", "gradient", "--metric", "deletion", "--sanity-test", "efficient",
                                  "--policy", str(tmp_path / "p.json")])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "entropy rise, every layer randomised" in r.output
    report = json.loads((out / "report.json").read_text())
    sc = report["sanity"]["gradient"]
    want = sanity_check(oe.load(root / "digits.onnx"), x, "gradient", variant="efficient")
    assert sc["variant"] == "efficient" and sc["passed"] is True and sc["layers"] == want["layers"]
    np.testing.assert_allclose(sc["mean_similarity"], want["mean"], atol=1e-9)
    assert "EfficientMPRT" in (out / "report.html").read_text()
    assert not (out / "figures" / "sanity.png").exists()  # one value per method: no curve to draw
    import jsonschema

    schema = Path(oe.__file__).parent / "schemas" / "audit_report.schema.json"
    jsonschema.validate(report, json.loads(schema.read_text()))


def test_cams_are_checked_at_the_layer_they_explain():
    """A CAM's check randomises the graph and explains at the same layer as the explanation did: the
    default layer when none is named (the audit's case), else the named one."""
    from pathlib import Path

    from onnx_explain.layers import resolve_layer

    root = Path(__file__).parent.parent / "models"
    model, x = oe.load(root / "digits.onnx"), np.load(root / "samples" / "digits.npy")[:4]
    node = resolve_layer(model.proto, None)["node"]
    r = sanity_check(model, x, "gradcam", layers=2)
    np.testing.assert_allclose(r["original"], oe.explain(model, x, "gradcam", layer=node).attribution)
    np.testing.assert_allclose(
        r["similarity"], sanity_check(model, x, "gradcam", layers=2, layer=node)["similarity"]
    )
    other = resolve_layer(model.proto, "/features/features.3/Conv")["node"]
    assert other != node
    assert not np.allclose(
        sanity_check(model, x, "gradcam", layers=2, layer=other)["similarity"], r["similarity"]
    )
