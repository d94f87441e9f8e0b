"""Evaluation metrics: analytic cases of docs/methods.md §3 on exact models, batch-size invariance, and the
one-batched-call-per-chunk engine."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import export
from torch import nn

import onnx_explain as oe
from onnx_explain.metrics.noise import atv, integrate, normalise_map


class LinearImage(nn.Module):
    """f(x) = W flatten(x) + b on (B, 2, 6, 6) images, 3 classes."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.fc = nn.Linear(72, 3)

    def forward(self, x):
        return self.fc(x.flatten(1))


@pytest.fixture(scope="module")
def linear(tmp_path_factory):
    net = LinearImage().eval()
    x = torch.randn(4, 2, 6, 6, generator=torch.Generator().manual_seed(1))
    model = oe.load(export(net, x, tmp_path_factory.mktemp("lin") / "lin.onnx", "legacy"))
    w = net.fc.weight.detach().numpy().reshape(3, 2, 6, 6)
    return model, x.numpy(), w, net


def _gxi(x, w, t):
    return x * w[t]


def test_pixel_flipping_morf_equals_partial_sums_and_falls_fastest(linear):
    model, x, w, _ = linear
    t = np.array([0, 1, 2, 0])
    a = _gxi(x, w, t)
    r = oe.evaluate(model, x, a, "pixel_flipping", target=t, mode="feature", pixels_per_step=5)
    f0 = model.predict(x)[np.arange(4), t]
    flat = a.reshape(4, -1)
    order = np.argsort(-flat, 1, kind="stable")
    sorted_a = np.take_along_axis(flat, order, 1)
    counts = np.minimum(np.arange(r["curve"].shape[1]) * 5, 72)
    want = f0[:, None] - np.stack([sorted_a[:, :c].sum(1) for c in counts], 1)
    np.testing.assert_allclose(r["curve"], want, rtol=1e-5, atol=1e-5)
    lerf = oe.evaluate(
        model, x, a, "pixel_flipping", target=t, mode="feature", pixels_per_step=5, order="lerf"
    )
    rand = oe.evaluate(
        model, x, a, "pixel_flipping", target=t, mode="feature", pixels_per_step=5, order="random"
    )
    assert (r["curve"] <= rand["curve"] + 1e-5).all() and (rand["curve"] <= lerf["curve"] + 1e-5).all()
    assert r["higher_is_better"] and not lerf["higher_is_better"]
    assert (r["aopc"] > lerf["aopc"]).all()
    np.testing.assert_allclose(r["curve"][:, 0], f0, rtol=1e-6)


def test_pixel_mode_replaces_all_channels_of_a_pixel(linear):
    model, x, w, _ = linear
    t = np.zeros(4, dtype=int)
    a = _gxi(x, w, t)
    r = oe.evaluate(model, x, a, "pixel_flipping", target=t, pixels_per_step=1, n_steps=None)
    pix = a.sum(1).reshape(4, -1)
    order = np.argsort(-pix, 1, kind="stable")
    f0 = model.predict(x)[:, 0]
    sorted_pix = np.take_along_axis(pix, order, 1)
    np.testing.assert_allclose(
        r["curve"][:, 1:], f0[:, None] - np.cumsum(sorted_pix, 1), rtol=1e-5, atol=1e-5
    )


def test_region_perturbation_analytic(linear):
    model, x, w, _ = linear
    t = np.array([1, 1, 0, 2])
    a = _gxi(x, w, t)
    r = oe.evaluate(model, x, a, "region_perturbation", target=t, region=2, n_regions=9, compare_lerf=True)
    assert r["curve"].shape == (4, 10)
    assert (r["curve"] <= r["curve_lerf"] + 1e-5).all()
    np.testing.assert_allclose(r["abpc"], r["aopc"] - r["aopc_lerf"])
    assert (r["abpc"] > 0).all()
    # region sums by hand: 2x2 squares over both channels, replaced by zero
    sums = a.reshape(4, 2, 3, 2, 3, 2).sum((1, 3, 5)).reshape(4, 9)
    f0 = model.predict(x)[np.arange(4), t]
    want = f0[:, None] - np.concatenate([np.zeros((4, 1)), np.cumsum(-np.sort(-sums, 1), 1)], 1)
    np.testing.assert_allclose(r["curve"], want, rtol=1e-5, atol=1e-5)
    zero = oe.evaluate(model, x, a, "region_perturbation", target=t, region=2, n_regions=0)
    np.testing.assert_array_equal(zero["aopc"], 0)


