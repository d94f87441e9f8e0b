"""Model = Signature + Runner + checked conversion, with no hidden mutation; the parity gate is relative and
refuses what it cannot certify."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import ROOT, export, make_model, save, vinfo
from onnx import helper, numpy_helper

import onnx_explain as oe
from onnx_explain.convert.checked import ParityReport, convert_checked
from onnx_explain.runtime import Runner
from onnx_explain.signature import Signature

DIGITS = ROOT / "models" / "digits.onnx"


class _FixedBatchNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.fc = torch.nn.Linear(4 * 6 * 6, 5)

    def forward(self, x):
        return self.fc(self.conv(x).reshape(x.shape[0], -1))  # the batch lands in a Reshape constant


def test_model_composes_its_parts():
    m = oe.load(DIGITS)
    assert isinstance(m.signature, Signature) and isinstance(m.runtime, Runner)
    assert m.input is m.signature.input and m.layout == "NCHW" and m.channel_axis == 1
    mod = m.torch_module()
    assert isinstance(m.parity, ParityReport) and m.parity.passed
    # the parts alone give the same module behaviour as the Model
    module, report = convert_checked(m.runtime.batch.graph, m.signature, m.runtime)
    x = m.probe_batch(3)
    with torch.no_grad():
        torch.testing.assert_close(module(torch.from_numpy(x)), mod(torch.from_numpy(x)))
    assert report.max_abs == m.parity.max_abs


def test_describe_does_not_change_after_a_run(tmp_path):
    # formerly: resolving the batch mode replaced the stored proto, so describe() changed after predict()
    path = export(_FixedBatchNet(), torch.randn(1, 3, 8, 8), tmp_path / "fixed.onnx", "legacy", dynamic=False)
    m = oe.load(path)
    before = m.describe()
    assert before["inputs"][0]["shape"] == [1, 3, 8, 8]
    x = np.random.default_rng(0).standard_normal((3, 3, 8, 8)).astype(np.float32)
    y = m.predict(x)
    assert m.batch_mode == "freed" and y.shape == (3, 5)
    assert m.describe() == before
    assert (
        m.input.shape == (1, 3, 8, 8) and m.proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    )
    assert any("made symbolic" in n for n in m.runtime.notes)
    m.torch_module()
    assert m.describe() == before


def test_another_device_is_another_object():
    # formerly: torch_module(device=...) moved the cached module in place, under every holder of it
    m = oe.load(DIGITS)
    cpu = m.torch_module()
    before = {k: v.clone() for k, v in cpu.state_dict().items()}
    other = m.torch_module(device="meta")  # a second device that exists on every machine
    assert other is not cpu
    assert all(v.device.type == "meta" for v in other.state_dict().values())
    assert all(v.device.type == "cpu" for v in cpu.state_dict().values())
    assert m.torch_module(device="meta") is other and m.torch_module() is cpu
    for k, v in cpu.state_dict().items():
        torch.testing.assert_close(v, before[k])
    if torch.cuda.is_available():  # the real case, where a GPU is lent
        gpu = m.torch_module(device="cuda")
        assert gpu is not cpu and next(cpu.parameters()).device.type == "cpu"


def test_lrp_cache_is_not_poisoned_by_another_device():
    m = oe.load(DIGITS)
    x = np.load(ROOT / "models" / "samples" / "digits.npy")[:2]
    first = oe.explain(m, x, "lrp")
    m.torch_module(device="meta")  # must not move what the LRP cache holds
    again = oe.explain(m, x, "lrp")
    np.testing.assert_array_equal(first.attribution, again.attribution)


def test_explicit_settings_are_checked_not_reused():
    m = oe.load(DIGITS)
    m.torch_module()
    x = np.load(ROOT / "models" / "samples" / "digits.npy")[:4]
    m.torch_module(probe=x)
    assert m.parity.probe == "given" and m.parity.batch == 4
    with pytest.raises(oe.ParityError):
        m.torch_module(probe=x, rtol=1e-12)  # a tolerance no float32 conversion meets is really applied


# --------------------------------------------------------------------------- the parity gate
def _tiny_mobilenet(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    net = torchvision.models.mobilenet_v3_small(weights=None).eval()
    return export(net, torch.randn(1, 3, 64, 64), tmp_path / "mnv3.onnx", "legacy")


def test_wrong_conversion_of_a_tiny_output_model_is_caught(tmp_path, monkeypatch):
    from onnx_explain.convert.checked import convert_graph

    path = _tiny_mobilenet(tmp_path)
    m = oe.load(path)
    m.torch_module()
    scale = m.parity.scale
    assert scale < 1e-6, "a freshly initialised MobileNetV3 has tiny outputs: the point of this test"
    assert m.parity.passed and m.parity.max_rel < 1e-4  # the right conversion passes the relative gate

    # deliberately wrong: every fully connected layer (the classifier) is 5 % too large
    right = torch.nn.Linear.forward
    monkeypatch.setattr(torch.nn.Linear, "forward", lambda self, x: right(self, x) * 1.05)
    m2 = oe.load(path)
    wrong, _, _ = convert_graph(m2.runtime.batch.graph, m2.signature, m2.output.name, None, m2.source)
    x = m2.probe_batch(2)
    ref = m2.predict(x)
    with torch.no_grad():
        diff = float(np.abs(wrong(torch.from_numpy(x)).numpy() - ref).max())
    assert diff > 0.01 * np.abs(ref).max()  # really wrong ...
    assert diff <= 1e-5 + 1e-4 * np.abs(ref).max()  # ... and the former absolute gate certified it
    with pytest.raises(oe.ParityError, match="of the output's scale"):
        m2.torch_module()


def _relu_shift_model(tmp_path, shift: float):
    c = numpy_helper.from_array(np.array(shift, np.float32), "c")
    w = numpy_helper.from_array(np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3), "w")
    nodes = [helper.make_node("Sub", ["x", "c"], ["s"]), helper.make_node("Relu", ["s"], ["r"]),
             helper.make_node("MatMul", ["r", "w"], ["y"])]  # fmt: skip
    return save(make_model(nodes, [vinfo("x", ["N", 4])], [vinfo("y", ["N", 3])], [c, w], opset=17),
                tmp_path / f"shift{shift:g}.onnx")  # fmt: skip


def test_all_zero_output_uses_a_second_probe(tmp_path):
    # relu(x - 10) is zero on standard-normal probes: they certify nothing; the range probe does
    m = oe.load(_relu_shift_model(tmp_path, 10.0))
    m.torch_module()
    assert m.parity.passed and m.parity.probe.startswith("range") and m.parity.scale > 0
    assert any("random probe: output is all zero" in n for n in m.parity.notes)


def test_output_zero_on_every_probe_is_not_certified(tmp_path):
    m = oe.load(_relu_shift_model(tmp_path, 1000.0))
    with pytest.raises(oe.ParityError, match="cannot certify .*all zero.*probe_range"):
        m.torch_module()
    m.torch_module(probe_range=(0.0, 2000.0))  # the input's real range certifies it
    assert m.parity.passed and m.parity.probe == "range [0, 2000]"


def test_gate_compares_the_error_with_the_spread_between_samples(tmp_path, monkeypatch):
    # outputs with a large common offset and small differences between samples: an error of 5 % of the
    # spread is far below 1e-4 of the scale, and still a wrong conversion
    off = numpy_helper.from_array(np.array(1e5, np.float32), "off")
    w = numpy_helper.from_array(np.full((4, 2), 0.25, np.float32), "w")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
        helper.make_node("Add", ["m", "off"], ["y"]),
    ]
    path = save(make_model(nodes, [vinfo("x", ["N", 4])], [vinfo("y", ["N", 2])], [off, w], opset=17),
                tmp_path / "offset.onnx")  # fmt: skip
    m = oe.load(path)
    m.torch_module()
    assert m.parity.passed
    from onnx2torch.node_converters.matmul import OnnxMatMul

    from onnx_explain.convert import fuse

    monkeypatch.setattr(fuse, "fold_linear", lambda gm, prefix="": 0)  # keep the MatMul the error goes into
    monkeypatch.setattr(OnnxMatMul, "forward", lambda self, a, b: torch.matmul(a, b) * 1.05)
    x = m.probe_batch(2)
    spread = np.ptp(m.predict(x), axis=0).max()
    with pytest.raises(oe.ParityError, match="spread between samples"):
        oe.load(path).torch_module()
    assert spread > 0


def test_info_and_audit_report_the_relative_errors(tmp_path):
    import json

    from click.testing import CliRunner

    from onnx_explain.cli import main

    res = CliRunner().invoke(main, ["info", str(DIGITS), "--json"])
    p = json.loads(res.output)["conversion"]["parity"]
    assert p["max_rel"] == pytest.approx(p["max_abs"] / p["scale"])
    assert p["rel_spread"] == pytest.approx(p["max_abs"] / p["spread"])
    text = CliRunner().invoke(main, ["info", str(DIGITS)]).output
    assert f"relative to the output {p['max_rel']:.3g}" in text
    assert f"to the spread between samples {p['rel_spread']:.3g}" in text
    out = tmp_path / "audit"
    res = CliRunner().invoke(
        main, ["audit", str(DIGITS), str(ROOT / "models" / "samples" / "digits.npy"), "--out", str(out),
               "--method", "gradient", "--metric", "deletion"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    conv = json.loads((out / "report.json").read_text())["conversion"]["parity"]
    html = (out / "report.html").read_text()
    assert f"relative to the output {conv['max_rel']:.3g}" in html
    assert f"to the spread between samples {conv['rel_spread']:.3g}" in html
