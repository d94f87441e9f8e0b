"""The memory budget: rows per pass capped to what fits, measured on the graph; a job that cannot fit one
row is refused with one line before anything runs (issue 22 §8)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import make_model, save, vinfo
from onnx import helper, numpy_helper

import onnx_explain as oe
from onnx_explain.cli import main
from onnx_explain.memory import fit_rows, parse_size, row_bytes


def _conv_model(tmp_path):
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((16, 1, 3, 3)).astype(np.float32) * 0.3, "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((4, 16, 3, 3)).astype(np.float32) * 0.3, "w2")
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c1"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["c2"], ["p"]), helper.make_node("Flatten", ["p"], ["y"])]  # fmt: skip
    return save(make_model(nodes, [vinfo("x", ["N", 1, "H", "W"])], [vinfo("y", ["N", 4])], [w1, w2], opset=17),
                tmp_path / "conv.onnx")  # fmt: skip


def test_parse_size():
    assert parse_size("8G") == 8 * 2**30 and parse_size("512M") == 512 * 2**20 and parse_size("1.5k") == 1536
    assert parse_size(1000) == 1000 and parse_size("2GiB") == 2 * 2**30 and parse_size(None) is None
    for bad in ("lots", "-1G", 0):
        with pytest.raises(oe.OnnxExplainError, match="max_memory"):
            parse_size(bad)


def test_row_bytes_grow_with_the_input_and_cover_the_activations(tmp_path):
    m = oe.load(_conv_model(tmp_path))
    module = m.torch_module(probe=np.random.default_rng(0).standard_normal((2, 1, 32, 32)).astype(np.float32))
    small = row_bytes(module, torch.zeros(1, 1, 32, 32))
    big = row_bytes(module, torch.zeros(1, 1, 64, 64))
    # the 16-channel activation alone is 16 * H * W floats per row; 4x the pixels, about 4x the bytes
    assert small >= 16 * 32 * 32 * 4 and 3.5 < big / small < 4.5


def test_budget_caps_rows_per_pass_without_changing_the_result(tmp_path):
    m = oe.load(_conv_model(tmp_path))
    x = np.random.default_rng(1).standard_normal((3, 1, 48, 48)).astype(np.float32)
    free = oe.explain(m, x, "smoothgrad", n_samples=8, batch_size=24)
    budget = 5 * row_bytes(m.torch_module(), torch.from_numpy(x))
    capped = oe.explain(m, x, "smoothgrad", n_samples=8, batch_size=24, max_memory=budget)
    assert "lowered to 5 rows per pass" in capped.extras["memory"] and "memory" not in free.extras
    np.testing.assert_allclose(capped.attribution, free.attribution, rtol=1e-5, atol=1e-7)
    assert fit_rows(100, 64, 50_000) == (64, None)


def test_a_row_that_cannot_fit_is_refused_before_anything_is_written(tmp_path):
    path = _conv_model(tmp_path)
    x = tmp_path / "x.npy"
    np.save(x, np.random.default_rng(2).standard_normal((2, 1, 64, 64)).astype(np.float32))
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["explain", str(path), str(x), "-m", "smoothgrad", "--max-memory", "100K",
                                  "--out", str(out)])  # fmt: skip
    assert r.exit_code == 2, r.output
    assert "more than the memory budget of 100.00 KiB" in r.output and len(r.output.strip().splitlines()) == 1
    assert not out.exists()
    r = CliRunner().invoke(main, ["explain", str(path), str(x), "-m", "gradient", "--max-memory", "lots",
                                  "--out", str(out)])  # fmt: skip
    assert r.exit_code == 2 and "max_memory must be a size" in r.output
