"""LSTM, GRU and RNN: one-node graphs against onnxruntime, torch exports' gradients against autograd."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import assert_gradients_match, export, make_model, vinfo
from onnx import TensorProto, helper, numpy_helper

import onnx_explain as oe
from onnx_explain.convert import to_fx
from onnx_explain.errors import ConversionError

T, N, IN, H = 5, 3, 4, 3  # steps, batch, input size, hidden size
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
LENS = np.array([5, 2, 4], np.int32)


def _convert(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The converted graph's outputs, graph inputs fed in declared order."""
    gm = to_fx(onnx.shape_inference.infer_shapes(model))
    names = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    with torch.no_grad():
        got = gm(*[torch.from_numpy(feeds[n]) for n in names])
    got = got if isinstance(got, (tuple, list)) else [got]
    return [g.numpy() for g in got]


def _ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, feeds
    )


def _run_both(model: onnx.ModelProto, feeds: dict[str, np.ndarray]):
    """(onnxruntime's outputs, the converted graph's outputs)."""
    return _ort(model, feeds), _convert(model, feeds)


def _recurrent_model(
    op: str,
    direction: str = "forward",
    layout: int = 0,
    initial: bool = False,
    seq_lens: bool = False,
    peepholes: bool = False,
    bias: bool = True,
    outputs=("Y", "Y_h", "Y_c"),
    opset: int = 14,
    computed_weights: bool = False,
    seed: int = 0,
    **attrs,
):
    """A one-node ``op`` graph with random weights and the feeds for it."""
    rng = np.random.default_rng(seed)
    d = 2 if direction == "bidirectional" else 1
    g = GATES[op]
    tensors = {
        "W": rng.standard_normal((d, g * H, IN)).astype(np.float32) * 0.7,
        "R": rng.standard_normal((d, g * H, H)).astype(np.float32) * 0.7,
    }
    if bias:
        tensors["B"] = rng.standard_normal((d, 2 * g * H)).astype(np.float32) * 0.5
    x_shape = (N, T, IN) if layout else (T, N, IN)
    state_shape = (N, d, H) if layout else (d, N, H)
    feeds = {"x": rng.standard_normal(x_shape).astype(np.float32)}
    inputs = ["x", "W", "R", "B" if bias else ""]
    if seq_lens:
        feeds["lens"] = LENS
    if initial:
        feeds["h0"] = rng.standard_normal(state_shape).astype(np.float32)
        if op == "LSTM":
            feeds["c0"] = rng.standard_normal(state_shape).astype(np.float32)
    if op == "LSTM" and peepholes:
        tensors["P"] = rng.standard_normal((d, 3 * H)).astype(np.float32)
    inputs += ["lens" if seq_lens else "", "h0" if initial else ""]
    if op == "LSTM":
        inputs += ["c0" if initial else "", "P" if peepholes else ""]
    while inputs[-1] == "":
        inputs.pop()
    outputs = [o for o in outputs if op == "LSTM" or o != "Y_c"]
    last = max(["Y", "Y_h", "Y_c"].index(o) for o in outputs)
    node_outputs = [o if o in outputs else "" for o in ["Y", "Y_h", "Y_c"][: last + 1]]
    node = helper.make_node(op, inputs, node_outputs, hidden_size=H, direction=direction, **attrs)
    if layout:
        node.attribute.append(helper.make_attribute("layout", layout))
    graph_inputs = [vinfo("x", list(x_shape))]
    if seq_lens:
        graph_inputs.append(vinfo("lens", [N], TensorProto.INT32))
    for name in ("h0", "c0"):
        if name in feeds:
            graph_inputs.append(vinfo(name, list(state_shape)))
    nodes, inits = [node], []
    for name, value in tensors.items():
        if computed_weights:  # a graph input feeding Identity: the converter sees a computed value
            graph_inputs.append(vinfo(name + "_in", list(value.shape)))
            feeds[name + "_in"] = value
            nodes.insert(0, helper.make_node("Identity", [name + "_in"], [name]))
        else:
            inits.append(numpy_helper.from_array(value, name))
    y_shape = [N, T, d, H] if layout else [T, d, N, H]
    shapes = {"Y": y_shape, "Y_h": list(state_shape), "Y_c": list(state_shape)}
    model = make_model(nodes, graph_inputs, [vinfo(o, shapes[o]) for o in outputs], inits, opset=opset)
    return model, feeds


