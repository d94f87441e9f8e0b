"""Converters fixed or added for what today's exporters write (issue 11, found by
``benchmarks/conversion_coverage.py``): one-node graphs against onnxruntime, parametrized over opsets."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import make_model, vinfo
from onnx import helper, numpy_helper

from onnx_explain.convert import to_fx


def _both(model: onnx.ModelProto, feeds: dict[str, np.ndarray]):
    """(onnxruntime's outputs, the converted graph's outputs) for ``feeds`` (graph input order)."""
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    with torch.no_grad():
        got = to_fx(onnx.shape_inference.infer_shapes(model))(*(torch.from_numpy(v) for v in feeds.values()))
    got = got if isinstance(got, (tuple, list)) else [got]
    return ref, [g.numpy() for g in got]


# --- Flatten: onnx2torch raised on 1-D inputs and axis=0 (the legacy exporter's BERT pooler) ---------
_FLATTEN = {"1d-ax1": ((5,), 1), "1d-ax0": ((5,), 0), "3d-ax0": ((2, 3, 4), 0), "3d-ax1": ((2, 3, 4), 1),
            "3d-ax3": ((2, 3, 4), 3), "3d-ax-1": ((2, 3, 4), -1), "3d-ax-3": ((2, 3, 4), -3)}  # fmt: skip


@pytest.mark.parametrize(
    "opset,shape,axis",
    [pytest.param(o, *case, id=f"opset{o}-{name}") for o in (1, 9, 11, 13, 21) for name, case in _FLATTEN.items()
     if case[1] >= 0 or o >= 11],  # negative axes came with Flatten-11
)  # fmt: skip
def test_flatten_equals_onnxruntime(opset, shape, axis):
    model = make_model([helper.make_node("Flatten", ["x"], ["y"], axis=axis)],
                       [vinfo("x", list(shape))], [vinfo("y", None)], opset=opset)  # fmt: skip
    x = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    (ref,), (got,) = _both(model, {"x": x})
    assert got.shape == ref.shape
    np.testing.assert_array_equal(got, ref)


# --- Gemm-1/6: onnxruntime has no kernel for them; onnx's reference evaluator is the oracle ----------
@pytest.mark.parametrize("opset", [1, 6])
@pytest.mark.parametrize(
    "trans_a,trans_b,c_shape",
    [(0, 1, (3,)), (1, 0, (2, 3)), (0, 0, (1,))],
    ids=["tB-row", "tA-full", "scalar-c"],
)
def test_gemm_1_and_6_equal_the_onnx_reference(opset, trans_a, trans_b, c_shape):
    from onnx.reference import ReferenceEvaluator

    rng = np.random.default_rng(0)
    a = rng.standard_normal((4, 2) if trans_a else (2, 4)).astype(np.float32)
    w = rng.standard_normal((3, 4) if trans_b else (4, 3)).astype(np.float32)
    c = rng.standard_normal(c_shape).astype(np.float32)
    node = helper.make_node("Gemm", ["a", "w", "c"], ["y"], alpha=0.5, beta=2.0, transA=trans_a, transB=trans_b,
                            broadcast=int(c_shape != (2, 3)))  # fmt: skip
    graph = helper.make_graph([node], "g", [vinfo("a", list(a.shape))], [vinfo("y", [2, 3])],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(c, "c")])  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 3
    # Gemm-1 means what Gemm-6 means (6 only dropped the unused ``consumed_inputs``); the reference
    # evaluator implements 6
    reference = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 6)])
    (ref,) = ReferenceEvaluator(reference).run(None, {"a": a})
    if c_shape == (2, 3):  # broadcast=0: onnx's reference forgets beta there (1.23); the spec's formula
        ref = 0.5 * (a.T if trans_a else a) @ (w.T if trans_b else w) + 2.0 * c
    at = torch.from_numpy(a).requires_grad_(True)
    got = to_fx(model)(at)
    np.testing.assert_allclose(got.detach().numpy(), ref, rtol=1e-5, atol=1e-6)
    got.sum().backward()  # gradient: d/dA sum(0.5 A' W') = 0.5 * 1 W'^T (transposed back for transA)
    g = 0.5 * np.ones((2, 3), np.float32) @ (w.T if trans_b else w).T
    np.testing.assert_allclose(at.grad.numpy(), g.T if trans_a else g, rtol=1e-5)
