"""A PaddlePaddle-style ONNX file (issue 11, targets): there is no Paddle exporter here, so the file is
built with ``onnx.helper`` in the style Paddle2ONNX writes — a free batch declared as ``-1``, every weight
in a ``Constant`` node instead of an initializer, ``Conv`` with explicit pads, ``BatchNormalization`` with
its statistics, ``relu6`` as ``Clip`` with constant bounds, ``Reshape`` to ``[0, -1]``, the linear layer
as ``MatMul`` + ``Add`` (not ``Gemm``), ``Identity`` on the weights, ``Softmax`` at the end, Paddle's
tensor names (``conv2d_0.w_0``, ``batch_norm_0.tmp_2`` ...) — and explained with ``onnx_explain.explain``.

The gradient is checked against the same network written with torch functional ops (autograd), and one
coordinate against a central finite difference in float64.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import save
from onnx import TensorProto, helper, numpy_helper

import onnx_explain as oe

C_IN, C_MID, H, N_CLASSES = 3, 4, 8, 5
EPS = 1e-5


def _weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    f = np.float32
    return {
        "conv2d_0.w_0": (rng.standard_normal((C_MID, C_IN, 3, 3)) * 0.4).astype(f),
        "conv2d_0.b_0": (rng.standard_normal(C_MID) * 0.1).astype(f),
        "batch_norm_0.w_0": rng.uniform(0.5, 1.5, C_MID).astype(f),
        "batch_norm_0.b_0": (rng.standard_normal(C_MID) * 0.1).astype(f),
        "batch_norm_0.w_1": (rng.standard_normal(C_MID) * 0.1).astype(f),
        "batch_norm_0.w_2": rng.uniform(0.5, 1.5, C_MID).astype(f),
        "linear_0.w_0": (rng.standard_normal((C_MID * (H // 2) ** 2, N_CLASSES)) * 0.2).astype(f),
        "linear_0.b_0": (rng.standard_normal(N_CLASSES) * 0.1).astype(f),
        "clip_min": np.array(0.0, f),
        "clip_max": np.array(6.0, f),
        "reshape_shape": np.array([0, -1], np.int64),
    }


def paddle_style_model(w: dict[str, np.ndarray]):
    """The CNN as Paddle2ONNX would write it (opset 11, weights in Constant nodes, batch -1)."""
    nodes = [
        helper.make_node(
            "Constant", [], [name], name=f"p2o.Constant.{k}", value=numpy_helper.from_array(v, name)
        )
        for k, (name, v) in enumerate(w.items())
    ]
    nodes += [
        helper.make_node("Identity", ["conv2d_0.w_0"], ["conv2d_0.w_0.id"], name="p2o.Identity.0"),
        helper.make_node("Conv", ["x", "conv2d_0.w_0.id", "conv2d_0.b_0"], ["conv2d_0.tmp_1"], name="p2o.Conv.0",
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1], dilations=[1, 1], group=1),
        helper.make_node("BatchNormalization", ["conv2d_0.tmp_1", "batch_norm_0.w_0", "batch_norm_0.b_0",
                         "batch_norm_0.w_1", "batch_norm_0.w_2"], ["batch_norm_0.tmp_2"],
                         name="p2o.BatchNormalization.0", epsilon=EPS, momentum=0.9),
        helper.make_node("Clip", ["batch_norm_0.tmp_2", "clip_min", "clip_max"], ["relu6_0.tmp_0"], name="p2o.Clip.0"),
        helper.make_node("MaxPool", ["relu6_0.tmp_0"], ["pool2d_0.tmp_0"], name="p2o.MaxPool.0",
                         kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 0, 0]),
        helper.make_node("Reshape", ["pool2d_0.tmp_0", "reshape_shape"], ["reshape2_0.tmp_0"], name="p2o.Reshape.0"),
        helper.make_node("MatMul", ["reshape2_0.tmp_0", "linear_0.w_0"], ["linear_0.tmp_0"], name="p2o.MatMul.0"),
        helper.make_node("Add", ["linear_0.tmp_0", "linear_0.b_0"], ["linear_0.tmp_1"], name="p2o.Add.0"),
        helper.make_node("Softmax", ["linear_0.tmp_1"], ["softmax_0.tmp_0"], name="p2o.Softmax.0", axis=-1),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes,
        "paddle_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, C_IN, H, H])],
        [helper.make_tensor_value_info("softmax_0.tmp_0", TensorProto.FLOAT, [-1, N_CLASSES])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 11)], producer_name="PaddlePaddle"
    )
    model.ir_version = 7
    return model


def torch_logits(x: torch.Tensor, w: dict[str, np.ndarray]) -> torch.Tensor:
    """The same network in torch (logits before the Softmax), in x's dtype."""
    t = {k: torch.from_numpy(v).to(x.dtype) for k, v in w.items()}
    y = F.conv2d(x, t["conv2d_0.w_0"], t["conv2d_0.b_0"], padding=1)
    y = F.batch_norm(y, t["batch_norm_0.w_1"], t["batch_norm_0.w_2"], t["batch_norm_0.w_0"], t["batch_norm_0.b_0"],
                     training=False, eps=EPS)  # fmt: skip
    y = F.max_pool2d(torch.clamp(y, 0.0, 6.0), 2)
    return y.reshape(y.shape[0], -1) @ t["linear_0.w_0"] + t["linear_0.b_0"]


