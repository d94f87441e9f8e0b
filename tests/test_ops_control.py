"""If, Loop and Scan: graphs built with onnx.helper against onnxruntime (forward) and autograd of the
equivalent torch function (gradient); torch exports with data-dependent control flow; a streaming model
with state inputs explained through ``onnx_explain.load`` / ``explain``."""

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
from onnx_explain.convert.driver import failing_node
from onnx_explain.errors import ConversionError, ModelRunError

B, F = 3, 4
RNG = np.random.default_rng(0)
W = (RNG.standard_normal((F, F)) / 2).astype(np.float32)


def _ort(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _fx(model: onnx.ModelProto, **kw):
    return to_fx(onnx.shape_inference.infer_shapes(model), **kw)


def _outputs(gm, *args) -> list[torch.Tensor]:
    got = gm(*[torch.as_tensor(a) for a in args])
    return list(got) if isinstance(got, (tuple, list)) else [got]


def _init(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def _branch(name: str, nodes, out: str, shape=("B", F)) -> onnx.GraphProto:
    return helper.make_graph(nodes, name, [], [vinfo(out, list(shape))])


# the two branches read the outer-scope input x and the outer initializer w
THEN = _branch("then", [helper.make_node("MatMul", ["x", "w"], ["t"], name="then_mm")], "t")
ELSE = _branch(
    "else",
    [
        helper.make_node("Mul", ["x", "x"], ["e0"], name="else_sq"),
        helper.make_node("Sin", ["e0"], ["e"], name="else_sin"),
    ],
    "e",
)


def _if_model(cond_nodes, extra_inits=()) -> onnx.ModelProto:
    nodes = [
        *cond_nodes,
        helper.make_node("If", ["c"], ["y"], then_branch=THEN, else_branch=ELSE, name="the_if"),
    ]
    return make_model(nodes, [vinfo("x", ["B", F])], [vinfo("y", None)], [_init("w", W), *extra_inits])


def _if_torch(x: torch.Tensor, take_then: bool) -> torch.Tensor:
    return x @ torch.from_numpy(W) if take_then else torch.sin(x * x)


# --- If ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("threshold,take_then", [(2, True), (5, False)], ids=["then", "else"])
def test_if_with_a_constant_condition_is_folded(threshold, take_then):
    # the condition is computed at load time from an initializer and a Constant: Greater(k, 3)
    cond = [
        helper.make_node("Constant", [], ["three"], value=_init("three", np.int64(3)), name="three"),
        helper.make_node("Greater", ["three", "k"], ["c"], name="cond"),
    ]
    model = _if_model(cond, [_init("k", np.int64(threshold))])
    gm = _fx(model)
    assert gm.onnx_folded == [("the_if", "If", "then_branch" if take_then else "else_branch")]
    assert not any(type(m).__name__ == "OnnxIf" for m in gm.modules())  # the branch is inlined
    x = RNG.standard_normal((B, F)).astype(np.float32)
    np.testing.assert_allclose(
        _outputs(gm, x)[0].detach().numpy(), _ort(model, {"x": x})[0], rtol=1e-5, atol=1e-6
    )
    xt = torch.from_numpy(x).requires_grad_(True)
    _outputs(gm, xt)[0].sum().backward()
    ref = torch.from_numpy(x).requires_grad_(True)
    _if_torch(ref, take_then).sum().backward()
    np.testing.assert_allclose(xt.grad.numpy(), ref.grad.numpy(), rtol=1e-5, atol=1e-6)


def _runtime_if_model() -> onnx.ModelProto:
    cond = [
        helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0, name="total"),
        helper.make_node("Greater", ["s", "zero"], ["c"], name="positive"),
    ]
    return _if_model(cond, [_init("zero", np.float32(0))])


@pytest.mark.parametrize("sign", [1.0, -1.0], ids=["then", "else"])
def test_if_with_a_runtime_condition_selects_per_call(sign):
    model = _runtime_if_model()
    gm = _fx(model)
    assert gm.onnx_folded == []
    x = (np.abs(RNG.standard_normal((1, F))) * sign).astype(np.float32)
    np.testing.assert_allclose(
        _outputs(gm, x)[0].detach().numpy(), _ort(model, {"x": x})[0], rtol=1e-5, atol=1e-6
    )
    xt = torch.from_numpy(x).requires_grad_(True)
    _outputs(gm, xt)[0].sum().backward()
    ref = torch.from_numpy(x).requires_grad_(True)
    _if_torch(ref, sign > 0).sum().backward()
    np.testing.assert_allclose(xt.grad.numpy(), ref.grad.numpy(), rtol=1e-5, atol=1e-6)


def test_if_per_sample_condition_refused_when_samples_disagree():
    # the condition is computed per sample (ReduceSum over the features only): one value per row
    cond = [
        helper.make_node("ReduceSum", ["x", "ax"], ["s"], keepdims=0, name="row_sum"),
        helper.make_node("Greater", ["s", "zero"], ["c"], name="row_positive"),
    ]
    model = _if_model(cond, [_init("zero", np.float32(0)), _init("ax", np.array([1], np.int64))])
    gm = _fx(model)
    same = np.abs(RNG.standard_normal((B, F))).astype(np.float32)
    np.testing.assert_allclose(_outputs(gm, same)[0].detach().numpy(), same @ W, rtol=1e-5, atol=1e-6)
    mixed = same.copy()
    mixed[1] *= -1
    with pytest.raises(ModelRunError, match=r"node 'the_if' \(If\): its condition has 3 values that differ"):
        _outputs(gm, mixed)


def test_if_on_a_fixed_input_is_folded_when_known():
    nodes = [
        helper.make_node("Equal", ["mode", "one"], ["c"], name="is_one"),
        helper.make_node("If", ["c"], ["y"], then_branch=THEN, else_branch=ELSE, name="mode_if"),
    ]
    model = make_model(
        nodes, [vinfo("x", ["B", F]), vinfo("mode", [], TensorProto.INT64)], [vinfo("y", None)],
        [_init("w", W), _init("one", np.int64(1))],
    )  # fmt: skip
    assert _fx(model).onnx_folded == []  # unknown at load time: selected per call
    gm = _fx(model, known={"mode": np.int64(7)})
    assert gm.onnx_folded == [("mode_if", "If", "else_branch")]
    x = RNG.standard_normal((B, F)).astype(np.float32)
    got = _outputs(gm, x, np.int64(7))[0].detach().numpy()
    np.testing.assert_allclose(
        got, _ort(model, {"x": x, "mode": np.array(7, np.int64)})[0], rtol=1e-5, atol=1e-6
    )


def test_if_on_the_shape_of_a_fixed_input_is_not_folded():
    # fixed inputs are given with batch 1 and repeated: their shape at load time is not the call's
    nodes = [
        helper.make_node("Shape", ["state"], ["shp"], start=0, end=1, name="rows"),
        helper.make_node("Equal", ["shp", "one"], ["c"], name="single"),
        helper.make_node("Add", ["x", "state"], ["xs"], name="add_state"),
        helper.make_node("If", ["c"], ["y"], then_branch=THEN, else_branch=ELSE, name="batch_if"),
    ]
    model = make_model(
        nodes, [vinfo("x", ["B", F]), vinfo("state", ["B", F])], [vinfo("y", None), vinfo("xs", None)],
        [_init("w", W), _init("one", np.array([1], np.int64))],
    )  # fmt: skip
    assert _fx(model, known={"state": np.zeros((1, F), np.float32)}).onnx_folded == []


# --- Loop --------------------------------------------------------------------------------------------
def _loop_model(trip: int | None, stop_at: float | None = None) -> onnx.ModelProto:
    """acc_{i+1} = 0.8 acc_i + sigmoid(x @ w) * (i + 1); scan output acc_{i+1}; optionally a condition
    ``sum(acc) < stop_at`` that ends the loop early."""
    body_nodes = [
        helper.make_node("MatMul", ["x", "w"], ["xw"], name="body_mm"),
        helper.make_node("Sigmoid", ["xw"], ["t"], name="body_sigmoid"),
        helper.make_node("Add", ["i", "one_i"], ["i1"], name="body_next"),
        helper.make_node("Cast", ["i1"], ["fi"], to=TensorProto.FLOAT, name="body_cast"),
        helper.make_node("Mul", ["t", "fi"], ["tf"], name="body_scale"),
        helper.make_node("Mul", ["acc_in", "decay"], ["d"], name="body_decay"),
        helper.make_node("Add", ["d", "tf"], ["acc_out"], name="body_add"),
        helper.make_node("Identity", ["acc_out"], ["scan"], name="body_scan"),
    ]
    if stop_at is None:
        body_nodes.append(helper.make_node("Identity", ["cond_in"], ["cond_out"], name="body_keep"))
    else:
        body_nodes += [
            helper.make_node("ReduceSum", ["acc_out"], ["total"], keepdims=0, name="body_total"),
            helper.make_node("Less", ["total", "limit"], ["cond_out"], name="body_cond"),
        ]
    body = helper.make_graph(
        body_nodes, "body",
        [vinfo("i", [], TensorProto.INT64), vinfo("cond_in", [], TensorProto.BOOL), vinfo("acc_in", ["B", F])],
        [vinfo("cond_out", [], TensorProto.BOOL), vinfo("acc_out", ["B", F]), vinfo("scan", ["B", F])],
        [_init("one_i", np.int64(1)), _init("decay", np.float32(0.8))],
    )  # fmt: skip
    inits = [_init("w", W), _init("keep", np.bool_(True)), _init("limit", np.float32(stop_at or 0))]
    if trip is not None:
        inits.append(_init("M", np.int64(trip)))
    nodes = [
        helper.make_node("Mul", ["x", "zero"], ["acc0"], name="acc0"),
        helper.make_node("Loop", ["M" if trip is not None else "", "keep", "acc0"], ["acc", "accs"], body=body, name="loop"),
    ]  # fmt: skip
    return make_model(
        nodes,
        [vinfo("x", ["B", F])],
        [vinfo("acc", None), vinfo("accs", None)],
        [*inits, _init("zero", np.float32(0))],
    )


def _loop_torch(x: torch.Tensor, trip: int | None, stop_at: float | None = None):
    acc, accs, i = torch.zeros_like(x), [], 0
    t = torch.sigmoid(x @ torch.from_numpy(W))
    while trip is None or i < trip:
        acc = 0.8 * acc + t * (i + 1)
        accs.append(acc)
        i += 1
        if stop_at is not None and not bool(acc.sum() < stop_at):
            break
    return acc, torch.stack(accs)


@pytest.mark.parametrize("trip,stop_at", [(4, None), (None, 20.0), (2, 20.0)], ids=["trip", "cond", "both"])
def test_loop_matches_onnxruntime_and_autograd(trip, stop_at):
    model = _loop_model(trip, stop_at)
    x = np.abs(RNG.standard_normal((B, F))).astype(np.float32) / 4 + 0.1
    want = _ort(model, {"x": x})
    gm = _fx(model)
    got = _outputs(gm, x)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        np.testing.assert_allclose(g.detach().numpy(), w, rtol=1e-5, atol=1e-5)
    ref_acc, ref_accs = _loop_torch(torch.from_numpy(x), trip, stop_at)
    assert ref_accs.shape == want[1].shape  # the reference loops as often as onnxruntime
    xt = torch.from_numpy(x).requires_grad_(True)
    acc, accs = _outputs(gm, xt)
    (acc.sum() + (accs**2).sum()).backward()
    xr = torch.from_numpy(x).requires_grad_(True)
    ref_acc, ref_accs = _loop_torch(xr, trip, stop_at)
    (ref_acc.sum() + (ref_accs**2).sum()).backward()
    np.testing.assert_allclose(xt.grad.numpy(), xr.grad.numpy(), rtol=1e-5, atol=1e-5)


# --- Scan --------------------------------------------------------------------------------------------
def _scan_model(direction: int, in_axis: int, out_axis: int, steps: int = 5) -> onnx.ModelProto:
    """State s_t = tanh(s_{t-1} @ w + x_t); scan output 2 s_t; x sliced along ``in_axis``."""
    body = helper.make_graph(
        [
            helper.make_node("MatMul", ["s_in", "w"], ["sw"], name="scan_mm"),
            helper.make_node("Add", ["sw", "x_t"], ["pre"], name="scan_add"),
            helper.make_node("Tanh", ["pre"], ["s_out"], name="scan_tanh"),
            helper.make_node("Mul", ["s_out", "two"], ["y_t"], name="scan_two"),
        ],
        "scan_body",
        [vinfo("s_in", ["B", F]), vinfo("x_t", ["B", F])],
        [vinfo("s_out", ["B", F]), vinfo("y_t", ["B", F])],
        [_init("two", np.float32(2))],
    )
    x_shape = ["B", F]
    x_shape.insert(in_axis, steps)
    node = helper.make_node(
        "Scan", ["s0", "x"], ["s", "ys"], body=body, num_scan_inputs=1, name="scan",
        scan_input_axes=[in_axis], scan_input_directions=[direction], scan_output_axes=[out_axis],
    )  # fmt: skip
    return make_model(
        [node],
        [vinfo("s0", ["B", F]), vinfo("x", x_shape)],
        [vinfo("s", None), vinfo("ys", None)],
        [_init("w", W)],
    )


def _scan_torch(s: torch.Tensor, x: torch.Tensor, direction: int, in_axis: int, out_axis: int):
    ys = []
    steps = x.shape[in_axis]
    for t in range(steps):
        xt = x.select(in_axis, steps - 1 - t if direction else t)
        s = torch.tanh(s @ torch.from_numpy(W) + xt)
        ys.append(2 * s)
    return s, torch.stack(ys, dim=out_axis % 3)


@pytest.mark.parametrize(
    "direction,in_axis,out_axis", [(0, 0, 0), (1, 1, -1)], ids=["forward", "reverse-axis1-out-1"]
)
def test_scan_matches_onnxruntime_and_autograd(direction, in_axis, out_axis):
    model = _scan_model(direction, in_axis, out_axis)
    s0 = RNG.standard_normal((B, F)).astype(np.float32)
    x = RNG.standard_normal((5, B, F) if in_axis == 0 else (B, 5, F)).astype(np.float32)
    want = _ort(model, {"s0": s0, "x": x})
    gm = _fx(model)
    got = _outputs(gm, s0, x)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g.detach().numpy(), w, rtol=1e-5, atol=1e-5)
    xt = torch.from_numpy(x).requires_grad_(True)
    s, ys = _outputs(gm, torch.from_numpy(s0), xt)
    (s.sum() + ys.pow(2).sum()).backward()
    xr = torch.from_numpy(x).requires_grad_(True)
    s, ys = _scan_torch(torch.from_numpy(s0), xr, direction, in_axis, out_axis)
    (s.sum() + ys.pow(2).sum()).backward()
    np.testing.assert_allclose(xt.grad.numpy(), xr.grad.numpy(), rtol=1e-5, atol=1e-5)


