"""A sample's LRP relevance does not depend on its batch (docs/methods.md §1.2, §2.5.3): explained alone,
inside a batch of 6 and in chunks of ``batch_size=2``, it is the same — for every
registered composite and every registered rule an override can set, in both LRP modes (the
single-backward graph and the rule graph). ``epsilon_alpha2_beta1_flat`` also against Zennit.

The comparisons run on float64 copies of the converted graphs. In float32 the kernels themselves round a
batch of one differently from a batch of six (oneDNN convolutions, BLAS products: ~1e-7), and the Norm rule
at a sum whose output is near 0 magnifies that to ~5e-5 of a sample's largest relevance on the residual
CNN below; in float64 the same differences stay ≤ 1e-12, so a statistic taken over the batch axis stands
out (``montavon2019`` once averaged its RMS stabiliser over the chunk: 2-8 % of a sample's largest
relevance apart, alone and in a batch of 6)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import ROOT, export
from test_lrp_recurrent import Classifier
from test_lrp_transformer import _encoder
from torch import nn

import onnx_explain as oe
from onnx_explain.lrp import COMPOSITES, RULES
from onnx_explain.lrp import rules as R

LOW, HIGH = -3.0, 3.0
BOUNDED = {"epsilon_gamma_box", "montavon2019"}  # z^B on the first convolution: needs low= and high=
RTOL = 1e-7  # float64 (measured ≤ 2e-12 elementwise): tighter than float32's 1e-5


class ResCNN(nn.Module):
    """Convolutions with BatchNorm (folded by the exporter), a residual sum followed by a BatchNorm that
    stays (the pass rule) and feeds a convolution unrectified (signed input: the rules' general passes),
    max pooling and a dense head."""

    def __init__(self):
        super().__init__()
        self.c1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c3, self.bn3 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c4 = nn.Conv2d(8, 12, 3, padding=1, stride=2)
        self.fc1, self.fc2 = nn.Linear(12 * 2 * 2, 16), nn.Linear(16, 5)

    def forward(self, x):
        h = torch.relu(self.bn1(self.c1(x)))
        r = self.bn3(self.c3(torch.relu(self.bn2(self.c2(h)))) + h)
        h = nn.functional.max_pool2d(torch.relu(self.c4(r)), 2)
        return self.fc2(torch.relu(self.fc1(h.flatten(1))))


class VGGish(nn.Module):
    """Conv/ReLU/MaxPool/Flatten/Linear only: Zennit needs no canonizer, and its composite on the torch
    module equals ours on the ONNX export (METHODS.md §2.5.9)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )  # fmt: skip
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(16 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x):
        return self.classifier(self.features(x))


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny graphs: one intra-op thread. On a loaded two-core machine the OpenMP barriers between many
    small kernels cost 20x the kernels themselves (this file: 38 s on one thread, 160 s on two)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _converted64(net, x, path):
    """The converted graph of ``net``'s ONNX export as a float64 torch module (explain keeps float64)."""
    return copy.deepcopy(oe.load(export(net, x, path, "legacy")).torch_module()).double()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """name -> (float64 converted module, float64 batch of 6)."""
    folder = tmp_path_factory.mktemp("lrp_batch")
    torch.manual_seed(0)
    cnn = ResCNN().eval()
    with torch.no_grad():  # non-trivial BatchNorms
        for bn in (cnn.bn1, cnn.bn2, cnn.bn3):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.3, 0.3)
    x = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(1)).clamp(LOW, HIGH)
    # sample 0 non-negative, the others signed: the first layer's z⁺/αβ/γ take their fused (x ≥ 0) form
    # for sample 0 alone and their general passes in the batch
    x[0] = x[0].abs()
    tokens = torch.randn(6, 5, 6, generator=torch.Generator().manual_seed(2))
    torch.manual_seed(0)
    lstm = Classifier("LSTM").eval()
    steps = torch.randn(6, 4, 6, generator=torch.Generator().manual_seed(3))
    return {
        "cnn": (_converted64(cnn, x, folder / "cnn.onnx"), x.double().numpy()),
        "transformer": (_converted64(_encoder(), tokens, folder / "enc.onnx"), tokens.double().numpy()),
        "lstm": (_converted64(lstm, steps, folder / "lstm.onnx"), steps.double().numpy()),
    }


