"""Knowledge lives on the spec objects: the batch runs, the audit and the CLI read every fact about a
method or metric from the registries, and one helper checks options everywhere."""

from __future__ import annotations

import json
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import ROOT

import onnx_explain as oe
from onnx_explain.app.audit import default_methods, default_metrics, run_audit
from onnx_explain.app.batch import evaluate_dir, explain_files
from onnx_explain.methods.base import METHODS, MODALITIES, OUTPUTS, SIGNS, register_method
from onnx_explain.metrics.base import METRICS, register_metric
from onnx_explain.options import UnknownOptionError, route_options, validate_call

DIGITS = ROOT / "models" / "digits.onnx"
SAMPLES = ROOT / "models" / "samples" / "digits.npy"


@pytest.fixture(scope="module")
def digits():
    m = oe.load(DIGITS)
    m.torch_module()
    return m


@contextmanager
def registered(registry: dict, name: str):
    try:
        yield
    finally:
        registry.pop(name, None)


def test_method_facts():
    for name, spec in METHODS.items():
        assert spec.sign in SIGNS and spec.output in OUTPUTS and set(spec.modalities) <= set(MODALITIES), name
        assert spec.cost, name
    # magnitudes: the gradient, SmoothGrad, and the CAMs (ReLU'd maps scaled to [0, 1])
    cams = {
        "gradcam",
        "gradcam_pp",
        "xgradcam",
        "hirescam",
        "layercam",
        "eigencam",
        "scorecam",
        "ablationcam",
        "reciprocam",
    }
    assert {n for n, s in METHODS.items() if s.sign == "abs"} == {"gradient", "smoothgrad"} | cams
    assert {n for n, s in METHODS.items() if s.stochastic} == {
        "smoothgrad",
        "smoothtaylor",
        "smoothtaylor_adaptive",
        "kernel_shap",
        "lime",
        "rise",
        "drise",
        "shapley_sampling",
    }
    assert METHODS["smoothgrad"].delegate == "base"


def test_metric_facts_and_defaults_of_evaluate(digits):
    assert {n for n, s in METRICS.items() if s.output == "prob"} == {
        "deletion", "insertion", "token_deletion", "token_insertion", "adcc",
    }  # fmt: skip
    assert {n for n, s in METRICS.items() if not s.needs_model} == {
        "total_variation", "localisation", "max_sensitivity", "rank_consistency", "token_rank_consistency",
    }  # fmt: skip
    assert {n for n, s in METRICS.items() if s.needs_explainer} == {
        "max_sensitivity", "rank_consistency", "token_rank_consistency", "adcc",
    }  # fmt: skip
    x = np.load(SAMPLES)[:2]
    a = np.random.default_rng(0).standard_normal(x.shape)
    for metric in ("deletion", "pixel_flipping"):
        r = oe.evaluate(digits, x, a, metric, n_steps=4)
        assert r["output"] == METRICS[metric].output
    with pytest.raises(oe.OnnxExplainError, match="'deletion' .* needs a model"):
        oe.evaluate(None, x, a, "deletion")
    tv = oe.evaluate(None, x, a, "total_variation", min_size=(8, 8))
    assert tv["model_calls"] == 0 and tv["scores"].shape == (2,)


def test_the_audit_defaults_come_from_the_registries():
    # the lists the audit hard-coded before the facts moved onto the specs
    assert default_metrics("image") == ["pixel_flipping", "deletion", "insertion", "faithfulness_correlation"]
    assert default_metrics("table") == ["sensitivity_n", "faithfulness_correlation", "infidelity"]
    assert default_methods("image") == default_methods("table") == {
        "gradient": {}, "smoothgrad": {"n_samples": 20}, "integrated_gradients": {"n_steps": 16},
        "lrp": {"composite": "auto"},
    }  # fmt: skip
    assert default_methods("tokens")["lrp"] == {"composite": "auto"}  # AttnLRP through the embedding cut


def _negative(scorer, x, target, generator=None, scale: float = 1.0):
    return -scale * torch.ones_like(x), {}


def _first_pixel(predictor, x, a, target, rng, weight: float = 1.0):
    s = predictor(x)[np.arange(len(x)), target]
    return {"value": weight * s, "curve": np.stack([s, s], 1)}


