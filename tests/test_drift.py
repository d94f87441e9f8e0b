"""Drift between two versions of a model: agreement measures on known pairs, layout mapping (an NHWC build
of the same network), refusals, and the diff command's exit code 4 and reports."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import onnx_explain as oe
from onnx_explain.cli import main
from onnx_explain.drift import agreement, compare


def _net(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(), torch.nn.Linear(128, 10),
    ).eval()  # fmt: skip


class _NHWC(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x.permute(0, 3, 1, 2))


def _export(net, x, path):
    torch.onnx.export(net, (x,), str(path), dynamo=False, opset_version=17, input_names=["x"],
                      dynamic_axes={"x": {0: "b"}})  # fmt: skip
    return path


def test_agreement_measures():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 3, 12, 12))
    same = agreement(a, a.copy(), "NCHW")
    for k in ("spearman", "spearman_abs", "cosine", "iou@1", "iou@5", "iou@10", "ssim"):
        np.testing.assert_allclose(same[k], 1.0, atol=1e-12, err_msg=k)
    neg = agreement(a, -a, "NCHW")
    np.testing.assert_allclose(neg["spearman"], -1.0, atol=1e-12)
    np.testing.assert_allclose(neg["spearman_abs"], 1.0, atol=1e-12)
    np.testing.assert_allclose(neg["cosine"], -1.0, atol=1e-12)
    # top-10 % of 100 features: the 10 largest magnitudes; 5 shared of 15 distinct
    u = np.arange(100, dtype=float)[None]
    v = u.copy()
    v[0, 90:95] = 0.0  # five of u's top ten drop out, five new ones (85..89) come in
    np.testing.assert_allclose(agreement(u, v)["iou@10"], 5 / 15)


def test_compare_maps_an_nhwc_build(tmp_path):
    net = _net(0)
    x = torch.randn(4, 3, 16, 16)
    a = _export(net, x, tmp_path / "a.onnx")
    b = _export(_NHWC(net), x.permute(0, 2, 3, 1), tmp_path / "b.onnx")
    r = compare(a, b, x.numpy(), ["gradient"])
    assert r["prediction"]["top1"].all() and r["prediction"]["max_abs_diff"].max() < 1e-5
    np.testing.assert_allclose(r["methods"]["gradient"]["spearman"]["mean"], 1.0, atol=1e-6)
    np.testing.assert_allclose(r["methods"]["gradient"]["cosine"]["mean"], 1.0, atol=1e-6)
    other = _export(_net(0), torch.randn(1, 3, 8, 8), tmp_path / "small.onnx")
    torch.onnx.export(
        _net(0), (torch.randn(1, 3, 8, 8),), str(other), dynamo=False, opset_version=17, input_names=["x"]
    )  # a fixed 8x8 input
    with pytest.raises(oe.InputSpecError, match="inputs of different shapes"):
        compare(a, other, x.numpy(), ["gradient"])


def test_diff_command_passes_and_fails(tmp_path):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    x = torch.randn(6, 3, 16, 16)
    a = _export(_net(0), x, tmp_path / "a.onnx")
    q = tmp_path / "a_int8.onnx"
    quantize_dynamic(str(a), str(q), weight_type=QuantType.QInt8)  # the Linear layer in int8
    other = _export(_net(7), x, tmp_path / "other.onnx")
    np.save(tmp_path / "x.npy", x.numpy())
    r = CliRunner().invoke(main, ["diff", str(a), str(q), str(tmp_path / "x.npy"), "-o", str(tmp_path / "d1"),
                                  "--fail-under", "top1=0.8", "--fail-under", "spearman_abs=0.5"])  # fmt: skip
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "d1" / "report.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert rep["items"] == 6 and set(rep["methods"]["gradient"]) >= {"spearman", "iou@5", "ssim"}
    assert (tmp_path / "d1" / "report.html").read_text().count("<img") == 1
    r = CliRunner().invoke(main, ["diff", str(a), str(other), str(tmp_path / "x.npy"), "-o", str(tmp_path / "d2"),
                                  "--fail-under", "spearman_abs=0.9", "--fail-under", "max_abs_diff=1e-3"])  # fmt: skip
    assert r.exit_code == 4, r.output
    assert "fail: gradient: spearman_abs =" in r.output and "fail: max_abs_diff =" in r.output
    r = CliRunner().invoke(main, ["diff", str(a), str(q), str(tmp_path / "x.npy"), "-o", str(tmp_path / "d3"),
                                  "--fail-under", "nope=1"])  # fmt: skip
    assert r.exit_code == 2 and "--fail-under takes" in r.output


def test_itself_quantized_static_and_swapped_classes(tmp_path):
    """A model against itself agrees exactly; its quantize_static (QDQ, calibrated) twin keeps the
    predictions; the same network with its classes swapped (the last layer's rows reversed) agrees on no
    top-1 and fails the gate."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    net = _net(0)
    x = torch.randn(8, 3, 16, 16)
    a = _export(net, x, tmp_path / "a.onnx")
    same = compare(a, a, x.numpy(), ["gradient"])
    assert same["prediction"]["top1"].all() and same["prediction"]["max_abs_diff"].max() == 0
    for k in ("spearman", "spearman_abs", "cosine", "iou@1", "iou@5", "iou@10", "ssim"):
        assert same["methods"]["gradient"][k]["mean"] == pytest.approx(1.0, abs=1e-12), k

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.rows = iter([{"x": x.numpy()[i : i + 1]} for i in range(len(x))])

        def get_next(self):
            return next(self.rows, None)

    q = tmp_path / "a_qdq.onnx"
    quantize_static(str(a), str(q), Reader(), quant_format=QuantFormat.QDQ)
    rq = compare(a, q, x.numpy(), ["gradient"])
    assert rq["prediction"]["top1"].all() and 0 < rq["prediction"]["max_abs_diff"].max() < 0.05
    # int8 everywhere (straight-through gradients through the QDQ pairs): close, not equal
    assert 0.9 < rq["methods"]["gradient"]["spearman_abs"]["mean"] < 1.0

    swapped = _net(0)
    with torch.no_grad():
        swapped[-1].weight.copy_(swapped[-1].weight.flip(0))
        swapped[-1].bias.copy_(swapped[-1].bias.flip(0))
    s = _export(swapped, x, tmp_path / "swapped.onnx")
    np.save(tmp_path / "x.npy", x.numpy())
    r = CliRunner().invoke(main, ["diff", str(a), str(s), str(tmp_path / "x.npy"), "-o", str(tmp_path / "d"),
                                  "--fail-under", "top1=0.99"])  # fmt: skip
    assert r.exit_code == 4 and "fail: top1 = 0 is below 0.99" in r.output


def test_metric_per_version(tmp_path):
    """--metric scores each version with its own attributions: A, B and B − A equal evaluate() on each."""
    x = torch.randn(4, 3, 16, 16)
    a = _export(_net(0), x, tmp_path / "a.onnx")
    b = _export(_net(1), x, tmp_path / "b.onnx")
    r = compare(a, b, x.numpy(), ["gradient"], metrics=["deletion"])
    got = r["metrics"]["gradient"]["deletion"]
    ea = oe.explain(oe.load(a), x.numpy(), "gradient")
    eb = oe.explain(oe.load(b), x.numpy(), "gradient", target=ea.target)
    want_a = oe.evaluate(oe.load(a), x.numpy(), ea.attribution, "deletion", target=ea.target)["mean"]
    want_b = oe.evaluate(oe.load(b), x.numpy(), eb.attribution, "deletion", target=ea.target)["mean"]
    assert got["a"] == pytest.approx(want_a) and got["b"] == pytest.approx(want_b)
    assert got["delta"] == pytest.approx(want_b - want_a) and got["higher_is_better"] is False
    np.save(tmp_path / "x.npy", x.numpy())
    res = CliRunner().invoke(main, ["diff", str(a), str(b), str(tmp_path / "x.npy"), "-o", str(tmp_path / "d"),
                                    "--metric", "deletion"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert (
        "gradient deletion: a" in res.output
        and "Metrics per version" in (tmp_path / "d" / "report.html").read_text()
    )
    assert json.loads((tmp_path / "d" / "report.json").read_text())["metrics"]["gradient"]["deletion"][
        "a"
    ] == pytest.approx(want_a)