# --- errors name the subgraph's node -----------------------------------------------------------------
def test_unsupported_node_in_a_body_is_named_with_its_loop():
    model = _loop_model(3)
    body = model.graph.node[1].attribute[0].g
    body.node[1].op_type = "NoSuchOp"  # body_sigmoid
    with pytest.raises(
        ConversionError, match=r"node 'body_sigmoid' \(NoSuchOp\) in the body of node 'loop' \(Loop\)"
    ):
        to_fx(model)


def test_scan_8_is_refused_with_node_and_opset():
    body = helper.make_graph(
        [helper.make_node("Add", ["s_in", "x_t"], ["s_out"])], "b",
        [vinfo("s_in", [F]), vinfo("x_t", [F])], [vinfo("s_out", [F])],
    )  # fmt: skip
    node = helper.make_node("Scan", ["", "s0", "x"], ["s"], body=body, num_scan_inputs=1, name="old_scan")
    graph = helper.make_graph([node], "g", [vinfo("s0", [1, F]), vinfo("x", [1, 5, F])], [vinfo("s", [1, F])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 8)])
    with pytest.raises(
        ConversionError, match=r"node 'old_scan' \(Scan\) could not be converted \(opset 8\): Scan-8"
    ):
        to_fx(model)


def test_runtime_failure_inside_a_branch_names_the_inner_node():
    model = _runtime_if_model()
    gm = _fx(model)
    gm.get_submodule("the_if").then_branch.then_mm.forward = lambda *a: 1 / 0  # a converted op failing
    x = np.ones((1, F), np.float32)
    with pytest.raises(ZeroDivisionError):
        _outputs(gm, x)
    assert (
        failing_node(gm, [torch.from_numpy(x)])
        == "node 'then_mm' (MatMul) in the then_branch of node 'the_if' (If)"
    )


