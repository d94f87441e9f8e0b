"""LRP: float64 matrix replicas of every rule (as Zennit's rule tests), invariants (LRP-0 = gradient×input,
conservation on residual and concat nets, Keras exports), strict coverage, no state left behind."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import FIXTURES, ROOT, assert_gradients_match, export
from torch import nn

import onnx_explain as oe
from onnx_explain.lrp import LRPCoverageError
from onnx_explain.lrp import rules as R

torch.set_default_dtype(torch.float32)


# ------------------------------------------------------------------------------ rule replicas
def _st(z, eps=1e-6):
    return z + eps * np.where(z == 0, 1.0, np.sign(z))


def _replica(name, x, W, b, r, **kw):
    """docs/methods.md §2.5.2, in float64 matrix form: W is (out, in), x (n, in), r (n, out)."""
    pos, neg = np.clip(x, 0, None), np.clip(x, None, 0)
    Wp, Wn, bp, bn = np.clip(W, 0, None), np.clip(W, None, 0), np.clip(b, 0, None), np.clip(b, None, 0)
    if name == "epsilon":
        return x * ((r / _st(x @ W.T + b)) @ W)
    if name == "zplus":
        z = pos @ Wp.T + neg @ Wn.T + bp
        s = r / _st(z)
        return pos * (s @ Wp) + neg * (s @ Wn)
    if name == "alpha_beta":
        a, be = 2.0, 1.0
        za = pos @ Wp.T + neg @ Wn.T + bp
        zb = pos @ Wn.T + neg @ Wp.T + bn
        return a * (pos * ((r / _st(za)) @ Wp) + neg * ((r / _st(za)) @ Wn)) - be * (
            pos * ((r / _st(zb)) @ Wn) + neg * ((r / _st(zb)) @ Wp)
        )
    if name == "gamma":
        g = 0.25
        Wpg, Wng = W + g * Wp, W + g * Wn
        z = x @ W.T + b
        zpos = pos @ Wpg.T + neg @ Wng.T + (b + g * bp)
        zneg = pos @ Wng.T + neg @ Wpg.T + (b + g * bn)
        P, N = r * (z > 0) / _st(zpos), r * (z < 0) / _st(zneg)
        return pos * (P @ Wpg) + neg * (P @ Wng) + pos * (N @ Wng) + neg * (N @ Wpg)
    if name == "zbox":
        lo, hi = kw["low"] * np.ones_like(x), kw["high"] * np.ones_like(x)
        z = x @ W.T - lo @ Wp.T - hi @ Wn.T
        s = r / _st(z)
        return x * (s @ W) - lo * (s @ Wp) - hi * (s @ Wn)
    if name == "wsquare":
        W2 = W**2
        return (r / _st(np.ones_like(x) @ W2.T + b**2)) @ W2
    if name == "flat":
        ones = (W != 0).astype(float)  # a kernel of ones: the receptive field (padding excluded)
        return (r / _st(np.ones_like(x) @ ones.T)) @ ones
    raise ValueError(name)


RULE_CASES = {
    "epsilon": lambda: R.epsilon(1e-6),
    "zplus": R.zplus,
    "alpha_beta": lambda: R.alpha_beta(2.0, 1.0),
    "gamma": lambda: R.gamma(0.25),
    "zbox": lambda: R.zbox(-1.5, 2.0),
    "wsquare": R.wsquare,
    "flat": R.flat,
}


def _conv_matrix(conv: nn.Conv2d, in_shape):
    """The (out, in) matrix of a bias-free conv, from its Jacobian."""
    w = conv.weight.detach()

    def f(z):
        return torch.nn.functional.conv2d(
            z.reshape(1, *in_shape), w, None, conv.stride, conv.padding, conv.dilation, conv.groups
        ).reshape(-1)  # noqa: E731

    return torch.autograd.functional.jacobian(
        f, torch.zeros(int(np.prod(in_shape)), dtype=torch.float64)
    ).numpy()


@pytest.mark.parametrize("name", list(RULE_CASES))
@pytest.mark.parametrize("layer", ["linear", "conv", "grouped_conv"])
@pytest.mark.parametrize("sign", ["signed", "relu"])  # after a ReLU the rules take their fused, x ≥ 0 path
def test_rule_matches_its_matrix_form(name, layer, sign):
    g = torch.Generator().manual_seed(0)
    if layer == "linear":
        module = nn.Linear(6, 4).double()
        x = torch.randn(3, 6, generator=g, dtype=torch.float64)
    elif layer == "conv":
        module = nn.Conv2d(2, 3, 3, padding=1).double()
        x = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
    else:
        module = nn.Conv2d(4, 6, 3, padding=1, groups=2).double()
        x = torch.randn(3, 4, 4, 4, generator=g, dtype=torch.float64)
    if sign == "relu":
        x = x.clamp(min=0)
    with torch.no_grad():
        module.weight.copy_(torch.randn(module.weight.shape, generator=g, dtype=torch.float64))
        module.bias.copy_(torch.randn(module.bias.shape, generator=g, dtype=torch.float64))
    out = module(x).detach()
    r = out.clone()  # grad_outputs = output, as Zennit's compare_rule_pair
    got = RULE_CASES[name]().relevance(module, [x], r)[0].detach().numpy()
    n = len(x)
    if layer == "linear":
        W, b = module.weight.detach().numpy(), module.bias.detach().numpy()
    else:
        W = _conv_matrix(module, x.shape[1:])
        b = np.repeat(module.bias.detach().numpy(), 16)
    want = _replica(name, x.reshape(n, -1).numpy(), W, b, r.reshape(n, -1).numpy(), low=-1.5, high=2.0)
    np.testing.assert_allclose(got.reshape(n, -1), want, rtol=1e-7, atol=1e-9)


# the fused and single-backward forms of every registered rule against its passes: test_lrp_rule_registry.py


def test_fused_rules_follow_a_changed_weight():
    # the fused rules cache their modified weights; an in-place change of the weight must not be missed
    torch.manual_seed(0)
    module = nn.Conv2d(3, 4, 3, padding=1).double()
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64).clamp(min=0)
    r = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    for make_rule in (R.zplus, lambda: R.gamma(0.25), lambda: R.alpha_beta(2.0, 1.0), lambda: R.zbox(-1, 1)):
        rule, plain = make_rule(), make_rule()
        plain.fast = None
        rule.relevance(module, [x], r)
        with torch.no_grad():
            module.weight.mul_(-1.5)
        torch.testing.assert_close(rule.relevance(module, [x], r)[0], plain.relevance(module, [x], r)[0])


def test_alpha1_beta0_equals_zplus():
    m = nn.Linear(5, 3).double()
    x = torch.randn(4, 5, dtype=torch.float64)
    r = m(x).detach()
    a = R.alpha_beta(1.0, 0.0).relevance(m, [x], r)[0]
    z = R.zplus().relevance(m, [x], r)[0]
    torch.testing.assert_close(a, z, rtol=1e-12, atol=1e-12)


def test_alpha_beta_checks_its_parameters():
    with pytest.raises(ValueError, match="must equal 1"):
        R.alpha_beta(2.0, 2.0)
    with pytest.raises(ValueError, match="non-negative"):
        R.alpha_beta(-1.0, -2.0)


def test_parse_rule():
    assert R.parse_rule("gamma:0.5").options["gamma"] == 0.5
    assert R.parse_rule("epsilon:1e-3").options["epsilon"] == 1e-3
    assert R.parse_rule("zbox:-1,2").options == {"low": -1.0, "high": 2.0}
    assert R.parse_rule("pass") is R.PASS and R.parse_rule("stop") is R.STOP
    with pytest.raises(ValueError, match="unknown LRP rule"):
        R.parse_rule("nope")


# ------------------------------------------------------------------------------ invariants on models
DIGITS = ROOT / "models" / "digits.onnx"


def test_lrp0_equals_gradient_times_input_with_biases_and_maxpool():
    m = oe.load(DIGITS)
    x = np.load(ROOT / "models" / "samples" / "digits.npy")
    lrp0 = oe.explain(m, x, "lrp", rules={"Conv": "epsilon0", "Gemm": "epsilon0"}).attribution
    gxi = oe.explain(m, x, "gradient_x_input").attribution
    np.testing.assert_allclose(lrp0, gxi, rtol=1e-4, atol=1e-5 * np.abs(gxi).max())


class Residual(nn.Module):
    """Bias-free residual CNN: a plain gradient at the Add would duplicate relevance."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.c3 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.fc = nn.Linear(8, 4, bias=False)

    def forward(self, x):
        h = torch.relu(self.c1(x))
        h = torch.relu(self.c3(torch.relu(self.c2(h))) + h)
        return self.fc(torch.nn.functional.adaptive_avg_pool2d(h, 1).flatten(1))