def test_a_new_method_needs_no_edit_of_batch_audit_or_cli(digits, tmp_path):
    from onnx_explain.app.viz import colorize, heat_map
    from onnx_explain.cli.explain import _methods_epilog

    with registered(METHODS, "test_negative"):
        register_method(
            "test_negative", "minus one everywhere", sign="abs", cost="nothing", overview={"scale": 2.0}
        )(_negative)
        assert "test_negative: minus one everywhere" in _methods_epilog()
        assert default_methods("image")["test_negative"] == {"scale": 2.0}
        # the heatmap sign is the method's: |−1| = 1 everywhere, drawn with the 'abs' colour map
        summary = explain_files(digits, [SAMPLES], tmp_path / "neg", "test_negative", scale=3.0)
        assert summary["ok"] == 8
        from PIL import Image

        png = np.asarray(Image.open(tmp_path / "neg" / "digits_000.png"))
        want = colorize(heat_map(-3 * np.ones((1, 32, 32)), "NCHW", "sum", "abs"), "abs")
        np.testing.assert_array_equal(png[..., :3], want)
        assert (want == colorize(np.ones((32, 32)), "abs")).all()
        with np.load(tmp_path / "neg" / "digits_000.npz") as z:
            assert json.loads(str(z["options"])) == {"scale": 3.0}
        with pytest.raises(
            UnknownOptionError, match="'scal' for method 'test_negative' .*did you mean 'scale'"
        ):
            explain_files(digits, [SAMPLES], tmp_path / "never", "test_negative", scal=3.0)
        assert not (tmp_path / "never").exists()
    assert "test_negative" not in METHODS


