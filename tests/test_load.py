"""Loading and validation: the description of a model, and one clear error for each kind of bad input."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from conftest import ROOT, make_model, save, vinfo
from onnx import TensorProto, helper, numpy_helper

import onnx_explain as oe
from onnx_explain.errors import InputDataError, InputSpecError, ModelLoadError, ParityError

DIGITS = ROOT / "models" / "digits.onnx"


def _linear(n_in=4, n_out=3, seed=0):
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.standard_normal((n_in, n_out)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(n_out).astype(np.float32), "b")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["y"])]
    return make_model(nodes, [vinfo("x", ["N", n_in])], [vinfo("y", None)], [w, b], opset=17)


def test_describe_reports_ir_opsets_producer_and_symbolic_dims():
    m = oe.load(DIGITS)
    d = m.describe()
    assert d["ir_version"] == onnx.load(DIGITS).ir_version
    assert d["opsets"] == {"ai.onnx": 17}
    assert d["producer"].startswith("pytorch")
    assert d["inputs"] == [
        {"name": "image", "kind": "tensor", "dtype": "float32", "shape": ["batch", 1, 32, 32]}
    ]
    assert d["outputs"][0]["name"] == "logits" and d["outputs"][0]["shape"] == ["batch", 10]
    assert d["ops"]["Conv"] == 3 and d["ops"]["Gemm"] == 2
    assert d["parameters"] == sum(int(np.prod(t.dims)) for t in onnx.load(DIGITS).graph.initializer)
    json.dumps(d)  # plain data


def test_missing_file(tmp_path):
    with pytest.raises(ModelLoadError, match="file not found"):
        oe.load(tmp_path / "nope.onnx")


def test_not_an_onnx_file(tmp_path):
    p = tmp_path / "notes.onnx"
    p.write_text("this is a text file, not a model\n" * 20)
    with pytest.raises(ModelLoadError, match="not an ONNX"):
        oe.load(p)


def test_truncated_file(tmp_path):
    data = DIGITS.read_bytes()
    p = tmp_path / "cut.onnx"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="truncated|not an ONNX") as exc:
        oe.load(p)
    assert "\n" not in str(exc.value)


def test_invalid_graph_is_refused_by_the_checker(tmp_path):
    model = _linear()
    model.graph.node[1].input[1] = "nothing_makes_this"
    p = save(model, tmp_path / "bad.onnx")
    with pytest.raises(ModelLoadError, match="invalid ONNX graph"):
        oe.load(p)


def _with_external(tmp_path, location):
    model = _linear(n_in=64, n_out=32)
    onnx.save(
        model, tmp_path / "m.onnx", save_as_external_data=True, location="m.onnx.data", size_threshold=0
    )
    m = onnx.load(tmp_path / "m.onnx", load_external_data=False)
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = location
    onnx.save(m, tmp_path / "evil.onnx")
    return tmp_path / "evil.onnx"


@pytest.mark.parametrize("location", ["/etc/passwd", "../m.onnx.data", "sub/../../m.onnx.data"])
def test_external_data_outside_the_folder_is_refused(tmp_path, location):
    (tmp_path / "sub").mkdir()
    with pytest.raises(ModelLoadError, match="outside the model's folder|leaves the model's folder"):
        oe.load(
            _with_external(tmp_path / "sub", location)
            if location.startswith("..")
            else _with_external(tmp_path, location)
        )


def test_missing_external_data_file(tmp_path):
    with pytest.raises(ModelLoadError, match="missing"):
        oe.load(_with_external(tmp_path, "gone.data"))


def test_external_data_model_loads_predicts_and_converts(tmp_path):
    model = _linear(n_in=64, n_out=32)
    w = numpy_helper.to_array(model.graph.initializer[0])
    b = numpy_helper.to_array(model.graph.initializer[1])
    onnx.save(
        model, tmp_path / "m.onnx", save_as_external_data=True, location="m.onnx.data", size_threshold=0
    )
    m = oe.load(tmp_path / "m.onnx")
    x = np.random.default_rng(0).standard_normal((5, 64)).astype(np.float32)
    np.testing.assert_allclose(m.predict(x), x @ w + b, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        np.testing.assert_allclose(
            m.torch_module()(torch.from_numpy(x)).numpy(), x @ w + b, rtol=1e-5, atol=1e-5
        )


def test_big_model_path_never_serialises_the_model(tmp_path, monkeypatch):
    # Over 2 GB a ModelProto cannot be serialised: lower the threshold so this model takes that path,
    # and make serialisation of the in-memory model fail loudly if anything tries it.
    import onnx_explain.model as model_mod

    model = _linear(n_in=64, n_out=32)
    onnx.save(
        model, tmp_path / "m.onnx", save_as_external_data=True, location="m.onnx.data", size_threshold=0
    )
    monkeypatch.setattr(model_mod, "_TWO_GB", 100)
    m = oe.load(tmp_path / "m.onnx")
    monkeypatch.setattr(
        onnx.ModelProto, "SerializeToString", lambda self: (_ for _ in ()).throw(AssertionError)
    )
    x = np.ones((2, 64), np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(m.torch_module()(torch.from_numpy(x)).numpy(), m.predict(x), rtol=1e-5)


def test_several_inputs_need_a_choice(tmp_path):
    nodes = [helper.make_node("Add", ["a", "b"], ["y"])]
    model = make_model(nodes, [vinfo("a", ["N", 3]), vinfo("b", ["N", 3])], [vinfo("y", None)])
    p = save(model, tmp_path / "two.onnx")
    with pytest.raises(InputSpecError, match="several inputs \\(a, b\\)"):
        oe.load(p)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    free = oe.load(p, input="a")  # b is then given per sample, with the inputs
    assert [c.name for c in free.companions] == ["b"]
    with pytest.raises(InputDataError, match="input 'b' needs a value per sample: pass a dict"):
        free.predict(x)
    b = np.array([[1.0, 2.0, 3.0], [-1.0, 0.5, 4.0]], np.float32)
    np.testing.assert_array_equal(free.predict({"a": x, "b": b}), x + b)
    m = oe.load(p, input="a", fixed_inputs={"b": np.full((1, 3), 2.0, np.float32)})
    np.testing.assert_array_equal(m.predict(x), x + 2)
    np.testing.assert_array_equal(m.predict({"a": x, "b": b}), x + b)  # a per-sample value wins
    with torch.no_grad():
        np.testing.assert_array_equal(m.torch_module()(torch.from_numpy(x)).numpy(), x + 2)
        got = free.torch_module()(torch.from_numpy(x), {"b": torch.from_numpy(b)}).numpy()
    np.testing.assert_array_equal(got, x + b)


def test_unsupported_input_dtype(tmp_path):
    nodes = [helper.make_node("Cast", ["s"], ["y"], to=TensorProto.FLOAT)]
    model = make_model(nodes, [vinfo("s", ["N", 3], TensorProto.BOOL)], [vinfo("y", None)])
    with pytest.raises(InputSpecError, match="unsupported type tensor bool"):
        oe.load(save(model, tmp_path / "b.onnx"))


def test_output_that_cannot_be_chosen(tmp_path):
    nodes = [helper.make_node("ArgMax", ["x"], ["y"], axis=1)]
    model = make_model(nodes, [vinfo("x", ["N", 3])], [vinfo("y", ["N", 1], TensorProto.INT64)])
    with pytest.raises(InputSpecError, match="no float tensor output"):
        oe.load(save(model, tmp_path / "argmax.onnx"))


def test_several_float_outputs_need_a_choice(tmp_path):
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Neg", ["x"], ["n"])]
    model = make_model(nodes, [vinfo("x", ["N", 3])], [vinfo("r", None), vinfo("n", None)])
    p = save(model, tmp_path / "two_out.onnx")
    with pytest.raises(InputSpecError, match="several float outputs \\(r, n\\)"):
        oe.load(p)
    m = oe.load(p, output="n")
    x = np.array([[1.0, -2.0, 3.0]], np.float32)
    np.testing.assert_array_equal(m.predict(x), -x)
    with torch.no_grad():
        np.testing.assert_array_equal(m.torch_module()(torch.from_numpy(x)).numpy(), -x)
    with pytest.raises(InputSpecError, match="no tensor output named 'zz'"):
        oe.load(p, output="zz")


@pytest.mark.parametrize(
    ("x", "match"),
    [
        (np.zeros((2, 1, 32), np.float32), "rank 4"),
        (np.zeros((2, 1, 32, 31), np.float32), "axis 3 must be 32"),
        (np.zeros((2, 3, 32, 32), np.float32), "axis 1 must be 1"),
        (np.zeros((2, 1, 32, 32), np.int64), "expects float32 values, got a int64"),
        (np.zeros((0, 1, 32, 32), np.float32), "empty batch"),
    ],
)
def test_predict_rejects_wrong_shape_or_dtype(x, match):
    m = oe.load(DIGITS)
    with pytest.raises(InputDataError, match=match):
        m.predict(x)


def test_predict_accepts_float64_and_is_independent_of_batch_size():
    m = oe.load(DIGITS)
    x = np.load(ROOT / "models" / "samples" / "digits.npy")
    ref = m.predict(x, batch_size=8)
    for bs in (1, 3, 5):
        np.testing.assert_array_equal(m.predict(x, batch_size=bs), ref)
    np.testing.assert_allclose(m.predict(x.astype(np.float64)), ref, rtol=1e-6)


def test_parity_error_beyond_tolerance(tmp_path, monkeypatch):
    # A converter that is silently wrong (as onnx2torch's CumSum was) must be caught by the parity check.
    from onnx_explain.convert.ops import tensor

    model = make_model(
        [helper.make_node("CumSum", ["x", "axis"], ["y"])],
        [vinfo("x", ["N", 5])], [vinfo("y", None)], [numpy_helper.from_array(np.array(1, np.int64), "axis")], opset=14,
    )  # fmt: skip
    monkeypatch.setattr(
        tensor.OnnxCumSum, "forward", lambda self, x, axis: torch.flip(torch.cumsum(x, 1), (1,))
    )
    m = oe.load(save(model, tmp_path / "c.onnx"))
    with pytest.raises(ParityError, match="differs from onnxruntime on output 'y'"):
        m.torch_module()


def test_converted_module_is_in_eval_mode_and_keeps_onnx_node_names():
    from onnx_explain.convert import onnx_nodes

    mod = oe.load(DIGITS).torch_module()
    assert not mod.training and not mod.graph.training
    names = {v[0] for v in onnx_nodes(mod.graph).values()}
    assert names == {n.name for n in onnx.load(DIGITS).graph.node}


def test_no_converter_error_names_node_and_op(tmp_path):
    nodes = [helper.make_node("Det", ["x"], ["y"], name="the_det")]
    model = make_model(nodes, [vinfo("x", ["N", 3, 3])], [vinfo("y", ["N"])])
    m = oe.load(save(model, tmp_path / "det.onnx"))
    with pytest.raises(
        oe.ConversionError, match="node 'the_det' \\(Det\\) has no torch converter at opset 20"
    ):
        m.torch_module()
