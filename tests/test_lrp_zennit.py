"""Parity with Zennit: our LRP on the exported ONNX equals Zennit on the original torchvision model with its
VGG/ResNet canonizers (random weights), for three composites (docs/methods.md §2.5.9)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import export

import onnx_explain as oe

zennit = pytest.importorskip("zennit")
torchvision = pytest.importorskip("torchvision")

from zennit.attribution import Gradient  # noqa: E402
from zennit.composites import EpsilonAlpha2Beta1, EpsilonGammaBox, EpsilonPlusFlat  # noqa: E402
from zennit.torchvision import ResNetCanonizer, VGGCanonizer  # noqa: E402

LOW, HIGH = -2.5, 2.5
COMPOSITES = {
    "epsilon_gamma_box": lambda c: EpsilonGammaBox(low=LOW, high=HIGH, canonizers=[c]),
    "epsilon_plus_flat": lambda c: EpsilonPlusFlat(canonizers=[c]),
    "epsilon_alpha2_beta1": lambda c: EpsilonAlpha2Beta1(canonizers=[c]),
}
ARCHS = {
    "vgg16": (224, 1, VGGCanonizer),
    "resnet18": (64, 2, ResNetCanonizer),
    "resnet50": (64, 2, ResNetCanonizer),
}


@pytest.fixture(
    scope="module",
    # resnet18 (residual Adds, BatchNorm merging) runs by default; the bigger sweeps in CI's slow run
    params=[a if a == "resnet18" else pytest.param(a, marks=pytest.mark.slow) for a in ARCHS],
)
def arch(request, tmp_path_factory):
    name = request.param
    size, n, canonizer = ARCHS[name]
    torch.manual_seed(0)
    net = getattr(torchvision.models, name)(weights=None).eval()
    if name.startswith("resnet"):  # non-trivial BatchNorm statistics, merged by the exporter and by Zennit
        with torch.no_grad():
            for m in net.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.2, 0.2)
                    m.running_var.uniform_(0.5, 1.5)
                    m.weight.uniform_(0.5, 1.5)
    x = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1)).clamp(LOW, HIGH)
    model = oe.load(export(net, x, tmp_path_factory.mktemp(name) / f"{name}.onnx", "legacy"))
    return net, model, x, canonizer


@pytest.mark.parametrize("composite", list(COMPOSITES))
def test_lrp_matches_zennit(arch, composite):
    net, model, x, canonizer = arch
    t = net(x).argmax(1)
    onehot = torch.eye(1000)[t]
    with Gradient(net, COMPOSITES[composite](canonizer())) as attributor:
        _, ref = attributor(x, lambda out: out * onehot)
    ours = oe.explain(
        model, x.numpy(), "lrp", target=t.numpy(), composite=composite, low=LOW, high=HIGH, batch_size=2
    )
    a, b = ours.attribution.astype(np.float64).ravel(), ref.detach().numpy().astype(np.float64).ravel()
    cosine = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    rel = np.linalg.norm(a - b) / np.linalg.norm(b)
    assert cosine >= 0.9999, cosine
    assert rel <= 1e-3, rel