@pytest.fixture(scope="module")
def paddle(tmp_path_factory):
    w = _weights()
    path = save(paddle_style_model(w), tmp_path_factory.mktemp("paddle") / "paddle_cnn.onnx")
    return oe.load(path), w


def test_paddle_style_file_loads_with_a_free_batch(paddle):
    m, w = paddle
    assert m.input.shape[0] is None or isinstance(m.input.shape[0], str)  # -1 became a symbolic batch
    x = np.random.default_rng(1).standard_normal((5, C_IN, H, H)).astype(np.float32)
    probs = m.predict(x)
    want = torch.softmax(torch_logits(torch.from_numpy(x).double(), w), -1).numpy()
    np.testing.assert_allclose(probs, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("batch_size", [2, 64])
def test_paddle_style_gradient_equals_torch_autograd(paddle, batch_size):
    m, w = paddle
    x = np.random.default_rng(2).standard_normal((5, C_IN, H, H)).astype(np.float32) * 2
    e = oe.explain(m, x, "gradient", batch_size=batch_size)
    xt = torch.from_numpy(x).double().requires_grad_(True)
    logits = torch_logits(xt, w)
    target = logits.argmax(1)
    np.testing.assert_array_equal(np.asarray(e.target), target.numpy())
    logits.gather(1, target[:, None]).sum().backward()
    np.testing.assert_allclose(e.attribution, xt.grad.numpy(), rtol=1e-4, atol=1e-5)
    assert np.abs(e.attribution).max() > 0  # something flows through the Constant-node weights


def test_paddle_style_gradient_matches_a_finite_difference_on_onnxruntime(paddle):
    # the network is piecewise linear in x (Conv, BN, Clip, MaxPool, MatMul): a central difference of
    # onnxruntime's logits that crosses no kink is the exact directional derivative
    m, _ = paddle
    x = np.random.default_rng(3).standard_normal((1, C_IN, H, H)).astype(np.float32)
    e = oe.explain(m, x, "gradient", target=0)
    grad = e.attribution[0]
    for k in np.argsort(-np.abs(grad).ravel())[:3]:
        k = np.unravel_index(k, grad.shape)
        h = 1e-2
        xp, xm = x.copy(), x.copy()
        xp[(0, *k)] += h
        xm[(0, *k)] -= h
        fd = (m.predict(xp, space="logit")[0, 0] - m.predict(xm, space="logit")[0, 0]) / (2 * h)
        assert grad[k] == pytest.approx(float(fd), rel=2e-3, abs=1e-4)
