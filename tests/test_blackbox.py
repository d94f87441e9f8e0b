"""Black-box attribution on onnxruntime (issue 15, docs/methods.md §2.8).

Oracles: Captum on the torch source of the exported model (with the same random draws: our per-sample
generator draws in Captum's order, so ``torch.manual_seed(seed)`` gives Captum the same perturbations),
onnxruntime on hand-built perturbed inputs, exact properties (efficiency, linear models), and the
batch-invariance of every result.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import export, make_model, save, vinfo
from onnx import TensorProto, helper
from torch import nn

import onnx_explain as oe
from onnx_explain.errors import ConversionError, OptionError
from onnx_explain.features import make_groups
from onnx_explain.methods import METHODS
from onnx_explain.methods.blackbox import draw_rise, rise_masks

captum_attr = pytest.importorskip("captum.attr")

BLACKBOX = ["occlusion", "feature_ablation", "shapley_sampling", "kernel_shap", "lime", "rise"]


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.f = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 8, 3, padding=1),
            nn.Tanh(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
        )  # fmt: skip

    def forward(self, x):
        return 10 * self.f(x)  # larger effects: LIME's Lasso keeps some coefficients


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    torch.manual_seed(0)
    net = SmallCNN().eval()
    x = torch.randn(3, 3, 10, 10, generator=torch.Generator().manual_seed(1))
    path = export(net, x, tmp_path_factory.mktemp("cnn") / "cnn.onnx", "legacy")
    return net, oe.load(path), x, torch.tensor([0, 2, 3])


def _grid_mask():
    """A 3x3 grid of 4x4 cells (cropped) over a 10x10 image, shared by the channels: (1, 1, 10, 10)."""
    r = np.arange(10) // 4
    return torch.from_numpy(r[:, None] * 3 + r[None, :])[None, None]


def _close(ours, theirs, rel=1e-5):
    theirs = theirs.detach().numpy() if isinstance(theirs, torch.Tensor) else theirs
    scale = np.abs(theirs).max()
    assert scale > 0, "the reference is zero: the test would prove nothing"
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=rel * scale)


def test_methods_are_registered_for_onnxruntime():
    for name in BLACKBOX:
        assert METHODS[name].backend == "onnxruntime", name
    assert METHODS["rise"].modalities == ("image",)
    assert METHODS["drise"].backend == "onnxruntime"  # scored with a box target (test_targets.py)


# ------------------------------------------------------------------------------------------ Captum
@pytest.mark.parametrize(("window", "strides"), [((3, 3, 3), (3, 2, 2)), ((1, 4, 5), (1, 3, 2))])
def test_occlusion_equals_captum(cnn, window, strides):
    net, model, x, t = cnn
    theirs = captum_attr.Occlusion(net).attribute(
        x, sliding_window_shapes=window, strides=strides, baselines=0.3, target=t
    )
    ours = oe.explain(model, x.numpy(), "occlusion", target=t.numpy(), window=window, strides=strides,
                      baseline=0.3, batch_size=7)  # fmt: skip
    _close(ours.attribution, theirs)
    assert ours.extras["n_evaluations"] == 1 + len(captum_windows(x.shape[1:], window, strides))


def captum_windows(shape, window, strides):
    """Captum's count of window positions: prod(ceil((D − w)/s) + 1)."""
    return range(
        int(np.prod([int(np.ceil((d - w) / s)) + 1 for d, w, s in zip(shape, window, strides, strict=True)]))
    )


@pytest.mark.parametrize("spec", ["grid", "slic:12"])
def test_feature_ablation_equals_captum(cnn, spec):
    net, model, x, t = cnn
    if spec == "grid":
        mask, ours_spec = _grid_mask(), _grid_mask().numpy()
    else:  # the superpixels of each sample, given to Captum as one mask per sample
        ids, _ = make_groups(spec, x, "NCHW")
        mask, ours_spec = ids[:, :1], spec
    theirs = captum_attr.FeatureAblation(net).attribute(x, baselines=-0.2, target=t, feature_mask=mask)
    ours = oe.explain(model, x.numpy(), "feature_ablation", target=t.numpy(), feature_groups=ours_spec,
                      baseline=-0.2, batch_size=5)  # fmt: skip
    _close(ours.attribution, theirs)


