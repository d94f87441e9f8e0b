"""The claims benchmarks (benchmarks/claims.py), checked without its own expressions.

- Each verdict is a pure function of measured numbers: on numbers chosen here by hand it must come out as
  written here, and flip where one number crosses its threshold.
- The stored full runs (benchmarks/results/claims_*.md) are read back: their verdict sentences must follow
  from their own tables by the rules written out in this file (``_smoother`` ...), and the current verdict
  functions must agree with them (a changed threshold or rule without a rerun fails here).
- The quick mode of every benchmark runs on a tiny subset (SmoothGrad and noise in the default run, the
  slower three with ``pytest -m slow``, so that the default run of this file stays under 20 s): the
  numbers a verdict rests on are recomputed here with the library at the settings the benchmark prints,
  they obey identities that hold whatever the model (τ = 1 for an unchanged input, SmoothGrad at σ = 0 is
  the gradient, IG of an all-baseline input is 0 ...), the verdict follows from the recomputed numbers by
  the rules below, and the file it writes says the same.
"""

from __future__ import annotations

import math
import re
import sys

import numpy as np
import pytest
from conftest import ROOT

import onnx_explain as oe
from onnx_explain.evaluation import make_explainer

sys.path.insert(0, str(ROOT / "benchmarks"))
import claims  # noqa: E402

STORED = ROOT / "benchmarks" / "results"
NAN = float("nan")


@pytest.fixture(autouse=True)
def results_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setattr(claims, "RESULTS", tmp_path)
    return tmp_path


# ------------------------------------------------------------------------------ the rules, written out
def _smoother(gradient_tv: float, tv_by_sigma: dict) -> tuple[bool, float, float]:
    """Smilkov et al.: SmoothGrad is smoother when its best σ > 0 lowers the gradient's AUTVC by > 2 %."""
    best_sigma, best_tv = None, math.inf
    for sigma, tv in tv_by_sigma.items():
        if sigma > 0 and tv < best_tv:
            best_sigma, best_tv = sigma, tv
    drop = (gradient_tv - best_tv) / gradient_tv
    return bool(drop > 0.02), best_sigma, drop


def _additive(tv: dict) -> bool:
    """Smilkov et al. §4.2: the noise-trained model with SmoothGrad is smoother than either alone."""
    both = tv["digits_noise", "smoothgrad"]
    return bool(both < tv["digits", "smoothgrad"] and both < tv["digits_noise", "gradient"])


def _smoothtaylor(ig_tv: float, st_tv: float) -> bool:
    """Goh et al.: SmoothTaylor's AUTVC is below IG's."""
    return bool(st_tv < ig_tv)


def _rank(tau_sg: float, tau_ig: float) -> bool:
    """Park: at half the pixels removed SmoothGrad keeps a higher Kendall τ than IG."""
    return bool(tau_sg > tau_ig)


def _tables(text: str) -> list[list[list[str]]]:
    """The markdown tables of ``text``: each a list of rows of stripped cells, header first, no rule."""
    tables, rows = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(set(c) <= {"-"} for c in cells):
                rows.append(cells)
        elif rows:
            tables.append(rows)
            rows = []
    return tables


# ------------------------------------------------------------------------------ verdicts on numbers by hand
@pytest.mark.parametrize(
    ("gradient_tv", "tv_by_sigma", "want"),
    [
        (1.0, {0.0: 1.0, 0.1: 0.981, 0.3: 0.99}, (False, 0.1)),  # 1.9 % lower: not enough
        (1.0, {0.0: 1.0, 0.1: 0.979, 0.3: 0.99}, (True, 0.1)),  # 2.1 % lower
        (2.0, {0.0: 2.0, 0.1: 1.959, 0.3: 1.961}, (True, 0.1)),  # the drop is relative: 2.05 %
        (2.0, {0.0: 2.0, 0.1: 1.961, 0.3: 1.962}, (False, 0.1)),  # 1.95 %
        (1.0, {0.0: 0.5, 0.1: 0.99}, (False, 0.1)),  # σ = 0 is the gradient itself, never the best σ
        (1.0, {0.0: 1.0, 0.1: 1.05, 0.5: 0.9}, (True, 0.5)),  # the best σ, not the first
        (1.0, {0.0: 1.0, 0.1: 1.2, 0.3: 1.1}, (False, 0.3)),  # rougher than the gradient
    ],
    ids=["1.9%", "2.1%", "relative-2.05%", "relative-1.95%", "sigma0-excluded", "best-sigma", "rougher"],
)
def test_smoother_verdict_flips_at_a_2_percent_drop(gradient_tv, tv_by_sigma, want):
    holds, best, drop = claims.verdict_smoother(gradient_tv, tv_by_sigma)
    assert (holds, best) == want
    assert drop == pytest.approx(1 - tv_by_sigma[best] / gradient_tv)


