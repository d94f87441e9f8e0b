"""The single-backward LRP graph (one ordinary backward through a forward patched node by node) computes
exactly what the rule graph computes (each node's rule in its own backward), for every CNN composite: the
layer rules' shares (ε, z⁺, αβ, γ, fused after a ReLU and by passes on signed inputs), z^B and flat on the
explained input, the Norm rule with its stabiliser at sums and pools. Compared in float64, so that any
difference is the formula's, not rounding's."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import export
from torch import nn

import onnx_explain as oe
from onnx_explain.lrp import rules as R
from onnx_explain.lrp.graph import build_lrp_graph

LOW, HIGH = -3.0, 3.0


class Mixed(nn.Module):
    """Biases, a BatchNorm (merged), a grouped conv, a residual sum whose result feeds a conv unrectified
    (signed input: the rules' general passes), max pooling, average pooling and a dense head."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.c3 = nn.Conv2d(8, 8, 3, padding=1)
        self.c4 = nn.Conv2d(8, 6, 1)
        self.fc = nn.Linear(6 * 3 * 3, 5)

    def forward(self, x):
        h = torch.relu(self.bn(self.c1(x)))
        h = self.c3(torch.relu(self.c2(h))) + h  # no ReLU: c4 reads a signed input
        h = torch.relu(self.c4(h))
        h = nn.functional.max_pool2d(h, 2)
        h = nn.functional.avg_pool2d(h, 2, stride=1)
        return self.fc(h.flatten(1))


def _net():
    torch.manual_seed(0)
    net = Mixed().eval()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-0.5, 0.5)
        net.bn.running_var.uniform_(0.5, 2.0)
    return net


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    x = torch.randn(2, 3, 8, 8)
    m = oe.load(export(_net(), x, tmp_path_factory.mktemp("single") / "mixed.onnx", "legacy"))
    return copy.deepcopy(m.torch_module()).double()


def _relevance(graph, x, target):
    x = x.clone().requires_grad_(True)
    out = graph(x)
    seed = torch.zeros_like(out)
    seed[torch.arange(len(x)), target] = 1.0
    (r,) = torch.autograd.grad(out, x, out.detach() * seed)
    return r.detach()


CASES = [
    ("epsilon_plus", {}, "gradient"),
    ("epsilon_gamma_box", {"low": LOW, "high": HIGH}, "gradient"),
    ("epsilon_alpha2_beta1", {}, "gradient"),
    ("epsilon_plus_flat", {}, "gradient"),
    ("epsilon_alpha2_beta1_flat", {}, "gradient"),
    ("montavon2019", {"low": LOW, "high": HIGH}, "avgpool"),
]


@pytest.mark.parametrize("composite, options, maxpool", CASES, ids=[c[0] for c in CASES])
def test_the_single_backward_graph_equals_the_rule_graph(converted, composite, options, maxpool):
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64).clamp(
        LOW, HIGH
    )
    target = torch.tensor([0, 3, 4])
    auto, _ = build_lrp_graph(converted, x[:1], composite, options, maxpool=maxpool)
    rules, _ = build_lrp_graph(converted, x[:1], composite, options, maxpool=maxpool, mode="rules")
    assert auto.lrp_report["mode"] == "single" and rules.lrp_report["mode"] == "rules"
    if composite in ("epsilon_plus", "epsilon_gamma_box", "epsilon_alpha2_beta1"):
        from onnx_explain.lrp.graph import _PassesRelu

        # c1 (BatchNorm merged; z^B on the input for ε-γ-box), c2 and c4 each read by a ReLU alone: the rule's
        # ReLU form (γ: one share, not two); c3 before the residual sum keeps its passes
        assert sum(isinstance(m, _PassesRelu) for m in auto.modules()) == (2 if "box" in composite else 3)
    want = _relevance(rules, x, target)
    got = _relevance(auto, x, target)
    assert float(want.abs().max()) > 0
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-9, atol=1e-12 * float(want.abs().max()))