class DenseConcat(nn.Module):
    """Bias-free DenseNet-style block: concatenations, an un-merged BatchNorm after Concat, max pooling."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.c3 = nn.Conv2d(8, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(12)
        self.fc = nn.Linear(12 * 3 * 3, 5, bias=False)

    def forward(self, x):
        a = torch.relu(self.c1(x))
        b = torch.relu(self.c2(a))
        c = torch.relu(self.c3(torch.cat([a, b], 1)))
        h = self.bn(torch.cat([a, b, c], 1))
        return self.fc(torch.nn.functional.max_pool2d(h, 2).flatten(1))


def _bn_without_shift(bn):
    with torch.no_grad():  # a pure per-channel scale: keeps the net bias-free
        bn.weight.uniform_(0.5, 1.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.running_mean.zero_()
        bn.bias.zero_()


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
@pytest.mark.parametrize("net_cls", [Residual, DenseConcat])
@pytest.mark.parametrize("composite", ["epsilon_plus", "epsilon_alpha2_beta1", "epsilon_plus_flat"])
def test_conservation_on_bias_free_nets(net_cls, exporter, composite, tmp_path):
    torch.manual_seed(0)
    net = net_cls().eval()
    if hasattr(net, "bn"):
        _bn_without_shift(net.bn)
    x = torch.randn(3, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    m = oe.load(export(net, x, tmp_path / "n.onnx", exporter))
    rules = (
        {"Conv": "epsilon:1e-9", "Gemm": "epsilon:1e-9", "MatMul": "epsilon:1e-9"}
        if composite == "epsilon_plus"
        else None
    )
    e = oe.explain(m, x.numpy(), "lrp", composite=composite, rules=rules)
    np.testing.assert_allclose(e.attribution.reshape(3, -1).sum(1), e.score, rtol=1e-4)
    np.testing.assert_allclose(e.extras["delta"], 0, atol=1e-4 * np.abs(e.score).max())


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_residual_add_needs_the_norm_rule(exporter, tmp_path):
    torch.manual_seed(0)
    net = Residual().eval()
    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    m = oe.load(export(net, x, tmp_path / "r.onnx", exporter))
    ok = oe.explain(m, x.numpy(), "lrp", composite="epsilon_plus")
    np.testing.assert_allclose(ok.extras["delta"], 0, atol=1e-4 * np.abs(ok.score).max())
    assert "Add: norm" in ok.extras["rules"].values()
    bad = oe.explain(m, x.numpy(), "lrp", composite="epsilon_plus", rules={"Add": "gradient"})
    assert (np.abs(bad.extras["delta"]) > 0.05 * np.abs(bad.score)).all()  # relevance duplicated at the Add


def test_layer_relevance_is_conserved_layer_by_layer(tmp_path):
    torch.manual_seed(0)
    net = Residual().eval()
    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    m = oe.load(export(net, x, tmp_path / "r.onnx", "legacy"))
    e = oe.explain(m, x.numpy(), "lrp", composite="epsilon_plus", layer_relevance=True)
    layers = e.extras["layer_relevance"]
    assert len(layers) >= 7
    for layer in layers:
        np.testing.assert_allclose(layer["relevance_in"], layer["relevance_out"], rtol=1e-4, atol=1e-6)


def test_keras_relu_export_conserves_relevance():
    m = oe.load(FIXTURES / "keras_relu.onnx")
    x = np.random.default_rng(0).standard_normal((3, 12, 12, 2)).astype(np.float32)
    e = oe.explain(m, x, "lrp", composite="epsilon_plus")
    rules = set(e.extras["rules"].values())
    assert (
        "MatMul: epsilon" in rules and "Mul: pass" in rules
    )  # Dense as MatMul; BN after it as Mul by a constant
    np.testing.assert_allclose(e.extras["delta"], 0, atol=1e-4 * np.abs(e.score).max())


def test_keras_matmul_add_is_one_linear_layer():
    # keras_cnn: Dense → MatMul (+ Add); canonization must keep the output (checked inside) and the
    # MatMul must get the dense rule, not a silent gradient
    m = oe.load(FIXTURES / "keras_cnn.onnx", output="logits")
    x = np.load(FIXTURES / "keras_cnn_ref.npz")["x"]
    e = oe.explain(m, x, "lrp", composite="epsilon_plus", rules={"Tanh": "pass"})
    assert sum(v == "MatMul: epsilon" for v in e.extras["rules"].values()) == 2


class Ratio(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        h = self.fc(x)
        return self.out(h / (torch.relu(h) + 1.0))  # Div of two activations: no LRP role


def test_a_node_without_rule_is_an_error_naming_it_and_leaves_no_state(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(3, 4)
    m = oe.load(export(Ratio().eval(), x, tmp_path / "g.onnx", "legacy"))
    before = oe.explain(m, x.numpy(), "gradient").attribution
    with pytest.raises(
        LRPCoverageError, match=r"node '/Div' \(Div\) mixes two activations and has no LRP rule"
    ):
        oe.explain(m, x.numpy(), "lrp")
    module = m.torch_module()
    from onnx_explain.lrp.graph import RuleWrapper

    assert not any(isinstance(mod, RuleWrapper) for mod in module.modules())
    np.testing.assert_array_equal(oe.explain(m, x.numpy(), "gradient").attribution, before)
    fb = oe.explain(m, x.numpy(), "lrp", fallback="gradient")
    assert fb.extras["fallback_nodes"] == ["/Div"]


def test_rule_override_by_node_name_beats_op_type():
    m = oe.load(DIGITS)
    x = np.load(ROOT / "models" / "samples" / "digits.npy")[:2]
    e = oe.explain(
        m, x, "lrp", rules={"Conv": "gamma:0.5", "/features/features.0/Conv": "zbox"}, low=0.0, high=1.0
    )
    assert e.extras["rules"]["/features/features.0/Conv"] == "Conv: zbox"
    assert e.extras["rules"]["/features/features.3/Conv"] == "Conv: gamma"
    with pytest.raises(LRPCoverageError, match="needs a linear layer"):
        oe.explain(m, x, "lrp", rules={"Relu": "gamma"})


def test_lrp_under_the_smoothing_wrapper():
    m = oe.load(DIGITS)
    x = np.load(ROOT / "models" / "samples" / "digits.npy")[:2]
    eps = np.random.default_rng(0).standard_normal((2 * 3, 1, 32, 32)).astype(np.float32) * 0.1
    sg = oe.explain(m, x, "smoothgrad", base="lrp", perturbations=eps, composite="epsilon_plus").attribution
    noisy = (x[:, None] + eps.reshape(2, 3, 1, 32, 32)).reshape(6, 1, 32, 32)
    t = oe.explain(m, x, "gradient").target
    each = oe.explain(m, noisy, "lrp", target=np.repeat(t, 3), composite="epsilon_plus").attribution
    np.testing.assert_allclose(sg, each.reshape(2, 3, 1, 32, 32).mean(1), rtol=1e-5, atol=1e-7)


def test_output_relevance_onehot_sums_to_one():
    m = oe.load(DIGITS)
    x = np.load(ROOT / "models" / "samples" / "digits.npy")[:2]
    e = oe.explain(
        m, x, "lrp", rules={"Conv": "epsilon:1e-9", "Gemm": "epsilon:1e-9"}, output_relevance="onehot"
    )
    s = oe.explain(m, x, "lrp", rules={"Conv": "epsilon:1e-9", "Gemm": "epsilon:1e-9"})
    np.testing.assert_allclose(
        e.attribution * s.score[:, None, None, None], s.attribution, rtol=1e-4, atol=1e-6
    )


def test_box_composites_need_bounds():
    m = oe.load(DIGITS)
    x = np.load(ROOT / "models" / "samples" / "digits.npy")[:1]
    with pytest.raises(ValueError, match="needs the input bounds"):
        oe.explain(m, x, "lrp", composite="epsilon_gamma_box")


def test_lrp_options_are_checked_and_name_what_is_wrong():
    m = oe.load(DIGITS)
    x = np.load(ROOT / "models" / "samples" / "digits.npy")[:1]
    with pytest.raises(
        oe.OptionError,
        match=r"unknown option 'gama' for composite 'epsilon_gamma_box' \(did you mean 'gamma'\?\)",
    ):
        oe.explain(
            m, x, "lrp", composite="epsilon_gamma_box", low=0.0, high=1.0, composite_options={"gama": 0.5}
        )
    with pytest.raises(oe.OptionError, match="unknown composite 'epsilon'"):
        oe.explain(m, x, "lrp", composite="epsilon")
    with pytest.raises(oe.OptionError, match="maxpool must be 'gradient' or 'avgpool', not 'avg'"):
        oe.explain(m, x, "lrp", maxpool="avg")
    with pytest.raises(
        LRPCoverageError, match=r"avgpool surrogate replaces .* node '/features/features.1/Relu' \(Relu\)"
    ):
        oe.explain(m, x, "lrp", rules={"/features/features.1/Relu": "avgpool"})
    # a composite option that it does take changes the result
    a = oe.explain(m, x, "lrp", composite="epsilon_plus", composite_options={"epsilon": 0.5}).attribution
    b = oe.explain(m, x, "lrp", composite="epsilon_plus").attribution
    assert not np.allclose(a, b)


def test_maxpool_avgpool_surrogate_is_the_norm_rule_of_an_average_pool(tmp_path):
    # maxpool='avgpool' (Montavon's tutorial): relevance leaves the pool as through an AvgPool of the same
    # geometry, in proportion to each input: R_in = x ⊙ AvgPoolᵀ(R_out / AvgPool(x))
    class Pool(nn.Module):
        def forward(self, x):
            return torch.nn.functional.max_pool2d(x, 2).flatten(1)

    x = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(0)) + 0.5
    m = oe.load(export(Pool().eval(), x, tmp_path / "p.onnx", "legacy"))
    e = oe.explain(m, x.numpy(), "lrp", target=[1, 2], maxpool="avgpool")
    xd = x.double().requires_grad_(True)
    avg = torch.nn.functional.avg_pool2d(xd, 2).flatten(1)
    r_out = torch.zeros(2, 4, dtype=torch.float64)
    r_out[0, 1], r_out[1, 2] = torch.nn.functional.max_pool2d(x.double(), 2).flatten(1)[[0, 1], [1, 2]]
    (g,) = torch.autograd.grad(avg, xd, r_out / avg.detach())
    np.testing.assert_allclose(e.attribution, (xd * g).detach().numpy(), rtol=1e-5, atol=1e-7)
    assert e.extras["rules"]["/MaxPool"] == "MaxPool: avgpool"


class UpNet(nn.Module):
    """An FPN/U-Net step: convolve, upsample (nearest or bilinear), merge with the skip, convolve."""

    def __init__(self, mode: str):
        super().__init__()
        self.mode = mode
        self.c1 = nn.Conv2d(3, 6, 3, stride=2, padding=1)
        self.skip = nn.Conv2d(3, 6, 1)
        self.c2 = nn.Conv2d(6, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        h = torch.relu(self.c1(x))
        kw = {"align_corners": False} if self.mode == "bilinear" else {}
        up = nn.functional.interpolate(h, scale_factor=2, mode=self.mode, **kw)
        h = torch.relu(self.c2(up + self.skip(x)))
        return self.fc(nn.functional.adaptive_avg_pool2d(h, 1).flatten(1))


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_resize_is_linear_for_lrp(mode, exporter, tmp_path):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    m = oe.load(export(UpNet(mode).eval(), x, tmp_path / "up.onnx", exporter))
    lrp0 = oe.explain(m, x.numpy(), "lrp", rules={"Conv": "epsilon0", "Gemm": "epsilon0"})
    gxi = oe.explain(m, x.numpy(), "gradient_x_input").attribution
    # equal up to the Norm rule's stabiliser at the skip Add (1e-6 next to sums that are near 0 in places)
    assert_gradients_match(lrp0.attribution, gxi, rel=1e-3, cos=0.99999)
    assert ("Resize: gradient" if mode == "nearest" else "Resize: norm") in lrp0.extras["rules"].values()
    rules = {"Conv": "epsilon:1e-9", "Gemm": "epsilon:1e-9"}
    e = oe.explain(m, x.numpy(), "lrp", composite="epsilon_plus", rules=rules)
    bias = e.extras["delta"]  # biases absorb their share: the sum is the score less what they took
    assert np.all(np.isfinite(bias)) and np.abs(e.attribution).sum() > 0


def test_stop_override_on_every_path_gives_zero_relevance_not_a_torch_error(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(3, 4)
    m = oe.load(export(Ratio().eval(), x, tmp_path / "g.onnx", "legacy"))
    e = oe.explain(m, x.numpy(), "lrp", rules={"Div": "stop"})
    np.testing.assert_array_equal(e.attribution, 0)
    np.testing.assert_allclose(e.extras["delta"], -e.score, rtol=1e-6)
    p = oe.explain(m, x.numpy(), "lrp", rules={"Div": "pass"})
    assert p.extras["rules"]["/Div"] == "Div: pass" and np.abs(p.attribution).sum() > 0


COMPOSITE_NAMES = sorted(__import__("onnx_explain.lrp.composites", fromlist=["COMPOSITES"]).COMPOSITES)
BOUNDED = {"epsilon_gamma_box", "montavon2019"}


@pytest.mark.parametrize("composite", COMPOSITE_NAMES)
def test_every_composite_gives_a_sample_the_same_relevance_alone_and_in_a_batch(composite):
    m = oe.load(DIGITS)
    x = np.load(ROOT / "models" / "samples" / "digits.npy")[:6]
    kw = {"low": float(x.min()), "high": float(x.max())} if composite in BOUNDED else {}
    if composite in ("montavon2019",):
        kw["maxpool"] = "avgpool"
    batch = oe.explain(m, x, "lrp", composite=composite, **kw).attribution
    alone = oe.explain(m, x[:1], "lrp", composite=composite, **kw).attribution
    np.testing.assert_allclose(alone[0], batch[0], rtol=1e-5, atol=1e-6 * np.abs(batch[0]).max())


class TfLeaky(nn.Module):
    """tf2onnx writes Keras' LeakyReLU and ReLU as Maximum(x, 0.2 x) and Maximum(x, 0)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 8)
        self.b = nn.Linear(8, 3)

    def forward(self, x):
        h = self.a(x)
        h = torch.maximum(h, 0.2 * h)
        return self.b(torch.maximum(h, torch.zeros(())))


