"""The onnxruntime runner: provider choice without error spam, chunking, fixed batch sizes."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT

import onnx_explain as oe
from onnx_explain.runtime import cuda_device_count, run_chunked, select_providers


def test_provider_choice_follows_the_cuda_driver():
    assert select_providers("cpu") == ["CPUExecutionProvider"]
    auto = select_providers("auto")
    if cuda_device_count() == 0:
        assert auto == ["CPUExecutionProvider"]
        with pytest.raises(oe.DeviceError, match="device 'cuda' was asked for"):
            select_providers("cuda")
    else:
        assert auto[0] == "CUDAExecutionProvider"
    with pytest.raises(oe.DeviceError, match="must be 'auto', 'cpu' or 'cuda'"):
        select_providers("tpu")


def test_auto_device_prints_nothing():
    # onnxruntime-gpu on a machine without a GPU logs a page of errors if a session asks for CUDA
    code = (
        "import numpy as np, onnx_explain as oe;"
        f"m = oe.load(r'{ROOT / 'models' / 'digits.onnx'}');"
        "print(m.predict(np.zeros((2, 1, 32, 32), np.float32)).shape);"
        "print(m.runtime.session().get_providers()[0])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stderr == ""
    shape, provider = out.stdout.split("\n")[:2]
    assert shape == "(2, 10)"
    assert provider == ("CPUExecutionProvider" if cuda_device_count() == 0 else "CUDAExecutionProvider")


def test_run_chunked_sizes_and_padding():
    seen = []

    def fn(chunk):
        seen.append(chunk.shape[0])
        return chunk * 2

    x = np.arange(7, dtype=np.float32)[:, None]
    np.testing.assert_array_equal(run_chunked(fn, x, 3), x * 2)
    assert seen == [3, 3, 1]
    seen.clear()
    # a fixed batch of 4: chunks of exactly 4, the last padded, the padding dropped
    np.testing.assert_array_equal(run_chunked(fn, x, 64, fixed_batch=4), x * 2)
    assert seen == [4, 4]


def test_session_is_cached():
    m = oe.load(ROOT / "models" / "digits.onnx")
    x = np.zeros((1, 1, 32, 32), np.float32)
    m.predict(x)
    s = m.runtime.session()
    m.predict(x)
    assert m.runtime.session() is s