def _check_batch_independent(module, x, mode, **kw):
    """Explain ``x`` as one batch, in chunks of 2, and samples 0 and 4 alone (on a fresh copy, whose LRP
    graph is built from sample 0 rather than from the batch); all must agree. Returns the batch's
    Explanation."""
    batched, single = copy.deepcopy(module), copy.deepcopy(module)
    batch = oe.explain(batched, x, "lrp", mode=mode, **kw)
    want = batch.attribution
    scale = np.abs(want).reshape(len(x), -1).max(1)
    assert want.dtype == np.float64 and (scale > 0).all(), "a sample without relevance would prove nothing"
    chunked = oe.explain(batched, x, "lrp", mode=mode, batch_size=2, **kw)
    runs = [("batch_size=2", i, chunked, i) for i in range(len(x))]
    runs += [("alone", i, oe.explain(single, x[i : i + 1], "lrp", mode=mode, **kw), 0) for i in (0, 4)]
    for how, i, e, row in runs:
        assert e.extras["mode"] == batch.extras["mode"] and e.target[row] == batch.target[i], how
        np.testing.assert_allclose(e.attribution[row], want[i], rtol=RTOL, atol=1e-12 * scale[i],
                                   err_msg=f"sample {i}, {how}, mode {mode}")  # fmt: skip
    return batch


# ------------------------------------------------------------------------------ every composite
COMPOSITE_CASES = [
    *((c, "cnn", {"low": LOW, "high": HIGH} if c in BOUNDED else {}) for c in sorted(COMPOSITES)),
    ("montavon2019", "cnn", {"low": LOW, "high": HIGH, "maxpool": "avgpool"}),  # the tutorial's pooling
    *((c, "transformer", {}) for c in ("attnlrp", "attnlrp_gamma_vit", "cp_lrp")),
]


@pytest.mark.parametrize("mode", ["single", "rules"])
@pytest.mark.parametrize(
    "composite, model, kw",
    COMPOSITE_CASES,
    ids=[f"{c}-{m}{'-avgpool' if 'maxpool' in kw else ''}" for c, m, kw in COMPOSITE_CASES],
)
def test_a_composite_gives_a_sample_the_same_relevance_alone_in_a_batch_and_in_chunks(
    models, composite, model, kw, mode
):
    module, x = models[model]
    e = _check_batch_independent(module, x, mode, composite=composite, **kw)
    assert e.extras["composite"] == composite and e.extras["mode"] == mode


def test_every_registered_composite_is_checked():
    assert {c for c, model, _ in COMPOSITE_CASES if model == "cnn"} == set(COMPOSITES)


# ------------------------------------------------------------------------------ every rule, by override
BILINEAR = "the transformer's products of two activations (Q·Kᵀ, P·V), by node name"
RULE_CASES = [
    # rule, model, overrides (on the model's default composite), explain options; a stabiliser of 0.01
    # where the rule takes one, so that it matters
    ("epsilon", "cnn", {"Conv": "epsilon:0.01", "Gemm": "epsilon:0.01"}, {}),
    ("epsilon", "transformer", {"MatMul": "epsilon:0.01", "Gemm": "epsilon:0.01"}, {}),
    ("gamma", "cnn", {"Conv": "gamma:0.25", "Gemm": "gamma:0.1"}, {}),
    ("gamma", "transformer", {"MatMul": "gamma:0.1", "Gemm": "gamma:0.1"}, {}),
    ("alpha_beta", "cnn", {"Conv": "alpha_beta:2,1", "Gemm": "alpha_beta:3,2"}, {}),
    ("alpha_beta", "transformer", {"MatMul": "alpha_beta:2,1", "Gemm": "alpha_beta:2,1"}, {}),
    ("zplus", "cnn", {"Conv": "zplus", "Gemm": "zplus"}, {}),
    ("zplus", "transformer", {"MatMul": "zplus", "Gemm": "zplus"}, {}),
    ("zbox", "cnn", {"Conv": "zbox"}, {"low": LOW, "high": HIGH}),
    ("wsquare", "cnn", {"Conv": "wsquare", "Gemm": "wsquare"}, {}),
    ("flat", "cnn", {"Conv": "flat", "Gemm": "flat"}, {}),
    ("norm", "cnn", {"Add": "norm:0.01", "BatchNormalization": "norm:0.01", "MaxPool": "norm:0.01"}, {}),
    ("avgpool", "cnn", {"MaxPool": "avgpool:0.01"}, {}),
    ("pass", "cnn", {"BatchNormalization": "pass", "Relu": "pass"}, {}),
    ("gradient", "cnn", {"Add": "gradient"}, {}),
    ("bilinear", "transformer", {BILINEAR: "bilinear:0.01"}, {}),
    ("softmax", "transformer", {"Softmax": "softmax:0.01"}, {}),
    ("layer_norm", "transformer", {"LayerNormalization": "layer_norm:0.01"}, {}),
    ("stop", "transformer", {"Softmax": "stop"}, {}),
    ("signal_take_all", "lstm", {"LSTM": "signal_take_all:0.01"}, {}),
]
#: plans with no single-backward form (z^B and flat off the input, w², the gradient on a sum): rule graph only
RULES_ONLY = {"zbox", "wsquare", "flat", "gradient"}