@pytest.mark.parametrize(
    ("noise_sg", "normal_sg", "noise_grad", "want"),
    [(0.64, 0.70, 0.66, True), (0.67, 0.70, 0.66, False), (0.71, 0.70, 0.80, False),
     (0.66, 0.70, 0.66, False), (0.70, 0.70, 0.80, False), (NAN, 0.70, 0.66, False)],
    ids=["below-both", "above-noise-gradient", "above-normal-smoothgrad", "tie-noise-gradient",
         "tie-normal-smoothgrad", "nan"],
)  # fmt: skip
def test_additive_verdict_needs_the_lowest_autvc(noise_sg, normal_sg, noise_grad, want):
    tv = {("digits", "gradient"): 0.9, ("digits", "smoothgrad"): normal_sg,
          ("digits_noise", "gradient"): noise_grad, ("digits_noise", "smoothgrad"): noise_sg}  # fmt: skip
    assert claims.verdict_additive(tv) is want


@pytest.mark.parametrize(
    ("ig", "st", "want"),
    [(0.5342, 0.7592, False), (0.5342, 0.5341, True), (0.5342, 0.5342, False), (0.5, NAN, False)],
    ids=["above", "just-below", "tie", "nan"],
)
def test_smoothtaylor_verdict_needs_a_lower_autvc(ig, st, want):
    assert claims.verdict_smoothtaylor(ig, st) is want


@pytest.mark.parametrize(
    ("sg", "ig", "want"),
    [
        (0.409, 0.013, True),
        (0.013, 0.409, False),
        (0.2, 0.2, False),
        (0.001, -0.001, True),
        (0.4, NAN, False),
    ],
    ids=["stored", "reversed", "tie", "just-above", "ig-undefined"],
)
def test_rank_verdict_needs_a_higher_tau(sg, ig, want):
    assert claims.verdict_rank(sg, ig) is want


# ------------------------------------------------------------------------------ the stored full runs
def test_stored_smoothgrad_verdict_follows_from_its_table():
    text = (STORED / "claims_smoothgrad.md").read_text()
    rows = _tables(text)[0][1:]
    gradient_tv = next(float(r[3]) for r in rows if r[0] == "gradient")
    sweep_n = next(r[2] for r in rows if r[0] == "SmoothGrad" and float(r[1]) == 0.0)  # the σ sweep's n
    tv_by_sigma = {float(r[1]): float(r[3]) for r in rows if r[0] == "SmoothGrad" and r[2] == sweep_n}
    assert len(tv_by_sigma) >= 5 and 0.0 in tv_by_sigma
    holds, best, drop = _smoother(gradient_tv, tv_by_sigma)
    stated = re.search(r"the best σ \(([\d.]+)\) lowers AUTVC by (-?[\d.]+) %", text)
    assert float(stated[1]) == best
    assert float(stated[2]) == pytest.approx(100 * drop, abs=0.06)  # from the table's 4 decimals
    assert ("NOT reproduced" in text) is not holds
    assert claims.verdict_smoother(gradient_tv, tv_by_sigma)[0] is holds


def test_stored_noise_verdict_follows_from_its_table():
    text = (STORED / "claims_noise.md").read_text()
    tv = {(r[0], r[1]): float(r[2]) for r in _tables(text)[0][1:]}
    assert set(tv) == {(m, k) for m in ("digits", "digits_noise") for k in ("gradient", "smoothgrad")}
    holds = _additive(tv)
    assert ("yes — reproduced." in text) is holds and ("no — NOT reproduced" in text) is not holds
    assert claims.verdict_additive(tv) is holds


