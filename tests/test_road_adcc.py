"""ROAD and ADCC (docs/methods.md §3.14): ROAD on onnxruntime against pytorch-grad-cam's ``metrics/road.py`` on
the torch source of the exported model (imputation noise 0 on both sides), the imputation's own
invariants, the noise's independence from the batch; ADCC against a per-image numpy transcription of its
formulas, and its edge cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import export
from torch import nn

import onnx_explain as oe
from onnx_explain.metrics.road import NEIGHBOURS, adcc, linear_impute, removal_masks, road

gradcam_road = pytest.importorskip("pytorch_grad_cam.metrics.road")
from pytorch_grad_cam.metrics.perturbation_confidence import (  # noqa: E402
    PerturbationConfidenceMetric,
    RemoveLeastRelevantFirst,
    RemoveMostRelevantFirst,
)
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

H = W = 12


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 8, 3, padding=1),
                                 nn.Tanh(), nn.Flatten(), nn.Linear(8 * 6 * 6, 5))  # fmt: skip

    def forward(self, x):
        return self.net(x)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.manual_seed(0)
    net = CNN().eval()
    x = torch.randn(3, 3, H, W, generator=torch.Generator().manual_seed(1))
    model = oe.load(export(net, x, tmp_path_factory.mktemp("road") / "cnn.onnx", "legacy"))
    y = net(x).argmax(1).numpy()
    cams = np.random.default_rng(3).random((3, H, W)).astype(np.float32)  # distinct values: no ties
    return net, model, x.numpy(), y, cams


def _tol(ref):
    return {"rtol": 1e-5, "atol": 1e-5 * max(1.0, float(np.abs(ref).max()))}


def _reference_step(net, x, cams, y, order, p):
    """pytorch-grad-cam's score change after removing p % (its percentile argument is the kept 100 − p)."""
    remove = RemoveMostRelevantFirst if order == "morf" else RemoveLeastRelevantFirst
    metric = PerturbationConfidenceMetric(remove(100 - p, gradcam_road.NoisyLinearImputer(noise=0)))
    return metric(torch.from_numpy(x), cams, [ClassifierOutputTarget(int(t)) for t in y], net)


# --- the imputation -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("C", "h", "w", "frac"), [(3, 12, 12, 0.3), (1, 7, 9, 0.9), (2, 5, 5, 0.96), (3, 6, 6, 1.0)]
)
def test_imputation_is_pytorch_grad_cams(C, h, w, frac):
    rng = np.random.default_rng(int(100 * frac) + C)
    img = rng.standard_normal((C, h, w)).astype(np.float32)
    removed = rng.random((h, w)) < frac if frac < 1 else np.ones((h, w), bool)
    ref = gradcam_road.NoisyLinearImputer(noise=0)(
        torch.from_numpy(img), torch.from_numpy((~removed).astype(np.float32))
    )
    got = linear_impute(img, removed)
    assert got.dtype == img.dtype
    np.testing.assert_allclose(got, ref.numpy(), rtol=0, atol=1e-6)  # measured: bit-identical
    np.testing.assert_array_equal(got[:, ~removed], img[:, ~removed])


def test_imputation_by_hand():
    rng = np.random.default_rng(0)
    img = rng.standard_normal((2, 5, 5))
    # one interior pixel: the weighted mean of its 8 neighbours (weights sum to 1)
    removed = np.zeros((5, 5), bool)
    removed[2, 2] = True
    want = sum(w * img[:, 2 + dr, 2 + dc] for dr, dc, w in NEIGHBOURS)
    np.testing.assert_allclose(linear_impute(img, removed)[:, 2, 2], want, rtol=1e-12)
    # a corner: the mean over the 3 neighbours inside the image, weights 1/6, 1/6, 1/12 renormalised
    removed = np.zeros((5, 5), bool)
    removed[0, 0] = True
    want = (img[:, 0, 1] / 6 + img[:, 1, 0] / 6 + img[:, 1, 1] / 12) / (5 / 12)
    np.testing.assert_allclose(linear_impute(img, removed)[:, 0, 0], want, rtol=1e-12)
    # the stencil is symmetric, so a linear ramp solves the system exactly in an interior hole
    rr, cc = np.meshgrid(np.arange(9), np.arange(9), indexing="ij")
    ramp = np.stack([0.3 * rr - 0.7 * cc + 2.0, -rr + 0.1 * cc])
    hole = np.zeros((9, 9), bool)
    hole[2:7, 3:7] = True
    np.testing.assert_allclose(linear_impute(ramp, hole), ramp, atol=1e-12)
    # noise: σ·z on the filled pixels only
    z = rng.standard_normal(ramp.shape)
    noisy = linear_impute(ramp, hole, noise=0.01, z=z)
    np.testing.assert_allclose(noisy - ramp, np.where(hole, 0.01 * z, 0.0), atol=1e-12)
    # nothing to impute from: zeros (pytorch-grad-cam's solver returns them too)
    np.testing.assert_array_equal(linear_impute(ramp, np.ones((9, 9), bool)), np.zeros_like(ramp))


