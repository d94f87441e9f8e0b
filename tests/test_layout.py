"""Image layout is a property of the model: the same network exported NCHW and as an NHWC (or NHW)
twin gives the same metric scores, heatmaps and audit scores on the same data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import export
from torch import nn

import onnx_explain as oe
from onnx_explain.app.viz import heat_map

H = W = 16


class SmallCNN(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 4, 3, stride=2), nn.ReLU(),
            nn.Flatten(), nn.Linear(4 * 7 * 7, 5),
        )  # fmt: skip

    def forward(self, x):
        return self.body(x)


class ChannelsLast(nn.Module):
    """The same network reading (B, H, W, C): a Transpose at the input."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x.permute(0, 3, 1, 2))


class Grayscale(nn.Module):
    """The same one-channel network reading (B, H, W)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x.unsqueeze(1))


def _to_twin(a: np.ndarray, layout: str) -> np.ndarray:
    """An array laid out channel-first, moved to the twin's layout (leading axes kept)."""
    return np.moveaxis(a, -3, -1).copy() if layout == "NHWC" else a[..., 0, :, :].copy()


@pytest.fixture(scope="module", params=["NHWC", "NHW"])
def twins(request, tmp_path_factory):
    layout = request.param
    channels = 3 if layout == "NHWC" else 1
    torch.manual_seed(0)
    net = SmallCNN(channels).eval()
    x = torch.randn(3, channels, H, W, generator=torch.Generator().manual_seed(1))
    d = tmp_path_factory.mktemp(f"twins_{layout}")
    nchw = oe.load(export(net, x, d / "nchw.onnx", "legacy"))
    twin_net = ChannelsLast(net) if layout == "NHWC" else Grayscale(net)
    twin = oe.load(
        export(twin_net.eval(), torch.from_numpy(_to_twin(x.numpy(), layout)), d / "twin.onnx", "legacy")
    )
    a = np.random.default_rng(2).standard_normal(x.shape).astype(np.float32)
    return layout, nchw, twin, x.numpy(), a


def test_the_twins_declare_their_layout(twins):
    layout, nchw, twin, x, _ = twins
    assert (nchw.layout, nchw.channel_axis) == ("NCHW", 1)
    assert twin.layout == layout and twin.channel_axis == (3 if layout == "NHWC" else None)
    np.testing.assert_allclose(twin.predict(_to_twin(x, layout)), nchw.predict(x), rtol=1e-5, atol=1e-6)


# every image metric, with options that exercise its layout-sensitive parts (channel aggregation,
# regions, per-channel and array baselines, blur, random element subsets, square perturbations)
CASES = [
    ("pixel_flipping", {"n_steps": 12}),
    ("pixel_flipping", {"n_steps": 12, "agg": "mean_abs", "baseline": "quantus_mean"}),
    ("pixel_flipping", {"mode": "feature", "order": "random", "n_steps": 10, "baseline": "uniform"}),
    ("pixel_flipping", {"n_steps": 8, "baseline": "per-channel"}),
    ("pixel_flipping", {"n_steps": 8, "baseline": "array"}),
    ("region_perturbation", {"region": 4, "n_regions": 10, "compare_lerf": True}),
    ("region_perturbation", {"region": 5, "n_regions": 6, "agg": "mean_abs", "quantus_padding": True}),
    ("deletion", {"n_steps": 16}),
    ("insertion", {"n_steps": 16}),
    ("aupc", {"kernel_size": 4, "num_regions": 3, "num_perturbs": 5}),
    ("localisation", {"masks": "masks"}),
    ("total_variation", {"min_size": (4, 4)}),
    ("sensitivity_n", {"n_subsets": 6}),
    ("sensitivity_n", {"n_subsets": 4, "feature_level": "element"}),
    ("faithfulness_correlation", {"n_runs": 12, "subset_size": 40}),
    ("faithfulness_correlation", {"n_runs": 8, "subset_size": 10, "feature_level": "pixel"}),
    ("infidelity", {"n_samples": 6}),
    ("infidelity", {"perturbation": "square", "sizes": (3, 5), "n_samples": 6}),
    ("infidelity", {"perturbations": "explicit pair"}),
    ("max_sensitivity", {"perturbations": "explicit", "explainer": "gradient"}),
    ("max_sensitivity", {"n_samples": 3, "explainer": "gradient_x_input"}),
    ("rank_consistency", {"ratios": (0.1, 0.3), "explainer": "gradient_x_input"}),
    ("road", {"percentiles": (20, 60)}),
    ("road", {"order": "morf", "percentiles": (30,), "ties": "rank", "noise": 0.0}),
    ("adcc", {"explainer": "gradient_x_input"}),
]


