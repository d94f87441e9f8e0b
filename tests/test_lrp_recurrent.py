"""LRP for LSTM and GRU nodes (Arras et al.; signal-take-all): against a float64 transcription of the
reference implementation (``ArrasL/LRP_for_LSTM``, ``lrp_linear`` with bias_factor 0), conservation on
bias-free cells with zero initial state (uni- and bidirectional, both exporters), and a tagger explained
per position (no relevance on later tokens for a causal LSTM)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import export
from torch import nn

import onnx_explain as oe

torch.set_default_dtype(torch.float32)


class Classifier(nn.Module):
    """x (B, T, 6) → LSTM/GRU (batch-first) → the last step's output → linear."""

    def __init__(self, cell="LSTM", bidirectional=False, bias=True):
        super().__init__()
        self.rnn = getattr(nn, cell)(6, 8, batch_first=True, bidirectional=bidirectional, bias=bias)
        self.fc = nn.Linear(16 if bidirectional else 8, 3, bias=bias)

    def forward(self, x):
        return self.fc(self.rnn(x)[0][:, -1])


class Tagger(Classifier):
    """One label per token: (B, T, 3) flattened to (B, 3T), so target t·3 + c explains token t."""

    def forward(self, x):
        return self.fc(self.rnn(x)[0]).flatten(1)


def _lrp_linear(hin, w, b, hout, rout, eps=1e-12):
    """Arras' ``lrp_linear`` (bias_factor 0): ``R_i = Σ_j w_ij h_i / (z_j + ε sgn z_j) R_j``; w is (in, out)."""
    denom = hout + eps * np.where(hout >= 0, 1.0, -1.0)
    return ((w * hin[:, None]) / denom[None, :] * rout[None, :]).sum(1)


def _arras_lstm(net, x, target):
    """The reference LSTM LRP for one sequence (its LSTM_bidi.py, one direction), float64."""
    p = {k: v.detach().double().numpy() for k, v in net.state_dict().items()}
    w_ih, w_hh, b = p["rnn.weight_ih_l0"], p["rnn.weight_hh_l0"], p["rnn.bias_ih_l0"] + p["rnn.bias_hh_l0"]
    hid = w_hh.shape[1]
    sl = {g: slice(k * hid, (k + 1) * hid) for k, g in enumerate("ifgo")}  # torch's gate order
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    steps = len(x)
    h, c = np.zeros((steps + 1, hid)), np.zeros((steps + 1, hid))  # index t + 1; 0 is the initial state
    pre, gates = [], []
    for t in range(steps):
        z = w_ih @ x[t] + w_hh @ h[t] + b
        i, f, g, o = sig(z[sl["i"]]), sig(z[sl["f"]]), np.tanh(z[sl["g"]]), sig(z[sl["o"]])
        c[t + 1] = f * c[t] + i * g
        h[t + 1] = o * np.tanh(c[t + 1])
        pre.append(z)
        gates.append((i, f, g))
    y = p["fc.weight"] @ h[steps] + p["fc.bias"]
    r_out = np.zeros_like(y)
    r_out[target] = y[target]
    r_h, r_c, r_x = np.zeros((steps + 1, hid)), np.zeros((steps + 1, hid)), np.zeros_like(x)
    r_h[steps] = _lrp_linear(h[steps], p["fc.weight"].T, p["fc.bias"], y, r_out)
    eye = np.eye(hid)
    for t in reversed(range(steps)):
        i, f, g = gates[t]
        r_c[t + 1] += r_h[t + 1]  # h = o ⊙ tanh(c): the gate o gets nothing
        r_c[t] = _lrp_linear(f * c[t], eye, np.zeros(hid), c[t + 1], r_c[t + 1])
        r_g = _lrp_linear(i * g, eye, np.zeros(hid), c[t + 1], r_c[t + 1])
        zg = pre[t][sl["g"]]
        r_x[t] = _lrp_linear(x[t], w_ih[sl["g"]].T, b[sl["g"]], zg, r_g)
        r_h[t] = _lrp_linear(h[t], w_hh[sl["g"]].T, b[sl["g"]], zg, r_g)
    return r_x


@pytest.mark.parametrize("exporter", ["legacy", pytest.param("dynamo", marks=pytest.mark.slow)])
def test_lstm_lrp_matches_the_reference_implementation(exporter, tmp_path):
    torch.manual_seed(0)
    net = Classifier("LSTM").eval()
    x = torch.randn(3, 5, 6, generator=torch.Generator().manual_seed(1))
    m = oe.load(export(net, x, tmp_path / "lstm.onnx", exporter))
    e = oe.explain(m, x.numpy(), "lrp", composite_options={"epsilon": 1e-9})
    assert any(v == "LSTM: signal_take_all" for v in e.extras["rules"].values())
    want = np.stack([_arras_lstm(net, x[b].double().numpy(), int(e.target[b])) for b in range(3)])
    np.testing.assert_allclose(e.attribution, want, rtol=1e-3, atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_bias_free_recurrent_nets_conserve_relevance(cell, bidirectional, tmp_path):
    torch.manual_seed(0)
    net = Classifier(cell, bidirectional, bias=False).eval()
    x = torch.randn(3, 5, 6, generator=torch.Generator().manual_seed(1))
    m = oe.load(export(net, x, tmp_path / "rnn.onnx", "legacy"))
    e = oe.explain(m, x.numpy(), "lrp", composite_options={"epsilon": 1e-9})
    assert not e.extras["fallback_nodes"]
    np.testing.assert_allclose(e.attribution.reshape(3, -1).sum(1), e.score, rtol=1e-3)  # measured ≤ 4e-4


def test_a_tagger_is_explained_per_position(tmp_path):
    torch.manual_seed(0)
    net = Tagger("LSTM", bias=False).eval()
    x = torch.randn(2, 5, 6, generator=torch.Generator().manual_seed(1))
    m = oe.load(export(net, x, tmp_path / "tagger.onnx", "legacy"))
    for t in (0, 2, 4):
        e = oe.explain(
            m, x.numpy(), "lrp", target=[3 * t + 1, 3 * t + 2], composite_options={"epsilon": 1e-9}
        )
        assert not e.attribution[:, t + 1 :].any()  # a causal LSTM: later tokens get nothing
        assert np.abs(e.attribution[:, t]).sum() > 0
        np.testing.assert_allclose(e.attribution.reshape(2, -1).sum(1), e.score, rtol=1e-3)
