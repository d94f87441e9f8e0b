"""Speed rewrites of the converted graph (onnx_explain/convert/fuse.py): MatMul with a constant weight
[+ bias Add] becomes one Linear, the exporters' exact GELU one GELU; the fused graph equals onnxruntime and
its gradient the torch source's, the rewrites keep the ONNX identity LRP reads, and lookalikes that are not
the exact GELU are left alone."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import assert_gradients_match, export
from torch import nn

import onnx_explain as oe
from onnx_explain.convert.driver import NODE_ATTR


class Gelus(nn.Module):
    """Linear layers (MatMul + Add in a 3-D export) and the GELU written three ways; ``erf_half`` adds an
    erf of x/2, which is not a GELU."""

    def __init__(self, erf_half: bool = False):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 4, bias=False)
        self.erf_half = erf_half

    def forward(self, x):
        h = nn.functional.gelu(self.a(x))  # Div(√2) → Erf → Add(1) → Mul(x) → Mul(0.5)
        h = h * 0.5 * (1.0 + torch.erf(h / math.sqrt(2.0)))  # Mul(x, 0.5) first
        h = self.b(h)
        h = 0.5 * h * (1.0 + torch.erf(h * (1 / math.sqrt(2.0))))  # Mul by 1/√2
        if self.erf_half:
            h = h * 0.5 * (1.0 + torch.erf(h / 2.0))
        return self.c(h).sum(1)


@pytest.mark.parametrize("erf_half", [False, True], ids=["gelus", "with-erf-of-half"])
def test_fused_graph_equals_onnxruntime_and_the_sources_gradient(erf_half, tmp_path):
    torch.manual_seed(0)
    net = Gelus(erf_half).eval()
    x = torch.randn(3, 5, 6, generator=torch.Generator().manual_seed(1))
    m = oe.load(export(net, x, tmp_path / "g.onnx", "legacy"))
    module = m.torch_module()
    assert module.onnx_rewrites == {"linear": 3, "gelu": 3}  # the erf of x/2 is no GELU: left as it is
    ops = [getattr(mod, NODE_ATTR, ("", "", ""))[1] for mod in module.graph.modules()]
    assert ops.count("Erf") == (1 if erf_half else 0)
    gelus = [mod for mod in module.graph.modules() if isinstance(mod, nn.GELU)]
    assert len(gelus) == 3 and all(getattr(g, NODE_ATTR)[1] == "Gelu" for g in gelus)
    linears = [mod for mod in module.graph.modules() if isinstance(mod, nn.Linear)]
    assert [getattr(lin, NODE_ATTR)[1] for lin in linears] == ["MatMul"] * 3
    assert [lin.bias is not None for lin in linears] == [True, True, False]
    with torch.no_grad():
        np.testing.assert_allclose(module(x).numpy(), net(x).numpy(), rtol=1e-5, atol=1e-6)
    e = oe.explain(m, x.numpy(), "gradient", target=2)
    xt = x.clone().requires_grad_(True)
    (want,) = torch.autograd.grad(net(xt)[:, 2].sum(), xt)
    assert_gradients_match(e.attribution, want.numpy(), rel=1e-5, cos=0.99999)


def test_lrp_reads_the_fused_nodes_as_the_onnx_ops_they_stand_for(tmp_path):
    torch.manual_seed(0)
    net = Gelus().eval()
    x = torch.randn(2, 5, 6)
    m = oe.load(export(net, x, tmp_path / "g.onnx", "legacy"))
    e = oe.explain(m, x.numpy(), "lrp", composite="epsilon_plus_flat", target=1)
    rules = e.extras["rules"]
    assert sum(v == "MatMul: epsilon" for v in rules.values()) == 2 and "MatMul: flat" in rules.values()
    assert sum(v == "Gelu: pass" for v in rules.values()) == 3
    assert np.isfinite(e.attribution).all() and np.abs(e.attribution).sum() > 0