def _options(opts: dict, x: np.ndarray, layout: str):
    """(options for the NCHW model, options for the twin): the same values in each one's layout."""
    ref, tw = dict(opts), dict(opts)
    if opts.get("baseline") == "per-channel":
        ref["baseline"] = tw["baseline"] = list(np.linspace(-0.5, 0.5, x.shape[1]))
    if opts.get("baseline") == "array":
        arr = np.random.default_rng(5).standard_normal(x.shape).astype(np.float32)
        ref["baseline"], tw["baseline"] = arr, _to_twin(arr, layout)
    if opts.get("perturbations") is not None:  # (B, n, *S) arrays laid out like the input
        rng = np.random.default_rng(7)
        p = [rng.uniform(-0.1, 0.1, (len(x), 4, *x.shape[1:])).astype(np.float32) for _ in range(2)]
        if opts["perturbations"] == "explicit pair":  # infidelity's (I, x̃)
            p[1] = x[:, None] - p[0]
            ref["perturbations"], tw["perturbations"] = tuple(p), tuple(_to_twin(v, layout) for v in p)
        else:
            ref["perturbations"], tw["perturbations"] = p[0], _to_twin(p[0], layout)
    if opts.get("masks") == "masks":
        ref["masks"] = tw["masks"] = np.random.default_rng(6).random((len(x), H, W)) > 0.6
    return ref, tw


@pytest.mark.parametrize(("metric", "opts"), CASES, ids=[f"{m}-{i}" for i, (m, _) in enumerate(CASES)])
def test_every_image_metric_scores_the_twin_identically(twins, metric, opts):
    layout, nchw, twin, x, a = twins
    ref_opts, twin_opts = _options(opts, x, layout)
    explainer = ref_opts.pop("explainer", None)
    twin_opts.pop("explainer", None)
    a_ref = None if explainer else a
    a_twin = None if explainer else _to_twin(a, layout)
    ref = oe.evaluate(nchw, x, a_ref, metric, explainer=explainer, batch_size=7, **ref_opts)
    got = oe.evaluate(
        twin, _to_twin(x, layout), a_twin, metric, explainer=explainer, batch_size=7, **twin_opts
    )
    assert np.isfinite(ref["scores"]).any()
    np.testing.assert_array_equal(got["target"], ref["target"])
    np.testing.assert_allclose(got["scores"], ref["scores"], rtol=1e-5, atol=1e-6)
    for key in ("curve", "curve_lerf", "deltas", "kendall", "cosine", "sensitivities"):
        if key in ref:
            np.testing.assert_allclose(got[key], ref[key], rtol=1e-5, atol=1e-6, err_msg=key)
    if metric not in ("localisation", "total_variation"):
        assert got["model_calls"] == ref["model_calls"]


def test_channel_aggregated_attributions_need_no_moving(twins):
    layout, nchw, twin, x, a = twins
    maps = a.sum(1)  # (B, H, W): the same in every layout
    ref = oe.evaluate(nchw, x, maps, "region_perturbation", region=4, n_regions=8)
    got = oe.evaluate(twin, _to_twin(x, layout), maps, "region_perturbation", region=4, n_regions=8)
    np.testing.assert_allclose(got["curve"], ref["curve"], rtol=1e-5, atol=1e-6)


def test_a_callable_model_takes_the_layout_as_an_argument(twins):
    layout, nchw, twin, x, a = twins
    ref = oe.evaluate(nchw, x, a, "pixel_flipping", n_steps=6)
    got = oe.evaluate(lambda z: twin.predict(z, space="logit"), _to_twin(x, layout), _to_twin(a, layout),
                      "pixel_flipping", n_steps=6, layout=layout)  # fmt: skip
    np.testing.assert_allclose(got["curve"], ref["curve"], rtol=1e-5, atol=1e-6)