# --- torch exports with data-dependent control flow ---------------------------------------------------
class _ScriptedLoop(torch.nn.Module):
    """A recurrence over the feature axis with a data-dependent branch: the legacy exporter writes a
    Loop (trip count from the input's shape) holding an If."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(F, F)

    def forward(self, x):
        h = torch.zeros_like(x)
        for _ in range(x.shape[1]):
            h = torch.tanh(self.lin(h) + x)
            if bool(h.sum() > 0):
                h = h * 2
            else:
                h = h - 1
        return h


class _Cond(torch.nn.Module):
    """``torch.cond`` on the input: the dynamo exporter writes an If."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(F, 3)

    def forward(self, x):
        return torch.cond(x.sum() > 0, lambda v: torch.tanh(self.lin(v)), lambda v: self.lin(v * v), (x,))


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_torch_export_with_control_flow(exporter, tmp_path):
    net = _ScriptedLoop() if exporter == "legacy" else _Cond()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script is deprecated, and the legacy exporter needs it
        source = torch.jit.script(net) if exporter == "legacy" else net
    path = export(source, torch.randn(1, F), tmp_path / "m.onnx", exporter)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert ops & {"Loop", "If"}, ops
    for sign in (1.0, -1.0):  # both branches
        x = (np.abs(RNG.standard_normal((1, F))) * sign).astype(np.float32)
        m = oe.load(path)
        mod = m.torch_module()
        with torch.no_grad():
            np.testing.assert_allclose(mod(torch.from_numpy(x)).numpy(), m.predict(x), rtol=1e-5, atol=1e-6)
        target = int(np.argmax(m.predict(x)[0]))
        e = oe.explain(m, x, "gradient", target=target)
        xt = torch.from_numpy(x).requires_grad_(True)
        net(xt)[0, target].backward()
        assert_gradients_match(e.attribution, xt.grad.numpy())