def test_region_grid_with_partial_border_regions(linear):
    model, x, w, _ = linear
    r = oe.evaluate(
        model, x, _gxi(x, w, np.zeros(4, int)), "region_perturbation", target=0, region=4, n_regions=100
    )
    assert r["n_regions"] == 4  # 6x6 in 4x4 squares: 2x2 regions, the border ones smaller
    np.testing.assert_allclose(r["curve"][:, -1], model.predict(np.zeros_like(x))[:, 0], rtol=1e-5, atol=1e-6)


def test_deletion_and_insertion_endpoints(linear):
    model, x, w, _ = linear
    a = _gxi(x, w, np.zeros(4, int))
    d = oe.evaluate(model, x, a, "deletion", n_steps=9)
    probs = oe.metrics.base.softmax(model.predict(x).astype(np.float64))
    t = probs.argmax(1)
    np.testing.assert_allclose(d["curve"][:, 0], probs[np.arange(4), t], rtol=1e-5)
    zero = oe.metrics.base.softmax(model.predict(np.zeros_like(x)).astype(np.float64))
    np.testing.assert_allclose(d["curve"][:, -1], zero[np.arange(4), t], rtol=1e-5)
    assert d["curve"].shape == (4, 10) and d["pixels_per_step"] == 4
    c = d["curve"]
    np.testing.assert_allclose(d["auc"], (c.sum(1) - c[:, 0] / 2 - c[:, -1] / 2) / 9)
    i = oe.evaluate(model, x, a, "insertion", n_steps=9)
    np.testing.assert_allclose(i["curve"][:, -1], probs[np.arange(4), t], rtol=1e-5)
    assert not d["higher_is_better"] and i["higher_is_better"]


@pytest.mark.parametrize("level", ["pixel", "element"])
def test_sensitivity_n_is_one_for_gxi_of_a_linear_model(linear, level):
    model, x, w, _ = linear
    t = np.array([0, 2, 1, 1])
    r = oe.evaluate(model, x, _gxi(x, w, t), "sensitivity_n", target=t, n_subsets=12, feature_level=level)
    np.testing.assert_allclose(r["pcc"], 1.0, atol=1e-5)
    assert len(r["n"]) == 16 and r["n"][0] == 1


def test_sensitivity_n_of_random_attribution_is_near_zero(linear):
    model, x, w, _ = linear
    a = np.random.default_rng(0).standard_normal(x.shape)
    r = oe.evaluate(model, x, a, "sensitivity_n", target=0, n_subsets=60, n_values=[0.2, 0.5])
    assert np.abs(r["pcc_mean"]).max() < 0.35


def test_faithfulness_correlation_is_one_for_gxi(linear):
    model, x, w, _ = linear
    t = np.array([0, 2, 1, 1])
    r = oe.evaluate(model, x, _gxi(x, w, t), "faithfulness_correlation", target=t, subset_size=10, n_runs=20)
    np.testing.assert_allclose(r["scores"], 1.0, atol=1e-5)


def test_infidelity_is_zero_for_the_gradient_of_a_linear_model(linear):
    model, x, w, _ = linear
    t = np.array([0, 2, 1, 1])
    r = oe.evaluate(model, x, w[t], "infidelity", target=t, n_samples=7)
    np.testing.assert_allclose(r["scores"], 0, atol=1e-6)
    sq = oe.evaluate(model, x, _gxi(x, w, t), "infidelity", target=t, perturbation="square", sizes=(2, 3),
                     multiply_by_inputs=True)  # fmt: skip
    np.testing.assert_allclose(sq["scores"], 0, atol=1e-6)