def test_shapley_sampling_equals_captum_with_the_same_permutations(cnn):
    net, model, x, t = cnn
    torch.manual_seed(5)
    theirs = captum_attr.ShapleyValueSampling(net).attribute(
        x, target=t, feature_mask=_grid_mask(), n_samples=3
    )
    ours = oe.explain(model, x.numpy(), "shapley_sampling", target=t.numpy(), feature_groups=_grid_mask().numpy(),
                      n_samples=3, seed=5, batch_size=6)  # fmt: skip
    _close(ours.attribution, theirs)
    # efficiency holds exactly for any number of permutations
    per_group = ours.attribution[:, 0].reshape(3, -1)
    sums = [
        per_group[b][np.unique(_grid_mask().numpy().ravel(), return_index=True)[1]].sum() for b in range(3)
    ]
    np.testing.assert_allclose(sums, ours.score - ours.extras["baseline_score"], atol=1e-4)


@pytest.mark.parametrize("method", ["kernel_shap", "lime"])
def test_kernel_shap_and_lime_equal_captum_with_the_same_samples(cnn, method):
    net, model, x, t = cnn
    ours = oe.explain(model, x.numpy(), method, target=t.numpy(), feature_groups=_grid_mask().numpy(),
                      n_samples=30, seed=7, batch_size=8)  # fmt: skip
    cls = captum_attr.KernelShap if method == "kernel_shap" else captum_attr.Lime
    for b in range(len(x)):  # Captum draws from one global stream per call: one sample at a time
        torch.manual_seed(7)
        theirs = cls(net).attribute(
            x[b : b + 1], target=t[b : b + 1], feature_mask=_grid_mask(), n_samples=30
        )
        _close(ours.attribution[b : b + 1], theirs, rel=1e-4)  # Captum fits in float32


# ------------------------------------------------------------------------------------------ exact properties
@pytest.fixture(scope="module")
def linear(tmp_path_factory):
    """f(x) = W x + c on 6 features: Shapley values are exactly w_i (x_i − b_i)."""
    rng = np.random.default_rng(3)
    W = rng.normal(size=(6, 2)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["m"]), helper.make_node("Add", ["m", "c"], ["y"])]
    inits = [helper.make_tensor("W", TensorProto.FLOAT, [6, 2], W.ravel().tolist()),
             helper.make_tensor("c", TensorProto.FLOAT, [2], [0.5, -1.0])]  # fmt: skip
    model = make_model(nodes, [vinfo("x", ["B", 6])], [vinfo("y", ["B", 2])], inits, opset=17)
    path = save(model, tmp_path_factory.mktemp("lin") / "lin.onnx")
    x = rng.normal(size=(2, 6)).astype(np.float32)
    return oe.load(path), W, x


@pytest.mark.parametrize(
    ("method", "options"),
    [("kernel_shap", {"n_samples": 40}), ("lime", {"n_samples": 40, "interpretable_model": "linear"}),
     ("shapley_sampling", {"n_samples": 2}), ("feature_ablation", {})],
)  # fmt: skip
def test_exact_on_a_linear_model(linear, method, options):
    model, W, x = linear
    b = np.array([0.1, -0.3, 0.0, 0.2, 0.5, -0.1], np.float32)
    e = oe.explain(model, x, method, target=1, baseline=b, feature_groups="columns", **options)
    np.testing.assert_allclose(e.attribution, W[:, 1] * (x - b), atol=2e-5)


def test_kernel_shap_efficiency_on_the_cnn(cnn):
    _, model, x, t = cnn
    e = oe.explain(model, x.numpy(), "kernel_shap", target=t.numpy(), feature_groups="slic:10", n_samples=20)
    base = model.predict(np.zeros_like(x.numpy()), space="output")[np.arange(3), t.numpy()]
    for b in range(3):
        ids = e.extras["feature_groups"][b]
        phi = [e.attribution[b][ids == g][0] for g in range(int(e.extras["n_groups"][b]))]
        np.testing.assert_allclose(sum(phi), e.score[b] - base[b], atol=1e-4 * abs(e.score[b]) + 1e-5)