def _overrides(module, x, rules: dict) -> dict:
    if BILINEAR not in rules:
        return rules
    plain = oe.explain(copy.deepcopy(module), x[:1], "lrp").extras["rules"]
    names = [k for k, v in plain.items() if v == "MatMul: bilinear"]
    assert len(names) == 4  # two per block
    return dict.fromkeys(names, rules[BILINEAR])


@pytest.mark.parametrize("mode", ["single", "rules"])
@pytest.mark.parametrize("rule, model, rules, kw", RULE_CASES, ids=[f"{r}-{m}" for r, m, *_ in RULE_CASES])
def test_a_rule_gives_a_sample_the_same_relevance_alone_in_a_batch_and_in_chunks(
    models, rule, model, rules, kw, mode
):
    module, x = models[model]
    rules = _overrides(module, x, rules)
    if mode == "single" and rule in RULES_ONLY:
        with pytest.raises(oe.OptionError, match="single-backward"):
            oe.explain(copy.deepcopy(module), x[:1], "lrp", mode=mode, rules=rules, **kw)
        return
    e = _check_batch_independent(module, x, mode, rules=rules, **kw)
    assert e.extras["mode"] == mode
    assert any(v.endswith(f": {rule}") for v in e.extras["rules"].values()), e.extras["rules"]


def test_every_registered_rule_is_checked():
    assert {r for r, *_ in RULE_CASES} == set(RULES) | set(R.SPECIAL)


# ------------------------------------------------------------------------------ montavon2019's stabiliser
def test_montavon_rms_stabiliser_is_the_tutorials_per_sample():
    # the tutorial's incr for one image, z + 1e-9 + 0.25·sqrt(mean z²), applied to each sample of a batch
    z = torch.randn(6, 4, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    z[2] *= 100  # one loud sample must not change the others' ε
    got = R.stabilize_unsigned(z, 1e-9, 0.25)
    for i in range(len(z)):
        zi = z[i : i + 1]
        tutorial = zi + 1e-9 + 0.25 * ((zi**2).mean() ** 0.5)
        np.testing.assert_array_equal(got[i : i + 1].numpy(), R.stabilize_unsigned(zi, 1e-9, 0.25).numpy())
        np.testing.assert_allclose(got[i : i + 1].numpy(), tutorial.numpy(), rtol=1e-15)


@pytest.mark.parametrize("mode", ["single", "rules"])
def test_montavon2019_is_batch_independent_in_float32_on_the_shipped_digits(mode):
    # the user's path (an ONNX file, float32); no residual sums here, so the kernels' rounding stays ~4e-7
    m = oe.load(ROOT / "models" / "digits.onnx")
    x = np.load(ROOT / "models" / "samples" / "digits.npy")[:6]
    kw = {"composite": "montavon2019", "low": 0.0, "high": 1.0, "maxpool": "avgpool", "mode": mode}
    batch = oe.explain(m, x, "lrp", batch_size=2, **kw).attribution
    for i in (0, 3):
        alone = oe.explain(m, x[i : i + 1], "lrp", **kw).attribution[0]
        np.testing.assert_allclose(alone, batch[i], rtol=1e-5, atol=1e-5 * np.abs(batch[i]).max())


# ------------------------------------------------------------------------------ epsilon_alpha2_beta1_flat
@pytest.mark.parametrize("mode", ["single", "rules"])
def test_epsilon_alpha2_beta1_flat_equals_zennit(mode, tmp_path):
    # Zennit's composite on the torch module (float64) against ours on its ONNX export, a batch of 4 in
    # chunks of 2: flat on the first convolution, α2β1 on the others, ε on the dense layers
    pytest.importorskip("zennit")
    from zennit.attribution import Gradient
    from zennit.composites import EpsilonAlpha2Beta1Flat

    torch.manual_seed(0)
    net = VGGish().eval()
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    module = _converted64(net, x, tmp_path / "vgg.onnx")
    net64, x64 = copy.deepcopy(net).double(), x.double()
    ours = oe.explain(
        module, x64.numpy(), "lrp", composite="epsilon_alpha2_beta1_flat", mode=mode, batch_size=2
    )
    assert ours.extras["mode"] == mode
    rules = list(ours.extras["rules"].values())
    assert [r for r in rules if r.startswith(("Conv", "Gemm"))] == [
        "Conv: flat", "Conv: alpha_beta", "Conv: alpha_beta", "Gemm: epsilon", "Gemm: epsilon",
    ]  # fmt: skip
    onehot = torch.eye(10, dtype=torch.float64)[torch.as_tensor(ours.target)]
    with Gradient(net64, EpsilonAlpha2Beta1Flat()) as attributor:
        _, ref = attributor(x64, lambda out: out * onehot)
    ref = ref.detach().numpy()
    np.testing.assert_allclose(ours.attribution, ref, rtol=1e-9, atol=1e-12 * np.abs(ref).max())