def test_infidelity_normalize_is_scale_invariant(linear):
    model, x, w, _ = linear
    a = np.random.default_rng(1).standard_normal(x.shape)
    r1 = oe.evaluate(model, x, a, "infidelity", target=0, normalize=True)
    r2 = oe.evaluate(model, x, 7.5 * a, "infidelity", target=0, normalize=True)
    np.testing.assert_allclose(r1["scores"], r2["scores"], rtol=1e-8)
    assert not np.allclose(oe.evaluate(model, x, a, "infidelity", target=0)["scores"],
                           oe.evaluate(model, x, 7.5 * a, "infidelity", target=0)["scores"])  # fmt: skip


def test_infidelity_of_a_quadratic_model_matches_its_expectation():
    # f = 1/2 xᵀAx, Φ = ∇f(x) = Ax; f(x) − f(x − I) = Iᵀ A x − 1/2 IᵀAI: INFD = E[(1/2 IᵀAI)²]
    rng = np.random.default_rng(0)
    A = rng.standard_normal((4, 4))
    A = A + A.T

    def model(z):
        z = z.reshape(len(z), -1)
        return (0.5 * np.einsum("bi,ij,bj->b", z, A, z))[:, None]

    x = rng.standard_normal((1, 4))
    n = 4000
    pert = rng.standard_normal((1, n, 4)) * 0.3
    r = oe.evaluate(model, x, x @ A, "infidelity", target=0, perturbations=(pert, x[:, None] - pert))
    want = np.mean((0.5 * np.einsum("ki,ij,kj->k", pert[0], A, pert[0])) ** 2)
    assert r["scores"][0] == pytest.approx(want, rel=1e-9)


def test_max_sensitivity_of_a_linear_model_is_zero(linear):
    model, x, w, _ = linear
    r = oe.evaluate(
        model, x, None, "max_sensitivity", target=1, explainer="gradient", n_samples=3, radius=0.5
    )
    np.testing.assert_allclose(r["scores"], 0, atol=1e-6)


