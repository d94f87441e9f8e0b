"""The parity gate certifies what the user explains: the user's own data (its shapes and values), once per
input shape; a synthetic probe that cannot certify means "not certified yet", never "conversion failed";
dims and inputs as real exporters write them (issue 22 §1-§2)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import make_model, save, vinfo
from onnx import TensorProto, helper, numpy_helper

import onnx_explain as oe
from onnx_explain.cli import main


def _shift_model(tmp_path, shift: float = 1000.0):
    """relu(x - shift) @ w: zero on every synthetic probe (normal and 0..255 rows), not on real data."""
    c = numpy_helper.from_array(np.array(shift, np.float32), "c")
    w = numpy_helper.from_array(np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3), "w")
    nodes = [helper.make_node("Sub", ["x", "c"], ["s"]), helper.make_node("Relu", ["s"], ["r"]),
             helper.make_node("MatMul", ["r", "w"], ["y"])]  # fmt: skip
    return save(make_model(nodes, [vinfo("x", ["N", 4])], [vinfo("y", ["N", 3])], [c, w], opset=17),
                tmp_path / "shift.onnx")  # fmt: skip


def test_explain_certifies_on_the_users_batch_where_a_synthetic_probe_cannot(tmp_path):
    path = _shift_model(tmp_path)
    x = (1000 + np.random.default_rng(0).uniform(0, 5, (6, 4))).astype(np.float32)
    e = oe.explain(oe.load(path), x, "gradient", target=1)
    # the gradient of relu(x - c) @ w for class 1, where every x > c: w[:, 1]
    want = np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3)[:, 1]
    np.testing.assert_allclose(e.attribution, np.broadcast_to(want, x.shape), rtol=1e-6)
    assert "given probe of 4" in e.extras["parity"] and "x [4, 4]" in e.extras["parity"]


def test_info_says_not_certified_yet_and_explain_certifies_on_the_data(tmp_path):
    path = _shift_model(tmp_path)
    r = CliRunner().invoke(main, ["info", str(path)])
    assert r.exit_code == 0, r.output
    assert "not certified yet" in r.output and "FAILED" not in r.output
    d = json.loads(CliRunner().invoke(main, ["info", str(path), "--json"]).output)
    assert d["conversion"]["ok"] and not d["conversion"]["certified"]

    good = tmp_path / "good.npy"
    np.save(good, (1000 + np.random.default_rng(1).uniform(0, 5, (3, 4))).astype(np.float32))
    d = json.loads(CliRunner().invoke(main, ["info", str(path), "--json", "--probe", str(good)]).output)
    assert d["conversion"]["certified"] and d["conversion"]["parity"]["probe"] == "given"
    assert d["conversion"]["parity"]["shapes"] == {"x": [3, 4]}

    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["explain", str(path), str(good), "-m", "gradient", "-t", "1", "--out", str(out),
                                  "--heatmaps", "none"])  # fmt: skip
    assert r.exit_code == 0, r.output
    with np.load(out / "good_000.npz") as z:
        assert str(z["parity"]).endswith("(given + 2 rows near it probe of 3, x [3, 4])")  # the first item


def test_data_that_cannot_certify_is_refused_before_anything_is_written(tmp_path):
    path = _shift_model(tmp_path)
    low = tmp_path / "low.npy"
    np.save(low, np.random.default_rng(1).uniform(0, 5, (3, 4)).astype(np.float32))  # all below the shift
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["explain", str(path), str(low), "-m", "gradient", "--out", str(out)])
    assert r.exit_code == 2 and "cannot certify" in r.output and "all zero" in r.output
    assert not out.exists()


def test_each_new_input_shape_is_certified_once(tmp_path):
    w = numpy_helper.from_array(np.ones((1, 1, 3, 3), np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("GlobalAveragePool", ["c"], ["p"]),
             helper.make_node("Flatten", ["p"], ["y"])]  # fmt: skip
    path = save(make_model(nodes, [vinfo("x", ["N", 1, "H", "W"])], [vinfo("y", ["N", 1])], [w], opset=17),
                tmp_path / "conv.onnx")  # fmt: skip
    m = oe.load(path)
    rng = np.random.default_rng(0)
    for hw in (8, 8, 11):
        oe.explain(m, rng.standard_normal((2, 1, hw, hw)).astype(np.float32), "gradient")
        assert m.parity.shapes == {"x": [2, 1, hw, hw]} and m.parity.probe == "given"
    assert len(m._certified) == 2  # 8x8 once, 11x11 once
    module = m.torch_module()
    assert module is m.torch_module(
        probe=rng.standard_normal((3, 1, 5, 5)).astype(np.float32)
    )  # converted once


def test_one_row_is_certified_with_rows_near_it(tmp_path):
    path = _shift_model(tmp_path)
    m = oe.load(path)
    x = (1000 + np.random.default_rng(0).uniform(1, 5, (1, 4))).astype(np.float32)
    m.torch_module(probe=x)
    assert m.parity.probe == "given + 2 rows near it" and m.parity.batch == 3 and m.parity.spread > 0


def test_synthetic_probe_grows_unknown_dims_until_onnxruntime_runs(tmp_path):
    # a 40x40 kernel without padding: a 32x32 probe is too small for onnxruntime, 64 runs
    w = numpy_helper.from_array(
        np.random.default_rng(0).standard_normal((2, 1, 40, 40)).astype(np.float32), "w"
    )
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("ReduceMean", ["c"], ["y"],
             keepdims=0, axes=[2, 3])]  # fmt: skip
    path = save(make_model(nodes, [vinfo("x", ["N", 1, "?", "?"])], [vinfo("y", ["N", 2])], [w], opset=17),
                tmp_path / "big_kernel.onnx")  # fmt: skip
    m = oe.load(path)
    assert m.input.shape == ("N", 1, None, None)  # '?' names no dimension
    m.torch_module()
    assert m.parity.passed and m.parity.shapes["x"] == [2, 1, 64, 64]
    assert any("unknown dims set to 64" in n for n in m.parity.notes)


def test_question_mark_dims_are_independent_and_fixed_inputs_pin_shared_dims(tmp_path):
    nodes = [helper.make_node("ReduceSum", ["a", "ax"], ["sa"], keepdims=0),
             helper.make_node("ReduceSum", ["b", "ax"], ["sb"], keepdims=0),
             helper.make_node("Add", ["sa", "sb"], ["y0"]), helper.make_node("Unsqueeze", ["y0", "ax"], ["y"])]  # fmt: skip
    ax = numpy_helper.from_array(np.array([1], np.int64), "ax")
    model = make_model(nodes, [vinfo("a", ["N", "?"]), vinfo("b", ["N", "?"])], [vinfo("y", ["N", 1])], [ax],
                       opset=17)  # fmt: skip
    path = save(model, tmp_path / "q.onnx")
    m = oe.load(path, input="a")
    x = {"a": np.ones((2, 5), np.float32), "b": np.ones((2, 7), np.float32)}  # 5 and 7: both '?'
    np.testing.assert_allclose(m.predict(x)[:, 0], [12, 12])

    mask = helper.make_node("Cast", ["mask"], ["mf"], to=TensorProto.FLOAT)
    mul = helper.make_node("Mul", ["ids_f", "mf"], ["p"])
    cast = helper.make_node("Cast", ["x"], ["ids_f"], to=TensorProto.FLOAT)
    red = helper.make_node("ReduceSum", ["p", "ax"], ["y"], keepdims=1)
    model = make_model([cast, mask, mul, red], [vinfo("x", ["B", "seq"]), vinfo("mask", ["B", "seq"], TensorProto.INT64)],
                       [vinfo("y", ["B", 1])], [ax], opset=17)  # fmt: skip
    m = oe.load(
        save(model, tmp_path / "pinned.onnx"), input="x", fixed_inputs={"mask": np.ones((1, 12), np.int64)}
    )
    assert m.signature.pinned_dims() == {"B": 1, "seq": 12}
    assert m.signature.probe_shape(2) == [2, 12]


def test_fixed_scalar_input_from_the_command_line(tmp_path):
    # y = x * sr: a scalar companion (shape ()) given as --fixed sr=16000, read in the input's dtype
    nodes = [helper.make_node("Cast", ["sr"], ["srf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["x", "srf"], ["y"])]  # fmt: skip
    model = make_model(nodes, [vinfo("x", ["N", 3]), vinfo("sr", [], TensorProto.INT64)], [vinfo("y", ["N", 3])],
                       opset=17)  # fmt: skip
    path = save(model, tmp_path / "sr.onnx")
    x = tmp_path / "x.npy"
    np.save(x, np.arange(6, dtype=np.float32).reshape(2, 3))
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["explain", str(path), str(x), "--input-name", "x", "--fixed", "sr=16000",
                                  "-m", "gradient", "-t", "2", "--out", str(out), "--heatmaps", "none"])  # fmt: skip
    assert r.exit_code == 0, r.output
    with np.load(out / "x_000.npz") as z:
        np.testing.assert_array_equal(z["attribution"], [0, 0, 16000])
        assert float(z["score"]) == 2 * 16000
    r = CliRunner().invoke(main, ["explain", str(path), str(x), "--input-name", "x", "--fixed", "sr=fast",
                                  "-m", "gradient", "--out", str(out)])  # fmt: skip
    assert r.exit_code == 2 and "--fixed sr: 'fast' is neither" in r.output


def test_torch_module_reuses_its_conversion_across_probes(tmp_path):
    path = _shift_model(tmp_path)
    m = oe.load(path)
    a = m.torch_module(probe=np.full((2, 4), 1003, np.float32) + np.eye(2, 4, dtype=np.float32))
    b = m.torch_module(probe=np.full((3, 4), 1010, np.float32) + np.eye(3, 4, dtype=np.float32))
    assert a is b
    with torch.no_grad():
        np.testing.assert_allclose(a(torch.full((1, 4), 1001.0)).numpy(), m.predict(np.full((1, 4), 1001, np.float32)),
                                   rtol=1e-6)  # fmt: skip


def test_probe_npz_names_companions(tmp_path):
    nodes = [helper.make_node("Mul", ["x", "g"], ["y"])]
    model = make_model(nodes, [vinfo("x", ["N", 3]), vinfo("g", ["N", 3])], [vinfo("y", ["N", 3])], opset=17)
    path = save(model, tmp_path / "mul.onnx")
    probe = tmp_path / "probe.npz"
    np.savez(probe, x=np.ones((2, 3), np.float32), g=np.arange(6, dtype=np.float32).reshape(2, 3))
    r = CliRunner().invoke(main, ["info", str(path), "--input-name", "x", "--probe", str(probe), "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["conversion"]["parity"]["shapes"] == {"x": [2, 3], "g": [2, 3]}
    bad = tmp_path / "bad.npz"
    np.savez(bad, a=np.ones((2, 3), np.float32), b=np.ones((2, 3), np.float32))
    r = CliRunner().invoke(main, ["info", str(path), "--input-name", "x", "--probe", str(bad)])
    assert r.exit_code == 2 and "name its arrays after the model's inputs" in r.output


@pytest.mark.parametrize("dim", ["?", "-1"])
def test_unnamed_dim_params(dim, tmp_path):
    model = make_model([helper.make_node("Identity", ["x"], ["y"])], [vinfo("x", ["N", dim])],
                       [vinfo("y", ["N", dim])], opset=17)  # fmt: skip
    assert oe.load(save(model, tmp_path / "i.onnx")).input.shape == ("N", None)


@pytest.mark.parametrize("named", [True, False])
def test_time_major_output_is_explained_like_its_batch_first_twin(named, tmp_path):
    # a CTC-style head: (N, T, F) -> Transpose -> MatMul -> (T, N, C); the twin keeps (N, T, C)
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 5)).astype(np.float32), "w")
    out_shape = ["T", "N", 5] if named else [None, None, 5]
    tm = make_model([helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0, 2]),
                     helper.make_node("MatMul", ["t", "w"], ["y"])],
                    [vinfo("x", ["N", "T", 4])], [vinfo("y", out_shape)], [w], opset=17)  # fmt: skip
    bf = make_model([helper.make_node("MatMul", ["x", "w"], ["y"])], [vinfo("x", ["N", "T", 4])],
                    [vinfo("y", ["N", "T", 5])], [w], opset=17)  # fmt: skip
    x = (
        np.random.default_rng(1).standard_normal((3, 3, 4)).astype(np.float32)
    )  # T == N: sizes alone are ambiguous
    a, b = oe.load(save(tm, tmp_path / "tm.onnx")), oe.load(save(bf, tmp_path / "bf.onnx"))
    np.testing.assert_allclose(a.predict(x), b.predict(x), rtol=1e-6)
    ea = oe.explain(a, x, "gradient_x_input", target=(1, "predicted"))
    eb = oe.explain(b, x, "gradient_x_input", target=(1, "predicted"))
    np.testing.assert_array_equal(ea.target, eb.target)
    np.testing.assert_allclose(ea.attribution, eb.attribution, rtol=1e-6, atol=1e-7)
    assert a.runtime.out_axes == {"y": 1}


def test_explain_picks_the_first_float_output_as_info_does(tmp_path):
    w = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3) / 10, "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["scores"]), helper.make_node("Relu", ["x"], ["feat"])]
    model = make_model(nodes, [vinfo("x", ["N", 4])], [vinfo("scores", ["N", 3]), vinfo("feat", ["N", 4])], [w],
                       opset=17)  # fmt: skip
    path = save(model, tmp_path / "two_heads.onnx")
    x = tmp_path / "x.npy"
    np.save(x, np.ones((2, 4), np.float32))
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["explain", str(path), str(x), "-m", "gradient", "-t", "2", "--out", str(out),
                                  "--heatmaps", "none"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "explaining 'scores' (--output-name to choose)" in r.output
    with np.load(out / "x_000.npz") as z:
        np.testing.assert_allclose(z["attribution"], np.arange(12, dtype=np.float32).reshape(4, 3)[:, 2] / 10)


def _qdq_model(tmp_path):
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32), "w")
    s = numpy_helper.from_array(np.array(0.05, np.float32), "s")
    z = numpy_helper.from_array(np.array(0, np.int8), "z")
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"]),
             helper.make_node("MatMul", ["d", "w"], ["y"])]  # fmt: skip
    return save(make_model(nodes, [vinfo("x", ["N", 4])], [vinfo("y", ["N", 3])], [w, s, z], opset=17),
                tmp_path / "qdq.onnx")  # fmt: skip


@pytest.mark.parametrize("steps, passes", [(0.0, True), (1.0, True), (3.5, True), (10.0, False)])
def test_quantized_graphs_are_gated_in_steps_of_their_output_grid(steps, passes, tmp_path, monkeypatch):
    from onnx2torch.node_converters.matmul import OnnxMatMul

    x = np.random.default_rng(1).uniform(-3, 3, (4, 4)).astype(np.float32)
    ref = oe.load(_qdq_model(tmp_path)).predict(x)
    step = float(np.ptp(ref)) / 255
    forward = OnnxMatMul.forward

    def flipped(self, a, b):  # a requantization flip upstream: one output element off by `steps` steps
        out = forward(self, a, b)
        bump = torch.zeros_like(out)
        bump.view(-1)[0] = steps * step
        return out + bump

    monkeypatch.setattr(OnnxMatMul, "forward", flipped)
    m = oe.load(_qdq_model(tmp_path))
    if passes:
        m.torch_module(probe=x)
        assert m.parity.quant_steps == pytest.approx(steps, abs=0.01)
        assert any("steps of the output's 8-bit grid" in n for n in m.parity.notes)
    else:
        with pytest.raises(
            oe.ParityError, match=r"10 steps of the output's 8-bit grid .*allowed for a quantized graph: 4"
        ):
            m.torch_module(probe=x)


def test_auto_certifies_on_the_first_item_and_falls_back_when_the_data_cannot_certify(tmp_path):
    path = _shift_model(tmp_path)
    good, low = tmp_path / "good.npy", tmp_path / "low.npy"
    np.save(good, (1000 + np.random.default_rng(1).uniform(0, 5, (2, 4))).astype(np.float32))
    np.save(low, np.random.default_rng(1).uniform(0, 5, (2, 4)).astype(np.float32))
    r = CliRunner().invoke(main, ["explain", str(path), str(good), "-m", "auto", "--out", str(tmp_path / "a"),
                                  "--heatmaps", "none"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "method auto: smoothgrad (the graph converts to torch with parity on the data" in r.output
    r = CliRunner().invoke(main, ["explain", str(path), str(low), "-m", "auto", "--out", str(tmp_path / "b"),
                                  "--heatmaps", "none"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "the graph is not certified on the data" in r.output and "runs on onnxruntime alone" in r.output
    assert len(list((tmp_path / "b").glob("*.npz"))) == 2