def test_a_new_metric_needs_no_edit_of_batch_audit_or_cli(digits, tmp_path):
    from onnx_explain.cli.evaluate import _metrics_epilog

    with registered(METRICS, "test_first"):
        register_metric("test_first", "the target score", score="value", higher_is_better=True, output="prob",
                        overview=("image",), cost="1 forward")(_first_pixel)  # fmt: skip
        assert "test_first: the target score" in _metrics_epilog()
        assert default_metrics("image")[-1] == "test_first"
        explain_files(digits, [SAMPLES], tmp_path / "g", "gradient")
        rep = evaluate_dir(
            digits, tmp_path / "g", ["test_first", "deletion"], options={"weight": 2.0, "n_steps": 4}
        )
        assert rep["metrics"]["test_first"]["options"] == {"weight": 2.0}
        assert rep["metrics"]["deletion"]["options"] == {"n_steps": 4}
        x = np.load(SAMPLES)
        p = digits.predict(x, space="logit")
        p = np.exp(p - p.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        np.testing.assert_allclose(
            list(rep["metrics"]["test_first"]["per_item"].values()), 2 * p.max(1), rtol=1e-5
        )  # its own default output space: probabilities
        audit = run_audit(digits, [SAMPLES], tmp_path / "audit", ["gradient"], max_items=2)
        assert audit["settings"]["metrics"][-1] == "test_first" and "test_first" in audit["scores"]


def test_an_evaluate_job_is_checked_before_reading_and_scores_as_evaluate(digits, tmp_path):
    import pickle

    from onnx_explain.app.job import EvaluateJob
    from onnx_explain.app.results import load_attributions

    # checked once, before any folder is read: the missing folder is never reached
    with pytest.raises(oe.OnnxExplainError, match="unknown metric 'delition'"):
        EvaluateJob.make(["delition"])
    with pytest.raises(UnknownOptionError, match="'n_step' for metric 'deletion'"):
        EvaluateJob.make(["deletion"], {"n_step": 3})
    with pytest.raises(oe.OnnxExplainError, match="'infidelity' has them"):
        EvaluateJob.make(["deletion", "infidelity"]).check_groupable()
    job = EvaluateJob.make(
        ["deletion", "pixel_flipping"], {"n_steps": 4, "pixel_flipping.n_steps": 2}, batch_size=3
    )
    assert job.options == {"deletion": {"n_steps": 4}, "pixel_flipping": {"n_steps": 2}}
    assert pickle.loads(pickle.dumps(job)) == job  # what Ray's actors receive
    explain_files(digits, [SAMPLES], tmp_path / "g", "gradient")
    names, xs, attrs, targets, _ = load_attributions(tmp_path / "g")
    wanted = names[::-2]
    got_names, got = job.score(digits, tmp_path / "g", wanted=wanted)
    assert got_names == wanted
    idx = [names.index(n) for n in wanted]
    for m in job.metrics:
        want = oe.evaluate(
            digits, xs[idx], attrs[idx], m, target=targets[idx], batch_size=5, **job.options[m]
        )
        np.testing.assert_allclose(got[m]["scores"], want["scores"], rtol=1e-6)


def test_unknown_options_are_errors_everywhere(digits, tmp_path):
    x = np.load(SAMPLES)[:1]
    with pytest.raises(UnknownOptionError) as info:
        oe.explain(digits, x, "smoothgrad", sigmaa=0.1)
    err = info.value
    assert isinstance(err, oe.OptionError) and isinstance(err, TypeError) and isinstance(err, ValueError)
    assert str(err).startswith(
        "unknown option 'sigmaa' for method 'smoothgrad' (did you mean 'sigma'?); accepted:"
    )
    assert "n_samples" in str(err)
    # SmoothGrad takes its base method's options, and only those
    oe.explain(digits, x, "smoothgrad", base="integrated_gradients", n_steps=2, n_samples=2)
    with pytest.raises(UnknownOptionError, match="'n_steps' for method 'smoothgrad'"):
        oe.explain(digits, x, "smoothgrad", n_steps=2, n_samples=2)
    with pytest.raises(UnknownOptionError, match="'n_step' for metric 'deletion' .*did you mean 'n_steps'"):
        oe.evaluate(digits, x, x, "deletion", n_step=3)
    explain_files(digits, [SAMPLES], tmp_path / "g", "gradient")
    # evaluate_dir used to drop keys that no metric took
    with pytest.raises(UnknownOptionError, match="'n_step' for metrics 'pixel_flipping', 'deletion'"):
        evaluate_dir(digits, tmp_path / "g", ["pixel_flipping", "deletion"], options={"n_step": 3})
    with pytest.raises(UnknownOptionError, match="'window' for metric 'deletion'"):
        evaluate_dir(digits, tmp_path / "g", ["pixel_flipping", "deletion"], options={"deletion.window": 3})
    # composites and other registries of plain functions
    from onnx_explain.lrp.composites import COMPOSITES

    with pytest.raises(
        UnknownOptionError, match="'epsilonn' for composite 'epsilon_plus' .*did you mean 'epsilon'"
    ):
        validate_call(
            COMPOSITES["epsilon_plus"], {"epsilonn": 1e-3}, "composite 'epsilon_plus'", skip=("layers",)
        )


def test_route_options():
    accepted = {"a": ["n", "k"], "b": ["n", "m"]}
    assert route_options({"n": 1, "m": 2, "a.k": 3}, accepted) == {
        "a": {"n": 1, "k": 3},
        "b": {"n": 1, "m": 2},
    }
    with pytest.raises(UnknownOptionError, match="'z' for metrics 'a', 'b'; accepted: k, m, n"):
        route_options({"z": 1}, accepted)


def _cli(*args):
    from onnx_explain.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def test_cli_option_errors_are_one_line_and_exit_2(tmp_path):
    att = tmp_path / "g"
    assert _cli("explain", DIGITS, SAMPLES, "-m", "gradient", "--out", att, "-q").exit_code == 0
    res = _cli("evaluate", DIGITS, "-a", att, "--metric", "pixel_flipping", "--option", "order=x")
    assert res.exit_code == 2 and res.output == "error: order must be 'morf', 'lerf' or 'random', not 'x'\n"
    res = _cli("evaluate", DIGITS, "-a", att, "--metric", "deletion", "--option", "n_step=4")
    assert res.exit_code == 2 and res.output.startswith(
        "error: unknown option 'n_step' for metric 'deletion'"
    )
    assert len(res.output.splitlines()) == 1
    for bad in (("--option", "sigmaa=0.1"), ("--option", "reduce=nope")):
        out = tmp_path / "never"
        res = _cli("explain", DIGITS, SAMPLES, "-m", "smoothgrad", "--samples", "2", *bad, "--out", out, "-q")
        assert res.exit_code == 2 and len(res.output.splitlines()) == 1 and res.output.startswith("error: ")
        assert not out.exists()