def test_rank_consistency_identities():
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 5)).astype(np.float32)
    a0 = np.random.default_rng(1).standard_normal(x.shape)
    seen = []

    def same(z, t, seed):
        seen.append(z.copy())
        return np.repeat(a0, len(z) // 2, axis=0)  # rows are sample-major

    r = oe.evaluate(None, x, a0, "rank_consistency", target=0, explainer=same)
    np.testing.assert_allclose(r["kendall"], 1.0)
    np.testing.assert_allclose(r["cosine"], 1.0)
    # the masked pixels are exactly the top-k of mean_c |A0|, all channels, set to the zero baseline
    xs = seen[-1].reshape(2, 10, 3, 5, 5).swapaxes(0, 1)  # sample-major rows -> (step, sample)
    imp = np.abs(a0).mean(1).reshape(2, -1)
    for i, ratio in enumerate(np.arange(1, 11) / 10):
        k = int(np.floor(ratio * 25 + 1e-9))
        top = np.argsort(-imp, 1, kind="stable")[:, :k]
        for b in range(2):
            masked = np.zeros(25, bool)
            masked[top[b]] = True
            assert (xs[i, b].reshape(3, 25)[:, masked] == 0).all()
            np.testing.assert_array_equal(
                xs[i, b].reshape(3, 25)[:, ~masked], x[b].reshape(3, 25)[:, ~masked]
            )

    def neg(z, t, seed):
        return -np.resize(a0, (len(z), *a0.shape[1:]))

    r = oe.evaluate(None, x, a0, "rank_consistency", target=0, explainer=neg, ratios=(0.3,))
    np.testing.assert_allclose(r["kendall"], -1.0)
    np.testing.assert_allclose(r["cosine"], -1.0)

    def const(z, t, seed):
        return np.zeros((len(z), *a0.shape[1:]))

    r = oe.evaluate(None, x, a0, "rank_consistency", target=0, explainer=const, ratios=(1.0,))
    assert np.isnan(r["kendall"]).all() and np.isnan(r["cosine"]).all() and np.isnan(r["mean"])


def test_kendall_variants_differ_with_ties():
    from onnx_explain.metrics.robustness import kendall_rows

    u, v = np.array([1, 2, 2, 3, 0, 0.0]), np.array([1, 3, 2, 2, 0, 1.0])
    assert kendall_rows(u, v, "b") == pytest.approx(0.692, abs=1e-3)
    assert kendall_rows(u, v, "c") == pytest.approx(0.667, abs=1e-3)


def test_total_variation_closed_forms():
    H, W = 40, 36
    cb = (np.indices((H, W)).sum(0) % 2).astype(float)
    assert normalise_map(cb) is not None
    assert atv(normalise_map(cb)) == pytest.approx((H * (W - 1) + (H - 1) * W) / (H * W))
    r = oe.evaluate(None, np.zeros((2, 1, H, W)), np.stack([np.ones((1, H, W)), cb[None]]), "total_variation")
    assert r["atv"][0] == 0 and r["scores"][0] == 0  # a constant map
    assert r["atv"][1] == pytest.approx((H * (W - 1) + (H - 1) * W) / (H * W))
    assert not r["higher_is_better"]


def test_simpson_modes():
    y = np.array([0.3, 0.9, 0.4, 0.8, 0.1, 0.6])
    from scipy.integrate import simpson

    assert integrate(y, "scipy") == pytest.approx(simpson(y, dx=1))
    # legacy even='avg': mean of (Simpson on the first 5 + trapezoid) and (trapezoid + Simpson on the last 5)
    s = lambda v: (v[0] + v[-1] + 4 * v[1:-1:2].sum() + 2 * v[2:-1:2].sum()) / 3  # noqa: E731
    want = ((s(y[:5]) + (y[4] + y[5]) / 2) + (s(y[1:]) + (y[0] + y[1]) / 2)) / 2
    assert integrate(y, "legacy_avg") == pytest.approx(want)
    assert integrate(y, "legacy_avg") != pytest.approx(integrate(y, "scipy"))


@pytest.mark.parametrize(
    ("metric", "opts"),
    [("pixel_flipping", {"pixels_per_step": 7}), ("pixel_flipping", {"mode": "feature", "order": "random", "baseline": "uniform"}),
     ("pixel_flipping", {"baseline": "quantus_mean", "n_steps": 5}),
     ("region_perturbation", {"region": 2, "n_regions": 5, "compare_lerf": True}), ("deletion", {"n_steps": 6}),
     ("insertion", {"n_steps": 6}), ("sensitivity_n", {"n_subsets": 5}), ("faithfulness_correlation", {"n_runs": 9, "subset_size": 8}),
     ("infidelity", {"n_samples": 6}), ("infidelity", {"perturbation": "square", "sizes": (2, 3)})],
)  # fmt: skip
def test_metrics_do_not_depend_on_batch_size(linear, metric, opts):
    model, x, w, _ = linear
    a = np.random.default_rng(2).standard_normal(x.shape)
    ref = oe.evaluate(model, x, a, metric, batch_size=64, **opts)
    for bs in (1, 5):
        got = oe.evaluate(model, x, a, metric, batch_size=bs, **opts)
        np.testing.assert_allclose(got["scores"], ref["scores"], rtol=1e-6, atol=1e-7)
        if "curve" in ref:
            np.testing.assert_allclose(got["curve"], ref["curve"], rtol=1e-6, atol=1e-7)


def test_every_perturbation_step_is_batched(linear):
    # 4 samples x 73 steps = 292 rows: 5 calls of up to 64 rows, plus 1 for the targets
    model, x, w, _ = linear
    r = oe.evaluate(model, x, np.random.default_rng(0).standard_normal(x.shape), "pixel_flipping", mode="feature",
                    pixels_per_step=1, batch_size=64)  # fmt: skip
    assert r["curve"].shape == (4, 73)
    assert r["model_calls"] == 1 + int(np.ceil(4 * 73 / 64))


def test_quantus_mean_baseline_drifts(linear):
    model, x, w, _ = linear
    from onnx_explain.metrics.perturbation import _quantus_mean_fill

    order = np.tile(np.arange(72), (4, 1))
    fill = _quantus_mean_fill(x, np.arange(72), order, np.array([0, 36, 72]))
    flat = x.reshape(4, -1).astype(np.float64)
    m1 = flat.mean(1)
    cur = flat.copy()
    cur[:, :36] = m1[:, None]
    m2 = cur.mean(1)
    np.testing.assert_allclose(fill.reshape(4, -1)[:, :36], np.repeat(m1[:, None], 36, 1), rtol=1e-6)
    np.testing.assert_allclose(fill.reshape(4, -1)[:, 36:], np.repeat(m2[:, None], 36, 1), rtol=1e-6)


def test_errors(linear):
    model, x, w, _ = linear
    with pytest.raises(oe.OnnxExplainError, match="unknown metric"):
        oe.evaluate(model, x, x, "nope")
    with pytest.raises(TypeError, match="unknown option"):
        oe.evaluate(model, x, x, "pixel_flipping", sigma=1)
    with pytest.raises(oe.InputDataError, match="3 attributions for 4 inputs"):
        oe.evaluate(model, x, x[:3], "pixel_flipping")
    with pytest.raises(oe.OnnxExplainError, match="pass explainer="):
        oe.evaluate(model, x, x, "max_sensitivity")


def _aupc_reference(f, x, h, target, k, n_regions, candidates, mean, std):
    """A loop-by-loop transcription of the SmoothTaylor code's compute_perturbations + compute_aupc."""
    from scipy.integrate import simpson

    C, H, W = x.shape
    scores = {}
    for h0 in range(H - k):
        for w0 in range(W - k):
            scores[(h0, w0)] = np.abs(h[h0 : h0 + k, w0 : w0 + k]).mean()
    ranked = sorted(scores, key=lambda p: -scores[p])  # python's sort is stable
    chosen, banned = [], set()
    for p in ranked:
        if p in banned:
            continue
        chosen.append(p)
        for dh in range(-(k - 1), k):
            for dw in range(-(k - 1), k):
                banned.add((p[0] + dh, p[1] + dw))
        if len(chosen) == n_regions:
            break
    cur = x.copy()
    f0 = f(x[None])[0, target]
    out = [f0]
    for i, (h0, w0) in enumerate(chosen):
        vals = []
        for cand in candidates[i]:
            z = cur.copy()
            z[:, h0 : h0 + k, w0 : w0 + k] = (cand - mean) / std
            vals.append(f(z[None])[0, target])
        vals = np.array(vals)
        out.append(vals.mean())
        best = int(np.argmin(np.abs(vals - np.median(vals))))
        cur[:, h0 : h0 + k, w0 : w0 + k] = (candidates[i][best] - mean) / std
    curve = np.array(out) / abs(f0)
    return curve, simpson(curve, dx=1)


def test_aupc_matches_the_smoothtaylor_code():
    rng = np.random.default_rng(0)
    Wt = rng.standard_normal((3, 3 * 12 * 12))

    def f(z):
        z = z.reshape(len(z), -1)
        return np.tanh(z @ Wt.T) + 2.0

    x = rng.standard_normal((2, 3, 12, 12))
    a = rng.standard_normal(x.shape)
    k, L, P = 3, 5, 7
    cands = rng.uniform(0, 1, size=(2, L, P, 3, k, k))
    mean, std = np.array([0.4, 0.5, 0.6]), np.array([0.2, 0.25, 0.3])
    r = oe.evaluate(f, x, a, "aupc", target=[1, 2], kernel_size=k, num_regions=L, candidates=cands, mean=mean,
                    std=std, batch_size=4)  # fmt: skip
    for b, t in enumerate([1, 2]):
        curve, area = _aupc_reference(
            f, x[b], a[b].sum(0), t, k, L, cands[b], mean[:, None, None], std[:, None, None]
        )
        np.testing.assert_allclose(r["curve"][b], curve, rtol=1e-10)
        assert r["scores"][b] == pytest.approx(area, rel=1e-10)
    assert not r["higher_is_better"]


def _park_notebook(x, explain, ratios):
    """The reference notebook's cell (kendall_cosine.ipynb), transcribed: channel-0 masking of the top
    int(H·W·ratio) pixels of mean_c |A|, in place (cumulative), the mask from the previous output."""
    from scipy.spatial.distance import cosine as cos_dist
    from scipy.stats import kendalltau

    x = x.copy()
    C, H, W = x.shape
    a0 = explain(x)
    output = a0
    taus, coss = [], []
    for ratio in ratios:
        filt = np.abs(output).mean(0).reshape(-1)
        idx = np.argsort(-filt, kind="stable")[: int(H * W * ratio)]
        x.reshape(C, -1)[0, idx] = 0
        output = explain(x)
        a, b = a0.reshape(-1), output.reshape(-1)
        taus.append(kendalltau(a, b, variant="c").statistic)
        coss.append(1 - cos_dist(a / np.linalg.norm(a), b / np.linalg.norm(b)))
    return np.array(taus), np.array(coss)


def test_rank_consistency_park_compat_equals_the_notebook():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 6, 6))
    w = rng.standard_normal((3, 6, 6))

    def one(z):
        return z * w + 0.3 * z**2

    def explainer(z, t, seed):
        return np.stack([one(v) for v in z])

    ratios = (0.1, 0.3, 0.5, 0.7)
    r = oe.evaluate(None, x, None, "rank_consistency", target=0, explainer=explainer, ratios=ratios, variant="c",
                    park_channel0_only=True, park_cumulative_inplace=True, park_mask_from_previous=True)  # fmt: skip
    for b in range(2):
        taus, coss = _park_notebook(x[b], one, ratios)
        np.testing.assert_allclose(r["kendall"][b], taus, rtol=1e-12)
        np.testing.assert_allclose(r["cosine"][b], coss, rtol=1e-9)