def test_max_of_activations_routes_to_the_winner(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(2))
    m = oe.load(export(TfLeaky().eval(), x, tmp_path / "leaky.onnx", "legacy"))
    lrp0 = oe.explain(m, x.numpy(), "lrp", rules={"Gemm": "epsilon0", "MatMul": "epsilon0"})
    gxi = oe.explain(m, x.numpy(), "gradient_x_input").attribution
    assert_gradients_match(lrp0.attribution, gxi, rel=1e-4, cos=0.99999)
    assert "Max: gradient" in lrp0.extras["rules"].values() and "Max: pass" in lrp0.extras["rules"].values()


class Magnitude(nn.Module):
    """An STFT-like front-end: two linear 'filters', the magnitude sqrt(re² + im²), then a classifier."""

    def __init__(self):
        super().__init__()
        self.re = nn.Linear(8, 6, bias=False)
        self.im = nn.Linear(8, 6, bias=False)
        self.fc = nn.Linear(6, 3, bias=False)

    def forward(self, x):
        return self.fc(torch.sqrt(self.re(x).pow(2) + self.im(x).pow(2)))


def test_elementwise_functions_of_one_activation_pass_relevance(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(3))
    m = oe.load(export(Magnitude().eval(), x, tmp_path / "mag.onnx", "legacy"))
    e = oe.explain(m, x.numpy(), "lrp", rules={"Gemm": "epsilon:1e-9", "MatMul": "epsilon:1e-9"})
    rules = set(e.extras["rules"].values())
    assert {"Sqrt: pass", "Pow: pass"} <= rules
    # bias-free: the magnitude's relevance is shared by re² and im² and conserved down to the input
    np.testing.assert_allclose(e.attribution.sum(1), e.score, rtol=1e-4)