# ------------------------------------------------------------------------------------------ RISE
def test_rise_masks_are_rise_skimage_upsampling():
    skimage_transform = pytest.importorskip("skimage.transform")
    g = torch.Generator().manual_seed(0)
    grid = (torch.rand(5, 4, 4, generator=g) < 0.5).double()
    shifts = torch.tensor([[0, 0], [1, 2], [3, 0], [2, 3], [3, 3]])
    ours = rise_masks(grid, shifts, (13, 15)).numpy()
    for i, (a, c) in enumerate(shifts.tolist()):
        up = skimage_transform.resize(
            grid[i].numpy(), (5 * 4, 5 * 4), order=1, mode="reflect", anti_aliasing=False
        )
        np.testing.assert_allclose(ours[i], up[a : a + 13, c : c + 15], atol=1e-12)


@pytest.mark.parametrize("p", [0.2, 0.5, 0.9])
def test_rise_mask_mean_is_p_keep(p):
    grid, shifts = draw_rise(2000, 5, p, (17, 11), torch.Generator().manual_seed(1))
    masks = rise_masks(grid, shifts, (17, 11))
    assert masks.shape == (2000, 17, 11) and 0 <= masks.min() and masks.max() <= 1
    assert abs(float(masks.mean()) - p) < 0.02


def test_rise_normalisation(cnn):
    _, model, x, t = cnn
    rng = np.random.default_rng(0)
    masks = rng.uniform(size=(7, 10, 10)).astype(np.float32)
    e = oe.explain(model, x.numpy(), "rise", target=t.numpy(), masks=masks, p_keep=0.4, batch_size=4)
    for b in range(3):
        scores = model.predict(x.numpy()[b] * masks[:, None], space="output")[:, t[b]]
        want = np.einsum("n,nhw->hw", scores, masks) / (7 * 0.4)
        np.testing.assert_allclose(e.attribution[b], np.broadcast_to(want, (3, 10, 10)), rtol=1e-5, atol=1e-6)
    ones = oe.explain(model, x.numpy(), "rise", target=t.numpy(), masks=np.ones((4, 10, 10)), p_keep=0.5)
    np.testing.assert_allclose(ones.attribution, np.broadcast_to(2 * ones.score[:, None, None, None], x.shape),
                               rtol=1e-5)  # fmt: skip


class RegionMean(nn.Module):
    """Scores: the mean of a fixed 3x3 region of channel 0, and its negative."""

    def forward(self, x):
        r = x[:, 0, 5:8, 1:4].mean((1, 2))
        return torch.stack([r, -r], 1)


def test_rise_peaks_where_the_model_looks(tmp_path):
    x = torch.ones(1, 3, 12, 12)
    model = oe.load(export(RegionMean(), x, tmp_path / "region.onnx", "legacy"))
    e = oe.explain(model, x.numpy(), "rise", target=0, n_masks=400, mask_resolution=4, p_keep=0.5)
    sal = e.attribution[0, 0]
    inside = np.zeros((12, 12), bool)
    inside[5:8, 1:4] = True
    assert np.unravel_index(sal.argmax(), sal.shape) in set(zip(*np.nonzero(inside), strict=True))
    assert sal[inside].mean() > sal[~inside].mean() + 0.1