def test_sensitivity_n_with_injected_subsets_is_posthoceval_by_hand(linear):
    model, x, w, _ = linear
    rng = np.random.default_rng(3)
    a = rng.standard_normal(x.shape)
    n_values, S = [3, 10], 6
    subsets = [
        np.stack([np.stack([rng.choice(36, n, replace=False) for _ in range(S)]) for _ in range(4)])
        for n in n_values
    ]
    r = oe.evaluate(model, x, a, "sensitivity_n", target=0, n_values=n_values, subsets=subsets)
    pix = a.sum(1).reshape(4, -1)
    f0 = model.predict(x)[:, 0]
    for j in range(len(n_values)):
        for b in range(4):
            deltas, sums = [], []
            for s in range(S):
                xs = x[b].copy().reshape(2, -1)
                xs[:, subsets[j][b, s]] = 0
                deltas.append(f0[b] - model.predict(xs.reshape(1, 2, 6, 6))[0, 0])
                sums.append(pix[b, subsets[j][b, s]].sum())
            assert r["pcc"][b, j] == pytest.approx(np.corrcoef(sums, deltas)[0, 1], rel=1e-5)


# ---------------------------------------------------------------- localisation (docs/methods.md §3.11)
# Signed maps where the sign matters, every value worked out by hand. Two channels that cancel at (0, 1)
# of sample 0: the channel sum comes first, then the clip (or magnitude).
_LOC_A = np.array([
    [[[2, 3, 0], [1, 0, -6]], [[1, -4, 0], [0, 2, 0]]],        # h = [[3, -1, 0], [1, 2, -6]]
    [[[-5, 1, 0], [0, 2, 0]], [[0, 0, 0], [0, 0, 0]]],         # h = [[-5, 1, 0], [0, 2, 0]]
    [[[-1, -2, -3], [-4, -5, -6]], [[0, 0, 0], [0, 0, 0]]],    # h = [[-1, -2, -3], [-4, -5, -6]]
], dtype=float)  # fmt: skip
_LOC_MASKS = np.array([
    [[1, 1, 0], [0, 0, 0]],
    [[1, 1, 0], [0, 0, 0]],
    [[0, 0, 0], [0, 0, 1]],
], dtype=bool)  # fmt: skip