class Residual(nn.Module):
    """ResNet's basic block twice: conv-ReLU-conv, the residual sum read by a ReLU alone."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.a = nn.ModuleList(nn.Conv2d(6, 6, 3, padding=1) for _ in range(2))
        self.b = nn.ModuleList(nn.Conv2d(6, 6, 3, padding=1) for _ in range(2))
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        for a, b in zip(self.a, self.b, strict=True):
            h = torch.relu(b(torch.relu(a(h))) + h)
        return self.fc(h.mean((2, 3)))


@pytest.mark.parametrize("composite", ["epsilon_plus", "epsilon_gamma_box", "epsilon_alpha2_beta1"])
def test_a_residual_sum_before_a_relu_moves_its_stabiliser_into_the_relu(tmp_path, composite):
    from onnx_explain.lrp.graph import _HeldConstant, _PassesRelu

    torch.manual_seed(3)
    x = torch.randn(2, 3, 6, 6)
    m = oe.load(export(Residual().eval(), x, tmp_path / "residual.onnx", "legacy"))
    converted = copy.deepcopy(m.torch_module()).double()
    x = torch.randn(3, 3, 6, 6, generator=torch.Generator().manual_seed(4), dtype=torch.float64).clamp(
        LOW, HIGH
    )
    target = torch.tensor([0, 1, 3])
    options = {"low": LOW, "high": HIGH} if "box" in composite else {}
    rules = {"Add": "norm:0.01"}  # a large ε, so that the moved factor matters everywhere
    auto, _ = build_lrp_graph(converted, x[:1], composite, options, rules=rules)
    ref, _ = build_lrp_graph(converted, x[:1], composite, options, rules=rules, mode="rules")
    assert sum(isinstance(m, _HeldConstant) for m in auto.modules()) == 2
    # the stem (z^B on the input for ε-γ-box) and each block's first conv
    assert sum(isinstance(m, _PassesRelu) for m in auto.modules()) == (2 if "box" in composite else 3)
    want = _relevance(ref, x, target)
    assert float(want.abs().max()) > 0
    np.testing.assert_allclose(_relevance(auto, x, target).numpy(), want.numpy(), rtol=1e-7,
                               atol=1e-9 * float(want.abs().max()))  # fmt: skip


def test_a_gradient_override_on_a_sum_keeps_the_rule_graph(converted):
    # the rule graph's gradient rule passes Jᵀ R (relevance duplicated at a sum); the single form's plain
    # gradient would be the Norm rule there: such a plan is not built as a single-backward graph
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    g, _ = build_lrp_graph(converted, x, "epsilon_plus", {}, rules={"Add": "gradient"})
    assert g.lrp_report["mode"] == "rules"
    with pytest.raises(oe.OptionError, match="single-backward"):
        build_lrp_graph(converted, x, "epsilon_plus", {}, rules={"Add": "gradient"}, mode="single")


def test_an_unstabilised_norm_rule_gives_a_zero_output_no_relevance_not_nan():
    z = torch.tensor([2.0, 0.0, -1.0])
    np.testing.assert_array_equal(R.stabilize(z, 0.0).numpy(), [2.0, np.inf, -1.0])
    a = torch.tensor([1.0, 3.0, 0.0]).requires_grad_(True)
    b = torch.tensor([1.0, -3.0, 0.0]).requires_grad_(True)

    class Add(nn.Module):
        def forward(self, p, q):
            return p + q

    rel = R.norm(0.0).relevance(Add(), [a, b], torch.tensor([4.0, 0.0, 0.0]))
    np.testing.assert_allclose(rel[0].detach().numpy(), [2.0, 0.0, 0.0])
    np.testing.assert_allclose(rel[1].detach().numpy(), [2.0, 0.0, 0.0])


def test_the_fused_sigma_constant_norm_equals_the_written_out_one_and_batches():
    from onnx_explain.lrp.rules import _affine, _norm_sigma_constant, _sigma

    torch.manual_seed(0)
    x = torch.randn(2, 5, 8, dtype=torch.float64, requires_grad=True)
    s, b = torch.randn(8, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    got = _norm_sigma_constant(x, (2,), 1e-5, s, b)
    c = x - x.mean(-1, keepdim=True)
    want = _affine(c / _sigma(c, (-1,), 1e-5), s, b)
    np.testing.assert_allclose(got.detach().numpy(), want.detach().numpy(), rtol=1e-12, atol=1e-12)
    seeds = torch.randn(3, 2, 5, 8, dtype=torch.float64)  # a batched backward (vmap), as generation runs it
    (g1,) = torch.autograd.grad(got, x, seeds, retain_graph=True, is_grads_batched=True)
    (g2,) = torch.autograd.grad(want, x, seeds, is_grads_batched=True)
    np.testing.assert_allclose(g1.numpy(), g2.numpy(), rtol=1e-10, atol=1e-12)


def test_epsilon_before_a_relu_moves_into_the_relus_backward_and_equals_the_rule_graph(converted):
    from onnx_explain.lrp.graph import _EpsilonRelu

    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    target = torch.tensor([1, 2, 3])
    rules = {"Conv": "epsilon:0.01"}  # a large ε, so that the factor matters everywhere
    auto, _ = build_lrp_graph(converted, x[:1], "epsilon_plus", {}, rules=rules)
    ref, _ = build_lrp_graph(converted, x[:1], "epsilon_plus", {}, rules=rules, mode="rules")
    assert sum(isinstance(m, _EpsilonRelu) for m in auto.modules()) == 3  # c1 (BatchNorm merged), c2, c4
    want = _relevance(ref, x, target)
    # the ε form and the ε rule differ by a relative 2e-9 at this large ε (5e-12 at the default 1e-6; as
    # large as float32's rounding of ε itself), with or without the fusion (those two are ≤ 1e-15 apart)
    np.testing.assert_allclose(_relevance(auto, x, target).numpy(), want.numpy(), rtol=1e-7,
                               atol=1e-8 * float(want.abs().max()))  # fmt: skip
