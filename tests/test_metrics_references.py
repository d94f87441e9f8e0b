"""Parity of the metrics (on onnxruntime) with Quantus and Captum (on the original torch model), with float
baselines and injected randomness, as docs/methods.md §3 prescribes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import export
from torch import nn

import onnx_explain as oe

quantus = pytest.importorskip("quantus")
captum_metrics = pytest.importorskip("captum.metrics")


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 8, 3, padding=1),
                                 nn.Tanh(), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))  # fmt: skip

    def forward(self, x):
        return self.net(x)


def _case(make, shape, seeds, folder):
    """(net, its legacy ONNX export loaded, x, predicted classes, an attribution of distinct values)."""
    torch.manual_seed(seeds[0])
    net = make().eval()
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seeds[1]))
    model = oe.load(export(net, x, folder / "net.onnx", "legacy"))
    y = net(x).argmax(1).numpy()
    a = (
        np.random.default_rng(seeds[2]).standard_normal(x.shape).astype(np.float32)
    )  # distinct values: no ties
    return net, model, x.numpy(), y, a


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return _case(CNN, (3, 3, 8, 8), (0, 1, 3), tmp_path_factory.mktemp("q"))


def _tol(ref):
    return {"rtol": 1e-4, "atol": 1e-5 * max(1.0, float(np.abs(ref).max()))}


@pytest.mark.parametrize("k", [1, 8, 32])
def test_pixel_flipping_matches_quantus(setup, k):
    net, model, x, y, a = setup
    theirs = quantus.PixelFlipping(features_in_step=k, perturb_baseline=0.0, normalise=False, abs=False, disable_warnings=True)(
        model=net, x_batch=x, y_batch=y, a_batch=a, softmax=False, channel_first=True, device="cpu"
    )  # fmt: skip
    ours = oe.evaluate(model, x, a, "pixel_flipping", target=y, mode="feature", pixels_per_step=k)
    theirs = np.asarray(theirs)
    np.testing.assert_allclose(ours["quantus_curve"], theirs, **_tol(theirs))


@pytest.mark.parametrize(("patch", "order"), [(2, "morf"), (4, "lerf")])
def test_region_perturbation_matches_quantus(setup, patch, order):
    net, model, x, y, a = setup
    L = 6
    theirs = quantus.RegionPerturbation(patch_size=patch, regions_evaluation=L, order=order, perturb_baseline=0.0,
                                        normalise=False, abs=False, disable_warnings=True)(
        model=net, x_batch=x, y_batch=y, a_batch=a, softmax=False, channel_first=True, device="cpu"
    )  # fmt: skip
    theirs = np.asarray(theirs)
    ours = oe.evaluate(model, x, a, "region_perturbation", target=y, region=patch, n_regions=L, order=order)
    np.testing.assert_allclose(ours["quantus_curve"], theirs[:, : ours["n_regions"]], **_tol(theirs))


class WideCNN(nn.Module):
    """A 7 × 10 input: neither side a multiple of the patch sizes below, so Quantus pads."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 7 * 10, 5)
        )

    def forward(self, x):
        return self.net(x)


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    return _case(WideCNN, (3, 3, 7, 10), (2, 4, 5), tmp_path_factory.mktemp("qw"))


# Quantus pads (floor, ceil) of p − n mod p before tiling. patch 4: H 7 → (0, 1), W 10 → (1, 1), a 2 × 3
# grid shifted one column; patch 3: H 7 → (1, 1), W 10 → (1, 1), a 3 × 4 grid shifted by one both ways.
@pytest.mark.parametrize(("patch", "order"), [(4, "morf"), (3, "lerf")])
def test_region_perturbation_with_padding_matches_quantus(wide, patch, order):
    net, model, x, y, a = wide
    L = 100  # every region
    theirs = quantus.RegionPerturbation(patch_size=patch, regions_evaluation=L, order=order, perturb_baseline=0.0,
                                        normalise=False, abs=False, disable_warnings=True)(
        model=net, x_batch=x, y_batch=y, a_batch=a, softmax=False, channel_first=True, device="cpu"
    )  # fmt: skip
    theirs = np.asarray(theirs)
    ours = oe.evaluate(model, x, a, "region_perturbation", target=y, region=patch, n_regions=L, order=order,
                       quantus_padding=True)  # fmt: skip
    assert ours["n_regions"] == theirs.shape[1] == {4: 6, 3: 12}[patch]
    np.testing.assert_allclose(ours["quantus_curve"], theirs, **_tol(theirs))
    # the padding matters here: the unshifted grid gives other regions, hence another curve
    plain = oe.evaluate(model, x, a, "region_perturbation", target=y, region=patch, n_regions=L, order=order)
    assert np.abs(plain["quantus_curve"][:, :-1] - theirs[:, :-1]).max() > 1e-2