def test_localisation_signed_maps_by_hand():
    x = np.zeros((3, 2, 2, 3))
    r = oe.evaluate(None, x, _LOC_A, "localisation", masks=_LOC_MASKS)
    # mass: positive relevance inside / all positive relevance, of the channel sum h
    #   0: inside 3 (the -1 of the cancelling pixel counts 0), total 3 + 1 + 2 = 6
    #   1: inside 1 (-5 counts 0), total 1 + 2 = 3;   2: no positive relevance at all -> NaN
    np.testing.assert_allclose(r["mass"], [3 / 6, 1 / 3, np.nan], rtol=1e-12)
    np.testing.assert_allclose(r["scores"], r["mass"], rtol=1e-12)
    # pointing: the signed maximum, not the largest magnitude
    #   0: max 3 at (0, 0), inside (|-6| is outside);  1: max 2 at (1, 1), outside (|-5| is inside);
    #   2: max -1 at (0, 0), outside (|-6| is inside)
    np.testing.assert_array_equal(r["pointing"], [1.0, 0.0, 0.0])
    np.testing.assert_allclose(r["mask_fraction"], [2 / 6, 2 / 6, 1 / 6], rtol=1e-12)
    # positive=False: magnitudes of the channel sum |h| (not the sum of the channels' magnitudes)
    #   0: (3 + 1) / (3 + 1 + 0 + 1 + 2 + 6);  1: (5 + 1) / (5 + 1 + 2);  2: 6 / 21
    m = oe.evaluate(None, x, _LOC_A, "localisation", masks=_LOC_MASKS, positive=False)
    np.testing.assert_allclose(m["mass"], [4 / 13, 6 / 8, 6 / 21], rtol=1e-12)
    np.testing.assert_array_equal(m["pointing"], r["pointing"])  # the pointing game stays signed
    # a channel-aggregated (B, H, W) map is read as it is
    h = oe.evaluate(None, x, _LOC_A.sum(1), "localisation", masks=_LOC_MASKS)
    np.testing.assert_allclose(h["mass"], r["mass"], rtol=1e-12)
    np.testing.assert_array_equal(h["pointing"], r["pointing"])


