"""The LRP rule registry (``register_rule``): every registered rule follows the rule protocol, and every
rule that has a fused Conv/Linear path (``fast``) or a single-backward form (``single``) gives exactly the
relevance of its own generic passes, on every layer geometry below, with and without the bias. The rules
are read from the registry, so a rule registered later is checked without editing this file."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

import onnx_explain as oe
from onnx_explain.errors import OptionError
from onnx_explain.lrp import RULES, RelevanceRule, parse_rule, register_rule
from onnx_explain.lrp import rules as R

#: arguments for the constructors that need some (the others are built with their defaults)
ARGS = {"zbox": (-1.5, 2.0)}

LAYERS = {  # strides, dilations, groups and ranks the fused products must handle like the plain passes
    "linear_3d_input": (lambda: nn.Linear(6, 5), (2, 3, 6)),
    "conv1d_strided": (lambda: nn.Conv1d(3, 4, 3, stride=2, padding=1), (2, 3, 9)),
    "conv2d_dilated": (lambda: nn.Conv2d(3, 4, 3, padding=2, dilation=2), (2, 3, 6, 6)),
    "conv2d_depthwise": (lambda: nn.Conv2d(4, 8, 3, padding=1, groups=4), (2, 4, 5, 5)),
    "conv2d_no_bias": (lambda: nn.Conv2d(3, 4, 3, stride=2, bias=False), (2, 3, 7, 7)),
    "conv3d": (lambda: nn.Conv3d(2, 3, 2), (2, 2, 3, 3, 3)),
}


def _variants(name):
    """(label, rule) for the rule as registered and, where its constructor takes ``zero_bias``, with it."""
    make = RULES[name]
    out = [(name, make(*ARGS.get(name, ())))]
    if "zero_bias" in inspect.signature(make).parameters:
        out.append((f"{name}_zero_bias", make(*ARGS.get(name, ()), zero_bias=True)))
    return out


FUSED = [(label, rule) for name in RULES for label, rule in _variants(name) if rule.fast or rule.single]
FUSED.append(("alpha1_beta0", R.alpha_beta(1.0, 0.0)))  # β = 0: the negative passes vanish


def test_every_registered_rule_follows_the_protocol_and_the_fused_ones_are_found():
    for name in RULES:
        for label, rule in _variants(name):
            assert isinstance(rule, RelevanceRule), label
    # the registry holds the rules with fused paths (a rule losing its fast form would shrink this)
    assert {label for label, _ in FUSED} >= {"epsilon", "gamma", "alpha_beta", "zplus", "zbox"}


def _plain(rule):
    import copy

    plain = copy.copy(rule)
    plain.fast = None
    plain.single = None
    return plain


@pytest.mark.parametrize("layer", list(LAYERS))
@pytest.mark.parametrize("label", [label for label, _ in FUSED])
def test_fused_and_single_backward_forms_equal_the_rules_own_passes(label, layer):
    rule = dict(FUSED)[label]
    make, shape = LAYERS[layer]
    torch.manual_seed(0)
    module = make().double()
    for sign in ("signed", "relu"):
        x = torch.randn(shape, dtype=torch.float64)
        x = x.clamp(min=0) if sign == "relu" else x
        out = module(x).detach()
        r = torch.randn(out.shape, dtype=torch.float64)
        want = _plain(rule).relevance(module, [x], r)[0]
        if rule.fast is not None:
            for given in (None, out):
                got = rule.relevance(module, [x], r, given)[0]
                torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12, msg=f"{label} fast, {sign}")
        if rule.single is not None:  # x ⊙ ∂/∂x Σ_k <shares_k, factors_k ⊙ g> for R = out ⊙ g
            xg = x.clone().requires_grad_(True)
            got = rule.single(R._Layer.of(module), xg)
            if got is None:  # a form for x ≥ 0 only (γ, αβ): declining signed inputs sends them to the passes
                assert sign == "signed", f"{label}: no single-backward form on x ≥ 0"
                continue
            o, shares, factors = got
            o = o.detach()  # the layer's output (without a bias, the very tensor of the share xW)
            g = torch.where(o != 0, r / torch.where(o != 0, o, 1.0), 0.0)
            total = sum((s * (f * g)).sum() for s, f in zip(shares, factors, strict=True))
            (grad,) = torch.autograd.grad(total, xg)
            want_g = _plain(rule).relevance(module, [x], o * g)[0]
            torch.testing.assert_close(
                xg.detach() * grad, want_g, rtol=1e-8, atol=1e-11, msg=f"{label} single, {sign}"
            )
            # read by a ReLU alone (``positive``): the gradient is 0 where out ≤ 0, the factors are too
            o2, shares, factors = rule.single(R._Layer.of(module), xg, positive=True)
            torch.testing.assert_close(o2.detach(), o, rtol=1e-12, atol=1e-14)
            assert all(bool((f[o <= 0] == 0).all()) for f in factors), label
            g_relu = g * (o > 0)
            total = sum((s * (f * g_relu)).sum() for s, f in zip(shares, factors, strict=True))
            (grad,) = torch.autograd.grad(total, xg)
            want_g = _plain(rule).relevance(module, [x], o * g_relu)[0]
            torch.testing.assert_close(
                xg.detach() * grad, want_g, rtol=1e-8, atol=1e-11, msg=f"{label} single after a ReLU, {sign}"
            )


def test_a_registered_rule_is_nameable_everywhere_and_names_are_unique(tmp_path):
    from conftest import make_model, save, vinfo
    from onnx import helper, numpy_helper

    name = "test_half_epsilon"

    @register_rule(name)
    def half_epsilon(epsilon: float = 1e-6):
        """ε-rule relevance, halved: a rule a user could add in a few lines."""
        base = R.epsilon(epsilon)
        return R.Rule(name, base.input_mods, base.param_mods, lambda r, o: [0.5 * r / R.stabilize(o[0], epsilon)],
                      base.reducer)  # fmt: skip

    try:
        assert isinstance(parse_rule(f"{name}:1e-3"), RelevanceRule)
        with pytest.raises(ValueError, match="registered twice"):
            register_rule(name, half_epsilon)
        with pytest.raises(ValueError, match="registered twice"):
            register_rule("pass", half_epsilon)
        w = numpy_helper.from_array(torch.randn(4, 3).numpy(), "w")
        path = save(make_model([helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)], [vinfo("x", ["N", 3])],
                               [vinfo("y", ["N", 4])], [w], opset=17), tmp_path / "gemm.onnx")  # fmt: skip
        x = torch.randn(2, 3).numpy()
        m = oe.load(path)
        full = oe.explain(m, x, "lrp", rules={"Gemm": "epsilon"}, target=1)
        half = oe.explain(m, x, "lrp", rules={"Gemm": name}, target=1)
        torch.testing.assert_close(
            torch.from_numpy(half.attribution), 0.5 * torch.from_numpy(full.attribution)
        )
    finally:
        RULES.pop(name, None)
    with pytest.raises(OptionError, match="unknown LRP rule"):
        parse_rule(name)