def test_localisation_matches_quantus_where_the_definitions_meet():
    # Quantus' RelevanceMassAccuracy is the signed ratio Σ_in a / Σ a; ours (Arras et al.) keeps the positive
    # part of the channel sum h (positive=False: |h|). They meet on |h| (abs=True) and on clip(h, 0);
    # PointingGame(abs=False) is our signed pointing game (distinct values: no tied maxima).
    rng = np.random.default_rng(11)
    a = rng.standard_normal((6, 3, 5, 7))
    masks = rng.uniform(size=(6, 5, 7)) < 0.3
    x, y, s = np.zeros((6, 1, 5, 7)), np.zeros(6, int), masks[:, None].astype(float)
    h = a.sum(1)
    # the data tell signed from magnitude: somewhere the largest |h| and the largest h fall on different sides
    flat_m, flat_h = masks.reshape(6, -1), h.reshape(6, -1)
    assert (flat_m[np.arange(6), flat_h.argmax(1)] != flat_m[np.arange(6), np.abs(flat_h).argmax(1)]).any()

    def theirs(metric, amap, **kw):
        m = metric(normalise=False, disable_warnings=True, **kw)
        out = m(model=None, x_batch=x, y_batch=y, a_batch=amap[:, None], s_batch=s, channel_first=True)
        return np.asarray(out, dtype=float)

    ours = oe.evaluate(None, np.zeros((6, 3, 5, 7)), a, "localisation", masks=masks)
    mags = oe.evaluate(None, np.zeros((6, 3, 5, 7)), a, "localisation", masks=masks, positive=False)
    np.testing.assert_allclose(mags["mass"], theirs(quantus.RelevanceMassAccuracy, h, abs=True), rtol=1e-12)
    np.testing.assert_allclose(
        ours["mass"], theirs(quantus.RelevanceMassAccuracy, np.clip(h, 0, None)), rtol=1e-12
    )
    np.testing.assert_array_equal(ours["pointing"], theirs(quantus.PointingGame, h, abs=False))


def test_faithfulness_correlation_matches_quantus(setup):
    net, model, x, y, a = setup
    runs, size = 12, 20
    np.random.seed(42)  # noqa: NPY002 - Quantus draws from the legacy global RNG
    theirs = quantus.FaithfulnessCorrelation(nr_runs=runs, subset_size=size, perturb_baseline=0.0, normalise=False,
                                             abs=False, return_aggregate=False, disable_warnings=True)(
        model=net, x_batch=x, y_batch=y, a_batch=a, softmax=False, channel_first=True, device="cpu"
    )  # fmt: skip
    # replay Quantus' draws: for each run, for each sample, one choice without replacement
    np.random.seed(42)  # noqa: NPY002 - Quantus draws from the legacy global RNG
    d = a[0].size
    subsets = np.empty((len(x), runs, size), dtype=int)
    for r in range(runs):
        for b in range(len(x)):
            subsets[b, r] = np.random.choice(d, size, replace=False)  # noqa: NPY002
    ours = oe.evaluate(model, x, a, "faithfulness_correlation", target=y, subsets=subsets)
    np.testing.assert_allclose(ours["scores"], np.asarray(theirs), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("normalize", [False, True])
def test_infidelity_matches_captum(setup, normalize):
    net, model, x, y, a = setup
    n = 5
    rng = np.random.default_rng(7)
    pert = (rng.standard_normal((len(x), n, *x.shape[1:])) * 0.2).astype(np.float32)
    flat_I = torch.from_numpy(pert.reshape(-1, *x.shape[1:]))
    calls = {"k": 0}

    def perturb(inputs):
        # Captum repeats each sample n times (repeat_interleave); rows arrive in chunks
        rows = len(inputs)
        out = flat_I[calls["k"] : calls["k"] + rows]
        calls["k"] += rows
        return out, inputs - out

    theirs = captum_metrics.infidelity(net, perturb, torch.from_numpy(x), torch.from_numpy(a), target=torch.from_numpy(y),
                                       n_perturb_samples=n, normalize=normalize)  # fmt: skip
    ours = oe.evaluate(
        model, x, a, "infidelity", target=y, perturbations=(pert, x[:, None] - pert), normalize=normalize
    )
    np.testing.assert_allclose(ours["scores"], theirs.detach().numpy(), rtol=1e-4, atol=1e-6)


def test_max_sensitivity_matches_captum(setup):
    net, model, x, y, a = setup
    from captum.attr import Saliency

    n = 4
    deltas = (np.random.default_rng(9).uniform(-0.1, 0.1, size=(len(x), n, *x.shape[1:]))).astype(np.float32)
    flat = torch.from_numpy(deltas.reshape(-1, *x.shape[1:]))
    calls = {"k": 0}

    def perturb(inputs, perturb_radius=0.02):
        rows = len(inputs)
        out = inputs + flat[calls["k"] : calls["k"] + rows]
        calls["k"] += rows
        return out

    sal = Saliency(net)
    theirs = captum_metrics.sensitivity_max(
        lambda inp, target: sal.attribute(inp, target=target, abs=False), torch.from_numpy(x), perturb_func=perturb,
        n_perturb_samples=n, target=torch.from_numpy(y),
    )  # fmt: skip
    ours = oe.evaluate(
        model, x, None, "max_sensitivity", target=y, explainer="gradient", perturbations=deltas
    )
    np.testing.assert_allclose(ours["scores"], theirs.detach().numpy(), rtol=1e-4, atol=1e-6)