# ------------------------------------------------------------------------------------------ invariance
@pytest.mark.parametrize(
    ("method", "options"),
    [("rise", {"n_masks": 20, "mask_resolution": 3}), ("kernel_shap", {"feature_groups": "slic:8"}),
     ("shapley_sampling", {"feature_groups": "grid:2", "n_samples": 2}), ("lime", {"feature_groups": "grid:3"}),
     ("occlusion", {"window": (3, 4, 4), "baseline": "uniform"})],
)  # fmt: skip
def test_batch_size_and_batch_composition_do_not_change_results(cnn, method, options):
    _, model, x, t = cnn
    run = lambda xs, ts, bs: oe.explain(model, xs, method, target=ts, seed=3, batch_size=bs, **options)  # noqa: E731
    big = run(x.numpy(), t.numpy(), 64).attribution
    np.testing.assert_allclose(run(x.numpy(), t.numpy(), 1).attribution, big, rtol=1e-5, atol=1e-6)
    alone = run(x.numpy()[2:], t.numpy()[2:], 5).attribution
    np.testing.assert_allclose(alone, big[2:], rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------ tokens
class TokenModel(nn.Module):
    """Embedding, masked mean over positions, linear head."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.emb = nn.Embedding(20, 5)
        self.head = nn.Linear(5, 3)

    def forward(self, input_ids, attention_mask):
        m = attention_mask.unsqueeze(-1).float()
        return self.head((self.emb(input_ids) * m).sum(1) / m.sum(1))


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    src = TokenModel().eval()
    ids = torch.tensor([[3, 7, 1, 9, 4, 0], [5, 2, 8, 0, 0, 0]])
    mask = (ids != 0).long()
    path = tmp_path_factory.mktemp("tok") / "tok.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(src, (ids, mask), str(path), dynamo=False, opset_version=17,
                          input_names=["input_ids", "attention_mask"], output_names=["logits"],
                          dynamic_axes={"input_ids": {0: "b", 1: "l"}, "attention_mask": {0: "b", 1: "l"}})  # fmt: skip
    return src, oe.load(path, input="input_ids"), ids, mask


@pytest.mark.parametrize(("method", "options"), [("occlusion", {"window": 1, "strides": 1}),
                                                  ("feature_ablation", {"feature_groups": "tokens"})])  # fmt: skip
def test_tokens_are_replaced_by_the_baseline_id(tokens, method, options):
    src, model, ids, mask = tokens
    t = torch.tensor([2, 0])
    e = oe.explain(model, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}, method, target=t.numpy(),
                   baseline=11, batch_size=4, **options)  # fmt: skip
    with torch.no_grad():
        f = src(ids, mask)[torch.arange(2), t]
        want = np.zeros(ids.shape, np.float32)
        for b in range(2):
            for i in range(ids.shape[1]):
                if mask[b, i]:
                    y = ids[b : b + 1].clone()
                    y[0, i] = 11
                    want[b, i] = f[b] - src(y, mask[b : b + 1])[0, t[b]]
    np.testing.assert_allclose(e.attribution, want, atol=1e-5)
    assert (e.attribution[mask.numpy() == 0] == 0).all()


# ------------------------------------------------------------------------------------------ no torch graph
def test_a_graph_without_torch_converter_is_still_explained(tmp_path):
    rng = np.random.default_rng(0)
    path = _unconvertible(tmp_path)
    model = oe.load(path)
    x = rng.normal(size=(2, 6)).astype(np.float32)
    e = oe.explain(model, x, "occlusion", target=1, window=(2,), strides=(2,), batch_size=3)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    want = np.zeros_like(x)
    for k in range(3):
        xo = x.copy()
        xo[:, 2 * k : 2 * k + 2] = 0
        diff = sess.run(None, {"x": x})[0][:, 1] - sess.run(None, {"x": xo})[0][:, 1]
        want[:, 2 * k : 2 * k + 2] = diff[:, None]
    assert np.abs(want).max() > 0
    np.testing.assert_allclose(e.attribution, want, atol=1e-5)


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    ("method", "options", "named"),
    [("feature_ablation", {"feature_groups": "superpixels:9"}, "feature_groups"),
     ("kernel_shap", {"feature_groups": np.zeros((3, 7), int)}, "feature_groups"),
     ("occlusion", {"window": (3, 11, 2)}, "window"),
     ("occlusion", {"window": (3, 2, 2), "strides": (3, 3, 1)}, "strides"),
     ("rise", {"p_keep": 0.0}, "p_keep"), ("rise", {"p_keep": 1.5}, "p_keep"),
     ("kernel_shap", {"n_samples": 1}, "n_samples")],
)  # fmt: skip
def test_bad_options_are_one_line_errors_naming_the_option(cnn, method, options, named):
    _, model, x, _ = cnn
    with pytest.raises(OptionError) as info:
        oe.explain(model, x.numpy(), method, target=0, **options)
    assert named in str(info.value) and "\n" not in str(info.value)


# ------------------------------------------------------------------------------------------ layouts
class NHWC(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x.permute(0, 3, 1, 2))


@pytest.fixture(scope="module")
def nhwc(cnn, tmp_path_factory):
    net, _, x, _ = cnn
    x_hwc = x.permute(0, 2, 3, 1).contiguous()
    model = oe.load(export(NHWC(net).eval(), x_hwc, tmp_path_factory.mktemp("nhwc") / "nhwc.onnx", "legacy"))
    assert model.layout == "NHWC"
    return model


@pytest.mark.parametrize(
    ("method", "options"),
    [("occlusion", {"window": (4, 4), "strides": (3, 3)}), ("feature_ablation", {"feature_groups": "grid:3"}),
     ("rise", {"n_masks": 12, "mask_resolution": 3})],
)  # fmt: skip
def test_nhwc_models_get_the_nchw_result_in_their_layout(cnn, nhwc, method, options):
    _, model, x, t = cnn
    x_hwc = x.permute(0, 2, 3, 1).contiguous()
    ours = oe.explain(nhwc, x_hwc.numpy(), method, target=t.numpy(), seed=1, **options).attribution
    want = oe.explain(model, x.numpy(), method, target=t.numpy(), seed=1, **options).attribution
    np.testing.assert_allclose(ours, want.transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-5 * np.abs(want).max())


def _unconvertible(tmp_path):
    """A small model onnxruntime runs and the torch conversion refuses (an op without a converter)."""
    W = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)
    for op, attrs in [("Shrink", {"lambd": 0.3}), ("Hardmax", {}), ("LpNormalization", {})]:
        nodes = [helper.make_node(op, ["x"], ["h"], name=f"my_{op}", **attrs),
                 helper.make_node("MatMul", ["h", "W"], ["y"])]  # fmt: skip
        inits = [helper.make_tensor("W", TensorProto.FLOAT, [6, 3], W.ravel().tolist())]
        path = save(make_model(nodes, [vinfo("x", ["B", 6])], [vinfo("y", ["B", 3])], inits, opset=18),
                    tmp_path / f"{op}.onnx")  # fmt: skip
        try:
            oe.load(path).torch_module()
        except ConversionError:
            return path
    pytest.skip("every candidate op has a torch converter now")


def test_when_the_graph_does_not_convert_the_black_box_methods_take_over(tmp_path):
    from click.testing import CliRunner

    from onnx_explain.cli import main

    path = _unconvertible(tmp_path)
    x = np.random.default_rng(1).normal(size=(2, 6)).astype(np.float32)
    with pytest.raises(ConversionError, match="methods that run on onnxruntime alone still work: occlusion"):
        oe.explain(oe.load(path), x, "gradient")
    e = oe.explain(oe.load(path), x, "auto", target=1)
    assert oe.METHODS[e.method].backend == "onnxruntime" and "does not convert" in e.extras["auto"]
    ref = oe.explain(oe.load(path), x, e.method, target=1)
    np.testing.assert_array_equal(e.attribution, ref.attribution)
    np.save(tmp_path / "x.npy", x)
    res = CliRunner().invoke(main, ["explain", str(path), str(tmp_path / "x.npy"), "-m", "auto", "-t", "1",
                                    "-o", str(tmp_path / "out"), "--heatmaps", "none"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert f"method auto: {e.method}" in res.output
    with np.load(tmp_path / "out" / "x_000.npz") as z:
        np.testing.assert_allclose(z["attribution"], ref.attribution[0], rtol=1e-6)
    from onnx_explain.app.audit import run_audit

    report = run_audit(oe.load(path), [tmp_path / "x.npy"], tmp_path / "audit", max_items=2)
    assert report["conversion"]["ok"] is False and "my_" in report["conversion"]["error"]
    ran = set(report["settings"]["methods"])
    assert ran and all(oe.METHODS[m].backend == "onnxruntime" for m in ran)
    assert "black-box" in (tmp_path / "audit" / "report.html").read_text()