def test_units_are_pixels_of_the_image_not_rows_of_the_tensor(twins):
    # the old metrics took axis 1 for the channels: an NHWC (B, 16, 16, 3) batch gave a 16 x 3 "image"
    # (region perturbation: 4 x 1 regions of side 4), pixel flipping ranked 16·3 = 48 "pixels"
    layout, nchw, twin, x, a = twins
    xt, at = _to_twin(x, layout), _to_twin(a, layout)
    reg = oe.evaluate(twin, xt, at, "region_perturbation", region=4, n_regions=1000)
    assert reg["n_regions"] == (H // 4) * (W // 4) == 16
    pf = oe.evaluate(twin, xt, at, "pixel_flipping", pixels_per_step=1)
    assert pf["curve"].shape == (len(x), H * W + 1)
    if layout == "NHWC":  # what channels-on-axis-1 computes on this batch: different numbers
        old = oe.evaluate(twin, xt, at, "region_perturbation", region=4, n_regions=1000, layout="NCHW")
        assert old["n_regions"] == 4
        assert not np.allclose(old["scores"], reg["scores"])


def test_heatmaps_are_the_same_in_every_layout(twins):
    layout, nchw, twin, x, a = twins
    for agg in ("sum", "sum_abs", "mean_abs", "max_abs", "l2"):
        for sign in ("signed", "abs"):
            want = heat_map(a[0], "NCHW", agg, sign)
            got = heat_map(_to_twin(a, layout)[0], twin.layout, agg, sign)
            np.testing.assert_array_equal(got, want)
            assert want.shape == (H, W)


def test_integrated_gradients_baselines_follow_the_channel_axis(twins):
    layout, nchw, twin, x, a = twins
    per_channel = list(np.linspace(-0.5, 0.5, x.shape[1]))
    for baseline in (per_channel, "blur", "zero"):
        ref = oe.explain(nchw, x, "integrated_gradients", target=1, n_steps=6, baseline=baseline)
        got = oe.explain(
            twin, _to_twin(x, layout), "integrated_gradients", target=1, n_steps=6, baseline=baseline
        )
        scale = np.abs(ref.attribution).max()
        np.testing.assert_allclose(
            got.attribution, _to_twin(ref.attribution, layout), rtol=1e-4, atol=1e-5 * scale
        )
        np.testing.assert_allclose(got.extras["delta"], ref.extras["delta"], rtol=1e-4, atol=1e-5 * scale)


def test_audit_scores_are_the_same_in_every_layout(twins, tmp_path):
    from onnx_explain.app.audit import run_audit

    layout, nchw, twin, x, a = twins
    np.save(tmp_path / "nchw.npy", x)
    np.save(tmp_path / "twin.npy", _to_twin(x, layout))
    methods = {"gradient_x_input": {}, "integrated_gradients": {"n_steps": 4}}
    metrics = ["pixel_flipping", "deletion", "insertion", "region_perturbation", "total_variation"]
    ref = run_audit(nchw, [tmp_path / "nchw.npy"], tmp_path / "a", methods, metrics)
    got = run_audit(twin, [tmp_path / "twin.npy"], tmp_path / "b", methods, metrics)
    assert not ref["errors"] and not got["errors"]
    assert set(got["scores"]) == set(metrics)
    for metric in metrics:
        for method in methods:
            np.testing.assert_allclose(
                got["scores"][metric][method]["per_item"], ref["scores"][metric][method]["per_item"],
                rtol=1e-4, atol=1e-6, err_msg=f"{metric}/{method}",
            )  # fmt: skip
    assert (tmp_path / "b" / "report.html").read_text().count("data:image/png;base64,") >= 2


def test_lrp_per_channel_bounds_follow_the_channel_axis(twins):
    # z^B acts at the first Conv, which reads channels on axis 1 in both twins (the NHWC one transposes
    # first): per-channel bounds give the same relevance in both layouts
    layout, nchw, twin, x, _ = twins
    if layout != "NHWC":
        pytest.skip("per-channel bounds need a channel axis")
    low, high = [-2.0, -1.5, -1.0], [2.0, 2.5, 3.0]
    ref = oe.explain(nchw, x, "lrp", composite="epsilon_gamma_box", low=low, high=high)
    got = oe.explain(twin, _to_twin(x, layout), "lrp", composite="epsilon_gamma_box", low=low, high=high)
    np.testing.assert_array_equal(got.target, ref.target)
    np.testing.assert_allclose(got.attribution, _to_twin(ref.attribution, layout), rtol=1e-4, atol=1e-6)
    # and they are per channel, not one value: other bounds give another map
    flat = oe.explain(twin, _to_twin(x, layout), "lrp", composite="epsilon_gamma_box", low=-2.0, high=3.0)
    assert not np.allclose(flat.attribution, got.attribution)