# ---------------------------------------------------------------- AUPC by hand (docs/methods.md §3.2.4)
# f_0(z) = Σ z − 10 (a logit), so a step's mean score is f_0 of the current image plus the mean written
# value minus the pixel it replaces. 1×1 windows on a 3×3 image: the corners h0, w0 < 3 − 1 qualify.
_AUPC_X = np.array([[[[1, 2, 0], [3, 1, 0], [0, 0, 0]]]], dtype=float)  # f_0(x) = 7 − 10 = −3
# candidates (raw, [0, 1]) of the 4 steps, 5 draws each; written as (c − 0.5) / 0.5 = 2c − 1
_AUPC_CANDS = np.array([
    [0.0, 0.6, 0.7, 0.8, 0.9],   # v = [-1, .2, .4, .6, .8]: mean .2, median .4 (closest to the mean: .2)
    [0.2, 0.4, 0.0, 1.0, 0.9],   # v = [-.6, -.2, -1, 1, .8]: mean 0, median -.2
    [0.1, 0.3, 0.5, 0.7, 0.9],   # mean 0, median 0
    [0.0, 0.25, 0.5, 0.75, 1.0],  # mean 0, median 0
]).reshape(1, 4, 5, 1, 1, 1)  # fmt: skip


def _sum_minus_ten(z):
    s = z.reshape(len(z), -1).sum(1)
    return np.stack([s - 10.0, -s], 1)


