"""The quick mode of every claims benchmark runs on a tiny subset: its numbers are the library's numbers for
the settings it prints (recomputed here), they obey the identities that hold whatever the model (τ = 1 for
an unchanged input, SmoothGrad at σ = 0 is the gradient, IG of an all-baseline input is 0 ...), and the
verdicts and tables it writes follow from them."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
from conftest import ROOT

import onnx_explain as oe

sys.path.insert(0, str(ROOT / "benchmarks"))
import claims  # noqa: E402


@pytest.fixture(autouse=True)
def results_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setattr(claims, "RESULTS", tmp_path)
    return tmp_path


def test_smoothgrad_quick(results_in_tmp):
    r = claims.bench_smoothgrad(quick=True)
    m, x = claims._model("digits"), claims._digits(4)
    grad = oe.explain(m, x, "gradient").attribution
    tv = oe.evaluate(None, x, grad, "total_variation", min_size=(8, 8))["mean"]
    aopc = oe.evaluate(m, x, grad, "pixel_flipping", pixels_per_step=16)["mean"]
    assert r["gradient"] == pytest.approx((tv, aopc), rel=1e-9)
    assert r["sigma"][0.0] == pytest.approx(r["gradient"], rel=1e-5)  # σ = 0 is the gradient
    sg = oe.explain(m, x, "smoothgrad", sigma=0.15, n_samples=10).attribution
    assert r["n"][10][0] == pytest.approx(
        oe.evaluate(None, x, sg, "total_variation", min_size=(8, 8))["mean"]
    )
    assert all(v[0] >= 0 and math.isfinite(v[1]) for v in [*r["sigma"].values(), *r["n"].values()])
    best = min((s for s in r["sigma"] if s > 0), key=lambda s: r["sigma"][s][0])
    assert r["smoother"] == (1 - r["sigma"][best][0] / r["gradient"][0] > 0.02)
    text = (results_in_tmp / "claims_smoothgrad.md").read_text()
    assert f"| gradient | – | – | {tv:.4f} | {aopc:.3f} |" in text
    assert ("NOT reproduced" in text) != r["smoother"]
    assert (results_in_tmp / "claims_smoothgrad.png").stat().st_size > 0


def test_noise_quick(results_in_tmp):
    r = claims.bench_noise(quick=True)
    res = r["results"]
    assert set(res) == {
        "digits/gradient",
        "digits/smoothgrad",
        "digits_noise/gradient",
        "digits_noise/smoothgrad",
    }
    x = claims._digits(4)
    m = claims._model("digits_noise")
    grad = oe.explain(m, x, "gradient").attribution
    assert res["digits_noise/gradient"] == pytest.approx(
        (oe.evaluate(None, x, grad, "total_variation", min_size=(8, 8))["mean"],
         oe.evaluate(m, x, grad, "pixel_flipping", pixels_per_step=16)["mean"]), rel=1e-9,
    )  # fmt: skip
    assert all(v[0] >= 0 and math.isfinite(v[1]) for v in res.values())
    assert r["additive"] == (
        res["digits_noise/smoothgrad"][0] < min(res["digits/smoothgrad"][0], res["digits_noise/gradient"][0])
    )
    text = (results_in_tmp / "claims_noise.md").read_text()
    for k, v in res.items():
        assert f"| {k.replace('/', ' | ')} | {v[0]:.4f} | {v[1]:.3f} |" in text


def test_smoothtaylor_quick(results_in_tmp):
    r = claims.bench_smoothtaylor(quick=True)
    res = r["results"]
    assert set(res) == {"integrated_gradients", "smoothtaylor σ=0.5", "smoothtaylor adaptive (autvc)"}
    m, x = claims._model("digits"), claims._digits(2)
    ig = oe.explain(m, x, "integrated_gradients", n_steps=32).attribution
    want = (oe.evaluate(None, x, ig, "total_variation", min_size=(8, 8))["mean"],
            oe.evaluate(m, x, ig, "aupc", kernel_size=5, num_regions=6, num_perturbs=8)["mean"])  # fmt: skip
    assert res["integrated_gradients"] == pytest.approx(want, rel=1e-9)
    # AUTVC is non-negative; the perturbation AUC of scores divided by |f(x)| starts at ±1 and stays finite
    assert all(v[0] >= 0 and math.isfinite(v[1]) for v in res.values())
    assert r["smoothtaylor_smoother"] == (res["smoothtaylor σ=0.5"][0] < res["integrated_gradients"][0])


def test_rank_quick(results_in_tmp):
    r = claims.bench_rank(quick=True)
    assert set(r["results"]) == {"integrated_gradients", "smoothgrad", "lrp"}
    for method, res in r["results"].items():
        assert res["ratios"] == (0.0, 0.5, 1.0) and res["eps"] == (0.0, 0.5)
        assert res["kendall_mask"][0] == pytest.approx(1.0), method  # ratio 0: the input is unchanged
        assert res["cosine_mask"][0] == pytest.approx(1.0, abs=1e-6), method
        assert res["kendall_add"][0] == pytest.approx(1.0), method  # ε = 0
        assert -1 <= res["kendall_mask"][1] < 1 and -1 <= res["cosine_mask"][1] < 1, (
            method
        )  # half the pixels gone
    # ratio 1 masks every pixel to the zero baseline: IG from a zero baseline is then exactly 0, so τ and
    # cosine are undefined (NaN, reported, not a crash); SmoothGrad's noisy copies still have gradients
    ig, sg = r["results"]["integrated_gradients"], r["results"]["smoothgrad"]
    assert np.isnan(ig["kendall_mask"][2]) and np.isnan(ig["cosine_mask"][2])
    assert np.isfinite(sg["kendall_mask"][2])
    assert r["smoothgrad_more_consistent"] == (sg["kendall_mask"][1] > ig["kendall_mask"][1])
    assert (results_in_tmp / "claims_rank.png").stat().st_size > 0


def test_faithfulness_quick(results_in_tmp):
    r = claims.bench_faithfulness(quick=True)
    methods = ("gradient", "gradient_x_input", "smoothgrad", "integrated_gradients", "lrp")
    assert set(r) == {f"{d}/{m}" for d in ("digits", "shapes", "wine") for m in methods}
    x = claims._digits(4)
    m = claims._model("digits")
    gxi = oe.explain(m, x, "gradient_x_input").attribution
    row = r["digits/gradient_x_input"]
    assert row["deletion"] == pytest.approx(oe.evaluate(m, x, gxi, "deletion", n_steps=32)["mean"], rel=1e-9)
    assert row["insertion"] == pytest.approx(
        oe.evaluate(m, x, gxi, "insertion", n_steps=32)["mean"], rel=1e-9
    )
    for key, v in r.items():
        assert -1 <= v["sensitivity_n"] <= 1, key  # an average of correlations
        if key.startswith("wine/"):
            assert math.isnan(v["deletion"]) and math.isnan(v["insertion"])  # RISE curves need images
        else:
            assert 0 <= v["deletion"] <= 1 and 0 <= v["insertion"] <= 1, key  # AUCs of probabilities
        if key.startswith("shapes/"):
            assert 0 <= v["localisation"] <= 1, key  # a share of the positive relevance
        else:
            assert "localisation" not in v
    assert all(r[f"digits/{k}"]["aopc_morf"] >= r[f"digits/{k}"]["aopc_lerf"] for k in methods)
    text = (results_in_tmp / "claims_faithfulness.md").read_text()
    assert all(
        f"| {k.replace('/', ' | ')} | {v['aopc_morf']:.3f} | {v['aopc_lerf']:.3f} |" in text
        for k, v in r.items()
    )