def _layout1_reference(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """onnxruntime's outputs for a ``layout=1`` model (its CPU kernels refuse layout 1): the same node with
    layout 0 on transposed inputs, outputs transposed back."""
    twin = onnx.ModelProto()
    twin.CopyFrom(model)
    node = twin.graph.node[-1]
    keep = [a for a in node.attribute if a.name != "layout"]
    del node.attribute[:]
    node.attribute.extend(keep)
    for v in list(twin.graph.input) + list(twin.graph.output):
        v.type.tensor_type.ClearField("shape")
    swap = {"x": (1, 0, 2), "h0": (1, 0, 2), "c0": (1, 0, 2)}
    out = _ort(
        twin, {k: np.ascontiguousarray(v.transpose(swap[k])) if k in swap else v for k, v in feeds.items()}
    )
    names = [o.name for o in model.graph.output]
    return [
        o.transpose(2, 0, 1, 3) if n == "Y" else o.transpose(1, 0, 2) for n, o in zip(names, out, strict=True)
    ]


def _check(model, feeds, n_outputs=None):
    layout = {a.name: a.i for a in model.graph.node[-1].attribute}.get("layout", 0)
    ref = _layout1_reference(model, feeds) if layout else _ort(model, feeds)
    got = _convert(model, feeds)
    assert len(got) == len(ref) == (n_outputs or len(ref))
    for r, g_ in zip(ref, got, strict=True):
        assert g_.shape == r.shape
        assert np.abs(r).max() > 0  # something to compare
        np.testing.assert_allclose(g_, r, rtol=1e-5, atol=1e-5)
    return ref, got


@pytest.mark.parametrize("seq_lens", [False, True], ids=["full", "lens"])
@pytest.mark.parametrize("initial", [False, True], ids=["zero0", "init0"])
@pytest.mark.parametrize("layout", [0, 1], ids=["layout0", "layout1"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_matches_onnxruntime(op, direction, layout, initial, seq_lens):
    model, feeds = _recurrent_model(op, direction, layout, initial, seq_lens)
    ref, got = _check(model, feeds, 3 if op == "LSTM" else 2)
    if seq_lens:  # past each sequence's length the output is zero, and it is not zero before
        y = got[0] if layout == 0 else got[0].transpose(1, 2, 0, 3)  # [T, D, N, H]
        for b, n in enumerate(LENS):
            assert not y[n:, :, b].any()
            assert np.abs(y[:n, :, b]).min(axis=-1).max() > 0


@pytest.mark.parametrize("opset", [7, 14, 22])
@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_every_opset(op, opset):
    model, feeds = _recurrent_model(op, "bidirectional", 0, True, True, opset=opset)
    _check(model, feeds)


ACTIVATIONS = {
    "LSTM": [
        (["Relu", "Tanh", "Sigmoid"], [], []),
        (["HardSigmoid", "ScaledTanh", "Affine"], [0.3, 0.8, 1.5], [0.4, 1.2, -0.1]),
        (["Sigmoid", "LeakyRelu", "Elu"], [0.2, 0.7], []),
        (["Softsign", "Softplus", "ThresholdedRelu"], [0.1], []),
    ],
    "GRU": [
        (["Sigmoid", "Relu"], [], []),
        (["HardSigmoid", "ScaledTanh"], [0.25, 0.9], [0.45, 1.1]),
        (["Softsign", "LeakyRelu"], [0.3], []),
        (["Sigmoid", "Elu"], [0.5], []),
        (["Sigmoid", "Affine"], [0.6], [0.2]),
        (["HardSigmoid", "Softplus"], [], []),
    ],
    "RNN": [
        (["Relu"], [], []),
        (["Sigmoid"], [], []),
        (["ScaledTanh"], [1.3], [0.7]),
        (["LeakyRelu"], [0.05], []),
        (["ThresholdedRelu"], [0.2], []),
        (["Elu"], [0.9], []),
        (["Softsign"], [], []),
        (["Softplus"], [], []),
        (["Affine"], [0.5], [0.1]),
        (["HardSigmoid"], [0.3], [0.6]),
    ],
}
ACT_CASES = [
    pytest.param(op, *case, id=f"{op}-{'-'.join(case[0])}-{len(case[1])}a{len(case[2])}b")
    for op, cases in ACTIVATIONS.items()
    for case in cases
]


@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
@pytest.mark.parametrize("op,acts,alpha,beta", ACT_CASES)
def test_activations(op, acts, alpha, beta, direction):
    d = 2 if direction == "bidirectional" else 1
    attrs = {"activations": acts * d}
    if alpha:
        attrs["activation_alpha"] = alpha * d
    if beta:
        attrs["activation_beta"] = beta * d
    model, feeds = _recurrent_model(op, direction, 0, True, False, **attrs)
    ref, _ = _check(model, feeds)
    # the activations change the result: the default ones give something else
    default, dfeeds = _recurrent_model(op, direction, 0, True, False)
    assert not np.allclose(_run_both(default, dfeeds)[1][0], ref[0], atol=1e-4)


@pytest.mark.parametrize(
    "act,alpha,beta",
    [("Affine", 1.0, 0.0), ("ThresholdedRelu", 1.0, None), ("ScaledTanh", 1.0, 1.0), ("LeakyRelu", 0.01, None),
     ("Elu", 1.0, None), ("HardSigmoid", 0.2, 0.5)],
)  # fmt: skip
def test_activation_defaults_are_the_onnx_operators(act, alpha, beta):
    """Without activation_alpha/beta the values default to the ONNX operators' (Affine alpha=1 ...).
    onnxruntime reads a missing Affine/ThresholdedRelu/ScaledTanh value as 0; we follow the spec, so the
    reference here spells the defaults out."""
    model, feeds = _recurrent_model("RNN", "forward", 0, True, False, activations=[act])
    kw = {"activation_alpha": [alpha]} | ({"activation_beta": [beta]} if beta is not None else {})
    explicit, _ = _recurrent_model("RNN", "forward", 0, True, False, activations=[act], **kw)
    ref, got = _ort(explicit, feeds), _convert(model, feeds)
    for r, g in zip(ref, got, strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)


def test_bidirectional_activations_differ_per_direction():
    acts = ["Sigmoid", "Tanh", "Tanh", "HardSigmoid", "Relu", "Softsign"]
    model, feeds = _recurrent_model("LSTM", "bidirectional", 0, True, True, activations=acts)
    _check(model, feeds)


@pytest.mark.parametrize("seq_lens", [False, True], ids=["full", "lens"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_gru_linear_before_reset(direction, seq_lens):
    model, feeds = _recurrent_model("GRU", direction, 0, True, seq_lens, linear_before_reset=1)
    ref, _ = _check(model, feeds)
    other, ofeeds = _recurrent_model("GRU", direction, 0, True, seq_lens, linear_before_reset=0)
    assert not np.allclose(_run_both(other, ofeeds)[1][0], ref[0], atol=1e-4)


@pytest.mark.parametrize("seq_lens", [False, True], ids=["full", "lens"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize(
    "input_forget,peepholes", [(1, False), (0, True), (1, True)], ids=["coupled", "peepholes", "both"]
)
def test_lstm_input_forget_and_peepholes(input_forget, peepholes, direction, seq_lens):
    kw = {"input_forget": input_forget} if input_forget else {}
    model, feeds = _recurrent_model("LSTM", direction, 0, True, seq_lens, peepholes=peepholes, **kw)
    ref, _ = _check(model, feeds)
    plain, pfeeds = _recurrent_model("LSTM", direction, 0, True, seq_lens)
    assert not np.allclose(_run_both(plain, pfeeds)[1][0], ref[0], atol=1e-4)


@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_clip(op, direction):
    # large weights push gate pre-activations past the threshold, so clipping changes the result
    model, feeds = _recurrent_model(op, direction, 0, True, True, clip=0.3)
    for init in model.graph.initializer:
        if init.name in ("W", "R"):
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 4, init.name))
    ref, _ = _check(model, feeds)
    unclipped = onnx.ModelProto()
    unclipped.CopyFrom(model)
    del unclipped.graph.node[-1].attribute[:]
    unclipped.graph.node[-1].attribute.extend([a for a in model.graph.node[-1].attribute if a.name != "clip"])
    assert not np.allclose(_run_both(unclipped, feeds)[1][0], ref[0], atol=1e-4)


SUBSETS = [("Y",), ("Y_h",), ("Y_c",), ("Y", "Y_c"), ("Y_h", "Y_c")]


@pytest.mark.parametrize(
    "op,outputs",
    [pytest.param("LSTM", o, id="LSTM-" + "+".join(o)) for o in SUBSETS]
    + [pytest.param(op, o, id=f"{op}-{o[0]}") for op in ("GRU", "RNN") for o in SUBSETS[:2]],
)
def test_output_subsets(op, outputs):
    model, feeds = _recurrent_model(op, "bidirectional", 0, True, True, outputs=outputs)
    _check(model, feeds, len(outputs))


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_no_bias_and_computed_weights(op):
    model, feeds = _recurrent_model(op, "bidirectional", 0, True, True, bias=False, computed_weights=True)
    _check(model, feeds)
    model, feeds = _recurrent_model(op, "reverse", 1, False, False, computed_weights=True, peepholes=True)
    _check(model, feeds)


def test_hidden_size_taken_from_r_when_attribute_absent():
    model, feeds = _recurrent_model("GRU", "forward", 0, True, False)
    ref = _ort(model, feeds)  # onnxruntime insists on the attribute
    node = model.graph.node[-1]
    keep = [a for a in node.attribute if a.name != "hidden_size"]
    del node.attribute[:]
    node.attribute.extend(keep)
    for r, g in zip(ref, _convert(model, feeds), strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)


def test_gradients_reach_input_and_computed_weights():
    model, feeds = _recurrent_model(
        "LSTM", "bidirectional", 0, True, True, computed_weights=True, peepholes=True
    )
    gm = to_fx(onnx.shape_inference.infer_shapes(model))
    names = [i.name for i in model.graph.input]
    args = [torch.from_numpy(feeds[n]).requires_grad_(feeds[n].dtype == np.float32) for n in names]
    gm(*args)[0].sum().backward()
    for name, arg in zip(names, args, strict=True):
        if arg.requires_grad:
            assert arg.grad is not None and arg.grad.abs().sum() > 0, name
    # sequence 1 (length 2): steps past its length do not touch the outputs
    x_grad = args[names.index("x")].grad
    assert not x_grad[2:, 1].any() and x_grad[:2, 1].abs().sum() > 0


@pytest.mark.parametrize(
    "attrs,match",
    [
        ({"activations": ["Gelu"]}, "activation 'Gelu'"),
        ({"activations": ["Tanh", "Tanh"]}, "activations has 2"),
    ],
    ids=["unknown", "count"],
)
def test_bad_activations_are_refused(attrs, match):
    model, _ = _recurrent_model("RNN", outputs=("Y",), **attrs)
    with pytest.raises(ConversionError, match=f"RNN.*{match}"):
        to_fx(model)


# --- torch exports ----------------------------------------------------------------------------------
class _Tagger(torch.nn.Module):
    """A 2-layer bidirectional batch-first recurrent layer with a linear head on every position."""

    def __init__(self, kind: str):
        super().__init__()
        rnn = {"LSTM": torch.nn.LSTM, "GRU": torch.nn.GRU, "RNN": torch.nn.RNN}[kind]
        self.rnn = rnn(4, 5, num_layers=2, bidirectional=True, batch_first=True)
        self.head = torch.nn.Linear(10, 3)

    def forward(self, x):
        return self.head(self.rnn(x)[0])


class _Classifier(torch.nn.Module):
    """LSTM + Linear on the last layer's final hidden states (both directions)."""

    def __init__(self):
        super().__init__()
        self.rnn = torch.nn.LSTM(4, 6, num_layers=2, bidirectional=True, batch_first=True)
        self.head = torch.nn.Linear(12, 3)

    def forward(self, x):
        _, (h, _) = self.rnn(x)
        return self.head(torch.cat([h[-2], h[-1]], dim=-1))


def _export_legacy14(module, x, path):
    module = module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, (x,), str(path), dynamo=False, opset_version=14, input_names=["x"], output_names=["y"],
            dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
        )  # fmt: skip
    return path


@pytest.mark.parametrize(
    "kind,exporter",
    [("LSTM", "legacy"), ("GRU", "legacy"), ("RNN", "legacy"), ("LSTM", "dynamo"), ("GRU", "dynamo")],
)
def test_torch_export_forward_and_gradient(kind, exporter, tmp_path):
    torch.manual_seed(0)
    module = _Tagger(kind).eval()
    x = torch.randn(3, 7, 4)
    if exporter == "legacy":  # opset 14
        path = _export_legacy14(module, x, tmp_path / "m.onnx")
    else:  # opset 20 here, the LSTM-14 / GRU-14 schemas
        path = export(module, x, tmp_path / "m.onnx", "dynamo")
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert kind in ops  # the export really holds the recurrent op
    gm = to_fx(onnx.shape_inference.infer_shapes(onnx.load(str(path))))
    xb = torch.randn(5, 7, 4)  # another batch size than the export's
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": xb.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(gm(xb).numpy(), ref, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(gm(xb).numpy(), module(xb).numpy(), rtol=1e-5, atol=1e-5)

    def grad(f):
        xg = xb.clone().requires_grad_(True)
        out = f(xg)
        (out[:, 2, 1].sum() + out[:, -1, 0].sum()).backward()
        return xg.grad.numpy()

    assert_gradients_match(grad(gm), grad(module), rel=1e-5, cos=0.99999)


def test_public_api_gradient_equals_autograd(tmp_path):
    torch.manual_seed(1)
    module = _Classifier().eval()
    x = torch.randn(4, 6, 4)
    path = _export_legacy14(module, x, tmp_path / "clf.onnx")
    assert "LSTM" in {n.op_type for n in onnx.load(str(path)).graph.node}
    m = oe.load(path)
    np.testing.assert_allclose(m.predict(x.numpy()), module(x).detach().numpy(), rtol=1e-5, atol=1e-5)
    exp = oe.explain(m, x.numpy(), "gradient")
    target = module(x).argmax(1)
    np.testing.assert_array_equal(exp.target, target.numpy())
    xg = x.clone().requires_grad_(True)
    module(xg).gather(1, target[:, None]).sum().backward()
    got = exp.attribution
    assert got.shape == tuple(x.shape)
    assert_gradients_match(got, xg.grad.numpy(), rel=1e-5, cos=0.99999)


@pytest.mark.parametrize("batch_axis,time_axis", [(1, 0), (0, 1)], ids=["time-major", "batch-major"])
def test_reverse_sequence(batch_axis, time_axis):
    """tf2onnx writes it for Keras' backward layers: each sequence's first ``len`` steps reversed."""
    lens = np.array([4, 1, 3], np.int64)
    shape = [5, 3, 2] if time_axis == 0 else [3, 5, 2]
    node = helper.make_node(
        "ReverseSequence", ["x", "lens"], ["y"], batch_axis=batch_axis, time_axis=time_axis
    )
    model = make_model([node], [vinfo("x", shape), vinfo("lens", [3], TensorProto.INT64)], [vinfo("y", shape)],
                       opset=17)  # fmt: skip
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    (ref,), (got,) = _run_both(model, {"x": x, "lens": lens})
    np.testing.assert_array_equal(got, ref)
    xt = torch.from_numpy(x).requires_grad_(True)
    gm = to_fx(onnx.shape_inference.infer_shapes(model))
    (gm(xt, torch.from_numpy(lens)) * torch.arange(x.size).reshape(shape)).sum().backward()
    np.testing.assert_array_equal(
        xt.grad.numpy(),
        _ort(model, {"x": np.arange(x.size, dtype=np.float32).reshape(shape), "lens": lens})[0],
    )