def test_aupc_by_hand_on_a_linear_model():
    # |h| ranks the corners (0,0) 4, (1,1) 3, (1,0) 2, (0,1) 1; the 9s lie outside the eligible corners
    # (a signed ranking would take (1,0), (0,1), (1,1), (0,0))
    a = np.array([[[[-4, 1, 9], [2, -3, 9], [9, 9, 9]]]], dtype=float)
    r = oe.evaluate(_sum_minus_ten, _AUPC_X, a, "aupc", target=0, kernel_size=1, num_regions=4,
                    candidates=_AUPC_CANDS, mean=0.5, std=0.5)  # fmt: skip
    assert r["windows"] == [[(0, 0), (1, 1), (1, 0), (0, 1)]]
    # Σ after each step: 7 → 7 − 1 + .4 = 6.4 → 6.4 − 1 − .2 = 5.2 → 5.2 − 3 + 0 = 2.2
    # means: (7 − 1 − 10) + .2 = −3.8; 6.4 − 1 − 10 = −4.6; 5.2 − 3 − 10 = −7.8; 2.2 − 2 − 10 = −9.8
    np.testing.assert_allclose(r["curve"], [[-3 / 3, -3.8 / 3, -4.6 / 3, -7.8 / 3, -9.8 / 3]], rtol=1e-12)
    # Simpson (dx = 1, 5 points) of the curve divided by |f(x)| = 3
    want = (-3 + 4 * -3.8 + 2 * -4.6 + 4 * -7.8 + -9.8) / 3 / 3
    assert want == pytest.approx(-7.6)
    assert r["scores"][0] == pytest.approx(want, rel=1e-12)


def test_aupc_objective_of_adaptive_smoothtaylor_by_hand(tmp_path):
    # The adaptive search's 'aupc' objective on an ONNX model: logits of the asked class 0 (class 1, the
    # predicted one, is a constant 10). All eligible pixels are 1, so the value does not depend on the
    # order of the windows, hence not on SmoothTaylor's random roots:
    #   Σ: 4 → 3.4 → 2.2 → 1.2;  means: −7 + .2 = −6.8, −7.6, −8.8, −9.8;  f(x) = −6
    net = nn.Sequential(nn.Flatten(), nn.Linear(9, 2))
    with torch.no_grad():
        net[1].weight.copy_(torch.stack([torch.ones(9), torch.zeros(9)]))
        net[1].bias.copy_(torch.tensor([-10.0, 10.0]))
    x = np.array([[[[1, 1, 0], [1, 1, 0], [0, 0, 0]]]], dtype=np.float32)
    m = oe.load(export(net, torch.from_numpy(x), tmp_path / "lin9.onnx", "legacy"))
    e = oe.explain(m, x, "smoothtaylor_adaptive", target=0, n_roots=2, max_iteration=1, objective="aupc",
                   objective_options={"kernel_size": 1, "num_regions": 4, "candidates": _AUPC_CANDS,
                                      "mean": 0.5, "std": 0.5})  # fmt: skip
    want = (-6 + 4 * -6.8 + 2 * -7.6 + 4 * -8.8 + -9.8) / 3 / 6
    assert want == pytest.approx(-93.4 / 18)
    assert e.extras["objective"][0] == pytest.approx(want, rel=1e-6)
    assert all(v == pytest.approx(want, rel=1e-6) for _, v in e.extras["trace"][0])
