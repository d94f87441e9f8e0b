"""Concept Relevance Propagation (Achtibat et al. 2023) and relevance maps at a layer, on the exported ONNX
graph, equal to Zennit on the torch source with zennit-crp's conditioning written out: zennit-crp's
``CondAttribution`` pins ``zennit <= 0.4.6`` (our Zennit oracle is 0.5), so the test does what it does —
the composite's modified backward with the gradient at the conditioned layer's output masked to the
chosen channels (``crp.attribution.CondAttribution._attribute``: a tensor hook multiplying by the mask;
in Zennit the gradient flowing between layers is the relevance). Checked once against zennit-crp 0.6.0
itself, installed beside Zennit 0.5.1 without its pin: identical."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import export
from torch import nn

import onnx_explain as oe

zennit = pytest.importorskip("zennit")
from zennit.composites import EpsilonPlus  # noqa: E402

LAYER_NODE, LAYER_TENSOR = "/features/features.3/Conv", "/features/features.4/Relu_output_0"


class VGGish(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 12, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )  # fmt: skip
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(12 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, 5))

    def forward(self, x):
        return self.classifier(self.features(x))


def _zennit(net, x, target, layer=None, channels=None, at=None):
    """Zennit's EpsilonPlus relevance at the input (and at ``at``), the gradient at ``layer``'s output
    masked to ``channels`` (CondAttribution's conditioning)."""
    x = x.clone().requires_grad_(True)
    store = {}
    handles = []

    def cond(_m, _i, out):
        mask = torch.zeros(out.shape[1])
        mask[channels] = 1
        out.register_hook(lambda g: g * mask.reshape(1, -1, 1, 1))

    def tap(_m, _i, out):
        out.register_hook(lambda g: store.setdefault("r", g.detach()))

    if layer is not None:
        handles.append(layer.register_forward_hook(cond))
    if at is not None:
        handles.append(at.register_forward_hook(tap))
    composite = EpsilonPlus()
    with composite.context(net) as modified:
        out = modified(x)
        seed = torch.zeros_like(out)
        seed[torch.arange(len(x)), target] = out[torch.arange(len(x)), target].detach()
        (r,) = torch.autograd.grad(out, x, seed)
    for h in handles:
        h.remove()
    return r.detach().numpy(), store.get("r")


@pytest.fixture(scope="module")
def vgg(tmp_path_factory):
    torch.manual_seed(0)
    net = VGGish().eval()
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    return net, x, oe.load(export(net, x, tmp_path_factory.mktemp("crp") / "v.onnx", "legacy"))


@pytest.mark.parametrize("mode", ["auto", "rules"])
def test_conditional_relevance_equals_zennit_with_the_crp_mask(vgg, mode):
    net, x, model = vgg
    target = [0, 3, 4]
    channels = [1, 5, 7]
    want, at = _zennit(net, x, target, layer=net.features[3], channels=channels, at=net.features[3])
    e = oe.explain(model, x.numpy(), "lrp", composite="epsilon_plus", target=target, mode=mode,
                   conditions=[{"layer": LAYER_NODE, "channels": channels}], relevance_at=LAYER_NODE)  # fmt: skip
    assert e.extras["mode"] == ("single" if mode == "auto" else "rules")
    np.testing.assert_allclose(e.attribution, want, rtol=1e-4, atol=1e-6 * np.abs(want).max())
    # the relevance map at the conditioned layer: only the chosen channels carry any
    lr = e.extras["layer_relevance_map"]
    np.testing.assert_allclose(lr, at.numpy(), rtol=1e-4, atol=1e-6 * np.abs(lr).max())
    assert np.abs(lr[:, [c for c in range(12) if c not in channels]]).max() == 0
    # conditions on disjoint channel sets add up to the unconditioned relevance (LRP is linear in R)
    rest = [c for c in range(12) if c not in channels]
    other = oe.explain(model, x.numpy(), "lrp", composite="epsilon_plus", target=target, mode=mode,
                       conditions=[{"layer": LAYER_TENSOR, "channels": rest}])  # fmt: skip
    full = oe.explain(model, x.numpy(), "lrp", composite="epsilon_plus", target=target, mode=mode)
    np.testing.assert_allclose(e.attribution + other.attribution, full.attribution, rtol=1e-4,
                               atol=1e-6 * np.abs(full.attribution).max())  # fmt: skip


def test_bad_conditions_are_one_line_errors(vgg):
    _, x, model = vgg
    with pytest.raises(oe.OptionError, match="neither a node"):
        oe.explain(model, x.numpy(), "lrp", conditions=[{"layer": "nope", "channels": [0]}])
    with pytest.raises(oe.OptionError, match="out of range"):
        oe.explain(model, x.numpy(), "lrp", conditions=[{"layer": LAYER_NODE, "channels": [40]}])
    with pytest.raises(oe.OptionError, match="each condition is"):
        oe.explain(model, x.numpy(), "lrp", conditions=[{"layer": LAYER_NODE}])
