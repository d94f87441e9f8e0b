"""One baselines module for Integrated Gradients and the metrics: one meaning per name, the same values
for numpy and torch, per-channel values on the model's channel axis."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import onnx_explain as oe
from onnx_explain.baselines import BASELINES, blur, make_baseline, make_baselines
from onnx_explain.metrics.base import make_baseline as metrics_baseline


def _x(shape=(2, 3, 8, 8), seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize(
    "baseline",
    ["zero", 0.25, [0.1, -0.2, 0.3], "array", "blur", "quantus_black", "quantus_white", "quantus_mean"],
)
def test_numpy_and_torch_give_the_same_deterministic_baselines(baseline):
    x = _x()
    if baseline == "array":
        baseline = _x((3, 8, 8), seed=4)
    got_np = make_baseline(x, baseline)
    got_t = make_baseline(torch.from_numpy(x), baseline)
    assert isinstance(got_np, np.ndarray) and isinstance(got_t, torch.Tensor)
    assert got_np.shape == x.shape and got_np.dtype == x.dtype and got_t.dtype == torch.float32
    np.testing.assert_allclose(got_t.numpy(), got_np, rtol=1e-6, atol=1e-7)


def test_each_name_has_one_meaning():
    x = _x() * 5 + 3  # a range far from [0, 1]
    flat = x.reshape(len(x), -1)
    u = make_baseline(x, "uniform", np.random.default_rng(1))
    assert u.min() >= 0 and u.max() < 1 and u.std() > 0.2
    ut = make_baseline(torch.from_numpy(x), "uniform", torch.Generator().manual_seed(1)).numpy()
    assert ut.min() >= 0 and ut.max() < 1
    r = make_baseline(x, "uniform_range", np.random.default_rng(1)).reshape(len(x), -1)
    rt = make_baseline(torch.from_numpy(x), "uniform_range", torch.Generator().manual_seed(1)).numpy()
    for got in (r, rt.reshape(len(x), -1)):
        assert (got >= flat.min(1, keepdims=True)).all() and (got <= flat.max(1, keepdims=True)).all()
        assert (got < 0).any() and (got > 1).any()  # the samples' own range, not [0, 1)
    lo_hi = make_baseline(x, ("uniform", -2.0, -1.0), np.random.default_rng(1))
    assert lo_hi.min() >= -2 and lo_hi.max() < -1
    np.testing.assert_array_equal(
        make_baseline(x, "quantus_black"), np.broadcast_to(flat.min(1)[:, None, None, None], x.shape)
    )
    assert set(BASELINES) >= {
        "zero",
        "uniform",
        "uniform_range",
        "blur",
        "quantus_black",
        "quantus_white",
        "quantus_mean",
    }


def test_the_metrics_uniform_keeps_its_numbers():
    # U[0, 1) per element from the metric's generator, as before the move
    x = _x()
    want = np.random.default_rng(7).uniform(0.0, 1.0, size=x.shape).astype(x.dtype)
    np.testing.assert_array_equal(metrics_baseline(x, "uniform", np.random.default_rng(7)), want)
    want = np.random.default_rng(7).uniform(-1, 2, size=x.shape).astype(x.dtype)
    np.testing.assert_array_equal(metrics_baseline(x, ("uniform", -1, 2), np.random.default_rng(7)), want)


def test_per_channel_values_go_on_the_channel_axis():
    v = [0.1, -0.2, 0.3]
    nchw = make_baseline(_x(), v, channel_axis=1)
    nhwc = make_baseline(np.moveaxis(_x(), 1, -1), v, channel_axis=3)
    for c in range(3):
        assert (nchw[:, c] == np.float32(v[c])).all() and (nhwc[..., c] == np.float32(v[c])).all()
    t = make_baseline(torch.from_numpy(np.moveaxis(_x(), 1, -1).copy()), v, channel_axis=3)
    np.testing.assert_array_equal(t.numpy(), nhwc)


def test_blur_blurs_each_channel_on_the_channel_axis():
    x = _x()
    nchw = make_baseline(x, "blur", channel_axis=1)
    nhwc = make_baseline(np.moveaxis(x, 1, -1).copy(), "blur", channel_axis=3)
    np.testing.assert_allclose(np.moveaxis(nhwc, -1, 1), nchw, rtol=1e-6, atol=1e-7)
    # one channel alone gives the same blur: no mixing across channels
    alone = blur(torch.from_numpy(x[:, 1:2].astype(np.float64))).numpy()
    np.testing.assert_allclose(nchw[:, 1:2], alone, rtol=1e-5, atol=1e-6)
    assert not np.allclose(nchw, x)


def test_bad_baselines_are_option_errors():
    with pytest.raises(oe.OptionError, match="unknown baseline 'unifrom'.*uniform_range"):
        make_baseline(_x(), "unifrom")
    with pytest.raises(oe.OptionError, match=r"does not broadcast to the input \(2, 3, 8, 8\)"):
        make_baseline(_x(), np.zeros((5, 8)))
    with pytest.raises(oe.OptionError, match="does not broadcast"):
        make_baseline(torch.from_numpy(_x()), np.zeros((5, 8)))


def test_random_baselines_are_drawn_n_times_and_lists_are_flattened():
    x = torch.from_numpy(_x())
    g = torch.Generator().manual_seed(0)
    assert len(make_baselines(x, "uniform", g, 4)) == 4
    assert len(make_baselines(x, "zero", g, 4)) == 1
    assert len(make_baselines(x, ["zero", "uniform_range", 0.5], g, 3)) == 5
    assert len(make_baselines(x, [0.1, 0.2, 0.3], g, 3)) == 1  # numbers: per-channel values


class _Affine(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(6, 3).double()

    def forward(self, x):
        return self.fc(x)


@pytest.mark.parametrize("name", ["uniform", "uniform_range"])
def test_integrated_gradients_averages_the_named_draws(name):
    # IG with a random baseline equals IG with those very draws given as arrays (same generator): the name
    # picks the distribution, and 'uniform_range' is the former IG 'uniform' (each sample's [min, max])
    m, x = _Affine().eval(), np.random.default_rng(3).standard_normal((2, 6)) * 4 + 2
    g = torch.Generator().manual_seed(5)
    xt = torch.from_numpy(x)
    if name == "uniform_range":
        lo, hi = xt.amin(1, keepdim=True), xt.amax(1, keepdim=True)
        draws = [lo + (hi - lo) * torch.rand((1, 6), generator=g, dtype=xt.dtype) for _ in range(3)]
    else:  # one draw per baseline, shared by the samples (a sample's result does not depend on its batch)
        draws = [torch.rand((1, 6), generator=g, dtype=xt.dtype).expand(xt.shape) for _ in range(3)]
    got = oe.explain(m, x, "integrated_gradients", target=1, baseline=name, n_baselines=3, seed=5, n_steps=4)
    want = oe.explain(m, x, "integrated_gradients", target=1, baseline=[d.numpy() for d in draws], n_steps=4)
    np.testing.assert_allclose(got.attribution, want.attribution, rtol=1e-12)
    w = m.fc.weight.detach().numpy()[1]
    mean_draw = np.mean([d.numpy() for d in draws], 0)
    np.testing.assert_allclose(got.attribution, (x - mean_draw) * w, rtol=1e-10)  # linear: exact
