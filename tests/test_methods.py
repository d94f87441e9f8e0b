"""Attribution methods: the properties of docs/methods.md §2.1–2.4 on exact models, determinism, batch-size
independence, targets, output spaces and integer inputs."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from conftest import export
from torch import nn

import onnx_explain as oe
from onnx_explain.methods.integrated_gradients import QUADRATURES, quadrature
from onnx_explain.methods.smoothtaylor import adaptive_noising

torch.set_default_dtype(torch.float32)


def _affine(d=6, c=3, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(d, c).double().eval()


def _smooth_mlp(d=5, seed=0):
    torch.manual_seed(seed)
    return (
        nn.Sequential(nn.Linear(d, 16), nn.Tanh(), nn.Linear(16, 16), nn.Softplus(), nn.Linear(16, 3))
        .double()
        .eval()
    )


def _x(shape, seed=1):
    return np.random.default_rng(seed).standard_normal(shape)


# ---------------------------------------------------------------- SmoothGrad
def test_smoothgrad_sigma_zero_is_the_gradient():
    m, x = _smooth_mlp(), _x((4, 5))
    g = oe.explain(m, x, "gradient", target=1).attribution
    sg = oe.explain(m, x, "smoothgrad", target=1, sigma=0.0, n_samples=7).attribution
    np.testing.assert_allclose(sg, g, rtol=1e-6)


@pytest.mark.parametrize("noise", ["absolute", "relative"])
def test_smoothgrad_of_an_affine_model_is_its_weight(noise):
    m, x = _affine(), _x((3, 6))
    sg = oe.explain(m, x, "smoothgrad", target=[0, 2, 1], sigma=0.7, noise=noise, n_samples=5).attribution
    w = m.weight.detach().numpy()
    np.testing.assert_allclose(sg, w[[0, 2, 1]], rtol=1e-6)


def test_smoothgrad_squared_is_vargrad_plus_smoothgrad_squared():
    m, x = _smooth_mlp(), _x((3, 5))
    kw = {"target": 0, "sigma": 0.3, "n_samples": 9, "seed": 4}
    mean = oe.explain(m, x, "smoothgrad", reduce="mean", **kw).attribution
    sq = oe.explain(m, x, "smoothgrad", reduce="mean_sq", **kw).attribution
    var = oe.explain(m, x, "smoothgrad", reduce="var", **kw).attribution
    assert (var >= 0).all()
    np.testing.assert_allclose(sq, var + mean * mean, rtol=1e-5, atol=1e-7)


def test_smoothgrad_of_a_quadratic_is_exact_given_the_noise():
    # f = 1/2 xᵀAx + bᵀx:  SG = A x + b + A mean(ε)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4, 4))
    a = a + a.T
    b = rng.standard_normal(4)
    A, bb = torch.tensor(a), torch.tensor(b)

    class Quad(nn.Module):
        def forward(self, x):
            return (0.5 * (x @ A * x).sum(1) + x @ bb)[:, None]

    x = _x((2, 4))
    eps = rng.standard_normal((2 * 6, 4))
    sg = oe.explain(Quad(), x, "smoothgrad", target=0, perturbations=eps).attribution
    want = x @ a + b + eps.reshape(2, 6, 4).mean(1) @ a
    np.testing.assert_allclose(sg, want, rtol=1e-6)


def test_include_clean_sample_uses_zero_noise_for_the_last_copy():
    m, x = _smooth_mlp(), _x((2, 5))
    eps = np.random.default_rng(3).standard_normal((2 * 4, 5))
    got = oe.explain(m, x, "smoothgrad", target=0, perturbations=eps, include_clean_sample=True).attribution
    eps_clean = eps.reshape(2, 4, 5).copy()
    eps_clean[:, -1] = 0
    want = oe.explain(m, x, "smoothgrad", target=0, perturbations=eps_clean.reshape(8, 5)).attribution
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_smoothing_passes_the_noisy_input_to_the_base_method():
    # SG over gradient×input = mean over k of (x+ε_k) ⊙ g(x+ε_k), computed here by hand
    m, x = _smooth_mlp(), _x((2, 5))
    eps = np.random.default_rng(5).standard_normal((2 * 3, 5)) * 0.2
    got = oe.explain(m, x, "smoothgrad", base="gradient_x_input", target=1, perturbations=eps).attribution
    noisy = (x[:, None] + eps.reshape(2, 3, 5)).reshape(6, 5)
    g = oe.explain(m, noisy, "gradient", target=1).attribution
    np.testing.assert_allclose(got, (noisy * g).reshape(2, 3, 5).mean(1), rtol=1e-10)
    # and over IG (generic path): each noisy copy gets its own IG
    got_ig = oe.explain(
        m, x, "smoothgrad", base="integrated_gradients", target=1, perturbations=eps, n_steps=6
    ).attribution
    ig = oe.explain(m, noisy, "integrated_gradients", target=1, n_steps=6).attribution
    np.testing.assert_allclose(got_ig, ig.reshape(2, 3, 5).mean(1), rtol=1e-10)


# ---------------------------------------------------------------- Integrated Gradients
@pytest.mark.parametrize("method", QUADRATURES)
def test_quadrature_weights_sum(method):
    a, w = quadrature(method, 10)
    assert ((a >= 0) & (a <= 1)).all()
    assert w.sum() == pytest.approx(0.9 if method == "captum_trapezoid" else 1.0, abs=1e-12)


@pytest.mark.parametrize("method", [q for q in QUADRATURES if q != "captum_trapezoid"])
@pytest.mark.parametrize("baseline", ["zero", 0.5, "per-channel", "array"])
def test_ig_is_exact_on_a_linear_model(method, baseline):
    m, x = _affine(), _x((3, 6))
    base = {"per-channel": np.linspace(-1, 1, 6), "array": _x((3, 6), 9)}.get(baseline, baseline)
    e = oe.explain(
        m, x, "integrated_gradients", target=[2, 0, 1], n_steps=7, quadrature_method=method, baseline=base
    )
    x0 = {"zero": 0.0, 0.5: 0.5}.get(baseline, base)
    w = m.weight.detach().numpy()[[2, 0, 1]]
    np.testing.assert_allclose(e.attribution, (x - x0) * w, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(e.extras["delta"], 0, atol=1e-10)


def test_captum_trapezoid_is_biased_by_one_over_n():
    m, x = _affine(), _x((2, 6))
    e = oe.explain(m, x, "integrated_gradients", target=0, n_steps=10, quadrature_method="captum_trapezoid")
    f = (
        m(torch.tensor(x)).detach().numpy()[:, 0]
        - m(torch.zeros(1, 6, dtype=torch.float64)).detach().numpy()[0, 0]
    )
    np.testing.assert_allclose(e.attribution.sum(1), 0.9 * f, rtol=1e-10)


def test_ig_of_x_equal_to_baseline_is_zero():
    m, x = _smooth_mlp(), _x((2, 5))
    e = oe.explain(m, x, "integrated_gradients", target=0, baseline=x)
    assert np.abs(e.attribution).max() == 0


@pytest.mark.parametrize(("method", "min_ratio"), [("riemann_left", 1.6), ("riemann_right", 1.6),
                                                   ("riemann_middle", 3.0), ("trapezoid", 3.0)])  # fmt: skip
def test_ig_completeness_error_shrinks_at_the_documented_rate(method, min_ratio):
    m, x = _smooth_mlp(seed=3), _x((4, 5), 2) * 2
    errs = []
    for n in (4, 8, 16, 32):
        d = oe.explain(m, x, "integrated_gradients", target=1, n_steps=n, quadrature_method=method).extras[
            "delta"
        ]
        errs.append(np.abs(d).max())
    ratios = [errs[i] / errs[i + 1] for i in range(3)]
    assert min(ratios) >= min_ratio, (errs, ratios)


def test_gauss_legendre_is_converged_by_eight_points():
    m, x = _smooth_mlp(seed=3), _x((4, 5), 2)
    d = oe.explain(m, x, "integrated_gradients", target=1, n_steps=8).extras["delta"]
    assert np.abs(d).max() < 1e-7


def test_uniform_and_blur_baselines():
    m, x = _affine(), _x((2, 6))
    e = oe.explain(m, x, "integrated_gradients", target=0, baseline="uniform", n_baselines=4, seed=3)
    assert e.extras["n_baselines"] == 4
    np.testing.assert_allclose(e.extras["delta"], 0, atol=1e-10)  # linear: exact for every baseline
    img = np.random.default_rng(0).standard_normal((1, 2, 12, 12))
    conv = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Flatten(), nn.LazyLinear(4)).double().eval()
    conv(torch.tensor(img))
    eb = oe.explain(conv, img, "integrated_gradients", target=0, baseline="blur", n_steps=8)
    assert abs(eb.extras["delta"][0]) < 1e-10  # the conv net is affine too


# ---------------------------------------------------------------- SmoothTaylor
def test_smoothtaylor_with_explicit_roots():
    m, x = _smooth_mlp(), _x((2, 5))
    roots = x[:, None] + np.random.default_rng(7).standard_normal((2, 4, 5)) * 0.4
    got = oe.explain(m, x, "smoothtaylor", target=2, roots=roots).attribution
    g = oe.explain(m, roots.reshape(8, 5), "gradient", target=2).attribution.reshape(2, 4, 5)
    np.testing.assert_allclose(got, ((x[:, None] - roots) * g).mean(1), rtol=1e-10)


def test_smoothtaylor_on_an_affine_model_sums_to_the_mean_root_difference():
    m, x = _affine(), _x((3, 6))
    roots = x[:, None] + np.random.default_rng(8).standard_normal((3, 5, 6))
    e = oe.explain(m, x, "smoothtaylor", target=1, roots=roots)
    f = lambda z: m(torch.tensor(z)).detach().numpy()[..., 1]  # noqa: E731
    np.testing.assert_allclose(e.attribution.sum(1), f(x) - f(roots).mean(1), rtol=1e-10)


def test_smoothtaylor_sigma_zero_is_zero():
    m, x = _smooth_mlp(), _x((2, 5))
    assert np.abs(oe.explain(m, x, "smoothtaylor", target=0, sigma=0.0, n_roots=5).attribution).max() == 0


def test_adaptive_noising_follows_the_authors_search():
    # objective (σ − 0.7)², start 0.3, lr 0.1: the trace below follows the steps of docs/methods.md §2.4 by hand
    res = adaptive_noising(lambda s: ((s - 0.7) ** 2, torch.tensor(s)), 0.3)
    want = [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.6, 0.69, 0.78, 0.6, 0.681, 0.762, 0.6]
    np.testing.assert_allclose([s for s, _ in res.trace[: len(want)]], want, atol=1e-12)
    assert res.sigma == pytest.approx(0.7) and res.objective == pytest.approx(0.0)
    assert float(res.attribution) == pytest.approx(0.7)


def test_adaptive_noising_stops_after_max_stop_count():
    # an objective that gets worse at every call: lr decays max_stop_count (3) times, the 4th failing
    # iteration breaks; each iteration evaluates the + and then the − direction
    counter = itertools.count()
    res = adaptive_noising(lambda s: (next(counter), None), 1.0)
    assert len(res.trace) == 1 + 2 * 4
    assert res.sigma == 1.0 and res.objective == 0  # the start stays the best


def test_smoothtaylor_adaptive_returns_the_sigma_that_minimises_the_traced_objective():
    m, x = _smooth_mlp(), _x((2, 5))

    def objective(xb, a, t):  # lower is better; SmoothTaylor's magnitude grows with σ
        return float((a.abs().sum() - 0.05) ** 2)

    e = oe.explain(m, x, "smoothtaylor_adaptive", target=0, n_roots=8, max_iteration=8, objective=objective)
    assert e.extras["sigma"].shape == (2,) and len(e.extras["trace"]) == 2
    for b in range(2):
        sigmas, values = np.array(e.extras["trace"][b]).T
        assert sigmas[0] == pytest.approx(np.abs(x[b]).mean())  # the search starts at mean |x|
        assert len(sigmas) > 3 and values.min() < values[0]  # it moved, and found better than its start
        best = int(np.argmin(values))
        assert e.extras["sigma"][b] == pytest.approx(sigmas[best], rel=1e-6)
        assert e.extras["objective"][b] == pytest.approx(values[best], rel=1e-6)
        # the returned map is the one that scored the minimum
        assert objective(x[b], torch.as_tensor(e.attribution[b]), 0) == pytest.approx(values[best], rel=1e-6)


# ---------------------------------------------------------------- determinism, batching, targets
@pytest.mark.parametrize(
    ("method", "opts"),
    [("smoothgrad", {"n_samples": 11}), ("smoothgrad", {"n_samples": 5, "reduce": "var"}),
     ("integrated_gradients", {"n_steps": 9}), ("integrated_gradients", {"baseline": "uniform", "n_baselines": 3}),
     ("smoothtaylor", {"n_roots": 13}), ("smoothgrad", {"base": "integrated_gradients", "n_samples": 3, "n_steps": 4})],
)  # fmt: skip
def test_results_do_not_depend_on_batch_size_and_are_seeded(method, opts):
    m, x = _smooth_mlp(), _x((3, 5))
    ref = oe.explain(m, x, method, batch_size=64, seed=1, **opts).attribution
    for bs in (1, 4, 7):
        np.testing.assert_allclose(
            oe.explain(m, x, method, batch_size=bs, seed=1, **opts).attribution, ref, rtol=1e-12, atol=1e-15
        )  # float64 rounding of differently chunked matmuls, amplified by VarGrad's E[g²] − E[g]²
    if oe.METHODS[method].stochastic or opts.get("baseline") == "uniform":
        assert not np.allclose(oe.explain(m, x, method, seed=2, **opts).attribution, ref)
    # a sample's result is its own: alone, or in another batch at another position, it is the same
    for b in range(3):
        alone = oe.explain(m, x[b : b + 1], method, seed=1, **opts).attribution
        np.testing.assert_allclose(alone[0], ref[b], rtol=1e-10, atol=1e-15)
    shuffled = oe.explain(m, x[::-1].copy(), method, seed=1, **opts).attribution
    np.testing.assert_allclose(shuffled[::-1], ref, rtol=1e-10, atol=1e-15)


def test_targets_predicted_index_per_sample_and_top_k():
    m, x = _smooth_mlp(), _x((4, 5))
    scores = m(torch.tensor(x)).detach().numpy()
    e = oe.explain(m, x, "gradient")
    np.testing.assert_array_equal(e.target, scores.argmax(1))
    np.testing.assert_allclose(e.score, scores.max(1))
    top = oe.explain(m, x, "gradient", target="top:2")
    assert top.attribution.shape == (4, 2, 5)
    order = np.argsort(-scores, 1)[:, :2]
    np.testing.assert_array_equal(top.target, order)
    for k in range(2):
        np.testing.assert_allclose(
            top.attribution[:, k], oe.explain(m, x, "gradient", target=order[:, k]).attribution
        )
    with pytest.raises(oe.InputDataError, match="out of range"):
        oe.explain(m, x, "gradient", target=7)
    with pytest.raises(oe.InputDataError, match="3 targets given for 4 samples"):
        oe.explain(m, x, "gradient", target=[0, 1, 2])


def test_unknown_method_and_option():
    m, x = _smooth_mlp(), _x((1, 5))
    with pytest.raises(oe.OnnxExplainError, match="unknown method 'nope'"):
        oe.explain(m, x, "nope")
    with pytest.raises(TypeError, match="unknown option"):
        oe.explain(m, x, "gradient", sigma=1.0)


# ---------------------------------------------------------------- ONNX specifics
class SoftmaxNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 4))

    def forward(self, x):
        return torch.softmax(self.body(x), dim=-1)


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_softmax_graphs_explain_logits_by_default(exporter, tmp_path):
    torch.manual_seed(0)
    net = SoftmaxNet().eval()
    x = torch.randn(3, 6)
    m = oe.load(export(net, x, tmp_path / "sm.onnx", exporter))
    assert m.logit_name is not None
    np.testing.assert_allclose(
        m.predict(x.numpy(), space="logit"), net.body(x).detach().numpy(), rtol=1e-5, atol=1e-6
    )
    for space, fn in (("logit", net.body), ("output", net)):
        z = x.clone().requires_grad_(True)
        fn(z)[:, 2].sum().backward()
        e = oe.explain(m, x.numpy(), "gradient", target=2, output=space)
        np.testing.assert_allclose(e.attribution, z.grad.numpy(), rtol=1e-4, atol=1e-6)


class TokenNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.head = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3))

    def forward(self, ids):
        return self.head(self.emb(ids).mean(1))


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_integer_inputs_are_attributed_at_the_embedding(exporter, tmp_path):
    torch.manual_seed(0)
    net = TokenNet().eval()
    ids = torch.randint(0, 20, (3, 7))
    m = oe.load(export(net, ids, tmp_path / "tok.onnx", exporter))
    e = oe.explain(m, ids.numpy(), "gradient_x_input", target=1)
    emb = net.emb(ids).detach().requires_grad_(True)
    net.head(emb.mean(1))[:, 1].sum().backward()
    full = (emb * emb.grad).detach().numpy()
    np.testing.assert_allclose(e.extras["embedding_attribution"], full, rtol=1e-4, atol=1e-6)
    assert e.attribution.shape == ids.shape
    np.testing.assert_allclose(e.attribution, full.sum(-1), rtol=1e-4, atol=1e-6)
    ig = oe.explain(m, ids.numpy(), "integrated_gradients", target=1, n_steps=16)
    np.testing.assert_allclose(ig.extras["delta"], 0, atol=1e-4)  # completeness at the embedding


def test_adaptive_objectives_of_the_paper(tmp_path):
    from conftest import ROOT

    m = oe.load(ROOT / "models" / "digits.onnx")
    x = np.load(ROOT / "models" / "samples" / "digits.npy")[:1]
    e = oe.explain(m, x, "smoothtaylor_adaptive", n_roots=6, max_iteration=2, objective="autvc",
                   objective_options={"min_size": (8, 8)})  # fmt: skip
    # the reported objective is the AUTVC of the returned attribution, and the best of the trace
    tv = oe.evaluate(None, x, e.attribution, "total_variation", min_size=(8, 8))
    assert e.extras["objective"][0] == pytest.approx(tv["scores"][0], rel=1e-6)
    assert e.extras["objective"][0] == pytest.approx(min(v for _, v in e.extras["trace"][0]), rel=1e-6)
    e2 = oe.explain(m, x, "smoothtaylor_adaptive", n_roots=4, max_iteration=1, objective="aupc",
                    objective_options={"kernel_size": 5, "num_regions": 3, "num_perturbs": 4})  # fmt: skip
    assert np.isfinite(e2.extras["objective"]).all() and e2.extras["sigma"][0] >= 0


# ---------------------------------------------------------------- the documentation of the methods
def test_docs_methods_has_every_cited_section_and_every_registered_name():
    import re

    from conftest import ROOT

    from onnx_explain.generation import GENERATION_METHODS
    from onnx_explain.lrp import COMPOSITES, RULES

    doc = (ROOT / "docs" / "methods.md").read_text()
    sections = set(re.findall(r"^#{2,4} (\d+(?:\.\d+)*)\.? ", doc, re.M))
    cited = set()
    for folder in ("onnx_explain", "tests", "benchmarks"):
        for path in (ROOT / folder).rglob("*.py"):
            for tail in re.findall(r"docs/methods\.md(.{0,60})", path.read_text(), re.S):
                for a, b in re.findall(r"§(\d+(?:\.\d+)*)(?:\s*[–-]\s*(\d+(?:\.\d+)*))?", tail):
                    cited |= {a, b} - {""}
    assert {"1.3", "2.5.2", "3.9"} <= cited  # the search sees the docstrings' citations
    assert cited <= sections, f"cited but missing from docs/methods.md: {sorted(cited - sections)}"
    named = set(re.findall(r"`(\w+)", doc))
    registered = set(oe.METHODS) | set(oe.METRICS) | set(COMPOSITES) | set(RULES) | set(GENERATION_METHODS)
    assert registered <= named, f"registered but not documented: {sorted(registered - named)}"


@pytest.mark.parametrize("method", ["gradient", "gradient_x_input"])
def test_the_predicted_class_is_read_from_the_gradient_pass_itself(method, tmp_path, monkeypatch):
    """A method whose rows are the inputs (``reads_inputs``) takes the predicted class from its own forward
    pass: one pass per chunk, no separate one, and the same result as naming the arg-max class."""
    from onnx_explain.methods.base import Scorer

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 5)).eval()
    x = np.random.default_rng(0).standard_normal((7, 6)).astype(np.float32)
    model = oe.load(export(net, torch.from_numpy(x[:2]), tmp_path / "mlp.onnx", "legacy"))
    model.torch_module()  # converted (and parity-checked) before counting
    calls = []
    forward = Scorer.forward

    def counting(self, rows, keys=None):
        calls.append(len(rows))
        return forward(self, rows, keys)

    monkeypatch.setattr(Scorer, "forward", counting)
    e = oe.explain(model, x, method, batch_size=3)
    assert calls == [3, 3, 1]  # the gradient's own chunks and nothing else
    with torch.no_grad():
        predicted = net(torch.from_numpy(x)).argmax(1).numpy()
    np.testing.assert_array_equal(e.target, predicted)
    want = oe.explain(model, x, method, target=predicted, batch_size=3)
    np.testing.assert_array_equal(e.attribution, want.attribution)
    np.testing.assert_array_equal(e.score, want.score)
    calls.clear()
    oe.explain(model, x, "smoothgrad", n_samples=2, batch_size=3)  # noisy rows: the class from a clean pass
    assert sum(calls) == 7 + 14