def test_removal_masks_threshold_and_rank():
    m = np.random.default_rng(0).random((2, H, W))  # distinct values: the threshold cuts between two
    n = H * W
    for p in (10, 25, 50, 90):
        k = n - int(np.ceil((n - 1) * (100 - p) / 100))  # pixels at or above numpy's (100 − p) percentile
        for order in ("morf", "lerf"):
            got = removal_masks(m, [p], order)[:, 0]
            flat = m.reshape(2, -1) if order == "morf" else -m.reshape(2, -1)
            top_k = flat >= np.sort(flat, 1)[:, n - k : n - k + 1]
            np.testing.assert_array_equal(got, top_k)
            np.testing.assert_array_equal(got.sum(1), [k, k])
            np.testing.assert_array_equal(
                removal_masks(m, [p], order, "rank")[:, 0].sum(1), [p * n // 100] * 2
            )
    # a plateau at the threshold goes whole: half the pixels are 0, so LeRF at 10 % removes all of them
    plateau = np.where(np.arange(H * W) % 2 == 0, 0.0, np.linspace(0.1, 1, H * W)).reshape(1, H, W)
    np.testing.assert_array_equal(removal_masks(plateau, [10, 40], "lerf").mean(2), [[0.5, 0.5]])
    np.testing.assert_array_equal(removal_masks(plateau, [90], "morf").all(2), [[True]])
    np.testing.assert_array_equal(removal_masks(plateau, [10], "lerf", "rank").sum(2), [[14]])


# --- ROAD against pytorch-grad-cam ---------------------------------------------------------------------


@pytest.mark.parametrize("order", ["morf", "lerf"])
def test_road_steps_match_pytorch_grad_cam(setup, order):
    net, model, x, y, cams = setup
    ps = [10, 40, 70, 90]
    r = oe.evaluate(model, x, cams, "road", target=y, order=order, percentiles=ps, noise=0, batch_size=16)
    ref = np.stack([_reference_step(net, x, cams, y, order, p) for p in ps], 1)
    got = r[f"curve_{order}"] - r["score0"][:, None]
    np.testing.assert_allclose(got, ref, **_tol(ref))
    np.testing.assert_allclose(r["road"], ref.mean(1), **_tol(ref))
    assert r["higher_is_better"] == (order == "lerf")


def test_road_combined_matches_pytorch_grad_cam(setup, monkeypatch):
    net, model, x, y, cams = setup
    r = oe.evaluate(model, x, cams, "road", target=y, noise=0)  # the defaults: combined, p = 10 … 90
    monkeypatch.setattr(torch, "randn_like", torch.zeros_like)  # its imputer's noise is fixed at 0.01
    targets = [ClassifierOutputTarget(int(t)) for t in y]
    ref = gradcam_road.ROADCombined()(torch.from_numpy(x), cams, targets, net)
    np.testing.assert_allclose(r["road"], ref, **_tol(ref))
    np.testing.assert_allclose(r["scores"], (r["road_lerf"] - r["road_morf"]) / 2, rtol=1e-12)
    np.testing.assert_allclose(r["curve"].mean(1), r["road"], rtol=1e-12)
    assert r["higher_is_better"]


def test_road_with_a_plateau_matches_pytorch_grad_cam(setup):
    # a ReLU'd map: half its pixels tie at 0, so MoRF at 90 % removes every pixel (filled with 0) and LeRF
    # at 10 % removes the whole plateau
    net, model, x, y, cams = setup
    cam = np.maximum(cams - 0.5, 0).astype(np.float32)
    r = oe.evaluate(model, x, cam, "road", target=y, percentiles=[10, 90], noise=0)
    for order in ("morf", "lerf"):
        ref = np.stack([_reference_step(net, x, cam, y, order, p) for p in (10, 90)], 1)
        np.testing.assert_allclose(r[f"curve_{order}"] - r["score0"][:, None], ref, **_tol(ref))
    np.testing.assert_array_equal(r["all_removed_morf"], [[False, True]] * 3)
    assert not r["all_removed_lerf"].any()
    np.testing.assert_allclose(r["removed_fraction_lerf"][:, 0], (cam == 0).mean((1, 2)))
    assert ((cam == 0).mean((1, 2)) > 0.3).all()  # the plateau, not 10 %


def test_road_noise_is_per_image_and_batch_free(setup):
    net, model, x, y, cams = setup
    opts = {"target": y, "percentiles": [20, 60], "seed": 4}
    ref = oe.evaluate(model, x, cams, "road", batch_size=64, **opts)
    for bs in (1, 5):
        got = oe.evaluate(model, x, cams, "road", batch_size=bs, **opts)
        np.testing.assert_allclose(got["curve"], ref["curve"], rtol=1e-6, atol=1e-7)
    one = oe.evaluate(model, x[1:2], cams[1:2], "road", **{**opts, "target": y[1:2]})
    np.testing.assert_allclose(one["curve"], ref["curve"][1:2], rtol=1e-6, atol=1e-7)
    morf = oe.evaluate(model, x, cams, "road", order="morf", **opts)
    np.testing.assert_allclose(morf["curve"], ref["curve_morf"], rtol=1e-6, atol=1e-7)
    clean = oe.evaluate(model, x, cams, "road", noise=0, **opts)
    assert 0 < np.abs(clean["curve_morf"] - ref["curve_morf"]).max() < 0.5
    other = oe.evaluate(model, x, cams, "road", **{**opts, "seed": 5})
    assert np.abs(other["curve_morf"] - ref["curve_morf"]).max() > 0


def test_every_road_step_is_batched(setup):
    net, model, x, y, cams = setup
    r = oe.evaluate(model, x, cams, "road", batch_size=16)  # 3 images × (1 + 2 × 9) rows = 57: 4 calls
    assert r["curve"].shape == (3, 9)
    assert r["model_calls"] == 1 + 4  # + 1 for the predicted targets


# --- ADCC -------------------------------------------------------------------------------------------


def _gxi(net):
    def explainer(x, target, seed):
        z = torch.from_numpy(np.asarray(x, dtype=np.float32)).requires_grad_(True)
        net(z).gather(1, torch.as_tensor(np.asarray(target))[:, None]).sum().backward()
        return (z * z.grad).detach().numpy().astype(np.float64)

    return explainer


def _adcc_reference(net, x, amap, target, explain):
    """Poppi et al.'s formulas, one image at a time (maps min-max scaled, channel sums)."""
    out = []
    for b in range(len(x)):
        s = amap[b].astype(np.float64)
        s = (s - s.min()) / (s.max() - s.min())
        xm = (x[b] * s[None]).astype(np.float32)
        with torch.no_grad():
            y = torch.softmax(net(torch.from_numpy(x[b : b + 1])), 1)[0, target[b]].item()
            o = torch.softmax(net(torch.from_numpy(xm[None])), 1)[0, target[b]].item()
        ad = max(0.0, y - o) / y
        s1 = explain(xm[None], target[b : b + 1], 0)[0].sum(0)
        coh = (np.corrcoef(s.ravel(), s1.ravel())[0, 1] + 1) / 2
        com = np.abs(s).sum() / (s.shape[0] * s.shape[1])
        out.append((3 / (1 / coh + 1 / (1 - com) + 1 / (1 - ad)), ad, coh, com))
    return np.array(out).T


def test_adcc_matches_the_formulas(setup):
    net, model, x, y, cams = setup
    explain = _gxi(net)
    a = explain(x, y, 0)
    want = _adcc_reference(net, x, a.sum(1), y, explain)
    r = oe.evaluate(model, x, a, "adcc", target=y, explainer=explain)
    got = np.stack([r["adcc"], r["average_drop"], r["coherency"], r["complexity"]])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert r["output"] == "prob" and r["higher_is_better"]
    assert 0 < want[0].min() and want[0].max() < 1  # a real case: every term inside (0, 1)
    # a method name: the package's own explainer (gradient × input on the converted graph), x explained too
    named = oe.evaluate(model, x, None, "adcc", target=y, explainer="gradient_x_input")
    np.testing.assert_allclose(named["adcc"], want[0], rtol=1e-4, atol=1e-5)


def test_adcc_edge_cases(setup):
    net, model, x, y, cams = setup
    same = lambda z, t, s: cams  # noqa: E731  (the same map whatever the input: perfectly coherent)
    r = oe.evaluate(model, x, cams, "adcc", target=y, explainer=same)
    np.testing.assert_allclose(r["coherency"], 1.0, rtol=1e-12)
    ad, com = r["average_drop"], r["complexity"]
    np.testing.assert_allclose(r["adcc"], 3 / (1 + 1 / (1 - com) + 1 / (1 - ad)), rtol=1e-12)
    # an all-ones map keeps the input (AD 0) and is as complex as can be: ADCC is 0, not a division error
    ones = np.ones((3, H, W))
    r = oe.evaluate(model, x, ones, "adcc", target=y, explainer=lambda z, t, s: ones, normalise="none")
    np.testing.assert_array_equal(r["complexity"], 1.0)
    np.testing.assert_allclose(r["average_drop"], 0.0, atol=1e-6)
    np.testing.assert_array_equal(r["adcc"], 0.0)
    # a constant map correlates with nothing: coherency 0
    assert np.isnan(r["pearson"]).all() and (r["coherency"] == 0).all()
    # a constant map min-max scales to 0: nothing of x is kept
    r = oe.evaluate(model, x, ones, "adcc", target=y, explainer=same)
    np.testing.assert_array_equal(r["complexity"], 0.0)
    np.testing.assert_array_equal(r["adcc"], 0.0)
    # AD has no value for a score ≤ 0 (logits): NaN, with the reason
    worst = net(torch.from_numpy(x)).argmin(1).numpy()
    r = oe.evaluate(model, x, cams, "adcc", target=worst, explainer=same, output="logit")
    np.testing.assert_array_equal(np.isnan(r["scores"]), r["score0"] <= 0)
    assert (r["score0"] <= 0).any() and "y ≤ 0" in r["undefined"]


def test_errors(setup):
    net, model, x, y, cams = setup
    bad = [
        ({"order": "up"}, "order must be one of"),
        ({"percentiles": (0, 50)}, "strictly between 0 and 100"),
        ({"percentiles": ()}, "strictly between 0 and 100"),
        ({"noise": -1}, "noise must be"),
        ({"ties": "first"}, "ties must be one of"),
    ]
    for opts, msg in bad:
        with pytest.raises(oe.OptionError, match=msg):
            oe.evaluate(model, x, cams, "road", **opts)
    with pytest.raises(oe.OptionError, match="normalise must be one of"):
        oe.evaluate(model, x, cams, "adcc", explainer=lambda z, t, s: cams, normalise="l2")
    with pytest.raises(oe.OptionError, match=r"normalise='none' needs maps in \[0, 1\]"):
        oe.evaluate(model, x, 2 * cams, "adcc", explainer=lambda z, t, s: cams, normalise="none")
    with pytest.raises(oe.OnnxExplainError, match="pass explainer="):
        oe.evaluate(model, x, cams, "adcc")
    table = np.zeros((2, 5))
    for fn in (road, adcc):
        with pytest.raises(oe.OptionError, match=r"needs images \(B, C, H, W\)"):
            fn(None, table, table, np.zeros(2, int), np.random.default_rng(0))