# --- a streaming model: state inputs and outputs, an If on the sample rate -----------------------------
T_IN, H = 8, 5
_S = np.random.default_rng(1)
W16 = _S.standard_normal((T_IN, H)).astype(np.float32)
W8 = _S.standard_normal((T_IN // 2, H)).astype(np.float32)
R = (_S.standard_normal((H, H)) / 2).astype(np.float32)
V = _S.standard_normal((H, 1)).astype(np.float32)


def _streaming_model() -> onnx.ModelProto:
    """prob, state_out = f(x, state, sr): 16 kHz frames use all samples, 8 kHz ones the first half (as
    voice-activity models switch on the sample rate)."""
    then = _branch(
        "at16k", [helper.make_node("MatMul", ["x", "W16"], ["f16"], name="feat16")], "f16", ("B", H)
    )
    other = _branch(
        "at8k",
        [
            helper.make_node("Slice", ["x", "s0", "s1", "ax"], ["xh"], name="first_half"),
            helper.make_node("MatMul", ["xh", "W8"], ["f8"], name="feat8"),
        ],
        "f8",
        ("B", H),
    )
    nodes = [
        helper.make_node("Equal", ["sr", "k16"], ["is16"], name="is16k"),
        helper.make_node("If", ["is16"], ["feat"], then_branch=then, else_branch=other, name="rate_if"),
        helper.make_node("MatMul", ["state", "R"], ["rec"], name="recurrent"),
        helper.make_node("Add", ["feat", "rec"], ["pre"], name="pre"),
        helper.make_node("Tanh", ["pre"], ["state_out"], name="new_state"),
        helper.make_node("MatMul", ["state_out", "V"], ["logit"], name="head"),
        helper.make_node("Sigmoid", ["logit"], ["prob"], name="prob"),
    ]
    inits = [
        _init("W16", W16), _init("W8", W8), _init("R", R), _init("V", V), _init("k16", np.int64(16000)),
        _init("s0", np.array([0], np.int64)), _init("s1", np.array([T_IN // 2], np.int64)),
        _init("ax", np.array([1], np.int64)),
    ]  # fmt: skip
    inputs = [vinfo("x", ["B", T_IN]), vinfo("state", ["B", H]), vinfo("sr", [], TensorProto.INT64)]
    return make_model(nodes, inputs, [vinfo("prob", None), vinfo("state_out", None)], inits)


@pytest.mark.parametrize("sr", [16000, 8000])
def test_streaming_model_explained_with_state_fixed(sr, tmp_path):
    path = tmp_path / "stream.onnx"
    onnx.save(_streaming_model(), str(path))
    state = _S.standard_normal((1, H)).astype(np.float32)
    fixed = {"state": state, "sr": np.array(sr, np.int64)}
    m = oe.load(path, input="x", output="prob", fixed_inputs=fixed)
    x = _S.standard_normal((3, T_IN)).astype(np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(
            m.torch_module()(torch.from_numpy(x)).numpy(), m.predict(x), rtol=1e-5, atol=1e-6
        )
    branch = "then_branch" if sr == 16000 else "else_branch"
    assert m.torch_module().graph.onnx_folded == [("rate_if", "If", branch)]
    assert f"If node 'rate_if' folded to its {branch} (condition known at load time)" in m.parity.notes
    e = oe.explain(m, x, "gradient", target=0, output="output")  # the probability itself
    xt = torch.from_numpy(x).requires_grad_(True)
    feat = xt @ torch.from_numpy(W16) if sr == 16000 else xt[:, : T_IN // 2] @ torch.from_numpy(W8)
    logit = torch.tanh(feat + torch.from_numpy(state) @ torch.from_numpy(R)) @ torch.from_numpy(V)
    torch.sigmoid(logit).sum().backward(retain_graph=True)
    np.testing.assert_allclose(e.attribution, xt.grad.numpy(), rtol=1e-5, atol=1e-6)
    xt.grad = None  # by default the logit before the final Sigmoid, as before a final Softmax
    logit.sum().backward()
    np.testing.assert_allclose(oe.explain(m, x, "gradient", target=0).attribution, xt.grad.numpy(), rtol=1e-5,
                               atol=1e-6)  # fmt: skip
    if sr != 16000:  # the 8 kHz branch reads only the first half of the frame
        assert not e.attribution[:, T_IN // 2 :].any()
    # the state output is explainable too (state fixed, one hidden unit as the target)
    m2 = oe.load(path, input="x", output="state_out", fixed_inputs=fixed)
    e2 = oe.explain(m2, x, "gradient", target=2)
    xt.grad = None
    feat = xt @ torch.from_numpy(W16) if sr == 16000 else xt[:, : T_IN // 2] @ torch.from_numpy(W8)
    torch.tanh(feat + torch.from_numpy(state) @ torch.from_numpy(R))[:, 2].sum().backward()
    np.testing.assert_allclose(e2.attribution, xt.grad.numpy(), rtol=1e-5, atol=1e-6)
