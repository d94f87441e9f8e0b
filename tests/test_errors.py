"""The error contract, through the command line: every path a user can take to a bad outcome ends in one
line on stderr naming what is wrong and where, a non-zero exit code, no traceback and nothing partial on
disk."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from conftest import ROOT, make_model, save, vinfo
from onnx import TensorProto, helper, numpy_helper

import onnx_explain as oe
from onnx_explain.cli import main

DIGITS = ROOT / "models" / "digits.onnx"


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_line(res, code: int, *needles: str) -> str:
    """Exit ``code``, exactly one line on stderr starting with 'error:', holding every needle."""
    assert res.exit_code == code, (res.exit_code, res.output, res.stderr)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in res.output
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def _digits_item_dir(tmp_path, method="gradient"):
    x = np.load(ROOT / "models" / "samples" / "digits.npy")[:3]
    np.save(tmp_path / "x.npy", x)
    res = run("explain", DIGITS, tmp_path / "x.npy", "-m", method, "--out", tmp_path / "att", "--quiet")
    assert res.exit_code == 0, res.output
    return tmp_path / "att"


# --------------------------------------------------------------------------- options
def test_bad_metric_option_value_is_one_line(tmp_path):
    att = _digits_item_dir(tmp_path)
    res = run("evaluate", DIGITS, "-a", att, "--metric", "pixel_flipping", "--option", "order=x",
              "--out", tmp_path / "s.json")  # fmt: skip
    assert_one_line(res, 2, "order", "'x'")
    assert not (tmp_path / "s.json").exists()


def test_unknown_metric_option_is_a_usage_error(tmp_path):
    att = _digits_item_dir(tmp_path)
    res = run("evaluate", DIGITS, "-a", att, "--metric", "pixel_flipping", "--option", "ordr=morf",
              "--out", tmp_path / "s.json")  # fmt: skip
    assert res.exit_code == 2
    assert "ordr" in res.stderr and "Traceback" not in res.output
    assert not (tmp_path / "s.json").exists()


def test_unknown_method_option_is_a_usage_error(tmp_path):
    x = np.load(ROOT / "models" / "samples" / "digits.npy")[:2]
    np.save(tmp_path / "x.npy", x)
    res = run("explain", DIGITS, tmp_path / "x.npy", "-m", "smoothgrad", "--option", "n_sample=3",
              "--out", tmp_path / "o")  # fmt: skip
    assert res.exit_code == 2
    assert "n_sample" in res.stderr and "Traceback" not in res.output
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- onnxruntime's own errors
def _reshape_model(tmp_path):
    sh = numpy_helper.from_array(np.array([3, 7], np.int64), "sh")
    nodes = [
        helper.make_node("Reshape", ["x", "sh"], ["r"], name="bad_reshape"),
        helper.make_node("Relu", ["r"], ["y"]),
    ]
    return save(make_model(nodes, [vinfo("x", ["N", 5])], [vinfo("y", [3, 7])], [sh], opset=17), tmp_path / "r.onnx")  # fmt: skip


def test_onnxruntime_run_error_names_file_and_node(tmp_path):
    path = _reshape_model(tmp_path)
    m = oe.load(path)
    with pytest.raises(
        oe.ModelRunError, match=r"r\.onnx: onnxruntime failed .* node 'bad_reshape' \(Reshape\)"
    ):
        m.predict(np.ones((2, 5), np.float32))
    line = assert_one_line(run("info", path), 2, str(path), "'bad_reshape' (Reshape)")
    assert "onnxruntime_src" not in line  # onnxruntime's source paths are not for users
    np.save(tmp_path / "x.npy", np.ones((2, 5), np.float32))
    res = run("explain", path, tmp_path / "x.npy", "-m", "gradient", "--out", tmp_path / "o")
    assert_one_line(res, 2, "bad_reshape")
    assert not (tmp_path / "o").exists()


def test_onnxruntime_session_error_is_wrapped(tmp_path):
    # a valid graph onnxruntime refuses to load: an op of a domain it does not implement
    nodes = [helper.make_node("Frobnicate", ["x"], ["y"], name="odd", domain="com.example")]
    model = make_model(nodes, [vinfo("x", ["N", 4])], [vinfo("y", ["N", 4])], extra_opsets={"com.example": 1})
    path = save(model, tmp_path / "odd.onnx")
    with pytest.raises(oe.ModelRunError, match=r"odd\.onnx: onnxruntime failed to load the model"):
        oe.load(path).predict(np.ones((2, 4), np.float32))
    assert_one_line(run("info", path), 2, str(path), "onnxruntime failed to load")


def test_impossible_allocation_is_one_line_in_info(tmp_path):
    shape = numpy_helper.from_array(np.array([2_000_000, 1_000_000], np.int64), "shape")  # 2e12 floats
    nodes = [
        helper.make_node("ConstantOfShape", ["shape"], ["c"], name="huge",
                         value=numpy_helper.from_array(np.array([1.0], np.float32))),
        helper.make_node("ReduceSum", ["c"], ["s"], keepdims=0),
        helper.make_node("Add", ["x", "s"], ["y"]),
    ]  # fmt: skip
    path = save(make_model(nodes, [vinfo("x", ["N", 4])], [vinfo("y", ["N", 4])], [shape], opset=17),
                tmp_path / "huge.onnx")  # fmt: skip
    assert run("info", path, "--no-convert").exit_code == 0  # describing it runs nothing
    assert_one_line(run("info", path), 2, str(path), "'huge' (ConstantOfShape)", "allocate")


# --------------------------------------------------------------------------- batch dims
@pytest.mark.parametrize("dim", [-1, 0])
def test_batch_declared_negative_or_zero_is_symbolic(tmp_path, dim):
    # PaddlePaddle declares a free batch as -1; neither -1 nor 0 is a batch size
    w = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [dim, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [dim, 3])], [w])  # fmt: skip
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = save(model, tmp_path / "paddle.onnx")
    m = oe.load(path)
    assert m.input.shape == ("batch", 4) and m.batch_mode == "dynamic"
    assert any("symbolic" in n for n in m.notes)
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    np.testing.assert_allclose(m.predict(x), x @ numpy_helper.to_array(w), rtol=1e-5)
    res = run("info", path, "--json")
    assert res.exit_code == 0, res.output
    d = json.loads(res.output)
    assert d["inputs"][0]["shape"] == ["batch", 4] and d["conversion"]["ok"] is True


# --------------------------------------------------------------------------- non-finite inputs
def test_nonfinite_inputs_are_refused_per_item(tmp_path):
    x = np.load(ROOT / "models" / "samples" / "digits.npy")[:4].copy()
    x[1, 0, 3, 3] = np.nan
    x[2, 0, 0, 0] = np.inf
    np.save(tmp_path / "x.npy", x)
    res = run("explain", DIGITS, tmp_path / "x.npy", "-m", "gradient", "--out", tmp_path / "o", "--quiet")
    assert res.exit_code == 1  # some items failed, the rest finished
    records = [json.loads(ln) for ln in (tmp_path / "o" / "manifest.jsonl").read_text().splitlines()]
    status = {r["item"]: r["status"] for r in records}
    assert sorted(status.values()) == ["error", "error", "ok", "ok"]
    errors = [r["error"] for r in records if r["status"] == "error"]
    assert all("NaN or infinite" in e for e in errors)
    assert len(list((tmp_path / "o").glob("*.npz"))) == 2
    m = oe.load(DIGITS)
    with pytest.raises(oe.InputDataError, match="sample 1 .*NaN or infinite"):
        m.predict(x)
    ok = oe.load(DIGITS, allow_nonfinite=True).predict(x)  # an explicit choice lets them through
    assert np.isnan(ok[1]).all() and np.isfinite(ok[0]).all()
    res = run("explain", DIGITS, tmp_path / "x.npy", "-m", "gradient", "--out", tmp_path / "o2", "--quiet",
              "--allow-nonfinite")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert len(list((tmp_path / "o2").glob("*.npz"))) == 4


# --------------------------------------------------------------------------- the last resort
def test_unexpected_exception_is_one_line_exit_3(monkeypatch):
    import onnx_explain.model as model_mod

    def boom(*a, **k):
        raise ZeroDivisionError("a defect")

    monkeypatch.setattr(model_mod, "load", boom)
    line = assert_one_line(run("info", DIGITS), 3, "internal error", "ZeroDivisionError", "please report")
    assert "--debug" in line
    res = run("--debug", "info", DIGITS)  # --debug lets the traceback through
    assert isinstance(res.exception, ZeroDivisionError)


def test_missing_and_corrupt_files_are_one_line(tmp_path):
    assert_one_line(run("info", tmp_path / "nope.onnx"), 2, "nope.onnx", "not found")
    (tmp_path / "bad.onnx").write_bytes(b"\x08\x07garbage" * 10)
    assert_one_line(run("info", tmp_path / "bad.onnx"), 2, "bad.onnx")


def test_no_traceback_from_a_real_process(tmp_path):
    # the installed entry point, not CliRunner: stderr is exactly one line
    path = _reshape_model(tmp_path)
    out = subprocess.run(
        [sys.executable, "-m", "onnx_explain", "info", str(path)], capture_output=True, text=True
    )
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "bad_reshape" in out.stderr, out.stderr


def test_model_errors_are_exported_and_share_one_base():
    for name in ("ExportError", "LRPCoverageError", "OptionError", "ModelRunError", "InputFileError"):
        cls = getattr(oe, name)
        assert issubclass(cls, oe.OnnxExplainError), name
    assert issubclass(oe.OptionError, ValueError)
    from onnx_explain.app.export import ExportError
    from onnx_explain.lrp import LRPCoverageError

    assert ExportError is oe.ExportError and LRPCoverageError is oe.LRPCoverageError


def test_onnx_load_of_wrong_type_is_clear():
    with pytest.raises(oe.ModelLoadError, match="path or an onnx.ModelProto"):
        oe.load(12)
    with pytest.raises(oe.DeviceError):
        oe.load(DIGITS, device="tpu")


def test_error_messages_are_one_line_for_multiline_sources(tmp_path):
    model = onnx.load(DIGITS)
    model.graph.node[0].input[0] = "dangling"
    onnx.save(model, tmp_path / "d.onnx")
    line = assert_one_line(run("info", tmp_path / "d.onnx"), 2, "d.onnx")
    assert "\n" not in line