def test_stored_smoothtaylor_verdict_follows_from_its_table():
    text = (STORED / "claims_smoothtaylor.md").read_text()
    tv = {r[0]: float(r[1]) for r in _tables(text)[0][1:]}
    holds = _smoothtaylor(tv["integrated_gradients"], tv["smoothtaylor σ=0.5"])
    assert ("SmoothTaylor below IG — reproduced." in text) is holds
    assert ("SmoothTaylor not below IG — NOT reproduced." in text) is not holds
    assert claims.verdict_smoothtaylor(tv["integrated_gradients"], tv["smoothtaylor σ=0.5"]) is holds


def test_stored_rank_verdict_follows_from_its_table():
    text = (STORED / "claims_rank.md").read_text()
    kendall = _tables(text)[0]
    ratios = [float(h.removeprefix("τ @ ")) for h in kendall[0][1:]]
    tau = {r[0]: [float(v) for v in r[1:]] for r in kendall[1:]}
    assert all(t[0] == 1.0 for t in tau.values())  # ratio 0: the input is unchanged
    stated = re.search(r"at removal ratio ([\d.]+): τ = (-?[\d.]+) \(SmoothGrad\) vs (-?[\d.]+) \(IG\)", text)
    ratio = float(stated[1])
    assert ratio == ratios[len(ratios) // 2] == 0.5  # the middle of the sweep: half the pixels removed
    sg, ig = tau["smoothgrad"][ratios.index(ratio)], tau["integrated_gradients"][ratios.index(ratio)]
    assert (float(stated[2]), float(stated[3])) == (sg, ig)
    holds = _rank(sg, ig)
    assert ("the ordering reproduces." in text) is holds
    assert ("the ordering does NOT reproduce" in text) is not holds
    assert claims.verdict_rank(sg, ig) is holds


def test_stored_faithfulness_numbers_are_in_range():
    rows = _tables((STORED / "claims_faithfulness.md").read_text())[0][1:]
    assert {(r[0], r[1]) for r in rows} == {
        (d, m) for d in ("digits", "shapes", "wine")
        for m in ("gradient", "gradient_x_input", "smoothgrad", "integrated_gradients", "lrp")
    }  # fmt: skip
    for model, method, morf, lerf, dele, ins, sens, loc in rows:
        v = {k: float(s) for k, s in zip(("morf", "lerf", "del", "ins", "sens", "loc"),
                                         (morf, lerf, dele, ins, sens, loc), strict=True)}  # fmt: skip
        assert -1 <= v["sens"] <= 1, (model, method)  # a mean of correlations
        if model == "wine":
            assert math.isnan(v["del"]) and math.isnan(v["ins"])
        else:
            assert 0 <= v["del"] <= 1 and 0 <= v["ins"] <= 1, (model, method)  # AUCs of probabilities
        assert (0 <= v["loc"] <= 1) if model == "shapes" else math.isnan(v["loc"]), (model, method)
        if model == "digits":
            assert v["morf"] >= v["lerf"], method


# ------------------------------------------------------------------------------ the quick runs
def _tv(x, a) -> float:
    return oe.evaluate(None, x, a, "total_variation", min_size=(8, 8))["mean"]


def test_smoothgrad_quick(results_in_tmp):
    r = claims.bench_smoothgrad(quick=True)
    m, x = claims._model("digits"), claims._digits(4)
    grad = oe.explain(m, x, "gradient").attribution
    tv, aopc = _tv(x, grad), oe.evaluate(m, x, grad, "pixel_flipping", pixels_per_step=16)["mean"]
    assert r["gradient"] == pytest.approx((tv, aopc), rel=1e-9)
    assert r["sigma"][0.0] == pytest.approx(r["gradient"], rel=1e-5)  # σ = 0 is the gradient
    sg = oe.explain(m, x, "smoothgrad", sigma=0.15, n_samples=10).attribution
    assert r["n"][10][0] == pytest.approx(_tv(x, sg))
    assert all(v[0] >= 0 and math.isfinite(v[1]) for v in [*r["sigma"].values(), *r["n"].values()])
    # the verdict, from the AUTVC of the σ sweep recomputed here (the quick settings: 10 samples)
    by_sigma = {
        s: _tv(x, oe.explain(m, x, "smoothgrad", sigma=s, n_samples=10).attribution) for s in (0.1, 0.3)
    }
    by_sigma[0.0] = tv
    assert {s: v[0] for s, v in r["sigma"].items()} == pytest.approx(by_sigma, rel=1e-5)
    holds, best, drop = _smoother(tv, by_sigma)
    assert r["smoother"] is holds
    text = (results_in_tmp / "claims_smoothgrad.md").read_text()
    assert f"| gradient | – | – | {tv:.4f} | {aopc:.3f} |" in text
    assert f"the best σ ({best}) lowers AUTVC by {100 * drop:.1f} %" in text
    assert ("NOT reproduced" in text) is not holds
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
    tv = {}
    for name in ("digits", "digits_noise"):
        m = claims._model(name)
        grad = oe.explain(m, x, "gradient").attribution
        tv[name, "gradient"] = _tv(x, grad)
        tv[name, "smoothgrad"] = _tv(x, oe.explain(m, x, "smoothgrad", n_samples=10).attribution)
        if name == "digits_noise":
            aopc = oe.evaluate(m, x, grad, "pixel_flipping", pixels_per_step=16)["mean"]
            assert res["digits_noise/gradient"] == pytest.approx((tv[name, "gradient"], aopc), rel=1e-9)
    assert {k: res["/".join(k)][0] for k in tv} == pytest.approx(tv, rel=1e-9)
    assert all(v[0] >= 0 and math.isfinite(v[1]) for v in res.values())
    assert r["additive"] is _additive(tv)
    text = (results_in_tmp / "claims_noise.md").read_text()
    for k, v in res.items():
        assert f"| {k.replace('/', ' | ')} | {v[0]:.4f} | {v[1]:.3f} |" in text
    assert ("yes — reproduced." in text) is _additive(tv)


@pytest.mark.slow  # a quick benchmark run (5–17 s); `pytest -m slow` runs it
def test_smoothtaylor_quick(results_in_tmp):
    r = claims.bench_smoothtaylor(quick=True)
    res = r["results"]
    assert set(res) == {"integrated_gradients", "smoothtaylor σ=0.5", "smoothtaylor adaptive (autvc)"}
    m, x = claims._model("digits"), claims._digits(2)
    ig = oe.explain(m, x, "integrated_gradients", n_steps=32).attribution
    want = (_tv(x, ig), oe.evaluate(m, x, ig, "aupc", kernel_size=5, num_regions=6, num_perturbs=8)["mean"])
    assert res["integrated_gradients"] == pytest.approx(want, rel=1e-9)
    st_tv = _tv(x, oe.explain(m, x, "smoothtaylor", sigma=0.5, n_roots=20).attribution)
    assert res["smoothtaylor σ=0.5"][0] == pytest.approx(st_tv, rel=1e-9)
    # AUTVC is non-negative; the perturbation AUC of scores divided by |f(x)| starts at ±1 and stays finite
    assert all(v[0] >= 0 and math.isfinite(v[1]) for v in res.values())
    assert r["smoothtaylor_smoother"] is _smoothtaylor(want[0], st_tv)
    text = (results_in_tmp / "claims_smoothtaylor.md").read_text()
    assert ("SmoothTaylor below IG — reproduced." in text) is _smoothtaylor(want[0], st_tv)


@pytest.mark.slow  # a quick benchmark run (5–17 s); `pytest -m slow` runs it
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
    # the verdict, from τ at half the pixels removed recomputed here (that ratio alone)
    m, x = claims._model("digits"), claims._digits(3)
    tau = {}
    for method, opts in (("integrated_gradients", {"n_steps": 16, "quadrature_method": "trapezoid"}),
                         ("smoothgrad", {"n_samples": 10})):  # fmt: skip
        ex = make_explainer(m, method, **opts)
        tau[method] = oe.evaluate(m, x, None, "rank_consistency", explainer=ex, ratios=(0.5,))[
            "kendall_by_step"
        ][0]
        assert r["results"][method]["kendall_mask"][1] == pytest.approx(tau[method], rel=1e-9)
    holds = _rank(tau["smoothgrad"], tau["integrated_gradients"])
    assert r["smoothgrad_more_consistent"] is holds
    text = (results_in_tmp / "claims_rank.md").read_text()
    assert f"τ = {tau['smoothgrad']:.3f} (SmoothGrad) vs {tau['integrated_gradients']:.3f} (IG)" in text
    assert ("the ordering reproduces." in text) is holds
    assert (results_in_tmp / "claims_rank.png").stat().st_size > 0


@pytest.mark.slow  # a quick benchmark run (5–17 s); `pytest -m slow` runs it
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
