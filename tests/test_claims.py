"""The quick mode of every claims benchmark runs on a tiny subset; its output has the right structure and
passes sanity checks (τ = 1 for an unchanged input, SmoothGrad at σ = 0 is the gradient ...)."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import claims  # noqa: E402


@pytest.fixture(autouse=True)
def results_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setattr(claims, "RESULTS", tmp_path)
    return tmp_path


def test_smoothgrad_quick(results_in_tmp):
    r = claims.bench_smoothgrad(quick=True)
    assert r["sigma"][0.0] == pytest.approx(r["gradient"])  # σ = 0 is the gradient
    assert set(r["n"]) == {1, 10}
    text = (results_in_tmp / "claims_smoothgrad.md").read_text()
    assert "Claim (Smilkov" in text and (results_in_tmp / "claims_smoothgrad.png").exists()


def test_noise_quick(results_in_tmp):
    r = claims.bench_noise(quick=True)
    assert set(r["results"]) == {
        "digits/gradient",
        "digits/smoothgrad",
        "digits_noise/gradient",
        "digits_noise/smoothgrad",
    }
    assert all(v[0] >= 0 and math.isfinite(v[1]) for v in r["results"].values())


def test_smoothtaylor_quick(results_in_tmp):
    r = claims.bench_smoothtaylor(quick=True)
    assert len(r["results"]) == 3 and all(v[0] >= 0 for v in r["results"].values())


def test_rank_quick(results_in_tmp):
    r = claims.bench_rank(quick=True)
    for method, res in r["results"].items():
        assert res["kendall_mask"][0] == pytest.approx(1.0), method  # ratio 0: the input is unchanged
        assert res["cosine_mask"][0] == pytest.approx(1.0, abs=1e-6), method
        assert res["kendall_add"][0] == pytest.approx(1.0), method  # ε = 0
        assert all(np.isnan(v) or -1 <= v <= 1 for v in res["kendall_mask"])
    assert (results_in_tmp / "claims_rank.png").exists()


def test_faithfulness_quick(results_in_tmp):
    r = claims.bench_faithfulness(quick=True)
    assert len(r) == 3 * 5
    assert all("localisation" in v for k, v in r.items() if k.startswith("shapes/"))
    assert all(v["aopc_morf"] >= v["aopc_lerf"] for k, v in r.items() if k.startswith("digits/"))
    assert "| shapes | lrp |" in (results_in_tmp / "claims_faithfulness.md").read_text()
