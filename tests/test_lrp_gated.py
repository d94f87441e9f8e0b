"""LRP on gated CNNs: SiLU ``x·σ(x)``, hard-swish, the ``x·(1 + erf(x/√2))/2`` of a decomposed GELU and
squeeze-excitation gates ``x·σ(fc(pool(x)))``. The gate is held constant and the signal takes all relevance:
checked against a float64 patched reference, and on torchvision MobileNetV3 and EfficientNet exports
(no fallback; conservation on their bias-free variants)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import export
from torch import nn

import onnx_explain as oe

torch.set_default_dtype(torch.float32)


class GatedNet(nn.Module):
    """conv → SiLU → squeeze-excitation → conv → exact GELU → hard-swish (written out) → pool → linear."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.se1 = nn.Conv2d(8, 4, 1)
        self.se2 = nn.Conv2d(4, 8, 1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x, detach=False):
        d = torch.Tensor.detach if detach else (lambda t: t)
        h = self.c1(x)
        h = h * d(torch.sigmoid(h))  # SiLU, as both exporters write it: Mul(x, Sigmoid(x))
        s = torch.sigmoid(self.se2(torch.relu(self.se1(h.mean((2, 3), keepdim=True)))))
        h = self.c2(h * d(s))  # squeeze-excitation
        h = 0.5 * h * d(1.0 + torch.erf(h / 2**0.5))  # GELU, decomposed as the legacy exporter writes it
        h = h * d(torch.clamp(h + 3.0, 0.0, 6.0)) / 6.0  # hard-swish, decomposed (Clip)
        return self.fc(h.mean((2, 3)))


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_gates_are_constants_and_the_signal_takes_all_relevance(exporter, tmp_path):
    # reference: float64 gradient×input of the forward with every gate detached, which is LRP-0 with the
    # identity rule on the gated activations and signal-take-all at the squeeze-excitation product
    torch.manual_seed(0)
    net = GatedNet().eval()
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    m = oe.load(export(net, x, tmp_path / "g.onnx", exporter))
    e = oe.explain(
        m, x.numpy(), "lrp", rules={"Conv": "epsilon:1e-9", "Gemm": "epsilon:1e-9", "MatMul": "epsilon:1e-9"}
    )
    assert not e.extras["fallback_nodes"]
    assert not any("se1" in k or "se2" in k for k in e.extras["rules"])  # the gate branch gets nothing
    ref = net.double()
    xd = x.double().requires_grad_(True)
    out = ref(xd, detach=True)
    t = torch.as_tensor(e.target)
    (g,) = torch.autograd.grad(out.gather(1, t[:, None]).sum(), xd)
    want = (xd * g).detach().numpy()
    np.testing.assert_allclose(e.attribution, want, rtol=1e-3, atol=1e-4 * np.abs(want).max())


# ------------------------------------------------------------------------------ torchvision gated CNNs
def _calibrated(net, x, bias_free):
    """Random torchvision weights give vanishing activations (f ≈ 1e-10 on MobileNetV3): set every
    BatchNorm's statistics from its own input, in one forward pass in graph order, so that each layer has
    unit-scale activations. ``bias_free`` keeps the mean at 0 (the BatchNorm's scale is then the inverse
    RMS) and zeroes the shifts (BatchNorm and Linear), so that LRP must conserve relevance exactly. The
    explained inputs ``x`` are among the calibration samples: at 1×1 resolution the deep layers' spread
    over a few random images is small, and an input far outside it would blow the activations up."""

    def calibrate(mod, args):
        x = args[0].detach()
        mean = torch.zeros(x.shape[1]) if bias_free else x.mean((0, 2, 3))
        mod.running_mean.copy_(mean)
        mod.running_var.copy_(((x - mean[:, None, None]) ** 2).mean((0, 2, 3)))
        if bias_free:
            mod.bias.zero_()

    net.eval()
    hooks = [m.register_forward_pre_hook(calibrate) for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        net(torch.cat([x, torch.randn(30, *x.shape[1:], generator=torch.Generator().manual_seed(7))]))
        for mod in net.modules():
            if bias_free and isinstance(mod, nn.Linear):
                mod.bias.zero_()
    for h in hooks:
        h.remove()
    return net


ARCHS = ["mobilenet_v3_small", "efficientnet_b0"]


@pytest.mark.parametrize("arch", ARCHS)
def test_torchvision_gated_cnns_get_lrp_without_fallback(arch, tmp_path):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    net = _calibrated(getattr(torchvision.models, arch)(weights=None, num_classes=10), x, bias_free=True)
    m = oe.load(export(net, x, tmp_path / f"{arch}.onnx", "legacy"))
    eps = {"Conv": "epsilon:1e-9", "Gemm": "epsilon:1e-9", "MatMul": "epsilon:1e-9"}
    e = oe.explain(m, x.numpy(), "lrp", composite="epsilon_plus", rules=eps)
    assert not e.extras["fallback_nodes"]
    rules = list(e.extras["rules"].values())
    # live gated products: 9 SE gates (MobileNetV3; hard-swish is one ONNX node); 16 SE gates and 33 SiLU
    # (EfficientNet; the 16 SiLU inside the SE branches carry nothing)
    assert rules.count("Mul: pass") == {"mobilenet_v3_small": 9, "efficientnet_b0": 49}[arch]
    assert not any("/fc1/" in k or "/fc2/" in k for k in e.extras["rules"])  # the SE branch carries nothing
    assert np.abs(e.score).min() > 1e-2  # calibrated: the test is not about vanishing numbers
    # bias-free: LRP-ε conserves to 1e-5 (measured) and ε + γ + z^B to 1e-4 (measured 3e-5 to 8e-5);
    # z⁺ loses relevance where a unit has no positive contribution (a 1×1 map under a 5×5 depthwise
    # kernel: one input, so half of the units), 47-64% on these 32×32 inputs: not asserted
    np.testing.assert_allclose(e.extras["delta"], 0, atol=1e-4 * np.abs(e.score).max())
    b = oe.explain(m, x.numpy(), "lrp", composite="epsilon_gamma_box", low=-3.0, high=3.0, target=e.target)
    np.testing.assert_allclose(b.extras["delta"], 0, atol=1e-3 * np.abs(b.score).max())
